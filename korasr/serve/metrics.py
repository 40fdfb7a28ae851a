"""The service's Prometheus metrics, one registry per app (so tests and workers never share one).

With ``korasr serve --workers N`` (N > 1) every worker writes its values to files in a folder the supervisor made for
this start (prometheus_client's multiprocess mode: :func:`worker_metrics_dir`), and a scrape, whichever worker
answers it, reads them all: counters and histograms are the sums over every worker this start ran, the dead included;
each gauge is combined as its ``multiprocess_mode`` says (over the live workers only: a dead worker's gauges go when
the supervisor marks it dead). One worker keeps an in-process registry."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when it is first imported
DIR_PREFIX = "korasr-metrics-"
# Series a worker takes back (a model swapped out, a split the new version has no CER for): the files cannot forget
# a series, so the worker writes this value and the scrape leaves the series out.
WITHDRAWN = {"korasr_model_info": lambda v: v == 0, "stt_model_cer": math.isnan, "korasr_canary_cer": math.isnan}
CANARY_VERSIONS = 4  # versions whose canary CER stays on /metrics (the served one and those before it, to compare)


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        files = shared_dir()
        self.registry = r = CollectorRegistry()
        if files is not None:  # the values live in the files: what is scraped is their merge, not this registry
            r.register(WorkerFiles(files))
            r = CollectorRegistry()
        self.shared = files is not None
        self.requests = Counter("korasr_requests", "HTTP requests by route template and status", ["route", "status"],
                                registry=r)  # fmt: skip
        self.latency = Histogram("korasr_request_seconds", "request latency", ["route"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
        self.audio_seconds = Counter("korasr_audio_seconds", "seconds of audio transcribed", registry=r)
        self.rtf = Histogram("korasr_real_time_factor", "processing time / audio duration", registry=r,
                             buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2))  # fmt: skip
        # per model version (a handful at a time): a shift after a swap, or in the traffic, shows on a dashboard;
        # the low buckets because NeMo's default (Tsallis entropy, min over tokens) sits near 0 on a weak model
        self.confidence = Histogram("korasr_confidence", "utterance confidence of transcriptions (NeMo's default CTC "
                                    "confidence, 0 to 1; korasr/runtime/confidence.py)", ["model_version"], registry=r,
                                    buckets=(0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95,
                                             0.99, 1.0))  # fmt: skip
        # drift without labels (with korasr_confidence): what the traffic sounds like, per model version
        self.speech_rate = Histogram("korasr_speech_rate", "characters of the transcript (spaces left out: Hangul "
                                     "syllables) per second of audio", ["model_version"], registry=r,
                                     buckets=(0.5, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15))  # fmt: skip
        # positive (0: full scale; a histogram's _sum must never go down, so no negative dBFS values)
        self.audio_level = Histogram("korasr_audio_db_below_full_scale", "the audio's RMS level, dB below full scale "
                                     "(0 loudest; 120 for silence)", ["model_version"], registry=r,
                                     buckets=(5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 80, 120))  # fmt: skip
        # livesum: each worker holds its own requests; a dead worker's are gone with it
        self.in_flight = Gauge("korasr_in_flight_requests", "requests being processed", registry=r,
                               multiprocess_mode="livesum")  # fmt: skip
        # livemax: every worker drains after SIGTERM (the supervisor passes it on); 1 once any live one does
        self.draining = Gauge("korasr_draining", "1 while the server drains after SIGTERM (new work refused, what it "
                              "holds finished or released), else 0", registry=r,
                              multiprocess_mode="livemax")  # fmt: skip
        self.batch_size = Histogram("korasr_batch_size", "requests per decoding batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32))  # fmt: skip
        # the served export: an Info in one process; Info has no multiprocess form, so workers share a gauge of the
        # same name and labels (what a scrape shows is the same series, value 1). livemax: 1 while a live worker
        # serves that version (two versions while the workers' followers swap one after another), a dead worker's
        # gone; a worker that swaps writes 0 to the old one, which the scrape leaves out (WITHDRAWN)
        self.model = None if self.shared else Info("korasr_model", MODEL_HELP, registry=r)
        self.model_info = Gauge("korasr_model_info", MODEL_HELP, MODEL_LABELS, registry=r,
                                multiprocess_mode="livemax") if self.shared else None  # fmt: skip
        self._model_labels: tuple[str, ...] | None = None
        # livemostrecent: the registry's CER of the version served, the same for every worker; during a swap the
        # worker that swapped last (the newest version) wins
        self.model_cer = Gauge("stt_model_cer", "the served version's registered CER per split (percent)", ["split"],
                               registry=r, multiprocess_mode="livemostrecent")  # fmt: skip
        self._cer_splits: set[str] = set()
        self.reloads = Counter("korasr_model_reloads", "model reloads by outcome (swapped, failed)", ["outcome"],
                               registry=r)  # fmt: skip
        self.follow_errors = Counter("korasr_registry_follow_errors", "reads of the followed alias that failed (the "
                                     "registry unreachable, or the alias names nothing)", registry=r)  # fmt: skip
        # livemostrecent: every worker follows the one registry; its latest read is the answer
        self.registry_reachable = Gauge("korasr_registry_reachable", "1 while the followed registry answers, 0 while "
                                        "it does not (the serving model keeps serving)", registry=r,
                                        multiprocess_mode="livemostrecent")  # fmt: skip
        # livesum: each worker holds its own streams
        self.streams = Gauge("korasr_streams_active", "open WebSocket streams", registry=r,
                             multiprocess_mode="livesum")  # fmt: skip
        self.chunk_seconds = Histogram("korasr_stream_chunk_seconds", "compute per streaming encoder call (one "
                                       "batch of streams)", registry=r,
                                       buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1))  # fmt: skip
        self.stream_batch = Histogram("korasr_stream_batch_size", "streams per streaming encoder call", registry=r,
                                      buckets=(1, 2, 4, 8, 16, 32, 64))  # fmt: skip
        self.partial_latency = Histogram("korasr_stream_partial_seconds", "from audio arriving to the partial it "
                                         "produced", registry=r,
                                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2))  # fmt: skip
        self.finals = Counter("korasr_stream_finals", "final results sent on streams", registry=r)
        self.stream_closes = Counter("korasr_stream_closes", "streams ended, by the server's close code (403: "
                                     "upgrade refused; client: the client closed; aborted: it read nothing; "
                                     "cancelled: the server stopped first)",
                                     ["code"], registry=r)  # fmt: skip
        self.send_timeouts = Counter("korasr_send_timeouts", "connections aborted at the send deadline", ["kind"],
                                     registry=r)  # fmt: skip
        self.prompt_dropped = Counter("korasr_prompt_words_dropped", "words of OpenAI prompts left out of the "
                                      "hotwords, by reason", ["reason"], registry=r)  # fmt: skip
        self.jobs_finished = Counter("korasr_jobs_finished", "asynchronous jobs by final status (succeeded, failed, "
                                     "cancelled)", ["status"], registry=r)  # fmt: skip
        # livemostrecent: every worker counts the one shared database's queue; the latest count is the answer (max
        # would keep a stale high count from a worker that has not looked since)
        self.jobs_queued = Gauge("korasr_jobs_queued", "jobs waiting in the queue (every process sharing its database)",
                                 registry=r, multiprocess_mode="livemostrecent")  # fmt: skip
        self.job_callbacks = Counter("korasr_job_callbacks", "job callbacks by outcome (delivered, failed)", ["outcome"],
                                     registry=r)  # fmt: skip
        self.collected = Counter("korasr_collected", "requests offered to --collect by outcome (kept, queue_full, "
                                 "over_files, over_bytes, error)", ["outcome"], registry=r)  # fmt: skip
        self.jobs_oldest = Gauge("korasr_jobs_oldest_queued_seconds", "age of the oldest queued job at the last look "
                                 "(0: none queued; looked at on every claim and sweep)", registry=r,
                                 multiprocess_mode="livemostrecent")  # fmt: skip
        # livemin: 0 while any live worker has no model (loading, or stopped)
        self.model_loaded = Gauge("korasr_model_loaded", "1 while a model is loaded and serving, else 0", registry=r,
                                  multiprocess_mode="livemin")  # fmt: skip
        # livemax: the worker furthest behind; each follows on its own
        self.registry_behind = Gauge("korasr_registry_behind_seconds", "how long the followed alias has named a "
                                     "version this service does not serve (0: in step, or not following)",
                                     registry=r, multiprocess_mode="livemax")  # fmt: skip
        # the canary (korasr/serve/canary.py). livemostrecent: with several workers each runs the same manifest on the
        # same version (the same decoding: the same CER); the latest run is the answer, and a version swapped
        # out by every worker goes once each wrote it NaN (WITHDRAWN)
        self.canary_cer = Gauge("korasr_canary_cer", "CER (percent, as korasr evaluate scores it) of the canary "
                                "manifest per split, by the model version that transcribed it", ["split", "version"],
                                registry=r, multiprocess_mode="livemostrecent")  # fmt: skip
        self._canary_series: dict[str, set[str]] = {}  # version: splits, oldest first
        self.canary_runs = Counter("korasr_canary_runs", "canary runs by outcome (ok, timeout, interrupted: a swap "
                                   "during the run, failed)", ["outcome"], registry=r)  # fmt: skip
        # livemin: the worker whose canary is the most behind (one stuck worker is stale, whatever the others do)
        self.canary_last_run = Gauge("korasr_canary_last_run_timestamp_seconds", "when the last canary run that "
                                     "reported its CER ended (the canary's start until one does; 0 without --canary)", registry=r,
                                     multiprocess_mode="livemin")  # fmt: skip
        self.canary_interval = Gauge("korasr_canary_interval_seconds", "--canary-every: how often the canary runs "
                                     "(0 without it)", registry=r, multiprocess_mode="livemax")  # fmt: skip
        # read at scrape time by whichever process answers: the same numbers with one worker or several
        self.registry.register(ProcessMemory(files))
        self.registry.register(GpuMemory())

    def serving(self, labels: dict[str, str], cer: dict[str, float]) -> None:
        """The model now served: ``korasr_model_info`` with ``labels`` (the keys of MODEL_LABELS) and its registered
        CER per split; the model before is taken back (a split it had and this one lacks too)."""
        if self.model is not None:
            self.model.info(labels)
            self.model_cer.clear()
        else:
            values = tuple(labels[k] for k in MODEL_LABELS)
            if self._model_labels is not None and self._model_labels != values:
                self.model_info.labels(*self._model_labels).set(0)
            self.model_info.labels(*values).set(1)
            self._model_labels = values
            for split in self._cer_splits - set(cer):
                self.model_cer.labels(split).set(math.nan)
        for split, value in cer.items():
            self.model_cer.labels(split).set(value)
        self._cer_splits = set(cer)

    def canary_result(self, version: str, cer: dict[str, float]) -> None:
        """A canary run's CER per split under ``version``; the series of versions before the last
        ``CANARY_VERSIONS`` are taken back, so the label's values stay few."""
        for split, value in cer.items():
            self.canary_cer.labels(split, version).set(value)
        self._canary_series.pop(version, None)
        self._canary_series[version] = set(cer)
        while len(self._canary_series) > CANARY_VERSIONS:
            old = next(iter(self._canary_series))
            for split in self._canary_series.pop(old):
                if self.shared:
                    self.canary_cer.labels(split, old).set(math.nan)
                else:
                    self.canary_cer.remove(split, old)
        self.canary_last_run.set(time.time())

    def observe_confidence(self, version: str | None, confidence: float | None) -> None:
        """One transcription's utterance confidence, under the model version that made it."""
        if confidence is not None:
            self.confidence.labels(version or "").observe(confidence)

    def observe_audio(self, version: str | None, audio: Any, text: str) -> None:
        """One transcription's speech rate and audio level (16 kHz float samples), under the model version."""
        import numpy as np

        seconds = len(audio) / 16000
        if seconds <= 0:
            return
        version = version or ""
        self.speech_rate.labels(version).observe(len(text.replace(" ", "")) / seconds)
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        self.audio_level.labels(version).observe(min(-20 * math.log10(rms), 120.0) if rms > 0 else 120.0)


