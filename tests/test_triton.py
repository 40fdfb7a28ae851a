"""A real Triton Inference Server (make triton: the tritonserver PyPI's nvidia-pytriton bundles, python backend only)
loads the suite's export as a python-backend repository and answers through the ensemble with the runtime's text,
over gRPC and HTTP, batching concurrent requests; the onnxruntime-backend repository differs from it only in the CTC
step. `korasr serve --triton` (the gateway) answers with the in-process service's texts, its graph run by Triton, and
through a Triton killed and restarted under load answers 503/504 with a reason, never 500, then text again. The
streaming export's repository streams through Triton's sequence batcher with the streaming runtime's finals, and
releases a sequence that stops sending."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from korasr.triton import CTC, DECODE, ENSEMBLE, STREAM, load_config, validate, write_repository
from tests.conftest import eval_rows, free_port, get, serve_process, tritonserver

pytestmark = pytest.mark.slow

IDLE_SECONDS = 2.0


@pytest.fixture(scope="module")
def triton_streaming(exported_streaming, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Triton over the streaming export (korasr_stream among its models), a sequence released after 2 s idle."""
    tmp = tmp_path_factory.mktemp("triton-streaming")
    repo = write_repository(exported_streaming, tmp / "repository", backend="python", stream_idle_seconds=IDLE_SECONDS)
    with tritonserver(repo, tmp) as server:
        yield server


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


def all_at_once(call, items: list) -> list:  # type: ignore[no-untyped-def]
    """``call(item)`` for every item from its own thread, released together: the server sees them concurrently."""
    out: list = [None] * len(items)
    start = threading.Barrier(len(items))

    def one(i: int) -> None:
        start.wait()
        try:
            out[i] = call(items[i])
        except BaseException as e:  # reported below, in the test's thread
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [o for o in out if isinstance(o, BaseException)]
    assert not errors, errors[:3]
    return out


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


def post(url: str, path: str, timeout: float = 60) -> tuple[int, dict]:
    import requests

    with open(path, "rb") as f:
        r = requests.post(f"{url}/v1/transcribe", files={"audio": f}, timeout=timeout)
    return r.status_code, r.json()


def test_the_gateway_answers_with_the_services_texts_its_graph_run_by_triton(triton, exported, recipe, tmp_path):
    """`korasr serve --triton`: the same export folder, the graph in Triton. Its texts are the in-process
    service's (korasr transcribe's), the OpenAI route's too, and every clip went through Triton's korasr_ctc."""
    import requests

    from korasr.runtime.offline import Recognizer

    paths = [r["audio_filepath"] for r in eval_rows(recipe, 8)]
    expected = [r.text for r in Recognizer(exported).transcribe(paths)]
    before = metric(triton["metrics"], "nv_inference_count", CTC)  # utterances, however batched
    with serve_process(exported, tmp_path / "gateway.log", "--triton", f"127.0.0.1:{triton['grpc']}") as url:
        answers = all_at_once(lambda path: post(url, path), paths)
        assert [status for status, _ in answers] == [200] * 8, answers
        assert [body["text"] for _, body in answers] == expected
        with open(paths[0], "rb") as f:
            openai = requests.post(f"{url}/v1/audio/transcriptions", files={"file": f}, data={"model": "whisper-1"},
                                   timeout=60)  # fmt: skip
        assert openai.status_code == 200 and openai.json() == {"text": expected[0]}
    assert metric(triton["metrics"], "nv_inference_count", CTC) == before + 10  # the warm-up and the 9 clips


def test_the_gateway_keeps_batches_in_flight_and_triton_batches_them(triton, exported, recipe, tmp_path):
    """A gateway that batches nothing itself (--max-batch 1) still hands Triton its concurrent load: each request's
    batch awaits Triton on the asyncio client while the others go out (--triton-max-in-flight), so Triton's dynamic
    batcher runs several in one execution. A gateway that waited for each batch's answer before sending the next
    would make every execution a batch of one."""
    from korasr.runtime.offline import Recognizer

    paths = [r["audio_filepath"] for r in eval_rows(recipe, 8)] * 2
    expected = [r.text for r in Recognizer(exported).transcribe(paths)]
    with serve_process(exported, tmp_path / "gateway.log", "--triton", f"127.0.0.1:{triton['grpc']}",
                       "--max-batch", "1", "--triton-max-in-flight", "16", "--queue-size", "32") as url:  # fmt: skip
        requests = metric(triton["metrics"], "nv_inference_request_success", CTC)
        executions = metric(triton["metrics"], "nv_inference_exec_count", CTC)
        answers = all_at_once(lambda path: post(url, path), paths)
        assert [status for status, _ in answers] == [200] * 16, answers
        assert [body["text"] for _, body in answers] == expected
        requests = metric(triton["metrics"], "nv_inference_request_success", CTC) - requests
        executions = metric(triton["metrics"], "nv_inference_exec_count", CTC) - executions
    assert requests == 16 and executions < requests, (requests, executions)


