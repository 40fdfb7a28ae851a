"""Hostile clients against a real server on real sockets: clients that stop reading (WebSocket and HTTP), streams
that trickle or flood, client mistakes that must stay the client's."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from korasr.runtime.streaming import Endpoint, StreamingModel
from korasr.serve import ServeConfig, create_app
from tests.conftest import eval_rows, int16_bytes, receive_all, serving

pytestmark = pytest.mark.slow
KEY = "k3y"


@pytest.fixture(scope="module")
def rows(recipe) -> list[dict]:
    rows = eval_rows(recipe, 12)
    for row in rows:
        row["audio"] = sf.read(row["audio_filepath"], dtype="float32")[0]
    return rows


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class SilentClient(threading.Thread):
    """A WebSocket client on a raw socket with a small receive buffer: it sends its audio (as fast as the server
    reads it) and then never reads again, nor ends its stream."""

    def __init__(self, url: str, audio: bytes, rcvbuf: int = 1024):
        super().__init__(daemon=True)
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request

        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, int(port)))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"{host}:{port}", target="/v1/stream",
                                               extra_headers=[(b"x-api-key", KEY.encode())])))  # fmt: skip
        self.accepted = None
        while self.accepted is None:  # the handshake's answer, and nothing after it is read
            self.ws.receive_data(self.sock.recv(1024))
            for event in self.ws.events():
                if isinstance(event, AcceptConnection | RejectConnection):
                    self.accepted = isinstance(event, AcceptConnection)
        self.audio, self.reset = audio, False

    def run(self) -> None:
        from wsproto.events import BytesMessage

        try:
            for start in range(0, len(self.audio), 3200):
                self.sock.sendall(self.ws.send(BytesMessage(data=self.audio[start : start + 3200])))
        except OSError:  # the server aborted the connection
            self.reset = True

    def ending(self) -> str:
        """How the server ended the connection, reading what is buffered to get there: ``reset`` (aborted),
        ``closed`` (an orderly end) or ``open``."""
        self.sock.settimeout(5)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "open"
        return "closed"


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_websocket_clients_that_stop_reading_are_aborted_and_release_their_streams(exported_streaming, rows):
    """40 clients send speech and never read (32 streams open at most): each is aborted at the send deadline (or
    once its unsent results pass the limit), its stream released; then an honest client gets its finals.

    Utterances are cut every second (finals with words) so that results fill the small buffers soon; uvicorn's
    keepalive pings are off, since a client that stops reading also stops answering them (uvicorn then closes the
    connection politely after 40 s, a close that waits on the same full buffer: korasr aborts it then too)."""
    import httpx

    config = ServeConfig(model=exported_streaming, api_key=KEY, max_streams=32, send_timeout_s=2.0,
                         send_buffer_bytes=1024, stream_idle_s=60, min_stream_rate=0, max_utterance_s=1)  # fmt: skip
    app = create_app(config)
    speech = int16_bytes(np.concatenate([r["audio"] for r in rows] * 3))  # ~ 100 s
    with serving(config, app=app, send_buffer=2048, ws_ping_interval=None) as url:
        hub = app.state.korasr.hub
        before = rss_mb()
        clients = [SilentClient(url, speech) for _ in range(40)]
        assert sum(c.accepted for c in clients) == 40  # the upgrade is accepted; 8 then get 1013 (busy)
        for c in clients:
            c.start()
        deadline = time.monotonic() + 240
        while hub.active and time.monotonic() < deadline:
            time.sleep(0.5)
        assert hub.active == 0, f"{hub.active} streams still held by clients that read nothing"
        grown = rss_mb() - before
        started = time.monotonic()
        from websockets.sync.client import connect

        with connect(url.replace("http", "ws") + "/v1/stream", additional_headers={"X-API-Key": KEY}) as ws:
            honest = int16_bytes(rows[0]["audio"])
            for start in range(0, len(honest), 3200):
                ws.send(honest[start : start + 3200])
            ws.send(json.dumps({"type": "end"}))
            finals = [m for m in map(json.loads, ws) if m["type"] == "final"]
        honest_s = time.monotonic() - started
        text = httpx.get(url + "/metrics", headers={"X-API-Key": KEY}).text
    model = StreamingModel(exported_streaming)
    endpoint = Endpoint(silence_after_speech=config.endpoint_silence_s, max_utterance=config.max_utterance_s)
    expected = " ".join(s.text for s in model.transcribe(rows[0]["audio"], endpoint=endpoint))
    assert " ".join(f["text"] for f in finals if f["text"]) == expected
    closes = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("korasr_stream_closes_total{")}  # fmt: skip
    assert closes == {"aborted": 32, "1013": 8, "1000": 1}, closes
    endings = Counter(c.ending() for c in clients)
    # every connection ended by the server: the 32 streams reset; the 8 refused with 1013 (busy), which read neither
    # the refusal nor the close, closed or reset once their close handshake had its send_timeout_s
    assert endings["reset"] >= 32 and endings["reset"] + endings["closed"] == 40, endings
    assert grown < 300, f"RSS grew {grown:.0f} MB"
    assert honest_s < 30, honest_s


def test_http_clients_that_stop_reading_hold_no_slot(exported, recipe):
    """40 clients post audio for verbose_json on sockets with a small receive buffer and never read the answer:
    the answer is handed to the connection whole, so no admission slot waits on them (the review's worry does not
    hold for these single-message responses); an honest client is answered at once, and memory stays bounded."""
    import httpx

    row = eval_rows(recipe, 1)[0]
    wav = Path(row["audio_filepath"]).read_bytes()
    config = ServeConfig(model=exported, api_key=KEY, queue_size=4, max_waiting=64, send_timeout_s=2.0,
                         send_buffer_bytes=1024)  # fmt: skip
    app = create_app(config)
    boundary = "korasrboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="response_format"\r\n\r\nverbose_json\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n").encode() + wav + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    with serving(config, app=app, send_buffer=4096) as url:
        host, port = url.removeprefix("http://").split(":")
        before = rss_mb()
        silent = []
        for _ in range(40):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((host, int(port)))
            s.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
                      .encode() + body)  # fmt: skip
            silent.append(s)
        gate = next(m for m in _middlewares(app) if type(m).__name__ == "Gate")
        deadline = time.monotonic() + 120
        while (gate.admitted or gate.waiters) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gate.admitted == 0 and not gate.waiters, "slots held by clients that read nothing"
        response = httpx.post(url + "/v1/audio/transcriptions", headers={"X-API-Key": KEY},
                              files={"file": ("a.wav", wav)}, data={"response_format": "verbose_json"}, timeout=30)  # fmt: skip
        assert response.status_code == 200 and response.json()["text"]
        text = httpx.get(url + "/metrics", headers={"X-API-Key": KEY}).text
        grown = rss_mb() - before
        for s in silent:
            s.close()
    assert metric(text, 'korasr_requests_total{route="/v1/audio/transcriptions",status="200"}') == 41
    assert grown < 300, f"RSS grew {grown:.0f} MB"


def _middlewares(app):  # type: ignore[no-untyped-def]
    layer = app.middleware_stack
    while layer is not None:
        yield layer
        layer = getattr(layer, "app", None)


def test_a_trickling_stream_is_closed_and_a_real_time_one_is_not(exported_streaming, rows):
    """The wall-clock rule: a client that keeps a stream alive with a few bytes now and then is closed (1008) once
    its first window has passed; one that sends at real time is served to its end."""
    config = ServeConfig(model=exported_streaming, min_stream_rate=0.5, stream_rate_window_s=1.5, stream_idle_s=5)
    with TestClient(create_app(config)) as client:
        with client.websocket_connect("/v1/stream") as ws:
            for _ in range(15):  # 1 ms of audio every 0.2 s, for 3 s (the idle rule alone would never fire)
                ws.send_bytes(b"\x00\x00" * 16)
                time.sleep(0.2)
            messages, code, reason = receive_all(ws)
        assert code == 1008 and "too slowly" in reason and "in the last 1.5 s" in reason, (code, reason)
        assert messages[-1] == {"type": "error", "error": reason}
        audio = int16_bytes(rows[0]["audio"])
        step = 1600 * 2  # 0.1 s
        with client.websocket_connect("/v1/stream") as ws:
            for start in range(0, len(audio), step):
                ws.send_bytes(audio[start : start + step])
                time.sleep(0.1)
            ws.send_text(json.dumps({"type": "end"}))
            messages, code, _ = receive_all(ws)
        assert code == 1000 and messages[-1]["type"] == "final"


def test_a_flooding_stream_is_held_back_and_the_stream_beside_it_is_served(exported_streaming, rows):
    """One client pushes a minute and a half of audio as fast as it can beside one that sends at real time: the
    flooding stream never holds more than a few chunks of undecoded audio (the server stops reading it while it
    does), and both get their text (the real-time stream's latency beside flooders: bench/streaming.py)."""
    import asyncio

    from korasr.serve.streams import StreamHub

    model = StreamingModel(exported_streaming)
    flood = (np.concatenate([r["audio"] for r in rows] * 2) * 32768).astype(np.int16)
    live = (rows[1]["audio"] * 32768).astype(np.int16)
    frame = 1600

    async def scenario():  # type: ignore[no-untyped-def]
        hub = StreamHub(model, max_batch=8)
        hub.start()
        flooder, realtime = hub.open(16000), hub.open(16000)
        held = []

        async def push(conn, audio, pause):  # type: ignore[no-untyped-def]
            for start in range(0, len(audio), frame):
                await hub.feed(conn, audio[start : start + frame])
                if conn is flooder:
                    held.append((conn.pending_samples + conn.stream._new * model.cfg["hop_length"]) / 16000)
                await asyncio.sleep(pause)
            await hub.feed(conn, None)

        async def collect(conn):  # type: ignore[no-untyped-def]
            finals = []
            while True:
                events, done = await conn.events.get()
                conn.unsent -= len(events)
                finals += [e.text for e in events if e.type == "final" and e.text]
                if done:
                    return " ".join(finals)

        *_, flood_text, live_text = await asyncio.gather(push(flooder, flood, 0), push(realtime, live, 0.1),
                                                         collect(flooder), collect(realtime))  # fmt: skip
        await hub.stop()
        return held, flood_text, live_text

    held, flood_text, live_text = asyncio.run(scenario())
    assert max(held) <= 5 * model.chunk_seconds + 0.2, (max(held), model.chunk_seconds)
    assert live_text == " ".join(s.text for s in model.transcribe(live, endpoint=Endpoint()))
    assert flood_text == " ".join(s.text for s in model.transcribe(flood, endpoint=Endpoint()))


def closes(client: TestClient) -> float:
    """Streams the service has counted as ended, whatever the code."""
    counter = client.app.state.korasr.metrics.stream_closes
    return sum(sample.value for metric in counter.collect() for sample in metric.samples
               if sample.name.endswith("_total"))  # fmt: skip


def test_close_codes_are_the_servers_own_and_client_frames_are_client_errors(exported_streaming):
    """A client's own close code is counted as ``client`` (a client cannot create label values); a frame that fails
    to parse, deeply nested JSON included, is a 1007, never a 1011."""
    config = ServeConfig(model=exported_streaming)
    with TestClient(create_app(config)) as client:
        for closed, code in enumerate((4321, 4999, 1001), start=1):
            with client.websocket_connect("/v1/stream") as ws:
                ws.send_bytes(b"\x00\x00" * 160)
                ws.close(code=code)
                # leaving this block cancels the app's task (TestClient does): first let the server see the close
                deadline = time.monotonic() + 10
                while closes(client) < closed and time.monotonic() < deadline:
                    time.sleep(0.02)
        with client.websocket_connect("/v1/stream") as ws:
            ws.send_text('{"type": ' * 50_000)
            _, code, _ = receive_all(ws)
        assert code == 1007
        deadline = time.monotonic() + 10
        while client.app.state.korasr.hub.active and time.monotonic() < deadline:
            time.sleep(0.05)
        text = client.get("/metrics").text
    codes = {line.split('"')[1] for line in text.splitlines() if line.startswith("korasr_stream_closes_total{")}
    assert codes == {"client", "1007"}, codes
    assert metric(text, 'korasr_stream_closes_total{code="client"}') == 3
