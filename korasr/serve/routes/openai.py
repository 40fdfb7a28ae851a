"""``POST /v1/audio/transcriptions``: OpenAI's audio API (json, text, verbose_json with segments and words, srt,
vtt); ``prompt`` maps to hotwords as a hint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import PlainTextResponse

from korasr.runtime import subtitles
from korasr.serve.errors import ClientError
from korasr.serve.hotwords import prompt_hotwords
from korasr.serve.state import ServiceState, service

router = APIRouter()
FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


@router.post("/v1/audio/transcriptions")
async def openai_transcriptions(
    state: Annotated[ServiceState, Depends(service)],
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "korasr",
    response_format: Annotated[str, Form()] = "json",
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    temperature: Annotated[float | None, Form()] = None,
):  # type: ignore[no-untyped-def]
    if response_format not in FORMATS:
        raise ClientError(400, f"response_format {response_format[:40]!r}: use json, text, verbose_json, srt or vtt")
    if language not in (None, "", "ko", "korean"):
        raise ClientError(400, f"language {language[:40]!r}: this model transcribes Korean (ko)")
    with state.lease() as generation:
        hotwords = prompt_hotwords(generation.recognizer, prompt, state.config.max_hotwords, state.metrics)
        result, duration, _ = await state.transcribe(generation, file, None, hotwords)
    if response_format == "text":
        return PlainTextResponse(result.text)
    if response_format == "json":
        return {"text": result.text}
    segments = result.segments or []
    if response_format in ("srt", "vtt"):
        return PlainTextResponse(subtitles(segments, response_format),
                                 media_type="application/x-subrip" if response_format == "srt" else "text/vtt")  # fmt: skip
    return {
        "task": "transcribe",
        "language": "korean",
        "duration": round(duration, 3),
        "text": result.text,
        "segments": [{"id": i, "start": s.start, "end": s.end, "text": s.text} for i, s in enumerate(segments)],
        "words": [{"word": w.text, "start": w.start, "end": w.end} for w in result.words or []],
    }
