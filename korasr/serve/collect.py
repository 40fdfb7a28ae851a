"""Opt-in collection for review (``korasr serve --collect DIR``): requests whose utterance confidence is below
``--collect-below`` are kept, their audio and the model's hypothesis, for people to correct and feed back to
``korasr retrain`` (``make retrain NEW_DATA=DIR/manifest.jsonl``).

The folder is a NeMo manifest with its audio beside it::

    DIR/manifest.jsonl     one row a kept request: audio_filepath (audio/<id>.wav, relative to the manifest),
                           duration, text (empty until a reviewer writes the corrected transcript), hypothesis,
                           confidence, model, model_version, created (UTC, ISO 8601), id
    DIR/audio/<id>.wav     the decoded request: 16 kHz mono 16-bit PCM
    DIR/.lock              held (``flock``) by the one writer at a time, across the service's worker processes

``text`` is left empty on purpose: ``korasr retrain``'s ingest refuses a row with empty text, so an uncorrected
hypothesis can never be trained on by accident; a reviewer copies ``hypothesis`` into ``text`` and corrects it.

Writes happen in a thread of their own, never on a request's path: :meth:`Collector.offer` queues the sample (a full
queue drops it and counts it). Each write, under the lock: retention (rows older than ``retention_s`` removed from the
manifest, then their audio; audio no row names, left by a crash, removed), the budgets (rows at most ``max_files``,
audio at most ``max_bytes``: a sample that does not fit is dropped until retention frees room), then the audio is
written durably and only after it the manifest, rewritten atomically: a reader never sees a row whose audio is
missing. Nothing of the request but its audio is stored (no API key, headers, file name or options).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from korasr.errors import KorasrError
from korasr.fsutil import atomic_open, atomic_path
from korasr.runtime import SAMPLE_RATE

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
AUDIO = "audio"
LOCK = ".lock"
WAV_HEADER_BYTES = 44
QUEUE_SAMPLES = 32  # samples waiting for the writer, at most
QUEUE_BYTES = 64 << 20  # and their audio (float32), at most: a burst of long requests cannot swell the process
SWEEP_EVERY_S = 60.0  # retention runs at least this often, also when nothing is kept
STOP_WAIT_S = 30.0  # what stop() waits for the writer to finish the queue
OUTCOMES = ("kept", "queue_full", "over_files", "over_bytes", "error")


class CollectError(KorasrError, RuntimeError):
    """The collection folder cannot be used; the message names it and why."""


@dataclass(frozen=True)
class Sample:
    audio: np.ndarray  # 16 kHz float32, as decoded
    hypothesis: str
    confidence: float
    model: str | None
    model_version: str | None
    created: float  # seconds since the epoch


def pcm16(audio: np.ndarray) -> np.ndarray:
    """The int16 samples float audio was decoded from (korasr.runtime.audio divides by 32768)."""
    return np.clip(np.round(np.asarray(audio, np.float32) * 32768.0), -32768, 32767).astype(np.int16)


class Collector:
    """Keeps low-confidence samples in ``folder`` under a file and byte budget with retention. ``on_outcome`` is
    called with each sample's outcome (:data:`OUTCOMES`) for a metric; :attr:`outcomes` counts them too."""

    def __init__(self, folder: Path, *, below: float, max_bytes: int, max_files: int, retention_s: float,
                 on_outcome: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time,
                 queue_samples: int = QUEUE_SAMPLES, queue_bytes: int = QUEUE_BYTES,
                 sweep_every_s: float = SWEEP_EVERY_S) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.below, self.max_bytes, self.max_files, self.retention_s = below, max_bytes, max_files, retention_s
        self.on_outcome, self.clock, self.sweep_every_s = on_outcome, clock, sweep_every_s
        self.outcomes: Counter[str] = Counter()
        self._queue: queue.Queue[Sample | None] = queue.Queue(queue_samples)
        self._queue_bytes, self._pending_bytes = queue_bytes, 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        try:
            (self.folder / AUDIO).mkdir(parents=True, exist_ok=True)
            (self.folder / LOCK).touch()
        except OSError as e:
            raise CollectError(f"--collect {self.folder}: cannot write there ({e.strerror})") from None

    @classmethod
    def from_config(cls, config, on_outcome: Callable[[str], None] | None = None) -> Collector:  # type: ignore[no-untyped-def]
        return cls(config.collect, below=config.collect_below, max_bytes=config.collect_max_bytes,
                   max_files=config.collect_max_files, retention_s=config.collect_retention_s,
                   on_outcome=on_outcome)  # fmt: skip

    # --- the request's side: never blocks ------------------------------------------------------------------------

    def offer(self, audio: np.ndarray, text: str, confidence: float | None, model_fields: dict) -> bool:
        """Queue a transcription for keeping when its confidence is below the threshold; True when queued."""
        if confidence is None or confidence >= self.below or len(audio) == 0:
            return False
        sample = Sample(audio, text, float(confidence), model_fields.get("model"), model_fields.get("model_version"),
                        self.clock())  # fmt: skip
        with self._pending_lock:
            if self._pending_bytes + audio.nbytes > self._queue_bytes:
                self._count("queue_full")
                return False
            try:
                self._queue.put_nowait(sample)
            except queue.Full:
                self._count("queue_full")
                return False
            self._pending_bytes += audio.nbytes
        return True

    # --- the writer thread ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="korasr-collect", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Write what is queued (for up to ``timeout`` seconds), then end the thread."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """True once every queued sample is written (for tests and a drain)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._pending_lock:
                if self._pending_bytes == 0 and self._queue.unfinished_tasks == 0:
                    return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        while True:
            try:
                sample = self._queue.get(timeout=self.sweep_every_s)
            except queue.Empty:  # nothing to keep for a while: retention on the timer
                try:
                    self.sweep()
                except Exception:
                    log.exception("collect: retention failed")
                continue
            if sample is None:  # stop(): everything queued before it is written
                self._queue.task_done()
                return
            try:
                self.write(sample)
            except Exception:  # a full disk, a folder removed: the sample is lost, the service goes on
                log.exception("collect: writing a sample failed")
                self._count("error")
            finally:
                with self._pending_lock:
                    self._pending_bytes -= sample.audio.nbytes
                self._queue.task_done()

    def write(self, sample: Sample) -> str:
        """Keep ``sample`` when the budgets allow (retention first): its outcome."""
        pcm = pcm16(sample.audio)
        size = WAV_HEADER_BYTES + pcm.nbytes
        with self._locked():
            rows = self._sweep(self._rows())
            if len(rows) >= self.max_files:
                return self._count("over_files")
            if self._audio_bytes() + size > self.max_bytes:
                return self._count("over_bytes")
            when = dt.datetime.fromtimestamp(sample.created, dt.UTC)
            ident = f"{when:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
            rel = f"{AUDIO}/{ident}.wav"
            write_wav(self.folder / rel, pcm)
            rows.append({"id": ident, "audio_filepath": rel, "duration": round(len(pcm) / SAMPLE_RATE, 3),
                         "text": "", "hypothesis": sample.hypothesis, "confidence": sample.confidence,
                         "model": sample.model, "model_version": sample.model_version,
                         "created": when.isoformat(timespec="milliseconds")})  # fmt: skip
            self._write_rows(rows)
        return self._count("kept")

    def sweep(self) -> int:
        """Retention now (the thread runs it every ``sweep_every_s``): how many rows it removed."""
        with self._locked():
            rows = self._rows()
            return len(rows) - len(self._sweep(rows))

    # --- the folder, under the lock ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / LOCK, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _rows(self) -> list[dict]:
        try:
            text = (self.folder / MANIFEST).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise CollectError(f"{self.folder / MANIFEST}:{number}: not JSON (edited while collecting? move "
                                       "the folder aside before reviewing it)") from None  # fmt: skip
        return rows

    def _write_rows(self, rows: list[dict]) -> None:
        with atomic_open(self.folder / MANIFEST) as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)

    def _sweep(self, rows: list[dict]) -> list[dict]:
        """Rows within retention; the manifest is rewritten without the others first, then their audio and any
        audio no row names (a write interrupted between the audio and the manifest) are removed."""
        oldest = self.clock() - self.retention_s
        kept = [row for row in rows if _created(row) >= oldest]
        if len(kept) != len(rows):
            self._write_rows(kept)
            log.info("collect: retention removed %d sample(s) older than %.0f s", len(rows) - len(kept),
                     self.retention_s)  # fmt: skip
        named = {Path(str(row.get("audio_filepath", ""))).name for row in kept}
        for entry in os.scandir(self.folder / AUDIO):
            if entry.name not in named:
                Path(entry.path).unlink(missing_ok=True)
        return kept

    def _audio_bytes(self) -> int:
        return sum(entry.stat().st_size for entry in os.scandir(self.folder / AUDIO))

    def _count(self, outcome: str) -> str:
        self.outcomes[outcome] += 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome


def _created(row: dict) -> float:
    try:
        return dt.datetime.fromisoformat(str(row["created"])).timestamp()
    except (KeyError, ValueError):
        return 0.0  # a row without a readable time is the oldest: retention removes it


def write_wav(path: Path, pcm: np.ndarray) -> None:
    """16 kHz mono 16-bit PCM WAV, durably under its final name (a crash leaves no partial file there)."""
    import soundfile as sf

    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(str(tmp), pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
