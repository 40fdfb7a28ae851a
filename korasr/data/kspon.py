"""KsponSpeech: the four ``.trn`` scripts and raw PCM → validated NeMo JSONL manifests.

Every script line ends in exactly one place: a manifest row of its split or a row of ``rejects.jsonl`` with
its reason. The corpus is only read; audio is converted under ``audio_dir``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import re
import stat
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

from korasr import __version__
from korasr.data.audio import AUDIO_FORMATS, MAX_PCM_BYTES, SAMPLE_RATE, convert_pcm
from korasr.errors import KorasrError
from korasr.fsutil import (
    DurableBatch,
    atomic_open,
    background_commits,
    folder_lock,
    sweep_temporaries,
    write_json,
)
from korasr.text.normalize import DISFLUENCIES, FORMS, normalize

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "eval_clean", "eval_other")
# Further evaluation splits beside KsponSpeech's own: any other ``eval_NAME.trn`` in the scripts folder (the sample
# corpus's eval_novel, a team's domain test set) is prepared like eval_clean into ``eval_NAME.jsonl``.
EXTRA_EVAL = re.compile(r"eval_[a-z0-9][a-z0-9_]{0,31}")
SCRIPT_DIRS = ("KsponSpeech_scripts", "scripts")
SEPARATOR = " :: "
EXPECTED_TREE = """\
expected a KsponSpeech tree (AIHub, https://aihub.or.kr, dataset "한국어 음성"; manual download):
  KsponSpeech/
    KsponSpeech_01/KsponSpeech_0001/KsponSpeech_000001.pcm ... KsponSpeech_05/
    KsponSpeech_eval/eval_clean/KsponSpeech_E00001.pcm ...  eval_other/
    KsponSpeech_scripts/{train,dev,eval_clean,eval_other}.trn   (or scripts/)"""


class CorpusError(KorasrError, RuntimeError):
    """The corpus tree or its scripts cannot be prepared; the message says which file and why."""


@dataclass(frozen=True)
class PrepareOptions:
    form: str = "spelling"
    disfluency: str = "df"
    unk: str | None = None
    audio_format: str = "wav"
    min_duration: float = 0.0
    max_duration: float | None = None

    def validate(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, not {self.form!r}")
        if self.disfluency not in DISFLUENCIES:
            raise ValueError(f"disfluency must be one of {DISFLUENCIES}, not {self.disfluency!r}")
        if self.audio_format not in AUDIO_FORMATS:
            raise ValueError(f"audio format must be one of {AUDIO_FORMATS}, not {self.audio_format!r}")
        if self.unk is not None and (not self.unk or any(c.isspace() for c in self.unk)):
            raise ValueError(f"unk symbol must be a non-empty word without spaces, not {self.unk!r}")


@dataclass(frozen=True)
class PrepareResult:
    out_dir: Path
    manifests: dict[str, Path]
    rejects: Path
    summary: Path
    skipped: bool


def script_splits(scripts_dir: Path) -> tuple[str, ...]:
    """KsponSpeech's four splits, then the extra evaluation splits the scripts folder holds, by name."""
    extras = sorted(p.stem for p in scripts_dir.glob("eval_*.trn") if EXTRA_EVAL.fullmatch(p.stem))
    return SPLITS + tuple(s for s in extras if s not in SPLITS)


def priority(splits: tuple[str, ...]) -> tuple[str, ...]:
    """The order in which lines claim ids and audio: every eval split first, so that a corpus error can never move
    an eval utterance into training; then dev, then train."""
    evals = tuple(s for s in splits if s.startswith("eval_"))
    return evals + tuple(s for s in splits if s not in evals and s != "train") + ("train",)


def find_scripts_dir(root: Path) -> Path:
    for name in SCRIPT_DIRS:
        if (root / name).is_dir():
            return root / name
    raise CorpusError(f"{root}: no {' or '.join(s + '/' for s in SCRIPT_DIRS)} folder\n{EXPECTED_TREE}")


def decode_line(raw: bytes) -> tuple[str | None, str | None]:
    """Decode one script line: UTF-8 first, CP949 as fallback; ``(None, None)`` when neither works."""
    for encoding in ("utf-8", "cp949"):
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return None, None


def _scan_script(path: Path) -> tuple[str, int]:
    """sha256 and line count of a script, read in blocks (a trailing line without newline counts)."""
    digest, lines, last = hashlib.sha256(), 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            lines += block.count(b"\n")
            last = block[-1:]
    return digest.hexdigest(), lines + (last != b"\n")


def _read_script(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            yield number, line.rstrip(b"\r\n")


# --- the per-utterance work, run in worker processes -------------------------------------------------------

_CTX: dict[str, object] = {}


def _init_worker(root: str, audio_dir: str, options: PrepareOptions) -> None:
    _CTX.update(root=Path(root), audio_dir=Path(audio_dir), options=options)


def _process(item: tuple[str, int, bytes, str | None], batch: DurableBatch) -> dict:
    """One script line → ``{"split", "line", "row" | "reject", ...}``. ``clash`` says why the line's audio
    destination belongs to another line (``_claim_destinations``): it is rejected before anything is written. The
    converted audio joins ``batch``: a row is valid once the batch is committed."""
    split, number, raw_line, clash = item
    root: Path = _CTX["root"]  # type: ignore[assignment]
    audio_dir: Path = _CTX["audio_dir"]  # type: ignore[assignment]
    opts: PrepareOptions = _CTX["options"]  # type: ignore[assignment]

    text, encoding = decode_line(raw_line)

    def reject(utt_id: str, reason: str, detail: str | None = None, **extra: object) -> dict:
        row = {"utt_id": utt_id, "split": split, "line": number, "reason": reason}
        if detail:
            row["detail"] = detail
        return {"split": split, "line": number, "encoding": encoding or "undecodable", "reject": {**row, **extra}}

    if text is None:
        return reject(f"{split}:{number}", "undecodable text", "neither UTF-8 nor CP949", raw_hex=raw_line.hex())
    rel, sep, raw = text.partition(SEPARATOR)
    rel = rel.strip()
    if not text.strip():
        return reject(f"{split}:{number}", "blank script line")
    if not sep or not rel:
        return reject(f"{split}:{number}", "malformed script line", f"no {SEPARATOR!r} after a path", raw=text)
    utt_id = Path(rel).stem
    if clash:
        return reject(utt_id, "audio path collision", clash, path=rel)
    norm = normalize(raw, opts.form, opts.disfluency, opts.unk)  # type: ignore[arg-type]
    if not norm.ok:
        return reject(utt_id, "malformed markup", norm.error, raw=raw)
    if not norm.text:
        return reject(utt_id, "empty transcript", "nothing left after normalization", raw=raw)
    confined = confine(root, audio_dir, rel, opts.audio_format)
    if isinstance(confined, str):
        return reject(utt_id, "unsafe audio path", confined, path=rel)
    src, dst = confined
    try:
        info = os.stat(src)
        if not stat.S_ISREG(info.st_mode):
            return reject(utt_id, "unreadable audio", f"{src}: not a regular file")
        if info.st_size > MAX_PCM_BYTES + 1:
            return reject(utt_id, "audio too large", f"{src}: {info.st_size} bytes, over the {MAX_PCM_BYTES} bytes "
                          "a WAV header can describe (about 37 h of 16 kHz audio: not one utterance)")  # fmt: skip
        samples, odd = convert_pcm(src, dst, opts.audio_format, batch=batch)
    except FileNotFoundError:
        return reject(utt_id, "missing audio", str(src))
    except OSError as e:
        return reject(utt_id, "unreadable audio", f"{src}: {e}")
    duration = samples / SAMPLE_RATE
    if samples == 0:
        return reject(utt_id, "empty audio", str(src))
    # Duration filters shape training data only: dev and eval stay whole so scores remain comparable.
    if split == "train" and duration < opts.min_duration:
        return reject(utt_id, "too short", f"{duration:.3f} s < {opts.min_duration} s")
    if split == "train" and opts.max_duration is not None and duration > opts.max_duration:
        return reject(utt_id, "too long", f"{duration:.3f} s > {opts.max_duration} s")
    row = {
        "audio_filepath": str(dst),
        "duration": duration,
        "text": norm.text,
        "utt_id": utt_id,
        "raw_text": raw,
    }
    return {"split": split, "line": number, "row": row, "odd": odd, "encoding": encoding}


def confine(root: Path, audio_dir: Path, rel: str, audio_format: str) -> tuple[Path, Path] | str:
    """The source under ``root`` and the destination under ``audio_dir`` of a script's audio path, or why it is
    refused: a NUL byte, an absolute path, ``..`` out of the root, or a path that resolves (through symlinks)
    outside it. ``root`` and ``audio_dir`` are resolved already; the output is confined lexically (it is ours)."""
    normal, refused = _lexical(rel)
    if refused:
        return refused
    src = root / normal
    try:
        # the folder resolved once per folder (a corpus has hundreds, not hundreds of thousands), the file itself
        # only when it is a link: realpath for every line cost 77 µs a line, a sixth of preparation
        real = os.path.join(_real_folder(str(src.parent)), src.name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if not real.startswith(os.path.join(root, "")):
            return f"path resolves outside the corpus root ({real}): symlinks out of the corpus are refused"
        # lexically inside --audio-dir: no absolute part and no .. left after normpath
        dst = audio_dir / f"{_split_suffix(normal)[0]}.{audio_format}"
    except (OSError, ValueError, RuntimeError) as e:  # a name too long, a symlink loop
        return f"unusable path: {e}"
    return src, dst


def _lexical(rel: str) -> tuple[str, str]:
    """``rel`` normalized, and why it is refused ("" when it is not): a NUL byte, an absolute path, ``..`` out of
    the root. Reads no file."""
    if "\0" in rel:
        return "", "NUL byte in the path"
    if os.path.isabs(rel) or rel[1:2] == ":":  # /x, or a Windows drive (C:\\x)
        return "", "absolute path (paths in the scripts are relative to the corpus root)"
    normal = os.path.normpath(rel)
    if normal == ".." or normal.startswith("../") or normal in (".", ""):
        return "", "path leaves the corpus root (..)" if normal != "." else "no file name"
    return normal, ""


def _split_suffix(normal: str) -> tuple[str, str]:
    """A normalized relative path cut before its suffix as ``PurePath.suffix`` sees it (from the last dot of the
    name, unless that dot starts or ends it): ``a/x.pcm`` → ``("a/x", ".pcm")``. Where a path's audio goes, in
    string operations: pathlib's ``with_suffix`` cost 14 µs a line, too slow for a pass over every script line."""
    name = normal[normal.rfind("/") + 1 :]
    dot = name.rfind(".")
    if 0 < dot < len(name) - 1:
        cut = len(normal) - len(name) + dot
        return normal[:cut], normal[cut:]
    return normal, ""


@functools.lru_cache(maxsize=65536)
def _real_folder(path: str) -> str:
    return os.path.realpath(path)


Move = tuple[Path, Path]  # a converted file's temporary name and its final one


def _process_chunk(items: list[tuple[str, int, bytes, str | None]]) -> tuple[list[dict], list[Move]]:
    """The chunk's rows, and the renames that put its converted audio under its final names: the caller makes them
    durable together (``fsutil.BackgroundCommits``: about one disk flush per chunk, overlapping the next chunk's
    conversion; a flush per file, 6 ms each on an ext4 virtual disk, would cost some 20 times the conversion)."""
    batch = DurableBatch()
    try:
        return [_process(item, batch) for item in items], batch.take()
    except BaseException:
        batch.discard()
        raise


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _run(
    items: Iterator[tuple[str, int, bytes, str | None]], jobs: int, init_args: tuple, chunk: int = 256
) -> Iterator[tuple[list[dict], list[Move]]]:
    """Process items in chunks, in order, with a bounded number of chunks in flight (memory stays flat)."""
    if jobs <= 1:
        _init_worker(*init_args)
        for lines in _chunks(items, chunk):
            yield _process_chunk(lines)
        return
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (the OOM killer, a signal) breaks the pool
    # and every pending result raises, where Pool would replace the worker and wait forever for its lost chunk.
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=init_args) as pool:
        pending: deque = deque()
        try:
            for batch in _chunks(items, chunk):
                pending.append(pool.submit(_process_chunk, batch))
                if len(pending) >= 2 * jobs:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise CorpusError(
                "a preparation worker process died (killed by the OOM killer or a signal?): nothing was published; "
                "rerun the same command, converted audio is kept and the run resumes (fewer --jobs use less memory)"
            ) from None


# --- the stage ---------------------------------------------------------------------------------------------


def _fingerprint(options: PrepareOptions, root: Path, audio_dir: Path, script_hashes: dict[str, str]) -> str:
    record = {
        "korasr": __version__,
        "options": asdict(options),
        "root": str(root),
        "audio_dir": str(audio_dir),
        "scripts": script_hashes,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _claim_destinations(audio_dir: Path, scripts: dict[str, Path], audio_format: str) -> dict[int, str]:
    """The script lines whose audio would land on a destination an earlier line owns, packed as split index << 32 |
    line number, each with the reason naming that line. ``x.pcm`` and ``x.wav`` in one folder both convert to
    ``x.wav``: without this, the later one's conversion replaced the earlier one's audio under its row.

    Read over every script before any worker converts a file. Lines claim destinations in ``priority`` order
    (eval_clean, eval_other, any extra eval split, dev, train), then line order, as duplicate ids do, so an eval line
    always keeps its audio. A line claims by its path alone, whatever its transcript or whether its file exists. A path refused on
    its face (NUL, absolute, ``..``: ``_lexical``) claims nothing; one that ``confine`` refuses later, for a symlink
    out of the corpus, may have claimed (that check reads the disk, 40 µs a line). The same source file listed twice
    is no collision: it converts to the same bytes, and the second line is rejected as a duplicate id.
    """
    suffixes: dict[str, int] = {}  # a source's suffix → a small number; same base + same suffix = same file
    owners: dict[str, int] = {}  # path without suffix → suffix number << 40 | split index << 32 | line number
    clashes: dict[int, str] = {}
    splits = tuple(scripts)
    for split in priority(splits):
        index = splits.index(split) << 32
        for number, raw_line in _read_script(scripts[split]):
            text, _ = decode_line(raw_line)
            rel, sep, _ = (text or "").partition(SEPARATOR)
            normal, refused = _lexical(rel.strip()) if sep and rel.strip() else ("", "no path")
            if refused:
                continue
            base, suffix = _split_suffix(normal)
            suffix_id = suffixes.setdefault(suffix, len(suffixes))
            owner = owners.setdefault(base, suffix_id << 40 | index | number)
            if owner >> 40 != suffix_id:
                dst = audio_dir / f"{base}.{audio_format}"
                clashes[index | number] = (
                    f"{dst} is already the audio of {splits[owner >> 32 & 0xFF]}.trn line {owner & 0xFFFFFFFF} (the "
                    f"paths differ only in extension): the first line in the order {', '.join(priority(splits))}, "
                    "then "
                    "line order, keeps it"
                )
    return clashes


def prepare_kspon(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    audio_dir: str | os.PathLike[str] = "data/kspon/audio",
    options: PrepareOptions | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> PrepareResult:
    """Prepare KsponSpeech: write ``<out_dir>/{train,dev,eval_clean,eval_other}.jsonl`` (and ``eval_NAME.jsonl`` for
    each extra ``eval_NAME.trn``: ``script_splits``), ``rejects.jsonl`` and ``prepare.json``. Skips the work when
    ``prepare.json`` records the same scripts, options and paths.

    The writing holds the locks of ``out_dir`` and ``audio_dir`` (``folder_lock``): while another live run writes
    into either folder this one stops at once with ``FolderInUseError``, before writing any output. The check that
    skips the work only reads, and takes no lock: it sees the last finished run's ``prepare.json`` or none, since a
    run removes that file before rewriting anything and writes it last."""
    started = time.perf_counter()
    options = options or PrepareOptions()
    options.validate()
    root = Path(root).resolve()
    out_dir = Path(out_dir).resolve()
    audio_dir = Path(audio_dir).resolve()
    if not root.is_dir():
        raise CorpusError(f"{root}: no such directory\n{EXPECTED_TREE}")
    scripts_dir = find_scripts_dir(root)
    scripts = {split: scripts_dir / f"{split}.trn" for split in script_splits(scripts_dir)}
    missing = [str(p) for p in scripts.values() if not p.is_file()]
    if missing:
        raise CorpusError(f"missing script(s): {', '.join(missing)}\n{EXPECTED_TREE}")
    if audio_dir == root or root in audio_dir.parents:
        raise CorpusError(f"--audio-dir {audio_dir} lies inside the corpus {root}: the corpus is read-only")

    scanned = {split: _scan_script(path) for split, path in scripts.items()}
    fingerprint = _fingerprint(options, root, audio_dir, {s: h for s, (h, _) in scanned.items()})
    manifests = {split: out_dir / f"{split}.jsonl" for split in scripts}
    result = PrepareResult(out_dir, manifests, out_dir / "rejects.jsonl", out_dir / "prepare.json", False)
    if _up_to_date(result, fingerprint):
        log.info("%s is up to date (same scripts, options and paths): nothing to do", out_dir)
        return PrepareResult(**{**asdict(result), "skipped": True})
    with folder_lock(out_dir, audio_dir):
        return _write(root, audio_dir, scripts, scanned, fingerprint, result, options, jobs, progress, started)


def _write(root: Path, audio_dir: Path, scripts: dict[str, Path], scanned: dict[str, tuple[str, int]],
           fingerprint: str, result: PrepareResult, options: PrepareOptions, jobs: int, progress: bool,
           started: float) -> PrepareResult:  # fmt: skip
    """The writing half of ``prepare_kspon``; the caller holds the locks of ``result.out_dir`` and ``audio_dir``."""
    from tqdm import tqdm

    out_dir, manifests = result.out_dir, result.manifests
    total_lines = sum(n for _, n in scanned.values())
    log.info(
        "preparing KsponSpeech from %s → %s (audio: %s as %s), %d script lines, %d jobs, options %s",
        root, out_dir, audio_dir, options.audio_format, total_lines, jobs, asdict(options),
    )  # fmt: skip
    # With both locks held no other run writes here: every temporary present is a dead run's (sweep_temporaries).
    swept = sweep_temporaries(audio_dir)
    if swept:
        log.info("removed %d temporary audio file(s) left by an interrupted run under %s", swept, audio_dir)
    # A stale prepare.json must never vouch for a half-rewritten set of manifests; temporaries left by a
    # killed run go too.
    result.summary.unlink(missing_ok=True)
    for path in [*manifests.values(), result.rejects, result.summary]:
        for stale in out_dir.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)

    # First occurrence of each id, packed as split index << 32 | line number (memory: ~170 B per utterance,
    # measured by bench/prepare_memory.py).
    seen: dict[str, int] = {}
    counts: dict[str, dict] = {}
    odd_ids: list[str] = []
    odd_count = 0
    splits = tuple(scripts)
    encodings: dict[str, Counter] = {split: Counter() for split in splits}

    clashes = _claim_destinations(audio_dir, scripts, options.audio_format)
    if clashes:
        log.warning("%d script line(s) would convert onto audio another line owns: rejected", len(clashes))

    def items() -> Iterator[tuple[str, int, bytes, str | None]]:
        for split in priority(splits):
            index = splits.index(split) << 32
            for number, line in _read_script(scripts[split]):
                yield split, number, line, clashes.get(index | number)

    for split in splits:
        counts[split] = {"lines": scanned[split][1], "utterances": 0, "seconds": 0.0, "rejects": Counter()}
    bar = tqdm(total=total_lines, unit="utt", desc="prepare", disable=not progress, smoothing=0.1)
    with contextlib.ExitStack() as outputs:  # on any error every temporary file is removed
        files = {split: outputs.enter_context(atomic_open(path)) for split, path in manifests.items()}
        rejects_file = outputs.enter_context(atomic_open(result.rejects))
        # entered last, so left first: every converted file is on the disk before a manifest naming it is renamed
        commits = outputs.enter_context(background_commits())

        def converted() -> Iterator[dict]:
            for outs, moves in _run(items(), jobs, (str(root), str(audio_dir), options)):
                commits.submit(moves)
                yield from outs

        for out in converted():
            bar.update()
            split = out["split"]
            encodings[split][out["encoding"]] += 1
            if "row" in out and out["row"]["utt_id"] in seen:
                first = seen[out["row"]["utt_id"]]
                first_split, first_line = splits[first >> 32], first & 0xFFFFFFFF
                out = {"split": split, "encoding": out["encoding"], "reject": {
                    "utt_id": out["row"]["utt_id"], "split": split, "line": out["line"],
                    "reason": "duplicate utterance id", "detail": f"first in {first_split}.trn line {first_line}",
                }}  # fmt: skip
            if "row" in out:
                row = out["row"]
                seen[row["utt_id"]] = splits.index(split) << 32 | out["line"]
                files[split].write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[split]["utterances"] += 1
                counts[split]["seconds"] += row["duration"]
                if out["odd"]:
                    odd_count += 1
                    if len(odd_ids) < 100:
                        odd_ids.append(row["utt_id"])
            else:
                rejects_file.write(json.dumps(out["reject"], ensure_ascii=False) + "\n")
                counts[split]["rejects"][out["reject"]["reason"]] += 1
        bar.close()
        _check(counts, scripts)

    elapsed = time.perf_counter() - started
    summary = {
        "korasr_version": __version__,
        "python": platform.python_version(),
        "corpus_root": str(root),
        "audio_dir": str(audio_dir),
        "options": asdict(options),
        "jobs": jobs,
        "fingerprint": fingerprint,
        "scripts": {
            split: {
                "path": str(scripts[split]),
                "sha256": scanned[split][0],
                "lines": scanned[split][1],
                "encodings": dict(encodings[split]),
            }
            for split in splits
        },
        "counts": {
            split: {
                "lines": c["lines"],
                "utterances": c["utterances"],
                "hours": round(c["seconds"] / 3600, 4),
                "rejected": sum(c["rejects"].values()),
                "rejects_by_reason": dict(sorted(c["rejects"].items())),
            }
            for split, c in counts.items()
        },
        "odd_byte_files": {"count": odd_count, "first_utt_ids": odd_ids},
        "seconds_taken": round(elapsed, 3),
    }
    write_json(result.summary, summary)
    _log_summary(summary, elapsed)
    return result


def _check(counts: dict[str, dict], scripts: dict[str, Path]) -> None:
    """Invariants checked before any output gets its final name."""
    for split, c in counts.items():
        accounted = c["utterances"] + sum(c["rejects"].values())
        if accounted != c["lines"]:
            raise CorpusError(f"{scripts[split]}: {c['lines']} lines but {accounted} rows + rejects")
        if c["lines"] and c["utterances"] == 0 and c["rejects"].get("missing audio") == c["lines"]:
            raise CorpusError(
                f"{scripts[split]}: none of its {c['lines']} audio files exists under the corpus root\n" + EXPECTED_TREE
            )


def _up_to_date(result: PrepareResult, fingerprint: str) -> bool:
    try:
        previous = json.loads(result.summary.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    outputs = [*result.manifests.values(), result.rejects]
    return previous.get("fingerprint") == fingerprint and all(p.is_file() for p in outputs)


def _log_summary(summary: dict, elapsed: float) -> None:
    lines = [f"{'split':<11} {'lines':>8} {'utterances':>10} {'hours':>8} {'rejected':>8}"]
    for split, c in summary["counts"].items():
        lines.append(f"{split:<11} {c['lines']:>8} {c['utterances']:>10} {c['hours']:>8.2f} {c['rejected']:>8}")
    for split, c in summary["counts"].items():
        for reason, n in c["rejects_by_reason"].items():
            lines.append(f"  rejected from {split}: {n} × {reason}")
    odd = summary["odd_byte_files"]["count"]
    lines.append(f"odd-length PCM files (trailing byte dropped): {odd}; took {elapsed:.1f} s")
    log.info("prepared:\n%s", "\n".join(lines))
