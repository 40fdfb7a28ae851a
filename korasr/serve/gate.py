"""The gate in front of the routes (a pure ASGI middleware): what must be decided before a request body is read.

- the API key, checked from the headers before any body byte is read (every path but ``/health`` and the page
  at ``/``; the docs too unless ``public_docs``);
- admission: at most ``queue_size`` transcription requests at once, one more gets 503 with Retry-After at once;
- an upload deadline: a body not complete within ``upload_timeout_s`` gets 408, so slow clients cannot hold
  the admission slots;
- the request metrics, labelled by route template (unknown paths share the label ``unmatched``, so labels are a
  fixed set), counting every outcome, the 500 of an exception that escapes the routes included.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from starlette.routing import Match

UPLOAD_ROUTES = frozenset({"/v1/transcribe", "/v1/audio/transcriptions"})
PUBLIC_ROUTES = frozenset({"/health", "/"})
DOC_ROUTES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
UNMATCHED = "unmatched"


async def reply(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Gate:
    def __init__(self, app: Any, *, config: Any, routes: list, metrics: Any):
        self.app, self.config, self.routes, self.metrics = app, config, routes, metrics
        self.admitted = 0
        self.open_routes = PUBLIC_ROUTES | (DOC_ROUTES if config.public_docs else frozenset())

    def route_of(self, scope: dict) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", UNMATCHED)
        return UNMATCHED

    def key_ok(self, scope: dict) -> bool:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.startswith("Bearer ") else headers.get("x-api-key", "")
        return secrets.compare_digest(given.encode(), self.config.api_key.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_of(scope)
        status = 500  # what an exception escaping the routes becomes (ServerErrorMiddleware answers it)
        started = time.perf_counter()

        async def observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if self.config.api_key and route not in self.open_routes and not self.key_ok(scope):
                await reply(observed, 401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)")
            elif route in UPLOAD_ROUTES and scope.get("method") == "POST":
                await self._admit(scope, receive, observed)
            else:
                await self.app(scope, receive, observed)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _admit(self, scope: dict, receive: Any, send: Any) -> None:
        if self.admitted >= self.config.queue_size:
            await reply(send, 503, f"server busy: {self.config.queue_size} requests in progress",
                        {"Retry-After": "1"})  # fmt: skip
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.upload_timeout_s
        body_done = timed_out = replied = False

        async def receive_by_deadline() -> dict:
            nonlocal body_done, timed_out
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                timed_out = True
                raise UploadTimeout from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_or_408(message: dict) -> None:
            nonlocal replied
            if not timed_out:
                await send(message)
            elif not replied and message["type"] == "http.response.start":  # the routes' own 400 for a broken body
                replied = True
                await reply(send, 408, f"upload not complete within {self.config.upload_timeout_s:g} s")

        self.admitted += 1
        try:
            await self.app(scope, receive_by_deadline, send_or_408)
        except UploadTimeout:
            if not replied:
                await reply(send, 408, f"upload not complete within {self.config.upload_timeout_s:g} s")
        finally:
            self.admitted -= 1


class UploadTimeout(Exception):
    """The request body did not arrive within the upload deadline."""
