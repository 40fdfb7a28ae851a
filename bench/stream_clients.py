"""The clients of `korasr serve`'s WebSocket (``/v1/stream``) that bench/streaming.py and bench/serve_hostile.py
share: an honest real-time client, a flooder, and two hostile clients on raw sockets that the ``websockets`` package
will not be (one that never reads, one that trickles), and a process of their own for the hostile ones. The server
process and its /metrics are in common.py. Not a script: nothing runs at import."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pcm16

PIECE_S = 0.1  # the real-time clients' frame: 100 ms of audio


# --- the websockets package: clients that read what the server sends ---------------------------------------------


def client_stats() -> dict:
    """What :func:`client` fills, empty: finals' delays, partials' intervals, errors, texts by utterance index."""
    return {"final": [], "partials": [], "errors": [], "texts": {}}


async def client(url: str, wave: np.ndarray, stats: dict, speed: float = 1.0, index: int = 0) -> None:
    """One utterance in ``PIECE_S`` frames at ``speed`` × real time, then ``{"type": "end"}``; into ``stats``: the
    time from the end of speech to the final (``final``), the intervals between partials, the text (``texts``) or
    the error (``errors``)."""
    import websockets

    pcm = pcm16(wave)
    frame = int(PIECE_S * 16000) * 2
    partials: list[float] = []
    try:
        async with websockets.connect(url, max_size=None) as ws:

            async def reader() -> tuple[float | None, str]:
                last_partial, final_at, texts = None, None, []
                async for message in ws:
                    data = json.loads(message)
                    now = time.perf_counter()
                    if data["type"] == "partial":
                        if last_partial is not None:
                            partials.append(now - last_partial)
                        last_partial = now
                    elif data["type"] == "final":
                        final_at = now
                        texts.append(data["text"])
                    elif data["type"] == "error":
                        raise RuntimeError(data["error"])
                return final_at, " ".join(t for t in texts if t)

            task = asyncio.create_task(reader())
            start = time.perf_counter()
            for i in range(0, len(pcm), frame):
                await asyncio.sleep(max(0.0, start + (i / 2 / 16000) / speed - time.perf_counter()))
                await ws.send(pcm[i : i + frame])
            end_of_speech = time.perf_counter()
            await ws.send(json.dumps({"type": "end"}))
            final_at, text = await task
            stats["final"].append(final_at - end_of_speech)
            stats["texts"][index] = text
    except Exception as e:  # counted, not raised: the bench reports errors
        stats["errors"].append(f"{type(e).__name__}: {e}"[:200])
    stats["partials"] += partials


async def flood(url: str, pcm: bytes, stop: asyncio.Event, stats: dict, *, end: bool = True,
                frame_bytes: int = 32000) -> None:  # fmt: skip
    """A flooding client: ``pcm`` (16-bit, 16 kHz) in 1 s frames as fast as the server reads them, from the start
    again at its end, until ``stop``; it reads every result. Then ``{"type": "end"}`` and the results up to the
    close (``end``), or silence with the socket open, reading, until the server closes it (``end=False``: a stream
    that stops sending and never ends). Into ``stats``: ``each`` (per flooder: audio seconds sent, and decoded
    as the results' ends say), ``closes`` (close codes as this client saw them), ``reasons`` (the server's error
    messages), ``errors``."""
    import websockets
    from websockets.exceptions import ConnectionClosed

    me = {"sent_s": 0.0, "decoded_s": 0.0, "closed": False}
    stats["each"].append(me)
    try:
        sock = socket.socket()  # a small send buffer: what it has sent is close to what the server has read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.setblocking(False)
        host, port = url.split("/")[2].split(":")
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        # no keepalive pings: the server reads a flooder's socket only as fast as it decodes, so a ping waits
        # behind the audio, and websockets would close the connection at its ping timeout (1011)
        async with websockets.connect(url, sock=sock, max_size=None, close_timeout=2, ping_interval=None) as ws:
            stats["connected"] += 1

            async def reader() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        data = json.loads(message)
                        if data["type"] == "error":
                            reason = data["error"].split(":")[0][:60]
                            stats["reasons"][reason] = stats["reasons"].get(reason, 0) + 1
                            if end:
                                stats["errors"].append(data["error"][:200])
                        else:
                            me["decoded_s"] = max(me["decoded_s"], data["end"])

            task = asyncio.create_task(reader())
            at = 0
            while not stop.is_set() and not task.done():
                piece = pcm[at : at + frame_bytes]
                try:
                    await ws.send(piece)
                except ConnectionClosed:
                    break
                me["sent_s"] += len(piece) / 32000
                at = (at + frame_bytes) % len(pcm)
                await asyncio.sleep(0)  # the reader's turn: a send that never waits would keep the loop
            if end and not task.done():
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"type": "end"}))
            await task
            code = str(ws.close_code) if ws.close_code is not None else "none"
            stats["closes"][code] = stats["closes"].get(code, 0) + 1
    except Exception as e:
        stats["errors"].append(f"{type(e).__name__}: {e}"[:200])
    finally:
        me["closed"] = True


# --- raw sockets (wsproto): clients that do what websockets never does --------------------------------------------


class RawClient:
    """A WebSocket client on a raw socket: the handshake through ``wsproto``, frames written by hand, nothing read
    unless asked (:meth:`read_until_closed`). With ``rcvbuf`` the kernel's receive buffer is that small and asyncio
    reads at most 2 kB ahead, so a client that never reads fills the server's buffers early."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws) -> None:  # type: ignore[no-untyped-def]
        self.reader, self.writer, self.ws = reader, writer, ws
        self.opened = time.monotonic()

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None,
                      target: str = "/v1/stream?sample_rate=16000") -> RawClient:  # fmt: skip
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request

        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        ws = WSConnection(ConnectionType.CLIENT)
        writer.write(ws.send(Request(host=f"127.0.0.1:{port}", target=target)))
        while True:
            data = await asyncio.wait_for(reader.read(1024), 30)
            if not data:
                raise ConnectionError("closed during the handshake")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, RejectConnection):
                    raise ConnectionError(f"upgrade refused: {event.status_code}")
                if isinstance(event, AcceptConnection):
                    return cls(reader, writer, ws)

    def frame(self, data: bytes) -> bytes:
        from wsproto.events import BytesMessage

        return self.ws.send(BytesMessage(data=data))

    async def read_until_closed(self) -> str:
        """Reads (and drops) what the server sends until it closes: its close code, ``reset`` or ``eof``."""
        from wsproto.events import CloseConnection

        try:
            while data := await self.reader.read(65536):
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, CloseConnection):
                        return str(event.code)
        except (ConnectionError, OSError):
            return "reset"
        return "eof"

    def close(self) -> None:
        self.writer.transport.abort()


