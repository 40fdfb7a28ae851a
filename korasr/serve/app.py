"""The routes of `korasr serve` (FastAPI over the onnxruntime runtime; no torch, no NeMo)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Annotated

import numpy as np
from fastapi import File, Form, Request, UploadFile, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from korasr.runtime import SAMPLE_RATE, Recognizer, Result, subtitles
from korasr.runtime.audio import AudioError, AudioLimits, read_audio, read_pcm_s16le
from korasr.serve.batcher import Batcher
from korasr.serve.config import ServeConfig
from korasr.serve.deadline import Service
from korasr.serve.gate import Gate, redact_logs

log = logging.getLogger(__name__)
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


def parse_hotwords(recognizer, text: str | None, field: str, max_phrases: int):  # type: ignore[no-untyped-def]
    """Hotwords from a form field: one phrase per line (``phrase<TAB>boost``), bounded before anything is encoded;
    a phrase the model cannot spell, or hotwords on a greedy server, are a 400 naming them."""
    from korasr.runtime.beam import HotwordError

    if not text or not text.strip():
        return None
    if recognizer is not None and recognizer.beam is None:
        raise ClientError(400, f"{field}: this server decodes greedily; hotwords need beam search (serve an "
                          "export with a bundled LM, or korasr serve --decoder beam)")  # fmt: skip
    if len(text) > max_phrases * 101:
        raise ClientError(400, f"{field}: {len(text)} characters (at most {max_phrases * 101})")
    lines = text.split("\n")
    if sum(1 for line in lines if line.strip() and not line.strip().startswith("#")) > max_phrases:
        raise ClientError(400, f"{field}: more than {max_phrases} phrases")
    try:
        return recognizer.hotwords(lines, field)
    except HotwordError as e:
        raise ClientError(400, str(e)) from None


def prompt_hotwords(recognizer, text: str | None, max_phrases: int, metrics):  # type: ignore[no-untyped-def]
    """OpenAI's ``prompt`` is a hint, never a reason for a 400: its phrases (commas or lines) become hotwords with
    what the model cannot use left out (:func:`prompt_words`), counted by reason and logged. Ignored by a greedy
    server."""
    from korasr.runtime.beam import HotwordError

    if not text or not text.strip() or recognizer is None or recognizer.beam is None:
        return None
    limit = max_phrases * 101
    found = prompt_words(text[:limit], recognizer.piece_variants, max_phrases)
    phrases = found.pop("phrases")
    if len(text) > limit:
        found["too_long"] = 1
    for reason, n in found.items():
        metrics.prompt_dropped.labels(reason).inc(n)
    if found:
        log.info("prompt: left out %s", ", ".join(f"{n} × {r}" for r, n in sorted(found.items())))
    try:
        return recognizer.hotwords(phrases, "prompt") if phrases else None
    except HotwordError as e:  # not expected after the filtering above; still a hint, not a 400
        metrics.prompt_dropped.labels("unspellable").inc()
        log.info("prompt: left out: %s", e)
        return None


def prompt_words(text: str, spell, max_phrases: int) -> dict:  # type: ignore[no-untyped-def]
    """The usable phrases of an OpenAI ``prompt`` (``"phrases"``) and the counts of what was left out, by reason.
    ``spell(word)`` gives the word's piece sequences (0: a piece the tokenizer lacks)."""
    import unicodedata

    out: dict = {"phrases": []}

    def drop(reason: str) -> None:
        out[reason] = out.get(reason, 0) + 1

    for raw in text.replace(",", "\n").split("\n"):
        kept = []
        for word in unicodedata.normalize("NFC", raw).split():
            bare = "".join(c for c in word if unicodedata.category(c)[0] not in "PSC")
            if bare != word:
                drop("punctuation")
            if not bare:
                continue
            if any(c.isdigit() for c in bare):
                drop("digits")
            elif any(c.isascii() and c.isalpha() for c in bare):
                drop("latin")
            elif len(bare) > 100 or not (variants := spell(bare)) or any(0 in v for v in variants):
                drop("unspellable")
            else:
                kept.append(bare)
        phrase = " ".join(kept)[:100].strip()
        if phrase:
            if len(out["phrases"]) < max_phrases:
                out["phrases"].append(phrase)
            else:
                drop("too_many")
    return out


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
        self.streams = Gauge("korasr_streams_active", "open WebSocket streams", registry=r)
        self.chunk_seconds = Histogram("korasr_stream_chunk_seconds", "compute per streaming encoder call (one "
                                       "batch of streams)", registry=r,
                                       buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1))  # fmt: skip
        self.stream_batch = Histogram("korasr_stream_batch_size", "streams per streaming encoder call", registry=r,
                                      buckets=(1, 2, 4, 8, 16, 32, 64))  # fmt: skip
        self.partial_latency = Histogram("korasr_stream_partial_seconds", "from audio arriving to the partial it "
                                         "produced", registry=r,
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2))  # fmt: skip
        self.finals = Counter("korasr_stream_finals", "final results sent on streams", registry=r)
        self.stream_closes = Counter("korasr_stream_closes", "streams ended, by the server's close code (403: "
                                     "upgrade refused; client: the client closed; aborted: it read nothing)",
                                     ["code"], registry=r)  # fmt: skip
        self.send_timeouts = Counter("korasr_send_timeouts", "connections aborted at the send deadline", ["kind"],
                                     registry=r)  # fmt: skip
        self.prompt_dropped = Counter("korasr_prompt_words_dropped", "words of OpenAI prompts left out of the "
                                      "hotwords, by reason", ["reason"], registry=r)  # fmt: skip


