"""An archive run: list the input into numbered shards, transcribe the shards not yet done on Ray Data (a pool of
actors, :class:`korasr.archive.worker.Transcriber`), write each shard whole under a temporary name and rename it,
then the summary.

The output folder holds ``archive.json`` (what the run is: input, model, decoding, shard size, format; a resumed run
must match it), ``part-NNNNN.jsonl`` (or ``.parquet``) per shard, ``.done/part-NNNNN.json`` (a shard's counts,
written after its part: a shard is done when both are there), ``.inputs/`` (the listing, in shards) and
``summary.json``. A killed run started again lists nothing twice and transcribes only the shards not done; a part is
replaced whole, never appended to, so no row is ever written twice. A run holds the folder's lock
(``fsutil.folder_lock``) from start to end: a second run on the same folder stops at once, naming the first's PID,
and the temporaries of a killed run are removed before anything is written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from korasr.archive.sources import iter_entries, kind_of
from korasr.archive.worker import Settings, Transcriber, bundle
from korasr.errors import KorasrError
from korasr.fsutil import LOCK_NAME, TEMPORARY, atomic_open, folder_lock, sha256_file, sweep_temporaries, write_json

log = logging.getLogger(__name__)
FORMAT = "korasr-archive/1"
FORMATS = ("jsonl", "parquet")
ARCHIVE_JSON, SUMMARY_JSON, INPUTS, DONE = "archive.json", "summary.json", ".inputs", ".done"
# what archive.json may differ in on resume: how the work is spread, not what it computes
RESUMABLE = ("actors", "threads_per_actor", "gpus_per_actor", "address", "batch_size", "command", "started")


class ArchiveError(KorasrError, RuntimeError):
    """An output folder that is not this run's, or an input that cannot be listed."""


@dataclass
class ArchiveOptions:
    source: str
    out: Path
    model: Path  # an export folder
    model_label: str  # what each row's ``model`` says: models:/NAME/VERSION, or the export's folder and hash
    decoder_label: str = "greedy"
    settings: Settings = field(default_factory=Settings)
    lm: Path | None = None  # an LM folder to ship to the actors (--lm)
    fmt: str = "jsonl"
    shard_size: int = 1000
    actors: int | None = None  # default: the cluster's CPUs (GPUs with gpus_per_actor) over each actor's share
    gpus_per_actor: float = 0.0
    address: str | None = None  # an existing Ray cluster (else RAY_ADDRESS, else a local Ray started and stopped)
    force: bool = False
    progress: bool = True


def part_name(shard: int, fmt: str) -> str:
    return f"part-{shard:05d}.{fmt}"


def transcribe_archive(opts: ArchiveOptions) -> dict:
    """Transcribe ``opts.source`` into ``opts.out``; the summary (also written as ``summary.json``)."""
    if opts.fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {opts.fmt!r}")
    started = time.monotonic()
    _refuse_foreign(opts.out)  # before the lock: a folder that is not a run's gets nothing written into it
    with folder_lock(opts.out):  # one run per folder; a second stops at once, naming the first's PID
        # With the lock held no live run writes here: every temporary present is a killed run's half-written shard.
        swept = sweep_temporaries(opts.out)
        if swept:
            log.info("%s: removed %d temporary file(s) left by an interrupted run", opts.out, swept)
        record = _claim(opts)
        counts = _list_inputs(opts)
        done = _done_shards(opts.out, len(counts))
        pending = [k for k in range(len(counts)) if k not in done]
        log.info("%s: %d files in %d shards; %d shards done, %d to transcribe", opts.source, sum(counts), len(counts),
                 len(done), len(pending))  # fmt: skip
        this_run = Counter()
        if pending:
            this_run = _run(opts, record, pending, counts)
        return _summarize(opts, counts, this_run, time.monotonic() - started)


# --- the output folder -----------------------------------------------------------------------------------------


