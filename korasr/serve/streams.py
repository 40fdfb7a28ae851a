"""Live streams of `korasr serve` (``GET /v1/stream``, a WebSocket): every connection's stream is advanced by one
shared, batched decoder.

Each connection puts its audio into an inbox; one worker thread (the only one that touches streams) drains the
inboxes, makes features, and steps every stream with a chunk ready in batches of at most ``max_batch`` streams,
one encoder call per batch. The events a step produced (partials, finals) go back to each connection's queue on
the event loop. Memory per stream: its caches, less than a chunk of audio, and at most ``max_frame_bytes`` of
undecoded audio per queued frame (the connection stops reading while its inbox holds more than two chunks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from korasr import SAMPLE_RATE
from korasr.runtime.streaming import Endpoint, Event, Stream, StreamingModel

log = logging.getLogger(__name__)
MAX_QUEUED = 256  # result batches waiting for a client that does not read them; then it is closed (1008)


@dataclass
class Connection:
    stream: Stream
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    inbox: deque = field(default_factory=deque)  # int16 arrays, then None for the end
    received_at: float | None = None  # when the oldest audio not yet decoded arrived
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set while the inbox has room
    pending_samples: int = 0
    closed: bool = False
    error: str | None = None  # set by the worker when this stream failed (the others go on)
    error_code: int = 1011
    error_sent: bool = False
    done_sent: bool = False

    def __post_init__(self) -> None:
        self.room.set()


class StreamHub:
    def __init__(self, model: StreamingModel, *, max_batch: int = 32, endpoint: Endpoint | None = None,
                 metrics=None):  # type: ignore[no-untyped-def]  # fmt: skip
        self.model, self.max_batch, self.metrics = model, max_batch, metrics
        self.endpoint = endpoint or Endpoint()
        self.connections: list[Connection] = []
        self.lock = threading.Lock()  # guards inboxes and the connection list between the loop and the worker
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="korasr-stream")
        self.task: asyncio.Task | None = None
        self.batch_sizes: deque[int] = deque(maxlen=4096)
        self.inbox_limit = int(2 * model.chunk_seconds * SAMPLE_RATE)  # samples at 16 kHz-equivalent per connection

    @property
    def active(self) -> int:
        return len(self.connections)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    def open(self, sample_rate: int) -> Connection:
        conn = Connection(self.model.stream(sample_rate, self.endpoint, keep_segments=False),
                          asyncio.get_running_loop())  # fmt: skip
        with self.lock:
            self.connections.append(conn)
        if self.metrics:
            self.metrics.streams.set(self.active)
        return conn

    def close(self, conn: Connection) -> None:
        with self.lock:
            conn.closed = True
            if conn in self.connections:
                self.connections.remove(conn)
        if self.metrics:
            self.metrics.streams.set(self.active)

    async def feed(self, conn: Connection, pcm: np.ndarray | None) -> None:
        """Queue int16 samples (``None``: the end) for the worker; waits while the inbox is full."""
        await conn.room.wait()
        with self.lock:
            conn.inbox.append(pcm)
            if conn.received_at is None:
                conn.received_at = time.perf_counter()
            if pcm is not None:
                conn.pending_samples += len(pcm)
                if conn.pending_samples * SAMPLE_RATE / conn.stream.sample_rate > self.inbox_limit:
                    conn.room.clear()
        self.wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await loop.run_in_executor(self.executor, self._tick)
            except Exception as e:  # never a dead hub: the streams of this tick fail with the reason, others go on
                log.exception("streaming tick failed")
                with self.lock:
                    for conn in self.connections:
                        if conn.error is None:
                            conn.error = f"{type(e).__name__}: {e}"[:200]
                            conn.events.put_nowait(([], True))
                            conn.error_sent = True

    def _tick(self) -> None:
        """Drain the inboxes, then step until no stream has a chunk ready (worker thread)."""
        with self.lock:
            live = [c for c in self.connections if not c.closed]
            drained = []
            for conn in live:
                items = list(conn.inbox)
                conn.inbox.clear()
                drained.append((conn, items, conn.received_at))
                conn.received_at = None
                conn.pending_samples = 0
                conn.loop.call_soon_threadsafe(conn.room.set)
        arrived = {}
        for conn, items, received_at in drained:
            if conn.error is not None:
                continue
            try:
                for pcm in items:
                    if pcm is None:
                        conn.stream.finish()
                    elif not conn.stream.finished:
                        conn.stream.accept(pcm)
            except Exception as e:  # this stream fails alone
                conn.error = f"{type(e).__name__}: {e}"[:200]
            if received_at is not None:
                arrived[id(conn)] = received_at
        while True:
            ready = [c for c in live if c.error is None and c.stream.ready]
            if not ready:
                break
            for start in range(0, len(ready), self.max_batch):
                batch = ready[start : start + self.max_batch]
                began = time.perf_counter()
                try:  # a stream whose decoding fails is marked by step (stream.error); the others go on
                    self.model.step([c.stream for c in batch])
                except Exception:  # the encoder call failed before any stream changed: each alone
                    for conn in batch:
                        try:
                            self.model.step([conn.stream])
                        except Exception as e:
                            conn.error = f"{type(e).__name__}: {e}"[:200]
                for conn in batch:
                    if conn.stream.error is not None and conn.error is None:
                        conn.error = f"{type(conn.stream.error).__name__}: {conn.stream.error}"[:200]
                took = time.perf_counter() - began
                self.batch_sizes.append(len(batch))
                if self.metrics:
                    self.metrics.chunk_seconds.observe(took)
                    self.metrics.stream_batch.observe(len(batch))
        now = time.perf_counter()
        for conn in live:
            if conn.error is None and conn.events.qsize() > MAX_QUEUED:
                conn.error, conn.error_code = f"the client read no results for {MAX_QUEUED} steps", 1008
            if conn.error is not None:
                if not conn.error_sent:  # what the stream produced before it failed, then the failure, once
                    conn.error_sent = True
                    conn.loop.call_soon_threadsafe(conn.events.put_nowait, (conn.stream.pop_events(), True))
                continue
            events = conn.stream.pop_events()
            done = conn.stream.done and not conn.done_sent
            if not events and not done:
                continue
            conn.done_sent = conn.done_sent or done
            if self.metrics:
                for event in events:
                    if event.type == "partial" and id(conn) in arrived:
                        self.metrics.partial_latency.observe(now - arrived[id(conn)])
                    elif event.type == "final":
                        self.metrics.finals.inc()
            item: tuple[list[Event], bool] = (events, done)
            conn.loop.call_soon_threadsafe(conn.events.put_nowait, item)
