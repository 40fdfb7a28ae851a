"""Replicas share state on real servers (issue 35 §4): the jobs' store on a PostgreSQL server the tests start, where
claims lock rows (``FOR UPDATE SKIP LOCKED``) so concurrent replicas never take one job twice nor wait on each other;
two `korasr serve` replicas on that store and one jobs folder, one killed with SIGKILL mid-way, finishing every job
and delivering every callback once; the registry's cache shared by replicas; and the registry on an `mlflow server`
the tests start, stopped and started again under the lifecycle's operations and under replicas following
``models:/NAME@production``."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import json
import multiprocessing
import os
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from standardwebhooks import Webhook, WebhookVerificationError

from korasr.serve.jobs.callbacks import message_id
from tests.conftest import eval_rows, serve_process, wait_for
from tests.test_jobs import Loopback

pytestmark = pytest.mark.slow

KEY, ADMIN, SECRET = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16)


@pytest.fixture
def job_db(postgres):  # type: ignore[no-untyped-def]
    """A fresh database on the session's PostgreSQL server: its SQLAlchemy URL."""
    from sqlalchemy import create_engine, text

    name = f"korasr_{secrets.token_hex(6)}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{postgres.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def job_row(**values) -> dict:  # type: ignore[no-untyped-def]
    return {"id": secrets.token_hex(16), "owner": "", "response_format": "json", "source": "x", "audio": "x",
            "spooled": False, "audio_seconds": 1.0, "audio_bytes": 1, "created_at": time.time(), **values}  # fmt: skip