def _folder_sha256(folder: Path) -> str:
    """One hash of a folder's content: every file's relative path and SHA-256, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _fingerprint(opts: ArchiveOptions) -> dict:
    from korasr.runtime import GRAPHS

    s = opts.settings
    model_json = json.loads((opts.model / "model.json").read_text(encoding="utf-8"))
    # the decoder's label names the LM folder and the hotwords file; their content decides the transcripts
    lm = opts.lm if opts.lm is not None else (opts.model / s.lm if s.lm else None)  # --lm, or the export's own
    hotwords = "\n".join(s.hotword_lines).encode() if s.hotword_lines else None
    return {"format": FORMAT, "source": opts.source, "source_kind": kind_of(opts.source),
            "model": opts.model_label, "model_source_sha256": model_json.get("source_sha256"),
            "graph_sha256": sha256_file(opts.model / GRAPHS[s.precision]), "precision": s.precision,
            "decoder": opts.decoder_label, "lm_sha256": _folder_sha256(lm) if lm is not None else None,
            "hotwords_sha256": hashlib.sha256(hotwords).hexdigest() if hotwords is not None else None,
            "timestamps": s.timestamps, "chunk_seconds": s.chunk_seconds,
            "max_audio_seconds": s.max_audio_seconds, "shard_size": opts.shard_size, "output_format": opts.fmt,
            "actors": opts.actors, "threads_per_actor": s.threads, "gpus_per_actor": opts.gpus_per_actor,
            "address": opts.address, "batch_size": s.batch_size, "command": " ".join(sys.argv),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}  # fmt: skip


def _ours(entry: str) -> bool:
    return entry in (ARCHIVE_JSON, SUMMARY_JSON, INPUTS, DONE) or (
        entry.startswith("part-") or entry.startswith(".part-")
    )


def _entries(out: Path) -> list[str]:
    """What ``out`` holds, less the lock file (``folder_lock``'s, there from a run's first moment) and temporaries
    of a run's own files (a run killed while writing ``archive.json`` leaves one beside nothing else)."""
    if not out.is_dir():
        return []
    return sorted(e for e in os.listdir(out)
                  if e != LOCK_NAME and not (TEMPORARY.match(e) and _ours(e[1:].rsplit(".", 2)[0])))  # fmt: skip


