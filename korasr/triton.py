"""A Triton Inference Server model repository from an export directory, and its offline validation.

```
triton/
  korasr_ctc/     config.pbtxt, 1/model.onnx      onnxruntime backend: audio + length → log-probs + lengths
                  (or, with backend="python": 1/model.py running the same model.onnx with onnxruntime inside
                  Triton's python backend: a CPU node's choice, and what Triton's PyPI build can serve)
  korasr_decode/  config.pbtxt, 1/model.py, 1/korasr/ (hangul, ctc, codec), 1/tokens.txt
                                                  python backend: greedy CTC (greedy-hangul for a jamo model,
                                                  as the runtime decodes) → NFC text
  korasr_asr/     config.pbtxt, 1/                ensemble: audio, audio_length → text
```

Dynamic batching on ``korasr_ctc`` (the onnxruntime backend batches requests of equal padded length; ``audio_length``
carries each utterance's true length, so a client may pad to coarse buckets to batch more; the python backend pads the
requests Triton hands it together itself), CPU or GPU instance groups, and a version policy that keeps the newest N
versions of each model loaded. :func:`validate` parses every config.pbtxt with
tritonclient's protobuf schema and checks names, data types and dims against the ONNX graph.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from korasr.fsutil import ArtifactKind, staged_dir
from korasr.text import codec

CTC, DECODE, ENSEMBLE, STREAM = "korasr_ctc", "korasr_decode", "korasr_asr", "korasr_stream"
# Triton reads only the model folders of a repository: the marker file beside them is not a model.
TRITON_FOLDER = ArtifactKind(
    "triton", (f"{ENSEMBLE}/config.pbtxt", f'name: "{ENSEMBLE}"'), (CTC, DECODE, ENSEMBLE, STREAM)
)
# korasr's streaming runtime, copied into korasr_stream/1/korasr/: what it imports, and no more (numpy, onnxruntime and
# soxr come from the server's environment)
STREAM_MODULES = ("__init__.py", "runtime/streaming.py", "runtime/confidence.py", "runtime/onnx.py",
                  "runtime/results.py", "runtime/hangul.py", "runtime/ctc.py", "text/codec.py")  # fmt: skip
DECODE_MODULES = ("__init__.py", "runtime/hangul.py", "runtime/ctc.py", "text/codec.py")
ONNX_TO_TRITON = {1: "TYPE_FP32", 7: "TYPE_INT64", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32"}


BACKENDS = ("onnxruntime", "python")


@dataclass(frozen=True)
class TritonOptions:
    """How ``korasr export`` writes ``triton/`` (checked by :func:`write_repository`): the instance groups' kind and
    count, the CTC step's backend, and how many versions of each model Triton keeps loaded."""

    device: str = "cpu"
    backend: str = "onnxruntime"
    instances: int = 1
    keep_versions: int = 1
    max_batch: int = 16
    stream_idle_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.stream_idle_seconds <= 3600:
            raise ValueError(f"a stream's idle timeout must be in (0, 3600] seconds, not {self.stream_idle_seconds}")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"the Triton device must be cpu or gpu, not {self.device!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"the CTC step's backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.backend == "python" and self.device == "gpu":
            raise ValueError("the python backend's CTC step runs onnxruntime on CPU: a GPU takes the onnxruntime one")
        for name, low, high in (("instances", 1, 64), ("keep_versions", 1, 16), ("max_batch", 1, 1024)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"Triton {name} must be a whole number from {low} to {high}, not {value!r}")


def _policy(keep: int) -> str:
    return f"version_policy: {{ latest: {{ num_versions: {keep} }} }}\n"


