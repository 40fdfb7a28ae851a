"""Client errors of the service and the JSON every error becomes."""

from __future__ import annotations

from typing import IO

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from korasr.runtime.audio import AudioError, AudioLimits, read_audio, read_pcm_s16le

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


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers JSON ``{"error": reason}``: a client's with its status, validation 400, any other 500."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):  # type: ignore[no-untyped-def]
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

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