def _refuse_foreign(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder holding anything but an archive run (no ``archive.json``)."""
    if out.exists() and not out.is_dir():
        raise ArchiveError(f"{out}: is a file, not a folder: choose another --out")
    entries = _entries(out)
    if entries and ARCHIVE_JSON not in entries:
        raise ArchiveError(f"{out}: not an archive run's folder (no {ARCHIVE_JSON}; it holds {', '.join(entries[:5])}"
                           f"{' …' if len(entries) > 5 else ''}): choose a new or empty --out")  # fmt: skip


def _claim(opts: ArchiveOptions) -> dict:
    """Record the run in ``archive.json``, or check that the folder holds this same run (then it resumes). A folder
    holding anything else is refused, naming what it holds; ``force`` starts a different run over, removing only
    what an archive run writes."""
    out, record = opts.out, _fingerprint(opts)
    _refuse_foreign(out)
    entries = _entries(out)
    if entries:
        old = json.loads((out / ARCHIVE_JSON).read_text(encoding="utf-8"))
        differ = sorted(k for k in set(old) | set(record) if k not in RESUMABLE and old.get(k) != record.get(k))
        if not differ:
            log.info("%s: resuming the run started %s", out, old.get("started"))
            return old
        if not opts.force:
            raise ArchiveError(f"{out}: holds another run (it differs in {', '.join(differ)}): choose another --out, "
                               "or pass --force to start over (removes that run's shards)")  # fmt: skip
        for entry in entries:
            if _ours(entry):
                path = out / entry
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        log.warning("%s: --force: removed the earlier run (it differed in %s)", out, ", ".join(differ))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / ARCHIVE_JSON, record)
    return record


def _list_inputs(opts: ArchiveOptions) -> list[int]:
    """The input, numbered and cut into shards of ``shard_size`` (``.inputs/in-NNNNN.jsonl``), streamed: memory
    holds one shard. Done once; ``.inputs/listing.json``, written last, says how many entries each shard has."""
    folder = opts.out / INPUTS
    listing = folder / "listing.json"
    if listing.is_file():
        return json.loads(listing.read_text(encoding="utf-8"))["shards"]
    folder.mkdir(exist_ok=True)
    counts: list[int] = []
    shard: list[dict] = []

    def flush() -> None:
        with atomic_open(folder / f"in-{len(counts):05d}.jsonl") as f:
            f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in shard)
        counts.append(len(shard))
        shard.clear()

    try:
        for index, entry in enumerate(iter_entries(opts.source)):
            shard.append({"index": index, **entry})
            if len(shard) == opts.shard_size:
                flush()
    except ValueError as e:
        raise ArchiveError(str(e)) from None
    if shard:
        flush()
    if not counts:
        raise ArchiveError(f"{opts.source}: no audio files to transcribe")
    write_json(listing, {"entries": sum(counts), "shards": counts})
    return counts


def _done_shards(out: Path, n: int) -> set[int]:
    done = set()
    for k in range(n):
        stats = out / DONE / f"part-{k:05d}.json"
        if stats.is_file() and (out / json.loads(stats.read_text(encoding="utf-8"))["file"]).is_file():
            done.add(k)
    return done


# --- transcription on Ray Data -----------------------------------------------------------------------------------


def _run(opts: ArchiveOptions, record: dict, pending: list[int], counts: list[int]) -> Counter:
    import ray

    address = opts.address or os.environ.get("RAY_ADDRESS")
    started_here, begun = not ray.is_initialized(), time.monotonic()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    try:
        totals = _transcribe_shards(opts, record, pending, counts)
        totals["ray_start_s"] = totals["first_result_s"] - begun
        return totals
    finally:
        if started_here:
            ray.shutdown()


def _pool_size(opts: ArchiveOptions) -> int:
    import ray

    if opts.actors:
        return opts.actors
    resources = ray.cluster_resources()
    if opts.gpus_per_actor:
        return max(1, int(resources.get("GPU", 0) // opts.gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // opts.settings.threads))


def _dataset(opts: ArchiveOptions, pending: list[int]):  # type: ignore[no-untyped-def]
    """The pending shards' entries as Ray Data blocks (one per shard, held in the object store, not in this
    process), each shard mapped by the actor pool."""
    import pyarrow as pa
    import pyarrow.json as pajson
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False  # ours shows files, audio hours, RTFx and the ETA
    entry = pa.schema([("index", pa.int64()), ("path", pa.string()), ("id", pa.string()), ("duration", pa.float64())])
    parse = pajson.ParseOptions(explicit_schema=entry)
    refs = [ray.put(pajson.read_json(opts.out / INPUTS / f"in-{k:05d}.jsonl", parse_options=parse)) for k in pending]
    files = ray.put(bundle(opts.model, opts.settings.precision, opts.lm))
    return ray.data.from_arrow_refs(refs).map_batches(
        Transcriber,
        fn_constructor_args=(files, opts.settings),
        batch_size=opts.settings.batch_size * 4,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=_pool_size(opts)),
        num_cpus=opts.settings.threads,
        num_gpus=opts.gpus_per_actor or None,
    )


def _transcribe_shards(opts: ArchiveOptions, record: dict, pending: list[int], counts: list[int]) -> Counter:
    """Consume the actors' rows as they come, write each shard when its last row arrives; totals of this run."""
    from tqdm import tqdm

    waiting: dict[int, list[dict]] = {}
    totals: Counter = Counter()
    started = time.monotonic()
    bar = tqdm(total=sum(counts[k] for k in pending), unit="file", desc="transcribing", disable=not opts.progress,
               dynamic_ncols=True)  # fmt: skip
    with bar:
        for batch in _dataset(opts, pending).iter_batches(batch_size=None, batch_format="pyarrow"):
            totals["first_result_s"] = totals["first_result_s"] or time.monotonic()
            for row in batch.to_pylist():
                shard = row["index"] // opts.shard_size
                waiting.setdefault(shard, []).append(row)
                failed = row["error_kind"] is not None
                totals["failed"] += failed
                totals["audio_seconds"] += 0.0 if failed else row["duration"] or 0.0
                if len(waiting[shard]) == counts[shard]:
                    _write_shard(opts, record, shard, waiting.pop(shard))
            totals["files"] += batch.num_rows
            bar.update(batch.num_rows)
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.set_postfix_str(f"{totals['audio_seconds'] / 3600:.2f} h audio, RTFx {totals['audio_seconds'] / elapsed:.1f}, "
                                f"{totals['failed']} failed")  # fmt: skip
    if waiting:  # every row of a pending shard comes back; a shard left here is a bug, not a partial write
        raise ArchiveError(f"shards {sorted(waiting)} came back incomplete; run again to redo them")
    return totals


