"""The canary (korasr/serve/canary.py): a labelled manifest checked at start, then transcribed by the serving model
after it is first ready and after each swap; its CER per split and version on /metrics and /admin/status, and the
alert that compares it with the registered CER (deploy/monitoring/rules), evaluated by promtool on what a real service
exported after production moved to a worse model."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from korasr.serve.canary import CanaryError, load_manifest
from tests.conftest import eval_rows, serve_process, wait_for
from tests.test_lifecycle import registry_store
from tests.test_monitoring import RULES, alerts, promtool

ROWS = 8  # the canary's rows (eval_clean's first)
WAIT_S = 120.0  # any wait for the service below (a swap loads and warms a model on a busy 2-core machine)


def write_wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_the_manifest_is_checked_at_start_and_bounded(tmp_path):
    wav = write_wav(tmp_path / "a.wav")
    good = write_manifest(tmp_path / "canary.jsonl", [{"audio_filepath": "a.wav", "text": "안녕"},
                                                      {"audio_filepath": str(wav), "text": "네", "split": "x"}])  # fmt: skip
    rows = load_manifest(good, max_rows=2, max_audio_seconds=10)
    assert [(r.audio, r.split) for r in rows] == [(wav, "canary"), (wav, "x")]  # relative to the manifest's folder
    (tmp_path / "text.wav").write_text("not audio")
    write_wav(tmp_path / "long.wav", seconds=3)
    write_wav(tmp_path / "slow.wav", rate=1000)
    cases = {
        "more than 1 rows": ([{"audio_filepath": "a.wav", "text": "a"}] * 2, 1),
        "missing.wav: no such file": ([{"audio_filepath": "missing.wav", "text": "a"}], 5),
        "text.wav: cannot read audio": ([{"audio_filepath": "text.wav", "text": "a"}], 5),
        "3.0 s of audio, limit 2 s": ([{"audio_filepath": "long.wav", "text": "a"}], 5),
        "sample rate 1000 Hz": ([{"audio_filepath": "slow.wav", "text": "a"}], 5),
        "'text' must be a non-empty string": ([{"audio_filepath": "a.wav", "text": " "}], 5),
        "split 'a b' must be": ([{"audio_filepath": "a.wav", "text": "a", "split": "a b"}], 5),
        "no audio_filepath": ([{"text": "a"}], 5),
    }
    for said, (manifest, max_rows) in cases.items():
        path = write_manifest(tmp_path / "bad.jsonl", manifest)
        with pytest.raises(CanaryError) as refused:
            load_manifest(path, max_rows=max_rows, max_audio_seconds=2)
        assert said in str(refused.value) and str(path) in str(refused.value), (said, refused.value)
    (tmp_path / "bad.jsonl").write_text('{"audio_filepath": "a.wav", "text": "a"}\nnot json\n')
    with pytest.raises(CanaryError, match=r"bad.jsonl:2: not a JSON line"):
        load_manifest(tmp_path / "bad.jsonl", max_rows=5, max_audio_seconds=2)
    with pytest.raises(CanaryError, match="no such file"):
        load_manifest(tmp_path / "none.jsonl", max_rows=5, max_audio_seconds=2)


def degraded_copy(export: Path, out: Path, scale: float = 2.0) -> Path:
    """A worse model made from ``export``: noise of ``scale`` times their spread added to the weights of the final
    projection (the CTC decoder's), in a copy whose model.json names the new graph's sha256 (the registry refuses an
    export whose files differ from it)."""
    import onnx
    from onnx import numpy_helper

    from korasr.fsutil import sha256_file

    shutil.copytree(export, out)
    graph = onnx.load(str(out / "model.onnx"))
    final = next(n for n in reversed(graph.graph.node) if n.op_type in ("Conv", "MatMul", "Gemm"))
    weight = next(i for i in graph.graph.initializer if i.name == final.input[1])
    values = numpy_helper.to_array(weight)
    noise = np.random.default_rng(0).normal(0, scale * float(values.std()), values.shape).astype(values.dtype)
    weight.CopyFrom(numpy_helper.from_array(values + noise, weight.name))
    onnx.save(graph, str(out / "model.onnx"))
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    meta["sha256"]["model.onnx"] = sha256_file(out / "model.onnx")
    (out / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def samples(text: str, name: str) -> list[tuple[dict, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def alert_expression_says(scrape: str, tmp: Path, expected: list[tuple[dict, float]]) -> None:
    """promtool evaluates KorasrCanaryCerAboveRegistered's expression on the series of ``scrape`` (as one target's,
    held for 15 minutes) and finds ``expected`` (labels without job and instance, value)."""
    (rule,) = [r for r in alerts() if r["alert"] == "KorasrCanaryCerAboveRegistered"]
    target = {"job": "korasr", "instance": "a"}

    def series(labels: dict) -> str:
        return "{" + ",".join(f'{k}="{v}"' for k, v in {**labels, **target}.items()) + "}"

    inputs = [{"series": name + series(labels), "values": f"{value}x15"}
              for name in ("korasr_canary_cer", "stt_model_cer", "korasr_model_info")
              for labels, value in samples(scrape, name)]  # fmt: skip
    test = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{"interval": "1m",
            "input_series": inputs, "promql_expr_test": [{"expr": rule["expr"], "eval_time": "10m", "exp_samples": [
                {"labels": "korasr_canary_cer" + series(labels), "value": value} for labels, value in expected]}]}]}  # fmt: skip
    path = tmp / f"canary.{len(list(tmp.glob('canary.*.test.yml')))}.test.yml"
    path.write_text(yaml.safe_dump(test, allow_unicode=True))
    proc = promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_canary_gauge_moves_after_a_swap_to_a_worse_model(exported, recipe, tmp_path, monkeypatch):
    """A service following models:/ko-canary@production with a canary of a few eval rows: its CER for version 1 is on
    /metrics and /admin/status, the same as korasr evaluate's on those rows (registered); production moves to version 2, the same export with its final projection damaged
    (registered with version 1's report: the registered CER says good); the follower swaps, the canary runs on
    version 2, its CER is higher than version 1's, and the alert's expression picks version 2's eval_clean."""
    from korasr import registry
    from korasr.evaluate import evaluate

    (tmp_path / "canary").mkdir()  # the split is the file's stem: eval_clean, as registered
    canary = write_manifest(tmp_path / "canary" / "eval_clean.jsonl", eval_rows(recipe, ROWS))
    worse = degraded_copy(exported, tmp_path / "worse")
    admin = "a" * 24
    monkeypatch.setenv("KORASR_ADMIN_KEY", admin)

    def get(url: str, path: str) -> str:
        request = urllib.request.Request(url + path, headers={"X-API-Key": admin})
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.read().decode()

    def canary_on(url: str, version: int) -> dict:
        deadline = time.monotonic() + WAIT_S
        while True:
            status = json.loads(get(url, "/admin/status"))
            last = status["canary"]["last"]
            if last and last["version"] == str(version) and last["outcome"] == "ok":
                return last
            assert time.monotonic() < deadline, status
            time.sleep(0.5)

    with registry_store(tmp_path):
        # registered with korasr evaluate's report on the canary's rows: the canary must score version 1 the same
        evaluate(exported, [canary], tmp_path / "eval", progress=False)
        report = tmp_path / "eval" / "report.json"
        registry.register(exported, "ko-canary", report=report)
        registry.register(worse, "ko-canary", report=report)
        registry.promote("ko-canary", 1)
        registered = json.loads(report.read_text(encoding="utf-8"))["splits"]["eval_clean"]["cer"]
        with serve_process("models:/ko-canary@production", tmp_path / "serve.log", "--follow", "1", "--canary",
                           str(canary)) as url:  # fmt: skip
            good = canary_on(url, 1)
            assert good["rows"] == ROWS and good["cer"] == {"eval_clean": pytest.approx(registered, abs=0.01)}
            before = get(url, "/metrics")
            assert samples(before, "korasr_canary_cer") == [({"split": "eval_clean", "version": "1"},
                                                             good["cer"]["eval_clean"])]  # fmt: skip
            assert ({"outcome": "ok"}, 1.0) in samples(before, "korasr_canary_runs_total")
            (stamp,) = samples(before, "korasr_canary_last_run_timestamp_seconds")
            assert stamp[1] >= good["started_at"]
            registry.promote("ko-canary", 2)
            bad = canary_on(url, 2)
            after = get(url, "/metrics")
    cer = {labels["version"]: value for labels, value in samples(after, "korasr_canary_cer")}
    assert cer == {"1": good["cer"]["eval_clean"], "2": bad["cer"]["eval_clean"]}
    assert cer["2"] > cer["1"], cer
    assert samples(after, "stt_model_cer") == samples(before, "stt_model_cer")
    assert samples(after, "stt_model_cer") == [({"split": "eval_clean"}, pytest.approx(registered))]
    # the alert: only the served version's canary is compared, and only when it is 5 points above the registered CER
    alert_expression_says(before, tmp_path, [])
    assert cer["2"] > registered + 5, (cer, registered)
    alert_expression_says(after, tmp_path, [({"split": "eval_clean", "version": "2"}, cer["2"])])


def test_a_swap_during_a_run_restarts_it_on_the_new_model_and_a_slow_run_stops_at_its_timeout(exported, recipe,
                                                                                                 tmp_path):  # fmt: skip
    """In one process: a run in progress when the model is swapped is abandoned (interrupted) and the canary starts
    again on the new generation; a run longer than --canary-timeout reports no CER (timeout)."""
    import asyncio

    from prometheus_client import generate_latest

    from korasr.serve import ServeConfig, create_app
    from tests.conftest import serving

    rows = eval_rows(recipe) * 2  # 250 rows: many seconds a run on this machine
    canary = write_manifest(tmp_path / "eval_clean.jsonl", rows)

    app = create_app(ServeConfig(model=exported, canary=canary))
    state = app.state.korasr
    with serving(None, app=app):
        first = wait_for("a run in progress", lambda: state.canary.running and state.current, WAIT_S, 0.05)
        loop = state.canary._task.get_loop()
        asyncio.run_coroutine_threadsafe(state.swap(exported), loop).result(timeout=WAIT_S)
        assert state.current is not first
        last = wait_for("a run that completes", lambda: (state.canary.last or {}).get("outcome") == "ok"
                        and state.canary.last, WAIT_S, 0.05)  # fmt: skip
        text = generate_latest(state.metrics.registry).decode()
    assert last["rows"] == len(rows) and last["cer"]["eval_clean"] >= 0
    runs = {labels["outcome"]: value for labels, value in samples(text, "korasr_canary_runs_total")}
    assert runs == {"interrupted": 1.0, "ok": 1.0}, runs

    app = create_app(ServeConfig(model=exported, canary=canary, canary_timeout_s=1))
    state = app.state.korasr
    with serving(None, app=app):
        last = wait_for("a run that times out", lambda: state.canary.last, WAIT_S, 0.05)
        text = generate_latest(state.metrics.registry).decode()
    assert last["outcome"] == "timeout" and last["cer"] == {} and last["rows"] < len(rows), last
    assert samples(text, "korasr_canary_cer") == []
    assert ({"outcome": "timeout"}, 1.0) in samples(text, "korasr_canary_runs_total")
