"""NeMo manifests ↔ lhotse Shar shards, for training on many nodes without loose files.

``pack_shards`` writes the utterances of one or more manifests as shards of a set number of utterances with lhotse's
own Shar writer: ``shar/recording.NNNNNN.tar`` (FLAC audio) and ``shar/cuts.NNNNNN.jsonl.gz`` (cuts with their
transcripts and every other manifest field), and ``index.json`` beside ``shar/``: the inputs, the options, and each
shard's utterance count and seconds as read back from the written files. ``shar/`` holds nothing else, so stock
lhotse and NeMo read it as it is (``CutSet.from_shar(in_dir=...)``, ``shar_path``). ``check_shards`` verifies a folder
against its index; ``unpack_shards`` turns shards back into a manifest and 16-bit WAV files.

Every manifest line is validated before a byte is written (JSON object, audio that exists, a duration, non-empty
text, a unique id usable as a file name) and a bad one stops the run with its file and line. Output folders are
written beside their final name and renamed into place (:func:`korasr.fsutil.staged_dir`); a rerun whose recorded
inputs and options match is skipped.

lhotse imports torch: it is imported inside the functions that need it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import re
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from korasr import __version__
from korasr.data.audio import SAMPLE_RATE
from korasr.errors import KorasrError
from korasr.fsutil import ArtifactKind, sha256_file, staged_dir, write_json

log = logging.getLogger(__name__)

FORMAT = "korasr-shards/1"
INDEX = "index.json"
SHAR = "shar"  # the lhotse Shar folder inside a shard folder: cuts.NNNNNN.jsonl.gz and recording.NNNNNN.tar only
AUDIO_FORMAT = "flac"
SHARDS_FOLDER = ArtifactKind("shards", (INDEX, f'"format": "{FORMAT}"'), (INDEX, SHAR))
UNPACK_FORMAT = "korasr-unpacked-shards/1"
UNPACK_RECORD = "unpack.json"
UNPACKED_FOLDER = ArtifactKind("unpacked shards", (UNPACK_RECORD, f'"format": "{UNPACK_FORMAT}"'),
                               (UNPACK_RECORD, "*.jsonl", "audio"))  # fmt: skip

DEFAULT_SHARD_SIZE = 1000  # utterances, as `lhotse shar export -s 1000`
MAX_SHARD_SIZE = 100_000
MAX_WORLD_SIZE = 65_536
MAX_LINE_BYTES = 1 << 20  # one manifest row; KsponSpeech's are about 300 bytes
MAX_UTTERANCE_SECONDS = 3600.0  # training utterances are seconds long; an hour is a corrupt row or a wrong file
DURATION_TOLERANCE = 0.02  # seconds between a row's duration and its audio's (prepare writes them equal)
ID_PATTERN = re.compile(r"\w[\w.\-]{0,199}")  # utterance ids become file names when unpacked
MANIFEST_KEYS = ("audio_filepath", "duration", "offset", "text")  # the rest travels as the cut's custom fields


class ShardError(KorasrError, ValueError):
    """A manifest line, a shard folder or a world size that shards cannot be made or used with; the message names the
    file (and line) and the reason."""


@dataclass(frozen=True)
class ShardResult:
    out: Path
    index: dict
    skipped: bool


@dataclass(frozen=True)
class Row:
    """One validated manifest line: where it stands, its id, its absolute audio path and the row itself."""

    manifest: str
    line: int
    utt_id: str
    audio: str
    row: dict

    @property
    def where(self) -> str:
        return f"{self.manifest}:{self.line}"


# --- reading manifests ---------------------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, each bounded to MAX_LINE_BYTES before it is parsed."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise ShardError(f"{path}:{number}: a line over {MAX_LINE_BYTES} bytes: not a manifest row")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ShardError(f"{path}:{number}: not UTF-8 text") from None
            if text.strip():
                yield number, text


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_row(manifest: Path, number: int, text: str) -> Row:
    """One manifest line, checked: a JSON object with an existing ``audio_filepath`` (relative paths are relative to
    the manifest's folder), a duration in (0, MAX_UTTERANCE_SECONDS], an optional offset >= 0, non-empty ``text`` and
    an id (``utt_id``, else the audio file's stem) fit for a file name."""
    where = f"{manifest}:{number}"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ShardError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise ShardError(f"{where}: not a JSON object")
    audio = row.get("audio_filepath")
    if not isinstance(audio, str) or not audio:
        raise ShardError(f"{where}: no audio_filepath")
    path = Path(audio) if Path(audio).is_absolute() else manifest.parent / audio
    if not path.is_file():
        raise ShardError(f"{where}: audio file {path} does not exist")
    duration = _number(row, "duration")
    if duration is None or not 0 < duration <= MAX_UTTERANCE_SECONDS:
        raise ShardError(f"{where}: duration {row.get('duration')!r} is not a number in (0, {MAX_UTTERANCE_SECONDS:g}]")
    if "offset" in row and (_number(row, "offset") is None or row["offset"] < 0):
        raise ShardError(f"{where}: offset {row.get('offset')!r} is not a number >= 0")
    if not isinstance(row.get("text"), str) or not row["text"].strip():
        raise ShardError(f"{where}: empty or missing text")
    utt_id = row.get("utt_id", path.stem)
    if not isinstance(utt_id, str) or not ID_PATTERN.fullmatch(utt_id):
        raise ShardError(f"{where}: utterance id {utt_id!r} is not 1-200 letters, digits, '_', '.' or '-' "
                         "(ids become file names)")  # fmt: skip
    return Row(str(manifest), number, utt_id, str(path.resolve()), row)


def read_rows(manifests: list[Path]) -> Iterator[Row]:
    """Every row of the manifests in order, validated; ids unique across them all."""
    seen: dict[str, tuple[int, int]] = {}
    for m, manifest in enumerate(manifests):
        for number, text in _lines(manifest):
            row = parse_row(manifest, number, text)
            if row.utt_id in seen:
                first, line = seen[row.utt_id]
                raise ShardError(f"{row.where}: utterance id {row.utt_id} already at {manifests[first]}:{line}")
            seen[row.utt_id] = (m, number)
            yield row


def scan(manifests: list[Path]) -> tuple[list[str], dict]:
    """Every line checked (before anything is written): the ids in order, and what a rerun compares: each manifest's
    content, and every audio file's path, size and modification time."""
    ids, audio = [], hashlib.sha256()
    for row in read_rows(manifests):
        st = os.stat(row.audio)
        audio.update(f"{row.utt_id}\t{row.audio}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        ids.append(row.utt_id)
    inputs = {"manifests": [{"path": str(m.resolve()), "sha256": sha256_file(m)} for m in manifests],
              "audio": audio.hexdigest()}  # fmt: skip
    return ids, inputs


# --- shard counts and world sizes ----------------------------------------------------------------------------------


def shard_count(utterances: int, shard_size: int) -> int:
    return max(1, math.ceil(utterances / shard_size))


def _shard_size_for(utterances: int, shard_size: int, world_size: int) -> tuple[int, int] | None:
    """The largest shard size up to ``shard_size`` whose shard count is a multiple of ``world_size``, with that
    count (None when there are fewer utterances than ranks)."""
    if utterances < world_size:
        return None
    count = math.ceil(shard_count(utterances, shard_size) / world_size) * world_size
    while count <= utterances:
        size = math.ceil(utterances / count)
        if shard_count(utterances, size) == count:
            return size, count
        count += world_size
    return None


def check_world_size(shards: int, utterances: int, shard_size: int, world_size: int) -> None:
    """Ranks that split shards between them (lhotse's ``split_for_dataloading``, NeMo's tarred ``scatter``) each take
    ``shards[rank::world_size]``: whole shards, the same number per rank only when ``world_size`` divides the shard
    count. Raises :class:`ShardError` naming a shard size (and the world sizes) that would do."""
    if shards % world_size == 0:
        return
    divisors = [d for d in range(1, shards + 1) if shards % d == 0]
    fix = _shard_size_for(utterances, shard_size, world_size)
    use = (f"use --shard-size {fix[0]} ({fix[1]} shards, {fix[1] // world_size} per rank), or " if fix else
           f"{utterances} utterances cannot fill {world_size} ranks; use ")  # fmt: skip
    per = (
        f"{shards // world_size} or {shards // world_size + 1}"
        if shards > world_size
        else f"{shards // world_size + 1} or 0"
    )
    raise ShardError(f"{shards} shards do not divide among {world_size} ranks (each would hold {per} whole shards, and "
                     f"a rank that runs out first leaves the others waiting): {use}a world size that divides {shards} "
                     f"({', '.join(map(str, divisors))})")  # fmt: skip


# --- writing shards ------------------------------------------------------------------------------------------------


def _cut(row: Row):  # type: ignore[no-untyped-def]
    """The lhotse cut of one row: its recording (16 kHz mono, checked against the row's duration), one supervision
    with its text, and the row's other fields as custom fields."""
    from lhotse import Recording, SupervisionSegment

    try:
        recording = Recording.from_file(row.audio, recording_id=row.utt_id)
    except Exception as e:  # lhotse raises whatever its audio backends raise
        raise ShardError(f"{row.where}: {row.audio} is not readable audio ({str(e)[:200]})") from None
    if recording.sampling_rate != SAMPLE_RATE or recording.num_channels != 1:
        raise ShardError(f"{row.where}: {row.audio} is {recording.sampling_rate} Hz with {recording.num_channels} "
                         f"channels; shards hold {SAMPLE_RATE} Hz mono")  # fmt: skip
    offset, duration = float(row.row.get("offset", 0.0)), float(row.row["duration"])
    cut = recording.to_cut()
    if offset or abs(duration - recording.duration) > DURATION_TOLERANCE:
        if offset + duration > recording.duration + DURATION_TOLERANCE:
            raise ShardError(f"{row.where}: offset {offset:g} s + duration {duration:g} s runs past the "
                             f"{recording.duration:g} s of {row.audio}")  # fmt: skip
        cut = cut.truncate(offset=offset, duration=duration, preserve_id=True)
    cut.supervisions = [SupervisionSegment(id=row.utt_id, recording_id=row.utt_id, start=0.0, duration=cut.duration,
                                           text=row.row["text"])]  # fmt: skip
    custom = {k: v for k, v in row.row.items() if k not in MANIFEST_KEYS}
    cut.custom = custom or None
    return cut


def write_shard(shar_dir: str, shard: int, rows: list[Row], shard_size: int) -> None:
    """Shard number ``shard`` of ``shar_dir``: ``rows`` (at most ``shard_size``) through lhotse's SharWriter."""
    from lhotse.shar import SharWriter

    with SharWriter(shar_dir, fields={"recording": AUDIO_FORMAT}, shard_size=shard_size, shard_offset=shard) as w:
        for row in rows:
            cut = _cut(row)
            try:
                w.write(cut)
            except Exception as e:  # a file whose header reads but whose samples do not decode
                raise ShardError(f"{row.where}: {row.audio} does not decode ({str(e)[:200]})") from None


def _shareable(folder: Path) -> None:
    """The umask's permissions, not the temporary folder's private 0700: other nodes' jobs read shards too."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def pack_shards(manifests: list[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                shard_size: int = DEFAULT_SHARD_SIZE, world_size: int | None = None, jobs: int = 1,
                force: bool = False, progress: bool = True) -> ShardResult:  # fmt: skip
    """Write ``manifests`` (in order) as Shar shards of ``shard_size`` utterances under ``out/shar/`` with
    ``out/index.json``. With ``world_size``, refuse a shard count it does not divide. Skipped when ``out``'s index
    records the same manifests, audio files and options."""
    started = time.perf_counter()
    paths, out = [Path(m) for m in manifests], Path(out).resolve()
    if not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise ShardError(f"shard size {shard_size} is not between 1 and {MAX_SHARD_SIZE} utterances")
    for m in paths:
        if not m.is_file():
            raise ShardError(f"{m}: no such manifest")
    ids, inputs = scan(paths)
    if not ids:
        raise ShardError(f"{', '.join(map(str, paths))}: no utterances")
    shards = shard_count(len(ids), shard_size)
    if world_size:
        check_world_size(shards, len(ids), shard_size, world_size)
    options = {"shard_size": shard_size, "audio_format": AUDIO_FORMAT}
    previous = _read_index_or_none(out)
    if previous and previous.get("inputs") == inputs and previous.get("options") == options:
        log.info("%s is up to date with %s: nothing to do", out, ", ".join(map(str, paths)))
        return ShardResult(out, previous, True)
    if previous:
        log.info("%s was made from other inputs or options: writing it again", out)
    log.info("packing %d utterances from %s into %d shards of up to %d (%s) → %s", len(ids),
             ", ".join(map(str, paths)), shards, shard_size, AUDIO_FORMAT, out)  # fmt: skip
    with staged_dir(out, SHARDS_FOLDER, force=force) as staging:
        _shareable(staging)
        _write_all(paths, staging / SHAR, shard_size, jobs, progress, len(ids))
        entries = verify_shar(staging / SHAR, list(_chunks(iter(ids), shard_size)))
        seconds = sum(e["seconds"] for e in entries)
        index = {"format": FORMAT, "name": paths[0].stem, "inputs": inputs, "options": options,
                 "utterances": len(ids), "shards": len(entries), "seconds": round(seconds, 3),
                 "hours": round(seconds / 3600, 4), "shard_list": entries, "korasr_version": __version__,
                 "lhotse_version": _lhotse_version(), "seconds_taken": round(time.perf_counter() - started, 2)}  # fmt: skip
        write_json(staging / INDEX, index)
    log.info("%d utterances (%.2f h) in %d shards → %s", len(ids), index["hours"], len(entries), out)
    return ShardResult(out, index, False)


def _advance(bar, n: int):  # type: ignore[no-untyped-def]
    return lambda _future: bar.update(n)


def _write_all(paths: list[Path], shar: Path, shard_size: int, jobs: int, progress: bool, total: int) -> None:
    """Every shard, in ``jobs`` processes, with at most two shards of rows per process in flight."""
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    from tqdm import tqdm

    shar.mkdir()
    chunks = enumerate(_chunks(read_rows(paths), shard_size))
    with tqdm(total=total, unit="utt", desc="shard", disable=not progress, smoothing=0.1) as bar:
        if jobs <= 1:
            for number, chunk in chunks:
                write_shard(str(shar), number, chunk, shard_size)
                bar.update(len(chunk))
            return
        with ProcessPoolExecutor(jobs) as pool:
            pending: set = set()
            for number, chunk in chunks:
                future = pool.submit(write_shard, str(shar), number, chunk, shard_size)
                future.add_done_callback(_advance(bar, len(chunk)))
                pending.add(future)
                if len(pending) >= 2 * jobs:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        f.result()
            for f in pending:
                f.result()


def _lhotse_version() -> str:
    import lhotse

    return lhotse.__version__


# --- reading shards back -------------------------------------------------------------------------------------------


def _shard_name(field: str, number: int) -> str:
    return f"cuts.{number:06d}.jsonl.gz" if field == "cuts" else f"{field}.{number:06d}.tar"


def read_cuts(path: Path) -> list[dict]:
    """The cut dicts of one ``cuts.NNNNNN.jsonl.gz`` (metadata only: no audio is read)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path}: not a readable cut manifest ({e})") from None


def _tar_ids(path: Path) -> list[str]:
    """The cut ids of a recording tar, in order (each cut is ``ID.flac`` followed by its ``ID.json``)."""
    try:
        with tarfile.open(path) as tar:
            return [m.name.rsplit(".", 1)[0] for m in tar if not m.name.endswith(".json")]
    except (OSError, tarfile.TarError) as e:
        raise ShardError(f"{path}: not a readable tar ({e})") from None


def verify_shar(shar: Path, expected: list[list[str]] | None = None) -> list[dict]:
    """Read every shard of ``shar`` back (cut manifests, tar member names): each shard's cuts and audio name the same
    ids in the same order, no id is in two shards, and (with ``expected``) shard N holds exactly ``expected[N]``.
    Returns one index entry per shard: file names, utterances, seconds, first and last id."""
    cuts_files = sorted(shar.glob("cuts.*.jsonl.gz"))
    count = len(expected) if expected is not None else len(cuts_files)
    if len(cuts_files) != count or sorted(p.name for p in shar.iterdir()) != sorted(
        _shard_name(f, n) for n in range(count) for f in ("cuts", "recording")
    ):
        raise ShardError(f"{shar}: expected cuts and recording files for shards 0 to {count - 1}, found "
                         f"{', '.join(sorted(p.name for p in shar.iterdir())[:6])}...")  # fmt: skip
    entries, owner = [], {}
    for number in range(count):
        cuts = read_cuts(shar / _shard_name("cuts", number))
        ids = [c.get("id") for c in cuts]
        if _tar_ids(shar / _shard_name("recording", number)) != ids:
            raise ShardError(f"{shar / _shard_name('recording', number)}: its audio does not match the cuts of "
                             f"{_shard_name('cuts', number)} one to one")  # fmt: skip
        if expected is not None and ids != expected[number]:
            raise ShardError(f"{shar / _shard_name('cuts', number)}: holds other utterances than were written to it")
        for i in ids:
            if i in owner:
                raise ShardError(f"{shar}: utterance {i} is in shards {owner[i]} and {number}")
            owner[i] = number
        entries.append({"cuts": _shard_name("cuts", number), "recording": _shard_name("recording", number),
                        "utterances": len(ids), "seconds": round(sum(float(c["duration"]) for c in cuts), 3),
                        "first": ids[0] if ids else None, "last": ids[-1] if ids else None})  # fmt: skip
    return entries


def _read_index_or_none(folder: Path) -> dict | None:
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return index if isinstance(index, dict) and index.get("format") == FORMAT else None


def read_index(folder: str | os.PathLike[str]) -> dict:
    """A shard folder's ``index.json`` (checked: korasr's format, and every shard file it lists is present)."""
    folder = Path(folder)
    index = _read_index_or_none(folder)
    if index is None:
        raise ShardError(f"{folder}: not a shard folder (no {INDEX} of format {FORMAT}; make one with "
                         "`korasr shard pack`)")  # fmt: skip
    for entry in index["shard_list"]:
        for field in ("cuts", "recording"):
            if not (folder / SHAR / entry[field]).is_file():
                raise ShardError(f"{folder / SHAR / entry[field]}: missing (listed in {folder / INDEX})")
    return index


def shard_files(folder: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """The cut manifests and recording tars of a shard folder, shard by shard (lhotse's ``fields`` form)."""
    folder = Path(folder)
    entries = read_index(folder)["shard_list"]
    return {field: [folder / SHAR / e[field] for e in entries] for field in ("cuts", "recording")}


def check_shards(folder: str | os.PathLike[str], world_size: int | None = None) -> dict:
    """Verify a shard folder against its index (every shard read back: counts, seconds, ids one to one with the
    audio, no id twice) and, with ``world_size``, that it divides the shard count. Returns the index."""
    folder = Path(folder)
    index = read_index(folder)
    entries = verify_shar(folder / SHAR)
    recorded = [{k: e[k] for k in ("cuts", "recording", "utterances", "first", "last")} for e in index["shard_list"]]
    found = [{k: e[k] for k in ("cuts", "recording", "utterances", "first", "last")} for e in entries]
    if recorded != found or sum(e["utterances"] for e in entries) != index["utterances"]:
        raise ShardError(f"{folder / INDEX}: does not match the shards on disk (rewrite them with `korasr shard pack`)")
    if world_size:
        check_world_size(len(entries), index["utterances"], index["options"]["shard_size"], world_size)
    return index


# --- shards back to a manifest and audio files ---------------------------------------------------------------------


READER_FIELDS = ("shar_epoch", "shard_origin")  # what lhotse's Shar reader adds to each cut it reads


def _fields(cut) -> dict:  # type: ignore[no-untyped-def]
    """The row's own fields a cut carries (its custom fields, less what the reader added)."""
    return {k: v for k, v in (cut.custom or {}).items() if k not in READER_FIELDS}


def unpack_shards(folder: str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False,
                  progress: bool = True) -> ShardResult:  # fmt: skip
    """Write the utterances of a shard folder as ``out/audio/<id>.wav`` (16-bit PCM, the FLAC's samples exactly) and
    ``out/<name>.jsonl`` (the original rows: id, text, duration and every other field; ``audio_filepath`` the new
    file). Skipped when ``out/unpack.json`` records the same index."""
    import numpy as np
    import soundfile as sf
    from lhotse import CutSet
    from tqdm import tqdm

    folder, out = Path(folder).resolve(), Path(out).resolve()
    index = read_index(folder)
    source = {"shards": str(folder), "index_sha256": sha256_file(folder / INDEX)}
    try:
        record = json.loads((out / UNPACK_RECORD).read_text(encoding="utf-8"))
        if record.get("source") == source:
            log.info("%s is up to date with %s: nothing to do", out, folder)
            return ShardResult(out, index, True)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        pass
    manifest_name = f"{index['name']}.jsonl"
    cuts = CutSet.from_shar(fields={k: [str(p) for p in v] for k, v in shard_files(folder).items()})
    with staged_dir(out, UNPACKED_FOLDER, force=force) as staging:
        _shareable(staging)
        (staging / "audio").mkdir()
        rows = []
        for cut in tqdm(cuts, total=index["utterances"], unit="utt", desc="unpack", disable=not progress):
            if not ID_PATTERN.fullmatch(cut.id) or len(cut.supervisions) != 1:
                raise ShardError(f"{folder}: cut {cut.id!r} is not one utterance with an id fit for a file name")
            samples = np.clip(np.round(cut.load_audio()[0] * 32768.0), -32768, 32767).astype(np.int16)
            sf.write(staging / "audio" / f"{cut.id}.wav", samples, cut.sampling_rate, subtype="PCM_16")
            rows.append({"audio_filepath": str(out / "audio" / f"{cut.id}.wav"), "duration": cut.duration,
                         "text": cut.supervisions[0].text, **_fields(cut)})  # fmt: skip
        if len(rows) != index["utterances"]:
            raise ShardError(f"{folder}: {len(rows)} utterances read, {index['utterances']} in {INDEX}")
        with open(staging / manifest_name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_json(staging / UNPACK_RECORD, {"format": UNPACK_FORMAT, "source": source, "utterances": len(rows),
                                             "manifest": manifest_name, "korasr_version": __version__})  # fmt: skip
    log.info("%d utterances from %s → %s", len(rows), folder, out / manifest_name)
    return ShardResult(out, index, False)