def _output_rows(rows: list[dict], record: dict) -> Iterator[dict]:
    for row in sorted(rows, key=lambda r: r["index"]):
        out = {"index": row["index"], "path": row["path"], "id": row["id"], "text": row["text"],
               "duration": None if row["duration"] is None else round(row["duration"], 3),
               "confidence": row["confidence"]}  # fmt: skip
        if record["timestamps"]:
            out["words"] = json.loads(row["words"]) if row["words"] else None
        out.update(decoder=record["decoder"], model=record["model"], error_kind=row["error_kind"], error=row["error"])
        yield out


def _write_shard(opts: ArchiveOptions, record: dict, shard: int, rows: list[dict]) -> None:
    name = part_name(shard, opts.fmt)
    out_rows = list(_output_rows(rows, record))
    if opts.fmt == "jsonl":
        with atomic_open(opts.out / name) as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_open(opts.out / name, "wb") as f:
            pq.write_table(pa.Table.from_pylist(out_rows), f)
    errors = Counter(r["error_kind"] for r in out_rows if r["error_kind"])
    (opts.out / DONE).mkdir(exist_ok=True)
    write_json(opts.out / DONE / f"part-{shard:05d}.json", {
        "file": name, "files": len(out_rows), "failed": sum(errors.values()), "errors": dict(errors),
        "audio_seconds": round(sum(r["duration"] or 0.0 for r in out_rows if not r["error_kind"]), 3)})  # fmt: skip


# --- the summary -------------------------------------------------------------------------------------------------


def _summarize(opts: ArchiveOptions, counts: list[int], this_run: Counter, wall: float) -> dict:
    shards = [json.loads((opts.out / DONE / f"part-{k:05d}.json").read_text(encoding="utf-8"))
              for k in range(len(counts))]  # fmt: skip
    errors: Counter = Counter()
    for s in shards:
        errors.update(s["errors"])
    audio = sum(s["audio_seconds"] for s in shards)
    summary = {
        "files": sum(s["files"] for s in shards),
        "transcribed": sum(s["files"] - s["failed"] for s in shards),
        "failed": sum(s["failed"] for s in shards),
        "errors": dict(sorted(errors.items())),
        "audio_hours": round(audio / 3600, 4),
        "shards": len(shards),
        "this_run": {"files": this_run["files"], "audio_hours": round(this_run["audio_seconds"] / 3600, 4),
                     "wall_s": round(wall, 2), "rtfx": round(this_run["audio_seconds"] / wall, 1) if wall else None,
                     "until_first_result_s": round(this_run["ray_start_s"], 2)},  # Ray's start, actors loading
        "parts": [s["file"] for s in shards],
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    write_json(opts.out / SUMMARY_JSON, summary)
    return summary


def options_record(opts: ArchiveOptions) -> dict:
    """The options as JSON (for logs)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items() if k != "settings"}
