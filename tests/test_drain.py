"""The graceful drain of `korasr serve` (korasr/serve/drain.py), on real processes and sockets: SIGTERM under load (16
HTTP clients and 4 real-time streams) loses no admitted request and finalizes every stream; a job running at SIGTERM
ends once, here or on another server sharing the jobs folder; a second SIGTERM ends the process at once with the job
back in the queue; with --workers 2 the supervisor passes the drain on. Every outcome is counted and printed; no
assertion on speed beyond generous bounds."""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT, eval_rows, int16_bytes, korasr_cmd
from tests.test_jobs import Receiver

pytestmark = pytest.mark.slow

SECRET = secrets.token_hex(16)


@contextlib.contextmanager
def server(model: Path, log: Path, *args: str, env: dict | None = None):  # type: ignore[no-untyped-def]
    """``korasr serve`` as a process on a free loopback port, everything it prints in ``log``: yields it and its URL
    once /health answers 200; killed at the end if still there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KORASR_API_KEY": "", **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(korasr_cmd("serve", "--model", str(model), "--port", str(port), *args), cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while get(url, "/health")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def get(url: str, path: str) -> tuple[int | None, bytes]:
    """One GET on a connection of its own: status and body, or (None, b"") when nothing answered."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", path, headers={"Connection": "close"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    except (OSError, http.client.HTTPException):
        return None, b""


def multipart(field: str, path: Path) -> tuple[bytes, str]:
    boundary = secrets.token_hex(12)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def records(log: Path) -> list[dict]:
    """Every line the server printed, each a JSON object (--log-format json)."""
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


class Tally:
    """What the HTTP clients saw, by kind, with the request ids."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: dict[str, list[str]] = collections.defaultdict(list)
        self.failures: list[tuple[str, str]] = []
        self.answered_at: dict[str, float] = {}

    def add(self, kind: str, request_id: str, detail: str = "") -> None:
        with self.lock:
            self.ids[kind].append(request_id)
            self.answered_at[request_id] = time.monotonic()
            if kind == "failed":
                self.failures.append((request_id, detail))

    def count(self, kind: str) -> int:
        with self.lock:
            return len(self.ids[kind])


def http_client(url: str, clips: list[Path], number: int, tally: Tally, stop: threading.Event) -> None:
    """POST /v1/transcribe in a loop, a connection per request; a 503 is honoured (Retry-After), a refused
    connection (the listener closed) ends the loop."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    bodies = [multipart("audio", clip) for clip in clips]
    for i in range(10**6):
        if stop.is_set():
            return
        body, content_type = bodies[i % len(bodies)]
        request_id = f"load-{number}-{i}"
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            conn.request("POST", "/v1/transcribe", body, {"Content-Type": content_type, "X-Request-Id": request_id,
                                                          "Connection": "close"})  # fmt: skip
            answer = conn.getresponse()
            data = answer.read()
        except ConnectionRefusedError:
            tally.add("refused", request_id)
            return
        except (OSError, http.client.HTTPException) as e:  # judged against the server's log afterwards
            tally.add("unanswered", request_id, repr(e))
            time.sleep(0.2)
            continue
        if answer.getheader("X-Request-Id") != request_id:
            tally.add("failed", request_id, f"X-Request-Id {answer.getheader('X-Request-Id')!r}")
        elif answer.status == 200 and "text" in json.loads(data):
            tally.add("ok", request_id)
        elif answer.status == 503 and answer.getheader("Retry-After"):
            tally.add("503", request_id)
            time.sleep(float(answer.getheader("Retry-After")))
        else:
            tally.add("failed", request_id, f"{answer.status} {data[:200]!r}")


class Stream:
    """A WebSocket stream sending 16-bit PCM at real time (0.1 s frames) and recording what comes back."""

    def __init__(self, url: str, pcm: bytes):
        self.url, self.pcm = url.replace("http", "ws") + "/v1/stream", pcm
        self.sent = 0  # bytes
        self.messages: list[tuple[float, dict]] = []
        self.close_code: int | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.url, open_timeout=30) as ws:
                receiver = threading.Thread(target=self.receive, args=(ws,), daemon=True)
                receiver.start()
                began = time.monotonic()
                for start in range(0, len(self.pcm), 3200):
                    ws.send(self.pcm[start : start + 3200])
                    self.sent = start + 3200
                    time.sleep(max(began + (start + 3200) / 32000 - time.monotonic(), 0))
                receiver.join(timeout=60)
        except Exception as e:  # the send after the server's close ends the loop: the close code tells the rest
            self.error = repr(e)
        finally:
            with contextlib.suppress(NameError):
                receiver.join(timeout=60)
                self.close_code = ws.close_code

    def receive(self, ws) -> None:  # type: ignore[no-untyped-def]
        with contextlib.suppress(Exception):
            for message in ws:
                self.messages.append((time.monotonic(), json.loads(message)))


