"""The gate in front of the routes (a pure ASGI middleware): what must be decided before a request body is read.

- the API key, checked from the headers before any body byte is read (every path but ``/health`` and the page
  at ``/``; the docs too unless ``public_docs``), and before a WebSocket is accepted (a refused upgrade is an HTTP
  403); never from the URL, which reaches access logs; one key header per request (``presented_key``, the parser
  the jobs name their owner with too: two key headers get 400); ``/admin/*`` takes only the operator key;
- admission: at most ``queue_size`` transcription requests (job submissions included) at once; up to
  ``max_waiting`` more wait for a slot in arrival order (so a client that retries in a tight loop cannot starve one
  that waits its turn), and beyond that, or with no slot before the upload deadline, 503 with Retry-After;
- an upload deadline: a request not admitted with its body complete within ``upload_timeout_s`` of arriving gets
  503 or 408, so slow clients cannot hold the slots;
- the request metrics, labelled by route template (unknown paths share the label ``unmatched``, so labels are a
  fixed set), counting every outcome, the 500 of an exception that escapes the routes included;
- the drain (``drain.py``): from SIGTERM on, ``/v1/*`` requests and stream handshakes get 503, requests waiting for
  a slot too, and every response says ``Connection: close``; at the drain's release point, admitted requests whose
  body is still arriving get 503 too (before the exit would reset them);
- the request's id (``X-Request-Id``, ``logs.py``), echoed on every response, and with ``--log-format json`` the
  request's one record when it ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
import time
from collections import deque
from typing import Any

from starlette.routing import Match

from korasr.errors import without_credentials
from korasr.runtime.triton_session import UpstreamError
from korasr.serve.logs import REQUEST, request_id, write_request

UPLOAD_ROUTES = frozenset({"/v1/transcribe", "/v1/audio/transcriptions", "/v1/jobs"})
PUBLIC_ROUTES = frozenset({"/health", "/"})
ADMIN_PREFIX = "/admin/"  # operators' routes: the operator key only (KORASR_ADMIN_KEY)
DOC_ROUTES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
UNMATCHED = "unmatched"
DRAINING = "server shutting down (draining): send it to another replica"
LINGER_S = 1.0  # after a 503 cut an upload short, what the client still sends is read (and dropped) this long


async def reply(send: Any, status: int, message: str, headers: dict[str, str] | None = None,
                more_body: bool = False) -> None:  # fmt: skip
    """A JSON error response; with ``more_body`` its body is whole but the response not ended (the caller ends it)."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


