"""Asynchronous jobs (POST /v1/jobs) against the sample model's export: results as the synchronous route gives them,
a restart that loses nothing, signed callbacks received by a real HTTP server on loopback, the allow-lists of
sources and callback targets, every limit, and jobs kept apart by API key."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from korasr.serve import ServeConfig, create_app
from korasr.serve.jobs.callbacks import legacy_sign, verify_signature
from tests.conftest import eval_rows, wait_for

pytestmark = pytest.mark.slow

KEY, OTHER = secrets.token_hex(16), secrets.token_hex(16)
SECRET = secrets.token_hex(16)
DONE = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def clips(recipe) -> list[Path]:
    return [Path(row["audio_filepath"]) for row in eval_rows(recipe, 3)]


@pytest.fixture(scope="module")
def texts(exported, clips) -> list[str]:
    from korasr.runtime import Recognizer

    return [result.text for result in Recognizer(exported).transcribe(clips)]


def settings(exported: Path, folder: Path, **overrides) -> ServeConfig:  # type: ignore[no-untyped-def]
    values = {"model": exported, "jobs_dir": folder / "jobs", "api_key": f"{KEY},{OTHER}", **overrides}
    return ServeConfig(**values)


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: TestClient, path: Path | None = None, key: str = KEY, **fields):  # type: ignore[no-untyped-def]
    files = {"file": (path.name, path.read_bytes())} if path is not None else None
    return client.post("/v1/jobs", files=files, data=fields, headers=auth(key))


def finished(client: TestClient, job_id: str, key: str = KEY, timeout: float = 120, until=DONE) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if status["status"] in until or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def spool(folder: Path) -> list[Path]:
    return sorted((folder / "jobs" / "spool").iterdir())


def rows(folder: Path) -> dict[str, dict]:
    with sqlite3.connect(folder / "jobs" / "jobs.db") as db:
        db.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in db.execute("SELECT * FROM korasr_jobs")}


# --- results -------------------------------------------------------------------------------------------------------


def test_a_job_gives_what_the_synchronous_route_gives(exported, tmp_path, clips, texts):
    with TestClient(create_app(settings(exported, tmp_path))) as c:
        made = submit(c, clips[0])
        assert made.status_code == 202 and made.json()["status"] == "queued"
        job_id = made.json()["id"]
        assert made.headers["location"] == f"/v1/jobs/{job_id}"
        status = finished(c, job_id)
        assert status["status"] == "succeeded" and status["attempts"] == 1 and status["error"] is None
        assert status["created_at"] <= status["started_at"] <= status["finished_at"]
        result = c.get(f"/v1/jobs/{job_id}/result", headers=auth())
        assert result.headers["content-type"] == "application/json" and result.json() == {"text": texts[0]}

        subtitles = finished(c, submit(c, clips[1], response_format="srt").json()["id"])
        assert subtitles["status"] == "succeeded"
        srt = c.get(f"/v1/jobs/{subtitles['id']}/result", headers=auth())
        direct = c.post("/v1/audio/transcriptions", files={"file": (clips[1].name, clips[1].read_bytes())},
                        data={"response_format": "srt"}, headers=auth())  # fmt: skip
        assert srt.text == direct.text
        cues = [line for block in srt.text.strip().split("\n\n") for line in block.split("\n")[2:]]
        assert "".join(cues).replace(" ", "") == texts[1].replace(" ", "")  # utterance segments of the transcript
        assert srt.headers["content-type"] == direct.headers["content-type"] == "application/x-subrip"
        assert spool(tmp_path) == []  # decoded audio leaves the spool
        # the worker counts a job once the store has it finished, so a client may see the status a moment before the
        # counter moves (a loaded CI machine did): wait for it, boundedly
        counted = 'korasr_jobs_finished_total{status="succeeded"} 2.0'

        def scraped() -> str | None:
            text = c.get("/metrics", headers=auth()).text
            return text if counted in text else None

        metrics = wait_for("two jobs counted", scraped, timeout=10, interval=0.05)
        assert counted in metrics and "korasr_jobs_queued 0.0" in metrics
        bad = submit(c, clips[0], response_format="xml")
        assert bad.status_code == 400 and "response_format" in bad.json()["error"]
        assert submit(c).status_code == 400  # neither file nor url
        greedy = submit(c, clips[0], hotwords="회사")  # checked at submission, as /v1/transcribe checks them
        assert greedy.status_code == 400 and "hotwords need beam search" in greedy.json()["error"]
        hinted = finished(
            c, submit(c, clips[0], prompt="회사, 선배").json()["id"]
        )  # a hint: a greedy server ignores it
        assert hinted["status"] == "succeeded"


# --- restarts ------------------------------------------------------------------------------------------------------


def test_a_restart_loses_nothing_and_abandoned_jobs_are_retried_then_failed(exported, tmp_path, clips, texts):
    with TestClient(create_app(settings(exported, tmp_path, job_workers=0))) as c:  # accepts, decodes nothing
        ids = [submit(c, path).json()["id"] for path in clips]
        assert [finished(c, i, timeout=0)["status"] for i in ids] == ["queued"] * 3
    with sqlite3.connect(tmp_path / "jobs" / "jobs.db") as db:  # as a process that died while decoding leaves them
        db.execute("UPDATE korasr_jobs SET status='running', attempts=1, lease_until=0, worker='gone' WHERE id=?",
                   (ids[1],))  # fmt: skip
        db.execute("UPDATE korasr_jobs SET status='running', attempts=3, lease_until=0, worker='gone' WHERE id=?",
                   (ids[2],))  # fmt: skip
    with TestClient(create_app(settings(exported, tmp_path, job_max_attempts=3))) as c:
        done = [finished(c, i) for i in ids]
        assert [d["status"] for d in done] == ["succeeded", "succeeded", "failed"]
        assert [d["attempts"] for d in done] == [1, 2, 3]
        assert "3 times" in done[2]["error"] and "--job-max-attempts 3" in done[2]["error"]
        for job_id, text in zip(ids[:2], texts, strict=False):
            assert c.get(f"/v1/jobs/{job_id}/result", headers=auth()).json() == {"text": text}
        failed = c.get(f"/v1/jobs/{ids[2]}/result", headers=auth())
        assert failed.status_code == 409 and "3 times" in failed.json()["error"]
    assert spool(tmp_path) == []


def long_recording(clips: list[Path], dest: Path, seconds: float) -> Path:
    audio = np.concatenate([sf.read(p, dtype="float32")[0] for p in clips])
    sf.write(dest, np.tile(audio, int(seconds / (len(audio) / 16000)) + 1), 16000)
    return dest


def test_a_job_being_decoded_at_shutdown_goes_back_to_the_queue(exported, tmp_path, clips):
    """A long file from an allowed folder (decoded in chunks): stopping the server mid-decode puts the job back,
    not counted as an attempt; the next start decodes it."""
    folder = tmp_path / "media"
    folder.mkdir()
    long = long_recording(clips, folder / "long.wav", 600)
    config = settings(exported, tmp_path, job_sources=(str(folder),))
    with TestClient(create_app(config)) as c:
        job_id = submit(c, url=str(long)).json()["id"]
        assert finished(c, job_id, until=("running", *DONE))["status"] == "running"
    row = rows(tmp_path)[job_id]
    assert (row["status"], row["attempts"], row["worker"]) == ("queued", 0, None)
    with TestClient(create_app(config)) as c:
        status = finished(c, job_id, timeout=600)
        assert status["status"] == "succeeded" and status["attempts"] == 1 and status["audio_seconds"] > 600
        verbose = c.get(f"/v1/jobs/{job_id}/result", headers=auth())
        assert verbose.json()["text"]
    assert long.is_file()  # a file the server reads where it is is never deleted


# --- callbacks -----------------------------------------------------------------------------------------------------


class Loopback:
    """A real HTTP server on 127.0.0.1 (a free port) in a daemon thread, with ``handler``."""

    def serve(self, handler) -> None:  # type: ignore[no-untyped-def]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(Loopback):
    """A real HTTP server on loopback that records every POST and answers from a script of statuses (then ``then``),
    each a status or (status, headers); with ``trickle``, each answer's status line is spread byte by byte over that
    many seconds."""

    def __init__(self, answers: list[int | tuple[int, dict]] | None = None, trickle: float = 0.0, then: int = 200):
        self.answers, self.received = list(answers or []), []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.received.append((dict(self.headers), body, time.monotonic()))
                    answer = receiver.answers.pop(0) if receiver.answers else then
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                if trickle:
                    line = f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode()
                    with contextlib.suppress(OSError):
                        for i in range(len(line)):
                            self.wfile.write(line[i : i + 1])
                            self.wfile.flush()
                            time.sleep(trickle / len(line))
                    return
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.serve(Handler)
        self.url = f"http://127.0.0.1:{self.port}/hook"


def test_callbacks_are_signed_retried_and_never_redirected(exported, tmp_path, clips, texts):
    """The service's callbacks verify with the Standard Webhooks library under the deployment's plain secret (its
    UTF-8 bytes the key) and, for this release, with the old X-Korasr-* check; one ``webhook-id`` on every attempt;
    a 503's Retry-After is waited for; a redirect is neither followed nor retried."""
    from standardwebhooks import Webhook, WebhookVerificationError

    receiver = Receiver([500, (503, {"Retry-After": "2"})])
    redirecting = Receiver([302])
    prefixes = (f"http://127.0.0.1:{receiver.port}/", f"http://127.0.0.1:{redirecting.port}/")
    config = settings(exported, tmp_path, callback_allow=prefixes, callback_secret=SECRET)
    try:
        with TestClient(create_app(config)) as c:
            job_id = submit(c, clips[0], callback_url=receiver.url).json()["id"]
            moved_id = submit(c, clips[1], callback_url=redirecting.url).json()["id"]
            status = wait_callback(c, job_id)
            moved = wait_callback(c, moved_id)
    finally:
        receiver.close()
        redirecting.close()
    assert status["callback"]["state"] == "delivered" and len(receiver.received) == 3  # 500, 503, then taken
    times = [t for _, _, t in receiver.received]
    assert times[2] - times[1] >= 2  # the 503 asked for 2 s
    assert {h["webhook-id"] for h, _, _ in receiver.received} == {f"job_{job_id}_succeeded"}
    headers, body, _ = receiver.received[-1]
    sent = Webhook(SECRET.encode()).verify(body, headers)
    assert sent["id"] == job_id and sent["status"] == "succeeded" and sent["result"] == {"text": texts[0]}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET.encode()).verify(body.replace(b"succeeded", b"succeedeD"), headers)  # tampered
    with pytest.raises(WebhookVerificationError):
        Webhook(b"another-secret-of-16+").verify(body, headers)
    timestamp, signature = headers["X-Korasr-Timestamp"], headers["X-Korasr-Signature"]
    assert timestamp == headers["webhook-timestamp"] and headers["X-Korasr-Delivery"] == job_id
    assert verify_signature(SECRET, timestamp, body, signature)
    assert not verify_signature(SECRET, timestamp, body.replace(b"succeeded", b"succeedeD"), signature)  # tampered
    assert not verify_signature("another-secret-of-16+", timestamp, body, signature)
    assert not verify_signature(SECRET, timestamp, body, signature, now=int(timestamp) + 301)  # replayed later
    old = int(timestamp) - 3600  # an old timestamp, however well signed
    assert not verify_signature(SECRET, old, body, legacy_sign(SECRET, old, body))
    assert moved["callback"]["state"] == "failed" and "redirects are not followed" in moved["callback"]["error"]
    assert [h for h, _, _ in redirecting.received] and len(redirecting.received) == 1  # not followed, not retried