MODEL_HELP = "the served export (name and version: the registry's, when followed)"
MODEL_LABELS = ("model", "name", "version", "source_sha256", "unit", "precision", "korasr")


class ProcessMemory:
    """``korasr_process_resident_memory_bytes{pid}`` of every live serving process, read from ``/proc`` at scrape
    time: with several workers, the pids whose live gauge files are in the shared folder (a dead worker's are removed
    when it is marked dead), else this process. prometheus_client's process collector works in one process only; this
    works in both. Nothing where ``/proc`` is not (not Linux)."""

    def __init__(self, folder: str | None):
        self.folder = folder
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def pids(self) -> list[int]:
        if self.folder is None:
            return [os.getpid()]
        found = {int(tail) for f in Path(self.folder).glob("gauge_live*_*.db")
                 if (tail := f.stem.rsplit("_", 1)[-1]).isdigit()}  # fmt: skip
        return sorted(found | {os.getpid()})

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("korasr_process_resident_memory_bytes", "resident memory of each serving process "
                                   "(with --workers N: each live worker)", labels=["pid"])  # fmt: skip
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError, IndexError):
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                family.add_metric([str(pid)], pages * self.page)
        if family.samples:
            yield family
        if (limit := memory_limit()) is not None:
            yield GaugeMetricFamily("korasr_memory_limit_bytes", "the memory the serving processes may use together: "
                                    "their cgroup's limit (a container's), else the host's memory", value=limit)  # fmt: skip