async def refuse_upgrade(scope: dict, send: Any, status: int, message: str) -> None:
    """Answer a WebSocket upgrade with an HTTP error and a JSON reason (the ASGI denial-response extension), or a
    bare 403 where the server lacks it; either way the WebSocket is never accepted."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"error": message}).encode()
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


KEY_SUBPROTOCOL = "korasr.key."  # browsers' WebSockets cannot set headers: the key rides in a subprotocol
STREAM_SUBPROTOCOL = "korasr"  # the subprotocol the server accepts; the key's own is never echoed
KEY_HELP = "Authorization: Bearer KEY or X-API-Key: KEY; WebSockets also the subprotocol korasr.key.<base64url(KEY)>"


def subprotocol_key(protocols: list[str]) -> str:
    """The API key a browser offered as the WebSocket subprotocol ``korasr.key.<base64url(KEY)>`` ('' if none)."""
    for protocol in protocols:
        if protocol.startswith(KEY_SUBPROTOCOL) and len(protocol) <= 2048:
            encoded = protocol[len(KEY_SUBPROTOCOL) :]
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    return ""


KEY_HEADERS = ("authorization", "x-api-key")


class KeyHeaders(ValueError):
    """A request with more than one key header: which one names its owner would be a guess (400)."""


def key_headers(headers: Any) -> list[tuple[str, str]]:
    """Every ``Authorization`` and ``X-API-Key`` header of a request, repeated ones included: from raw ASGI headers
    (``(bytes, bytes)`` pairs), a Starlette ``Headers`` (its raw list) or a plain mapping of lower-case names."""
    pairs = getattr(headers, "raw", headers)
    pairs = pairs.items() if hasattr(pairs, "items") else pairs
    found = []
    for name, value in pairs:
        name = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
        if name in KEY_HEADERS:
            found.append((name, value.decode("latin-1") if isinstance(value, bytes) else value))
    return found


def presented_key(headers: Any, subprotocols: list[str] | None = None) -> str:
    """The key a request presents: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, or for a WebSocket the
    subprotocol ``korasr.key.<base64url(KEY)>`` ('' if none). Never from the URL: it reaches logs. The one parser
    of keys: the gate checks the key with it and the jobs name their owner with it, so both read the same header.
    More than one key header (two ``X-API-Key``, two ``Authorization``, or one of each) raises :class:`KeyHeaders`:
    a client sends one key."""
    found = key_headers(headers)
    if len(found) > 1:
        raise KeyHeaders(f"{len(found)} key headers ({', '.join(name for name, _ in found)}): send one key, in "
                         "Authorization: Bearer KEY or X-API-Key: KEY")  # fmt: skip
    if not found:
        return subprotocol_key(subprotocols or [])
    name, value = found[0]
    if name == "authorization":
        return value[7:].strip() if value.startswith("Bearer ") else ""
    return value.strip()


def api_keys(api_key: str) -> list[str]:
    """The keys of ``KORASR_API_KEY``: several, separated by commas, are several clients (each owns its jobs)."""
    return [key.strip() for key in api_key.split(",") if key.strip()]


def key_matches(headers: Any, api_key: str, subprotocols: list[str] | None = None) -> bool:
    """The request presents one of the keys (:func:`presented_key`), each compared in constant time."""
    given = presented_key(headers, subprotocols).encode()
    return any([secrets.compare_digest(given, key.encode()) for key in api_keys(api_key)])  # every key compared


_SECRET_QUERY = re.compile(r"([?&](?:api_key|apikey|key|token|access_token)=)[^&\s\"']*", re.IGNORECASE)


class Redact(logging.Filter):
    """Takes the API key (and any ``api_key=``/``token=`` query value, and a URL's ``user:password@``) out of a log
    record before it is written, its message and its traceback: uvicorn logs every path with its query (the access
    log, and WebSocket handshakes on ``uvicorn.error``), and an exception's message may name a key or a URL."""

    def __init__(self, secret: str | None):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (cleaned := self.clean(message)) != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:  # a traceback's text (an exception's message may hold a key or a
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)  # URL with credentials), formatted once
        if record.exc_text:  # the formatters write exc_text when set (JSON and text alike)
            record.exc_text = self.clean(record.exc_text)
        return True

    def clean(self, text: str) -> str:
        cleaned = without_credentials(_SECRET_QUERY.sub(r"\1[redacted]", text))
        for key in api_keys(self.secret or ""):
            cleaned = cleaned.replace(key, "[redacted]")
        return cleaned


_TRACEBACKS = logging.Formatter()  # formats a record's exception as every handler's formatter would


def redact_logs(secret: str | None, loggers: tuple[str, ...] = ("uvicorn.access", "uvicorn.error", "uvicorn")) -> None:
    """Install :class:`Redact` on uvicorn's loggers and on the root logger's handlers, which write korasr's records
    (replacing one installed before, so the newest key counts)."""
    for target in [*map(logging.getLogger, loggers), *logging.getLogger().handlers]:
        for old in [f for f in target.filters if isinstance(f, Redact)]:
            target.removeFilter(old)
        target.addFilter(Redact(secret))


