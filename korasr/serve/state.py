"""What every route of `korasr serve` shares: the config, the metrics, and what the lifespan loads: the upload
decoders and the serving *generation* (the runtime, its request batcher, its stream hub), which a reload replaces
atomically (``swap``) while the generation before finishes what it holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import UploadFile
from starlette.requests import HTTPConnection

from korasr.runtime import SAMPLE_RATE, Recognizer, Result
from korasr.runtime.audio import AudioLimits
from korasr.serve.batcher import Batcher
from korasr.serve.collect import Collector
from korasr.serve.config import ServeConfig
from korasr.serve.drain import Drain
from korasr.serve.errors import ClientError, decode_upload
from korasr.serve.jobs.worker import JobWorker
from korasr.serve.logs import detached, note
from korasr.serve.metrics import Metrics
from korasr.serve.streams import StreamHub

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """One loaded model and what decodes with it. Requests and streams admitted while it is current hold it
    (``ServiceState.lease``) until they finish, so a swap never moves work between models; once it is retired and
    the last holder lets go, its batcher and hub stop and the model is released."""

    path: Path
    recognizer: Recognizer
    batcher: Batcher
    hub: StreamHub | None
    version: dict = field(default_factory=dict)  # the registry's name, version and metrics, when followed
    users: int = 0
    retired: bool = False

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
        await self.batcher.stop()

    def log_fields(self) -> dict:
        """What a request's log record names the model by: the export folder, and the registry's version when
        followed, else the hash of the checkpoint it was exported from."""
        version = self.version.get("version") or str(self.recognizer.info.get("source_sha256", ""))[:12] or None
        return {"model": self.path.name, "model_version": None if version is None else str(version)}


async def load_generation(config: ServeConfig, path: Path, metrics: Metrics, version: dict | None = None) -> Generation:
    """Load an export, warm it up, start its batcher (and its stream hub for a streaming export)."""
    upstream = None
    if config.triton:  # gateway mode: the graph runs in Triton (korasr/runtime/triton_session.py)
        from korasr.runtime.triton_session import TritonSession

        upstream = TritonSession(config.triton, config.triton_model, timeout_s=config.triton_timeout_s,
                                 max_in_flight=config.triton_max_in_flight)  # fmt: skip
    recognizer = await asyncio.to_thread(Recognizer, path, threads=config.threads, precision=config.precision,
                                         graph_session=upstream)  # fmt: skip
    await asyncio.to_thread(recognizer.use_decoder, config.decoder or recognizer.default_decoder)
    recognizer.endpoint_silence, recognizer.max_utterance = config.endpoint_silence_s, config.max_utterance_s
    try:
        await asyncio.to_thread(recognizer.transcribe_arrays, [np.zeros(SAMPLE_RATE, dtype=np.float32)])  # warm-up
    except Exception as e:
        from korasr.runtime.triton_session import UpstreamError

        if not isinstance(e, UpstreamError):
            raise
        log.warning("%s; serving, /health answers 503 until it does", e)  # Triton may start after the gateway
    batcher = Batcher(recognizer, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000,
                      chunk_seconds=config.chunk_seconds, batch_seconds=config.batch_seconds,
                      on_batch=metrics.batch_size.observe)  # fmt: skip
    hub = None
    if (path / "streaming" / "streaming.json").is_file():
        hub = await asyncio.to_thread(stream_hub, config, path, metrics)
    generation = Generation(path, recognizer, batcher, hub, version or {})
    batcher.start()
    if hub is not None:
        hub.version = generation.log_fields()["model_version"]
        hub.start()
    return generation


@dataclass
class ServiceState:
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False
    current: Generation | None = None
    decoders: ThreadPoolExecutor | None = None
    retiring: list[Generation] = field(default_factory=list)
    reload_error: str | None = None  # the last failed reload's reason, until one succeeds (/admin/status shows it)
    follow: dict = field(default_factory=dict)  # the follower's view of the registry (follow.py; /admin/status)
    jobs: JobWorker | None = None  # asynchronous jobs (korasr/serve/jobs/), once started
    collector: Collector | None = None  # low-confidence requests kept for review (--collect; collect.py)
    canary: Any = None  # the accuracy canary (--canary; canary.py), set by create_app

    def __post_init__(self) -> None:
        self.limits = AudioLimits(max_seconds=self.config.max_audio_seconds)
        self._swap_lock = asyncio.Lock()
        self.reloading = asyncio.Lock()  # one reload at a time (follow.reload): another meanwhile is refused
        self._follower: asyncio.Task | None = None
        self._releases: set[asyncio.Task] = set()  # held until done (the loop keeps only weak references)
        self.drain = Drain(self)  # SIGTERM: finish what is held, refuse the rest, exit (drain.py)

    # the current generation's parts, for the routes
    @property
    def recognizer(self) -> Recognizer | None:
        return self.current.recognizer if self.current else None

    @property
    def batcher(self) -> Batcher | None:
        return self.current.batcher if self.current else None

    @property
    def hub(self) -> StreamHub | None:
        return self.current.hub if self.current else None

    async def start(self) -> None:
        """Load the export (the followed registry version's, when following), then follow the registry."""
        from korasr.serve.follow import pinned

        version, path = None, self.config.model
        if self.config.model_ref:  # the version the alias names now, and its export (the one the CLI fetched)
            version, path = await asyncio.to_thread(pinned, self.config)
            self.metrics.registry_reachable.set(0 if version["from_cache"] else 1)
            if version["from_cache"]:
                self.follow.update(reachable=False, error="the registry did not answer at start: serving version "
                                   f"{version['version']} from the local cache", failing_since=time.time())  # fmt: skip
        self.current = await load_generation(self.config, path, self.metrics, version)
        self.describe(self.current)
        self.decoders = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="korasr-audio")
        if self.config.collect is not None:
            counter = getattr(self.metrics, "collected", None)  # korasr_collected_total{outcome}, where it exists
            self.collector = Collector.from_config(
                self.config, (lambda o: counter.labels(o).inc()) if counter else None
            )
            self.collector.start()
        self.ready = True  # before the jobs' loops start: they decode with lease()
        self.metrics.model_loaded.set(1)
        jobs = JobWorker(self)
        await jobs.start()
        self.jobs = jobs  # the job routes answer 503 until then
        if self.config.model_ref and self.config.follow_s:
            from korasr.serve.follow import follow

            self._follower = asyncio.get_running_loop().create_task(follow(self))

    async def stop(self) -> None:
        if self.jobs is not None:  # first, while the model still serves: a job being decoded goes back to the queue
            await self.jobs.stop()
        self.ready = False
        self.metrics.model_loaded.set(0)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        for generation in [*self.retiring, *([self.current] if self.current else [])]:
            await generation.stop()
        if self.decoders is not None:
            self.decoders.shutdown(wait=False, cancel_futures=True)
        if self.collector is not None:  # what is queued is written first (bounded: collect.STOP_WAIT_S)
            await asyncio.to_thread(self.collector.stop)

    def describe(self, generation: Generation) -> None:
        """``korasr_model_info`` and ``stt_model_cer`` for the generation now serving."""
        info, version = generation.recognizer.info, generation.version
        self.metrics.serving({"model": generation.path.name, "name": str(version.get("name", "")),
                              "version": str(version.get("version", "")),
                              "source_sha256": str(info.get("source_sha256", ""))[:12], "unit": info["unit"],
                              "precision": self.config.precision,
                              "korasr": str(info.get("versions", {}).get("korasr", ""))},
                             {split: float(scores["cer"]) for split, scores in (version.get("metrics") or {}).items()
                              if scores.get("cer") is not None})  # fmt: skip

    @contextlib.contextmanager
    def lease(self) -> Iterator[Generation]:
        """The current generation, held until the block ends (a request, a stream): a swap meanwhile leaves it
        serving this holder, and it is stopped only after its last holder is done."""
        self.require_ready()
        generation = self.current
        generation.users += 1
        note(**generation.log_fields())
        try:
            yield generation
        finally:
            generation.users -= 1
            if generation.retired and generation.users == 0:
                self._release_later(generation)

    def _release_later(self, generation: Generation) -> None:
        """Release a retired generation in a task of its own, so that no caller's frame still holds it when the
        memory is handed back."""
        task = asyncio.get_running_loop().create_task(self._release(generation), context=detached())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, generation: Generation) -> None:
        if generation in self.retiring:
            self.retiring.remove(generation)
            await generation.stop()
            log.info("released %s (version %s)", generation.path, generation.version.get("version", "—"))
            del generation
            await asyncio.to_thread(return_memory)

    async def swap(self, path: Path, version: dict | None = None) -> Generation:
        """Load and warm ``path`` beside the serving model, then make it current; the old one serves what it
        holds and is released after. A model that fails to load or warm up is not swapped in: the error propagates
        (the caller reports it) and the old one keeps serving."""
        async with self._swap_lock:
            new = await load_generation(self.config, path, self.metrics, version)
            old, self.current = self.current, new
            self.reload_error = None
            self.describe(new)
            self.metrics.reloads.labels("swapped").inc()
            log.info("now serving %s (version %s); %s finishes what it holds", path, new.version.get("version", "—"),
                     old.path)  # fmt: skip
            old.retired = True
            self.retiring.append(old)
            if old.users == 0:
                self._release_later(old)
            return new

    def active_streams(self) -> int:
        return sum(g.hub.active for g in [*self.retiring, self.current] if g is not None and g.hub is not None)

    def require_ready(self) -> None:
        if not self.ready:
            raise ClientError(503, "model loading", {"Retry-After": "1"})

    async def transcribe(self, generation: Generation, upload: UploadFile, raw: dict | None,
                         hotwords=None) -> tuple[Result, float, float]:  # type: ignore[no-untyped-def]  # fmt: skip
        """Decode an upload from its format (bounded by the limits), then ``generation``'s batcher: result, seconds,
        elapsed."""
        started = time.perf_counter()
        name = (upload.filename or "upload")[:200]
        with generation.batcher.arrival():
            loop = asyncio.get_running_loop()
            audio = await loop.run_in_executor(self.decoders, decode_upload, upload.file, name, raw, self.limits)
        duration = len(audio) / SAMPLE_RATE
        note(audio_seconds=round(duration, 3))
        result = await generation.batcher.submit(audio, hotwords)
        elapsed = time.perf_counter() - started
        self.metrics.audio_seconds.inc(duration)
        self.metrics.rtf.observe(elapsed / max(duration, 1e-3))
        version = generation.log_fields()["model_version"]
        self.metrics.observe_confidence(version, result.confidence)
        self.metrics.observe_audio(version, audio, result.text)
        if self.collector is not None:  # queued for the collector's thread; never waits
            self.collector.offer(audio, result.text, result.confidence, generation.log_fields())
        return result, duration, elapsed


