"""The service's bounds that need no model: the send deadline on a real socket, the pace rule of a stream, the API
key's subprotocol, and the redaction of keys from log lines."""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest

from korasr.serve.deadline import SendTimeout, bounded_send
from korasr.serve.gate import Redact, key_matches, subprotocol_key
from korasr.serve.sessions import Pace, StreamClosed


class Connection:
    """A server side of a real loopback connection, with a ``send`` that waits while its buffer is full (as
    uvicorn's does)."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer, self.transport = writer, writer.transport

    async def send(self, message: dict) -> None:
        self.writer.write(message["body"])
        await self.writer.drain()


def test_a_send_to_a_client_that_reads_nothing_is_aborted_at_its_deadline():
    async def scenario():  # type: ignore[no-untyped-def]
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()
        server = await asyncio.start_server(lambda r, w: accepted.set_result(w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _reader, _ = await asyncio.open_connection("127.0.0.1", port, limit=1024)  # stops reading at 2 KiB
        connection = Connection(await accepted)
        scope: dict = {"type": "websocket"}
        timed_out = []
        send = bounded_send(connection.send, 0.5, 4096, scope, timed_out.append)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        with pytest.raises(SendTimeout, match=r"read nothing for 0\.5 s"):
            while True:
                await send({"body": b"x" * 65536})
                sent += 1
        took = loop.time() - started
        closing = connection.transport.is_closing()
        server.close()
        return took, closing, sent, timed_out, scope

    took, closing, sent, timed_out, scope = asyncio.run(scenario())
    assert 0.5 <= took < 5 and closing and sent < 200  # aborted, not left to wait on the same buffer
    assert timed_out == ["websocket"] and callable(scope["korasr.abort"])


def test_pace_closes_a_trickle_after_its_first_window_and_not_a_real_time_stream():
    trickle = Pace(16000, min_rate=0.5, window_s=15)
    with pytest.raises(StreamClosed) as closed:
        for _ in range(100):  # two bytes every nine seconds
            trickle.waited(9.0)
            trickle.received(1)
            trickle.check()
    assert closed.value.code == 1008 and "too slowly" in closed.value.reason and trickle.clock == 18
    live = Pace(16000, min_rate=0.5, window_s=15)
    for _ in range(3000):  # 100 ms frames, 100 ms apart, for five minutes
        live.waited(0.1)
        live.received(1600)
        live.check()
    assert len(live.marks) <= 17  # one mark per second of the window, whatever the frame rate
    burst = Pace(16000, min_rate=0.5, window_s=15)
    burst.waited(0.01)
    burst.received(16000 * 600)  # ten minutes sent at once, then the server holds the client back (not waited)
    for _ in range(100):
        burst.waited(0.1)
        burst.received(1600)
        burst.check()
    off = Pace(16000, min_rate=0, window_s=15)
    off.waited(100)
    off.check()


def test_the_key_rides_in_a_subprotocol_and_never_in_a_url():
    encoded = base64.urlsafe_b64encode("키-ö/+=".encode()).decode().rstrip("=")
    assert subprotocol_key(["korasr", "korasr.key." + encoded]) == "키-ö/+="
    assert subprotocol_key(["korasr", "korasr.key.%%%"]) == "" and subprotocol_key(["korasr"]) == ""
    assert key_matches({}, "키-ö/+=", ["korasr", "korasr.key." + encoded])
    assert key_matches({"x-api-key": "k"}, "k") and key_matches({"authorization": "Bearer k"}, "k")
    assert not key_matches({}, "k") and not key_matches({"x-api-key": "K"}, "k")


def test_log_lines_lose_the_key_and_any_secret_query_value():
    redact = Redact("s3cret-key")
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/metrics?api_key=abc&x=1&token=s3cret-key", "1.1", 401), None)  # fmt: skip
    assert redact.filter(record)
    line = record.getMessage()
    assert "abc" not in line and "s3cret-key" not in line
    assert "api_key=[redacted]&x=1&token=[redacted]" in line
    plain = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "started %s", ("ok",), None)
    assert redact.filter(plain) and plain.getMessage() == "started ok" and plain.args == ("ok",)


def test_a_websocket_client_whose_results_stay_unread_is_aborted_before_any_send_blocks():
    """Small results to a client that reads nothing (a small receive buffer): the kernel takes each send at once,
    but once more than the buffer's worth stays unread for the deadline, the connection is aborted (counted as a
    send timeout) before the sends themselves would block."""
    import socket

    async def scenario():  # type: ignore[no-untyped-def]
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()
        server = await asyncio.start_server(lambda r, w: accepted.set_result(w), "127.0.0.1", 0)
        client = socket.socket()  # never read from
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        client.connect(server.sockets[0].getsockname())
        connection = Connection(await accepted)
        timed_out: list[str] = []
        send = bounded_send(connection.send, 0.3, 8192, {"type": "websocket"}, timed_out.append)
        sent = 0
        with pytest.raises(SendTimeout, match="stayed unread"):
            for _ in range(10_000):
                await send({"body": b"r" * 1024})  # 20 kB/s: the sends would block only after about 1.5 s
                sent += 1
                await asyncio.sleep(0.05)
        client.close()
        server.close()
        return sent, timed_out, connection.transport.is_closing()

    sent, timed_out, closing = asyncio.run(scenario())
    assert timed_out == ["websocket"] and closing and sent < 100