class Gate:
    def __init__(self, app: Any, *, config: Any, routes: list, metrics: Any, state: Any = None):
        self.app, self.config, self.routes, self.metrics, self.state = app, config, routes, metrics, state
        self.admitted = 0  # requests holding a slot
        self.waiters: deque[asyncio.Future] = deque()  # requests waiting for one, in arrival order
        self.working = 0  # requests to /v1/ routes in progress (what a drain waits for)
        self.receiving = 0  # admitted uploads whose body is still arriving
        self.open_routes = PUBLIC_ROUTES | (DOC_ROUTES if config.public_docs else frozenset())
        if state is not None:
            state.drain.gate = self

    @property
    def draining(self) -> bool:
        return self.state is not None and self.state.drain.active

    def refuse_waiting(self) -> None:
        """The drain began: requests waiting for a slot (not admitted, no body read) get 503 now."""
        for turn in self.waiters:
            if not turn.done():
                turn.set_result(False)

    def route_of(self, scope: dict) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", UNMATCHED)
        return UNMATCHED

    def refusal(self, scope: dict, route: str) -> tuple[int, str] | None:
        """Why the request may not reach ``route`` (status, reason), or None. ``/admin/*`` takes only the operator key
        (``admin_key``): without one configured those routes are off (404), a client key gets 403. Every other route
        but the open ones takes a client key (``api_key``), when one is set."""
        admin = route.startswith(ADMIN_PREFIX)
        if not admin and (not self.config.api_key or route in self.open_routes):
            return None
        if admin and not self.config.admin_key:
            return 404, "the admin routes are off: the server has no operator key (KORASR_ADMIN_KEY)"
        try:
            given = presented_key(scope.get("headers", []),
                                  scope.get("subprotocols") if scope["type"] == "websocket" else None)  # fmt: skip
        except KeyHeaders as e:
            return 400, str(e)
        client_key = self.config.api_key.get_secret_value() if self.config.api_key else ""
        if not admin:
            return None if key_matches({"x-api-key": given}, client_key) else (401, f"missing or wrong API key "
                                                                               f"({KEY_HELP})")  # fmt: skip
        if secrets.compare_digest(given.encode(), self.config.admin_key.get_secret_value().encode()):
            return None
        if client_key and key_matches({"x-api-key": given}, client_key):
            return 403, "an operator key is needed (KORASR_ADMIN_KEY): a client key does not open /admin"
        return 401, "missing or wrong operator key (KORASR_ADMIN_KEY; Authorization: Bearer KEY or X-API-Key: KEY)"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        route = self.route_of(scope)
        context = {"request_id": request_id(scope.get("headers", [])), "method": scope.get("method", "GET"),
                   "route": route}  # fmt: skip
        token = REQUEST.set(context)
        started = time.perf_counter()
        try:
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, self._sender(send, context), route)
            else:
                await self._http(scope, receive, self._sender(send, context), route, context, started)
        finally:
            REQUEST.reset(token)
            if self.config.log_format == "json":
                context["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
                if "model" not in context and self.state is not None and self.state.current is not None:
                    context.update(self.state.current.log_fields())
                write_request(context)

    def _sender(self, send: Any, context: dict) -> Any:
        """``send`` that echoes the request id on the response (a refused or accepted WebSocket upgrade too), adds
        ``Connection: close`` while draining (a keep-alive client moves on), and notes the status and close code."""
        echo = (b"x-request-id", context["request_id"].encode())

        async def tracked(message: dict) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start", "websocket.accept"):
                context["status"] = message.get("status", 101)
                headers = [*message.get("headers", []), echo]
                if kind == "http.response.start" and self.draining:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            elif kind == "websocket.close":
                if "status" in context:
                    context["close_code"] = message.get("code", 1000)
                else:  # closed before the upgrade: uvicorn answers 403
                    context["status"] = 403
            await send(message)

        return tracked

    async def _websocket(self, scope: dict, receive: Any, send: Any, route: str) -> None:
        refused = self.refusal(scope, route)
        if refused is None and self.draining and route.startswith("/v1/"):
            refused = 503, DRAINING
        if refused:  # refused before the upgrade is accepted: an HTTP error
            status, reason = refused
            self.metrics.stream_closes.labels(str(403 if status == 401 else status)).inc()
            await refuse_upgrade(scope, send, 403 if status == 401 else status, reason)
            return
        await self.app(scope, receive, send)

    async def _http(self, scope: dict, receive: Any, send: Any, route: str, context: dict, started: float) -> None:
        work = route.startswith("/v1/")
        self.metrics.in_flight.inc()
        counted = False
        try:
            if refused := self.refusal(scope, route):
                await reply(send, *refused)
            elif work and self.draining:
                await reply(send, 503, DRAINING, {"Retry-After": "1"})
            else:
                counted = work
                self.working += counted
                if route in UPLOAD_ROUTES and scope.get("method") == "POST":
                    await self._admit(scope, receive, send)
                else:
                    await self.app(scope, receive, send)
        except UpstreamError as e:  # gateway mode: Triton could not answer (503) or not in time (504), said why
            if "status" not in context:
                await reply(send, e.status, str(e), {"Retry-After": "1"})
        except Exception as e:  # answered here, not by the server-error handler outside: the response carries its id
            if "status" not in context:
                await reply(send, 500, f"internal error: {type(e).__name__}")
            raise
        finally:
            self.working -= counted
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(context.get("status", 500))).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _slot(self, timeout: float) -> bool:
        """Take an admission slot, waiting in arrival order behind at most ``max_waiting`` others until
        ``timeout``; False when none came. Waiting holds only the connection: no body byte is read."""
        if self.admitted < self.config.queue_size and not self.waiters:
            self.admitted += 1
            return True
        if len(self.waiters) >= self.config.max_waiting:
            return False
        turn = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        try:  # a slot handed over at the timeout still counts; False: refused, the server began draining
            return await asyncio.wait_for(turn, timeout) is not False
        except TimeoutError:
            return False
        except BaseException:  # cancelled (server shutdown): a slot handed over just then is passed on
            if turn.done() and not turn.cancelled() and turn.result() is not False:
                self._release()
            raise
        finally:
            if turn in self.waiters:
                self.waiters.remove(turn)

    def _release(self) -> None:
        while self.waiters:  # hand the slot to the first request still waiting
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.admitted -= 1

    async def _admit(self, scope: dict, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.upload_timeout_s
        if not await self._slot(self.config.upload_timeout_s):
            await reply(send, 503, DRAINING if self.draining else f"server busy: {self.config.queue_size} requests in "
                        f"progress and {len(self.waiters)} waiting", {"Retry-After": "1"})  # fmt: skip
            return
        body_done = timed_out = cut = replied = passed = False
        releasing = self.state.drain.releasing if self.state is not None else None
        self.receiving += 1

        def arrived() -> None:  # once: the body is complete, or the request ends
            nonlocal body_done
            if not body_done:
                body_done = True
                self.receiving -= 1

        async def receive_by_deadline() -> dict:
            nonlocal timed_out, cut
            if body_done:
                return await receive()
            message = await first_of(receive(), releasing, max(deadline - loop.time(), 0.0))
            if message is None:
                cut = releasing is not None and releasing.is_set()
                timed_out = not cut
                raise UploadCut if cut else UploadTimeout
            if message["type"] != "http.request" or not message.get("more_body", False):
                arrived()
            return message

        async def refuse() -> None:
            nonlocal replied
            replied = True
            if cut:  # the response is ended after the linger below
                await reply(send, 503, DRAINING, {"Retry-After": "1"}, more_body=True)
            else:
                await reply(send, 408, f"upload not complete within {self.config.upload_timeout_s:g} s")

        async def send_or_refuse(message: dict) -> None:
            nonlocal passed
            if passed or not (timed_out or cut):  # a response begun before the body ended goes on as it was
                passed = passed or message["type"] == "http.response.start"
                await send(message)
            elif not replied and message["type"] == "http.response.start":  # the routes' own 400 for a broken body
                await refuse()

        held = True

        def release_slot() -> None:  # once: by the route when what remains holds no slot (a job's URL fetch), or here
            nonlocal held
            if held:
                held = False
                self._release()

        scope["korasr.release_slot"] = release_slot
        try:
            await self.app(scope, receive_by_deadline, send_or_refuse)
        except (UploadTimeout, UploadCut):
            if not (replied or passed):
                await refuse()
        finally:
            release_slot()
            arrived()
        if cut and replied:
            await self._linger(receive, send)

    async def _linger(self, receive: Any, send: Any) -> None:
        """After the drain's 503 to an upload still arriving: read and drop what the client still sends for a moment
        (within what is left of the drain), then end the response. Closing with unread bytes is a reset, which can
        destroy the 503 before the client reads it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(LINGER_S, self.state.drain.left_s() / 4)):
                while True:
                    message = await receive()
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        break
        await send({"type": "http.response.body", "body": b""})


async def first_of(receiving: Any, event: asyncio.Event | None, timeout: float) -> dict | None:
    """What ``receiving`` (an awaitable) gives, or None when ``timeout`` passes or ``event`` is set first (then it is
    cancelled)."""
    task = asyncio.ensure_future(receiving)
    waits = {task} if event is None else {task, asyncio.ensure_future(event.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    return task.result() if task.done() and not task.cancelled() else None


class UploadCut(Exception):
    """The drain's release point came while the request body was still arriving."""


class UploadTimeout(Exception):
    """The request body did not arrive within the upload deadline."""
