"""One actor of an archive run: it holds one runtime session (:class:`korasr.runtime.Recognizer`) and turns batches
of entries into rows. A file that cannot be transcribed (missing, unreadable, a bad format, too long) becomes a row
with its error; it never stops the batch. What an actor holds is bounded in audio, not in rows: local files are read
by the runtime a model batch at a time (long ones in chunks); remote files are fetched and decoded one by one and
transcribed whenever the next would take the decoded audio held past ``Settings.max_held_seconds``. Nothing here imports Ray: Ray Data calls :class:`Transcriber` as the class
of an actor pool, and a test can call it directly."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import soundfile as sf

from korasr.archive.sources import is_uri
from korasr.runtime import CHUNK_SECONDS, SAMPLE_RATE, Recognizer, Result
from korasr.runtime.audio import AudioError, AudioLimits, read_audio

# The rows an actor returns (words as JSON text: one schema whatever a batch holds, nulls included).
SCHEMA = pa.schema([("index", pa.int64()), ("path", pa.string()), ("id", pa.string()), ("text", pa.string()),
                    ("duration", pa.float64()), ("confidence", pa.float64()), ("words", pa.string()),
                    ("error_kind", pa.string()), ("error", pa.string())])  # fmt: skip
ERROR_KINDS = ("missing", "unreadable", "unsupported", "corrupt", "truncated", "empty", "out_of_range", "too_long",
               "too_large", "decode_failed")  # fmt: skip
EXTERNAL_LM = "_lm"  # where a bundle carries an LM directory given with --lm


@dataclass(frozen=True)
class Settings:
    """How every actor decodes (the same for all, recorded in the run's ``archive.json``)."""

    precision: str = "fp32"
    threads: int = 1
    gpu: bool = False
    decoder: str = "greedy"
    lm: str | None = None  # an LM folder inside the bundle (lm/ of the export, or EXTERNAL_LM)
    beam_options: Any = None  # korasr.runtime.beam.BeamOptions
    hotword_lines: tuple[str, ...] | None = None
    batch_size: int = 16
    chunk_seconds: float = CHUNK_SECONDS
    timestamps: bool = False
    max_audio_seconds: float = 4 * 3600.0
    max_file_bytes: int = 2 << 30  # a remote file is read into memory whole, so it is bounded
    # Decoded remote audio an actor holds at once (float32 at 16 kHz: 30 min ≈ 115 MB), plus the file just read:
    # a batch of 64 hour-long remote files would otherwise be 14.7 GB before the first is transcribed.
    max_held_seconds: float = 1800.0


def bundle(export_dir: Path, precision: str, lm: Path | None = None) -> dict[str, bytes]:
    """The files an actor needs, by relative path: the export (its ``precision`` graph, no streaming graphs) and an
    LM folder. Shipped through Ray's object store, so a cluster's nodes need no shared disk."""
    from korasr.runtime import GRAPHS

    other_graphs = {g for p, g in GRAPHS.items() if p != precision}
    files: dict[str, bytes] = {}
    for path in sorted(export_dir.rglob("*")):
        rel = path.relative_to(export_dir).as_posix()
        if path.is_file() and rel.split("/")[0] != "streaming" and rel not in other_graphs:
            files[rel] = path.read_bytes()
    for path in sorted(lm.rglob("*")) if lm else []:
        if path.is_file():
            files[f"{EXTERNAL_LM}/{path.relative_to(lm).as_posix()}"] = path.read_bytes()
    return files


def _remote(path: str) -> bool:
    """Read whole into memory by pyarrow's filesystems (``file://`` is a local path)."""
    return is_uri(path) and not path.startswith("file://")


class Transcriber:
    """``Transcriber(files, settings)(batch)``: rows (``SCHEMA``) for a batch of entries (``index``, ``path``,
    ``id``), in the batch's order. ``files``: :func:`bundle`'s output (or a Ray reference to it), or an export
    folder's path."""

    def __init__(self, files, settings: Settings):  # type: ignore[no-untyped-def]
        if not isinstance(files, dict | str | Path):  # a Ray ObjectRef (Ray Data passes constructor args as given)
            import ray

            files = ray.get(files)
        self.settings = settings
        self.limits = AudioLimits(max_seconds=settings.max_audio_seconds)
        self._tmp = None
        if isinstance(files, dict):
            self._tmp = tempfile.mkdtemp(prefix="korasr-archive-")
            for rel, data in files.items():
                target = Path(self._tmp, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            files = self._tmp
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if settings.gpu else None
        self.recognizer = Recognizer(files, threads=settings.threads, providers=providers,
                                     precision=settings.precision)  # fmt: skip
        if settings.decoder == "beam":
            lines = list(settings.hotword_lines) if settings.hotword_lines else None
            hotwords = self.recognizer.hotwords(lines) if lines else None
            lm = Path(files, settings.lm) if settings.lm else None
            self.recognizer.use_decoder("beam", lm=lm, beam_options=settings.beam_options, hotwords=hotwords)
        else:
            self.recognizer.use_decoder(settings.decoder)

    def __del__(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        done: dict[int, dict] = {}
        local, remote = [], []  # (row, path, seconds); rows
        for row in rows:
            if _remote(row["path"]):
                remote.append(row)
                continue
            try:
                path, seconds = self._probe(row["path"])
            except AudioError as e:
                done[row["index"]] = self._row(row, error=e)
                continue
            local.append((row, path, seconds))
        self._transcribe(local, self._decode_paths, done)  # the runtime reads them a batch at a time
        held, held_seconds = [], 0.0  # (row, audio, seconds): fetched and decoded, not yet transcribed
        for row in remote:
            try:
                audio = read_audio(io.BytesIO(self._fetch(row["path"])), row["path"], self.limits)
            except AudioError as e:
                done[row["index"]] = self._row(row, error=e)
                continue
            seconds = len(audio) / SAMPLE_RATE
            if held and held_seconds + seconds > self.settings.max_held_seconds:
                self._transcribe(held, self._decode_arrays, done)
                held, held_seconds = [], 0.0
            held.append((row, audio, seconds))
            held_seconds += seconds
        self._transcribe(held, self._decode_arrays, done)
        return pa.Table.from_pylist([done[r["index"]] for r in rows], schema=SCHEMA)

    def _transcribe(self, group: list, decode, done: dict[int, dict]) -> None:  # type: ignore[no-untyped-def]
        group.sort(key=lambda item: item[2])  # by length, as the runtime batches
        for (row, _, seconds), outcome in zip(group, self._each(group, decode), strict=True):
            done[row["index"]] = self._row(row, seconds, outcome)

    # --- reading ---------------------------------------------------------------------------------------------

    def _probe(self, path: str) -> tuple[str, float]:
        """A local file's path after its header is checked, and its duration."""
        local = path.removeprefix("file://")
        if not os.path.isfile(local):
            raise AudioError("missing", f"{path}: no such file")
        if os.path.getsize(local) == 0:
            raise AudioError("empty", f"{path}: empty file")
        try:
            info = sf.info(local)
        except (RuntimeError, sf.LibsndfileError) as e:
            raise AudioError("unreadable", f"{path}: cannot read audio ({e})") from None
        self.limits.check_format(path, info.samplerate, info.channels)
        self.limits.check_duration(path, info.duration)
        if info.frames == 0:
            raise AudioError("empty", f"{path}: no audio frames")
        return local, info.duration

    def _fetch(self, uri: str) -> bytes:
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(uri)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise AudioError("missing", f"{uri}: no such file")
            if info.size is not None and info.size > self.settings.max_file_bytes:
                raise AudioError("too_large", f"{uri}: {info.size} bytes, limit {self.settings.max_file_bytes}")
            with fs.open_input_stream(path) as f:
                data = f.read(self.settings.max_file_bytes + 1)
        except (OSError, pa.ArrowException) as e:
            raise AudioError("unreadable", f"{uri}: cannot read ({e})") from None
        if len(data) > self.settings.max_file_bytes:
            raise AudioError("too_large", f"{uri}: more than {self.settings.max_file_bytes} bytes")
        return data

    # --- decoding --------------------------------------------------------------------------------------------

    def _decode_paths(self, paths: list[str]) -> list[Result]:
        s = self.settings
        return self.recognizer.transcribe(paths, batch_size=s.batch_size, timestamps=s.timestamps,
                                          chunk_seconds=s.chunk_seconds)  # fmt: skip

    def _decode_arrays(self, waves: list) -> list[Result]:
        s = self.settings
        return self.recognizer.transcribe_arrays(waves, batch_size=s.batch_size, timestamps=s.timestamps,
                                                 chunk_seconds=s.chunk_seconds)  # fmt: skip

    def _each(self, group: list, decode) -> list[Result | Exception]:  # type: ignore[no-untyped-def]
        """Results for a group decoded together; when the group fails, each file alone, so one bad file fails
        only its own row."""
        if not group:
            return []
        sources = [source for _, source, _ in group]
        try:
            return list(decode(sources))
        except Exception:  # isolated below, file by file, with each one's own error
            pass
        outcomes: list[Result | Exception] = []
        for source in sources:
            try:
                outcomes.append(decode([source])[0])
            except Exception as e:  # a row with the reason; the run goes on
                outcomes.append(e)
        return outcomes

    def _row(self, row: dict, seconds: float | None = None, outcome: Result | Exception | None = None,
             error: AudioError | None = None) -> dict:  # fmt: skip
        out = {"index": row["index"], "path": row["path"], "id": row.get("id"), "text": None, "duration": seconds,
               "confidence": None, "words": None, "error_kind": None, "error": None}  # fmt: skip
        if isinstance(outcome, Exception):
            error = (
                outcome if isinstance(outcome, AudioError) else AudioError("decode_failed", f"{row['path']}: {outcome}")
            )
        if error is not None:
            out.update(error_kind=error.kind, error=str(error)[:1000])
            return out
        assert isinstance(outcome, Result)
        out["text"] = outcome.text
        out["confidence"] = outcome.as_dict().get("confidence")  # the utterance's, as every output rounds it
        if self.settings.timestamps:
            out["words"] = json.dumps(outcome.as_dict().get("words", []), ensure_ascii=False)
        return out
