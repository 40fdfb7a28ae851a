"""A real Triton Inference Server (make triton: the tritonserver PyPI's nvidia-pytriton bundles, python backend only)
loads the suite's export as a python-backend repository and answers through the ensemble with the runtime's text,
over gRPC and HTTP, batching concurrent requests; the onnxruntime-backend repository differs from it only in the CTC
step. Streaming through the sequence batcher and the gateway (issue 37, sections 2 and 3) are not built yet."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from korasr.triton import CTC, DECODE, ENSEMBLE, load_config, validate, write_repository
from tests.conftest import ROOT, eval_rows

pytestmark = pytest.mark.slow

VENV = ROOT / ".venv-triton"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except OSError as e:
        return getattr(e, "code", 0), str(e)


@pytest.fixture(scope="module")
def triton(exported, tmp_path_factory):  # type: ignore[no-untyped-def]
    """tritonserver on loopback over the export's python-backend repository, ready: its ports, process and log."""
    if not (VENV / ".installed").is_file():
        pytest.fail(f"{VENV}: make triton installs Triton's server (make test does it first)")
    tmp = tmp_path_factory.mktemp("triton")
    repo = write_repository(exported, tmp / "repository", backend="python")
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = tmp / "tritonserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "korasr.triton_server", "--repository", str(repo), "--venv",
                                 str(VENV), "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
                                 "--metrics-port", str(ports["metrics"])],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    while get(f"http://127.0.0.1:{ports['http']}/v2/health/ready")[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"tritonserver never became ready (exit {proc.poll()}):\n{log.read_text()[-6000:]}")
        time.sleep(0.3)
    yield {**ports, "proc": proc, "log": log, "repository": repo}
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def infer_grpc(port: int, wave: np.ndarray) -> str:
    import tritonclient.grpc as client

    inputs = [client.InferInput("audio", [1, len(wave)], "FP32"), client.InferInput("audio_length", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(wave[None])
    inputs[1].set_data_from_numpy(np.array([[len(wave)]], dtype=np.int64))
    with client.InferenceServerClient(f"127.0.0.1:{port}") as c:
        return c.infer(ENSEMBLE, inputs).as_numpy("text")[0][0].decode("utf-8")


def infer_http(port: int, wave: np.ndarray) -> str:
    import tritonclient.http as client

    inputs = [client.InferInput("audio", [1, len(wave)], "FP32"), client.InferInput("audio_length", [1, 1], "INT64")]
    inputs[0].set_data_from_numpy(wave[None])
    inputs[1].set_data_from_numpy(np.array([[len(wave)]], dtype=np.int64))
    c = client.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        return c.infer(ENSEMBLE, inputs).as_numpy("text")[0][0].decode("utf-8")
    finally:
        c.close()


def all_at_once(call, waves: list[np.ndarray]) -> list[str]:  # type: ignore[no-untyped-def]
    """``call(wave)`` for every wave from its own thread, released together: the server sees them concurrently."""
    out: list[str | BaseException] = [""] * len(waves)
    start = threading.Barrier(len(waves))

    def one(i: int) -> None:
        start.wait()
        try:
            out[i] = call(waves[i])
        except BaseException as e:  # reported below, in the test's thread
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(waves))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [o for o in out if isinstance(o, BaseException)]
    assert not errors, errors[:3]
    return [str(o) for o in out]


def metric(port: int, name: str, model: str, required: bool = True) -> float:
    """Triton's counter ``name`` for ``model``, summed over its other labels (a failure's reason)."""
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    found = re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M)
    values = [float(v) for labels, v in found if f'model="{model}"' in labels.split(",")]
    assert values or not required, f"{name} for {model} not in Triton's metrics"
    return sum(values)


def test_the_ensemble_answers_with_the_runtimes_text_over_grpc_and_http_batching_concurrent_requests(
    triton, exported, recipe
) -> None:
    from korasr.runtime.offline import Recognizer

    rows = eval_rows(recipe, 16)
    paths = [r["audio_filepath"] for r in rows]
    expected = [r.text for r in Recognizer(exported).transcribe(paths)]
    waves = [sf.read(p, dtype="float32")[0] for p in paths]
    assert all_at_once(lambda w: infer_grpc(triton["grpc"], w), waves) == expected
    assert all_at_once(lambda w: infer_http(triton["http"], w), waves) == expected
    requests = metric(triton["metrics"], "nv_inference_request_success", CTC)
    executions = metric(triton["metrics"], "nv_inference_exec_count", CTC)
    assert requests == 32 and executions < requests, (requests, executions)  # several requests in one execution
    assert metric(triton["metrics"], "nv_inference_request_failure", ENSEMBLE, required=False) == 0


def test_sigterm_stops_the_server_it_runs_in_the_foreground(triton) -> None:
    """`python -m korasr.triton_server` becomes tritonserver (make triton-serve): SIGTERM reaches the server, which
    unloads its models and exits 0."""
    triton["proc"].send_signal(signal.SIGTERM)
    assert triton["proc"].wait(60) == 0, triton["log"].read_text()[-3000:]
    log = triton["log"].read_text()
    assert f"successfully unloaded '{CTC}' version 1" in log


def test_the_two_backends_differ_only_in_the_ctc_step_and_take_their_options(exported, tmp_path) -> None:
    onnx = write_repository(exported, tmp_path / "onnxruntime", instances=2, keep_versions=3)
    python = write_repository(exported, tmp_path / "python", backend="python", instances=2, keep_versions=3)
    assert validate(onnx) == validate(python) == sorted([CTC, DECODE, ENSEMBLE])
    files = {repo: {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
             for repo in (onnx, python)}  # fmt: skip
    assert set(files[python]) - set(files[onnx]) == {f"{CTC}/1/model.py"} and set(files[onnx]) < set(files[python])
    differ = {rel for rel, data in files[onnx].items() if files[python][rel] != data}
    assert differ == {f"{CTC}/config.pbtxt"}
    a, b = load_config(onnx / CTC / "config.pbtxt"), load_config(python / CTC / "config.pbtxt")
    assert (a.backend, b.backend) == ("onnxruntime", "python")
    assert [i.allow_ragged_batch for i in b.input] == [True, False] and not any(i.allow_ragged_batch for i in a.input)
    b.backend = a.backend
    for i in b.input:
        i.allow_ragged_batch = False
    assert a == b  # nothing else differs
    for name in (CTC, DECODE, ENSEMBLE):
        assert load_config(python / name / "config.pbtxt").version_policy.latest.num_versions == 3
    assert [g.count for g in a.instance_group] == [2]
    with pytest.raises(ValueError, match="python backend"):
        write_repository(exported, tmp_path / "gpu", backend="python", device="gpu")
    with pytest.raises(ValueError, match="instances"):
        write_repository(exported, tmp_path / "many", instances=0)
    assert not (tmp_path / "gpu").exists() and not (tmp_path / "many").exists()
    info = json.loads((Path(exported) / "model.json").read_text(encoding="utf-8"))
    assert info["triton"] == sorted([CTC, DECODE, ENSEMBLE])
