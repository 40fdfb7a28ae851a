"""Reduced-precision copies of ``model.onnx``: the graphs a TensorRT engine (or a GPU runtime) is built from.

TensorRT builds strongly typed networks (TensorRT 11 always; 10.x with the STRONGLY_TYPED flag): the precision of
every layer is the precision of its tensors in the ONNX graph, and INT8 is explicit, as QuantizeLinear /
DequantizeLinear pairs. Implicit INT8 calibration (``IInt8EntropyCalibrator2``) is deprecated since TensorRT 10.1.
So korasr writes the precision into the graphs and TensorRT only compiles them:

- ``model.fp16.onnx``: the encoder and CTC head in float16; the mel front end (power spectrum, log), the
  positional encoding (computed from the length) and the softmaxes stay float32, as do inputs and outputs.
- ``model.int8.onnx``: every MatMul of the encoder and head quantized, symmetric INT8 (zero point 0, TensorRT's
  scheme): weights per output channel, activations per tensor with ranges calibrated (min/max) by running
  utterances of a manifest, by default the recipe's dev set. The front end is not quantized.

Both graphs are gated like ``model.onnx`` but against ``model.onnx`` itself: identical output lengths, and greedy
transcripts whose piece error rate against the float32 graph's stays within a stated tolerance. onnxruntime runs
both on CPU, so the gate runs everywhere; they are not faster than float32 on CPU for small models (measured in
bench/README.md), their point is the GPU.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FRONTEND_PREFIX = "/frontend/"  # node names of the mel front end in model.onnx (korasr.export's WaveformCTC)
POSITIONS_PREFIX = "/ctc/encoder/pos_enc/"  # the relative positional encoding, computed from the length (Range)
# Piece error rate (%) of a reduced-precision graph's greedy output against model.onnx's, on the parity utterances
TOLERANCE = {"fp16": 1.0, "int8": 3.0, "int8-dynamic": 3.0}


def toposort(graph) -> None:  # type: ignore[no-untyped-def]
    """Reorder ``graph.node`` topologically in place (onnxruntime's float16 converter appends its input casts
    at the end, which onnx.checker rejects)."""
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a dangling input near node {pending[0].name!r}")
        for n in ready:
            ordered.append(n)
            produced.update(n.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def to_float16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    frontend = [n.name for n in model.graph.node if n.name.startswith(FRONTEND_PREFIX)]
    if not frontend:
        raise ValueError(f"{src}: no front-end nodes named {FRONTEND_PREFIX}* (not a korasr model.onnx)")
    positions = [n.name for n in model.graph.node if n.name.startswith(POSITIONS_PREFIX)]
    half = convert_float_to_float16(
        model, keep_io_types=True, node_block_list=frontend + positions, op_block_list=["Softmax", "LogSoftmax"]
    )
    toposort(half.graph)
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))


def quantize_int8(src: Path, dst: Path, waves: list[np.ndarray]) -> dict:
    """Q/DQ INT8 copy of ``src`` calibrated on ``waves`` (16 kHz mono float32, one utterance per run)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not waves:
        raise ValueError("INT8 calibration needs at least one utterance")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(waves)

        def get_next(self) -> dict | None:
            wave = next(self.items, None)
            if wave is None:
                return None
            return {"audio": wave[None].astype(np.float32), "audio_length": np.array([len(wave)], dtype=np.int64)}

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        frontend = [n.name for n in onnx.load(str(prepared)).graph.node if n.name.startswith(FRONTEND_PREFIX)]
        quantize_static(
            str(prepared),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=frontend,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    graph = onnx.load(str(dst))
    onnx.checker.check_model(graph)
    quantized = sum(1 for n in graph.graph.node if n.op_type == "QuantizeLinear")
    return {
        "calibration_utterances": len(waves),
        "calibration_seconds": round(sum(len(w) for w in waves) / 16000, 1),
        "method": "min/max, symmetric int8; weights per output channel, activations per tensor",
        "quantized_ops": "MatMul (encoder and head; front end excluded)",
        "quantize_nodes": quantized,
    }


def quantize_int8_dynamic(src: Path, dst: Path) -> dict:
    """INT8 copy of ``src`` for CPUs: every MatMul with a weight (the encoder's and the head's linear layers; front
    end excluded) as onnxruntime's MatMulInteger, weights INT8 per output channel, activations quantized per call
    from their own range (no calibration). The activation × activation products of attention stay float32. On
    x86 cores with VNNI this is the graph that runs faster than float32 (bench/inference.py); the static Q/DQ graph
    (:func:`quantize_int8`) is TensorRT's."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src))
    weights = {i.name for i in graph.graph.initializer}
    nodes = [n.name for n in graph.graph.node if n.op_type == "MatMul" and not n.name.startswith(FRONTEND_PREFIX)
             and any(i in weights for i in n.input)]  # fmt: skip
    if not nodes:
        raise ValueError(f"{src}: no MatMul with a weight to quantize (not a korasr model.onnx)")
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, per_channel=True,
                     weight_type=QuantType.QInt8)  # fmt: skip
    onnx.checker.check_model(str(dst))
    return {"method": "dynamic: weights int8 per output channel, activations per call (uint8, asymmetric)",
            "quantized_ops": f"MatMul with a weight: {len(nodes)} (front end and attention's products excluded)"}  # fmt: skip


def piece_error_rate(reference: list[list[int]], hypothesis: list[list[int]]) -> float:
    """Edit distance between greedy piece sequences, as % of the reference's pieces (kaldialign)."""
    import kaldialign

    errors = sum(kaldialign.edit_distance(r, h)["total"] for r, h in zip(reference, hypothesis, strict=True))
    return 100.0 * errors / max(sum(len(r) for r in reference), 1)


def session(path: Path, threads: int | None = None):  # type: ignore[no-untyped-def]
    from korasr.runtime.onnx import session as ort_session

    return ort_session(path, threads)
