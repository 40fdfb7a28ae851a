"""The service under faults (issue 34), on the suite's sample export and real components: one key header per request,
the operators' routes behind their own key, a health check that says only what a load balancer needs, jobs that
survive a promotion and a restart, a spool taken by reservation, callbacks claimed before they are sent, limits that
hold across processes, large results for slow readers, the SSRF guard's IPv4-carrying IPv6 forms and backslashes,
and `korasr serve` on a registry that is down at start, while following, and across `--workers 3` after a
promotion."""

from __future__ import annotations

import http.server
import ipaddress
import json
import multiprocessing
import os
import secrets
import socket
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from korasr.serve import ServeConfig, create_app
from tests.conftest import eval_rows, serve_process, serving
from tests.test_jobs import Receiver

pytestmark = pytest.mark.slow

KEY, OTHER, ADMIN = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16)
SECRET = secrets.token_hex(16)
DONE = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def clip(recipe) -> Path:
    return Path(eval_rows(recipe, 1)[0]["audio_filepath"])


def settings(exported: Path, folder: Path, **overrides) -> ServeConfig:  # type: ignore[no-untyped-def]
    values = {"model": exported, "jobs_dir": folder / "jobs", "api_key": f"{KEY},{OTHER}", "admin_key": ADMIN,
              **overrides}  # fmt: skip
    return ServeConfig(**values)


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_job(get, job_id: str, timeout: float = 120, key: str = KEY) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        status = get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if status["status"] in DONE or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


# --- keys, the operators' routes, health (one server for the module) -----------------------------------------------


