"""One WebSocket stream of `korasr serve` (``GET /v1/stream``): the checks before it opens, then a reader (audio
in, with the idle, pace, size and duration rules) and a writer (results out, then the close: the only task that
sends), until the writer has closed it, the client left, or the client stopped reading (the connection is
aborted and everything the stream held released at once). The decoding itself is the hub's (``streams.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
from fastapi import WebSocket

from korasr import SAMPLE_RATE
from korasr.serve.config import ServeConfig
from korasr.serve.logs import note

if TYPE_CHECKING:
    from korasr.serve.state import ServiceState
    from korasr.serve.streams import StreamHub

log = logging.getLogger(__name__)


class StreamClosed(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


SERVER_CODES = frozenset({1000, 1001, 1007, 1008, 1009, 1011, 1013})  # the close codes this server sends


class Pace:
    """The wall-clock rule: after its first window, a stream must have delivered at least ``min_rate`` × real time
    of audio in the last ``window_s`` seconds of waiting for the client (time the server held the client back does
    not count). The count is kept per fifteenth of the window (the total at each slice's start), so memory is
    bounded whatever the frame rate, and the error (in the client's favour) is at most one slice."""

    SLICES = 15

    def __init__(self, sample_rate: int, min_rate: float, window_s: float):
        self.rate, self.min_rate, self.window_s = sample_rate, min_rate, window_s
        self.slice_s = window_s / self.SLICES
        self.clock = 0.0  # seconds spent waiting for the client
        self.total = 0  # samples received
        self.marks: deque[tuple[int, int]] = deque([(0, 0)])  # (slice of the clock, samples received before it)

    def waited(self, seconds: float) -> None:
        self.clock += seconds

    def received(self, samples: int) -> None:
        index = int(self.clock / self.slice_s)
        if self.marks[-1][0] != index:
            self.marks.append((index, self.total))
        self.total += samples
        oldest = int((self.clock - self.window_s) / self.slice_s)
        while len(self.marks) > 1 and self.marks[1][0] <= oldest:
            self.marks.popleft()

    def check(self) -> None:
        if self.min_rate <= 0 or self.clock < self.window_s:
            return
        since = int((self.clock - self.window_s) / self.slice_s)
        before = [total for index, total in self.marks if index <= since]
        audio_s = (self.total - (before[-1] if before else 0)) / self.rate
        if audio_s < self.min_rate * self.window_s:
            raise StreamClosed(1008, f"audio arrives too slowly: {audio_s:.1f} s in the last {self.window_s:g} s "
                               f"(at least {self.min_rate:g}× real time)")  # fmt: skip


def stream_request(ws: WebSocket, config: ServeConfig, state: ServiceState, hub: StreamHub | None) -> int:
    """The checks before a stream opens; its sample rate, or StreamClosed with the reason."""
    if hub is None:
        raise StreamClosed(1008, f"{config.model.name} has no streaming graphs: serve the export of a model "
                           "trained with --streaming (make train STREAMING=1)")  # fmt: skip
    rate_text = ws.query_params.get("sample_rate", str(SAMPLE_RATE))
    if not (rate_text.isascii() and rate_text.isdigit() and len(rate_text) <= 6 and 8000 <= int(rate_text) <= 48000):
        raise StreamClosed(1008, f"sample_rate {rate_text[:20]!r}: an integer from 8000 to 48000 (Hz)")
    active = state.active_streams()  # on every generation still serving, during a swap too
    if active >= config.max_streams:
        raise StreamClosed(1013, f"server busy: {active} streams open (at most {config.max_streams})")
    return int(rate_text)


async def close_stream(ws: WebSocket, code: int, reason: str, error: bool = True) -> None:
    """The error message (when ``error``), then the close frame; each send bounded by the send deadline."""
    from starlette.websockets import WebSocketDisconnect, WebSocketState

    if ws.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        if error:
            await ws.send_json({"type": "error", "error": reason})
        await ws.close(code=code, reason=reason[:120])


async def stream_session(ws: WebSocket, state: ServiceState) -> None:
    """One WebSocket stream: checks, then audio in and results out until the end, a limit or a disconnect.
    The API key was checked before the upgrade (the gate: 403). Close codes: 1000 after the last final; 1008 bad
    parameter, idle, too slow, or too long (after its finals); 1009 frame too large; 1007 a frame that is not 16-bit
    PCM or ``{"type": "end"}``; 1013 busy or loading; 1011 server error. A client that reads nothing is aborted
    (no close frame can reach it): at the send deadline, or once ``max_unsent_results`` wait for it."""
    from korasr.serve.deadline import SendTimeout
    from korasr.serve.gate import STREAM_SUBPROTOCOL

    config, metrics = state.config, state.metrics
    hub, conn, outcome = None, None, "1000"
    lease = contextlib.ExitStack()
    try:
        await ws.accept(
            subprotocol=STREAM_SUBPROTOCOL if STREAM_SUBPROTOCOL in ws.scope.get("subprotocols", []) else None
        )
        try:
            if not state.ready:
                raise StreamClosed(1013, "model loading")
            hub = lease.enter_context(state.lease()).hub  # the stream stays on this model through a swap
            rate = stream_request(ws, config, state, hub)
        except StreamClosed as e:
            outcome = str(e.code)
            await close_stream(ws, e.code, e.reason)
            return
        conn = hub.open(rate)
        outcome = await run_stream(ws, conn, config, hub, going_away=state.drain.started)
    except asyncio.CancelledError:  # the server shutting down (or the connection's task cancelled): not a 1000
        outcome = "cancelled"
        raise
    except SendTimeout:
        outcome = "aborted"
    except Exception as e:  # never a crash: the client gets a reason
        outcome = "1011"
        log.exception("stream failed")
        with contextlib.suppress(Exception):
            await close_stream(ws, 1011, f"internal error: {type(e).__name__}")
    finally:
        if conn is not None:
            note(audio_seconds=round(conn.received / conn.stream.sample_rate, 3))
            hub.close(conn)
        lease.close()
        metrics.stream_closes.labels(outcome).inc()
        # The close handshake gets send_timeout_s; then the connection is aborted if still there (a polite close to
        # a client that reads nothing would wait on its full buffer for ever). A no-op on a connection already gone.
        asyncio.get_running_loop().call_later(config.send_timeout_s, ws.scope.get("korasr.abort", lambda: None))


async def run_stream(ws: WebSocket, conn, config: ServeConfig, hub,  # type: ignore[no-untyped-def]
                     going_away: asyncio.Event | None = None) -> str:  # fmt: skip
    """The reader (audio in) and the writer (results out, then the close; the only task that sends) of an open
    stream, until the writer has closed it, the client left, or the client stopped reading (aborted). When
    ``going_away`` is set (the server drains) the reader stops: the stream ends with the audio it received, its
    finals, then a close with 1001. What it ended with: a close code, ``client`` or ``aborted``."""
    from starlette.websockets import WebSocketDisconnect

    from korasr.serve.deadline import SendTimeout

    reader = asyncio.ensure_future(read_frames(ws, conn, config, hub))
    writer = asyncio.ensure_future(write_results(ws, conn))
    unread = asyncio.ensure_future(conn.unread.wait())
    drained = asyncio.ensure_future((going_away or asyncio.Event()).wait())
    waiting = {reader, writer, unread, drained}
    try:
        while True:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if unread in done:  # results pile up unwritten: nothing will reach this client, not even a close
                ws.scope.get("korasr.abort", lambda: None)()
                log.warning("stream aborted: the client read none of %d results", config.max_unsent_results)
                return "aborted"
            if writer in done:
                error = writer.exception()
                if error is None:
                    return writer.result()
                if isinstance(error, SendTimeout):
                    return "aborted"
                if isinstance(error, WebSocketDisconnect) or closed_under_us(error):
                    ws.scope.get("korasr.abort", lambda: None)()  # the server's own close may wait on a full buffer
                    return "client"
                raise error
            if reader in done:
                waiting.discard(reader)
                error = reader.exception()
                if isinstance(error, StreamClosed):  # the writer sends what was queued, then this close
                    conn.events.put_nowait(error)
                elif error is not None:
                    raise error
                elif reader.result() == "client":
                    return "client"
            if drained in done:
                waiting.discard(drained)
                if reader in waiting:
                    reader.cancel()  # a frame it was handing to the hub still goes in (the feed is shielded)
                    await asyncio.wait({reader})
                    if reader.cancelled():  # else it ended by itself: the next round takes its outcome
                        waiting.discard(reader)
                        conn.going_away = True
                        await hub.feed(conn, None)
    finally:
        for task in (reader, writer, unread, drained):
            task.cancel()


def closed_under_us(error: BaseException) -> bool:
    """A send refused because the connection was already closed by the server's protocol layer (uvicorn closes
    a WebSocket whose client stops answering pings, then refuses sends with a RuntimeError)."""
    return isinstance(error, RuntimeError) and "close" in str(error)


async def read_frames(ws: WebSocket, conn, config: ServeConfig, hub) -> str:  # type: ignore[no-untyped-def]
    """Frames into the hub until the end message (``end``), a disconnect (``client``) or a limit (StreamClosed)."""
    loop = asyncio.get_running_loop()
    rate = conn.stream.sample_rate
    pace = Pace(rate, config.min_stream_rate, config.stream_rate_window_s)
    while True:
        began = loop.time()
        try:
            message = await asyncio.wait_for(ws.receive(), config.stream_idle_s)
        except TimeoutError:
            raise StreamClosed(1008, f"idle: no frame for {config.stream_idle_s:g} s") from None
        pace.waited(loop.time() - began)
        if message["type"] == "websocket.disconnect":
            return "client"
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if len(data) > config.max_frame_bytes:
                raise StreamClosed(1009, f"frame of {len(data)} bytes (at most {config.max_frame_bytes})")
            if len(data) % 2:
                raise StreamClosed(1007, f"frame of {len(data)} bytes: 16-bit PCM frames have an even size")
            pcm = np.frombuffer(data, dtype="<i2")
            pace.received(len(pcm))
            pace.check()
            if pace.total > config.max_stream_seconds * rate:
                conn.close_reason = f"maximum stream duration {config.max_stream_seconds:g} s reached"
                await hub.feed(conn, None)
                return "end"
            # waits (reading nothing more) while the stream holds enough undecoded audio; shielded: a drain that
            # stops the reader meanwhile still has this frame decoded
            await asyncio.shield(hub.feed(conn, pcm))
        elif text is not None:
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):  # deeply nested JSON raises RecursionError
                parsed = None
            if not isinstance(parsed, dict) or parsed.get("type") != "end":
                raise StreamClosed(1007, 'text frames must be {"type": "end"}')
            await hub.feed(conn, None)
            return "end"


async def write_results(ws: WebSocket, conn) -> str:  # type: ignore[no-untyped-def]
    """Results to the client as the hub hands them out, then the close; the close code it sent."""
    sent_final = False
    while True:
        item = await conn.events.get()
        if isinstance(item, StreamClosed):  # the reader stopped the stream
            await close_stream(ws, item.code, item.reason)
            return str(item.code)
        events, done = item
        for event in events:
            await ws.send_json(event.as_dict())
            conn.unsent -= 1
            sent_final = sent_final or event.type == "final"
        if not done:
            continue
        if conn.error is not None:
            await close_stream(ws, 1011, f"internal error: {conn.error}")
            return "1011"
        if not sent_final:  # silence only: the client still gets its last final
            end = round(conn.stream.decoded_seconds, 3)
            await ws.send_json({"type": "final", "text": "", "start": end, "end": end, "words": []})
        if conn.close_reason:
            await close_stream(ws, 1008, conn.close_reason)
            return "1008"
        if conn.going_away:  # the server drains: this stream's audio is decoded, the client reconnects elsewhere
            await close_stream(ws, 1001, "server shutting down: reconnect to go on", error=False)
            return "1001"
        await close_stream(ws, 1000, "end of stream", error=False)
        return "1000"
