"""Every send to a client has a deadline: a client that stops reading cannot hold what it was given.

uvicorn's ``send`` waits while the connection's write buffer is over its high-water mark, that is, for as long as
the client does not read. :class:`Service` wraps the ``send`` of every HTTP request and WebSocket with a deadline
(``send_timeout_s``); past it the connection's transport is aborted (a reset, not a polite close that would wait
for the same full buffer) and :class:`SendTimeout` is raised in the route, which then releases what it holds (the
admission slot, a stream and its decoder state). The write buffer's high-water mark is ``send_buffer_bytes``, so
what a client that reads nothing makes the server hold is bounded too.

ASGI has no abort: the transport is found on the server's own ``send`` (uvicorn's protocol objects carry it).
Under a server without one (the test client) the send is still bounded, the connection is only left to the server.
"""

from __future__ import annotations

import asyncio
import logging
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


def bounded_send(send: Send, timeout_s: float, buffer_bytes: int, scope: dict,
                 on_timeout: Callable[[str], None] | None = None) -> Send:  # fmt: skip
    """``send`` with a deadline; on timeout the transport is aborted and :class:`SendTimeout` raised. Puts an
    ``abort()`` for the routes into ``scope["korasr.abort"]`` (for what they decide themselves, e.g. results
    left unread)."""
    transport = transport_of(send)
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=buffer_bytes)

    def abort() -> None:  # also after a polite close, which would wait for the same full buffer
        if transport is not None:
            transport.abort()

    async def send_by_deadline(message: dict) -> None:
        try:
            await asyncio.wait_for(send(message), timeout_s)
        except TimeoutError:
            abort()
            if on_timeout:
                on_timeout(scope["type"])
            raise SendTimeout(f"the client read nothing for {timeout_s:g} s: connection aborted") from None

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