def _ctc_config(vocab: int, max_batch: int, kind: str, count: int, backend: str, keep: int) -> str:
    # the python backend pads what it is handed itself: Triton may batch requests of any length (ragged)
    ragged = " allow_ragged_batch: true" if backend == "python" else ""
    return f"""name: "{CTC}"
backend: "{backend}"
max_batch_size: {max_batch}
{_policy(keep)}
input [
  {{ name: "audio" data_type: TYPE_FP32 dims: [ -1 ]{ragged} }},
  {{ name: "audio_length" data_type: TYPE_INT64 dims: [ 1 ] reshape: {{ shape: [ ] }} }}
]
output [
  {{ name: "logprobs" data_type: TYPE_FP32 dims: [ -1, {vocab} ] }},
  {{ name: "logprobs_length" data_type: TYPE_INT64 dims: [ 1 ] reshape: {{ shape: [ ] }} }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 5000
}}
instance_group [ {{ kind: {kind} count: {count} }} ]
"""


def _decode_config(vocab: int, max_batch: int, keep: int) -> str:
    return f"""name: "{DECODE}"
backend: "python"
max_batch_size: {max_batch}
{_policy(keep)}
input [
  {{ name: "logprobs" data_type: TYPE_FP32 dims: [ -1, {vocab} ] allow_ragged_batch: true }},
  {{ name: "logprobs_length" data_type: TYPE_INT64 dims: [ 1 ] }}
]
output [
  {{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }}
]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""


def _ensemble_config(max_batch: int, keep: int) -> str:
    return f"""name: "{ENSEMBLE}"
platform: "ensemble"
max_batch_size: {max_batch}
{_policy(keep)}
input [
  {{ name: "audio" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "audio_length" data_type: TYPE_INT64 dims: [ 1 ] }}
]
output [
  {{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{CTC}"
      model_version: -1
      input_map {{ key: "audio" value: "audio" }}
      input_map {{ key: "audio_length" value: "audio_length" }}
      output_map {{ key: "logprobs" value: "logprobs" }}
      output_map {{ key: "logprobs_length" value: "logprobs_length" }}
    }},
    {{
      model_name: "{DECODE}"
      model_version: -1
      input_map {{ key: "logprobs" value: "logprobs" }}
      input_map {{ key: "logprobs_length" value: "logprobs_length" }}
      output_map {{ key: "text" value: "text" }}
    }}
  ]
}}
"""


_PYTHONPATH_SNIPPET = """# Triton's python backend stub embeds an interpreter that ignores PYTHONPATH: the model applies it itself, so that
# what it imports comes from the server's environment (korasr.triton_server points it at make triton's venv)
for _entry in reversed([e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]):
    if _entry not in sys.path:
        sys.path.insert(0, _entry)
"""


DECODE_MODEL_PY = (
    '''"""Triton python backend: greedy CTC over log-probs (greedy-hangul for a jamo model: the runtime's default,
korasr.runtime.hangul, copied beside this file), pieces → NFC text (korasr export)."""

import json
import os
import sys

'''
    + _PYTHONPATH_SNIPPET
    + """
sys.path.insert(0, os.path.dirname(__file__))  # this copy of korasr, not another the server's directory may hold

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from korasr.runtime.ctc import collapse  # noqa: E402
from korasr.runtime.hangul import HangulPath, has_jamo  # noqa: E402
from korasr.text.codec import from_model_text  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(__file__)
        with open(os.path.join(here, "decode.json"), encoding="utf-8") as f:
            meta = json.load(f)
        self.unit, self.blank = meta["unit"], meta["blank_id"]
        with open(os.path.join(here, "tokens.txt"), encoding="utf-8") as f:
            self.pieces = [line.rstrip("\\n").rsplit(" ", 1)[0] for line in f]
        vocabulary = self.pieces[: self.blank]
        self.hangul = HangulPath(vocabulary) if has_jamo(vocabulary) else None

    def text(self, logprobs, length):
        logprobs = logprobs[:length]
        path = self.hangul.path(logprobs) if self.hangul is not None else logprobs.argmax(axis=-1).tolist()
        pieces = "".join(self.pieces[t] for t, _ in collapse(path, self.blank))
        return from_model_text(pieces.replace("\\u2581", " "), self.unit)

    def execute(self, requests):
        responses = []
        for request in requests:
            logprobs = pb_utils.get_input_tensor_by_name(request, "logprobs").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "logprobs_length").as_numpy().reshape(-1)
            texts = [self.text(lp, int(n)).encode("utf-8") for lp, n in zip(logprobs, lengths)]
            out = pb_utils.Tensor("text", np.array(texts, dtype=np.object_).reshape(-1, 1))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""
)