def poll(url: str, path: str, seen: list, stop: threading.Event) -> None:
    while not stop.is_set():
        status, body = get(url, path)
        seen.append((time.monotonic(), status, body))
        time.sleep(0.01)


def test_sigterm_under_load_loses_no_admitted_request_and_finalizes_every_stream(exported_streaming, recipe,
                                                                                  tmp_path):  # fmt: skip
    rows = eval_rows(recipe, 8)
    clips = [Path(row["audio_filepath"]) for row in rows]
    speech = np.concatenate([sf.read(clip, dtype="float32")[0] for clip in clips])
    pcm = int16_bytes(np.tile(speech, 8))  # a minute or more: every stream is still sending at SIGTERM
    log, timeout = tmp_path / "serve.log", 20.0
    with server(exported_streaming, log, "--drain-timeout", f"{timeout:g}", "--log-format", "json",
                "--jobs-dir", str(tmp_path / "jobs")) as (proc, url):  # fmt: skip
        tally, stop = Tally(), threading.Event()
        streams = [Stream(url, pcm) for _ in range(4)]
        clients = [threading.Thread(target=http_client, args=(url, clips, n, tally, stop), daemon=True)
                   for n in range(16)]  # fmt: skip
        for client in clients:
            client.start()
        health: list = []
        metrics: list = []
        pollers = [threading.Thread(target=poll, args=(url, path, seen, stop), daemon=True)
                   for path, seen in (("/health", health), ("/metrics", metrics))]  # fmt: skip
        deadline = time.monotonic() + 60
        while not (tally.count("ok") >= 32 and all(s.sent >= 3 * 32000 for s in streams)):
            assert time.monotonic() < deadline and proc.poll() is None, (tally.ids.keys(), [s.error for s in streams])
            time.sleep(0.1)
        for poller in pollers:
            poller.start()
        assert all(s.close_code is None and s.error is None for s in streams)
        sent_at_signal = [s.sent / 32000 for s in streams]
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=timeout + 15)
        drain_s = time.monotonic() - signalled
        for thread in [*clients, *(s.thread for s in streams)]:
            thread.join(timeout=60)
        stop.set()
        for poller in pollers:
            poller.join(timeout=30)

    printed = records(log)  # every line JSON
    served = {r["request_id"]: r for r in printed if r.get("route") == "/v1/transcribe"}
    # a request the client got no answer for never reached the routes (the server has no record of it, or refused
    # it with 503): a connection accepted as the listener closed
    unanswered = tally.ids["unanswered"]
    lost = [i for i in unanswered if served.get(i, {}).get("status", 503) != 503]
    summary = {kind: len(ids) for kind, ids in tally.ids.items()}
    summary["ok after SIGTERM"] = sum(1 for i in tally.ids["ok"] if tally.answered_at[i] > signalled)
    finals_after = [sum(1 for t, m in s.messages if t > signalled and m["type"] == "final") for s in streams]
    print(f"\ndrain under load: exit {code} after {drain_s:.2f} s; HTTP {summary}; streams closed "
          f"{[s.close_code for s in streams]}, finals after SIGTERM {finals_after}; /health during the drain "
          f"{collections.Counter(status for t, status, _ in health if t > signalled)}")  # fmt: skip
    assert code == 0 and drain_s < timeout + 10
    assert tally.failures == [] and lost == [], (tally.failures, lost)
    assert tally.count("ok") >= 32 and tally.count("503") + tally.count("refused") >= 1
    for request_id in tally.ids["ok"]:
        assert served[request_id]["status"] == 200 and served[request_id]["audio_seconds"] > 0
    draining = [json.loads(body) for t, status, body in health if t > signalled and status == 503]
    assert draining and all(body == {"status": "draining", "ready": False} for body in draining)
    assert any(b"korasr_draining 1.0" in body for t, status, body in metrics if t > signalled and status == 200)
    for stream, finals in zip(streams, finals_after, strict=True):
        assert stream.close_code == 1001 and finals >= 1, (stream.close_code, stream.error, stream.messages[-3:])
        assert stream.messages[-1][1]["type"] == "final"  # the last thing before the close
    stream_records = [r for r in printed if r.get("route") == "/v1/stream"]
    assert len(stream_records) == 4 and all(r["status"] == 101 and r["close_code"] == 1001 for r in stream_records)
    for record in stream_records:  # each decoded about what its client had sent at SIGTERM (frames in flight aside)
        assert record["audio_seconds"] >= min(sent_at_signal) - 2.0
    messages = [r["message"] for r in printed]
    assert any(m.startswith("draining (SIGTERM)") for m in messages)
    assert any(m.startswith("drained in") for m in messages)
    assert not any("cut short" in m for m in messages)