def create_app(config: ServeConfig):  # type: ignore[no-untyped-def]
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    metrics = Metrics()
    limits = AudioLimits(max_seconds=config.max_audio_seconds)
    state: dict = {"ready": False, "batcher": None, "recognizer": None, "decoders": None, "hub": None}

    @contextlib.asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        redact_logs(config.api_key)  # after the server configured its logging
        recognizer = await asyncio.to_thread(
            Recognizer, config.model, threads=config.threads, precision=config.precision
        )
        decoder = config.decoder or ("beam" if recognizer.bundled_lm else "greedy")
        await asyncio.to_thread(recognizer.use_decoder, decoder)
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
        decoders = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="korasr-audio")
        hub = None
        if (config.model / "streaming" / "streaming.json").is_file():
            hub = await asyncio.to_thread(_stream_hub, config, metrics)
            hub.start()
        state.update(ready=True, batcher=batcher, recognizer=recognizer, decoders=decoders, hub=hub)
        yield
        state["ready"] = False
        if hub is not None:
            await hub.stop()
        await batcher.stop()
        decoders.shutdown(wait=False, cancel_futures=True)

    # max_body_size: FastAPI/Starlette count the body as it streams (chunked uploads too) and answer 413
    app = Service(title="korasr", description=DESCRIPTION, lifespan=lifespan, max_body_size=config.max_upload_bytes)
    app.send_timeout_s, app.send_buffer_bytes = config.send_timeout_s, config.send_buffer_bytes
    app.on_send_timeout = lambda kind: metrics.send_timeouts.labels(kind).inc()
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
        words = parse_hotwords(state["recognizer"], hotwords, "hotwords", config.max_hotwords)
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
        if response_format not in ("json", "text", "verbose_json", "srt", "vtt"):
            raise ClientError(
                400, f"response_format {response_format[:40]!r}: use json, text, verbose_json, srt or vtt"
            )
        if language not in (None, "", "ko", "korean"):
            raise ClientError(400, f"language {language[:40]!r}: this model transcribes Korean (ko)")
        if not state["ready"]:
            raise ClientError(503, "model loading", {"Retry-After": "1"})
        result, duration, _ = await transcribe(
            file, None, prompt_hotwords(state["recognizer"], prompt, config.max_hotwords, metrics)
        )
        if response_format == "text":
            return PlainTextResponse(result.text)
        if response_format == "json":
            return {"text": result.text}
        segments = result.segments or []
        if response_format in ("srt", "vtt"):
            return PlainTextResponse(subtitles(segments, response_format),
                                     media_type="application/x-subrip" if response_format == "srt" else "text/vtt")  # fmt: skip
        words = [{"word": w.text, "start": w.start, "end": w.end} for w in result.words or []]
        return {
            "task": "transcribe",
            "language": "korean",
            "duration": round(duration, 3),
            "text": result.text,
            "segments": [{"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(segments)],
            "words": words,
        }

    @app.websocket("/v1/stream")
    async def v1_stream(ws: WebSocket):  # type: ignore[no-untyped-def]
        from korasr.serve.sessions import stream_session

        await stream_session(ws, config, state, metrics)

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


def _stream_hub(config: ServeConfig, metrics: Metrics):  # type: ignore[no-untyped-def]
    from korasr.runtime.streaming import Endpoint, StreamingModel
    from korasr.serve.streams import StreamHub

    model = StreamingModel(config.model, threads=config.threads)
    endpoint = Endpoint(silence_after_speech=config.endpoint_silence_s, max_utterance=config.max_utterance_s)
    stream = model.stream(endpoint=None)  # warm-up: one chunk through both graphs
    stream.accept(np.zeros(SAMPLE_RATE, np.float32))
    stream.finish()
    model.run([stream])
    return StreamHub(model, max_batch=config.stream_batch, endpoint=endpoint, max_unsent=config.max_unsent_results,
                     metrics=metrics)  # fmt: skip


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
greedy server). A phrase with characters the model cannot spell gets 400 naming it.

`/v1/audio/transcriptions` returns utterance segments in `verbose_json` (a pause of `--endpoint-silence` seconds
ends one) and subtitles with `response_format` `srt` or `vtt`.

Live streaming (an export of a model trained with `--streaming`): WebSocket `GET /v1/stream?sample_rate=16000`
(8000–48000 Hz). Send binary frames of 16-bit little-endian mono PCM at that rate, then the text frame
`{"type": "end"}`. The server sends JSON text frames `{"type": "partial" | "final", "text", "start", "end"}` (finals
add `words` with times; utterances end at a pause) and closes with 1000 after the last final. The API key goes in
the `Authorization` or `X-API-Key` header at the handshake or, from a browser, as the subprotocol
`korasr.key.<base64url(KEY)>` beside `korasr` (never in the URL: URLs reach logs); a missing or wrong key is
refused before the upgrade (HTTP 403). Every refusal after it sends `{"type": "error", "error": reason}` and
closes: 1008 bad sample_rate, idle too long, audio arriving slower than `--min-stream-rate` × real time over a
window, or the stream's maximum duration reached (after its finals); 1009 a frame too large; 1007 a frame that is
not PCM or the end message; 1013 too many streams open; 1011 an internal error. Every send has a deadline
(`--send-timeout`): a client that stops reading is aborted (no close frame can reach it) and its stream released,
as is one with more than `--max-unsent` results waiting for it. A stream that sends faster than the decoder
takes it is read no further until the decoder catches up, and the decoder serves streams in turn."""
