"""Korean ASR error rates on NFC text, with kaldialign's edit distance (no hand-written DP).

- ``cer``: character error rate without spaces (SpeechBrain, icefall): spaces removed from both sides.
- ``cer_space``: character error rate counting spaces as characters (ESPnet2, K-wav2vec).
- ``wer``: word error rate over space-separated words.
- ``swer``: space-normalized WER (ESPnet): the reference's spacing copied onto the hypothesis where their
  characters align, then WER. Korean spacing is inconsistent; sWER scores words without punishing it.

Each returns a percentage over the corpus (errors summed over utterances / reference length summed).
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

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

    @property
    def percent(self) -> float | None:
        """``rate`` rounded to 0.01 for reports; None (JSON null) where an empty reference met insertions."""
        return None if math.isinf(self.rate) else round(self.rate, 2)


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


# --- sWER ------------------------------------------------------------------------------------------------------

_EPS = "\x00"  # alignment gap; never in normalized text


def space_normalize(ref: str, hyp: str) -> str:
    """The hypothesis re-spaced like the reference (ESPnet's sWER): characters are aligned without spaces, and a
    word break goes before the hypothesis character that follows a reference word start. Inserted characters join
    the word before them; a break whose reference character was deleted moves to the next hypothesis character."""
    words = _nfc(ref).split()
    hyp_chars = _nfc(hyp).replace(" ", "")
    if not hyp_chars or not words:
        return hyp_chars
    starts = set(accumulate(len(word) for word in words[:-1]))  # no-space offsets where words 2.. begin
    out: list[str] = []
    index, pending = 0, False
    for r, h in kaldialign.align(list("".join(words)), list(hyp_chars), _EPS):
        if r != _EPS:
            pending = pending or index in starts
            index += 1
        if h != _EPS:
            if pending and out:
                out.append(" ")
            pending = False
            out.append(h)
    return "".join(out)


def swer_counts(refs: Iterable[str], hyps: Iterable[str]) -> Counts:
    return _sum((_nfc(r).split(), space_normalize(r, h).split()) for r, h in zip(refs, hyps, strict=True))


def swer(refs: list[str], hyps: list[str]) -> float:
    return swer_counts(refs, hyps).rate


# --- error kinds -------------------------------------------------------------------------------------------------


def cer_detail(refs: Iterable[str], hyps: Iterable[str]) -> dict[str, int]:
    """Substitutions, deletions and insertions behind ``cer`` (no spaces), and the reference length."""
    out = {"sub": 0, "del": 0, "ins": 0, "ref": 0}
    for r, h in zip(refs, hyps, strict=True):
        ref, hyp = list(_nfc(r).replace(" ", "")), list(_nfc(h).replace(" ", ""))
        d = kaldialign.edit_distance(ref, hyp)
        out["sub"] += d["sub"]
        out["del"] += d["del"]
        out["ins"] += d["ins"]
        out["ref"] += len(ref)
    return out


# --- jamo-level analysis -----------------------------------------------------------------------------------------

SLOTS = ("onset", "nucleus", "coda")


def syllable_parts(char: str) -> tuple[str, str, str] | None:
    """(onset, nucleus, coda) of a Hangul syllable as conjoining jamo ("" for no coda); a lone jamo (what a jamo
    model leaves when a syllable breaks) fills its own slot; None for anything else (digits, Latin)."""
    code = ord(char)
    if 0xAC00 <= code <= 0xD7A3:
        index = code - 0xAC00
        onset, nucleus, coda = index // 588, (index % 588) // 28, index % 28
        return chr(0x1100 + onset), chr(0x1161 + nucleus), chr(0x11A7 + coda) if coda else ""
    jamo = unicodedata.normalize("NFKC", char) if 0x3131 <= code <= 0x318E else char
    if len(jamo) != 1:
        return None
    code = ord(jamo)
    if 0x1100 <= code <= 0x115F:
        return jamo, "", ""
    if 0x1160 <= code <= 0x11A7:
        return "", jamo, ""
    if 0x11A8 <= code <= 0x11FF:
        return "", "", jamo
    return None


_OTHER = ("?", "?", "")  # a non-Hangul character in the hypothesis: wrong onset and nucleus, no coda


@dataclass
class SlotCounts:
    ref: int = 0
    sub: int = 0
    dels: int = 0
    ins: int = 0

    def as_dict(self) -> dict:
        return {
            "rate": Counts(self.sub + self.dels + self.ins, self.ref).percent,
            "ref": self.ref,
            "sub": self.sub,
            "del": self.dels,
            "ins": self.ins,
        }


def jamo_analysis(refs: Iterable[str], hyps: Iterable[str], top: int = 20) -> dict:
    """Onset (초성), nucleus (중성) and coda (종성) error rates over the syllable alignment of ``cer``.

    Syllables are aligned as for CER (NFC, no spaces). Within an aligned pair each slot is compared: a slot the
    hypothesis leaves empty is a deletion, one it fills where the reference has none an insertion (only codas can
    be), a different jamo a substitution. A deleted reference syllable deletes its slots, an inserted hypothesis
    syllable inserts its slots. Rates are (sub + del + ins) / reference count of that slot (every Hangul syllable
    has an onset and a nucleus; the coda count is the syllables with 받침). Reference characters that are not
    Hangul are left out. Also returns the ``top`` most frequent syllable substitutions.
    """
    counts = {slot: SlotCounts() for slot in SLOTS}
    confusions: Counter[tuple[str, str]] = Counter()
    for r, h in zip(refs, hyps, strict=True):
        ref, hyp = list(_nfc(r).replace(" ", "")), list(_nfc(h).replace(" ", ""))
        for a, b in kaldialign.align(ref, hyp, _EPS):
            ref_parts = syllable_parts(a) if a != _EPS else ("", "", "")
            if a != _EPS and (ref_parts is None or not ref_parts[0] or not ref_parts[1]):
                continue  # not a full Hangul syllable in the reference
            hyp_parts = (syllable_parts(b) or _OTHER) if b != _EPS else ("", "", "")
            if a != _EPS and b != _EPS and a != b:
                confusions[(a, b)] += 1
            for slot, x, y in zip(SLOTS, ref_parts, hyp_parts, strict=True):
                c = counts[slot]
                c.ref += bool(x)
                if x and not y:
                    c.dels += 1
                elif y and not x:
                    c.ins += 1
                elif x != y:
                    c.sub += 1
    return {
        **{slot: c.as_dict() for slot, c in counts.items()},
        "confusions": [[a, b, n] for (a, b), n in confusions.most_common(top)],
    }
