"""Small filesystem helpers shared by every stage: atomic writes, artifact folders, content hashes.

An artifact folder (an LM, a tokenizer, an export, a Triton repository) is written by :func:`staged_dir`, which
replaces an existing ``--out`` folder only when the same command wrote it: it carries ``.korasr-artifact``, a JSON
naming its kind and the entries written, or (folders written before the marker existed) its kind's own metadata file
and nothing but the names that kind writes. Anything else is refused with :class:`OutFolderError` unless forced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from korasr import __version__
from korasr.errors import KorasrError

MARKER = ".korasr-artifact"
MARKER_FORMAT = "korasr-artifact/1"
_MAX_SIGNATURE_BYTES = 1 << 20  # a metadata file is read this far to recognize a folder written without a marker
_NAMED_ENTRIES = 5  # how many of a refused folder's entries the message lists


def tmp_name(path: Path) -> Path:
    """A temporary name beside ``path``, unique per process, that no reader mistakes for the final file."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it over ``path``, on failure remove it."""
    path = Path(path)
    tmp = tmp_name(path)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OutFolderError(KorasrError, RuntimeError):
    """An output folder holds something its command did not write; the message names the folder and its entries."""


@dataclass(frozen=True)
class ArtifactKind:
    """What one command writes as its output folder.

    ``name`` goes into the folder's marker. ``signature`` (a relative path and a text it contains) and ``names``
    (fnmatch patterns of the top-level entries) recognize a folder of this kind written before markers existed: it
    holds the signature and nothing that matches no name."""

    name: str
    signature: tuple[str, str]
    names: tuple[str, ...]

    def wrote(self, entry: str) -> bool:
        return any(fnmatch.fnmatchcase(entry, pattern) for pattern in self.names)


def _read_marker(folder: Path) -> dict | None:
    try:
        with open(folder / MARKER, encoding="utf-8") as f:
            marker = json.loads(f.read(_MAX_SIGNATURE_BYTES))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def _has_signature(folder: Path, kind: ArtifactKind) -> bool:
    path, text = kind.signature
    try:
        with open(folder / path, encoding="utf-8", errors="replace") as f:
            return text in f.read(_MAX_SIGNATURE_BYTES)
    except OSError:
        return False


def check_replaceable(out: Path, kind: ArtifactKind) -> None:
    """Raise :class:`OutFolderError` unless ``out`` is missing, empty, or a ``kind`` folder korasr wrote and nobody
    added to: its marker names ``kind`` and lists every entry, or (no marker) it has ``kind``'s signature and only
    entries ``kind`` writes."""
    if out.is_symlink() or not out.exists():
        return  # a link is replaced, its target left alone; a missing folder is simply written
    if not out.is_dir():
        raise OutFolderError(f"{out}: is a file, not a folder: choose another --out")
    entries = sorted(e.name for e in os.scandir(out))
    if not entries:
        return
    marker = _read_marker(out)
    if marker is not None:
        if marker.get("kind") != kind.name:
            raise OutFolderError(f"{out}: holds a korasr {marker.get('kind')!r} folder ({MARKER}), not a {kind.name} "
                                 "one: choose another --out, or pass --force to replace it whole")  # fmt: skip
        written = set(marker.get("entries") or ())
        foreign = [e for e in entries if e != MARKER and e not in written]
        what = "entries this command did not write"
    elif _has_signature(out, kind):
        foreign = [e for e in entries if not kind.wrote(e)]
        what = f"entries a korasr {kind.name} folder does not hold"
    else:
        foreign = entries
        what = f"no {MARKER} and no {kind.signature[0]} of a korasr {kind.name} folder; it holds"
    if foreign:
        listed = ", ".join(foreign[:_NAMED_ENTRIES]) + (f" and {len(foreign) - _NAMED_ENTRIES} more"
                                                        if len(foreign) > _NAMED_ENTRIES else "")  # fmt: skip
        raise OutFolderError(f"{out}: not replaced ({what}: {listed}): choose another --out, or pass --force to "
                             "replace the folder whole")  # fmt: skip


@contextlib.contextmanager
def staged_dir(out: Path, kind: ArtifactKind, *, force: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out`` to fill; on success it replaces ``out``, on failure it is removed and
    ``out`` is left as it was, so a reader never sees a half-written folder.

    An existing ``out`` is replaced only when :func:`check_replaceable` allows it (checked before the work and again
    before the swap) or ``force`` is set. The swap renames the old folder aside (``.NAME.old.PID``), the new one into
    place, then removes the old one: one of the two versions is on disk at every moment. The new folder carries
    ``MARKER``: its kind and its entries."""
    if not force:
        check_replaceable(out, kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        entries = sorted(e.name for e in os.scandir(staging))
        write_json(staging / MARKER, {"format": MARKER_FORMAT, "kind": kind.name, "entries": entries,
                                      "korasr_version": __version__,
                                      "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})  # fmt: skip
        if not force:
            check_replaceable(out, kind)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out: Path) -> None:
    if not (out.exists() or out.is_symlink()):
        os.rename(staging, out)
        return
    aside = out.with_name(f".{out.name}.old.{os.getpid()}")
    _remove(aside)  # left by a run of an earlier process with this PID killed before it removed it
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=True)
        f.write("\n")


def sha256_file(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
