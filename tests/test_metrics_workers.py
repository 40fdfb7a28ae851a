"""`korasr serve --workers 3`: one scrape of /metrics, whichever worker answers it, counts the requests of every
worker; counters never go back across scrapes, not even when a worker is killed and replaced; the killed worker's
gauges leave the totals; the workers' metrics folder is private to the start and gone after it."""

from __future__ import annotations

import functools
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from korasr.serve.metrics import MULTIPROC_ENV, WorkerFiles, mark_dead, remove_stale_dirs
from tests.conftest import eval_rows, serve_process, slow_upload, wait_for

ROUTE = "/v1/transcribe"
COUNT = ("korasr_requests_total", (("route", ROUTE), ("status", "200")))
LATENCY_COUNT = ("korasr_request_seconds_count", (("route", ROUTE),))
IN_FLIGHT = ("korasr_in_flight_requests", ())
WAIT_S = 60.0  # any wait for the server below
wait_for = functools.partial(wait_for, timeout=WAIT_S)


def scrape(url: str) -> tuple[dict, dict]:
    """One scrape: every sample by (name, sorted labels), and every family's type."""
    text = httpx.get(url + "/metrics", timeout=30, headers={"Connection": "close"}).raise_for_status().text
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples, types


def counted(samples: dict, types: dict) -> dict:
    """The samples that may only grow: counters' and histograms' (buckets, counts, sums)."""
    growing = {name for name, kind in types.items() if kind in ("counter", "histogram")}
    return {key: v for key, v in samples.items() if key[0].removesuffix("_total") in growing
            or key[0].rsplit("_", 1)[0] in growing}  # fmt: skip


def never_decreased(before: dict, after: dict) -> list[str]:
    return [f"{key}: {v} -> {after.get(key)}" for key, v in before.items() if after.get(key, 0.0) < v]


def worker_files(folder: Path, kind: str) -> dict[int, dict]:
    """Each worker's own values from the multiprocess folder (files ``{kind}_{pid}.db``), by pid."""
    values = {}
    for path in folder.glob(f"{kind}_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        values[pid] = {}
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            values[pid][name, tuple(sorted(labels.items()))] = value
    return values


def transcribe(url: str, wav: bytes) -> int:
    """One request on a connection of its own."""
    with httpx.Client(timeout=60) as client:
        return client.post(url + ROUTE, files={"audio": ("a.wav", wav, "audio/wav")}).status_code


@pytest.mark.slow
def test_scrape_counts_every_worker(exported, recipe, tmp_path, monkeypatch):
    wav = Path(eval_rows(recipe, 1)[0]["audio_filepath"]).read_bytes()
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # where the server makes its metrics folder
    stale = temp / "korasr-metrics-999999999-old"  # a killed earlier start's (no such pid): removed, never read
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    with serve_process(exported, tmp_path / "serve.log", "--workers", "3", "--upload-timeout", "300",
                       "--queue-size", "64") as url:  # fmt: skip
        [folder] = temp.glob("korasr-metrics-*")
        assert not stale.exists()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # private to this start
        wait_for("3 workers writing metrics", lambda: len(worker_files(folder, "gauge_livesum")) == 3)

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: transcribe(url, wav), range(60)))
        assert statuses == [200] * 60
        samples, types = scrape(url)
        assert samples[COUNT] == 60 and samples[LATENCY_COUNT] == 60
        served = {pid: v.get(COUNT, 0) for pid, v in worker_files(folder, "counter").items()}
        print(f"\n60 requests over 3 workers: {sorted(served.values(), reverse=True)} per worker")
        assert sum(served.values()) == 60 and sum(n > 0 for n in served.values()) > 1, served

        # 20 scrapes while requests keep coming: no counter, no histogram count goes back
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                assert transcribe(url, wav) == 200

        with ThreadPoolExecutor(3) as pool:
            senders = [pool.submit(traffic) for _ in range(3)]
            try:
                previous = counted(samples, types)
                for _ in range(20):
                    now = counted(*scrape(url))
                    assert not never_decreased(previous, now)
                    previous = now
                    time.sleep(0.1)
            finally:  # a failed check above must not leave the senders running (the pool would wait for them)
                stop.set()
            for sender in senders:
                sender.result(timeout=WAIT_S)
        before, types = scrape(url)
        assert before[COUNT] == before[LATENCY_COUNT] > 60

        # a worker killed while it holds requests: its counts stay, its gauges go
        held = [slow_upload(url) for _ in range(6)]
        try:
            in_flight = wait_for("6 uploads in flight", lambda: (v := {pid: f.get(IN_FLIGHT, 0) for pid, f in
                                 worker_files(folder, "gauge_livesum").items()}) and sum(v.values()) == 6 and v)  # fmt: skip
            victim, holding = max(in_flight.items(), key=lambda item: item[1])
            os.kill(victim, signal.SIGKILL)
            wait_for("the killed worker marked dead and replaced", lambda: victim not in worker_files(
                folder, "gauge_livesum") and len(worker_files(folder, "gauge_livesum")) == 3)  # fmt: skip
            assert not list(folder.glob(f"gauge_*_{victim}.db")) and (folder / f"counter_{victim}.db").exists()
            after, _ = scrape(url)
            assert after[COUNT] == before[COUNT] and after[LATENCY_COUNT] == before[LATENCY_COUNT]
            assert not never_decreased(counted(before, types), counted(after, types))
            assert after[IN_FLIGHT] == 6 - holding + 1  # the survivors' uploads, and this scrape itself
            print(f"killed worker {victim} holding {holding} of 6 uploads: in flight {after[IN_FLIGHT] - 1:g} after")
        finally:
            for sock in held:
                sock.close()
        assert transcribe(url, wav) == 200
        assert scrape(url)[0][COUNT] == before[COUNT] + 1
        assert len(worker_files(folder, "gauge_livesum")) == 3
    assert not folder.exists()  # removed when the server exits


