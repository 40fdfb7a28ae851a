"""Operations: ``GET /health`` (ready once the model is loaded and warmed up; the version served, the last failed
reload), ``GET /metrics`` (Prometheus), ``POST /admin/reload`` (behind the API key: read the followed alias now and
swap when it moved; ``?force=true`` reloads even when it has not) and the page at ``/``."""

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
    generation = state.current
    body = {"status": "ok", "model": generation.path.name}
    if generation.version:
        body.update(registered={k: generation.version[k] for k in ("name", "version", "ref")},
                    cer={s: m.get("cer") for s, m in (generation.version.get("metrics") or {}).items()})  # fmt: skip
    if state.retiring:
        body["finishing_on_previous"] = [g.version.get("version") or g.path.name for g in state.retiring]
    if state.reload_error:
        body["reload_error"] = state.reload_error
    return body


@router.post("/admin/reload")
async def admin_reload(state: Annotated[ServiceState, Depends(service)], force: bool = False):  # type: ignore[no-untyped-def]
    from korasr.serve.follow import reload

    state.require_ready()
    if not state.config.model_ref:
        return JSONResponse({"error": f"serving the folder {state.config.model}, not a registry alias "
                             "(korasr serve --model models:/NAME@ALIAS): nothing to reload"}, status_code=409)  # fmt: skip
    try:
        return await reload(state, force=force)
    except Exception as e:
        return JSONResponse({"swapped": False, "error": f"{type(e).__name__}: {e}"[:500],
                             "version": state.current.version.get("version")}, status_code=502)  # fmt: skip


@router.get("/metrics")
async def prometheus(state: Annotated[ServiceState, Depends(service)]) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE.read_text(encoding="utf-8")
