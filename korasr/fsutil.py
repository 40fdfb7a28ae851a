"""Small filesystem helpers shared by every stage: atomic writes, artifact folders, content hashes.

An artifact folder (an LM, a tokenizer, an export, a Triton repository) is written by :func:`staged_dir`, which
replaces an existing ``--out`` folder only when the same command wrote it: it carries ``.korasr-artifact``, a JSON
naming its kind and the entries written, or (folders written before the marker existed) its kind's own metadata file
and nothing but the names that kind writes. Anything else is refused with :class:`OutFolderError` unless forced.

"Written atomically" means, for every file and folder korasr publishes (manifests, parts, ``.done`` records, exports,
releases): it is written under a temporary name, its data reaches the disk (``fsync``) before the rename, and its
folder is fsynced after the rename, so that after a crash or a power cut the name holds the old version or the new one
whole, never an empty or partial file. :func:`replace_durably` is the one place that does it; :func:`atomic_open`,
:class:`DurableBatch` and :func:`staged_dir` go through it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from korasr import __version__
from korasr.errors import KorasrError

MARKER = ".korasr-artifact"
MARKER_FORMAT = "korasr-artifact/1"
_MAX_SIGNATURE_BYTES = 1 << 20  # a metadata file is read this far to recognize a folder written without a marker
_NAMED_ENTRIES = 5  # how many of a refused folder's entries the message lists


_SYNC = True  # bench/fsync_prepare.py turns the fsyncs off in-process to measure their cost; nothing else may
_SYNC_THREADS = 16  # fsyncs in flight at once when several files are made durable together


def tmp_name(path: Path) -> Path:
    """A temporary name beside ``path``, unique per process, that no reader mistakes for the final file.
    :func:`sweep_temporaries` recognizes this format: change both together."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class FolderInUseError(KorasrError, RuntimeError):
    """Another live run holds an output folder's lock; the message names the folder and that run's PID."""


LOCK_NAME = ".korasr.lock"


@contextlib.contextmanager
def folder_lock(*folders: Path) -> Iterator[None]:
    """Hold the lock of each folder (``LOCK_NAME`` inside it; the folder is created) until the block ends, or raise
    ``FolderInUseError`` at once, naming the folder and the holder's PID, while another process holds one.

    An flock on the file, not the file's existence: the kernel drops it when its holder exits however it exits
    (kill -9, the OOM killer), so no stale lock outlives a run and none is ever removed by hand; the file stays.
    Forked workers share their parent's lock. The PID written inside is for the message only."""
    with contextlib.ExitStack() as held:
        for folder in dict.fromkeys(Path(f) for f in folders):  # one folder given twice is locked once
            held.enter_context(_lock_one(folder))
        yield


