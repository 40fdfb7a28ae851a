"""bench/gpu_check.py (`make gpu-check`) where there is no GPU, as here and in CI: it says so, checks that each part
would start, exits 0, and its checks catch what is missing (an export folder that is not there) as well as pass what
is present. The GPU parts themselves cannot run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.py"


def gpu_check(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The script with no GPU visible (so a CI machine with one takes the same path), its JSON by check name."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    return proc, {c["name"].split(" (")[0]: c for c in result["checks"]} | {"": result}


def test_without_a_gpu_it_says_so_checks_each_part_and_exits_0(tmp_path):
    missing = tmp_path / "no_export"
    proc, checks = gpu_check(tmp_path / "out", "--export", str(missing), "--streaming-export", str(missing))
    assert "no CUDA GPU here" in proc.stdout
    assert checks[""]["gpu"] is None and checks[""]["rows"] == []  # nothing measured
    assert not checks["CUDA GPU"]["ok"]
    # the export folder that is not there is reported missing, with its path and the parts it stops
    export = checks["export"]
    assert not export["ok"] and str(missing) in export["detail"] and "model.onnx" in export["detail"]
    assert export["parts"] == ["b", "c"] and "make export" in export["fix"]
    assert not checks["streaming export"]["ok"]
    assert any(line.startswith("missing export (") and str(missing) in line for line in proc.stdout.splitlines())
    # both configs compose, build and take a training step on the CPU; they differ where NeMo's file says 18 layers
    assert checks["korasr config"]["ok"], checks["korasr config"]
    assert "17 layers" in checks["korasr config"]["detail"] and "trained one step" in checks["korasr config"]["detail"]
    assert checks["NeMo stock config"]["ok"] and "18 layers" in checks["NeMo stock config"]["detail"]
    assert (
        "encoder.n_layers 17 vs 18"
        in checks["korasr vs NeMo stock: model keys and step settings that differ"]["detail"]
    )
    # what a GPU run needs and this machine lacks is named with the command that installs it
    for name in ("TensorRT", "onnxruntime CUDA provider"):
        check = next(c for key, c in checks.items() if key.startswith(name))
        assert check["ok"] or "pip install -e '.[gpu]'" in check["fix"]


def test_a_complete_export_passes_its_checks(tmp_path):
    export = tmp_path / "export"
    (export / "streaming").mkdir(parents=True)
    (export / "model.json").write_text(json.dumps({"format": "korasr-export/1", "vocab_size": 81}), encoding="utf-8")
    for name in ("model.onnx", "tokens.txt", "streaming/streaming.json", "streaming/encoder.onnx",
                 "streaming/frontend.onnx"):  # fmt: skip
        (export / name).write_bytes(b"x")
    _, checks = gpu_check(tmp_path / "out", "--export", str(export), "--parts", "b,c,d")
    assert checks["export"]["ok"], checks["export"]
    assert "model.fp16.onnx made at run time" in checks["export"]["detail"]
    assert checks["streaming export"]["ok"] and checks["streaming export"]["detail"] == str(export)
    assert "korasr config" not in checks  # part a not asked for: its configs are not built
    (export / "model.json").write_text("{}", encoding="utf-8")  # not a korasr export
    _, checks = gpu_check(tmp_path / "out", "--export", str(export), "--parts", "b", "--check-only")
    assert not checks["export"]["ok"] and "not a korasr export" in checks["export"]["detail"]
