"""Asynchronous jobs: ``POST /v1/jobs`` (an upload ``file``, or ``url``: a file in a folder or under a URL prefix the
server allows) answers 202 at once; ``GET /v1/jobs/{id}`` its status, ``GET /v1/jobs/{id}/result`` its result in
the job's ``response_format`` (OpenAI's, as ``/v1/audio/transcriptions``), ``DELETE /v1/jobs/{id}`` cancels a queued
job or deletes a finished one. A job belongs to the API key that made it: another key gets 404, as for an unknown
or expired id. The work: ``korasr.serve.jobs``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

from korasr.runtime.audio import AudioLimits
from korasr.serve.errors import ClientError
from korasr.serve.formats import MEDIA_TYPES, check_format
from korasr.serve.gate import DRAINING, KeyHeaders, presented_key
from korasr.serve.hotwords import parse_hotwords
from korasr.serve.jobs.net import Refused, resolve
from korasr.serve.jobs.sources import fetch, is_url, local_source, probe, spool_upload
from korasr.serve.jobs.store import JobLimit
from korasr.serve.jobs.worker import JobWorker
from korasr.serve.logs import note
from korasr.serve.state import ServiceState, service

router = APIRouter()
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
RESULT_BLOCK = 64 * 1024  # a larger result is sent in blocks of this size
SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})  # a spooled upload keeps its extension


def jobs_of(state: ServiceState) -> JobWorker:
    state.require_ready()
    if state.jobs is None:
        raise ClientError(503, "jobs are starting", {"Retry-After": "1"})
    return state.jobs


def owner_of(request: Request, state: ServiceState) -> str:
    """SHA-256 of the API key the request presents (never the key itself); '' on a server without keys. The gate's
    own parser (``presented_key``), so the key checked is the key that owns."""
    if not state.config.api_key:
        return ""
    try:
        return hashlib.sha256(presented_key(request.headers).encode()).hexdigest()
    except KeyHeaders as e:  # the gate refused it already
        raise ClientError(400, str(e)) from None


@router.post("/v1/jobs", status_code=202)
async def create_job(
    request: Request,
    state: Annotated[ServiceState, Depends(service)],
    file: Annotated[UploadFile | None, File(description="the audio (or give url)")] = None,
    url: Annotated[str | None, Form(description="a path or URL the server allows (--job-source)")] = None,
    response_format: Annotated[str, Form()] = "json",
    callback_url: Annotated[str | None, Form(description="POSTed the signed result (--callback-allow)")] = None,
    hotwords: Annotated[str | None, Form(description="beam search: one phrase per line")] = None,
    prompt: Annotated[str | None, Form(description="OpenAI's prompt: phrases as hotwords (a hint)")] = None,
):  # type: ignore[no-untyped-def]
    jobs, config = jobs_of(state), state.config
    check_format(response_format)
    if (file is None) == (not url):
        raise ClientError(400, "a job needs one of file (an upload) or url (a path or URL the server allows)")
    words, words_field = submitted_hotwords(state, hotwords, prompt)
    if callback_url:
        await check_callback(state, callback_url)
    owner = owner_of(request, state)
    await limits(jobs, owner)
    job_id = uuid.uuid4().hex
    audio, spooled, source = await intake(request, jobs, job_id, file, url)
    try:
        name = Path(source).name[:200] if spooled else source[:200]
        seconds = await asyncio.to_thread(probe, jobs.audio_path({"audio": audio, "spooled": spooled}), name,
                                          AudioLimits(max_seconds=config.job_max_audio_seconds))  # fmt: skip
        note(audio_seconds=round(seconds, 3))
        row = {"id": job_id, "owner": owner, "response_format": response_format, "source": source[:2000],
               "audio": audio, "spooled": spooled, "audio_seconds": seconds, "hotwords": words,
               "hotwords_field": words_field, "callback_url": callback_url or None,
               "callback_state": "pending" if callback_url else None, "created_at": round(time.time(), 3),
               "audio_bytes": jobs.audio_path({"audio": audio, "spooled": spooled}).stat().st_size}  # fmt: skip
        await asyncio.to_thread(jobs.store.add, row, config.job_queue_max, config.job_quota_per_key)
    except BaseException as e:
        jobs.discard({"audio": audio, "spooled": spooled})
        if isinstance(e, JobLimit):
            raise limit_error(e) from None
        raise
    jobs.notify()
    await jobs.refresh()
    return JSONResponse({"id": job_id, "status": "queued", "created_at": row["created_at"]}, status_code=202,
                        headers={"Location": f"/v1/jobs/{job_id}"})  # fmt: skip


def submitted_hotwords(state: ServiceState, hotwords: str | None, prompt: str | None) -> tuple[str | None, str]:
    """The job's hotwords as text, checked now (a 400 names what is wrong) and parsed again when it is decoded;
    OpenAI's ``prompt`` is a hint, only bounded."""
    if hotwords and hotwords.strip():
        with state.lease() as generation:
            parse_hotwords(generation.recognizer, hotwords, "hotwords", state.config.max_hotwords)
        return hotwords, "hotwords"
    if prompt and prompt.strip():
        return prompt[: state.config.max_hotwords * 101], "prompt"
    return None, "hotwords"


