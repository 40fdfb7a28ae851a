"""Confidence of CTC results from the frame posteriors, NeMo's methods in numpy (no torch, no NeMo).

A frame's confidence is a measure of its whole distribution over the vocabulary (blank included, ``V`` entries):
``max_prob`` (the largest probability) or ``entropy`` (Gibbs, Tsallis or Rényi entropy with power ``alpha``, mapped
to [0, 1] linearly or exponentially); 1 is certain, 0 is uniform. The formulas are NeMo's confidence measure bank
(``nemo/collections/asr/parts/utils/asr_confidence_utils.py``), and so are the defaults: Tsallis entropy, alpha 0.33,
exponential normalization, ``min`` aggregation, blank frames excluded (NeMo's ``ConfidenceConfig()``).

How frames become tokens, words and utterances, as NeMo's greedy CTC decoding does (``compute_confidence``):

- a token's frames are the frames of the CTC path that emit it (its repeats; with ``exclude_blank=False``, also the
  blanks and repeats after it up to the next token); its confidence aggregates theirs;
- a word's confidence aggregates its tokens' (a word starts at a piece with the ``▁`` boundary mark, as NeMo's rule
  for SentencePiece tokenizers and :func:`korasr.runtime.results.token_words` cut it);
- an utterance's confidence aggregates its non-blank frames (all frames with ``exclude_blank=False``; a path of
  blanks only: its first frame), NeMo's utterance confidence (``confidence_ensemble.compute_confidence``).

The path is greedy decoding's argmax path, or the beam search's best alignment (flashlight's frame-level tokens of
the chosen hypothesis): the frames that emit a token are then those where that alignment emits it, and each frame's
measure is the same function of the same posteriors. Where beam and greedy choose the same path, the numbers are
equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METHODS = ("max_prob", "entropy")
ENTROPY_TYPES = ("gibbs", "tsallis", "renyi")
ENTROPY_NORMS = ("lin", "exp")
AGGREGATIONS = ("mean", "min", "max", "prod")


@dataclass(frozen=True)
class ConfidenceOptions:
    """NeMo's ``ConfidenceConfig`` for CTC, with its defaults (``method_cfg`` flattened)."""

    method: str = "entropy"  # NeMo's method_cfg.name
    entropy_type: str = "tsallis"
    alpha: float = 0.33  # power scale of the log-probabilities (also for max_prob, as NeMo's decoding uses it)
    entropy_norm: str = "exp"
    aggregation: str = "min"  # frames to tokens, tokens to words, frames to utterances
    exclude_blank: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("method", METHODS), ("entropy_type", ENTROPY_TYPES), ("entropy_norm", ENTROPY_NORMS),
                              ("aggregation", AGGREGATIONS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"confidence {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha) and 0 < self.alpha <= 100):
            raise ValueError(f"confidence alpha must be in (0, 100], got {self.alpha!r}")

    @property
    def measure(self) -> str:
        """NeMo's name of the measure: ``max_prob`` or ``entropy_<type>_<norm>``."""
        return "max_prob" if self.method == "max_prob" else f"entropy_{self.entropy_type}_{self.entropy_norm}"


def frame_confidence(logprobs: np.ndarray, options: ConfidenceOptions = ConfidenceOptions()) -> np.ndarray:
    """Confidence in [0, 1] of each frame of ``[frames, V]`` log-probabilities (NeMo's measure bank, float64)."""
    x = np.nan_to_num(np.asarray(logprobs, dtype=np.float32)).astype(np.float64)  # NeMo: torch.nan_to_num
    v, t = x.shape[-1], float(options.alpha)
    if v < 2:
        raise ValueError(f"confidence needs at least 2 classes per frame, got {v}")
    if options.method == "max_prob":
        top = x.max(axis=-1)
        if t == 1.0:
            return (np.exp(top) * v - 1) / (v - 1)
        return (np.exp(top * t) * v**t - 1) / (v**t - 1)
    with np.errstate(under="ignore", invalid="ignore"):
        scaled = np.exp(x * t)
        if t == 1.0:  # every entropy is Gibbs' (Shannon's) at alpha 1
            neg_entropy = (scaled * x).sum(-1)
            if options.entropy_norm == "lin":
                return 1 + neg_entropy / math.log(v)
            return (np.exp(neg_entropy) * v - 1) / (v - 1)
        if options.entropy_type == "gibbs":
            neg_entropy = (scaled * x).sum(-1)
            if options.entropy_norm == "lin":
                return 1 + neg_entropy / math.log(v) / v ** (1 - t)
            floor = v ** (-t * v ** (1 - t))
            return (np.exp(neg_entropy * t) - floor) / (1 - floor)
        power_sum = scaled.sum(-1)
        if options.entropy_type == "tsallis":
            if options.entropy_norm == "lin":
                return 1 + (1 - power_sum) / (v ** (1 - t) - 1)
            floor = math.exp((1 - v ** (1 - t)) / (1 - t))
            return (np.exp((1 - power_sum) / (1 - t)) - floor) / (1 - floor)
        if options.entropy_norm == "lin":  # renyi
            return 1 + np.log2(power_sum) / (t - 1) / math.log2(v)
        return (power_sum ** (1 / (t - 1)) * v - 1) / (v - 1)


def aggregate(values: Sequence[float] | np.ndarray, how: str) -> float:
    """``mean``, ``min``, ``max`` or ``prod`` of a non-empty sequence (NeMo's aggregation bank)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("nothing to aggregate")
    if how == "mean":
        return float(values.mean())
    if how == "min":
        return float(values.min())
    if how == "max":
        return float(values.max())
    if how == "prod":
        return float(np.prod(values))
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {how!r}")


@dataclass
class PathConfidence:
    """Confidence along one CTC path: per emitted token (in the order of :func:`korasr.runtime.ctc.collapse`),
    the frame confidences behind each token, and the utterance's."""

    tokens: list[float]
    token_frames: list[np.ndarray]  # each token's frame confidences (what a segment of tokens aggregates)
    utterance: float | None  # None: no frames at all
    frames: int  # how many frames the utterance's confidence aggregates (to join chunks by weight)
    aggregation: str = "min"

    def word(self, start: int, stop: int) -> float:
        """A word's confidence: its tokens' (``start:stop``) aggregated."""
        return aggregate(self.tokens[start:stop], self.aggregation)

    def part(self, start: int, stop: int) -> PathConfidence:
        """The confidence of tokens ``start:stop`` alone (a segment): its utterance value aggregates their frames."""
        return PathConfidence.of_tokens(self.token_frames[start:stop], self.aggregation)

    @classmethod
    def of_tokens(cls, token_frames: Sequence[np.ndarray], aggregation: str) -> PathConfidence:
        """Tokens scored from their frames alone, the utterance value aggregating all of those frames (a segment of
        a path; a stream's utterance)."""
        frames = [np.asarray(f, dtype=np.float64) for f in token_frames]
        joined = np.concatenate(frames) if frames else np.zeros(0)
        value = aggregate(joined, aggregation) if joined.size else None
        return cls([aggregate(f, aggregation) for f in frames], frames, value, int(joined.size), aggregation)


def path_confidence(logprobs: np.ndarray, path: Sequence[int], blank: int,
                    options: ConfidenceOptions = ConfidenceOptions()) -> PathConfidence:  # fmt: skip
    """Token and utterance confidence of the frame-level CTC ``path`` (one label per frame of ``logprobs``)."""
    if len(path) != len(logprobs):
        raise ValueError(f"a path of {len(path)} labels for {len(logprobs)} frames")
    if len(path) == 0:
        return PathConfidence([], [], None, 0, options.aggregation)
    frames = frame_confidence(logprobs, options)
    labels = np.asarray(path)
    non_blank = labels != blank
    starts = np.flatnonzero(non_blank & np.r_[True, labels[1:] != labels[:-1]])  # where each token is emitted
    # exclude_blank: a token's repeats (non-blank frames from its start until the label changes); else, as NeMo,
    # the blanks and repeats after it too, up to the next token's start
    ends = [_run_end(labels, s) for s in starts] if options.exclude_blank else [*starts[1:].tolist(), len(labels)]
    token_frames = [frames[s:e] for s, e in zip(starts.tolist(), ends, strict=True)]
    tokens = [aggregate(f, options.aggregation) for f in token_frames]
    chosen = frames[non_blank] if options.exclude_blank else frames
    if chosen.size == 0:  # blanks only: NeMo takes the first frame
        chosen = frames[:1]
    return PathConfidence(tokens, token_frames, aggregate(chosen, options.aggregation), int(chosen.size),
                          options.aggregation)  # fmt: skip


def _run_end(labels: np.ndarray, start: int) -> int:
    end = start + 1
    while end < len(labels) and labels[end] == labels[start]:
        end += 1
    return end


def join_confidence(values: Sequence[float | None], frames: Sequence[int], how: str) -> float | None:
    """One utterance confidence from consecutive chunks' (each aggregating ``frames`` frames), as if aggregated over
    all those frames at once: the same for min, max and prod, the frame-weighted mean for mean."""
    pairs = [(v, n) for v, n in zip(values, frames, strict=True) if v is not None and n > 0]
    if not pairs:
        return None
    if how == "mean":
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
    return aggregate([v for v, _ in pairs], how)