def queue(store, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for _ in range(n):
        row = job_row()
        store.add(row, 1_000_000, 1_000_000)
        ids.append(row["id"])
    return ids


# --- the store: row locks on a server database ----------------------------------------------------------------------


def test_claims_skip_the_rows_another_replica_holds_instead_of_waiting(job_db):
    """Another replica's transaction holds the oldest queued row (it is claiming it), the oldest stale job (it is
    recovering it) and a finished job's callback (it is claiming it): this replica's claim takes the next job, its
    sweep the next stale job, and its callback claim answers "not yours" at once; none waits for the other's commit."""
    from sqlalchemy import create_engine, text

    from korasr.serve.jobs.store import JobStore

    store = JobStore(job_db)
    ids = queue(store, 6)
    with store.engine.begin() as c:  # two stale jobs (their replica died), one finished with its callback pending
        c.execute(text("UPDATE korasr_jobs SET status='running', attempts=1, lease_until=0, worker='gone' "
                       "WHERE id IN (:a, :b)"), {"a": ids[2], "b": ids[3]})  # fmt: skip
        c.execute(text("UPDATE korasr_jobs SET status='succeeded', finished_at=1, callback_url='http://x/', "
                       "callback_state='pending' WHERE id=:c"), {"c": ids[4]})  # fmt: skip
    other = create_engine(job_db)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with other.connect() as c, c.begin():
            for held in (ids[0], ids[2], ids[4]):
                c.execute(text("SELECT id FROM korasr_jobs WHERE id=:id FOR UPDATE"), {"id": held})
            claimed = pool.submit(store.claim, "replica-b", 60).result(timeout=10)
            assert claimed["id"] == ids[1] and claimed["worker"] == "replica-b" and claimed["attempts"] == 1
            assert pool.submit(store.recover, 3).result(timeout=10) == []
            assert pool.submit(store.claim_callback, ids[4], 60).result(timeout=10) is None
            states = dict(c.execute(text("SELECT id, status FROM korasr_jobs")).all())
        assert states[ids[3]] == "queued" and states[ids[2]] == "running"  # the unheld stale job was taken back
        assert store.claim("replica-b", 60)["id"] == ids[0]  # released by the other: the oldest again
        assert store.claim_callback(ids[4], 60)["callback_state"] == "sending"
    finally:
        pool.shutdown(wait=True)
        other.dispose()
        store.close()


def test_the_lease_and_the_callback_hold_are_settings_bounded_by_what_they_cover(tmp_path):
    """`--job-lease` sets how long a dead replica holds its jobs (2 s to 1 h); a callback's claim is held as long as
    its deliveries can take under `--callback-attempts` and `--callback-timeout`, and 10 s more, never less, so no
    two processes send one callback at once (with the defaults 75 s, where it was a fixed 11 min)."""
    from korasr.cli import build_parser
    from korasr.serve import ServeConfig
    from korasr.serve.jobs.callbacks import DEADLINE_S

    assert ServeConfig(model=tmp_path).job_lease_s == 60 and ServeConfig(model=tmp_path).callback_hold_s == 75
    quick = ServeConfig(model=tmp_path, job_lease_s=3, callback_max_attempts=1, callback_timeout_s=8)
    assert (quick.job_lease_s, quick.callback_hold_s) == (3, 18)
    slowest = ServeConfig(model=tmp_path, callback_max_attempts=20, callback_timeout_s=120)
    assert slowest.callback_hold_s == DEADLINE_S + 10
    for lease in (1, 3601):
        with pytest.raises(ValueError, match="job_lease_s"):
            ServeConfig(model=tmp_path, job_lease_s=lease)
    args = build_parser().parse_args(["serve", "--model", str(tmp_path), "--job-lease", "3", "--callback-attempts",
                                      "1", "--callback-timeout", "8"])  # fmt: skip
    assert (args.job_lease, args.callback_attempts, args.callback_timeout) == (3, 1, 8)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--model", str(tmp_path), "--job-lease", "1"])


def _claim_all(url: str, name: str, start, results) -> None:  # type: ignore[no-untyped-def]
    from korasr.serve.jobs.store import JobStore

    store = JobStore(url)
    start.wait(60)  # every process has opened the database: their first claims race
    taken = []
    try:
        first = store.claim(name, 60)
        taken += [first["id"]] if first else []
        # all four hold a claim at once before the tight loop (on a loaded machine a process scheduled first could
        # otherwise empty the queue alone, and nothing concurrent would have been tested)
        start.wait(60)
        while (job := store.claim(name, 60)) is not None:
            taken.append(job["id"])
        results.put((name, taken))
    except Exception as e:  # the database refused: what claims must never turn into
        results.put((name, f"{type(e).__name__}: {e}"))
    finally:
        store.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_replicas_claiming_at_once_never_take_one_job_twice(tmp_path, database, request):
    """Four processes, each with its own engine, claim from one queue of 240 jobs in a tight loop until it is empty:
    every job is claimed exactly once, by the process its row names, and none of them failed on a lock."""
    from sqlalchemy import create_engine, text

    from korasr.serve.jobs.store import JobStore

    url = f"sqlite:///{tmp_path / 'jobs.db'}" if database == "sqlite" else request.getfixturevalue("job_db")
    store = JobStore(url)
    ids = queue(store, 240)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_claim_all, args=(url, f"replica-{i}", start, results)) for i in range(4)]
    for p in workers:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in workers)
    for p in workers:
        p.join()
    assert all(isinstance(taken, list) for taken in outcomes.values()), outcomes
    claimed = [job_id for taken in outcomes.values() for job_id in taken]
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == len(ids)
    assert all(outcomes.values()), {k: len(v) for k, v in outcomes.items()}  # each took one at least
    engine = create_engine(url)
    with engine.connect() as c:
        rows = {r.id: r for r in c.execute(text("SELECT id, status, worker, attempts FROM korasr_jobs"))}
    engine.dispose()
    store.close()
    for name, taken in outcomes.items():
        assert all((rows[i].status, rows[i].worker, rows[i].attempts) == ("running", name, 1) for i in taken)


# --- two `korasr serve` replicas on one PostgreSQL store and one jobs folder, one killed with SIGKILL --------------