@pytest.fixture(scope="module")
def live(exported, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("faults-live")
    with serving(settings(exported, folder, job_workers=0)) as url:
        yield url


def test_a_request_with_more_than_one_key_header_is_refused(live, clip):
    """The gate and the jobs' owner read one parser: two key headers (an unknown key first, a valid one second) no
    longer reach /v1/jobs with an owner of the client's choosing."""
    upload = {"file": (clip.name, clip.read_bytes())}
    for headers in ([("X-API-Key", "attacker-chosen"), ("X-API-Key", KEY)],
                    [("X-API-Key", KEY), ("Authorization", f"Bearer {OTHER}")],
                    [("Authorization", "Bearer nobody"), ("Authorization", f"Bearer {KEY}")]):  # fmt: skip
        answer = httpx.post(f"{live}/v1/jobs", files=upload, headers=headers, timeout=30)
        assert answer.status_code == 400 and "2 key headers" in answer.json()["error"], (headers, answer.text)
        status = httpx.get(f"{live}/v1/jobs/{'0' * 32}", headers=headers, timeout=30)
        assert status.status_code == 400
    made = httpx.post(f"{live}/v1/jobs", files=upload, headers=[("X-API-Key", KEY)], timeout=30)
    assert made.status_code == 202
    job = f"{live}/v1/jobs/{made.json()['id']}"
    assert httpx.get(job, headers=auth(KEY)).status_code == 200
    assert httpx.get(job, headers=auth(OTHER)).status_code == 404  # the key it presented owns it


def test_admin_routes_take_only_the_operator_key_and_health_says_only_ready(live, exported, tmp_path):
    assert httpx.get(f"{live}/health").json() == {"status": "ok", "ready": True}  # no key, no versions, no paths
    assert httpx.post(f"{live}/admin/reload", headers=auth(KEY)).status_code == 403  # a client key: 403
    assert httpx.post(f"{live}/admin/reload").status_code == 401
    folder = httpx.post(f"{live}/admin/reload", headers=auth(ADMIN))
    assert folder.status_code == 409 and "not a registry alias" in folder.json()["error"]
    status = httpx.get(f"{live}/admin/status", headers=auth(ADMIN)).json()
    assert status["ready"] and status["model"] == exported.name and status["pid"] == os.getpid()
    assert httpx.get(f"{live}/admin/status", headers=auth(OTHER)).status_code == 403
    assert httpx.get(f"{live}/v1/jobs/{'0' * 32}", headers=auth(ADMIN)).status_code == 401  # not a client key
    with pytest.raises(ValueError, match="none of the client keys"):
        settings(exported, tmp_path, admin_key=KEY)
    with TestClient(create_app(settings(exported, tmp_path, admin_key=None, job_workers=0))) as c:
        off = c.post("/admin/reload", headers=auth(KEY))
        assert off.status_code == 404 and "KORASR_ADMIN_KEY" in off.json()["error"]


# --- the SSRF guard -------------------------------------------------------------------------------------------------


def test_ipv6_forms_that_carry_an_ipv4_address_are_not_global():
    from korasr.serve.jobs.net import reachable

    for carried in ("64:ff9b::a00:1", "64:ff9b::7f00:1", "64:ff9b:1::a9fe:a9fe", "::ffff:0:7f00:1", "::ffff:a00:1",
                    "::7f00:1", "2002:a00:1::1"):  # fmt: skip
        assert not reachable(ipaddress.ip_address(carried)), carried
    for public in ("8.8.8.8", "2606:4700:4700::1111"):
        assert reachable(ipaddress.ip_address(public))


def test_a_backslash_never_passes_a_prefix_check(tmp_path):
    import asyncio

    from korasr.serve.errors import ClientError
    from korasr.serve.jobs.net import Refused, resolve
    from korasr.serve.jobs.sources import local_source

    prefix = ("http://203.0.113.7/audio/",)
    for url in ("http://203.0.113.7/audio/..\\private/a.wav", "http://203.0.113.7/audio/%5C..%5Cprivate/a.wav",
                "http://203.0.113.7\\@127.0.0.1/audio/a.wav"):  # fmt: skip
        with pytest.raises(Refused, match="backslash"):
            asyncio.run(resolve(url, prefix, "url", "--job-source"))
    (tmp_path / "a\\..\\b.wav").write_bytes(b"RIFF")
    with pytest.raises(ClientError, match="backslash"):
        local_source(str(tmp_path / "a\\..\\b.wav"), (str(tmp_path),))


# --- jobs across a promotion and a restart ----------------------------------------------------------------------------


def test_jobs_queued_before_a_promotion_finish_after_a_restart_on_the_new_version(exported, tmp_path, clip,
                                                                                   monkeypatch):  # fmt: skip
    """The default jobs folder does not depend on the model: `exp/jobs` under the working directory. A job queued
    while version 1 served finishes after a restart on version 2 and says so; concurrent reloads: one, the rest
    409."""
    from korasr import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KORASR_JOBS_DIR", raising=False)
    ref = "models:/ko-faults-jobs@production"
    for _ in range(2):
        registry.register(exported, "ko-faults-jobs")
    registry.promote("ko-faults-jobs", 1)

    def config(**overrides) -> ServeConfig:  # type: ignore[no-untyped-def]
        return settings(exported, tmp_path, jobs_dir=None, model=registry.resolve(ref), model_ref=ref, **overrides)

    with TestClient(create_app(config(job_workers=0))) as c:
        job_id = c.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes())}, headers=auth()).json()["id"]
    assert (tmp_path / "exp" / "jobs" / "jobs.db").is_file()
    registry.promote("ko-faults-jobs", 2)
    with serving(config()) as url:
        status = wait_job(lambda path, **kw: httpx.get(url + path, **kw), job_id)
        assert status["status"] == "succeeded" and status["model"]["version"] == 2, status
        assert status["model"]["name"] == "ko-faults-jobs" and status["model"]["export"] == "export"
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(httpx.post(
            f"{url}/admin/reload?force=true", headers=auth(ADMIN), timeout=120))) for _ in range(4)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(a.status_code for a in answers) == [200, 409, 409, 409], [a.text for a in answers]


# --- the spool and the admission slots --------------------------------------------------------------------------------


