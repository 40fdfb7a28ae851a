"""Collection for review (`korasr serve --collect DIR`, korasr/serve/collect.py): low-confidence requests are kept
with their audio under a file and byte budget with retention, and the folder, once a reviewer wrote the corrected
text, is what `korasr retrain --new-data DIR/manifest.jsonl` ingests."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from korasr.serve.collect import AUDIO, MANIFEST, WAV_HEADER_BYTES, Collector, Sample
from tests.conftest import ROOT, korasr_cmd


def tone(seconds: float, seed: int) -> np.ndarray:
    samples = np.random.default_rng(seed).integers(-3000, 3000, int(16000 * seconds)).astype(np.int16)
    return samples.astype(np.float32) / 32768.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def collector(folder: Path, clock: Clock | None = None, **kwargs) -> Collector:  # type: ignore[no-untyped-def]
    options = {"below": 0.5, "max_bytes": 1 << 30, "max_files": 1000, "retention_s": 3600.0, **kwargs}
    return Collector(folder, clock=clock or Clock(), **options)


def sample(seed: int, clock: Clock, seconds: float = 1.0) -> Sample:
    return Sample(tone(seconds, seed), f"가설 {seed}", 0.25, "export", "abc123", clock())


def rows(folder: Path) -> list[dict]:
    path = folder / MANIFEST
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def assert_whole(folder: Path) -> None:
    """Every row's audio is there, and no audio without a row is left after a write."""
    named = {Path(row["audio_filepath"]).name for row in rows(folder)}
    assert all((folder / AUDIO / name).is_file() for name in named)


def test_budgets_retention_and_interrupted_writes(tmp_path):
    clock = Clock()
    files = collector(tmp_path / "files", clock, max_files=3)
    outcomes = [files.write(sample(i, clock)) for i in range(5)]
    assert outcomes == ["kept"] * 3 + ["over_files"] * 2
    assert len(rows(tmp_path / "files")) == 3 and len(os.listdir(tmp_path / "files" / AUDIO)) == 3

    wav = WAV_HEADER_BYTES + 2 * 16000  # one second
    size = collector(tmp_path / "bytes", clock, max_bytes=2 * wav + 100)
    assert [size.write(sample(i, clock)) for i in range(3)] == ["kept", "kept", "over_bytes"]
    assert sum(p.stat().st_size for p in (tmp_path / "bytes" / AUDIO).iterdir()) <= 2 * wav + 100
    assert size.outcomes == {"kept": 2, "over_bytes": 1}

    # retention: the oldest go (the manifest first, then their audio), and the budget has room again
    clock.now += 1800
    assert size.write(sample(9, clock)) == "over_bytes"
    clock.now += 1801  # the first two are now older than the hour
    assert size.sweep() == 2 and rows(tmp_path / "bytes") == [] and not os.listdir(tmp_path / "bytes" / AUDIO)
    assert size.write(sample(10, clock)) == "kept"
    clock.now += 3601
    assert size.write(sample(11, clock)) == "kept" and [r["hypothesis"] for r in rows(tmp_path / "bytes")] == [
        "가설 11"
    ]

    # a write interrupted between its audio and the manifest: no row names missing audio, and the orphan is
    # removed by the next write (as is a temporary a killed process left)
    broken = collector(tmp_path / "broken", clock)
    assert broken.write(sample(1, clock)) == "kept"

    def crash(_rows: list[dict]) -> None:
        raise OSError(28, "No space left on device")

    broken._write_rows = crash  # type: ignore[method-assign]
    with pytest.raises(OSError):
        broken.write(sample(2, clock))
    assert len(rows(tmp_path / "broken")) == 1 and len(os.listdir(tmp_path / "broken" / AUDIO)) == 2
    assert_whole(tmp_path / "broken")
    (tmp_path / "broken" / AUDIO / ".x.wav.4242.tmp.wav").write_bytes(b"RIFF")
    del broken._write_rows
    assert broken.write(sample(3, clock)) == "kept"
    assert len(rows(tmp_path / "broken")) == 2 and len(os.listdir(tmp_path / "broken" / AUDIO)) == 2
    assert_whole(tmp_path / "broken")


