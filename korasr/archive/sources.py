"""What an archive run reads: a NeMo manifest, a list of paths, a folder or a glob, on the local disk or on any
filesystem pyarrow opens by URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``). Entries stream in a fixed order
(a folder is walked sorted), never loaded whole, so a resumed run numbers every file as the first run did."""

from __future__ import annotations

import fnmatch
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")  # what libsndfile reads
MAX_LINE_BYTES = 1 << 20  # one manifest line; longer is an error naming the line


class SourceError(ValueError):
    """An input that cannot be listed: the message names the source and the reason."""


def is_uri(path: str) -> bool:
    return "://" in path


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def kind_of(source: str) -> str:
    """``glob``, ``folder``, ``manifest`` (JSON lines) or ``list`` (one path per line)."""
    if _is_glob(source):
        return "glob"
    if is_uri(source):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(source)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"{source}: no such file or folder")
        if info.type == pafs.FileType.Directory:
            return "folder"
        with fs.open_input_stream(path) as f:
            head = f.read(4096)
    else:
        if not os.path.exists(source):
            raise SourceError(f"{source}: no such file or folder")
        if os.path.isdir(source):
            return "folder"
        with open(source, "rb") as f:
            head = f.read(4096)
    return "manifest" if head.lstrip().startswith(b"{") else "list"


def iter_entries(source: str) -> Iterator[dict]:
    """``{"path": ..., "id": ..., "duration": ...}`` for every audio file ``source`` names, in a fixed order."""
    kind = kind_of(source)
    if kind == "glob":
        yield from _glob(source)
    elif kind == "folder":
        yield from _folder(source)
    else:
        yield from _lines(source, kind)


def _entry(path: str, uid: str | None = None, duration: float | None = None) -> dict:
    return {"path": path, "id": uid, "duration": duration}


def _join(base: str, rel: str) -> str:
    """A manifest's or list's relative path, against the folder that holds it (NeMo's rule)."""
    if is_uri(rel) or os.path.isabs(rel):
        return rel
    if is_uri(base):
        return base.rsplit("/", 1)[0] + "/" + rel
    return str(Path(base).resolve().parent / rel)


def _open_text(source: str) -> io.TextIOBase:
    if is_uri(source):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(source)
        return io.TextIOWrapper(io.BufferedReader(fs.open_input_stream(path)), encoding="utf-8")  # type: ignore[arg-type]
    return open(source, encoding="utf-8")


def _lines(source: str, kind: str) -> Iterator[dict]:
    with _open_text(source) as f:
        for number, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), ""), 1):
            if len(line) > MAX_LINE_BYTES:
                raise SourceError(f"{source}:{number}: a line longer than {MAX_LINE_BYTES} bytes")
            text = line.strip()
            if not text or (kind == "list" and text.startswith("#")):
                continue
            if kind == "list":
                yield _entry(_join(source, text))
                continue
            yield _manifest_entry(source, number, text)


def _manifest_entry(source: str, number: int, text: str) -> dict:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"{source}:{number}: not JSON ({e.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("audio_filepath"), str):
        raise SourceError(f"{source}:{number}: a manifest line needs audio_filepath")
    duration = row.get("duration")
    uid = row.get("utt_id", row.get("id"))
    return _entry(_join(source, row["audio_filepath"]), None if uid is None else str(uid),
                  float(duration) if isinstance(duration, int | float) else None)  # fmt: skip


def _is_audio(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def _folder(source: str) -> Iterator[dict]:
    if is_uri(source):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(source)
        scheme = source.split("://", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        for path in sorted(i.path for i in infos if i.type == pafs.FileType.File and _is_audio(i.path)):
            yield _entry(f"{scheme}://{path}")
        return
    yield from (_entry(path) for path in _walk(Path(source).resolve()))


def _walk(folder: Path) -> Iterator[str]:
    """Audio files under ``folder`` in the order of their sorted paths, one folder's names in memory at a time."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))
        elif entry.is_file() and _is_audio(entry.name):
            yield entry.path


def _glob(source: str) -> Iterator[dict]:
    if is_uri(source):
        import pyarrow.fs as pafs

        scheme, pattern = source.split("://", 1)
        root = pattern[: min(i for i, c in enumerate(pattern) if c in "*?[")].rsplit("/", 1)[0]
        fs, root_path = pafs.FileSystem.from_uri(f"{scheme}://{root}")
        infos = fs.get_file_info(pafs.FileSelector(root_path, recursive=True))
        for path in sorted(i.path for i in infos if i.type == pafs.FileType.File):
            if fnmatch.fnmatchcase(path, pattern):  # fnmatch's * crosses folders, as a recursive glob's ** does
                yield _entry(f"{scheme}://{path}")
        return
    import glob

    for path in sorted(glob.iglob(source, recursive=True)):  # names only: sorted so every run numbers them alike
        if os.path.isfile(path):
            yield _entry(str(Path(path).resolve()))
