"""`korasr serve`: a FastAPI transcription service over an export directory (onnxruntime; no torch, no NeMo).

Routes: ``POST /v1/transcribe`` (multipart ``audio``), ``POST /v1/audio/transcriptions`` (OpenAI's audio API:
``file``, ``model``, ``response_format`` json | text | verbose_json), ``GET /health`` (ready once the model is
loaded and a warm-up inference passed), ``GET /metrics`` (Prometheus), ``GET /`` (a page to upload or record),
``/docs`` (OpenAPI).

Concurrent requests are micro-batched: a bounded queue feeds one decoding worker that takes up to
``max_batch`` requests, waiting at most ``max_wait_ms`` for more; a full queue answers 503 with Retry-After.
Uploads are limited while they stream (chunked bodies too) and by audio duration (413); bodies that are empty,
truncated, not audio or in an unsupported format get 400/415 with a JSON error, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import soundfile as sf
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from korasr.runtime import SAMPLE_RATE, Recognizer, Result, to_mono_16k

PAGE = Path(__file__).with_name("page.html")


@dataclass
class ServeConfig:
    model: Path
    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 300.0
    max_batch: int = 8
    max_wait_ms: float = 10.0
    queue_size: int = 64
    threads: int | None = None
    precision: str = "fp32"
    api_key: str | None = field(default_factory=lambda: os.environ.get("KORASR_API_KEY") or None)

    @classmethod
    def from_env(cls) -> ServeConfig:
        """For `uvicorn --factory` workers: KORASR_MODEL and KORASR_* limits."""
        env = os.environ
        if not env.get("KORASR_MODEL"):
            raise ValueError("KORASR_MODEL is not set (the export directory to serve)")
        return cls(
            model=Path(env["KORASR_MODEL"]),
            max_upload_bytes=int(env.get("KORASR_MAX_UPLOAD_BYTES", cls.max_upload_bytes)),
            max_audio_seconds=float(env.get("KORASR_MAX_AUDIO_SECONDS", cls.max_audio_seconds)),
            max_batch=int(env.get("KORASR_MAX_BATCH", cls.max_batch)),
            max_wait_ms=float(env.get("KORASR_MAX_WAIT_MS", cls.max_wait_ms)),
            queue_size=int(env.get("KORASR_QUEUE_SIZE", cls.queue_size)),
        )


class ClientError(Exception):
    """A request the client must fix: status and message go back as JSON."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def decode_audio(data: bytes, filename: str | None, raw: dict | None = None) -> np.ndarray:
    """16 kHz mono float32 from an uploaded file (WAV, FLAC, OGG, MP3, any rate and channel count), or from raw
    little-endian 16-bit PCM when ``raw`` gives its ``sample_rate`` and ``channels``."""
    if not data:
        raise ClientError(400, f"{filename or 'upload'}: empty body")
    if raw is not None:
        if len(data) % (2 * raw["channels"]):
            raise ClientError(400, f"{filename or 'upload'}: raw PCM length is not a whole number of frames")
        pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        return to_mono_16k(pcm.reshape(-1, raw["channels"]), raw["sample_rate"])
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        message = str(e)
        unsupported = "Format not recognised" in message or "unknown format" in message.lower()
        status = 415 if unsupported else 400
        hint = " (WAV, FLAC, OGG or MP3; raw PCM needs sample_rate and channels)" if unsupported else ""
        raise ClientError(status, f"{filename or 'upload'}: cannot decode audio: {message}{hint}") from None
    except (RuntimeError, ValueError, EOFError) as e:
        raise ClientError(400, f"{filename or 'upload'}: cannot decode audio: {e}") from None
    if audio.size == 0:
        raise ClientError(400, f"{filename or 'upload'}: no audio samples")
    truncated = _TRUNCATED.search(sf.info(io.BytesIO(data)).extra_info)
    if truncated and int(truncated.group(1)) > int(truncated.group(2)):
        raise ClientError(400, f"{filename or 'upload'}: truncated: the header declares {truncated.group(1)} bytes "
                          f"of audio, the body holds {truncated.group(2)}")  # fmt: skip
    return to_mono_16k(audio, rate)


# libsndfile's log for a WAV whose data chunk is shorter than its header says: "data : 110340 (should be 1956)"
_TRUNCATED = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)