async def non_reader(port: int, pcm: bytes, out: dict) -> None:
    """Speech as fast as the server reads it, from the start again at its end, and never a byte read after the
    handshake, until the server drops the connection: ``out['ended']`` gets ``reset`` and the seconds it took.
    Cancelled (the bench is done with it) with the connection still open: ``out['open']`` counts it."""
    try:
        c = await RawClient.connect(port, rcvbuf=4096)
    except (ConnectionError, OSError, TimeoutError) as e:
        out["errors"].append(f"non-reader: {type(e).__name__}: {e}"[:200])
        return
    out["connected"] += 1
    at = 0
    try:
        while True:
            c.writer.write(c.frame(pcm[at : at + 3200]))
            at = (at + 3200) % len(pcm)
            await c.writer.drain()
    except (ConnectionError, OSError):
        out["ended"].append(("reset", time.monotonic() - c.opened))
    except asyncio.CancelledError:
        out["open"] += 1
        c.close()
        raise


async def trickler(port: int, out: dict, dribble: bool, every_s: float = 2.0) -> None:
    """A stream kept alive with a few bytes every ``every_s`` seconds: 4-byte frames (two samples; ``dribble``
    False), or one frame of 0.1 s whose bytes arrive 4 at a time (``dribble``: the frame never completes). Reads
    what the server sends; ``out['ended']`` gets how the server ended it (close code, ``reset``) and when."""
    try:
        c = await RawClient.connect(port)
    except (ConnectionError, OSError, TimeoutError) as e:
        out["errors"].append(f"trickler: {type(e).__name__}: {e}"[:200])
        return
    out["connected"] += 1
    closed = asyncio.create_task(c.read_until_closed())
    data = c.frame(b"\0" * 3200) if dribble else b""
    at = 0
    try:
        while not closed.done():
            if dribble:
                c.writer.write(data[at : at + 4])
                at += 4
            else:
                c.writer.write(c.frame(b"\0\0\0\0"))
            with contextlib.suppress(ConnectionError, OSError):
                await c.writer.drain()
            await asyncio.wait([closed], timeout=every_s)
        out["ended"].append((closed.result(), time.monotonic() - c.opened))
    except asyncio.CancelledError:
        out["open"] += 1
        closed.cancel()
        c.close()
        raise


# --- hostile clients in a process of their own -------------------------------------------------------------------


class HostileClients:
    """``n`` clients of one kind (``non-reading``, ``trickling``, ``flooding``) in a process of their own: their
    loops would otherwise share the event loop, and so the clock, of the clients being measured. ``pcm``: what the
    non-readers and flooders send; ``end``: whether flooders end their streams when told to stop (else they fall
    silent, reading, until the server closes them)."""

    def __init__(self, kind: str, port: int, n: int, pcm: bytes = b"", *, end: bool = False):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.proc = context.Process(target=_hostile_process, args=(kind, port, n, pcm, end, child), daemon=True)
        self.proc.start()

    async def ask(self, command: str) -> dict:
        """``report`` (the stats so far), ``stop`` (flooders stop sending; then the stats) or ``close`` (every
        client ended, the process too; the final stats)."""
        self.pipe.send(command)
        stats = await asyncio.to_thread(self.pipe.recv)
        if command == "close":
            await asyncio.to_thread(self.proc.join, 30)
        return stats


def _hostile_process(kind: str, port: int, n: int, pcm: bytes, end: bool, pipe) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(_hostile(kind, port, n, pcm, end, pipe))


async def _hostile(kind: str, port: int, n: int, pcm: bytes, end: bool, pipe) -> None:  # type: ignore[no-untyped-def]
    stats: dict = {"connected": 0, "ended": [], "open": 0, "errors": [], "each": [], "closes": {}, "reasons": {}}
    stop = asyncio.Event()
    url = f"ws://127.0.0.1:{port}/v1/stream?sample_rate=16000"
    if kind == "non-reading":
        jobs = [non_reader(port, pcm, stats) for _ in range(n)]
    elif kind == "trickling":
        jobs = [trickler(port, stats, dribble=i % 2 == 1) for i in range(n)]
    elif kind == "flooding":
        jobs = [flood(url, pcm, stop, stats, end=end) for _ in range(n)]
    else:
        raise ValueError(f"unknown kind of client {kind!r}")
    tasks = [asyncio.create_task(job) for job in jobs]
    while True:
        command = await asyncio.to_thread(pipe.recv)
        if command == "stop":
            stop.set()
        if command == "close":
            if kind == "flooding" and end:  # their streams end: wait for their finals
                await asyncio.wait(tasks, timeout=120)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        pipe.send(json.loads(json.dumps(stats)))
        if command == "close":
            return