def service(connection: HTTPConnection) -> ServiceState:
    """The dependency every route takes: the app's shared state (HTTP and WebSocket alike)."""
    return connection.app.state.korasr


def stream_decoder(decoder: str | None) -> str:
    """How a live stream's finals decode under the service's ``decoder`` setting (streams have no beam search:
    greedy-hangul, which is greedy's own path on a vocabulary without jamo, unless greedy was asked for)."""
    return "greedy" if decoder == "greedy" else "greedy-hangul"


def stream_hub(config: ServeConfig, path: Path, metrics: Metrics) -> StreamHub:
    from korasr.runtime.streaming import Endpoint, StreamingModel

    if config.triton:  # gateway mode: the streams decode in Triton's korasr_stream (korasr/runtime/triton_stream.py)
        from korasr.runtime.triton_stream import TritonStreamingModel

        remote = TritonStreamingModel(
            path, config.triton, config.triton_stream_model, timeout_s=config.triton_timeout_s
        )
        return StreamHub(remote, max_batch=config.stream_batch, max_unsent=config.max_unsent_results,  # type: ignore[arg-type]
                         metrics=metrics)  # fmt: skip
    # finals decode as files do without an LM: greedy only when the service was told greedy
    model = StreamingModel(path, threads=config.threads, decoder=stream_decoder(config.decoder))
    endpoint = Endpoint(silence_after_speech=config.endpoint_silence_s, max_utterance=config.max_utterance_s)
    stream = model.stream(endpoint=None)  # warm-up: one chunk through both graphs
    stream.accept(np.zeros(SAMPLE_RATE, np.float32))
    stream.finish()
    model.run([stream])
    return StreamHub(model, max_batch=config.stream_batch, endpoint=endpoint, max_unsent=config.max_unsent_results,
                     metrics=metrics)  # fmt: skip


def return_memory() -> None:
    """Collect the released model's objects and hand freed heap pages back to the system (glibc's malloc_trim), so
    the process shrinks back to one model's footprint after a swap instead of keeping the old one's pages."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
