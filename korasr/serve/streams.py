"""Live streams of `korasr serve` (``GET /v1/stream``, a WebSocket): every connection's stream is advanced by one
shared, batched decoder.

Each connection puts its audio into an inbox; one worker thread (the only one that touches streams) serves the
streams in rounds: a round moves inbox audio into every stream that holds less than a chunk, then steps each
stream with a chunk ready once (batches of at most ``max_batch`` streams, one encoder call per batch), so a client
that sends faster than real time gets one chunk per round like everyone else. The events a round produced
(partials, finals) go back to each connection's queue on the event loop.

Bounded per stream: its caches; at most about two chunks of undecoded audio in the stream and two more in its
inbox (the connection stops reading from its socket while the inbox is full: TCP backpressure on a flooding
client); and ``max_unsent`` results queued for the client and not yet written (then ``on_unread`` aborts it, before
anything blocks on a client that does not read).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from korasr import SAMPLE_RATE
from korasr.runtime.streaming import Endpoint, Event, Stream, StreamingModel
from korasr.serve.worker import Worker

log = logging.getLogger(__name__)


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
    error_sent: bool = False
    done_sent: bool = False
    unsent: int = 0  # results queued for the client and not yet written (the writer counts them down)
    unread: asyncio.Event = field(default_factory=asyncio.Event)  # set when unsent passed the hub's max_unsent
    close_reason: str | None = None  # a limit ended the stream after its finals (1008)
    going_away: bool = False  # the server drains: after its finals, a close with 1001
    received: int = 0  # samples fed, at the stream's rate

    def __post_init__(self) -> None:
        self.room.set()


class StreamHub(Worker):
    thread_name = "korasr-stream"

    def __init__(self, model: StreamingModel, *, max_batch: int = 32, endpoint: Endpoint | None = None,
                 max_unsent: int = 256, metrics=None):  # type: ignore[no-untyped-def]  # fmt: skip
        super().__init__(metrics.stream_batch.observe if metrics else None)
        self.model, self.max_batch, self.max_unsent, self.metrics = model, max_batch, max_unsent, metrics
        self.version: str | None = None  # the model version finals' confidence is counted under (set by its owner)
        self.endpoint = endpoint or Endpoint()
        self.connections: list[Connection] = []
        self.lock = threading.Lock()  # guards inboxes and the connection list between the loop and the worker
        self.wake = asyncio.Event()
        self.inbox_limit = int(2 * model.chunk_seconds * SAMPLE_RATE)  # samples at 16 kHz-equivalent per connection

    @property
    def active(self) -> int:
        return len(self.connections)

    def open(self, sample_rate: int) -> Connection:
        conn = Connection(self.model.stream(sample_rate, self.endpoint, keep_segments=False),
                          asyncio.get_running_loop())  # fmt: skip
        with self.lock:
            self.connections.append(conn)
        if self.metrics:
            self.metrics.streams.set(self.active)
        return conn

    def close(self, conn: Connection) -> None:
        """Release the stream now: its slot, decoder state, inbox and queued results (idempotent)."""
        with self.lock:
            conn.closed = True
            if conn in self.connections:
                self.connections.remove(conn)
            conn.inbox.clear()
        conn.room.set()  # a feed waiting for room returns (and sees the stream closed)
        while not conn.events.empty():
            conn.events.get_nowait()
        if self.metrics:
            self.metrics.streams.set(self.active)

    async def feed(self, conn: Connection, pcm: np.ndarray | None) -> None:
        """Queue int16 samples (``None``: the end) for the worker; waits while the inbox is full (the caller then
        reads nothing from its socket)."""
        await conn.room.wait()
        if conn.closed:
            return
        with self.lock:
            conn.inbox.append(pcm)
            if conn.received_at is None:
                conn.received_at = time.perf_counter()
            if pcm is not None:
                conn.received += len(pcm)
                conn.pending_samples += len(pcm)
                if conn.pending_samples * SAMPLE_RATE / conn.stream.sample_rate > self.inbox_limit:
                    conn.room.clear()
        self.wake.set()

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                if await self.in_thread(self._round):
                    self.wake.set()  # streams still hold chunks: another round, after the loop has read sockets
            except Exception as e:  # never a dead hub: the streams of this round fail with the reason, others go on
                log.exception("streaming round failed")
                with self.lock:
                    for conn in self.connections:
                        if conn.error is None:
                            conn.error = f"{type(e).__name__}: {e}"[:200]
                            conn.events.put_nowait(([], True))
                            conn.error_sent = True

    def _take_audio(self, live: list[Connection]) -> dict[int, float]:
        """Move each inbox into its stream unless the stream still holds a chunk (worker thread); the arrival time
        of the oldest audio moved, per connection."""
        with self.lock:
            drained = []
            for conn in live:
                if conn.stream.ready or not conn.inbox:
                    continue
                drained.append((conn, list(conn.inbox), conn.received_at))
                conn.inbox.clear()
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
        return arrived

    def _round(self) -> bool:
        """One round (worker thread): take audio, step every stream with a chunk ready once, hand out the events.
        Streams keeping pace (no more audio waiting than their next chunk) are stepped first, in calls of their own,
        and their events handed out before the streams that are behind (a client sending faster than real time) are
        stepped: a flooding client adds no encoder work before a real-time client's result. True when a stream
        still has a chunk ready or audio waiting."""
        with self.lock:
            live = [c for c in self.connections if not c.closed]
        arrived = self._take_audio(live)
        ready = [c for c in live if c.error is None and c.stream.ready]
        with self.lock:
            behind = {id(c) for c in ready if c.inbox or c.stream.backlog > 1}
        for group in ([c for c in ready if id(c) not in behind], [c for c in ready if id(c) in behind]):
            for start in range(0, len(group), self.max_batch):
                batch = group[start : start + self.max_batch]
                self._step(batch)
                self._hand_out(batch, arrived)
        self._hand_out(live, arrived)  # failures, and streams that finished without a step
        with self.lock:
            return any(c.error is None and not c.closed and (c.stream.ready or c.inbox) for c in live)

    def _step(self, batch: list[Connection]) -> None:
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
        self.count_batch(len(batch))
        if self.metrics:
            self.metrics.chunk_seconds.observe(time.perf_counter() - began)

    def _hand_out(self, live: list[Connection], arrived: dict[int, float]) -> None:
        now = time.perf_counter()
        for conn in live:
            if conn.error is not None:
                if not conn.error_sent:  # what the stream produced before it failed, then the failure, once
                    conn.error_sent = True
                    conn.loop.call_soon_threadsafe(self._deliver, conn, conn.stream.pop_events(), True)
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
                        if event.segment is not None:
                            self.metrics.observe_confidence(self.version, event.segment.confidence)
            conn.loop.call_soon_threadsafe(self._deliver, conn, events, done)

    def _deliver(self, conn: Connection, events: list[Event], done: bool) -> None:
        """On the event loop: queue results for the connection's writer, counting what it has not yet written;
        past ``max_unsent`` the client is taken to read nothing (``conn.unread`` is set)."""
        if conn.closed:
            return
        conn.unsent += len(events)
        if conn.unsent > self.max_unsent:
            conn.unread.set()
            return
        conn.events.put_nowait((events, done))
