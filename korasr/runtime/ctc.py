"""CTC's collapse rule, in one place: greedy decoding, beam search and the export's parity check use it."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def collapse(path: Iterable[int], blank: int) -> list[tuple[int, int]]:
    """``(piece id, frame)`` for each emitted piece of a frame-level CTC path: repeats merged, blanks dropped."""
    tokens: list[tuple[int, int]] = []
    previous = -1
    for frame, token in enumerate(path):
        if token != previous and token != blank:
            tokens.append((token, frame))
        previous = token
    return tokens


def best_path(logprobs: np.ndarray) -> list[int]:
    """The most likely label of each frame of ``[frames, vocab + 1]`` log-probabilities (greedy's path)."""
    return logprobs.argmax(axis=-1).tolist()


def greedy(logprobs: np.ndarray, blank: int) -> list[tuple[int, int]]:
    """Best path decoding of ``[frames, vocab + 1]`` log-probabilities."""
    return collapse(best_path(logprobs), blank)
