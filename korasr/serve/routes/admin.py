"""Operations: ``GET /health`` (ready once the model is loaded and warmed up), ``GET /metrics`` (Prometheus) and
the page at ``/``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse, Response

from korasr.serve.state import ServiceState, service

router = APIRouter()
PAGE = Path(__file__).resolve().parent.parent / "page.html"


@router.get("/health")
async def health(state: Annotated[ServiceState, Depends(service)]):  # type: ignore[no-untyped-def]
    if not state.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    return {"status": "ok", "model": state.config.model.name}


@router.get("/metrics")
async def prometheus(state: Annotated[ServiceState, Depends(service)]) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE.read_text(encoding="utf-8")