def long_audio(recipe, folder: Path, seconds: float) -> Path:  # type: ignore[no-untyped-def]
    """Eval speech repeated to ``seconds``: a job that decodes for a while (a file in a --job-source folder)."""
    speech = np.concatenate([sf.read(row["audio_filepath"], dtype="float32")[0] for row in eval_rows(recipe, 8)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "long.wav"
    sf.write(path, np.resize(speech, int(seconds * 16000)), 16000, subtype="PCM_16")
    return path


def submit_job(url: str, audio: Path, **fields: str) -> str:
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/jobs", urllib.parse.urlencode({"url": str(audio), **fields}),
                 {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    answer = conn.getresponse()
    body = json.loads(answer.read())
    assert answer.status == 202, body
    return body["id"]


def job_row(jobs: Path, job_id: str) -> dict:
    with sqlite3.connect(jobs / "jobs.db") as db:
        db.row_factory = sqlite3.Row
        return dict(db.execute("SELECT * FROM korasr_jobs WHERE id = ?", (job_id,)).fetchone())


def wait_status(jobs: Path, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (row := job_row(jobs, job_id))["status"] not in statuses:
        assert time.monotonic() < deadline, row
        time.sleep(0.1)
    return row


# 60 s of audio decodes within what the drain gives jobs (3 s less 0.75) on this machine, 600 s does not (about 8 s)
@pytest.mark.parametrize("seconds", [60, 600])
def test_a_job_running_at_sigterm_ends_once_here_or_on_another_server(exported_streaming, recipe, tmp_path, seconds):
    audio = long_audio(recipe, tmp_path / "sources", seconds)
    jobs, receiver = tmp_path / "jobs", Receiver()
    args = ("--jobs-dir", str(jobs), "--job-source", str(audio.parent), "--callback-allow", receiver.url)
    env = {"KORASR_CALLBACK_SECRET": SECRET}
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    try:
        with server(exported_streaming, first, "--drain-timeout", "3", *args, env=env) as (proc, url):
            job_id = submit_job(url, audio, callback_url=receiver.url)
            wait_status(jobs, job_id, ("running",), timeout=30)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=3 + 15) == 0
        row = job_row(jobs, job_id)
        here = row["status"] == "succeeded"
        if not here:  # released: queued again, the claim not counted
            assert row["status"] == "queued" and row["attempts"] == 0 and row["worker"] is None, row
            assert "back to the queue" in first.read_text()
            with server(exported_streaming, second, *args, env=env) as (proc, url):
                wait_status(jobs, job_id, ("succeeded", "failed"))
                deadline = time.monotonic() + 30
                while job_row(jobs, job_id)["callback_state"] in ("pending", "sending") and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(1.0)  # room for a second delivery, were there one
                row = job_row(jobs, job_id)
    finally:
        receiver.close()
    print(f"\njob running at SIGTERM: {'finished during the drain' if here else 'released, finished by the second'}; "
          f"attempts {row['attempts']}, callbacks {len(receiver.received)}")  # fmt: skip
    assert row["status"] == "succeeded" and row["attempts"] == 1 and row["callback_state"] == "delivered"
    assert len(receiver.received) == 1 and json.loads(receiver.received[0][1])["id"] == job_id
    assert row["worker"].split(":")[1] == str(proc.pid)  # the server that finished it recorded it


def test_a_second_sigterm_ends_at_once_with_the_running_job_back_in_the_queue(exported_streaming, recipe, tmp_path):
    audio = long_audio(recipe, tmp_path / "sources", 1200)
    jobs, log = tmp_path / "jobs", tmp_path / "serve.log"
    with server(exported_streaming, log, "--drain-timeout", "60", "--jobs-dir", str(jobs), "--job-source",
                str(audio.parent)) as (proc, url):  # fmt: skip
        job_id = submit_job(url, audio)
        wait_status(jobs, job_id, ("running",), timeout=30)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # the drain waits for the job (up to 55 s); a signal within a second would count as the same
        assert get(url, "/health") == (503, b'{"status":"draining","ready":false}')
        assert job_row(jobs, job_id)["status"] == "running"
        cut = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        ended_s = time.monotonic() - cut
    row = job_row(jobs, job_id)
    print(f"\nsecond SIGTERM: exit {code} {ended_s:.2f} s after it; the job {row['status']}")
    assert code == 0 and ended_s < 10
    assert row["status"] == "queued" and row["attempts"] == 0 and row["worker"] is None and row["lease_until"] is None
    assert "drain cut short by a second SIGTERM" in log.read_text()


def test_workers_drain_through_the_supervisor(exported_streaming, recipe, tmp_path):
    speech = np.concatenate([sf.read(row["audio_filepath"], dtype="float32")[0] for row in eval_rows(recipe, 8)])
    log = tmp_path / "serve.log"
    with server(exported_streaming, log, "--workers", "2", "--drain-timeout", "20", "--jobs-dir",
                str(tmp_path / "jobs")) as (proc, url):  # fmt: skip
        streams = [Stream(url, int16_bytes(np.tile(speech, 4))) for _ in range(2)]
        deadline = time.monotonic() + 60
        while not all(s.sent >= 2 * 32000 for s in streams):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20 + 15)
        for stream in streams:
            stream.thread.join(timeout=30)
    print(f"\n--workers 2: exit {code} after {time.monotonic() - signalled:.2f} s; streams closed "
          f"{[s.close_code for s in streams]}")  # fmt: skip
    assert code == 0
    for stream in streams:
        assert stream.close_code == 1001 and stream.messages[-1][1]["type"] == "final", (stream.error, stream.messages)


# --- what the drain holds and hands back, unit by unit ---------------------------------------------------------------


def job_worker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A service's state with a job worker on a SQLite store in ``tmp_path`` (no loops: ``job_workers`` 0), not
    started; and a finished job whose callback waits to be sent."""
    from korasr.serve.config import ServeConfig
    from korasr.serve.jobs.worker import JobWorker
    from korasr.serve.state import ServiceState

    config = ServeConfig(model=tmp_path, jobs_dir=tmp_path / "jobs", job_workers=0, callback_secret=SECRET,
                         callback_allow=("http://127.0.0.1:9/",))  # fmt: skip
    state = ServiceState(config)
    state.jobs = JobWorker(state)
    return state


def queue_finished_job(state, job_id: str) -> None:  # type: ignore[no-untyped-def]
    state.jobs.store.add({"id": job_id, "owner": "", "response_format": "json", "source": "a.wav", "audio": "a.wav",
                          "spooled": False, "audio_bytes": 1, "audio_seconds": 1.0, "hotwords": None,
                          "hotwords_field": "hotwords", "callback_url": "http://127.0.0.1:9/hook",
                          "callback_state": "pending", "created_at": time.time()}, 10, 10)  # fmt: skip
    with sqlite3.connect(state.config.jobs_dir / "jobs.db") as db:
        db.execute("UPDATE korasr_jobs SET status='succeeded', result='{\"text\": \"x\"}', finished_at=? WHERE id=?",
                   (time.time(), job_id))  # fmt: skip


def test_a_callback_being_claimed_is_held_and_handed_back_when_released(tmp_path):
    """A job finishing during the drain starts its callback: held (the drain waits for it) from the start, not once
    its claim returns; released meanwhile, the claim the database took is handed back (pending), not left
    ``sending`` for callback_hold_s."""
    import asyncio

    state = job_worker(tmp_path)
    claiming, claimed = threading.Event(), threading.Event()

    async def run() -> dict:
        worker = state.jobs
        await worker.start()
        queue_finished_job(state, "a" * 32)
        claim = worker.store.claim_callback

        def slow_claim(*args):  # type: ignore[no-untyped-def]
            claiming.wait(10)
            try:
                return claim(*args)
            finally:
                claimed.set()

        worker.store.claim_callback = slow_claim
        worker.callback("a" * 32)
        await asyncio.sleep(0.2)
        held = state.drain.held()
        threading.Timer(0.3, claiming.set).start()  # the claim commits while the release waits
        await worker.release()
        assert claimed.wait(10)
        await worker.stop()
        return held

    held = asyncio.run(run())
    row = job_row(tmp_path / "jobs", "a" * 32)
    assert (held["callbacks"], row["callback_state"], row["callback_until"]) == (1, "pending", None), (held, row)


def test_a_callback_cancelled_while_recording_its_outcome_is_no_longer_held(tmp_path):
    import asyncio

    state = job_worker(tmp_path)
    recording, recorded = threading.Event(), threading.Event()

    async def run() -> tuple[dict, dict]:
        worker = state.jobs
        await worker.start()
        queue_finished_job(state, "b" * 32)
        record = worker.store.set_callback

        def slow_record(*args):  # type: ignore[no-untyped-def]
            recording.set()
            time.sleep(0.5)
            record(*args)
            recorded.set()

        async def delivered(job, result) -> str:  # type: ignore[no-untyped-def]
            return ""

        worker.store.set_callback, worker._send = slow_record, delivered
        worker.callback("b" * 32)
        while not recording.is_set():
            await asyncio.sleep(0.01)
        await worker.release()  # cancelled in the final set_callback
        held, sending = state.drain.held(), dict(worker.sending)
        assert recorded.wait(10)
        await worker.stop()
        return held, sending

    held, sending = asyncio.run(run())
    assert sending == {} and held["callbacks"] == 0, (sending, held)
    assert job_row(tmp_path / "jobs", "b" * 32)["callback_state"] == "delivered"  # the thread still recorded it


ENDS_NOW = """
import logging, sys, threading, types
from korasr.serve import drain

drain.HARD_EXIT_S = 1.0

class Jobs:
    running, sending, callbacks = {"j"}, {}, 0

    def release_now(self):
        with open(sys.argv[1], "w") as out:
            out.write("released")

class FullPipe(logging.Handler):  # a write that never returns, its handler's lock held meanwhile
    def emit(self, record):
        threading.Event().wait()

logging.getLogger().addHandler(FullPipe())
state = types.SimpleNamespace(config=types.SimpleNamespace(drain_timeout_s=3.0), jobs=Jobs(),
                              active_streams=lambda: 0)
drain.Drain(state).end_now("a test")
"""


def test_ending_at_once_releases_the_jobs_and_exits_even_when_logging_blocks(tmp_path):
    """The drain timeout or a second signal ends the process from the drain's thread: a log line that never returns
    (stdout a full pipe) neither keeps the jobs from being released nor the process from exiting."""
    marker = tmp_path / "released"
    began = time.monotonic()
    ended = subprocess.run([sys.executable, "-c", ENDS_NOW, str(marker)], cwd=ROOT, timeout=30,
                           capture_output=True, text=True)  # fmt: skip
    print(f"\nending at once with logging blocked: exit {ended.returncode} after {time.monotonic() - began:.2f} s")
    assert ended.returncode == 0, ended.stderr[-2000:]
    assert marker.read_text() == "released"


class SlowSource:
    """A real HTTP server on loopback whose every answer is 200 with a large body trickled a few bytes a second (a
    job's URL source that takes far longer than the drain); ``asked`` is set at the first GET."""

    def __init__(self) -> None:
        import http.server

        self.asked, self.stop = threading.Event(), threading.Event()
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.asked.set()
                self.send_response(200)
                self.send_header("Content-Length", str(10**6))
                self.end_headers()
                with contextlib.suppress(OSError):
                    while not source.stop.wait(0.2):
                        self.wfile.write(b"RIFF")
                        self.wfile.flush()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def read_answer(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends on ``sock`` until it closes (a reset ends it too), and when it ended."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data, time.monotonic()


def test_uploads_and_url_fetches_longer_than_the_drain_get_503_not_a_reset(exported_streaming, tmp_path):
    """An upload whose body is still arriving and a job submission still fetching its URL when the drain's release
    point comes (``--drain-timeout 4``: 1 s before the end) are answered 503 with Retry-After, no job queued, and the
    drain ends in time, instead of being reset by the exit at the timeout."""
    source, jobs, log = SlowSource(), tmp_path / "jobs", tmp_path / "serve.log"
    try:
        with server(exported_streaming, log, "--drain-timeout", "4", "--log-format", "json", "--jobs-dir", str(jobs),
                    "--job-source", f"{source.url}/") as (proc, url):  # fmt: skip
            host, port = urllib.parse.urlsplit(url).netloc.split(":")
            upload = socket.create_connection((host, int(port)), timeout=30)
            upload.sendall(b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b"
                           b"\r\nContent-Length: 100000\r\n\r\n--b\r\n")  # fmt: skip
            submission: dict = {}

            def submit() -> None:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                presigned = f"{source.url}/long.wav?X-Amz-Signature=PRESIGNED"
                conn.request("POST", "/v1/jobs", urllib.parse.urlencode({"url": presigned}),
                             {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
                answer = conn.getresponse()
                submission.update(status=answer.status, retry=answer.getheader("Retry-After"), body=answer.read(),
                                  at=time.monotonic())  # fmt: skip

            submitting = threading.Thread(target=submit, daemon=True)
            submitting.start()
            assert source.asked.wait(30)
            time.sleep(0.5)  # the upload admitted, its body waiting
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answer, answered_at = read_answer(upload)
            submitting.join(timeout=30)
            code = proc.wait(timeout=4 + 15)
            drain_s = time.monotonic() - signalled
    finally:
        source.close()
    status_line = answer.split(b"\r\n", 1)[0]
    print(f"\nuploads and fetches past the drain: exit {code} after {drain_s:.2f} s; the upload got "
          f"{status_line!r} after {answered_at - signalled:.2f} s, the submission "
          f"{submission.get('status')} after {submission.get('at', 0) - signalled:.2f} s")  # fmt: skip
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head, answer[:500]
    assert b"draining" in answer and answered_at - signalled >= 2.0  # at the release point, not at once
    assert submission["status"] == 503 and submission["retry"] and b"draining" in submission["body"], submission
    assert code == 0 and drain_s < 4 + 2
    with sqlite3.connect(jobs / "jobs.db") as db:
        assert db.execute("SELECT COUNT(*) FROM korasr_jobs").fetchone()[0] == 0
    messages = [r["message"] for r in records(log)]
    assert any("503 to 1 uploads still arriving and 1 job submissions" in m for m in messages), messages
    assert not any("cut short" in m for m in messages)
    assert "PRESIGNED" not in log.read_text()  # httpx's line per request (its URL and query) is not printed