def peer_gone(conn: socket.socket) -> bool:
    """Whether the other end of ``conn`` closed it (a process killed: its kernel closes its sockets)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class HoldingReceiver(Loopback):
    """A callback receiver on loopback that checks each signature with the Standard Webhooks library and each
    ``webhook-id`` (its job's and status's), and counts what it took (answered 200) per delivery id. Until
    ``released``, a POST sent by the process ``victim`` (told by its socket) is read but not answered, so that process
    holds the callback claimed and unsent; when that process dies meanwhile, the attempt is recorded as lost (never
    answered: the sender never learned it arrived)."""

    def __init__(self) -> None:
        self.victim: int | None = None
        self.released = threading.Event()
        self.attempts: list[tuple[str, bool]] = []  # (delivery id, sent by the victim)
        self.taken: list[tuple[str, dict]] = []  # (delivery id, body): answered 200
        self.lost: list[str] = []
        self.bad: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                delivery = self.headers["X-Korasr-Delivery"]  # the job's id (this release; then webhook-id's)
                try:
                    sent = Webhook(SECRET.encode()).verify(body, dict(self.headers))
                except WebhookVerificationError:
                    receiver.bad.append(delivery)
                else:
                    if self.headers["webhook-id"] != message_id(sent):  # the same on every attempt and replica
                        receiver.bad.append(delivery)
                held = receiver.sent_by_victim(self.client_address[1])
                receiver.attempts.append((delivery, held))
                while held and not receiver.released.wait(0.05):
                    if peer_gone(self.connection):
                        break
                if held and (peer_gone(self.connection) or receiver.victim_dead()):  # answered, it would reach no one
                    receiver.lost.append(delivery)
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.taken.append((delivery, json.loads(body)))

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.serve(Handler)
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def sent_by_victim(self, client_port: int) -> bool:
        import psutil

        if self.victim is None or self.released.is_set():
            return False
        with contextlib.suppress(psutil.Error):
            return any(c.laddr and c.laddr.port == client_port and c.raddr and c.raddr.port == self.port
                       for c in psutil.Process(self.victim).net_connections(kind="tcp"))  # fmt: skip
        return False

    def victim_dead(self) -> bool:
        """Whether ``victim`` has exited (a zombie not yet reaped counts: its sockets are closed)."""
        import psutil

        try:
            return psutil.Process(self.victim).status() == psutil.STATUS_ZOMBIE  # type: ignore[arg-type]
        except psutil.NoSuchProcess:
            return True

    def close(self) -> None:
        self.released.set()
        super().close()


def long_clips(recipe, folder: Path, n: int, seconds: float) -> list[Path]:  # type: ignore[no-untyped-def]
    """``n`` recordings of about ``seconds`` each, eval_clean clips end to end (each in another order), so that a
    replica is decoding one most of the time."""
    audio = [sf.read(row["audio_filepath"], dtype="int16")[0] for row in eval_rows(recipe, 40)]
    folder.mkdir(parents=True, exist_ok=True)
    paths, rng = [], np.random.default_rng(0)
    for i in range(n):
        order, total, parts = rng.permutation(len(audio)), 0, []
        for k in np.resize(order, 10 * len(order)):
            parts.append(audio[k])
            total += len(audio[k])
            if total >= seconds * 16000:
                break
        path = folder / f"long{i:02d}.wav"
        sf.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
        paths.append(path)
    return paths


def admin_status(url: str) -> dict:
    return httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).json()


def job_rows(url: str) -> dict[str, dict]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return {r["id"]: dict(r) for r in c.execute(text("SELECT * FROM korasr_jobs")).mappings()}
    finally:
        engine.dispose()


def test_a_replica_killed_mid_way_loses_no_job_and_no_callback(exported, recipe, job_db, tmp_path, monkeypatch):
    """Two replicas on one PostgreSQL job store and one jobs folder (as pods share a database and a ReadWriteMany
    volume); 20 jobs with callbacks posted across both. Replica A is killed with SIGKILL while it decodes a job and
    while it holds a callback claimed and unsent (the receiver does not answer it). Replica B takes the job back when
    its lease runs out and sends the callback once the claim's hold has passed: every job succeeds exactly once, every
    callback is taken once, and once the jobs are deleted no spool file and no row is left."""
    jobs_dir, receiver = tmp_path / "jobs", HoldingReceiver()
    clips = long_clips(recipe, tmp_path / "audio", 20, 90.0)
    monkeypatch.setenv("KORASR_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("KORASR_CALLBACK_SECRET", SECRET)
    lease_s, timeout_s = 3.0, 5.0  # a callback's claim is held its one attempt's deadline and 10 s: 15 s
    args = ["--job-db", job_db, "--jobs-dir", str(jobs_dir), "--job-lease", str(lease_s), "--callback-allow",
            receiver.url, "--callback-attempts", "1", "--callback-timeout", str(timeout_s)]  # fmt: skip
    try:
        with contextlib.ExitStack() as stack:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both start at once
                a, b = pool.map(stack.enter_context, [serve_process(exported, tmp_path / f"{n}.log", *args, key=KEY)
                                                      for n in "ab"])  # fmt: skip
            pids = {admin_status(url)["pid"]: name for url, name in ((a, "a"), (b, "b"))}
            ids: list[str] = []

            def post(batch: list[Path]) -> None:
                for clip in batch:
                    made = httpx.post(f"{(a, b)[len(ids) % 2]}/v1/jobs", files={"file": (clip.name, clip.read_bytes())},
                                      data={"callback_url": receiver.url}, headers={"Authorization": f"Bearer {KEY}"},
                                      timeout=60)  # fmt: skip
                    assert made.status_code == 202, made.text
                    ids.append(made.json()["id"])

            post(clips[:10])  # half of them, then a few of their callbacks taken before A's are held
            deadline = time.monotonic() + 60
            while len(receiver.taken) < 4:
                assert time.monotonic() < deadline, job_rows(job_db)
                time.sleep(0.05)
            receiver.victim = next(pid for pid, name in pids.items() if name == "a")
            post(clips[10:])

            def running_on_a(since: float = 0.0) -> list[str]:
                return [i for i, r in job_rows(job_db).items() if r["status"] == "running" and r["started_at"] >= since
                        and r["worker"].split(":")[1] == str(receiver.victim)]  # fmt: skip

            deadline = time.monotonic() + 60  # A holds a callback and has just claimed a job (90 s of audio: decoded
            while not (any(held for _, held in receiver.attempts) and running_on_a(time.time() - 0.1)):  # in > 0.1 s)
                assert time.monotonic() < deadline, (receiver.attempts, job_rows(job_db))
                time.sleep(0.02)
            os.kill(receiver.victim, signal.SIGKILL)
            killed_at = time.monotonic()
            # On a loaded machine a killed process's teardown (and so the closing of its sockets) can take a while:
            # wait until it has exited before answering anything it held, so no answer goes to a process still dying.
            wait_for("the killed replica to exit", receiver.victim_dead, 30, 0.02)
            time.sleep(0.5)
            held = {delivery for delivery, by_victim in receiver.attempts if by_victim}
            interrupted = running_on_a()  # A's rows as it left them: running under its lease
            receiver.released.set()
            assert interrupted and held, (interrupted, held)

            def settled() -> bool:
                rows = job_rows(job_db)
                return all(r["status"] == "succeeded" and r["callback_state"] == "delivered" for r in rows.values())

            deadline = time.monotonic() + 90
            while not settled():
                assert time.monotonic() < deadline, job_rows(job_db)
                time.sleep(0.2)
            settled_s = time.monotonic() - killed_at
            rows = job_rows(job_db)
            survivor = next(pid for pid, name in pids.items() if name == "b")
            api = {i: httpx.get(f"{b}/v1/jobs/{i}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
                   for i in ids}  # fmt: skip
            assert sorted(os.listdir(jobs_dir / "spool")) == []  # every decoded job's audio is gone already
            for i in ids:
                deleted = httpx.delete(f"{b}/v1/jobs/{i}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
                assert deleted.json() == {"id": i, "deleted": True}
            assert job_rows(job_db) == {} and sorted(os.listdir(jobs_dir / "spool")) == []
    finally:
        receiver.close()

    assert set(rows) == set(ids) and {r["status"] for r in rows.values()} == {"succeeded"}
    for i in interrupted:  # taken back from A's lapsed lease and decoded again, by B
        assert rows[i]["attempts"] == 2 and rows[i]["worker"].split(":")[1] == str(survivor), rows[i]
    assert all(rows[i]["attempts"] == 1 for i in ids if i not in interrupted)
    for i in ids:
        assert api[i]["status"] == "succeeded" and api[i]["attempts"] == rows[i]["attempts"]
        assert api[i]["callback"]["state"] == "delivered" and api[i]["callback"]["error"] is None
    taken = [delivery for delivery, _ in receiver.taken]
    assert sorted(taken) == sorted(ids), {i: taken.count(i) for i in ids if taken.count(i) != 1}  # each once
    assert set(receiver.lost) == held and not receiver.bad  # A's claimed, unanswered callbacks: sent again by B
    for delivery, body in receiver.taken:
        assert body["id"] == delivery and body["status"] == "succeeded" and body["result"]["text"]
        assert body["attempts"] == rows[delivery]["attempts"]
    by_a = sum(r["worker"].split(":")[1] == str(receiver.victim) for r in rows.values())
    print(f"replicas: {len(ids)} jobs succeeded ({by_a} decoded by A before its SIGKILL, {len(ids) - by_a} by B), "
          f"{len(interrupted)} taken back from A (attempts 2), {len(held)} callbacks A held sent again by B, "
          f"{len(taken)} callbacks taken, all settled {settled_s:.1f} s after the kill")  # fmt: skip


# --- the registry: a cache replicas share, an MLflow tracking server ------------------------------------------------


def test_replicas_sharing_a_cache_record_what_the_alias_names_without_corrupting_it(tmp_path, monkeypatch, caplog):
    """Replicas that share the registry's cache (pods on one node's volume; in containers each server often has the
    same pid) record what ``models:/NAME@production`` resolved to, all at once, as the alias moves: the record is whole
    after every write, no write is refused, a record damaged some other way is written again, and during an outage a
    damaged record is "nothing cached" (RegistryUnavailable), never a crash. Threads of one process stand for them:
    they share a pid too."""
    from korasr import registry

    monkeypatch.setenv("KORASR_REGISTRY_CACHE", str(tmp_path / "cache"))
    ref, start = "models:/ko-shared@production", threading.Event()

    def replica(k: int) -> None:
        start.wait()
        for i in range(150):
            n = 1 + (i + k) % 3  # records of different lengths, so a torn write shows
            registry._remember(ref, registry.Version("ko-shared", n, ["production"], {"note": "x" * 400 * n}, "run",
                                                     "runs:/run/export", 0))  # fmt: skip

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(4)]
    with caplog.at_level("WARNING", logger="korasr.registry"):
        for t in threads:
            t.start()
        start.set()
        for t in threads:
            t.join()
    record = registry._ref_record("ko-shared", "production", None)
    assert json.loads(record.read_text(encoding="utf-8"))["version"] in (1, 2, 3)
    assert [r.getMessage() for r in caplog.records] == []
    assert [p.name for p in record.parent.iterdir()] == [record.name]  # no temporary file left

    record.write_text('{"version": 2, "na', encoding="utf-8")  # torn by something else (a full disk, a crash)
    (tmp_path / "cache" / "ko-shared" / "v2" / "export").mkdir(parents=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(registry.RegistryUnavailable, match=r"127\.0\.0\.1:9"):
        registry.resolve(ref, offline_ok=True)
    registry._remember(ref, registry.Version("ko-shared", 2, [], {}, "run", "runs:/run/export", 0))
    assert registry.resolve(ref, offline_ok=True) == tmp_path / "cache" / "ko-shared" / "v2" / "export"


class MlflowServer:
    """`mlflow server` on a loopback port with its own SQLite store and artifacts folder (served through the server,
    as a team's is), job execution off; stopped and started again on the same port and store."""

    def __init__(self, folder: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.url, self.proc = folder, f"http://127.0.0.1:{self.port}", None
        self.starts: list[float] = []  # seconds each start took to answer /health

    def start(self) -> None:
        from tests.conftest import BIN

        started = time.monotonic()
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                 "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port",
                 str(self.port), "--workers", "1"],
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        self.starts.append(time.monotonic() - started)

    def stop(self) -> None:
        """SIGTERM to the server's process group (its uvicorn child too), SIGKILL after 20 s; returns once the port
        refuses connections."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

    def log(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_registry_lifecycle_on_an_mlflow_server(exported, mlflow_server, tmp_path, monkeypatch):
    """korasr's registry against a tracking server, not only a SQLite file: `korasr registry register` uploads the
    export through the server, promote and the retraining's compare-and-set promotion move the alias, models:/ refs
    resolve to byte-equal local copies; a stopped server is RegistryUnavailable within seconds (the cached version
    still resolves offline), and the restarted one answers again."""
    from korasr import registry
    from korasr.fsutil import sha256_file
    from korasr.retrain import RetrainError, RetrainOptions, promote_stage
    from tests.conftest import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("KORASR_REGISTRY_CACHE", str(tmp_path / "cache"))
    name = "ko-server-life"
    run("registry", "register", "--export", str(exported), "--name", name)
    assert registry.production(name) is None  # the server answered: the model, no production yet
    run("registry", "promote", "--name", name, "--version", "1")
    v1 = registry.production(name)
    assert v1.version == 1 and v1.tags["has_nemo"] == "true" and v1.source.startswith("runs:/")
    stored = list((mlflow_server.folder / "artifacts").rglob("model.onnx"))
    assert [p for p in stored if v1.run_id in str(p)]  # uploaded through the server into its artifacts folder
    local = registry.resolve(f"models:/{name}@production")
    assert local == tmp_path / "cache" / name / "v1" / "export"
    assert (local / "model.onnx").read_bytes() == (exported / "model.onnx").read_bytes()
    meta = json.loads((exported / "model.json").read_text(encoding="utf-8"))
    assert sha256_file(registry.resolve(f"models:/{name}/1", "nemo")) == meta["source_sha256"]

    c = registry.client()  # two more versions of the same files (a retraining would register its own)
    for _ in range(2):
        c.create_model_version(name, source=v1.source, run_id=v1.run_id)
    options = RetrainOptions(name=name, recipe="r", new_data=str(tmp_path), eval_manifests=[], promote=True)
    assert promote_stage(options, {"parent": 1}, {"version": 2}) == {"promoted": True, "previous": 1}
    with pytest.raises(RetrainError, match="compared version 3 against version 1, and production is now version 2"):
        promote_stage(options, {"parent": 1}, {"version": 3})
    assert registry.history(name) == [1, 2] and registry.production(name).version == 2
    assert registry.resolve(f"models:/{name}@production") == tmp_path / "cache" / name / "v2" / "export"
    assert registry.rollback(name).version == 1 and registry.production(name).version == 1
    registry.resolve(f"models:/{name}@production")  # what @production names is recorded here for an outage

    mlflow_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(registry.RegistryUnavailable, match=rf"127\.0\.0\.1:{mlflow_server.port}"):
            registry.production(name)
        down_s = time.monotonic() - started
        assert down_s < 20, down_s  # MLflow's own retries are bounded (registry.HTTP_DEFAULTS)
        with pytest.raises(registry.RegistryUnavailable):
            registry.resolve(f"models:/{name}@production")
        assert registry.resolve(f"models:/{name}@production", offline_ok=True) == local
    finally:
        mlflow_server.start()
    assert registry.production(name).version == 1 and registry.history(name) == [1]  # the rollback popped 2
    print(f"mlflow server: healthy {mlflow_server.starts[-1]:.1f} s after a start; stopped, RegistryUnavailable "
          f"after {down_s:.1f} s")  # fmt: skip


def test_replicas_following_production_on_an_mlflow_server_converge_after_an_outage(
    exported, recipe, mlflow_server, tmp_path, monkeypatch
):
    """Three `korasr serve --model models:/NAME@production --follow 1` replicas on one tracking server, two sharing a
    registry cache (pods on one node's volume), one with its own. The server stops: each says the registry is
    unreachable and keeps serving; it starts again: each says so again. Then a second version is registered and
    promoted with korasr's commands, and every replica serves it within a bound, answering every request meanwhile;
    the shared cache holds one copy of it."""
    from tests.conftest import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("KORASR_ADMIN_KEY", ADMIN)
    name, clip = "ko-server-follow", Path(eval_rows(recipe, 1)[0]["audio_filepath"])
    run("registry", "register", "--export", str(exported), "--name", name)
    run("registry", "promote", "--name", name, "--version", "1")
    shared, own = tmp_path / "shared-cache", tmp_path / "own-cache"

    def statuses(urls: list[str]) -> list[dict]:
        return [admin_status(url) for url in urls]

    def transcribe(url: str) -> tuple[int, dict]:
        answer = httpx.post(f"{url}/v1/transcribe", files={"audio": (clip.name, clip.read_bytes())},
                            headers={"Authorization": f"Bearer {KEY}"}, timeout=60)  # fmt: skip
        return answer.status_code, answer.json()

    def until(urls: list[str], ok, what: str, timeout: float = 90) -> float:  # type: ignore[no-untyped-def]
        started, answers = time.monotonic(), []
        while not all(ok(s) for s in statuses(urls)):
            answers += [transcribe(url) for url in urls]  # requests keep flowing meanwhile
            assert time.monotonic() - started < timeout, (what, statuses(urls))
            time.sleep(0.2)
        assert all(status == 200 and body["text"] for status, body in answers), (what, answers)
        return time.monotonic() - started

    with contextlib.ExitStack() as stack:
        urls = []
        for i, cache in enumerate((shared, shared, own)):
            monkeypatch.setenv("KORASR_REGISTRY_CACHE", str(cache))
            urls.append(stack.enter_context(serve_process(f"models:/{name}@production", tmp_path / f"r{i}.log",
                                                          "--follow", "1", "--jobs-dir", str(tmp_path / f"jobs{i}"),
                                                          key=KEY)))  # fmt: skip
        assert [s["registered"]["version"] for s in statuses(urls)] == [1, 1, 1]

        mlflow_server.stop()
        try:
            unreachable_s = until(urls, lambda s: s["follow"].get("reachable") is False, "the outage is seen", 60)
            assert all(s["registered"]["version"] == 1 for s in statuses(urls))
        finally:
            mlflow_server.start()
        back_s = until(urls, lambda s: s["follow"].get("reachable") and s["follow"].get("error") is None,
                       "the registry answers again", 60)  # fmt: skip

        run("registry", "register", "--export", str(exported), "--name", name)
        run("registry", "promote", "--name", name, "--version", "2")
        converged_s = until(urls, lambda s: s["registered"]["version"] == 2 and not s["follow"].get("retrying"),
                            "version 2 everywhere")  # fmt: skip
        served = [transcribe(url) for url in urls]
        assert all(status == 200 and body["version"] == 2 for status, body in served), served
    assert sorted(p.name for p in (shared / name / "v2").iterdir()) == [".export.lock", "export"]  # one copy
    assert (own / name / "v2" / "export" / "model.onnx").read_bytes() == (exported / "model.onnx").read_bytes()
    print(f"followers: outage seen by all 3 after {unreachable_s:.1f} s, the restarted server after {back_s:.1f} s "
          f"(its start {mlflow_server.starts[-1]:.1f} s), version 2 served by all 3 {converged_s:.1f} s after the "
          "promotion")  # fmt: skip