async def check_callback(state: ServiceState, callback_url: str) -> None:
    if not state.config.callback_secret:
        raise ClientError(400, "callback_url: this server sends no callbacks (it has no KORASR_CALLBACK_SECRET to "
                          "sign them with)")  # fmt: skip
    try:
        await resolve(callback_url, state.config.callback_allow, "callback_url", "--callback-allow")
    except Refused as e:
        raise ClientError(e.status, e.reason) from None


def limit_error(e: JobLimit) -> ClientError:
    return ClientError(429, e.reason, {"Retry-After": "30"})


async def limits(jobs: JobWorker, owner: str) -> None:
    """The queue's length and the key's quota, before the audio is read (checked again when the job is queued)."""
    config = jobs.config
    try:
        await asyncio.to_thread(jobs.store.check, owner, config.job_queue_max, config.job_quota_per_key)
    except JobLimit as e:
        raise limit_error(e) from None


async def intake(request: Request, jobs: JobWorker, job_id: str, file: UploadFile | None,
                 url: str | None) -> tuple[str, bool, str]:  # fmt: skip
    """The job's audio: (the spooled file's name or the allowed file's path, whether spooled, what the client
    named). Its room in the spool is reserved before it is written. A URL is fetched after the request gives back
    its admission slot (the body is read: what remains is the fetch, bounded by ``job_fetches`` per process), so
    slow fetches never hold the slots of the synchronous routes."""
    config = jobs.config
    if file is not None:
        name = (file.filename or "upload")[:200]
        suffix = Path(name).suffix.lower()
        dest = jobs.spool / f"{job_id}{suffix if suffix in SUFFIXES else '.audio'}"
        await asyncio.to_thread(spool_upload, file.file, dest, jobs.room)
        return dest.name, True, name
    if not is_url(url):
        return str(local_source(url, config.job_sources)), False, url
    suffix = Path(url.split("?", 1)[0]).suffix.lower()
    dest = jobs.spool / f"{job_id}{suffix if suffix in SUFFIXES else '.audio'}"
    if jobs.fetching >= config.job_fetches:
        raise ClientError(503, f"{jobs.fetching} URL fetches in progress (--job-fetches {config.job_fetches}); retry "
                          "later", {"Retry-After": "10"})  # fmt: skip
    request.scope.get("korasr.release_slot", lambda: None)()
    jobs.fetching += 1
    try:
        fetching = fetch(url, dest, prefixes=config.job_sources, max_bytes=config.job_fetch_max_bytes,
                         timeout_s=config.job_fetch_timeout_s, spool=jobs.room)  # fmt: skip
        await unless_released(fetching, jobs.state.drain.releasing)
    finally:
        jobs.fetching -= 1
    return dest.name, True, url