class SlowFiles:
    """A real HTTP server on loopback that sends a file in blocks with pauses and no Content-Length."""

    def __init__(self, data: bytes, seconds: float, blocks: int = 20):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                step = len(data) // blocks + 1
                for i in range(0, len(data), step):
                    self.wfile.write(data[i : i + step])
                    self.wfile.flush()
                    time.sleep(seconds / blocks)

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_url_fetches_reserve_the_spool_and_hold_no_admission_slot(exported, tmp_path, clip):
    """Two fetches of 640 kB into a 1 MiB spool at once: one is refused (each used to see the whole room). Meanwhile
    a synchronous transcription with the only admission slot is served (a fetch used to hold it)."""
    audio = np.tile(sf.read(clip, dtype="float32")[0], 20)[: 20 * 16000]
    wav = tmp_path / "a.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    files = SlowFiles(wav.read_bytes(), seconds=4)
    config = settings(exported, tmp_path, job_workers=0, job_sources=(f"{files.url}/",), job_spool_max_bytes=2**20,
                      queue_size=1, max_waiting=4, upload_timeout_s=2)  # fmt: skip
    answers: dict[str, httpx.Response] = {}
    try:
        with serving(config) as url:
            fetches = [threading.Thread(target=lambda n=n: answers.update({n: httpx.post(
                f"{url}/v1/jobs", data={"url": f"{files.url}/{n}.wav"}, headers=auth(), timeout=60)}))
                for n in ("a", "b")]  # fmt: skip
            for t in fetches:
                t.start()
            time.sleep(0.8)
            started = time.monotonic()
            sync = httpx.post(f"{url}/v1/transcribe", files={"audio": (clip.name, clip.read_bytes())},
                              headers=auth(), timeout=60)  # fmt: skip
            assert sync.status_code == 200 and time.monotonic() - started < 2, sync.text
            for t in fetches:
                t.join()
    finally:
        files.close()
    codes = sorted(a.status_code for a in answers.values())
    assert codes == [202, 413], [a.text for a in answers.values()]
    refused = next(a for a in answers.values() if a.status_code == 413)
    assert "spool is full" in refused.json()["error"]
    assert sum(p.stat().st_size for p in (tmp_path / "jobs" / "spool").iterdir()) <= 2**20


# --- callbacks --------------------------------------------------------------------------------------------------------


