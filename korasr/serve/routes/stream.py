"""``GET /v1/stream``: live streams over a WebSocket (the session: ``korasr.serve.sessions``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, WebSocket

from korasr.serve.sessions import stream_session
from korasr.serve.state import ServiceState, service

router = APIRouter()


@router.websocket("/v1/stream")
async def v1_stream(ws: WebSocket, state: Annotated[ServiceState, Depends(service)]) -> None:
    await stream_session(ws, state)
