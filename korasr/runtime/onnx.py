"""What every onnxruntime user in korasr shares: the session setup, tokens.txt, and padding a batch of waves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def thread_cap() -> int | None:
    """``OMP_NUM_THREADS`` when it is a positive whole number: the usual cap on one process's compute threads (a
    container's CPU limit, a batch system's share, a process beside another on the same cores), which PyTorch
    honours and onnxruntime does not. korasr applies it to both."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def session(path: str | os.PathLike[str], threads: int | None = None, providers=None):  # type: ignore[no-untyped-def]
    """An onnxruntime session on ``path``: quiet logs, ``threads`` intra-op threads (default: ``OMP_NUM_THREADS``
    when set, else onnxruntime's: one per physical core of the machine), CPU unless ``providers`` says otherwise."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    threads = threads or thread_cap()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def read_tokens(path: str | os.PathLike[str], vocab_size: int | None = None) -> list[str]:
    """The pieces of a sherpa-onnx ``tokens.txt`` (``piece id`` per line, in id order; the blank last)."""
    pieces = []
    for number, line in enumerate(Path(path).read_text("utf-8").splitlines()):
        piece, _, index = line.rpartition(" ")
        if not piece or not index.isdigit() or int(index) != number:
            raise ValueError(f"{path}: line {number + 1} is not '<piece> {number}': {line!r}")
        pieces.append(piece)
    if vocab_size is not None and len(pieces) != vocab_size:
        raise ValueError(f"{path}: {len(pieces)} tokens, the model has {vocab_size} outputs")
    return pieces


def pad_batch(waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded ``[B, N]`` float32 (N ≥ 1) and int64 lengths."""
    lengths = np.array([len(w) for w in waves], dtype=np.int64)
    audio = np.zeros((len(waves), max(int(lengths.max()), 1) if len(waves) else 1), dtype=np.float32)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = w
    return audio, lengths
