"""Operations: ``GET /health`` (for a load balancer, without a key: ready or not, nothing more; 503 while loading
and again while draining), ``GET /metrics`` (Prometheus), the page at ``/``, and the operators' routes, which take only
the operator key (``KORASR_ADMIN_KEY``; without one they are off, the gate answers 404): ``GET /admin/status`` (the
version served and by which process, the follower's view of the registry, the last failed reload, the jobs'
database, the canary's last run; every URI without its credentials) and ``POST /admin/reload`` (read the followed
alias now and swap when it moved; ``?force=true`` reloads even when it has not; one at a time, another meanwhile gets
409)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, JSONResponse, Response

from korasr.errors import without_credentials
from korasr.serve.state import ServiceState, service

router = APIRouter()
PAGE = Path(__file__).resolve().parent.parent / "page.html"
STARTED = time.time()


@router.get("/health")
async def health(state: Annotated[ServiceState, Depends(service)]):  # type: ignore[no-untyped-def]
    if state.drain.active:  # readiness off at once on SIGTERM (drain.py)
        return JSONResponse({"status": "draining", "ready": False}, status_code=503)
    if not state.ready:
        return JSONResponse({"status": "loading", "ready": False}, status_code=503)
    down = await asyncio.to_thread(upstream_down, state) if state.config.triton else []  # no thread hop otherwise
    if down:
        return JSONResponse({"status": "upstream unavailable", "ready": False, "models": down}, status_code=503)
    return {"status": "ok", "ready": True}


def upstream_down(state: ServiceState) -> list[str]:
    """Gateway mode: the Triton models this service sends work to that Triton does not have ready (the CTC model,
    and the streaming model when the export streams): either one down is a route that would fail."""
    if not state.config.triton:
        return []
    remotes = [state.recognizer.upstream if state.recognizer else None, state.hub.model if state.hub else None]
    return [r.model for r in remotes if r is not None and not r.ready()]  # TritonSession, TritonStreamingModel


@router.get("/admin/status")
async def admin_status(state: Annotated[ServiceState, Depends(service)]) -> dict:
    from korasr.serve.jobs.worker import db_url, redacted

    status = "draining" if state.drain.active else "ok" if state.ready else "loading"
    body: dict = {"status": status, "ready": state.ready and not state.drain.active, "pid": os.getpid(),
                  "up_s": round(time.time() - STARTED, 1)}  # fmt: skip
    generation = state.current
    if generation is not None:
        body["model"] = generation.path.name
        if generation.version:
            body.update(registered={k: generation.version.get(k) for k in ("name", "version", "ref", "from_cache")},
                        cer={s: m.get("cer") for s, m in (generation.version.get("metrics") or {}).items()})  # fmt: skip
    if state.retiring:
        body["finishing_on_previous"] = [g.version.get("version") or g.path.name for g in state.retiring]
    if state.reload_error:
        body["reload_error"] = without_credentials(state.reload_error)
    if state.config.model_ref:
        body["follow"] = {"every_s": state.config.follow_s, "reloading": state.reloading.locked(),
                          **{k: without_credentials(v) if isinstance(v, str) else v for k, v in state.follow.items()}}  # fmt: skip
    if (canary := getattr(state, "canary", None)) is not None:
        body["canary"] = {"manifest": str(state.config.canary), "rows": len(canary.rows),
                          "every_s": state.config.canary_every_s, "running": canary.running, "last": canary.last}  # fmt: skip
    if state.jobs is not None:
        database = without_credentials(redacted(db_url(state.config)))
        body["jobs"] = {"database": database, "folder": str(state.jobs.folder)}
    return body


@router.post("/admin/reload")
async def admin_reload(state: Annotated[ServiceState, Depends(service)], force: bool = False):  # type: ignore[no-untyped-def]
    from korasr.serve.follow import ReloadBusy, reload

    state.require_ready()
    if not state.config.model_ref:
        return JSONResponse({"error": f"serving the folder {state.config.model}, not a registry alias "
                             "(korasr serve --model models:/NAME@ALIAS): nothing to reload"}, status_code=409)  # fmt: skip
    try:
        return await reload(state, force=force)
    except ReloadBusy as e:
        return JSONResponse({"swapped": False, "error": str(e), "version": state.current.version.get("version")},
                            status_code=409, headers={"Retry-After": "5"})  # fmt: skip
    except Exception:
        return JSONResponse({"swapped": False, "error": state.reload_error,
                             "version": state.current.version.get("version")}, status_code=502)  # fmt: skip


@router.get("/metrics")
async def prometheus(state: Annotated[ServiceState, Depends(service)]) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE.read_text(encoding="utf-8")