class Batcher:
    """Micro-batching: requests wait in a bounded queue; one worker decodes up to ``max_batch`` at a time,
    waiting up to ``max_wait_s`` for more only while other requests are on their way (being uploaded or decoded
    from their format), so a lone request is not delayed."""

    def __init__(self, recognizer: Recognizer, max_batch: int, max_wait_s: float, queue_size: int):
        self.recognizer, self.max_batch, self.max_wait_s = recognizer, max_batch, max_wait_s
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="korasr-decode")
        self.task: asyncio.Task | None = None
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # the most recent batches (metrics, tests)
        self.arriving = 0  # requests read but not yet queued

    @contextlib.contextmanager
    def arrival(self):  # type: ignore[no-untyped-def]
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, audio: np.ndarray) -> Result:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((audio, future))
        except asyncio.QueueFull:
            raise ClientError(503, "server busy: request queue full", {"Retry-After": "1"}) from None
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 or (self.queue.empty() and self.arriving == 0):
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            self.batch_sizes.append(len(batch))
            waves = [audio for audio, _ in batch]
            try:
                results = await loop.run_in_executor(
                    self.executor,
                    lambda w=waves: self.recognizer.transcribe_arrays(w, batch_size=len(w), timestamps=True),
                )
            except Exception as e:  # a decoding failure fails its batch, not the worker
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def create_app(config: ServeConfig):  # type: ignore[no-untyped-def]
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        Info,
        generate_latest,
    )

    registry = CollectorRegistry()
    requests_total = Counter("korasr_requests", "HTTP requests", ["route", "status"], registry=registry)
    latency = Histogram("korasr_request_seconds", "request latency", ["route"], registry=registry,
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
    audio_seconds = Counter("korasr_audio_seconds", "seconds of audio transcribed", registry=registry)
    rtf = Histogram("korasr_real_time_factor", "processing time / audio duration", registry=registry,
                    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))  # fmt: skip
    in_flight = Gauge("korasr_in_flight_requests", "requests being processed", registry=registry)
    batch_size = Histogram("korasr_batch_size", "utterances per decoding batch", registry=registry,
                           buckets=(1, 2, 4, 8, 16, 32))  # fmt: skip
    model_info = Info("korasr_model", "the served export", registry=registry)
    state: dict = {"ready": False, "batcher": None, "recognizer": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        recognizer = await asyncio.to_thread(
            Recognizer, config.model, threads=config.threads, precision=config.precision
        )
        await asyncio.to_thread(recognizer.transcribe_arrays, [np.zeros(SAMPLE_RATE, dtype=np.float32)])  # warm-up
        batcher = Batcher(recognizer, config.max_batch, config.max_wait_ms / 1000, config.queue_size)
        batcher.start()
        info = recognizer.info
        model_info.info({"model": config.model.name, "source_sha256": str(info.get("source_sha256", ""))[:12],
                         "unit": info["unit"], "precision": config.precision, "korasr": str(info.get("versions", {}).get("korasr", ""))})  # fmt: skip
        state.update(ready=True, batcher=batcher, recognizer=recognizer)
        yield
        state["ready"] = False
        await batcher.stop()

    # max_body_size: FastAPI/Starlette count the body as it streams (chunked uploads too) and answer 413
    app = FastAPI(title="korasr", description="Korean speech recognition (FastConformer-CTC, onnxruntime)",
                  lifespan=lifespan, max_body_size=config.max_upload_bytes)  # fmt: skip

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):  # type: ignore[no-untyped-def]
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # type: ignore[no-untyped-def]
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        fields = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {fields}"}, status_code=400)

    @app.middleware("http")
    async def observe(request: Request, call_next):  # type: ignore[no-untyped-def]
        route = request.url.path
        start = time.perf_counter()
        in_flight.inc()
        try:
            response = await call_next(request)
        finally:
            in_flight.dec()
        requests_total.labels(route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return response

    def authorized(request: Request) -> None:
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else request.headers.get(
            "x-api-key", "")  # fmt: skip
        if not secrets.compare_digest(given.encode(), config.api_key.encode()):
            raise ClientError(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)")

    async def transcribe(upload: UploadFile, raw: dict | None) -> tuple[Result, float, float]:
        if not state["ready"]:
            raise ClientError(503, "model loading", {"Retry-After": "1"})
        started = time.perf_counter()
        batcher = state["batcher"]
        with batcher.arrival():
            data = await upload.read()
            audio = await asyncio.to_thread(decode_audio, data, upload.filename, raw)
        duration = len(audio) / SAMPLE_RATE
        if duration > config.max_audio_seconds:
            raise ClientError(413, f"{upload.filename}: {duration:.1f} s of audio, limit {config.max_audio_seconds} s")
        result = await batcher.submit(audio)
        elapsed = time.perf_counter() - started
        audio_seconds.inc(duration)
        if duration > 0:
            rtf.observe(elapsed / duration)
        if state["batcher"].batch_sizes:
            batch_size.observe(state["batcher"].batch_sizes[-1])
        return result, duration, elapsed

    def raw_params(sample_rate: int | None, channels: int | None, encoding: str | None) -> dict | None:
        if encoding is None and sample_rate is None:
            return None
        if encoding not in ("s16le", None) or not sample_rate or not channels or channels < 1 or sample_rate < 1000:
            raise ClientError(400, "raw PCM needs encoding=s16le, sample_rate (≥ 1000) and channels (≥ 1)")
        return {"sample_rate": sample_rate, "channels": channels}

    @app.post("/v1/transcribe", dependencies=[Depends(authorized)])
    async def v1_transcribe(
        audio: Annotated[UploadFile, File(description="WAV, FLAC, OGG or MP3; or raw s16le PCM (fields below)")],
        segments: Annotated[bool, Form(description="word segments with start and end times")] = False,
        sample_rate: Annotated[int | None, Form()] = None,
        channels: Annotated[int | None, Form()] = None,
        encoding: Annotated[str | None, Form(description="raw PCM only: s16le")] = None,
    ) -> dict:
        result, duration, elapsed = await transcribe(audio, raw_params(sample_rate, channels, encoding))
        body = {"text": result.text, "duration_s": round(duration, 3), "processing_ms": round(elapsed * 1000, 1),
                "model": config.model.name}  # fmt: skip
        if segments:
            body["segments"] = result.as_dict().get("words", [])
        return body

    @app.post("/v1/audio/transcriptions", dependencies=[Depends(authorized)])
    async def openai_transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()] = "korasr",
        response_format: Annotated[str, Form()] = "json",
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        temperature: Annotated[float | None, Form()] = None,
    ):  # type: ignore[no-untyped-def]
        if response_format not in ("json", "text", "verbose_json"):
            raise ClientError(400, f"response_format {response_format!r}: use json, text or verbose_json")
        if language not in (None, "", "ko", "korean"):
            raise ClientError(400, f"language {language!r}: this model transcribes Korean (ko)")
        result, duration, _ = await transcribe(file, None)
        if response_format == "text":
            return PlainTextResponse(result.text)
        if response_format == "json":
            return {"text": result.text}
        words = [{"word": w.text, "start": w.start, "end": w.end} for w in result.words or []]
        return {
            "task": "transcribe",
            "language": "korean",
            "duration": round(duration, 3),
            "text": result.text,
            "segments": [{"id": 0, "start": 0.0, "end": round(duration, 3), "text": result.text}],
            "words": words,
        }

    @app.get("/health")
    async def health():  # type: ignore[no-untyped-def]
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": config.model.name}

    @app.get("/metrics", dependencies=[Depends(authorized)])
    async def metrics():  # type: ignore[no-untyped-def]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, dependencies=[Depends(authorized)])
    async def page():  # type: ignore[no-untyped-def]
        return PAGE.read_text(encoding="utf-8")

    app.state.korasr = state
    return app


def app_from_env():  # type: ignore[no-untyped-def]
    """The ASGI app for `uvicorn --factory korasr.serve:app_from_env` (one per worker process)."""
    return create_app(ServeConfig.from_env())


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    import uvicorn

    if workers > 1:
        os.environ.update(
            KORASR_MODEL=str(config.model),
            KORASR_MAX_UPLOAD_BYTES=str(config.max_upload_bytes),
            KORASR_MAX_AUDIO_SECONDS=str(config.max_audio_seconds),
            KORASR_MAX_BATCH=str(config.max_batch),
            KORASR_MAX_WAIT_MS=str(config.max_wait_ms),
            KORASR_QUEUE_SIZE=str(config.queue_size),
        )
        uvicorn.run("korasr.serve:app_from_env", factory=True, host=host, port=port, workers=workers)
    else:
        uvicorn.run(create_app(config), host=host, port=port)
