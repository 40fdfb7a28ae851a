"""Where a job's audio comes from, bounded before it is queued: an upload copied into the spool, a file in a folder
the operator allows (read where it is; resolved first, so neither ``..`` nor a symlink leaves the folder), or a URL
under an allowed prefix, fetched into the spool (at most ``job_fetch_max_bytes`` within ``job_fetch_timeout_s``).
Spooled files are written under a temporary name and renamed, so a file the worker sees is whole; the spool's
bytes on disk (temporary files included) are bounded by ``job_spool_max_bytes``. Then the header is read: rate,
channels and duration within the limits, or the job is refused (the spooled copy removed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import IO

import soundfile as sf

from korasr.runtime.audio import AudioError, AudioLimits
from korasr.serve.errors import STATUS, ClientError
from korasr.serve.jobs.net import Refused, resolve

PART = ".part"  # a spooled file being written
COPY_BLOCK = 1 << 20


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def spool_bytes(spool: Path) -> int:
    """Bytes of every file in the spool, those being written included."""
    total = 0
    with os.scandir(spool) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                total += entry.stat(follow_symlinks=False).st_size if entry.is_file(follow_symlinks=False) else 0
    return total


def spool_room(spool: Path, limit: int, size: int) -> int:
    """The spool's bytes now; ClientError 413 when ``size`` more would take it past ``limit``."""
    used = spool_bytes(spool)
    if used + size > limit:
        raise ClientError(413, f"the job spool is full: {used} bytes of audio waiting, {size} more would pass "
                          f"its limit of {limit} bytes; retry later", {"Retry-After": "60"})  # fmt: skip
    return used


def local_source(source: str, folders: tuple[str, ...]) -> Path:
    """The file ``source`` names, when it lies inside an allowed folder (both resolved); ClientError otherwise."""
    path = Path(source.removeprefix("file://"))
    if not path.is_absolute() or len(source) > 1000:
        raise ClientError(400, f"url {source[:100]!r}: an absolute path, or an http(s):// URL")
    resolved = path.resolve()
    allowed = [Path(f).resolve() for f in folders if not is_url(f)]
    if not any(resolved.is_relative_to(folder) for folder in allowed):
        raise ClientError(403, f"url {source[:100]!r} is not inside a folder this server reads jobs from "
                          "(--job-source)")  # fmt: skip
    if not resolved.is_file():
        raise ClientError(400, f"url {source[:100]!r}: no such file")
    return resolved


def spool_upload(file: IO[bytes], dest: Path) -> int:
    """Copy an upload to ``dest`` (temporary name, then rename): its size."""
    part = dest.with_name(dest.name + PART)
    try:
        with open(part, "xb") as out:
            file.seek(0)
            shutil.copyfileobj(file, out, COPY_BLOCK)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest.stat().st_size


async def fetch(source: str, dest: Path, *, prefixes: tuple[str, ...], max_bytes: int, timeout_s: float,
                room: int) -> int:  # fmt: skip
    """GET ``source`` (checked by ``net.resolve``, no redirects) into ``dest``: its size. Bounded by ``max_bytes``,
    ``room`` (what the spool has left) and ``timeout_s``."""
    import httpx

    try:
        target = await resolve(source, prefixes, "url", "--job-source")
    except Refused as e:
        raise ClientError(e.status, e.reason) from None
    limit = min(max_bytes, room)
    part = dest.with_name(dest.name + PART)
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            url, headers, extensions = target.request()
            async with client.stream("GET", url, headers=headers, extensions=extensions) as response:
                if response.status_code != 200:
                    raise ClientError(400, f"url {source[:100]!r}: the server answered {response.status_code}")
                await write_body(response, part, limit, source)
        os.replace(part, dest)
    except TimeoutError:
        raise ClientError(408, f"url {source[:100]!r}: not fetched within {timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise ClientError(400, f"url {source[:100]!r}: {type(e).__name__}: {e}"[:300]) from None
    finally:
        part.unlink(missing_ok=True)
    return dest.stat().st_size


async def write_body(response, part: Path, limit: int, source: str) -> None:  # type: ignore[no-untyped-def]
    def too_large() -> ClientError:
        return ClientError(413, f"url {source[:100]!r}: more than {limit} bytes (the fetch limit or the spool's room)")

    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large()
    written = 0
    with open(part, "xb") as out:
        async for block in response.aiter_bytes(COPY_BLOCK):
            written += len(block)
            if written > limit:
                raise too_large()
            out.write(block)


def probe(path: Path, name: str, limits: AudioLimits) -> float:
    """Seconds of audio in ``path`` from its header, its rate, channels and duration within ``limits``."""
    try:
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError) as e:
            raise AudioError("unsupported", f"{name}: not a recognised audio format ({e})") from None
        limits.check_format(name, info.samplerate, info.channels)
        if not 0 < info.frames < 2**62:
            raise AudioError("corrupt", f"{name}: the header does not say how long it is")
        limits.check_duration(name, info.frames / info.samplerate)
        return info.frames / info.samplerate
    except AudioError as e:
        raise ClientError(STATUS.get(e.kind, 400), str(e)) from None
