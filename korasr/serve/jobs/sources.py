"""Where a job's audio comes from, bounded before it is queued: an upload copied into the spool, a file in a folder
the operator allows (read where it is; resolved first, so neither ``..`` nor a symlink leaves the folder), or a URL
under an allowed prefix, fetched into the spool (at most ``job_fetch_max_bytes`` within ``job_fetch_timeout_s``).
Spooled files are written under a temporary name and renamed, so a file the worker sees is whole. The spool's bytes
on disk are bounded by ``job_spool_max_bytes``, and a file *reserves* its bytes before it writes them
(:class:`Spool`): its temporary file is grown (sparse) to what it may hold, under one lock per process, so concurrent
writers never each see the whole room, and other processes sharing the spool count the reservation as they count
files. A fetch of unknown length reserves as it goes, ``GRANT`` bytes ahead. Then the header is read: rate, channels
and duration within the limits, or the job is refused (the spooled copy removed)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import IO

import soundfile as sf

from korasr.fsutil import replace_durably
from korasr.runtime.audio import AudioError, AudioLimits
from korasr.serve.errors import STATUS, ClientError
from korasr.serve.jobs.net import Refused, resolve

PART = ".part"  # a spooled file being written
COPY_BLOCK = 1 << 20
GRANT = 8 << 20  # a fetch of unknown length reserves this far ahead of what it wrote


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


class Spool:
    """The spool's room, taken by reservation: :meth:`reserve` grows a temporary file to the bytes it may hold,
    checked against ``limit`` with every file in the folder counted (reservations included), one at a time."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self._lock = threading.Lock()

    def reserve(self, part: Path, size: int) -> None:
        """``part`` (created if need be) now holds ``size`` bytes of the room; ClientError 413 when they would take the
        spool past its limit."""
        with self._lock:
            held = part.stat().st_size if part.exists() else 0
            used = spool_bytes(self.folder) - held
            if used + size > self.limit:
                raise ClientError(413, f"the job spool is full: {used} bytes of audio waiting or reserved, {size} more "
                                  f"would pass its limit of {self.limit} bytes; retry later", {"Retry-After": "60"})  # fmt: skip
            with open(part, "ab"):
                pass
            if size > held:
                os.truncate(part, size)


class Reservation:
    """What one spooled file holds of the spool: grown ``GRANT`` bytes ahead of what is written (or exactly to what is
    needed when the room is short), never past ``cap``."""

    def __init__(self, spool: Spool, part: Path, cap: int):
        self.spool, self.part, self.cap, self.held = spool, part, cap, -1

    def need(self, total: int, ahead: bool = True) -> None:
        if total <= self.held:
            return
        try:
            self.spool.reserve(self.part, wanted := min(total + GRANT * ahead, self.cap))
        except ClientError:
            if wanted == total:
                raise
            self.spool.reserve(self.part, wanted := total)
        self.held = wanted


def local_source(source: str, folders: tuple[str, ...]) -> Path:
    """The file ``source`` names, when it lies inside an allowed folder (both resolved); ClientError otherwise."""
    path = Path(source.removeprefix("file://"))
    if not path.is_absolute() or len(source) > 1000:
        raise ClientError(400, f"url {source[:100]!r}: an absolute path, or an http(s):// URL")
    if "\\" in source:  # a separator elsewhere: the path checked would not be the path another system reads
        raise ClientError(400, f"url {source[:100]!r}: a backslash in a path is not allowed")
    resolved = path.resolve()
    allowed = [Path(f).resolve() for f in folders if not is_url(f)]
    if not any(resolved.is_relative_to(folder) for folder in allowed):
        raise ClientError(403, f"url {source[:100]!r} is not inside a folder this server reads jobs from "
                          "(--job-source)")  # fmt: skip
    if not resolved.is_file():
        raise ClientError(400, f"url {source[:100]!r}: no such file")
    return resolved


def spool_upload(file: IO[bytes], dest: Path, spool: Spool) -> int:
    """Copy an upload to ``dest`` (its room reserved first; temporary name, then rename): its size."""
    part = dest.with_name(dest.name + PART)
    try:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        file.seek(0)
        spool.reserve(part, size)
        with open(part, "r+b") as out:
            shutil.copyfileobj(file, out, COPY_BLOCK)
            out.truncate(out.tell())
        replace_durably([(part, dest)])  # the job row names it next: on disk whole before
    finally:
        part.unlink(missing_ok=True)
    return dest.stat().st_size


async def fetch(source: str, dest: Path, *, prefixes: tuple[str, ...], max_bytes: int, timeout_s: float,
                spool: Spool) -> int:  # fmt: skip
    """GET ``source`` (checked by ``net.resolve``, no redirects) into ``dest``: its size. Bounded by ``max_bytes``,
    the room it reserves in ``spool`` and ``timeout_s``."""
    import httpx

    try:
        target = await resolve(source, prefixes, "url", "--job-source")
    except Refused as e:
        raise ClientError(e.status, e.reason) from None
    part = dest.with_name(dest.name + PART)
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
            url, headers, extensions = target.request()
            async with client.stream("GET", url, headers=headers, extensions=extensions) as response:
                if response.status_code != 200:
                    raise ClientError(400, f"url {source[:100]!r}: the server answered {response.status_code}")
                await write_body(response, Reservation(spool, part, max_bytes), source)
        await asyncio.to_thread(replace_durably, [(part, dest)])
    except TimeoutError:
        raise ClientError(408, f"url {source[:100]!r}: not fetched within {timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise ClientError(400, f"url {source[:100]!r}: {type(e).__name__}: {e}"[:300]) from None
    finally:
        part.unlink(missing_ok=True)
    return dest.stat().st_size


async def write_body(response, reservation: Reservation, source: str) -> None:  # type: ignore[no-untyped-def]
    """The answer's body into the reservation's file, the room reserved before each block is written (the declared
    length at once)."""

    def too_large() -> ClientError:
        return ClientError(413, f"url {source[:100]!r}: more than {reservation.cap} bytes (--job-fetch-max-bytes)")

    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > reservation.cap:
        raise too_large()
    await asyncio.to_thread(reservation.need, int(declared) if declared.isdigit() else 0, not declared.isdigit())
    written = 0
    with open(reservation.part, "r+b") as out:
        async for block in response.aiter_bytes(COPY_BLOCK):
            written += len(block)
            if written > reservation.cap:
                raise too_large()
            if written > reservation.held:
                await asyncio.to_thread(reservation.need, written)
            out.write(block)
        out.truncate(written)


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