WORKER = """
import os, sys
from korasr.serve.metrics import Metrics
m = Metrics()
assert m.shared
labels = dict(model="export", name="asr", version="3", source_sha256="abc", unit="char", precision="fp32", korasr="1")
m.serving(labels, {"dev": 5.0, "test": 6.0})
m.requests.labels("/v1/transcribe", "200").inc()
m.in_flight.inc()
if sys.argv[1] == "swap":
    m.serving({**labels, "version": "4"}, {"dev": 4.0})
print(os.getpid())
"""


def run_worker(folder: Path, action: str) -> int:
    """A process that writes its metrics to ``folder`` as a worker does, then exits (its files stay until it is
    marked dead): its pid."""
    env = {**os.environ, MULTIPROC_ENV: str(folder)}
    done = subprocess.run([sys.executable, "-c", WORKER, action], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def scrape_files(folder: Path) -> dict:
    registry = CollectorRegistry()
    registry.register(WorkerFiles(str(folder)))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(
        generate_latest(registry).decode()) for s in family.samples}  # fmt: skip


def versions(samples: dict) -> list[str]:
    return sorted(dict(labels)["version"] for name, labels in samples if name == "korasr_model_info")


def test_model_version_across_workers_and_a_swap(tmp_path):
    """korasr_model_info (a gauge: Info has no multiprocess form) shows each version a live worker serves, never one
    every worker swapped away from nor a dead worker's; stt_model_cer is the latest swap's; counters keep the dead."""
    first, swapped = run_worker(tmp_path, "stay"), run_worker(tmp_path, "swap")
    samples = scrape_files(tmp_path)
    assert versions(samples) == ["3", "4"]  # one worker on each while their followers swap one after another
    assert all(v == 1 for k, v in samples.items() if k[0] == "korasr_model_info")
    assert samples["stt_model_cer", (("split", "dev"),)] == 4.0  # the newest version's; it has no "test" CER
    assert ("stt_model_cer", (("split", "test"),)) not in samples
    assert samples["korasr_in_flight_requests", ()] == 2
    assert samples[COUNT] == 2
    mark_dead(first, str(tmp_path))
    samples = scrape_files(tmp_path)
    assert versions(samples) == ["4"]  # the dead worker's version went with it
    assert samples["korasr_in_flight_requests", ()] == 1 and samples[COUNT] == 2
    mark_dead(swapped, str(tmp_path))
    samples = scrape_files(tmp_path)
    assert versions(samples) == [] and samples[COUNT] == 2
    assert ("korasr_in_flight_requests", ()) not in samples


def test_stale_folders_are_removed(tmp_path):
    """A folder of a start whose supervisor is gone is removed; a running one's (this process's) is kept."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    stale, live = tmp_path / f"korasr-metrics-{int(gone.stdout)}-x1", tmp_path / f"korasr-metrics-{os.getpid()}-x2"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"")
    assert remove_stale_dirs(tmp_path) == [stale]
    assert live.exists() and not stale.exists()