CTC_MODEL_PY = (
    '''"""Triton python backend: the exported CTC graph (model.onnx) run by onnxruntime (korasr export
--triton-backend python). Triton hands execute() the requests its dynamic batcher gathered; they are padded together
into one batch (each keeps its own length: audio_length) and each response gets its own rows, cut to its own longest
output."""

import os
import sys

'''
    + _PYTHONPATH_SNIPPET
    + """
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = os.environ.get("OMP_NUM_THREADS", "").strip()
        if threads.isdigit() and int(threads) > 0:  # the cap korasr honours everywhere (korasr.runtime.onnx)
            options.intra_op_num_threads = int(threads)
        graph = os.path.join(os.path.dirname(__file__), "model.onnx")
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        audio, lengths, rows = [], [], []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "audio").as_numpy()
            n = pb_utils.get_input_tensor_by_name(request, "audio_length").as_numpy().reshape(-1)
            audio.extend(a)
            lengths.extend(n.tolist())
            rows.append(len(a))
        batch = np.zeros((len(audio), max(len(a) for a in audio)), dtype=np.float32)
        for i, a in enumerate(audio):
            batch[i, : len(a)] = a
        logprobs, out_lengths = self.session.run(
            ["logprobs", "logprobs_length"], {"audio": batch, "audio_length": np.asarray(lengths, dtype=np.int64)}
        )
        responses, start = [], 0
        for count in rows:
            own = out_lengths[start : start + count]
            frames = int(own.max()) if count else 0
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("logprobs", np.ascontiguousarray(logprobs[start : start + count, :frames])),
                pb_utils.Tensor("logprobs_length", own.reshape(-1, 1).astype(np.int64)),
            ]))
            start += count
        return responses
"""
)


def _stream_config(max_batch: int, count: int, keep: int, idle_seconds: float, endpoint: dict) -> str:
    parameters = {"idle_seconds": idle_seconds, **endpoint}
    params = "\n".join(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in parameters.items())
    return f"""name: "{STREAM}"
backend: "python"
max_batch_size: {max_batch}
{_policy(keep)}
input [
  {{ name: "audio" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }}
]
output [
  {{ name: "events" data_type: TYPE_STRING dims: [ 1 ] }}
]
sequence_batching {{
  max_sequence_idle_microseconds: {int(idle_seconds * 1_000_000)}
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END" control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
  oldest {{
    max_candidate_sequences: 1024
    preferred_batch_size: [ {max_batch} ]
    max_queue_delay_microseconds: 5000
  }}
}}
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
{params}
"""


