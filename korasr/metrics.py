"""Korean ASR error rates on NFC text, with kaldialign's edit distance (no hand-written DP).

- ``cer``: character error rate without spaces (SpeechBrain, icefall): spaces removed from both sides.
- ``cer_space``: character error rate counting spaces as characters (ESPnet2, K-wav2vec).
- ``wer``: word error rate over space-separated words.

Each returns a percentage over the corpus (errors summed over utterances / reference length summed).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import kaldialign


@dataclass(frozen=True)
class Counts:
    errors: int
    ref_len: int

    @property
    def rate(self) -> float:
        """Percent; with an empty reference, 0 when nothing was inserted, else infinite."""
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return 100.0 * self.errors / self.ref_len


def _nfc(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _sum(pairs: Iterable[tuple[list[str], list[str]]]) -> Counts:
    errors = ref_len = 0
    for ref, hyp in pairs:
        errors += kaldialign.edit_distance(ref, hyp)["total"]
        ref_len += len(ref)
    return Counts(errors, ref_len)


def cer_counts(refs: Iterable[str], hyps: Iterable[str]) -> Counts:
    return _sum(
        (list(_nfc(r).replace(" ", "")), list(_nfc(h).replace(" ", ""))) for r, h in zip(refs, hyps, strict=True)
    )


def cer_space_counts(refs: Iterable[str], hyps: Iterable[str]) -> Counts:
    return _sum((list(_nfc(r)), list(_nfc(h))) for r, h in zip(refs, hyps, strict=True))


def wer_counts(refs: Iterable[str], hyps: Iterable[str]) -> Counts:
    return _sum((_nfc(r).split(), _nfc(h).split()) for r, h in zip(refs, hyps, strict=True))


def cer(refs: list[str], hyps: list[str]) -> float:
    return cer_counts(refs, hyps).rate


def cer_space(refs: list[str], hyps: list[str]) -> float:
    return cer_space_counts(refs, hyps).rate


def wer(refs: list[str], hyps: list[str]) -> float:
    return wer_counts(refs, hyps).rate