def test_a_triton_killed_and_restarted_under_load_costs_503_or_504_with_a_reason_never_500(exported, recipe, tmp_path):
    """Clients keep sending through the gateway while Triton is killed (SIGKILL) and, a few seconds later, started
    again on the same ports: meanwhile answers are text, 503 or 504, each failure naming Triton; /health says 503
    while it is down; once it is back every request gets its text again."""
    from korasr.runtime.offline import Recognizer

    path = eval_rows(recipe, 1)[0]["audio_filepath"]
    expected = Recognizer(exported).transcribe([path])[0].text
    repo = write_repository(exported, tmp_path / "repository", backend="python")
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    answers: list[tuple[int, dict]] = []
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(tritonserver(repo, tmp_path, ports))
        url = stack.enter_context(serve_process(exported, tmp_path / "gateway.log", "--triton",
                                                f"127.0.0.1:{ports['grpc']}", "--triton-timeout", "3"))  # fmt: skip

        def load() -> None:
            while not stop.is_set():
                answers.append(post(url, path))

        clients = [threading.Thread(target=load) for _ in range(4)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 120
        while len(answers) < 8:
            assert time.monotonic() < deadline, answers
            time.sleep(0.05)
        os.killpg(first["proc"].pid, signal.SIGKILL)  # the server and its stubs, as a container's death would
        first["proc"].wait(30)
        down = len(answers)
        time.sleep(4)
        assert get(f"{url}/health")[0] == 503
        with tritonserver(repo, tmp_path, ports):
            back = len(answers)
            time.sleep(3)
            stop.set()
            for c in clients:
                c.join(120)
            final = post(url, path)
    assert all(status == 200 for status, _ in answers[:down]) and final == (200, final[1])
    assert final[1]["text"] == expected
    statuses = {status for status, _ in answers}
    assert statuses <= {200, 503, 504} and statuses & {503, 504}, statuses
    assert all("Triton" in body["error"] for status, body in answers if status != 200)
    assert all(body["text"] == expected for status, body in answers if status == 200)
    assert [status for status, _ in answers[back + 4 :]] == [200] * len(answers[back + 4 :])


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
    marker = {repo: json.loads(files[repo].pop(".korasr-artifact")) for repo in (onnx, python)}  # says when: differs
    assert marker[onnx]["entries"] == marker[python]["entries"]
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


def stream_chunk(client, cid: int, chunk: np.ndarray, start: bool, end: bool) -> dict:  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpc

    audio = grpc.InferInput("audio", [1, len(chunk)], "FP32")
    audio.set_data_from_numpy(np.ascontiguousarray(chunk[None], dtype=np.float32))
    answer = client.infer(STREAM, [audio], sequence_id=cid, sequence_start=start, sequence_end=end)
    return json.loads(answer.as_numpy("events")[0][0])


def test_eight_sequences_stream_through_the_sequence_batcher_with_the_streaming_runtimes_finals(
    triton_streaming, exported_streaming, recipe
) -> None:
    """8 eval_clean clips sent at once, 0.32 s at a time, each its own sequence (START on the first chunk, END on the
    last): each sequence's finals are exactly the streaming runtime's on the same clip, partials arrive before them,
    and Triton ran fewer executions than it got requests (sequences batched into one encoder call)."""
    import tritonclient.grpc as grpc

    from korasr.runtime.streaming import Endpoint, StreamingModel

    waves = [sf.read(r["audio_filepath"], dtype="float32")[0] for r in eval_rows(recipe, 8)]
    model = StreamingModel(exported_streaming)
    expected = [[seg.text for seg in model.transcribe(w, endpoint=Endpoint(), piece_seconds=0.32)] for w in waves]
    assert all(expected)

    def one(i: int) -> list[dict]:
        chunks = [waves[i][s : s + 5120] for s in range(0, len(waves[i]), 5120)]
        with grpc.InferenceServerClient(f"127.0.0.1:{triton_streaming['grpc']}") as client:
            return [e for k, chunk in enumerate(chunks)
                    for e in stream_chunk(client, 100 + i, chunk, k == 0, k == len(chunks) - 1)["events"]]  # fmt: skip

    events = all_at_once(one, list(range(8)))
    assert [[e["text"] for e in got if e["type"] == "final"] for got in events] == expected
    assert all(got[0]["type"] == "partial" and got[-1]["type"] == "final" for got in events)
    requests = metric(triton_streaming["metrics"], "nv_inference_request_success", STREAM)
    assert metric(triton_streaming["metrics"], "nv_inference_exec_count", STREAM) < requests


def test_a_sequence_that_stops_sending_is_released_after_its_idle_timeout(triton_streaming) -> None:
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    silence = np.zeros(5120, np.float32)
    with grpc.InferenceServerClient(f"127.0.0.1:{triton_streaming['grpc']}") as client:
        assert stream_chunk(client, 7000, silence, True, False)["sequences"] == 1
        assert stream_chunk(client, 7000, silence, False, False)["sequences"] == 1  # within its timeout: kept
        time.sleep(IDLE_SECONDS + 1.5)
        with pytest.raises(InferenceServerException, match="must specify the START flag"):
            stream_chunk(client, 7000, silence, False, True)  # the batcher let it go
        assert stream_chunk(client, 7001, silence, True, False)["sequences"] == 1  # and the model dropped its state
        assert stream_chunk(client, 7001, silence, False, True)["sequences"] == 0  # END drops it at once


def stream_over_websocket(url: str, wave: np.ndarray, frame: int = 1600) -> tuple[list[dict], int]:
    """A clip sent to `korasr serve`'s /v1/stream in 0.1 s int16 frames, then the end: every message and the close
    code."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    messages = []
    with connect(url.replace("http", "ws") + "/v1/stream?sample_rate=16000", open_timeout=30) as ws:
        for start in range(0, len(pcm), 2 * frame):
            ws.send(pcm[start : start + 2 * frame])
        ws.send(json.dumps({"type": "end"}))
        try:
            while True:
                messages.append(json.loads(ws.recv(timeout=60)))
        except ConnectionClosed as e:
            return messages, e.rcvd.code if e.rcvd else None


def test_the_gateway_streams_websockets_through_the_sequence_batcher(triton_streaming, exported_streaming, recipe,
                                                                    tmp_path):  # fmt: skip
    """`korasr serve --triton` over the streaming export: 6 WebSocket streams at once decode in Triton's
    korasr_stream (the gateway keeps the protocol, limits and metrics): each stream's finals are the in-process
    streaming runtime's on its clip, partials come before them, every chunk went through Triton, and a clip whose
    length is a whole number of chunks (its END chunk empty) ends like the others."""
    from korasr.runtime.streaming import Endpoint, StreamingModel

    model = StreamingModel(exported_streaming)
    waves = [sf.read(r["audio_filepath"], dtype="float32")[0] for r in eval_rows(recipe, 6)]
    chunk = round(model.chunk_seconds * 16000)
    waves[0] = waves[0][: len(waves[0]) // chunk * chunk]  # ends on a chunk boundary
    expected = [[seg.text for seg in model.transcribe(w, endpoint=Endpoint())] for w in waves]
    assert all(expected)
    before = metric(triton_streaming["metrics"], "nv_inference_request_success", STREAM, required=False)
    with serve_process(exported_streaming, tmp_path / "gateway.log", "--triton",
                       f"127.0.0.1:{triton_streaming['grpc']}") as url:  # fmt: skip
        answers = all_at_once(lambda w: stream_over_websocket(url, w), waves)
        status, text = get(f"{url}/metrics")
    assert [code for _, code in answers] == [1000] * len(waves), answers
    finals = [[m["text"] for m in messages if m["type"] == "final"] for messages, _ in answers]
    assert finals == expected
    assert all(messages[0]["type"] == "partial" and messages[-1]["type"] == "final" for messages, _ in answers)
    assert all(0 <= m["confidence"] <= 1 for messages, _ in answers for m in messages if m.get("confidence"))
    chunks = sum(-(-len(w) // chunk) for w in waves)
    assert metric(triton_streaming["metrics"], "nv_inference_request_success", STREAM) - before >= chunks
    assert status == 200 and 'korasr_stream_closes_total{code="1000"} 6.0' in text


def test_health_names_a_streaming_model_triton_does_not_serve_while_files_still_decode(
    triton_streaming, exported_streaming, recipe, tmp_path
):  # fmt: skip
    """The gateway's readiness covers every Triton model it sends work to: pointed at a streaming model Triton does
    not have, /health answers 503 naming that model (a load balancer takes the replica out), while a file still
    decodes through korasr_ctc."""
    import requests

    path = eval_rows(recipe, 1)[0]["audio_filepath"]
    with serve_process(exported_streaming, tmp_path / "gateway.log", "--triton", f"127.0.0.1:{triton_streaming['grpc']}",
                       "--triton-stream-model", "korasr_absent", healthy=False) as url:  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            answer = requests.get(f"{url}/health", timeout=10)
            if answer.json()["status"] != "loading" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"status": "upstream unavailable", "ready": False, "models": ["korasr_absent"]}
        status, body = post(url, path)
    assert status == 200 and body["text"]