def test_queue_drops_instead_of_waiting_and_workers_share_the_folder(tmp_path):
    clock = Clock()
    idle = collector(tmp_path / "q", clock, queue_samples=2)  # its thread not started: nothing leaves the queue
    fields = {"model": "export", "model_version": "v1"}
    assert not idle.offer(tone(1, 0), "높음", 0.5, fields)  # at the threshold: not kept
    assert not idle.offer(tone(1, 0), "없음", None, fields)
    assert [idle.offer(tone(1, i), "낮음", 0.1, fields) for i in range(4)] == [True, True, False, False]
    assert idle.outcomes == {"queue_full": 2}
    big = collector(tmp_path / "q2", clock, queue_bytes=16000 * 4 * 3)
    assert [big.offer(tone(2, i), "낮음", 0.1, fields) for i in range(2)] == [True, False]

    # the writer thread: an offered sample is written; retention also runs on its timer when nothing comes
    timed = collector(tmp_path / "timed", clock, sweep_every_s=0.05)
    timed.start()
    assert timed.offer(tone(1, 7), "낮음", 0.1, fields) and timed.wait_idle(60)
    assert [r["hypothesis"] for r in rows(tmp_path / "timed")] == ["낮음"]
    clock.now += 3601
    deadline = time.monotonic() + 60
    while rows(tmp_path / "timed") and time.monotonic() < deadline:
        time.sleep(0.05)
    timed.stop()
    assert rows(tmp_path / "timed") == [] and not os.listdir(tmp_path / "timed" / AUDIO)

    # two processes' collectors on one folder (separate lock descriptions, as --workers has): no row is lost
    shared = [collector(tmp_path / "shared", clock, max_files=30) for _ in range(2)]
    threads = [threading.Thread(target=lambda c=c, k=k: [c.write(sample(100 * k + i, clock, 0.2)) for i in range(20)])
               for k, c in enumerate(shared)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    kept = rows(tmp_path / "shared")
    assert len(kept) == 30 and len({r["id"] for r in kept}) == 30
    assert sum(c.outcomes["kept"] for c in shared) == 30 and sum(c.outcomes["over_files"] for c in shared) == 10
    assert_whole(tmp_path / "shared") and len(os.listdir(tmp_path / "shared" / AUDIO)) == 30


def test_low_confidence_requests_are_kept_and_feed_retrain(exported, recipe, tmp_path):
    """Requests through the service: those below the threshold are kept (their decoded PCM, the response's text and
    confidence, the model's version; not the API key nor the file name), the others not. Uncorrected, the drop is
    refused by ingest; corrected from the references (the test is the reviewer), `korasr retrain --until ingest`
    takes exactly the collected utterances."""
    from fastapi.testclient import TestClient

    from korasr.retrain import RetrainError, RetrainOptions, ingest, read_rows
    from korasr.runtime import Recognizer
    from korasr.serve import create_app
    from korasr.serve.config import ServeConfig

    manifests = recipe["manifests"]
    requests = read_rows(manifests / "dev.jsonl")[:8]
    recognizer = Recognizer(exported)
    offline = [recognizer.transcribe([r["audio_filepath"]])[0].confidence for r in requests]  # one at a time, as served
    ranked = sorted(offline)
    ratio, below = max((b / a, (a * b) ** 0.5) for a, b in itertools.pairwise(ranked[1:-1]))
    assert ratio > 1.05, ranked  # a threshold with requests on both sides, not near any of them

    folder = tmp_path / "collect"
    app = create_app(ServeConfig(model=exported, api_key="collect-s3cret", collect=folder, collect_below=below))
    answers = []
    with TestClient(app) as client:
        for row in requests:
            audio = Path(row["audio_filepath"]).read_bytes()
            r = client.post("/v1/transcribe", files={"audio": ("private-name.wav", audio, "audio/wav")},
                            headers={"X-API-Key": "collect-s3cret"})  # fmt: skip
            assert r.status_code == 200, r.text
            answers.append(r.json())
        state = app.state.korasr
        assert state.collector.wait_idle(60)
        version = state.current.log_fields()["model_version"]
    low = [(row, a, c) for row, a, c in zip(requests, answers, offline, strict=True) if c < below]
    assert 0 < len(low) < len(requests)
    kept = rows(folder)
    assert len(kept) == len(low) == state.collector.outcomes["kept"]
    for stored, (row, answer, confidence) in zip(kept, low, strict=True):  # in request order: one at a time
        assert stored["hypothesis"] == answer["text"] and stored["confidence"] == pytest.approx(confidence, rel=1e-3)
        assert stored["text"] == "" and stored["model_version"] == version and version
        pcm, rate = sf.read(folder / stored["audio_filepath"], dtype="int16")
        assert rate == 16000 and np.array_equal(pcm, sf.read(row["audio_filepath"], dtype="int16")[0])
        assert stored["duration"] == pytest.approx(row["duration"], abs=1e-3)
    for path in folder.rglob("*"):
        if path.is_file():
            assert b"collect-s3cret" not in path.read_bytes() and b"private-name" not in path.read_bytes()

    evals = [str(manifests / "eval_clean.jsonl"), str(manifests / "eval_other.jsonl")]
    options = RetrainOptions(name="ko-collect", recipe="recipes/sample", new_data=str(folder / MANIFEST),
                             eval_manifests=evals, form="phonetic")  # fmt: skip
    with pytest.raises(RetrainError, match="no utterance left"):  # nobody reviewed it: nothing to train on
        ingest(options, tmp_path / "unreviewed")

    by_audio = {s["audio_filepath"]: row["text"] for s, (row, _, _) in zip(kept, low, strict=True)}  # the reviewer
    lines = [json.dumps({**s, "text": by_audio[s["audio_filepath"]]}, ensure_ascii=False) for s in kept]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
    eval_texts = {row["text"] for m in evals for row in read_rows(Path(m))}
    expected = {str((folder / s["audio_filepath"]).resolve()) for s in kept if by_audio[s["audio_filepath"]]
                not in eval_texts}  # fmt: skip
    assert expected

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = ["retrain", "--name", "ko-collect", "--recipe", "recipes/sample", "--new-data", str(folder / MANIFEST),
            "--eval", evals[0], "--eval", evals[1], "--work", str(tmp_path / "work"), "--form", "phonetic",
            "--holdout", "0", "--until", "ingest"]  # fmt: skip
    proc = subprocess.run(korasr_cmd(*args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (state_file,) = (tmp_path / "work").glob("*/state.json")
    ingested = json.loads(state_file.read_text(encoding="utf-8"))["stages"]["ingest"]
    train = read_rows(Path(ingested["manifests"]["train"]))
    assert {r["audio_filepath"] for r in train} == expected
    assert sorted(r["text"] for r in train) == sorted(t for t in by_audio.values() if t not in eval_texts)