@contextlib.contextmanager
def _lock_one(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "not yet recorded"
            raise FolderInUseError(
                f"{folder} is in use by another run (PID {pid} holds {path}): wait for it to finish, or use another "
                "folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


TEMPORARY = re.compile(r"^\..+\.\d+\.tmp$")  # tmp_name's .NAME.PID.tmp (tests/test_fsutil.py checks both agree)


def sweep_temporaries(folder: Path) -> int:
    """Remove every temporary file (``tmp_name``) under ``folder``; how many. Call it only while holding
    ``folder_lock(folder)``, before writing anything: every run that writes into ``folder`` holds that lock, so any
    temporary present then was left by a run that is gone (killed, crashed), whatever PID its name carries. A PID
    is no test of that (PIDs are reused, and differ between containers sharing the folder); the lock is. A folder
    below with a lock file of its own is another run's folder, not covered by this lock: it is left to that run."""
    removed = 0
    for parent, folders, names in os.walk(folder):
        if LOCK_NAME in names and Path(parent) != Path(folder):
            folders.clear()
            continue
        for name in names:
            if TEMPORARY.match(name):
                Path(parent, name).unlink(missing_ok=True)
                removed += 1
    return removed


def sync_file(path: str | os.PathLike[str]) -> None:
    """Wait until the data and size of the file at ``path`` are on the disk (``fsync`` works on any descriptor of
    the file, so one written by a library that only takes a name is synced here). A symbolic link is left alone: it
    has no data of its own, the fsync of its folder records it."""
    if _SYNC and not os.path.islink(path):
        _fsync(path, os.O_RDONLY)


def sync_dir(path: str | os.PathLike[str]) -> None:
    """Wait until the entries of the folder ``path`` (a rename into it, a file created in it) are on the disk."""
    if _SYNC:
        _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: str | os.PathLike[str], flags: int) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_files(paths: list[Path]) -> None:
    """fsync every file; several at once from threads: the disk then flushes them together, where one after another
    each waits for a flush of its own (256 files of 100 kB: 0.2 ms a file against 6 ms here)."""
    if len(paths) <= 1 or not _SYNC:
        for path in paths:
            sync_file(path)
        return
    with ThreadPoolExecutor(min(len(paths), _SYNC_THREADS), thread_name_prefix="fsync") as pool:
        list(pool.map(sync_file, paths))  # list(): the first error raises here


def replace_durably(moves: Iterable[tuple[str | os.PathLike[str], str | os.PathLike[str]]]) -> None:
    """Rename each finished temporary ``(tmp, path)`` over its final name, durably: every ``tmp`` is fsynced first,
    then each is renamed, then each folder renamed into is fsynced once. A crash at any moment leaves each ``path``
    as it was or whole and new, never empty or partial; a crash before the folder's fsync may leave the old one."""
    moves = [(Path(tmp), Path(path)) for tmp, path in moves]
    _sync_files([tmp for tmp, _ in moves])
    for tmp, path in moves:
        os.replace(tmp, path)
    for folder in dict.fromkeys(path.parent for _, path in moves):
        sync_dir(folder)


def sync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder from the deepest up: before a folder written in place
    is renamed into view (:func:`staged_dir`), so that the name never shows a folder whose files are missing."""
    files: list[Path] = []
    folders: list[Path] = []
    for parent, _, names in os.walk(folder, topdown=False):
        files.extend(Path(parent, name) for name in names)
        folders.append(Path(parent))
    _sync_files(files)
    for path in folders:
        sync_dir(path)


def rename_tree_durably(src: Path, dst: Path) -> None:
    """Rename the folder ``src`` onto ``dst`` (which must not exist: the rename then fails) with its files and
    folders synced before and ``dst``'s parent after."""
    sync_tree(src)
    os.rename(src, dst)
    sync_dir(dst.parent)


class DurableBatch:
    """Finished temporaries whose renames wait for :meth:`commit`, which syncs them all at once: a writer of many
    small files (converted audio, a synthesized corpus) pays about one disk flush per batch, not one per file. Until
    the commit nothing of the batch is visible under its final name; a name written twice gets its last version.
    Use :func:`durable_batch`."""

    def __init__(self) -> None:
        self._moves: dict[Path, Path] = {}  # final name → its temporary

    def add(self, tmp: Path, path: Path) -> None:
        earlier = self._moves.pop(path, None)
        if earlier is not None and earlier != tmp:
            earlier.unlink(missing_ok=True)
        self._moves[path] = tmp

    def forget(self, tmp: Path) -> None:
        """Drop the rename of ``tmp`` (removed by its writer: a later write to the same name failed)."""
        self._moves = {path: t for path, t in self._moves.items() if t != tmp}

    def take(self) -> list[tuple[Path, Path]]:
        """The ``(tmp, path)`` renames waiting, handed over (to :class:`BackgroundCommits`); the batch is empty."""
        moves, self._moves = self._moves, {}
        return [(tmp, path) for path, tmp in moves.items()]

    def commit(self) -> None:
        moves, self._moves = self._moves, {}
        try:
            replace_durably((tmp, path) for path, tmp in moves.items())
        except BaseException:
            for tmp in moves.values():
                tmp.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        moves, self._moves = self._moves, {}
        for tmp in moves.values():
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def durable_batch() -> Iterator[DurableBatch]:
    """A :class:`DurableBatch` committed when the block ends, discarded (its temporaries removed) when it raises."""
    batch = DurableBatch()
    try:
        yield batch
    except BaseException:
        batch.discard()
        raise
    batch.commit()


class BackgroundCommits:
    """Batches of renames (:meth:`DurableBatch.take`) made durable by a thread of their own while the caller goes on
    writing: the disk flushes one batch while the next is converted. At most ``in_flight`` batches wait; a caller
    that publishes something naming these files (a manifest) calls :meth:`wait` first. Use
    :func:`background_commits`."""

    def __init__(self, in_flight: int = 2) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._pending: deque = deque()
        self._in_flight = in_flight

    def submit(self, moves: list[tuple[Path, Path]]) -> None:
        self._pending.append((self._pool.submit(replace_durably, moves), moves))  # first: a discard then sees them
        while len(self._pending) > self._in_flight:
            self._pending[0][0].result()  # its error raises here; the block's exit then discards what is left
            self._pending.popleft()

    def wait(self) -> None:
        while self._pending:
            self._pending[0][0].result()
            self._pending.popleft()
        self._pool.shutdown()

    def discard(self) -> None:
        """Stop: what is committed stays, every other temporary is removed."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for future, moves in self._pending:
            if future.cancelled() or future.exception() is not None:
                for tmp, _ in moves:
                    Path(tmp).unlink(missing_ok=True)
        self._pending.clear()


@contextlib.contextmanager
def background_commits(in_flight: int = 2) -> Iterator[BackgroundCommits]:
    """:class:`BackgroundCommits` that all complete before the block ends, or are discarded when it raises."""
    commits = BackgroundCommits(in_flight)
    try:
        yield commits
        commits.wait()
    except BaseException:
        commits.discard()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "", batch: DurableBatch | None = None) -> Iterator[Path]:
    """A temporary name beside ``path`` (ending in ``suffix``, for a library that picks the format by it) for a
    writer that takes a name; on success it replaces ``path`` durably (:func:`replace_durably`), or joins ``batch``;
    on failure it is removed."""
    path = Path(path)
    tmp = tmp_name(path)
    tmp = tmp.with_name(tmp.name + suffix)
    try:
        yield tmp
        if batch is None:
            replace_durably([(tmp, path)])
        else:
            batch.add(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if batch is not None:
            batch.forget(tmp)  # an earlier write of the same name in this batch used the same temporary
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, batch: DurableBatch | None = None, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it is flushed, closed and durably renamed over ``path``
    (:func:`replace_durably`; with ``batch``, at the batch's commit), on failure removed."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path, batch=batch) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


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
        sync_tree(staging)
        if not force:
            check_replaceable(out, kind)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, out: Path) -> None:
    """``staging`` (synced already) renamed onto ``out``, ``out``'s parent synced after."""
    if not (out.exists() or out.is_symlink()):
        os.rename(staging, out)
        sync_dir(out.parent)
        return
    aside = out.with_name(f".{out.name}.old.{os.getpid()}")
    _remove(aside)  # left by a run of an earlier process with this PID killed before it removed it
    os.rename(out, aside)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(aside, out)
        raise
    sync_dir(out.parent)  # before the old version goes: on disk, the name holds one version or the other
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
