"""``POST /v1/audio/transcriptions``: OpenAI's audio API (json, text, verbose_json with segments and words, srt,
vtt); ``prompt`` maps to hotwords as a hint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from korasr.serve.errors import ClientError
from korasr.serve.formats import check_format, response, shaped
from korasr.serve.hotwords import prompt_hotwords
from korasr.serve.state import ServiceState, service

router = APIRouter()


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
    check_format(response_format)
    if language not in (None, "", "ko", "korean"):
        raise ClientError(400, f"language {language[:40]!r}: this model transcribes Korean (ko)")
    with state.lease() as generation:
        hotwords = prompt_hotwords(generation.recognizer, prompt, state.config.max_hotwords, state.metrics)
        result, duration, _ = await state.transcribe(generation, file, None, hotwords)
    return response(shaped(result, duration, response_format), response_format)