STREAM_MODEL_PY = (
    '''"""Triton python backend: korasr's streaming runtime (copied beside this file, korasr/) under Triton's sequence
batcher (korasr export of a --streaming model).

Each request carries one chunk of 16 kHz float32 audio (any size) of one sequence, with the batcher's START, END and
CORRID controls. The model keeps one korasr Stream (the encoder's caches, less than a chunk of audio) per sequence,
feeds it the chunk, and advances every sequence of the execution in batched encoder calls; each response is a JSON
object: the events the chunk produced (partials and finals, as korasr serve's WebSocket sends them) and how many
sequences the model holds. END finishes the sequence (its last final) and drops its state; a sequence idle longer than
idle_seconds (the batcher's max_sequence_idle, which frees its slot) is dropped too.
"""

import json
import os
import sys
import time

'''
    + _PYTHONPATH_SNIPPET
    + """
sys.path.insert(0, os.path.dirname(__file__))  # this copy of korasr, not another the server's directory may hold

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from korasr.runtime.streaming import Endpoint, StreamingModel  # noqa: E402


def _flag(request, name):
    return bool(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.idle = float(params["idle_seconds"])
        self.endpoint = Endpoint(float(params["silence_after_speech"]), float(params["silence_alone"]),
                                 float(params["max_utterance"]))
        threads = os.environ.get("OMP_NUM_THREADS", "").strip()
        self.model = StreamingModel(os.path.dirname(__file__), threads=int(threads) if threads.isdigit() else None,
                                    decoder=params.get("decoder"))
        self.streams = {}  # correlation id -> [Stream, the monotonic time of its last chunk]

    def execute(self, requests):
        now = time.monotonic()
        for cid in [c for c, (_, seen) in self.streams.items() if now - seen > self.idle]:
            del self.streams[cid]  # the batcher released it: nothing will end it
        work, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            cid = int(pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().reshape(-1)[0])
            if _flag(request, "START") or cid not in self.streams:
                self.streams[cid] = [self.model.stream(endpoint=self.endpoint, keep_segments=False), now]
            entry = self.streams[cid]
            entry[1] = now
            entry[0].accept(pb_utils.get_input_tensor_by_name(request, "audio").as_numpy().reshape(-1))
            end = _flag(request, "END")
            if end:
                entry[0].finish()
            work.append((i, cid, entry[0], end))
        self.model.run([stream for _, _, stream, _ in work])  # one encoder call per step for every sequence here
        for i, cid, stream, end in work:
            events = [event.as_dict() for event in stream.pop_events()]
            if end or stream.error is not None:
                self.streams.pop(cid, None)
            if stream.error is not None:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"sequence {cid}: {stream.error}"))
                continue
            body = json.dumps({"events": events, "sequences": len(self.streams)}, ensure_ascii=False)
            out = pb_utils.Tensor("events", np.array([body.encode("utf-8")], dtype=np.object_).reshape(1, 1))
            responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
        return responses
"""
)


