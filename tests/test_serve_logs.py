"""`korasr serve --log-format json` (korasr/serve/logs.py): every line the server prints is one JSON object, one per
request with its fields and the same shape for every other record; ``X-Request-Id`` is taken when sane, made
otherwise, echoed on every response (errors and 503s too) and logged; no key, transcript or query string is ever
printed, and uvicorn's own access lines are gone."""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import socket
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from korasr.serve.logs import REQUEST, JsonFormatter, RequestFields, request_id
from tests.conftest import eval_rows, int16_bytes, serve_process

pytestmark = pytest.mark.slow

KEY, ADMIN = secrets.token_hex(16), secrets.token_hex(16)


def test_request_ids_are_taken_when_sane_and_made_otherwise():
    assert request_id([(b"x-request-id", b"trace.A-1_b")]) == "trace.A-1_b"
    assert request_id([(b"X-Request-ID", b"x" * 128)]) == "x" * 128
    for bad in (b"", b"x" * 129, b"two words", b"a\nb", b"id;drop", "한글".encode()):
        made = request_id([(b"x-request-id", bad)])
        assert re.fullmatch(r"[0-9a-f]{32}", made), bad
    assert request_id([]) != request_id([])


def test_records_logged_while_a_request_is_served_carry_its_id():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestFields())
    logger = logging.getLogger("korasr.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = REQUEST.set({"request_id": "abc"})
        logger.warning("inside %s", "a request")
        REQUEST.reset(token)
        logger.warning("outside")
        logging.getLogger("uvicorn.error").handle(logging.makeLogRecord(
            {"name": "uvicorn.error", "levelno": logging.INFO, "msg": '%s - "WebSocket %s" [accepted]',
             "args": ("127.0.0.1:5", "/v1/stream")}))  # fmt: skip
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["message"] == "inside a request" and inside["request_id"] == "abc" and inside["level"] == "warning"
    assert "request_id" not in outside and outside["logger"] == "korasr.test.logs"
    assert not RequestFields().filter(logging.makeLogRecord(
        {"name": "uvicorn.error", "levelno": logging.INFO, "msg": '%s - "WebSocket %s" 403',
         "args": ("127.0.0.1:5", "/v1/stream?api_key=x")}))  # fmt: skip


def hold_the_only_slot(url: str) -> socket.socket:
    """A client admitted to /v1/transcribe that sends its body slowly: with --queue-size 1 it holds the only slot."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: multipart/form-data; "
                 "boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n".encode())  # fmt: skip
    return sock


def test_json_logs_one_object_per_request_with_its_id_and_no_secrets(exported_streaming, recipe, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    from websockets.sync.client import connect

    monkeypatch.setenv("KORASR_ADMIN_KEY", ADMIN)
    rows = eval_rows(recipe, 2)
    clip = Path(rows[0]["audio_filepath"])
    log = tmp_path / "serve.log"
    auth = {"X-API-Key": KEY}
    args = ("--log-format", "json", "--queue-size", "1", "--max-waiting", "0", "--jobs-dir", str(tmp_path / "jobs"))
    with serve_process(exported_streaming, log, *args, key=KEY) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            ok = http.post("/v1/transcribe", files={"audio": (clip.name, clip.read_bytes())},
                           headers={**auth, "X-Request-Id": "trace.ok-1"})  # fmt: skip
            assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace.ok-1"
            text = ok.json()["text"]
            bad = http.post("/v1/transcribe", files={"audio": ("x.pcm", b"\0" * 64)}, data={"encoding": "s16le"},
                            headers=auth)  # fmt: skip
            assert bad.status_code == 400 and re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
            wrong = http.post(f"/v1/transcribe?api_key={KEY}", files={"audio": (clip.name, clip.read_bytes())},
                              headers={"X-API-Key": "wrong", "X-Request-Id": "bad id!"})  # fmt: skip
            assert wrong.status_code == 401 and re.fullmatch(r"[0-9a-f]{32}", wrong.headers["x-request-id"])
            assert http.get("/admin/status", headers={**auth, "X-Request-Id": "op-1"}).status_code == 403
            job_path = f"/v1/jobs/{'f' * 32}"
            assert http.get(job_path, headers={**auth, "X-Request-Id": "job-1"}).status_code == 404
            holder = hold_the_only_slot(url)
            try:
                time.sleep(0.5)
                busy = http.post("/v1/transcribe", files={"audio": (clip.name, clip.read_bytes())},
                                 headers={**auth, "X-Request-Id": "busy-1"})  # fmt: skip
            finally:
                holder.close()
            assert busy.status_code == 503 and busy.headers["retry-after"] and busy.headers["x-request-id"] == "busy-1"
        with connect(url.replace("http", "ws") + "/v1/stream", additional_headers={**auth, "X-Request-Id": "ws-1"}) \
                as ws:  # fmt: skip
            assert ws.response.headers["X-Request-Id"] == "ws-1"
            pcm = int16_bytes(sf.read(rows[1]["audio_filepath"], dtype="float32")[0])
            for start in range(0, len(pcm), 32000):
                ws.send(pcm[start : start + 32000])
            ws.send(json.dumps({"type": "end"}))
            streamed = [json.loads(m) for m in ws]
    printed = log.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in printed.splitlines()]  # every line one JSON object
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
        assert line["time"].endswith("Z") and datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    requests = {line["request_id"]: line for line in lines if line["logger"] == "korasr.serve.access"}
    post = ("POST", "/v1/transcribe")
    expected = {"trace.ok-1": (*post, 200), bad.headers["x-request-id"]: (*post, 400),
                wrong.headers["x-request-id"]: (*post, 401), "busy-1": (*post, 503),
                "op-1": ("GET", "/admin/status", 403), "job-1": ("GET", "/v1/jobs/{job_id}", 404),
                "ws-1": ("GET", "/v1/stream", 101)}  # fmt: skip
    for rid, (method, route, status) in expected.items():
        record = requests[rid]
        assert (record["method"], record["route"], record["status"]) == (method, route, status), record
        assert record["latency_ms"] >= 0 and record["model"] == exported_streaming.name and record["model_version"]
        assert record["message"] == f"{method} {route} {status}"
    assert requests["trace.ok-1"]["audio_seconds"] == pytest.approx(rows[0]["duration"], abs=0.01)
    assert requests["ws-1"]["close_code"] == 1000
    assert requests["ws-1"]["audio_seconds"] == pytest.approx(len(pcm) / 32000, abs=0.01)
    assert sum(1 for line in lines if line.get("request_id") == "trace.ok-1") == 1  # one record per request
    assert any(line["message"].startswith("Application startup complete") for line in lines)
    # nothing unstructured, no key, no transcript, no path with an id or a query
    assert '"POST /v1/transcribe HTTP/1.1"' not in printed and "WebSocket /v1/stream" not in printed
    assert "connection open" not in printed
    assert KEY not in printed and ADMIN not in printed and "api_key" not in printed and "f" * 32 not in printed
    for said in [text, *(m["text"] for m in streamed if m["text"])]:
        assert said not in printed, said


def test_uvicorn_websocket_lines_are_told_by_their_format_not_their_text():
    """A ``"`` in the path made the formatted line fail the old pattern, so the query was printed; the format string
    tells the line whatever the client put in it."""
    fields = RequestFields()
    quoted = logging.makeLogRecord({"name": "uvicorn.error", "levelno": logging.INFO, "msg": '%s - "WebSocket %s" 403',
                                    "args": ("127.0.0.1:5", '/v1/stream?x="&api_key=secret')})  # fmt: skip
    assert not fields.filter(quoted)
    for line in ("connection open", "connection closed"):
        assert not fields.filter(logging.makeLogRecord({"name": "uvicorn.error", "levelno": logging.INFO, "msg": line}))
    imitation = logging.makeLogRecord({"name": "uvicorn.error", "levelno": logging.INFO, "msg": "%s",
                                       "args": ('1.2.3.4 - "WebSocket /v1/stream" 403',)})  # fmt: skip
    assert fields.filter(imitation)  # another line that only reads like one is kept


def test_tracebacks_are_redacted_in_json_and_text_logs():
    from korasr.serve.gate import Redact

    for formatter in (JsonFormatter(), logging.Formatter("%(levelname)s %(message)s")):
        out = io.StringIO()
        handler = logging.StreamHandler(out)
        handler.setFormatter(formatter)
        handler.addFilter(Redact(f"{KEY},{ADMIN}"))
        logger = logging.getLogger("korasr.test.redact")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            try:
                raise RuntimeError(f"https://mlflow:hunter2@registry.example.com/ refused key {KEY} (?token={ADMIN})")
            except RuntimeError:
                logger.exception("reload failed")
        finally:
            logger.removeHandler(handler)
        printed = out.getvalue()
        assert "reload failed" in printed and "RuntimeError" in printed and "[redacted]" in printed, printed
        assert KEY not in printed and ADMIN not in printed and "hunter2" not in printed, printed


def test_tasks_that_outlive_a_request_carry_no_request_id(tmp_path):
    """A reload starts a batcher (or stream hub) and releases the retired model from inside its request: those tasks
    run on long after it, and their records must not carry its id."""
    import asyncio

    from korasr.serve.config import ServeConfig
    from korasr.serve.state import ServiceState
    from korasr.serve.worker import Worker

    seen: dict = {}

    class Probe(Worker):
        async def _run(self) -> None:
            seen["batcher"] = REQUEST.get()

    class Retired:
        path, version = tmp_path, {}

        async def stop(self) -> None:
            seen["release"] = REQUEST.get()

    async def reload() -> None:
        state = ServiceState(ServeConfig(model=tmp_path))
        token = REQUEST.set({"request_id": "reload-1"})
        try:
            worker = Probe()
            worker.start()
            retired = Retired()
            state.retiring.append(retired)
            state._release_later(retired)
            seen["request"] = REQUEST.get()
            await asyncio.gather(*state._releases)
            await worker.stop()
        finally:
            REQUEST.reset(token)

    asyncio.run(reload())
    assert seen == {"request": {"request_id": "reload-1"}, "batcher": None, "release": None}, seen