def memory_limit() -> float | None:
    """The smallest of this process's cgroup memory limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) and the
    host's memory (``/proc/meminfo``); None where neither can be read."""
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                found.append(int(line.split()[1]) * 1024)
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            found.append(int(Path(path).read_text().strip()))  # "max": no limit (ValueError)
    return float(min(found)) if found else None


class GpuMemory:
    """``korasr_gpu_memory_used_bytes{gpu}`` and ``korasr_gpu_memory_total_bytes{gpu}`` of each NVIDIA GPU this host
    has, from NVML (``nvidia-ml-py``) at scrape time; absent where there is no GPU, no driver or no NVML binding
    (serve decodes on CPU today: the series are there for a deployment that runs it on CUDA)."""

    def __init__(self) -> None:
        self.nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
        except Exception:  # no binding, no driver, no GPU: no series
            log.debug("no NVML: korasr_gpu_memory_* not exported")

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        if self.nvml is None:
            return
        used = GaugeMetricFamily("korasr_gpu_memory_used_bytes", "GPU memory in use (every process)", labels=["gpu"])
        total = GaugeMetricFamily("korasr_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        with contextlib.suppress(Exception):  # a GPU that went away: no sample this scrape
            for i in range(self.nvml.nvmlDeviceGetCount()):
                info = self.nvml.nvmlDeviceGetMemoryInfo(self.nvml.nvmlDeviceGetHandleByIndex(i))
                used.add_metric([str(i)], float(info.used))
                total.add_metric([str(i)], float(info.total))
        if used.samples:
            yield used
            yield total


def shared_dir() -> str | None:
    """The folder this process writes its metric values to: ``PROMETHEUS_MULTIPROC_DIR`` when it was set before
    prometheus_client was first imported (``korasr serve --workers N`` sets it for its workers), else None."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_ENV)
    return path if path and values.ValueClass is not values.MutexValue else None


class WorkerFiles:
    """What a scrape reads with several workers: prometheus_client's merge of every worker's files, less the series
    a worker took back (``WITHDRAWN``)."""

    def __init__(self, path: str):
        from prometheus_client.multiprocess import MultiProcessCollector

        self.files = MultiProcessCollector(None, path)

    def collect(self) -> Iterator:
        for metric in self.files.collect():
            if (withdrawn := WITHDRAWN.get(metric.name)) is not None:
                metric.samples = [s for s in metric.samples if not withdrawn(s.value)]
            yield metric


@contextlib.contextmanager
def worker_metrics_dir() -> Iterator[Path]:
    """A fresh folder, private to this start (mode 0700), for the workers' metric files, named in
    ``PROMETHEUS_MULTIPROC_DIR`` for the workers to inherit; removed when the block ends. Folders of earlier starts
    whose supervisor is gone (killed before it could clean up) are removed first: they are never read."""
    if previous := os.environ.get(MULTIPROC_ENV):
        log.info("%s=%s is not used: the workers share a fresh folder of their own", MULTIPROC_ENV, previous)
    remove_stale_dirs(Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_dirs(parent: Path) -> list[Path]:
    """Remove this user's metric folders in ``parent`` whose supervisor (the pid in the name) no longer runs."""
    removed = []
    for path in parent.glob(f"{DIR_PREFIX}*-*"):
        pid = path.name[len(DIR_PREFIX) :].split("-", 1)[0]
        with contextlib.suppress(OSError):
            if pid.isdigit() and path.is_dir() and path.stat().st_uid == os.getuid() and not running(int(pid)):
                shutil.rmtree(path)
                removed.append(path)
    return removed


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def mark_dead(pid: int, path: str | None = None) -> None:
    """A worker that exited (or was killed): its live gauges leave the totals of the folder (``path``, else the
    environment's); its counters stay in them."""
    from prometheus_client.multiprocess import mark_process_dead

    if path := path or os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid, path)
