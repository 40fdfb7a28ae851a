"""Every send to a client has a deadline: a client that stops reading cannot hold what it was given.

uvicorn's ``send`` waits while the connection's write buffer is over its high-water mark, that is, for as long as
the client does not read. :class:`Service` wraps the ``send`` of every HTTP request and WebSocket with a deadline
(``send_timeout_s``); past it the connection's transport is aborted (a reset, not a polite close that would wait
for the same full buffer) and :class:`SendTimeout` is raised in the route, which then releases what it holds (the
admission slot, a stream and its decoder state). The write buffer's high-water mark and the socket's kernel send
buffer are ``send_buffer_bytes`` each, so what a client that reads nothing makes the server hold is bounded too
(and its sends block, hence time out, once that much is waiting).

ASGI has no abort: the transport is found on the server's own ``send`` (uvicorn's protocol objects carry it).
Under a server without one (the test client) the send is still bounded, the connection is only left to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI

log = logging.getLogger(__name__)
Send = Callable[[dict], Awaitable[None]]


class SendTimeout(Exception):
    """A send to the client did not complete within the deadline; the connection was aborted."""


def transport_of(send: Any) -> asyncio.BaseTransport | None:
    """The connection's transport, where the server's ``send`` is a method of an object that has one (uvicorn)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if isinstance(transport, asyncio.BaseTransport) else None


def unread_bytes(transport: asyncio.BaseTransport | None) -> int:
    """Bytes written for the client that it has not taken yet: the transport's buffer plus the kernel's send queue
    (``SIOCOUTQ``: sent but unacknowledged, or not sent; Linux, elsewhere the transport's share alone)."""
    if not isinstance(transport, asyncio.WriteTransport):
        return 0
    queued = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None and hasattr(termios, "TIOCOUTQ"):
        with contextlib.suppress(OSError, ValueError):
            queued += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return queued


def bounded_send(send: Send, timeout_s: float, buffer_bytes: int, scope: dict,
                 on_timeout: Callable[[str], None] | None = None) -> Send:  # fmt: skip
    """``send`` with a deadline; on timeout the transport is aborted and :class:`SendTimeout` raised. Puts an
    ``abort()`` for the routes into ``scope["korasr.abort"]`` (for what they decide themselves, e.g. results
    left unread).

    On a WebSocket the deadline also holds when the sends themselves still return: the kernel and the client's
    receive buffer can swallow minutes of small results before a send blocks, so once more than a quarter of
    ``buffer_bytes`` written for the client stays unread (:func:`unread_bytes`) for ``timeout_s``, it is treated as a
    send past its deadline."""
    transport = transport_of(send)
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=buffer_bytes)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # the kernel's share too: a fixed send buffer instead of one that grows to megabytes
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
    loop = asyncio.get_running_loop()
    behind_since: float | None = None
    unread_limit = buffer_bytes // 4  # a reading client's unacknowledged bytes stay far below (results are ~kB/s)

    def abort() -> None:  # also after a polite close, which would wait for the same full buffer
        if transport is not None:
            transport.abort()

    def timed_out(what: str) -> SendTimeout:
        abort()
        if on_timeout:
            on_timeout(scope["type"])
        return SendTimeout(f"{what} for {timeout_s:g} s: connection aborted")

    async def send_by_deadline(message: dict) -> None:
        nonlocal behind_since
        try:
            await asyncio.wait_for(send(message), timeout_s)
        except TimeoutError:
            raise timed_out("the client read nothing") from None
        if scope["type"] != "websocket":
            return
        if unread_bytes(transport) <= unread_limit:
            behind_since = None
        elif behind_since is None:
            behind_since = loop.time()
        elif loop.time() - behind_since > timeout_s:
            raise timed_out(f"more than {unread_limit} bytes stayed unread")

    scope["korasr.abort"] = abort
    return send_by_deadline


class Service(FastAPI):
    """FastAPI whose every send is bounded in time (:func:`bounded_send`); a send that timed out ends its
    request quietly (logged once, counted), never as a server error."""

    send_timeout_s: float = 10.0
    send_buffer_bytes: int = 64 * 1024
    on_send_timeout: Callable[[str], None] | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await super().__call__(scope, receive, send)
            return
        send = bounded_send(send, self.send_timeout_s, self.send_buffer_bytes, scope, self.on_send_timeout)
        try:
            await super().__call__(scope, receive, send)
        except SendTimeout as e:
            log.warning("%s %s: %s", scope["type"], scope.get("path", "")[:100], e)
