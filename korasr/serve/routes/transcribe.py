"""``POST /v1/transcribe``: korasr's own transcription route (any container, or raw PCM; hotwords; word times)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from korasr.runtime.results import CONFIDENCE_DIGITS
from korasr.serve.errors import ClientError
from korasr.serve.hotwords import parse_hotwords
from korasr.serve.state import ServiceState, service

router = APIRouter()
HOTWORDS_HELP = "beam search only: one phrase per line, optionally a TAB and a boost per piece (default 2)"


def raw_params(state: ServiceState, sample_rate: int | None, channels: int | None, encoding: str | None) -> dict | None:
    if encoding is None and sample_rate is None and channels is None:
        return None
    if encoding not in ("s16le", None) or sample_rate is None or channels is None:
        limits = state.limits
        raise ClientError(400, f"raw PCM needs encoding=s16le, sample_rate ({limits.min_rate}–{limits.max_rate} "
                          f"Hz) and channels (1–{limits.max_channels})")  # fmt: skip
    return {"sample_rate": sample_rate, "channels": channels}


@router.post("/v1/transcribe")
async def v1_transcribe(
    state: Annotated[ServiceState, Depends(service)],
    audio: Annotated[UploadFile, File(description="WAV, FLAC, OGG or MP3; or raw s16le PCM (fields below)")],
    segments: Annotated[bool, Form(description="word segments with start and end times")] = False,
    sample_rate: Annotated[int | None, Form(description="raw PCM only: 8000 to 384000")] = None,
    channels: Annotated[int | None, Form(description="raw PCM only: 1 to 8")] = None,
    encoding: Annotated[str | None, Form(description="raw PCM only: s16le")] = None,
    hotwords: Annotated[str | None, Form(description=HOTWORDS_HELP)] = None,
) -> dict:
    with state.lease() as generation:
        words = parse_hotwords(generation.recognizer, hotwords, "hotwords", state.config.max_hotwords)
        raw = raw_params(state, sample_rate, channels, encoding)
        result, duration, elapsed = await state.transcribe(generation, audio, raw, words)
    body = {"text": result.text, "duration_s": round(duration, 3), "processing_ms": round(elapsed * 1000, 1),
            "model": generation.path.name}  # fmt: skip
    if result.confidence is not None:  # the utterance's, 0 to 1 (korasr/runtime/confidence.py)
        body["confidence"] = round(result.confidence, CONFIDENCE_DIGITS)
    if generation.version:
        body["version"] = generation.version["version"]
    if segments:
        body["segments"] = result.as_dict().get("words", [])
    return body