async def unless_released(fetching: Any, releasing: asyncio.Event) -> None:
    """Await the fetch, unless the drain's release point comes first (the fetch may take ``job_fetch_timeout_s``,
    far past the drain): then it is cancelled (its partial file removed) and the client gets 503 with Retry-After,
    no job queued, instead of a reset when the process exits."""
    task = asyncio.ensure_future(fetching)
    released = asyncio.ensure_future(releasing.wait())
    try:
        await asyncio.wait({task, released}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        released.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientError(503, DRAINING, {"Retry-After": "1"})
    task.result()


async def find(request: Request, state: ServiceState, job_id: str) -> dict:
    """The job ``job_id`` of the requesting key, unless it expired; else 404 (the same for another key's job)."""
    jobs = jobs_of(state)
    job = await asyncio.to_thread(jobs.store.get, job_id, owner_of(request, state)) if JOB_ID.match(job_id) else None
    retention = state.config.job_retention_s
    if job is None or (job["finished_at"] is not None and job["finished_at"] < time.time() - retention):
        raise ClientError(404, f"no job {job_id[:40]!r} (unknown, another API key's, or expired: results are kept "
                          f"{retention:g} s)")  # fmt: skip
    return job


def public(job: dict) -> dict:
    keys = ("id", "status", "response_format", "source", "attempts", "audio_seconds", "created_at", "started_at",
            "finished_at", "error")  # fmt: skip
    body = {k: round(job[k], 3) if k.endswith("_at") and job[k] is not None else job[k] for k in keys}
    body["model"] = json.loads(job["model"]) if job.get("model") else None  # what decoded it
    if job["callback_url"]:
        body["callback"] = {"url": job["callback_url"], "state": job["callback_state"], "error": job["callback_error"]}
    return body


@router.get("/v1/jobs/{job_id}")
async def job_status(job_id: str, request: Request, state: Annotated[ServiceState, Depends(service)]) -> dict:
    return public(await find(request, state, job_id))


@router.get("/v1/jobs/{job_id}/result")
async def job_result(job_id: str, request: Request, state: Annotated[ServiceState, Depends(service)]) -> Response:
    job = await find(request, state, job_id)
    if job["status"] != "succeeded":
        detail = f": {job['error']}" if job["error"] else ""
        raise ClientError(409, f"job {job_id} is {job['status']}{detail}"[:2000])
    body = job["result"].encode()
    if len(body) <= RESULT_BLOCK:
        return Response(body, media_type=MEDIA_TYPES[job["response_format"]])
    # in blocks, each send under its own deadline: a client that reads slowly but steadily gets all of it, one that
    # stops is aborted at the first block it does not take
    blocks = (body[i : i + RESULT_BLOCK] for i in range(0, len(body), RESULT_BLOCK))
    return StreamingResponse(blocks, media_type=MEDIA_TYPES[job["response_format"]],
                             headers={"Content-Length": str(len(body))})  # fmt: skip


@router.delete("/v1/jobs/{job_id}")
async def delete_job(job_id: str, request: Request, state: Annotated[ServiceState, Depends(service)]) -> dict:
    jobs, job = jobs_of(state), await find(request, state, job_id)
    if job["status"] == "queued" and await asyncio.to_thread(jobs.store.cancel, job_id, job["owner"]):
        jobs.finished(job, "cancelled")
        await jobs.refresh()
        return {"id": job_id, "status": "cancelled"}
    if job["status"] in ("queued", "running"):  # queued: a worker took it meanwhile
        raise ClientError(409, f"job {job_id} is running: delete it once it has finished")
    await asyncio.to_thread(jobs.store.delete, [job_id])
    jobs.discard(job)
    return {"id": job_id, "deleted": True}
