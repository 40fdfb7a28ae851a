"""`korasr serve --log-format json`: one JSON object per line on stdout, one per request (the gate writes it when the
request ends: time, level, request id, method, route template, status, latency, audio seconds when known, the model
that served it) and one per every other record (startup, reloads, errors), in the same shape with its message.

A request's id is the client's ``X-Request-Id`` when it is a sane token (1 to 128 of ``A-Za-z0-9._-``), else a new
one (uuid4 hex); the gate echoes it on every response and every record logged while the request is served carries
it. Never a key, a transcript, audio or a query string: a request's record is built from fields (the route
template, not the path), and every message passes the gate's redaction (:func:`korasr.serve.gate.redact_logs`).
With ``--log-format text`` uvicorn's own lines stay as they were."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

# the fields of the request being served; the gate sets it, the routes add to it (a dict: tasks the request starts
# copy the context, and their additions still reach the gate's record)
REQUEST: contextvars.ContextVar[dict | None] = contextvars.ContextVar("korasr_request", default=None)
SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
FIELDS = ("request_id", "method", "route", "status", "close_code", "latency_ms", "audio_seconds", "model",
          "model_version")  # fmt: skip
access = logging.getLogger("korasr.serve.access")


def request_id(headers: Any) -> str:
    """The client's ``X-Request-Id`` (raw ASGI headers) when it is a sane token, else a new one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            given = value.decode("latin-1")
            return given if SANE_ID.fullmatch(given) else uuid.uuid4().hex
    return uuid.uuid4().hex


def note(**fields: Any) -> None:
    """Add fields to the record of the request being served (nothing outside a request)."""
    context = REQUEST.get()
    if context is not None:
        context.update(fields)


def write_request(context: dict) -> None:
    """The request's record, at its end (the gate's)."""
    status = context.get("status", 0)
    access.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s %s", context["method"], context["route"],
               status, extra={k: context[k] for k in FIELDS if context.get(k) is not None})  # fmt: skip


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry = {"time": moment.replace("+00:00", "Z"), "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}  # fmt: skip
        for name in FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:  # the gate's redaction has set exc_text: the redacted text
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


# uvicorn's lines per WebSocket (the gate's record of the request replaces them), told by their format string: the
# formatted line holds the client's path and query, which could imitate anything
_HANDSHAKE_FORMAT = '%s - "WebSocket %s" '
_CONNECTION_LINES = frozenset({"connection open", "connection closed"})


def websocket_line(record: logging.LogRecord) -> bool:
    msg = record.msg if isinstance(record.msg, str) else ""
    return msg.startswith(_HANDSHAKE_FORMAT) or (msg in _CONNECTION_LINES and not record.args)


def detached() -> contextvars.Context:
    """A context for a task that outlives the request that starts it (a batcher or stream hub loaded by a reload, a
    retired model's release): the request's fields left out, so its later records carry no stale request id."""
    context = contextvars.copy_context()
    context.run(REQUEST.set, None)
    return context


class RequestFields(logging.Filter):
    """Every record logged while a request is served carries its id; uvicorn's lines per WebSocket are left out (the
    gate writes the request's own record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error" and record.levelno == logging.INFO and websocket_line(record):
            return False
        context = REQUEST.get()
        if context is not None and getattr(record, "request_id", None) is None:
            record.request_id = context["request_id"]
        return True


def uvicorn_log_config() -> dict:
    """uvicorn's ``log_config`` for ``--log-format json``: uvicorn's loggers and the root (korasr's) through one JSON
    handler on stdout. uvicorn's access log goes off with it (``access_log=False``): the gate writes one record per
    request instead."""
    stdout = {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "korasr.serve.logs.JsonFormatter"}},
        "filters": {"request": {"()": "korasr.serve.logs.RequestFields"}},
        "handlers": {"stdout": {**stdout, "filters": ["request"]}},
        "loggers": {
            "uvicorn": {"handlers": [], "level": "INFO", "propagate": True},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            # httpx logs every request's URL at INFO, query included: a presigned source URL, a callback's token
            "httpx": {"level": "WARNING"},
        },
        "root": {"handlers": ["stdout"], "level": "INFO"},
    }