def wait_callback(client: TestClient, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
        if status.get("callback", {}).get("state") in ("delivered", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def test_callback_targets_outside_the_allow_list_or_on_private_addresses_are_refused(exported, tmp_path, clips):
    receiver = Receiver()
    host = socket.gethostname()  # a name, not an address: the prefix does not name where it resolves to
    config = settings(exported, tmp_path, callback_secret=SECRET,
                      callback_allow=("https://hooks.example.com/", f"http://{host}:{receiver.port}/"))  # fmt: skip
    refused = {
        f"http://127.0.0.1:{receiver.port}/hook": (403, "not under an allowed prefix"),
        "http://169.254.169.254/latest/meta-data/": (403, "not under an allowed prefix"),
        "https://hooks.example.com.attacker.test/": (403, "not under an allowed prefix"),
        "https://hooks.example.com@127.0.0.1/": (400, "user name or password"),
        "ftp://hooks.example.com/": (400, "http:// or https://"),
    }
    try:
        with TestClient(create_app(config)) as c:
            for url, (status, reason) in refused.items():
                answer = submit(c, clips[0], callback_url=url)
                assert answer.status_code == status and reason in answer.json()["error"], (url, answer.json())
            if any(not ip.is_global for ip in resolved(host)):
                answer = submit(c, clips[0], callback_url=f"http://{host}:{receiver.port}/hook")
                assert answer.status_code == 403 and "loopback, private" in answer.json()["error"]
            assert c.get("/metrics", headers=auth()).text.count("korasr_jobs_finished_total{") == 0
        with TestClient(create_app(settings(exported, tmp_path, callback_allow=config.callback_allow))) as c:
            answer = submit(c, clips[0], callback_url="https://hooks.example.com/x")  # no secret to sign with
            assert answer.status_code == 400 and "KORASR_CALLBACK_SECRET" in answer.json()["error"]
    finally:
        receiver.close()
    assert receiver.received == [] and spool(tmp_path) == []


def resolved(host: str) -> list:  # type: ignore[type-arg]
    from korasr.serve.jobs.net import address

    try:
        return [address(info[4][0]) for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)]
    except OSError:
        return []


def test_url_prefixes_match_whole_segments_and_prefixes_are_validated(tmp_path):
    import httpx

    from korasr.serve.jobs.net import under

    base = httpx.URL("https://media.example.com/audio")
    assert under(httpx.URL("https://media.example.com/audio/a.wav"), base)
    assert under(httpx.URL("https://MEDIA.example.com:443/audio"), base)
    assert not under(httpx.URL("https://media.example.com/audio-private/a.wav"), base)
    assert not under(httpx.URL("https://media.example.com:8443/audio/a.wav"), base)
    assert not under(httpx.URL("http://media.example.com/audio/a.wav"), base)
    assert not under(httpx.URL("https://media.example.com/audio/../private/a.wav"), base)  # normalised: /private
    for bad, reason in [({"job_sources": ("relative/folder",)}, "an absolute folder"),
                        ({"callback_allow": ("ftp://x/",)}, "http:// or https://"),
                        ({"callback_allow": ("https://u:p@x/",)}, "user name or password"),
                        ({"job_queue_max": 0}, "job_queue_max 0"), ({"job_retention_s": 0}, "job_retention_s 0"),
                        ({"job_spool_max_bytes": 10}, "job_spool_max_bytes"), ({"job_workers": 17}, "job_workers"),
                        ({"callback_secret": "short"}, "secret 1 of 1: 5 characters, a plain secret needs at least 16"),
                        ({"callback_secret": f"{SECRET} whsec_!!"}, "secret 2 of 2: starts with whsec_ but the rest is not"),
                        ({"job_db": "jobs.db"}, "SQLAlchemy URL")]:  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            ServeConfig(model=tmp_path, **bad)


def test_job_settings_reach_worker_processes_without_the_secret(tmp_path, monkeypatch):
    from korasr.serve.config import ENV

    config = ServeConfig(model=tmp_path, jobs_dir=tmp_path / "jobs", job_sources=(str(tmp_path),),
                         callback_allow=("https://hooks.example.com/",), job_quota_per_key=7, api_key="k",
                         callback_secret=SECRET)  # fmt: skip
    monkeypatch.setenv(ENV, config.to_env())
    assert SECRET not in config.to_env() and "callback_secret" not in config.to_env()
    monkeypatch.setenv("KORASR_API_KEY", "k")
    monkeypatch.setenv("KORASR_CALLBACK_SECRET", SECRET)
    assert ServeConfig.from_env() == config
    assert SECRET not in repr(config)


# --- sources -------------------------------------------------------------------------------------------------------


class Files(Loopback):
    """A real HTTP server on loopback serving one folder, and a redirect at /moved."""

    def __init__(self, folder: Path):
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:
                if self.path.startswith("/moved"):
                    self.send_response(302)
                    self.send_header("Location", "/audio/a.wav")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.serve(Handler)
        self.url = f"http://127.0.0.1:{self.port}"


def test_url_sources_only_inside_allowed_folders_and_prefixes(exported, tmp_path, clips, texts):
    allowed, outside = tmp_path / "media", tmp_path / "private"
    (allowed / "audio").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(clips[0], allowed / "audio" / "a.wav")
    shutil.copy(clips[1], outside / "secret.wav")
    (allowed / "audio" / "link.wav").symlink_to(outside / "secret.wav")
    files = Files(allowed)
    config = settings(exported, tmp_path, job_sources=(str(allowed), f"{files.url}/audio/"))
    refused = {
        "/etc/passwd": 403,
        f"{allowed}/../private/secret.wav": 403,  # `..` out of the folder
        f"{allowed}/audio/link.wav": 403,  # a symlink out of it
        "audio/a.wav": 400,  # relative
        f"{allowed}/audio/none.wav": 400,
        f"{files.url}/private/secret.wav": 403,  # a URL outside the allowed prefix
        f"http://localhost:{files.url.rsplit(':', 1)[1]}/audio/a.wav": 403,  # the same server by another name
        f"{files.url}/audio/../moved": 403,  # normalised to /moved: outside the prefix
    }
    try:
        with TestClient(create_app(config)) as c:
            for url, status in refused.items():
                answer = submit(c, url=url)
                assert answer.status_code == status, (url, answer.json())
            local = finished(c, submit(c, url=f"{allowed}/audio/a.wav").json()["id"])
            remote = finished(c, submit(c, url=f"{files.url}/audio/a.wav", response_format="text").json()["id"])
            assert local["status"] == remote["status"] == "succeeded"
            assert c.get(f"/v1/jobs/{local['id']}/result", headers=auth()).json() == {"text": texts[0]}
            text = c.get(f"/v1/jobs/{remote['id']}/result", headers=auth())
            assert text.text == texts[0] and text.headers["content-type"].startswith("text/plain")
            assert c.delete(f"/v1/jobs/{local['id']}", headers=auth()).json() == {"id": local["id"], "deleted": True}
    finally:
        files.close()
    assert (allowed / "audio" / "a.wav").is_file() and spool(tmp_path) == []


# --- limits --------------------------------------------------------------------------------------------------------


def test_every_job_limit_answers_with_its_reason(exported, tmp_path, clips):
    with TestClient(create_app(settings(exported, tmp_path / "q", job_workers=0, job_queue_max=2))) as c:
        assert [submit(c, clips[0]).status_code for _ in range(2)] == [202, 202]
        full = submit(c, clips[0])
        assert full.status_code == 429 and full.headers["retry-after"] and "queue is full" in full.json()["error"]
    with TestClient(create_app(settings(exported, tmp_path / "k", job_workers=0, job_quota_per_key=1))) as c:
        assert submit(c, clips[0]).status_code == 202
        quota = submit(c, clips[0])
        assert quota.status_code == 429 and "this API key has 1 jobs" in quota.json()["error"]
        assert submit(c, clips[0], key=OTHER).status_code == 202  # a quota per key
    room = clips[0].stat().st_size + 100
    with TestClient(create_app(settings(exported, tmp_path / "s", job_workers=0, job_spool_max_bytes=room))) as c:
        assert submit(c, clips[0]).status_code == 202
        spooled = submit(c, clips[0])
        assert spooled.status_code == 413 and "spool is full" in spooled.json()["error"]
        assert len(spool(tmp_path / "s")) == 1
    with TestClient(create_app(settings(exported, tmp_path / "d", job_max_audio_seconds=1.0))) as c:
        long = submit(c, clips[0])
        assert long.status_code == 413 and "limit 1 s" in long.json()["error"]
        assert spool(tmp_path / "d") == []


def test_finished_jobs_expire_with_their_files(exported, tmp_path, clips):
    with TestClient(create_app(settings(exported, tmp_path, job_retention_s=1))) as c:
        job_id = submit(c, clips[0]).json()["id"]
        assert finished(c, job_id)["status"] == "succeeded"
        deadline = time.monotonic() + 30
        while job_id in rows(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job_id not in rows(tmp_path) and spool(tmp_path) == []
        assert c.get(f"/v1/jobs/{job_id}", headers=auth()).status_code == 404
        assert c.get(f"/v1/jobs/{job_id}/result", headers=auth()).status_code == 404


# --- keys ----------------------------------------------------------------------------------------------------------


def test_jobs_belong_to_their_key_which_never_reaches_the_database(exported, tmp_path, clips):
    with TestClient(create_app(settings(exported, tmp_path, job_workers=0))) as c:
        job_id = submit(c, clips[0]).json()["id"]
        for method, path in [("GET", ""), ("GET", "/result"), ("DELETE", "")]:
            assert c.request(method, f"/v1/jobs/{job_id}{path}", headers=auth(OTHER)).status_code == 404
        assert c.get(f"/v1/jobs/{job_id}/result", headers=auth()).status_code == 409  # queued: not done
        assert c.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.delete(f"/v1/jobs/{job_id}", headers=auth()).json() == {"id": job_id, "status": "cancelled"}
        assert spool(tmp_path) == []
        assert c.get(f"/v1/jobs/{job_id}", headers=auth()).json()["status"] == "cancelled"
        assert c.delete(f"/v1/jobs/{job_id}", headers=auth()).json() == {"id": job_id, "deleted": True}
        assert c.get(f"/v1/jobs/{job_id}", headers=auth()).status_code == 404
        kept = submit(c, clips[0]).json()["id"]
        stored = b"".join(p.read_bytes() for p in (tmp_path / "jobs").glob("jobs.db*"))
        assert rows(tmp_path)[kept]["owner"] == hashlib.sha256(KEY.encode()).hexdigest()
    stored += (tmp_path / "jobs" / "jobs.db").read_bytes()
    for key in (KEY, OTHER):
        assert key.encode() not in stored


def test_database_errors_never_carry_a_jobs_values(tmp_path):
    """An error's text is logged (a failing ``finish``) or a 500's traceback (a failing ``add``): never a row's
    values (a transcript, hotwords, a callback URL, a presigned source URL)."""
    from sqlalchemy.exc import IntegrityError

    from korasr.serve.jobs.store import JobStore

    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    row = {"id": "c" * 32, "owner": "", "response_format": "json", "audio": "a.wav", "spooled": False,
           "source": "https://media.example.com/a.wav?X-Amz-Signature=PRESIGNED", "audio_bytes": 1,
           "audio_seconds": 1.0, "hotwords": "비밀 회의", "hotwords_field": "hotwords",
           "callback_url": "https://hooks.example.com/hook?sig=HOOKSECRET", "callback_state": "pending",
           "created_at": time.time()}  # fmt: skip
    try:
        store.add(row, 10, 10)
        with pytest.raises(IntegrityError) as raised:  # the same id twice
            store.add(row, 10, 10)
    finally:
        store.close()
    text = str(raised.value)
    assert "UNIQUE" in text and "INSERT INTO korasr_jobs" in text, text  # still says what failed
    for value in ("PRESIGNED", "비밀", "HOOKSECRET"):
        assert value not in text, text