def callback_state(folder: Path, job_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(folder / "jobs" / "jobs.db") as db:
        return db.execute("SELECT callback_state, callback_error FROM korasr_jobs WHERE id=?", (job_id,)).fetchone()


def test_a_pending_callback_is_sent_by_one_of_three_processes_and_again_only_after_a_failed_attempt(
    exported, tmp_path, clip
):
    """A job that finished with its callback not yet sent (its process died): three servers start on its database at
    once; the receiver gets it from one of them, a second time only because it answered 500 to the first, with the
    same delivery id."""
    receiver = Receiver([500])
    config = settings(exported, tmp_path, callback_allow=(receiver.url,), callback_secret=SECRET)
    try:
        with TestClient(create_app(settings(exported, tmp_path, job_workers=0, callback_allow=(receiver.url,),
                                            callback_secret=SECRET))) as c:  # fmt: skip
            job_id = c.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes())},
                            data={"callback_url": receiver.url}, headers=auth()).json()["id"]  # fmt: skip
        with sqlite3.connect(tmp_path / "jobs" / "jobs.db") as db:  # as a process that died after finishing leaves it
            db.execute("UPDATE korasr_jobs SET status='succeeded', result='{\"text\": \"x\"}', finished_at=? "
                       "WHERE id=?", (time.time(), job_id))  # fmt: skip
        stop = threading.Event()

        def server() -> None:
            with TestClient(create_app(config)):
                stop.wait(60)

        threads = [threading.Thread(target=server) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while callback_state(tmp_path, job_id)[0] != "delivered" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # time for a duplicate to arrive
        stop.set()
        for t in threads:
            t.join()
    finally:
        receiver.close()
    assert callback_state(tmp_path, job_id) == ("delivered", None)
    assert len(receiver.received) == 2, [h.get("X-Korasr-Delivery") for h, _, _ in receiver.received]
    assert {h["X-Korasr-Delivery"] for h, _, _ in receiver.received} == {job_id}


def test_a_callback_attempt_has_one_deadline_for_all_of_it(exported, tmp_path, clip):
    """A receiver that trickles its answer over 6 s, a byte at a time: each attempt ends at its 1 s deadline (every
    read used to have its own), and the callback fails after its two attempts, in seconds."""
    receiver = Receiver(trickle=6.0)
    config = settings(exported, tmp_path, callback_allow=(receiver.url,), callback_secret=SECRET,
                      callback_timeout_s=1.0, callback_max_attempts=2)  # fmt: skip
    try:
        with TestClient(create_app(config)) as c:
            job_id = c.post("/v1/jobs", files={"file": (clip.name, clip.read_bytes())},
                            data={"callback_url": receiver.url}, headers=auth()).json()["id"]  # fmt: skip
            assert wait_job(c.get, job_id)["status"] == "succeeded"
            finished = time.monotonic()
            deadline = finished + 30
            while callback_state(tmp_path, job_id)[0] not in ("delivered", "failed") and time.monotonic() < deadline:
                time.sleep(0.05)
            took = time.monotonic() - finished
    finally:
        receiver.close()
    state, error = callback_state(tmp_path, job_id)
    assert state == "failed" and "no answer within 1 s" in error and len(receiver.received) == 2
    assert took < 4.5, took


# --- limits across processes ----------------------------------------------------------------------------------------


def _admit_many(url: str, owner: str, n: int, queue_max: int, quota: int, start, results) -> None:  # type: ignore[no-untyped-def]
    from korasr.serve.jobs.store import JobLimit, JobStore

    store = JobStore(url)
    start.wait()
    for _ in range(n):
        row = {"id": secrets.token_hex(16), "owner": owner, "response_format": "json", "source": "x", "audio": "x",
               "spooled": False, "audio_seconds": 1.0, "audio_bytes": 1, "created_at": time.time()}  # fmt: skip
        try:
            store.add(row, queue_max, quota)
            results.put("added")
        except JobLimit as e:
            results.put(e.kind)
        except Exception as e:  # the database refused: what the limits must never turn into
            results.put(f"{type(e).__name__}: {e}")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_quotas_and_the_queue_bound_hold_across_processes(tmp_path, database, request):
    """Eight processes admit jobs at once into one database (SQLite, and a PostgreSQL server the test starts): a key's
    quota and the queue's bound are exact, and no admission fails on a locked database (a count and an insert in one
    transaction that holds the write lock: BEGIN IMMEDIATE on SQLite, SELECT … FOR UPDATE on a server)."""
    from sqlalchemy import create_engine, text

    from korasr.serve.jobs.store import JobStore

    url = f"sqlite:///{tmp_path / 'jobs.db'}" if database == "sqlite" else request.getfixturevalue("postgres")
    JobStore(url).close()
    context = multiprocessing.get_context("spawn")
    for owner_of, quota, queue_max, expected in ((lambda i: "one-key", 5, 1000, 5), (lambda i: f"key{i}", 1000, 7, 7)):
        start, results = context.Event(), context.Queue()
        workers = [context.Process(target=_admit_many, args=(url, owner_of(i), 6, queue_max, quota, start, results))
                   for i in range(8)]  # fmt: skip
        for p in workers:
            p.start()
        time.sleep(3)  # every process has opened the database
        start.set()
        outcomes = [results.get(timeout=120) for _ in range(48)]
        for p in workers:
            p.join()
        assert outcomes.count("added") == expected, sorted(set(outcomes))
        assert set(outcomes) <= {"added", "quota", "queue"}, sorted(set(outcomes))
        engine = create_engine(url)
        with engine.begin() as db:
            db.execute(text("DELETE FROM korasr_jobs"))
        engine.dispose()


# --- large results ----------------------------------------------------------------------------------------------------


def test_a_large_result_reaches_a_slow_but_steady_reader(exported, tmp_path, clip):
    """A 3 MB result read at about 600 kB/s takes 5 s, past the 1 s send deadline: it is sent in blocks, each under
    the deadline, so the reader gets all of it. A client that stops reading is aborted at the deadline, holding at
    most a block (sent whole, the result sat in the server's buffer for as long as that client kept the connection
    open)."""
    config = settings(exported, tmp_path, job_workers=0, send_timeout_s=1.0, send_buffer_bytes=16 * 1024)
    big = "가" * (1024 * 1024)  # 3 MB of UTF-8
    with serving(config) as url:
        job_id = httpx.post(f"{url}/v1/jobs", files={"file": (clip.name, clip.read_bytes())}, data={
            "response_format": "text"}, headers=auth(), timeout=30).json()["id"]  # fmt: skip
        with sqlite3.connect(tmp_path / "jobs" / "jobs.db") as db:
            db.execute("UPDATE korasr_jobs SET status='succeeded', result=?, finished_at=? WHERE id=?",
                       (big, time.time(), job_id))  # fmt: skip
        host, port = urllib.parse.urlsplit(url).netloc.split(":")

        def read(pause: float, first_pause: float = 0.0) -> tuple[bytes, float]:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
                s.connect((host, int(port)))
                s.sendall(f"GET /v1/jobs/{job_id}/result HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                          "Connection: close\r\n\r\n".encode())  # fmt: skip
                time.sleep(first_pause)
                received, started = b"", time.monotonic()
                try:
                    while block := s.recv(16 * 1024):
                        received += block
                        time.sleep(pause)
                except ConnectionResetError:
                    pass
                return received, time.monotonic() - started

        received, took = read(0.025)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body.decode() == big, (head[:200], len(body))
        assert took > 2, took  # the reader was slower than the deadline allows for one send
        stalled, _ = read(0.0, first_pause=4.0)  # reads nothing for 4 s: aborted, the rest of its result dropped
        assert len(stalled) < len(big.encode()) // 2, len(stalled)


# --- the registry: down at start, down while following, every worker after a promotion -----------------------------


def get_json(url: str, key: str | None = None) -> dict:
    return httpx.get(url, headers=auth(key) if key else None, timeout=30).json()


def test_serve_starts_from_the_cache_while_the_registry_is_down_and_says_so(exported, tmp_path, clip, monkeypatch):
    """`korasr serve --model models:/NAME@ALIAS --follow 1` once with the registry up (the version is cached), then
    with MLFLOW_TRACKING_URI at a port nothing listens on (with credentials): it starts from the cache, serves, and
    /admin/status and the metrics say the registry is unreachable, without the credentials."""
    from korasr import registry

    registry.register(exported, "ko-faults-offline")
    registry.promote("ko-faults-offline", 1)
    ref = "models:/ko-faults-offline@production"
    monkeypatch.setenv("KORASR_ADMIN_KEY", ADMIN)
    with serve_process(ref, tmp_path / "up.log", "--jobs-dir", str(tmp_path / "jobs"), key=KEY) as url:
        assert get_json(f"{url}/admin/status", ADMIN)["registered"]["version"] == 1
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://operator:hunter2@127.0.0.1:9")
    log = tmp_path / "down.log"
    with serve_process(ref, log, "--follow", "1", "--jobs-dir", str(tmp_path / "jobs"), key=KEY) as url:
        answer = httpx.post(f"{url}/v1/transcribe", files={"audio": (clip.name, clip.read_bytes())}, headers=auth(),
                            timeout=60)  # fmt: skip
        assert answer.status_code == 200 and answer.json()["text"]
        deadline = time.monotonic() + 60
        while (status := get_json(f"{url}/admin/status", ADMIN))["follow"].get("error") is None:
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["registered"] == {"name": "ko-faults-offline", "version": 1, "ref": ref, "from_cache": True}
        assert status["follow"]["reachable"] is False
        metrics = httpx.get(f"{url}/metrics", headers=auth(), timeout=30).text
        assert "korasr_registry_reachable 0.0" in metrics and "korasr_registry_follow_errors_total" in metrics
        reload = httpx.post(f"{url}/admin/reload", headers=auth(ADMIN), timeout=120)
        assert reload.status_code == 502 and "127.0.0.1:9" in reload.json()["error"]
        shown = json.dumps(get_json(f"{url}/admin/status", ADMIN)) + reload.text
        assert "hunter2" not in shown and "hunter2" not in httpx.get(f"{url}/health").text
    assert "local cache" in log.read_text(errors="replace")


def test_every_worker_serves_the_new_version_after_a_promotion(exported, tmp_path, clip, monkeypatch):
    """`korasr serve --workers 3 --follow 2`: after `korasr registry promote`, every worker (told apart by its pid in
    /admin/status) serves version 2 within a bound, and every request meanwhile is answered."""
    from korasr import registry
    from tests.conftest import run

    for _ in range(2):
        registry.register(exported, "ko-faults-workers")
    registry.promote("ko-faults-workers", 1)
    monkeypatch.setenv("KORASR_ADMIN_KEY", ADMIN)
    ref = "models:/ko-faults-workers@production"
    with serve_process(ref, tmp_path / "serve.log", "--workers", "3", "--follow", "2", "--jobs-dir",
                       str(tmp_path / "jobs"), key=KEY) as url:  # fmt: skip
        versions: dict[int, int] = {}
        deadline = time.monotonic() + 120
        while len(versions) < 3:
            status = get_json(f"{url}/admin/status", ADMIN)
            versions[status["pid"]] = status.get("registered", {}).get("version")
            assert time.monotonic() < deadline, versions
        run("registry", "promote", "--name", "ko-faults-workers", "--version", "2")
        failed, deadline = [], time.monotonic() + 120
        while set(versions.values()) != {2}:
            answer = httpx.post(f"{url}/v1/transcribe", files={"audio": (clip.name, clip.read_bytes())},
                                headers=auth(), timeout=60)  # fmt: skip
            if answer.status_code != 200:
                failed.append((answer.status_code, answer.text[:200]))
            for _ in range(6):
                status = get_json(f"{url}/admin/status", ADMIN)
                versions[status["pid"]] = status.get("registered", {}).get("version")
            assert time.monotonic() < deadline, (versions, (tmp_path / "serve.log").read_text()[-3000:])
        assert failed == [] and len(versions) == 3
