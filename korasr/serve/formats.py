"""OpenAI's response formats of a transcription, shaped from a runtime Result in one place: the synchronous route
(``/v1/audio/transcriptions``) and the jobs (``/v1/jobs``) both answer with them."""

from __future__ import annotations

import json

from fastapi.responses import Response

from korasr.runtime import Result, subtitles
from korasr.runtime.results import CONFIDENCE_DIGITS
from korasr.serve.errors import ClientError

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain",
               "srt": "application/x-subrip", "vtt": "text/vtt"}  # fmt: skip


def check_format(response_format: str) -> None:
    if response_format not in FORMATS:
        raise ClientError(400, f"response_format {response_format[:40]!r}: use json, text, verbose_json, srt or vtt")


def shaped(result: Result, duration: float, response_format: str) -> str | dict:
    """The body of ``result`` in ``response_format``: a JSON object (json, verbose_json) or text."""
    segments = result.segments or []
    if response_format == "text":
        return result.text
    if response_format == "json":
        return {"text": result.text}
    if response_format in ("srt", "vtt"):
        return subtitles(segments, response_format)
    segment_rows = [{"id": i, "start": s.start, "end": s.end, "text": s.text, **_confidence(s.confidence)}
                    for i, s in enumerate(segments)]  # fmt: skip
    body = {
        "task": "transcribe",
        "language": "korean",
        "duration": round(duration, 3),
        "text": result.text,
        "segments": segment_rows,
        "words": [w.as_dict() for w in result.words or []],
    }
    body.update(_confidence(result.confidence))  # the utterance's (not in OpenAI's schema: an added field)
    return body


def _confidence(value: float | None) -> dict:
    return {} if value is None else {"confidence": round(value, CONFIDENCE_DIGITS)}


def encoded(body: str | dict) -> str:
    """The body as the response carries it (JSON as FastAPI writes it)."""
    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def response(body: str | dict, response_format: str) -> Response:
    return Response(encoded(body), media_type=MEDIA_TYPES[response_format])
