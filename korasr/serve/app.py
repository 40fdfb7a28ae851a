"""The routes of `korasr serve` (FastAPI over the onnxruntime runtime; no torch, no NeMo)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Annotated

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from korasr.runtime import SAMPLE_RATE, Recognizer, Result
from korasr.runtime.audio import AudioError, AudioLimits, read_audio, read_pcm_s16le
from korasr.serve.batcher import Batcher
from korasr.serve.config import ServeConfig
from korasr.serve.gate import Gate

PAGE = Path(__file__).with_name("page.html")
STATUS = {"too_long": 413, "unsupported": 415}  # every other AudioError is a 400


class ClientError(Exception):
    """A request the client must fix: status and message go back as JSON."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def decode_upload(file: IO[bytes], name: str, raw: dict | None, limits: AudioLimits) -> np.ndarray:
    """16 kHz mono float32 from an upload (any container libsndfile reads, or raw s16le PCM when ``raw`` gives
    ``sample_rate`` and ``channels``), every size bounded by ``limits``; a ClientError otherwise."""
    try:
        if raw is not None:
            return read_pcm_s16le(file, raw["sample_rate"], raw["channels"], name, limits)
        return read_audio(file, name, limits)
    except AudioError as e:
        hint = " (WAV, FLAC, OGG or MP3; raw PCM needs sample_rate and channels)" if e.kind == "unsupported" else ""
        raise ClientError(STATUS.get(e.kind, 400), f"{e}{hint}") from None


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = r = CollectorRegistry()
        self.requests = Counter("korasr_requests", "HTTP requests by route template and status", ["route", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("korasr_request_seconds", "request latency", ["route"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
        self.audio_seconds = Counter("korasr_audio_seconds", "seconds of audio transcribed", registry=r)
        self.rtf = Histogram("korasr_real_time_factor", "processing time / audio duration", registry=r,
                             buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))  # fmt: skip
        self.in_flight = Gauge("korasr_in_flight_requests", "requests being processed", registry=r)
        self.batch_size = Histogram("korasr_batch_size", "requests per decoding batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32))  # fmt: skip
        self.model = Info("korasr_model", "the served export", registry=r)


def create_app(config: ServeConfig):  # type: ignore[no-untyped-def]
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics = Metrics()
    limits = AudioLimits(max_seconds=config.max_audio_seconds)
    state: dict = {"ready": False, "batcher": None, "recognizer": None, "decoders": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        recognizer = await asyncio.to_thread(
            Recognizer, config.model, threads=config.threads, precision=config.precision
        )
        decoder = config.decoder or ("beam" if recognizer.bundled_lm else "greedy")
        await asyncio.to_thread(recognizer.use_decoder, decoder)
        await asyncio.to_thread(recognizer.transcribe_arrays, [np.zeros(SAMPLE_RATE, dtype=np.float32)])  # warm-up
        batcher = Batcher(recognizer, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000,
                          chunk_seconds=config.chunk_seconds, batch_seconds=config.batch_seconds,
                          on_batch=metrics.batch_size.observe)  # fmt: skip
        batcher.start()
        info = recognizer.info
        metrics.model.info({"model": config.model.name, "source_sha256": str(info.get("source_sha256", ""))[:12],
                            "unit": info["unit"], "precision": config.precision,
                            "korasr": str(info.get("versions", {}).get("korasr", ""))})  # fmt: skip
        decoders = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="korasr-audio")
        state.update(ready=True, batcher=batcher, recognizer=recognizer, decoders=decoders)
        yield
        state["ready"] = False
        await batcher.stop()
        decoders.shutdown(wait=False, cancel_futures=True)

    # max_body_size: FastAPI/Starlette count the body as it streams (chunked uploads too) and answer 413
    app = FastAPI(title="korasr", description=DESCRIPTION, lifespan=lifespan, max_body_size=config.max_upload_bytes)
    app.add_middleware(Gate, config=config, routes=app.router.routes, metrics=metrics)

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
        return JSONResponse({"error": f"invalid request: {fields[:500]}"}, status_code=400)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # type: ignore[no-untyped-def]
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    def parse_hotwords(text: str | None, field: str, strict: bool = True):  # type: ignore[no-untyped-def]
        """Hotwords from a form field: one phrase per line (``phrase<TAB>boost``); for OpenAI's ``prompt`` also
        commas. Bounded before anything is encoded. Without a beam decoder: 400 for ``hotwords``, ignored for
        ``prompt`` (OpenAI's prompt is a hint, not a requirement)."""
        from korasr.runtime.beam import HotwordError

        if not text or not text.strip():
            return None
        if state["recognizer"] is not None and state["recognizer"].beam is None:
            if strict:
                raise ClientError(400, f"{field}: this server decodes greedily; hotwords need beam search (serve an "
                                  "export with a bundled LM, or korasr serve --decoder beam)")  # fmt: skip
            return None
        if len(text) > config.max_hotwords * 101:
            raise ClientError(400, f"{field}: {len(text)} characters (at most {config.max_hotwords * 101})")
        lines = text.split("\n") if strict else [p for line in text.split("\n") for p in line.split(",")]
        if sum(1 for line in lines if line.strip() and not line.strip().startswith("#")) > config.max_hotwords:
            raise ClientError(400, f"{field}: more than {config.max_hotwords} phrases")
        try:
            return state["recognizer"].hotwords(lines, field)
        except HotwordError as e:
            raise ClientError(400, str(e)) from None

    async def transcribe(upload: UploadFile, raw: dict | None, hotwords=None) -> tuple[Result, float, float]:  # type: ignore[no-untyped-def]
        if not state["ready"]:
            raise ClientError(503, "model loading", {"Retry-After": "1"})
        started = time.perf_counter()
        batcher = state["batcher"]
        name = (upload.filename or "upload")[:200]
        with batcher.arrival():
            loop = asyncio.get_running_loop()
            audio = await loop.run_in_executor(state["decoders"], decode_upload, upload.file, name, raw, limits)
        duration = len(audio) / SAMPLE_RATE
        result = await batcher.submit(audio, hotwords)
        elapsed = time.perf_counter() - started
        metrics.audio_seconds.inc(duration)
        metrics.rtf.observe(elapsed / max(duration, 1e-3))
        return result, duration, elapsed

    def raw_params(sample_rate: int | None, channels: int | None, encoding: str | None) -> dict | None:
        if encoding is None and sample_rate is None and channels is None:
            return None
        if encoding not in ("s16le", None) or sample_rate is None or channels is None:
            raise ClientError(400, f"raw PCM needs encoding=s16le, sample_rate ({limits.min_rate}–{limits.max_rate} "
                              f"Hz) and channels (1–{limits.max_channels})")  # fmt: skip
        return {"sample_rate": sample_rate, "channels": channels}

    @app.post("/v1/transcribe")
    async def v1_transcribe(
        audio: Annotated[UploadFile, File(description="WAV, FLAC, OGG or MP3; or raw s16le PCM (fields below)")],
        segments: Annotated[bool, Form(description="word segments with start and end times")] = False,
        sample_rate: Annotated[int | None, Form(description="raw PCM only: 8000 to 384000")] = None,
        channels: Annotated[int | None, Form(description="raw PCM only: 1 to 8")] = None,
        encoding: Annotated[str | None, Form(description="raw PCM only: s16le")] = None,
        hotwords: Annotated[str | None, Form(description=HOTWORDS_HELP)] = None,
    ) -> dict:
        if not state["ready"]:
            raise ClientError(503, "model loading", {"Retry-After": "1"})
        words = parse_hotwords(hotwords, "hotwords")
        result, duration, elapsed = await transcribe(audio, raw_params(sample_rate, channels, encoding), words)
        body = {"text": result.text, "duration_s": round(duration, 3), "processing_ms": round(elapsed * 1000, 1),
                "model": config.model.name}  # fmt: skip
        if segments:
            body["segments"] = result.as_dict().get("words", [])
        return body

    @app.post("/v1/audio/transcriptions")
    async def openai_transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()] = "korasr",
        response_format: Annotated[str, Form()] = "json",
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        temperature: Annotated[float | None, Form()] = None,
    ):  # type: ignore[no-untyped-def]
        if response_format not in ("json", "text", "verbose_json"):
            raise ClientError(400, f"response_format {response_format[:40]!r}: use json, text or verbose_json")
        if language not in (None, "", "ko", "korean"):
            raise ClientError(400, f"language {language[:40]!r}: this model transcribes Korean (ko)")
        if not state["ready"]:
            raise ClientError(503, "model loading", {"Retry-After": "1"})
        result, duration, _ = await transcribe(file, None, parse_hotwords(prompt, "prompt", strict=False))
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

    @app.get("/metrics")
    async def prometheus():  # type: ignore[no-untyped-def]
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():  # type: ignore[no-untyped-def]
        return PAGE.read_text(encoding="utf-8")

    app.state.korasr = state
    return app


HOTWORDS_HELP = "beam search only: one phrase per line, optionally a TAB and a boost per piece (default 2)"
DESCRIPTION = """Korean speech recognition (FastConformer-CTC, onnxruntime).

With an API key set (KORASR_API_KEY), every route but /health and the page at / needs `Authorization: Bearer KEY`
or `X-API-Key: KEY`, checked before the body is read; these docs too, unless the server runs with --public-docs.
Limits: uploads over the size limit get 413 while they stream; audio over the duration limit gets 413 from its
header, before it is decoded; sample rates outside 8–384 kHz, more than 8 channels, empty, truncated or corrupt
bodies get 400, unknown formats 415; more requests in progress than the server admits get 503 with Retry-After,
and a body not complete within the upload deadline 408.

Decoding: greedy CTC, or beam search with the export's bundled token n-gram LM (`korasr export --lm`). With beam
search, `/v1/transcribe` takes `hotwords` (one phrase per line, optionally a TAB and a boost) and
`/v1/audio/transcriptions` maps OpenAI's `prompt` to hotwords (phrases separated by commas or lines; ignored by a
greedy server). A phrase with characters the model cannot spell gets 400 naming it."""
