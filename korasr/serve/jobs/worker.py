"""The jobs' side of the service's lifespan: ``job_workers`` loops that take queued jobs in order and decode them
with the current generation (long audio in chunks, in a thread), a sweep that puts back jobs whose process died and
deletes expired ones, and the delivery of callbacks. Started by ``ServiceState.start``, stopped by ``stop``: a job
being decoded then goes back to the queue (not counted as an attempt; its decoding ends after the chunk in hand)
and pending callbacks resume at the next start. While the server drains (``drain.py``) no job is claimed; the ones
in hand finish, or are released (``release``, or ``release_now`` from another thread when the process ends at once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from korasr.runtime.audio import AudioLimits
from korasr.serve.errors import ClientError
from korasr.serve.formats import encoded, shaped
from korasr.serve.hotwords import parse_hotwords, prompt_hotwords
from korasr.serve.jobs.callbacks import deliver, message_id, parse_secrets, payload
from korasr.serve.jobs.sources import Spool, probe
from korasr.serve.jobs.store import JobStore

log = logging.getLogger(__name__)

POLL_S = 1.0  # an idle loop looks at the queue this often (jobs other processes queued), or when woken
CALLBACKS_AT_ONCE = 8


JOBS_DIR = "exp/jobs"  # the default, under the working directory, as the registry's cache (KORASR_JOBS_DIR: another)


def jobs_dir(config: Any) -> Path:
    """``config.jobs_dir``, else ``KORASR_JOBS_DIR``, else ``exp/jobs`` under the working directory: never named after
    the model, so a promotion (a new version's folder) and a restart find the jobs queued before."""
    return Path(config.jobs_dir or os.environ.get("KORASR_JOBS_DIR") or JOBS_DIR).resolve()


def model_identity(generation: Any) -> str:
    """What decoded a job, as JSON for its row: the registry's name and version (when the service follows one),
    the export folder's name and the hash of the checkpoint it was exported from."""
    version, info = generation.version, generation.recognizer.info
    return json.dumps({"name": version.get("name"), "version": version.get("version"), "export": generation.path.name,
                       "source_sha256": str(info.get("source_sha256", ""))[:12] or None})  # fmt: skip


def db_url(config: Any) -> str:
    return config.job_db or f"sqlite:///{jobs_dir(config) / 'jobs.db'}"


class JobWorker:
    def __init__(self, state: Any):
        self.state, self.config, self.metrics = state, state.config, state.metrics
        self.folder = jobs_dir(self.config)
        self.spool = self.folder / "spool"
        self.store: JobStore | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"[:200]
        self.wake = asyncio.Event()
        self.room = Spool(self.spool, self.config.job_spool_max_bytes)  # what spooled files reserve
        self.fetching = 0  # URL fetches in progress (at most job_fetches)
        self._tasks: set[asyncio.Task] = set()
        self._callbacks: set[asyncio.Task] = set()
        self._callback_slots = asyncio.Semaphore(CALLBACKS_AT_ONCE)
        self._stopping = threading.Event()  # a long decode ends after its current chunk
        self.draining = False  # the server is draining (korasr/serve/drain.py): no more claims
        self.running: set[str] = set()  # the jobs this process is decoding
        self.sending: dict[str, float] = {}  # the callbacks it is sending, with their claims

    async def start(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = await asyncio.to_thread(JobStore, db_url(self.config))
        log.info("jobs: %s, spool %s, %d workers", redacted(db_url(self.config)), self.spool, self.config.job_workers)
        if self.config.job_workers:
            await self.sweep()  # also sends the callbacks left pending (each claimed first: one process sends it)
            self._spawn(self._sweep_loop(), self._tasks)
        for _ in range(self.config.job_workers):
            self._spawn(self._decode_loop(), self._tasks)
        await self.refresh()

    async def stop(self) -> None:
        await self.release()
        if self.store is not None:
            self.store.close()

    async def release(self) -> None:
        """Stop every loop: a job being decoded goes back to the queue (its decoding ends after the chunk in hand),
        a callback being sent or being claimed is handed back (pending), the sweep ends. Until none is left: a job
        finishing as it is cancelled may still start its callback (refused once stopping: it stays pending)."""
        self._stopping.set()
        while tasks := [*self._tasks, *self._callbacks]:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def callbacks(self) -> int:
        """Callbacks this process holds: waiting for a slot, being claimed or being sent (a drain waits for them)."""
        return len(self._callbacks)

    def drain(self) -> None:
        """Claim no more jobs (the server is draining); the jobs in hand and the callbacks being sent go on."""
        self.draining = True
        self.wake.set()  # an idle loop sees it now

    def release_now(self) -> None:
        """From any thread, as the process ends at once: the jobs in hand back to the queue, the callbacks being sent
        pending again. A release that fails leaves its job leased: a sweep takes it back when the lease runs out."""
        self.draining = True
        self._stopping.set()
        for job_id in list(self.running):
            try:
                self.store.release(job_id, self.name)
            except Exception:
                log.exception("job %s: not released (it returns to the queue when its lease runs out)", job_id)
        for job_id, claim in list(self.sending.items()):
            with contextlib.suppress(Exception):
                self.store.set_callback(job_id, claim, "pending")

    def _spawn(self, coroutine: Any, tasks: set[asyncio.Task]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def notify(self) -> None:
        self.wake.set()

    def audio_path(self, job: dict) -> Path:
        return self.spool / job["audio"] if job["spooled"] else Path(job["audio"])

    def discard(self, job: dict) -> None:
        """Delete a job's spooled audio (never a file it read from an allowed folder)."""
        if job["spooled"]:
            self.audio_path(job).unlink(missing_ok=True)

    async def refresh(self) -> None:
        queued, oldest = await asyncio.to_thread(self.store.backlog)
        self.metrics.jobs_queued.set(queued)
        self.metrics.jobs_oldest.set(oldest)

    # --- decoding ----------------------------------------------------------------------------------------------

    async def _decode_loop(self) -> None:
        while not self.draining:
            self.wake.clear()
            try:
                job = await self._claim()
            except Exception:
                log.exception("jobs: cannot claim a job")
                job = None
            if job is not None and self.draining:  # claimed as the drain began: another process takes it
                await asyncio.to_thread(self.store.release, job["id"], self.name)
                return
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), POLL_S)
                continue
            self.running.add(job["id"])
            try:
                await self.refresh()
                await self._run(job)
            except asyncio.CancelledError:
                self.store.release(job["id"], self.name)  # stopping: back in the queue, for the next start
                raise
            except Exception:  # the database failed us: the job's lease runs out and the sweep takes it back
                log.exception("job %s: cannot record its outcome", job["id"])
            finally:
                self.running.discard(job["id"])

    async def _claim(self) -> dict | None:
        """The next job; when the server stops meanwhile, a claim the database already took is handed back."""
        claiming = asyncio.ensure_future(asyncio.to_thread(self.store.claim, self.name, self.config.job_lease_s))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                if job := await claiming:
                    self.store.release(job["id"], self.name)
            raise

    async def _run(self, job: dict) -> None:
        model = None
        try:
            shaped_result, model = await self._transcribe(job)
            result, error = encoded(shaped_result), None
        except ClientError as e:
            result, error = None, e.message
        except Exception as e:
            log.exception("job %s failed", job["id"])
            result, error = None, f"{type(e).__name__}: {e}"[:2000]
        if not await asyncio.to_thread(self.store.finish, job["id"], self.name, result=result, error=error,
                                       model=model):  # fmt: skip
            log.warning("job %s: its lease ran out while it was decoded; another worker has it", job["id"])
            return
        self.finished(job, "failed" if error is not None else "succeeded")

    async def _transcribe(self, job: dict) -> tuple[str | dict, str]:
        """The job's result in its format, and the model that made it (JSON: :func:`model_identity`): the one in
        service when the job is decoded, whichever served when it was queued."""
        path, limits = self.audio_path(job), AudioLimits(max_seconds=self.config.job_max_audio_seconds)
        with self.state.lease() as generation:
            model = model_identity(generation)
            recognizer = generation.recognizer
            hotwords = self._hotwords(recognizer, job)
            seconds = await asyncio.to_thread(probe, path, job["source"][:200], limits)  # the file may have changed
            decoding = asyncio.ensure_future(asyncio.to_thread(
                recognizer.transcribe, [path], timestamps=True, hotwords=hotwords,
                chunk_seconds=self.config.chunk_seconds, stop=self._stopping))  # fmt: skip
            decoding.add_done_callback(lambda f: f.cancelled() or f.exception())  # stopped at shutdown: not an error
            result = (await self._hold(job, decoding))[0]
            self.metrics.observe_confidence(generation.log_fields()["model_version"], result.confidence)
        self.metrics.audio_seconds.inc(seconds)
        return shaped(result, seconds, job["response_format"]), model

    def _hotwords(self, recognizer: Any, job: dict) -> Any:
        if job["hotwords_field"] == "prompt":
            return prompt_hotwords(recognizer, job["hotwords"], self.config.max_hotwords, self.metrics)
        return parse_hotwords(recognizer, job["hotwords"], "hotwords", self.config.max_hotwords)

    async def _hold(self, job: dict, decoding: asyncio.Future) -> Any:
        """Wait for the decoding, renewing the job's lease meanwhile."""
        while True:
            done, _ = await asyncio.wait({decoding}, timeout=self.config.job_lease_s / 3)
            if done:
                return decoding.result()
            await asyncio.to_thread(self.store.renew, job["id"], self.name, self.config.job_lease_s)

    def finished(self, job: dict, status: str) -> None:
        """A job that reached ``status``: its spooled audio deleted, counted, its callback sent."""
        self.discard(job)
        self.metrics.jobs_finished.labels(status).inc()
        if job["callback_url"] and status != "cancelled":
            self.callback(job["id"])

    # --- callbacks ---------------------------------------------------------------------------------------------

    def callback(self, job_id: str) -> None:
        """Send a job's callback in a task of its own; none once stopping (it stays pending: the next start, or
        another process's sweep, sends it)."""
        if not self._stopping.is_set():
            self._spawn(self._deliver(job_id), self._callbacks)

    async def _deliver(self, job_id: str) -> None:
        """Send a job's callback once it is claimed (no other process sends it meanwhile); a stop while claiming or
        sending hands it back, so the next start sends it again (the receiver sees the same ``webhook-id`` twice only
        after an attempt that did not finish)."""
        async with self._callback_slots:
            job = await self._claim_callback(job_id)
            if job is None or not job["callback_url"]:
                return
            claim = self.sending[job_id] = job["callback_until"]
            try:
                try:
                    if not self.config.callback_secret:
                        error = "the server has no callback secret (KORASR_CALLBACK_SECRET)"
                    else:
                        result = job["result"]
                        if result is not None and job["response_format"] in ("json", "verbose_json"):
                            result = json.loads(result)
                        error = await self._send(job, result)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        self.store.set_callback(job_id, claim, "pending")
                    raise
                outcome = "failed" if error else "delivered"
                await asyncio.to_thread(self.store.set_callback, job_id, claim, outcome, error)
            finally:  # cancelled while recording the outcome too: the thread still records it; the claim is let go
                self.sending.pop(job_id, None)
            self.metrics.job_callbacks.labels(outcome).inc()
            if error:
                log.warning("job %s: callback not delivered: %s", job_id, error)

    async def _claim_callback(self, job_id: str) -> dict | None:
        """Claim a job's callback; when the server stops meanwhile, a claim the database already took is handed
        back (pending), not left ``sending`` until its hold runs out."""
        claiming = asyncio.ensure_future(asyncio.to_thread(self.store.claim_callback, job_id,
                                                           self.config.callback_hold_s))  # fmt: skip
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                if job := await claiming:
                    self.store.set_callback(job_id, job["callback_until"], "pending")
            raise

    async def _send(self, job: dict, result: object) -> str:
        secret = self.config.callback_secret  # a pydantic SecretStr (the config's schema), or its text
        try:
            keys = parse_secrets(secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret)
            return await deliver(job["callback_url"], payload(job, result), allow=self.config.callback_allow,
                                 keys=keys, msg_id=message_id(job), job_id=job["id"],
                                 attempts=self.config.callback_max_attempts,
                                 timeout_s=self.config.callback_timeout_s)  # fmt: skip
        except Exception as e:  # a URL that passed the checks and still broke the client: failed, said why
            return f"{type(e).__name__}: {e}"[:500]

    # --- the sweep ---------------------------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        interval = min(max(self.config.job_retention_s / 4, 0.5), self.config.job_lease_s / 2)
        while not self.draining:  # a draining server sends no more callbacks: another process's sweep does
            await asyncio.sleep(interval)
            await self.sweep()

    async def sweep(self) -> None:
        """Jobs whose process died queued again (or failed), expired jobs and orphaned spool files deleted."""
        try:
            for job in await asyncio.to_thread(self.store.recover, self.config.job_max_attempts):
                self.finished(job, "failed")
            expired = await asyncio.to_thread(self.store.expired, time.time() - self.config.job_retention_s)
            for job in expired:
                self.discard(job)
            if expired:
                await asyncio.to_thread(self.store.delete, [job["id"] for job in expired])
            await asyncio.to_thread(self._orphans)
            for job in await asyncio.to_thread(self.store.pending_callbacks):  # a process died while sending one
                self.callback(job["id"])
            await self.refresh()
        except Exception:
            log.exception("jobs: the sweep failed (the next one retries)")

    def _orphans(self) -> None:
        """Spool files no job names, older than any submission could be (a crash between the write and the
        database, or an interrupted write)."""
        named = self.store.spooled_files()
        cutoff = time.time() - self.config.job_fetch_timeout_s - self.config.upload_timeout_s - 60
        with os.scandir(self.spool) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.name not in named and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)


def redacted(url: str) -> str:
    """A database URL without its password, for the log."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return url.split("://", 1)[0] + "://…"