def write_repository(
    export_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    device: str = "cpu",
    instances: int = 1,
    max_batch: int = 16,
    backend: str = "onnxruntime",
    keep_versions: int = 1,
    stream_idle_seconds: float = 60.0,
    force: bool = False,
) -> Path:
    """Write ``triton/`` (default: inside ``export_dir``) for ``device`` cpu or gpu instance groups of ``instances``
    CTC instances each, the CTC step on ``backend`` (onnxruntime, or python: the same graph through onnxruntime inside
    Triton's python backend), each model keeping its newest ``keep_versions`` versions loaded. An existing
    ``out_dir`` is replaced only when it is a repository korasr wrote (:func:`korasr.fsutil.staged_dir`), or with
    ``force``.

    An export of a streaming model also gets ``korasr_stream``: korasr's streaming runtime in the python backend under
    Triton's sequence batcher (:data:`STREAM_MODEL_PY`), whichever backend the CTC step takes; a sequence that sends
    nothing for ``stream_idle_seconds`` is released."""
    TritonOptions(device, backend, instances, keep_versions, max_batch, stream_idle_seconds)  # refused before writing
    export = Path(export_dir)
    info = json.loads((export / "model.json").read_text(encoding="utf-8"))
    vocab = int(info["vocab_size"])
    out = Path(out_dir) if out_dir else export / "triton"
    kind = "KIND_GPU" if device == "gpu" else "KIND_CPU"
    files = {
        f"{CTC}/config.pbtxt": _ctc_config(vocab, max_batch, kind, instances, backend, keep_versions),
        **({f"{CTC}/1/model.py": CTC_MODEL_PY} if backend == "python" else {}),
        f"{DECODE}/config.pbtxt": _decode_config(vocab, max_batch, keep_versions),
        f"{DECODE}/1/model.py": DECODE_MODEL_PY,
        f"{DECODE}/1/decode.json": json.dumps({"unit": info["unit"], "blank_id": info["blank_id"]}),
        f"{ENSEMBLE}/config.pbtxt": _ensemble_config(max_batch, keep_versions),
    }
    package = Path(codec.__file__).resolve().parent.parent
    for rel in DECODE_MODULES:
        files[f"{DECODE}/1/korasr/{rel}"] = (package / rel).read_text(encoding="utf-8")
    for rel in ("runtime/__init__.py", "text/__init__.py"):  # empty: the package's own import the whole runtime
        files[f"{DECODE}/1/korasr/{rel}"] = ""
    streaming = export / "streaming"
    if (streaming / "streaming.json").is_file():
        from korasr.runtime.streaming import Endpoint

        endpoint = Endpoint()
        files[f"{STREAM}/config.pbtxt"] = _stream_config(max_batch, instances, keep_versions, stream_idle_seconds, {
            "silence_after_speech": endpoint.silence_after_speech, "silence_alone": endpoint.silence_alone,
            "max_utterance": endpoint.max_utterance, "decoder": "greedy-hangul"})  # fmt: skip
        files[f"{STREAM}/1/model.py"] = STREAM_MODEL_PY
        for rel in STREAM_MODULES:
            files[f"{STREAM}/1/korasr/{rel}"] = (package / rel).read_text(encoding="utf-8")
        for rel in ("runtime/__init__.py", "text/__init__.py"):  # empty: the package's own import the whole runtime
            files[f"{STREAM}/1/korasr/{rel}"] = ""
    with staged_dir(out, TRITON_FOLDER, force=force) as tmp:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (tmp / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)
        (tmp / CTC / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(export / "model.onnx", tmp / CTC / "1" / "model.onnx")
        shutil.copyfile(export / "tokens.txt", tmp / DECODE / "1" / "tokens.txt")
        if f"{STREAM}/config.pbtxt" in files:
            shutil.copytree(streaming, tmp / STREAM / "1" / "streaming")
    return out


def load_config(path: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    """A config.pbtxt parsed with Triton's own protobuf schema (tritonclient)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(Path(path).read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def validate(repository: str | os.PathLike[str]) -> list[str]:
    """Parse every config and check ``korasr_ctc`` against its ONNX graph and the ensemble wiring; returns the
    model names, raises ValueError naming the file and the mismatch."""
    import onnx
    from tritonclient.grpc import model_config_pb2

    repo = Path(repository)
    configs = {p.parent.name: load_config(p) for p in sorted(repo.glob("*/config.pbtxt"))}
    for name, cfg in configs.items():
        if cfg.name != name:
            raise ValueError(f"{repo / name / 'config.pbtxt'}: name {cfg.name!r} differs from its folder")
    graph = onnx.load(str(repo / CTC / "1" / "model.onnx"), load_external_data=False).graph
    ctc = configs[CTC]
    for kind, tensors, declared in (("input", graph.input, ctc.input), ("output", graph.output, ctc.output)):
        by_name = {t.name: t for t in tensors}
        for d in declared:
            where = f"{repo / CTC / 'config.pbtxt'}: {kind} {d.name!r}"
            if d.name not in by_name:
                raise ValueError(f"{where} is not in model.onnx ({sorted(by_name)})")
            tensor = by_name[d.name].type.tensor_type
            dtype = model_config_pb2.DataType.Name(d.data_type)
            if ONNX_TO_TRITON.get(tensor.elem_type) != dtype:
                raise ValueError(f"{where}: {dtype} but the graph has ONNX type {tensor.elem_type}")
            onnx_dims = [dim.dim_value if dim.dim_value else -1 for dim in tensor.shape.dim][1:]  # minus batch
            dims = list(d.reshape.shape) if d.HasField("reshape") else list(d.dims)
            if len(dims) != len(onnx_dims) or any(
                a not in (-1, b) and b != -1 for a, b in zip(dims, onnx_dims, strict=True)
            ):
                raise ValueError(f"{where}: dims {dims} do not fit the graph's {onnx_dims}")
    ensemble = configs[ENSEMBLE]
    for step in ensemble.ensemble_scheduling.step:
        target = configs.get(step.model_name)
        if target is None:
            raise ValueError(
                f"{repo / ENSEMBLE / 'config.pbtxt'}: step model {step.model_name!r} is not in the repository"
            )
        names = {t.name for t in target.input}
        missing = set(step.input_map) - names
        if missing:
            raise ValueError(f"{repo / ENSEMBLE / 'config.pbtxt'}: {step.model_name} has no inputs {sorted(missing)}")
    return sorted(configs)
