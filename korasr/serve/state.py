"""What every route of `korasr serve` shares: the config, the metrics, and what the lifespan loads (the runtime,
the request batcher, the upload decoders, the stream hub)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from fastapi import UploadFile
from starlette.requests import HTTPConnection

from korasr.runtime import SAMPLE_RATE, Recognizer, Result
from korasr.runtime.audio import AudioLimits
from korasr.serve.batcher import Batcher
from korasr.serve.config import ServeConfig
from korasr.serve.errors import ClientError, decode_upload
from korasr.serve.metrics import Metrics
from korasr.serve.streams import StreamHub


@dataclass
class ServiceState:
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False
    recognizer: Recognizer | None = None
    batcher: Batcher | None = None
    decoders: ThreadPoolExecutor | None = None
    hub: StreamHub | None = None

    def __post_init__(self) -> None:
        self.limits = AudioLimits(max_seconds=self.config.max_audio_seconds)

    async def start(self) -> None:
        """Load the export, warm it up, start the batcher (and the stream hub for a streaming export)."""
        config, metrics = self.config, self.metrics
        recognizer = await asyncio.to_thread(
            Recognizer, config.model, threads=config.threads, precision=config.precision
        )
        await asyncio.to_thread(
            recognizer.use_decoder, config.decoder or ("beam" if recognizer.bundled_lm else "greedy")
        )
        recognizer.endpoint_silence, recognizer.max_utterance = config.endpoint_silence_s, config.max_utterance_s
        await asyncio.to_thread(recognizer.transcribe_arrays, [np.zeros(SAMPLE_RATE, dtype=np.float32)])  # warm-up
        batcher = Batcher(recognizer, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000,
                          chunk_seconds=config.chunk_seconds, batch_seconds=config.batch_seconds,
                          on_batch=metrics.batch_size.observe)  # fmt: skip
        batcher.start()
        info = recognizer.info
        metrics.model.info({"model": config.model.name, "source_sha256": str(info.get("source_sha256", ""))[:12],
                            "unit": info["unit"], "precision": config.precision,
                            "korasr": str(info.get("versions", {}).get("korasr", ""))})  # fmt: skip
        hub = None
        if (config.model / "streaming" / "streaming.json").is_file():
            hub = await asyncio.to_thread(stream_hub, config, metrics)
            hub.start()
        self.recognizer, self.batcher, self.hub = recognizer, batcher, hub
        self.decoders = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="korasr-audio")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self.hub is not None:
            await self.hub.stop()
        if self.batcher is not None:
            await self.batcher.stop()
        if self.decoders is not None:
            self.decoders.shutdown(wait=False, cancel_futures=True)

    def require_ready(self) -> None:
        if not self.ready:
            raise ClientError(503, "model loading", {"Retry-After": "1"})

    async def transcribe(self, upload: UploadFile, raw: dict | None, hotwords=None) -> tuple[Result, float, float]:  # type: ignore[no-untyped-def]
        """Decode an upload from its format (bounded by the limits), then the batcher: result, seconds, elapsed."""
        self.require_ready()
        started = time.perf_counter()
        name = (upload.filename or "upload")[:200]
        with self.batcher.arrival():
            loop = asyncio.get_running_loop()
            audio = await loop.run_in_executor(self.decoders, decode_upload, upload.file, name, raw, self.limits)
        duration = len(audio) / SAMPLE_RATE
        result = await self.batcher.submit(audio, hotwords)
        elapsed = time.perf_counter() - started
        self.metrics.audio_seconds.inc(duration)
        self.metrics.rtf.observe(elapsed / max(duration, 1e-3))
        return result, duration, elapsed


def service(connection: HTTPConnection) -> ServiceState:
    """The dependency every route takes: the app's shared state (HTTP and WebSocket alike)."""
    return connection.app.state.korasr


def stream_hub(config: ServeConfig, metrics: Metrics) -> StreamHub:
    from korasr.runtime.streaming import Endpoint, StreamingModel

    model = StreamingModel(config.model, threads=config.threads)
    endpoint = Endpoint(silence_after_speech=config.endpoint_silence_s, max_utterance=config.max_utterance_s)
    stream = model.stream(endpoint=None)  # warm-up: one chunk through both graphs
    stream.accept(np.zeros(SAMPLE_RATE, np.float32))
    stream.finish()
    model.run([stream])
    return StreamHub(model, max_batch=config.stream_batch, endpoint=endpoint, max_unsent=config.max_unsent_results,
                     metrics=metrics)  # fmt: skip
