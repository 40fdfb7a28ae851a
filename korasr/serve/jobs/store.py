"""The jobs' database: one table over SQLAlchemy Core, SQLite (WAL) in the jobs folder unless a URL names a server
database. Every state change is one conditional UPDATE, so several processes (``--workers N``, or hosts sharing a
server database and a jobs folder) can share it: a job is claimed by one worker, which holds it under a lease it
renews while decoding; a lease that runs out (the process died) puts the job back in the queue, or fails it after
``max_attempts`` claims. A callback is claimed the same way before it is sent, so one process sends it.

The limits (queue length, a key's quota) are counted and the job inserted in one transaction that holds the write
lock from its first statement: ``BEGIN IMMEDIATE`` on SQLite, and on a server database ``SELECT … FOR UPDATE`` of
one row of ``korasr_job_admission`` that every admission locks; so processes and hosts admit one at a time and no
two see the same room. Calls block: the service makes them in a thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
metadata = MetaData()
jobs = Table(
    "korasr_jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # the queue's order
    Column("id", String(32), nullable=False, unique=True),
    Column("owner", String(64), nullable=False),  # SHA-256 of the API key that made it ('' without keys)
    Column("status", String(16), nullable=False),
    Column("response_format", String(16), nullable=False),
    Column("source", String(2000), nullable=False),  # what the client named: an upload's file name, a path, a URL
    Column("audio", String(1000), nullable=False),  # the file decoded
    Column("spooled", Boolean, nullable=False),  # the server's own copy, deleted with the job
    Column("audio_bytes", BigInteger, nullable=False),
    Column("audio_seconds", Float, nullable=False),
    Column("hotwords", Text),
    Column("hotwords_field", String(16)),  # hotwords (strict) or prompt (a hint)
    Column("callback_url", String(2000)),
    Column("callback_state", String(16)),  # pending, delivered, failed
    Column("callback_error", String(500)),
    Column("attempts", Integer, nullable=False, default=0),  # claims by a worker
    Column("error", String(2000)),
    Column("result", Text),  # in the job's response_format
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("lease_until", Float),
    Column("worker", String(200)),
    Column("model", String(1000)),  # JSON: the model that decoded it (registry name and version, export, hash)
    Column("callback_until", Float),  # a callback being sent is claimed until then (then another process may)
    Index("korasr_jobs_status", "status", "seq"),
    Index("korasr_jobs_owner", "owner", "status"),
)
admission = Table("korasr_job_admission", metadata, Column("name", String(16), primary_key=True))


class JobLimit(Exception):
    """A job the limits refuse: ``kind`` (queue, quota) and the reason."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def sqlite_pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
    connection.isolation_level = None  # the driver's own BEGIN off: sqlite_begin says which (SQLAlchemy's recipe)
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer, nor it for them
    cursor.execute("PRAGMA busy_timeout=10000")  # a writer waits at most 10 s for another
    cursor.close()


def sqlite_begin(connection) -> None:  # type: ignore[no-untyped-def]
    """Writes take SQLite's write lock when they begin (``BEGIN IMMEDIATE``), so a transaction that counts and then
    inserts cannot be overtaken between the two; reads begin deferred."""
    connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get("korasr_write") else "BEGIN")


