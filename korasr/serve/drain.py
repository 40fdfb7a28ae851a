"""Graceful drain of `korasr serve`: what SIGTERM (or SIGINT) does, in one place.

1. At once: ``GET /health`` answers 503 ``{"status": "draining"}`` (readiness off) and ``korasr_draining`` is 1; new
   requests to ``/v1/*`` get 503 with ``Retry-After`` (those waiting for an admission slot too: they were not
   admitted, no body was read), every response says ``Connection: close`` (a keep-alive client moves on), new
   WebSocket handshakes get 503; the job loops claim no more jobs; every open stream reads no more audio, gets the
   finals of what it sent, then a close with 1001 (going away).
2. The listener stays open while what was admitted finishes: requests in progress, streams, jobs being decoded and
   callbacks being sent (or waiting to be). Jobs get until ``drain_timeout_s`` less a margin (a quarter of it, at
   most 5 s: see :func:`job_margin`); at that *release point* those still running are released to the queue (another
   replica takes them, the claim not counted as an attempt), callbacks being claimed or sent are handed back
   (pending), and requests that could not finish in time are answered rather than reset by the exit: uploads whose
   body is still arriving and job submissions still fetching their URL (no job queued yet) get 503 with
   ``Retry-After``. Requests whose body is in keep decoding.
3. When nothing is left: uvicorn's shutdown (the listener and idle keep-alive connections closed, the lifespan's
   stop, bounded by what remains of the timeout), and the process exits 0.
4. A second signal (at least a second after the first: a terminal's Ctrl+C reaches a supervisor and its workers
   together, and the supervisor passes it on) or the drain timeout ends the process at once, from a thread of its
   own whatever the event loop is doing: the jobs in hand are released and callbacks being sent handed back first,
   then a log line, then exit 0 (by ``HARD_EXIT_S`` at the latest, whatever blocks: a log line to a full pipe). A
   release that fails (the database is down) leaves its job leased: another replica's sweep takes it back when the
   lease runs out.

The signals are taken from uvicorn's server in the lifespan's startup, in every process that serves: with
``--workers N`` each worker drains on its own and the supervisor (:class:`Supervisor`) passes SIGTERM on to them,
a second one too. A server run in a thread (the tests' in-process servers) gets no signals and never drains."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from uvicorn.supervisors.multiprocess import Multiprocess

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_S = 1.0  # a second signal sooner than this after the first is the same request delivered twice
POLL_S = 0.05
RELEASE_S = 5.0  # what ending at once may spend handing jobs back
HARD_EXIT_S = RELEASE_S + 2.0  # ending at once exits by then, whatever blocks it (a log write to a full pipe)


def job_margin(timeout_s: float) -> float:
    """How long before the drain timeout running jobs are released: room to hand them back."""
    return min(timeout_s / 4, 5.0)


class Drain:
    def __init__(self, state: Any):
        self.state = state
        self.timeout_s: float = state.config.drain_timeout_s
        self.began: float | None = None  # time.monotonic() of the first signal
        self.started = asyncio.Event()  # set on the loop when the drain begins (open streams wait on it)
        self.releasing = asyncio.Event()  # set at the release point: uploads and URL fetches still going get 503
        self.gate: Any = None  # the admission gate registers itself: requests in progress and waiting
        self.signal = self.cut_by = ""
        self._signalled, self._cut = threading.Event(), threading.Event()
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    @property
    def active(self) -> bool:
        return self.began is not None

    def take_signals(self) -> bool:
        """Drain on SIGTERM and SIGINT instead of uvicorn's shutdown (from the lifespan's startup, while uvicorn's
        server holds the signals: its handler is its bound ``handle_exit``). True when taken; only the main thread
        has signals."""
        import uvicorn

        if threading.current_thread() is not threading.main_thread():
            return False
        server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        if not isinstance(server, uvicorn.Server):
            log.warning("no uvicorn server holds SIGTERM: a signal stops this server without a drain")
            return False
        self._server, self._loop = server, asyncio.get_running_loop()
        for sig in SIGNALS:  # uvicorn restores its predecessors when it exits, and re-raises none of ours: exit 0
            signal.signal(sig, self._on_signal)
        threading.Thread(target=self._watch, name="korasr-drain", daemon=True).start()
        return True

    def _on_signal(self, sig: int, frame: Any) -> None:
        """The handler only sets flags: it interrupts the event loop's thread wherever it is."""
        now = time.monotonic()
        if self.began is None:
            self.began, self.signal = now, signal.Signals(sig).name
            self._signalled.set()
        elif now - self.began >= REPEAT_S:
            self.cut_by = f"a second {signal.Signals(sig).name}"
            self._cut.set()

    def _watch(self) -> None:
        """The drain's thread: starts the drain on the loop, then ends the process at a second signal or at the
        drain timeout, whatever the loop is doing (a normal exit before either ends this thread with it)."""
        self._signalled.wait()
        assert self.began is not None and self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending anyway
            self._loop.call_soon_threadsafe(self._begin)
        cut = self._cut.wait(max(self.began + self.timeout_s - time.monotonic(), 0.0))
        self.end_now(self.cut_by if cut else f"the drain timeout ({self.timeout_s:g} s)")

    def _begin(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def held(self) -> dict[str, int]:
        """What the server still holds: requests in progress, open streams, jobs being decoded, callbacks being
        sent."""
        jobs = self.state.jobs
        return {"requests": self.gate.working if self.gate is not None else 0,
                "streams": self.state.active_streams(),
                "jobs": len(jobs.running) if jobs is not None else 0,
                "callbacks": jobs.callbacks if jobs is not None else 0}  # fmt: skip

    async def _run(self) -> None:
        assert self.began is not None
        try:
            await self._drain(self.began)
        except Exception:  # never a server that stays up: shut down now, the jobs are released by the lifespan's stop
            log.exception("drain failed; shutting down")
        # uvicorn's shutdown: the listener and idle connections closed, responses in progress finished (within
        # what remains; the drain's thread ends the process at the timeout whatever happens)
        self._server.config.timeout_graceful_shutdown = max(self.began + self.timeout_s - time.monotonic(), 0.1)
        self._server.should_exit = True

    async def _drain(self, began: float) -> None:
        state, jobs = self.state, self.state.jobs
        self.started.set()
        state.metrics.draining.set(1)
        if self.gate is not None:
            self.gate.refuse_waiting()
        if jobs is not None:
            jobs.drain()
        log.info("draining (%s): holding %s; at most %g s", self.signal, describe(self.held()), self.timeout_s)
        release_at = began + self.timeout_s - job_margin(self.timeout_s)
        released = False
        while any((held := self.held()).values()):
            if not released and time.monotonic() >= release_at:
                released = True
                await self._release(held)
            await asyncio.sleep(POLL_S)
        log.info("drained in %.1f s; shutting down", time.monotonic() - began)

    async def _release(self, held: dict[str, int]) -> None:
        """The release point (``job_margin`` before the timeout): what cannot finish in time is answered or handed
        back while there is time to, instead of being cut by the exit. Requests still receiving their body and job
        submissions still fetching their URL (no job queued yet) get 503 with Retry-After (the gate and the job route
        wait on ``releasing``); running jobs go back to the queue, callbacks are handed back. Requests whose body is
        in keep decoding."""
        jobs, gate = self.state.jobs, self.gate
        receiving = gate.receiving if gate is not None else 0
        fetching = jobs.fetching if jobs is not None else 0
        self.releasing.set()
        if receiving or fetching:
            log.warning("drain: 503 to %d uploads still arriving and %d job submissions still fetching their URL "
                        "(%g s before the timeout)", receiving, fetching, job_margin(self.timeout_s))  # fmt: skip
        if jobs is not None and (held["jobs"] or held["callbacks"]):
            log.warning("drain: %d jobs back to the queue, %d callbacks handed back (%g s before the timeout)",
                        held["jobs"], held["callbacks"], job_margin(self.timeout_s))  # fmt: skip
            await jobs.release()

    def left_s(self) -> float:
        """Seconds until the drain timeout (the whole timeout before the drain began)."""
        return self.timeout_s if self.began is None else max(self.began + self.timeout_s - time.monotonic(), 0.0)

    def end_now(self, why: str) -> None:
        """End the process at once (any thread): the jobs in hand back to the queue and the callbacks being sent
        handed back first, then exit 0, whatever fails on the way. A timer exits by ``HARD_EXIT_S`` whatever blocks
        (a log line to a full pipe while the loop's thread holds the handler's lock): the release comes before the
        log line, which may never be written."""
        hard_exit = threading.Timer(HARD_EXIT_S, os._exit, args=(0,))
        hard_exit.daemon = True
        hard_exit.start()
        try:
            held = describe(self.held())
            if self.state.jobs is not None:  # bounded: a database that does not answer leaves the jobs leased
                releasing = threading.Thread(target=self.state.jobs.release_now, daemon=True)
                releasing.start()
                releasing.join(RELEASE_S)
            log.warning("drain cut short by %s, still holding %s: jobs released, exiting now", why, held)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        finally:
            os._exit(0)


def describe(held: dict[str, int]) -> str:
    return ", ".join(f"{count} {what}" for what, count in held.items())


class Supervisor(Multiprocess):
    """uvicorn's supervisor of ``--workers`` processes. On SIGTERM or SIGINT it passes SIGTERM on to every worker
    (each drains) and waits for them; uvicorn's waits deaf, this one passes a second signal on too, so a drain can
    be cut short through the supervisor as through a single process. A worker that is gone (died and replaced,
    retired by SIGTTOU or SIGHUP) is marked dead in the shared metrics: its gauges leave the totals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: set[int] = set()  # the workers' pids, until each is marked dead

    def keep_subprocess_alive(self) -> None:  # every turn of the supervisor's loop, after the signals' handlers
        super().keep_subprocess_alive()
        self.mark_gone()

    def mark_gone(self) -> None:
        from korasr.serve.metrics import mark_dead

        live = {p.pid for p in self.processes if p.pid is not None and p.process.is_alive()}
        for pid in self.seen - live:
            mark_dead(pid)
        self.seen = live

    def join_all(self) -> None:
        while any(p.process.is_alive() for p in self.processes):
            while self.signal_queue:
                if self.signal_queue.pop(0) in SIGNALS:
                    for p in self.processes:
                        if p.process.is_alive() and p.pid is not None:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(p.pid, signal.SIGTERM)
            time.sleep(0.1)
        super().join_all()
