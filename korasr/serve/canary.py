"""The model's accuracy while it serves: ``korasr serve --canary MANIFEST [--canary-every S]``.

A small labelled manifest (NeMo JSONL: ``audio_filepath``, ``text``, optional ``split``, else the file's stem) is
checked at start (at most ``canary_max_rows`` rows; every audio file read and its format, duration and text checked,
an error names the file, the line and the reason), then transcribed by the serving model once it is first ready,
after every swap (a reload by the follower or ``POST /admin/reload``) and every ``canary_every_s``. Its CER per split,
scored as ``korasr evaluate`` scores it (``korasr.metrics.cer_counts``: NFC, spaces left out), is the gauge
``korasr_canary_cer{split,version}``, beside the registered ``stt_model_cer{split}`` (the alert
``KorasrCanaryCerAboveRegistered`` compares them).

Low priority, without taking clients' places: the canary holds the generation it decodes (a swap meanwhile leaves it
alive) but never enters the admission gate nor the batcher's queue (the batcher has no priorities: a canary request
there would delay clients' batches). It decodes one row at a time with the generation's recognizer in a thread of its
own whose nice value is raised to 19 (Linux: per thread), so the kernel schedules clients' decoding first; the
recognizer's onnxruntime intra-op threads are shared with clients and keep their priority, which one row at a time
keeps to one short call. One run at a time; a swap during a run abandons it (outcome ``interrupted``) and starts
again on the new model; a run stops after ``canary_timeout_s`` (outcome ``timeout``, its CER not reported)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from korasr.metrics import cer_counts
from korasr.runtime.audio import AudioLimits, read_audio

log = logging.getLogger(__name__)

SPLIT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a label value: bounded, printable
MAX_SPLITS = 16
MAX_LINE_BYTES = 64 * 1024  # a manifest row (a path and a sentence) is far shorter
MAX_TEXT_CHARS = 2000
POLL_S = 1.0  # how often the loop looks for a swap


class CanaryError(ValueError):
    """The canary manifest cannot be used (the message names the file, the line and the reason)."""


@dataclass(frozen=True)
class Row:
    audio: Path
    text: str
    split: str
    seconds: float


def load_manifest(path: Path, *, max_rows: int, max_audio_seconds: float) -> list[Row]:
    """The manifest's rows, each audio file checked (it exists, libsndfile reads it, a sample rate and channels the
    service takes, 0 < duration <= ``max_audio_seconds``), with a reference text; relative paths are taken from the
    manifest's folder. More than ``max_rows`` rows or ``MAX_SPLITS`` splits is an error, found before reading more."""
    if not path.is_file():
        raise CanaryError(f"--canary {path}: no such file")
    rows: list[Row] = []
    limits = AudioLimits(max_seconds=max_audio_seconds)
    with path.open("rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            where = f"--canary {path}:{number}"
            if len(raw) > MAX_LINE_BYTES:
                raise CanaryError(f"{where}: a line over {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            if len(rows) == max_rows:
                raise CanaryError(f"--canary {path}: more than {max_rows} rows (--canary-max-rows)")
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CanaryError(f"{where}: not a JSON line ({e})") from None
            if not isinstance(row, dict):
                raise CanaryError(f"{where}: not a JSON object")
            audio, text = row.get("audio_filepath"), row.get("text")
            if not isinstance(audio, str) or not audio:
                raise CanaryError(f"{where}: no audio_filepath")
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
                raise CanaryError(f"{where}: 'text' must be a non-empty string of at most {MAX_TEXT_CHARS} characters")
            split = row.get("split", path.stem)
            if not isinstance(split, str) or not SPLIT_NAME.fullmatch(split):
                raise CanaryError(f"{where}: split {split!r} must be 1-64 characters of A-Za-z0-9._-")
            file = Path(audio) if Path(audio).is_absolute() else path.parent / audio
            rows.append(Row(file, text, split, check_audio(file, where, limits)))
            if len({r.split for r in rows}) > MAX_SPLITS:
                raise CanaryError(f"{where}: more than {MAX_SPLITS} splits")
    if not rows:
        raise CanaryError(f"--canary {path}: no rows")
    return rows


def check_audio(file: Path, where: str, limits: AudioLimits) -> float:
    """The file's duration, once it is known to be audio the service would take."""
    try:
        info = sf.info(str(file))
    except (OSError, RuntimeError, sf.LibsndfileError) as e:
        reason = "no such file" if not file.exists() else f"cannot read audio ({e})"
        raise CanaryError(f"{where}: {file}: {reason}") from None
    try:
        limits.check_format(str(file), info.samplerate, info.channels)
        limits.check_duration(str(file), info.duration)
    except ValueError as e:
        raise CanaryError(f"{where}: {e}") from None
    if info.frames <= 0:
        raise CanaryError(f"{where}: {file}: no audio (0 frames)")
    return float(info.duration)


def low_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: nice applies per thread); elsewhere nothing."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class Interrupted(Exception):
    """A swap happened during the run: it starts again on the new model."""


class Canary:
    """The canary's loop for one service (``ServiceState``); :attr:`last` is its last run (``/admin/status``)."""

    def __init__(self, state, rows: list[Row]):  # type: ignore[no-untyped-def]
        self.state, self.rows, self.config = state, rows, state.config
        self.last: dict | None = None
        self.running: dict | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="korasr-canary", initializer=low_priority)

    @classmethod
    def from_config(cls, state) -> Canary | None:  # type: ignore[no-untyped-def]
        config = state.config
        if config.canary is None:
            return None
        rows = load_manifest(Path(config.canary), max_rows=config.canary_max_rows,
                             max_audio_seconds=config.max_audio_seconds)  # fmt: skip
        log.info("canary: %d rows (%s) from %s, after each swap%s, at most %g s a run", len(rows),
                 ", ".join(sorted({r.split for r in rows})), config.canary,
                 f" and every {config.canary_every_s:g} s" if config.canary_every_s else "",
                 config.canary_timeout_s)  # fmt: skip
        return cls(state, rows)

    def start(self) -> None:
        metrics = self.state.metrics
        metrics.canary_last_run.set(time.time())  # "stale" counts from the start until a run completes
        if self.config.canary_every_s:
            metrics.canary_interval.set(self.config.canary_every_s)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        every = self.config.canary_every_s
        done_on, next_at = None, 0.0  # the generation last run on; when the schedule next wants a run (monotonic)
        while True:
            generation = self.state.current
            due = generation is not done_on or (every is not None and time.monotonic() >= next_at)
            if not due or not self.state.ready or self.state.drain.active:
                await asyncio.sleep(POLL_S)
                continue
            done_on, next_at = generation, time.monotonic() + (every or 0)
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Interrupted:
                done_on = None  # run again at once, on the new model
            except Exception:  # reported in run_once; the next swap or the schedule tries again
                pass

    async def run_once(self) -> dict:
        """One run on the serving generation: the CER per split, set on the gauge; what happened, in :attr:`last`."""
        metrics, started, began = self.state.metrics, time.time(), time.monotonic()
        refs: dict[str, list[str]] = {}
        hyps: dict[str, list[str]] = {}
        with self.state.lease() as generation:
            version = generation.log_fields()["model_version"] or ""
            self.running = {"version": version, "started_at": started, "rows": len(self.rows)}
            outcome, error = "ok", None
            try:
                async with asyncio.timeout(self.config.canary_timeout_s):
                    loop = asyncio.get_running_loop()
                    for row in self.rows:
                        if self.state.current is not generation:
                            raise Interrupted
                        text = await loop.run_in_executor(self._pool, decode, generation.recognizer.transcribe_arrays,
                                                          row.audio)  # fmt: skip
                        refs.setdefault(row.split, []).append(row.text)
                        hyps.setdefault(row.split, []).append(text)
            except TimeoutError:
                outcome = "timeout"
            except Interrupted:
                outcome = "interrupted"
            except Exception as e:  # a file gone since the start, a model that fails: reported, not fatal
                outcome, error = "failed", f"{type(e).__name__}: {e}"[:500]
            finally:
                self.running = None
        cer = {s: round(cer_counts(refs[s], hyps[s]).percent, 3) for s in refs} if outcome == "ok" else {}
        metrics.canary_runs.labels(outcome).inc()
        if outcome == "ok":
            metrics.canary_result(version, cer)
        self.last = {"outcome": outcome, "version": version, "started_at": round(started, 3),
                     "seconds": round(time.monotonic() - began, 3), "rows": sum(map(len, refs.values())), "cer": cer,
                     **({"error": error} if error else {})}  # fmt: skip
        level = logging.INFO if outcome == "ok" else logging.WARNING
        log.log(level, "canary on version %s: %s in %.1f s %s", version or "—", outcome, self.last["seconds"],
                cer or error or "")  # fmt: skip
        if outcome == "interrupted":
            raise Interrupted
        if outcome != "ok":
            raise RuntimeError(outcome)
        return self.last


def decode(transcribe_arrays: Callable, audio: Path) -> str:
    """One row, batch of one (in the canary's low-priority thread)."""
    wave = read_audio(str(audio))
    return transcribe_arrays([wave], batch_size=1)[0].text