class JobStore:
    def __init__(self, url: str):
        sqlite = url.startswith("sqlite")
        # hide_parameters: an error's text (logged, or a 500's traceback) never carries a row's values: a transcript,
        # hotwords, a callback URL, a presigned source URL
        self.engine = create_engine(url, connect_args={"timeout": 10} if sqlite else {}, pool_pre_ping=not sqlite,
                                    hide_parameters=True)  # fmt: skip
        if sqlite:
            event.listen(self.engine, "connect", sqlite_pragmas)
            event.listen(self.engine, "begin", sqlite_begin)
        for attempt in range(3):  # another process (--workers N) may create or alter the tables meanwhile
            try:
                metadata.create_all(self.engine)
                self._add_columns()
                with self._write() as c:
                    if c.execute(select(admission.c.name)).first() is None:
                        c.execute(admission.insert().values(name="admit"))
                break
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt == 2:
                    raise
                time.sleep(0.2)
        self._admit = threading.Lock()  # this process's limit checks and inserts, one at a time

    def _add_columns(self) -> None:
        """Columns a newer korasr added to a database an older one made (its jobs kept)."""
        have = {c["name"] for c in inspect(self.engine).get_columns(jobs.name)}
        for column in jobs.columns:
            if column.name not in have:
                with self._write() as c:
                    c.exec_driver_sql(f"ALTER TABLE {jobs.name} ADD COLUMN {column.name} "
                                      f"{column.type.compile(self.engine.dialect)}")  # fmt: skip

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that writes: on SQLite it holds the write lock from its first statement."""
        with self.engine.connect().execution_options(korasr_write=True) as c, c.begin():
            yield c

    def close(self) -> None:
        self.engine.dispose()

    def _row(self, query) -> dict | None:  # type: ignore[no-untyped-def]
        with self.engine.connect() as c:
            row = c.execute(query).mappings().first()
        return dict(row) if row else None

    def get(self, job_id: str, owner: str | None) -> dict | None:
        """The job, when ``owner`` made it (None: whoever did)."""
        query = select(jobs).where(jobs.c.id == job_id)
        return self._row(query if owner is None else query.where(jobs.c.owner == owner))

    def check(self, owner: str, queue_max: int, quota: int, c=None) -> None:  # type: ignore[no-untyped-def]
        """JobLimit when the queue holds ``queue_max`` jobs or ``owner`` has ``quota`` queued or running."""
        if c is None:
            with self.engine.connect() as c:
                return self.check(owner, queue_max, quota, c)
        queued = c.execute(select(func.count()).where(jobs.c.status == "queued")).scalar_one()
        if queued >= queue_max:
            raise JobLimit("queue", f"the job queue is full ({queued} queued, --job-queue-max {queue_max})")
        active = c.execute(select(func.count()).where(jobs.c.owner == owner, jobs.c.status.in_(ACTIVE))).scalar_one()
        if active >= quota:
            raise JobLimit("quota", f"this API key has {active} jobs queued or running (--job-quota {quota})")
        return None

    def add(self, row: dict, queue_max: int, quota: int) -> None:
        """Queue a job, the limits checked in the same transaction, which every admission serializes on (SQLite's
        write lock; on a server database the admission row's)."""
        with self._admit, self._write() as c:
            c.execute(select(admission.c.name).where(admission.c.name == "admit").with_for_update())
            self.check(row["owner"], queue_max, quota, c)
            c.execute(jobs.insert().values(**row, status="queued", attempts=0))

    def backlog(self) -> tuple[int, float]:
        """The jobs queued and the age in seconds of the oldest of them (0 when none is)."""
        with self.engine.connect() as c:
            count, oldest = c.execute(select(func.count(), func.min(jobs.c.created_at))
                                      .where(jobs.c.status == "queued")).one()  # fmt: skip
        return count, 0.0 if oldest is None else max(time.time() - oldest, 0.0)

    def claim(self, worker: str, lease_s: float) -> dict | None:
        """The oldest queued job no other claim holds, now running under ``worker``'s lease; None when there is none.
        On a server database the row is locked as it is read (``FOR UPDATE SKIP LOCKED``), so replicas claiming at
        once take different jobs and never wait on each other's transactions; on SQLite ``BEGIN IMMEDIATE`` orders
        them."""
        for _ in range(16):  # a database that ignores the row lock: another worker may take the job first
            with self._write() as c:
                oldest = select(jobs.c.seq).where(jobs.c.status == "queued").order_by(jobs.c.seq).limit(1)
                seq = c.execute(oldest.with_for_update(skip_locked=True)).scalar_one_or_none()
                if seq is None:
                    return None
                now = time.time()
                taken = c.execute(update(jobs).where(jobs.c.seq == seq, jobs.c.status == "queued").values(
                    status="running", worker=worker, attempts=jobs.c.attempts + 1, started_at=now,
                    lease_until=now + lease_s))  # fmt: skip
                if taken.rowcount == 1:
                    return dict(c.execute(select(jobs).where(jobs.c.seq == seq)).mappings().one())
        return None

    def _mine(self, job_id: str, worker: str):  # type: ignore[no-untyped-def]
        return update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == "running")

    def renew(self, job_id: str, worker: str, lease_s: float) -> None:
        with self._write() as c:
            c.execute(self._mine(job_id, worker).values(lease_until=time.time() + lease_s))

    def finish(self, job_id: str, worker: str, *, result: str | None = None, error: str | None = None,
               model: str | None = None) -> bool:  # fmt: skip
        """Succeeded with ``result`` or failed with ``error`` (``model``: what decoded it, JSON); False when the job
        was no longer this worker's."""
        status = "failed" if error is not None else "succeeded"
        values: dict[str, Any] = {"status": status, "result": result, "error": error and error[:2000],
                                  "finished_at": time.time(), "lease_until": None, "model": model}  # fmt: skip
        with self._write() as c:
            return c.execute(self._mine(job_id, worker).values(**values)).rowcount == 1

    def release(self, job_id: str, worker: str) -> None:
        """Back to the queue, the claim not counted: the server is stopping, no fault of the job's."""
        with self._write() as c:
            c.execute(self._mine(job_id, worker).values(status="queued", attempts=jobs.c.attempts - 1,
                                                         lease_until=None, worker=None))  # fmt: skip

    def recover(self, max_attempts: int) -> list[dict]:
        """Jobs whose lease ran out (their process died): queued again, or failed once claimed ``max_attempts``
        times. Returns those failed."""
        now, failed = time.time(), []
        lapsed = select(jobs.c.id, jobs.c.attempts).where(jobs.c.status == "running", jobs.c.lease_until < now)
        with self._write() as c:  # rows another replica's sweep has locked are its to take back
            stale = c.execute(lapsed.with_for_update(skip_locked=True)).all()
            for job_id, attempts in stale:
                lost = update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running", jobs.c.lease_until < now)
                if attempts >= max_attempts:
                    error = (f"the server stopped while decoding it, {attempts} times (--job-max-attempts "
                             f"{max_attempts}): the audio may crash the decoder")  # fmt: skip
                    if c.execute(lost.values(status="failed", error=error, finished_at=now, lease_until=None)).rowcount:
                        failed.append(job_id)
                else:
                    c.execute(lost.values(status="queued", lease_until=None, worker=None))
        return [row for job_id in failed if (row := self._row(select(jobs).where(jobs.c.id == job_id)))]

    def cancel(self, job_id: str, owner: str) -> bool:
        """A queued job cancelled (True), or it was not queued."""
        with self._write() as c:
            done = c.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.owner == owner, jobs.c.status == "queued")
                             .values(status="cancelled", finished_at=time.time()))  # fmt: skip
        return done.rowcount == 1

    def delete(self, job_ids: list[str]) -> None:
        with self._write() as c:
            c.execute(delete(jobs).where(jobs.c.id.in_(job_ids)))

    def expired(self, before: float, limit: int = 1000) -> list[dict]:
        """Finished jobs that finished before ``before`` (id, audio file, whether spooled), oldest first."""
        query = select(jobs.c.id, jobs.c.audio, jobs.c.spooled).where(jobs.c.status.in_(FINISHED),
                                                                       jobs.c.finished_at < before)  # fmt: skip
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(query.order_by(jobs.c.seq).limit(limit)).mappings()]

    def spooled_files(self) -> set[str]:
        """The spooled audio files jobs still name."""
        with self.engine.connect() as c:
            return {a for (a,) in c.execute(select(jobs.c.audio).where(jobs.c.spooled))}

    def claim_callback(self, job_id: str, hold_s: float) -> dict | None:
        """The finished job whose callback is now the caller's to send, claimed until ``hold_s`` from now (its
        ``callback_until``, the claim's token); None when it was sent, or another process holds it."""
        now = time.time()
        waiting = or_(jobs.c.callback_state == "pending",
                      and_(jobs.c.callback_state == "sending", jobs.c.callback_until < now))  # fmt: skip
        claimable = and_(jobs.c.id == job_id, jobs.c.status.in_(("succeeded", "failed")), waiting)
        with self._write() as c:  # a row another process is claiming (locked) is its to send: skipped, not waited for
            if c.execute(select(jobs.c.id).where(claimable).with_for_update(skip_locked=True)).first() is None:
                return None
            taken = c.execute(update(jobs).where(claimable).values(callback_state="sending",
                                                                   callback_until=now + hold_s))  # fmt: skip
            if taken.rowcount != 1:
                return None
            return dict(c.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one())

    def set_callback(self, job_id: str, claim: float, state: str, error: str = "") -> None:
        """The outcome of the callback claimed as ``claim``: delivered, failed, or pending again (the server stopped
        while sending)."""
        with self._write() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.callback_state == "sending",
                                         jobs.c.callback_until == claim).values(
                callback_state=state, callback_error=error[:500] or None, callback_until=None))  # fmt: skip

    def pending_callbacks(self, limit: int = 1000) -> list[dict]:
        """Finished jobs whose callback waits to be sent: never claimed, or claimed by a process that died."""
        waiting = or_(jobs.c.callback_state == "pending",
                      and_(jobs.c.callback_state == "sending", jobs.c.callback_until < time.time()))  # fmt: skip
        query = select(jobs.c.id).where(waiting, jobs.c.status.in_(("succeeded", "failed")))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(query.order_by(jobs.c.seq).limit(limit)).mappings()]
