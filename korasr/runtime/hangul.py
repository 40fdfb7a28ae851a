"""CTC's best path restricted to well-formed Hangul: the ``greedy-hangul`` decoder of jamo models.

A jamo model (``char-jamo``, ``jamo``: conjoining jamo, korasr.text.codec) emits initials, vowels and finals one by
one, and greedy decoding (the most likely label of each frame) can emit sequences that compose into no syllable: an
initial with no vowel after it, a vowel or a final with nothing before it. The codec shows such an orphan as a
compatibility jamo (``차ㅇ를``), one wrong character at least. This decoder finds the most likely frame path whose
pieces spell only whole syllables: Viterbi over CTC's labels (blank, repeats) times a three-state automaton of
Hangul's syllable structure (before a syllable; after an initial, a vowel must follow; after a vowel, a final, a new
syllable or anything else may). Where greedy's path already spells whole syllables it is this decoder's path too
(the same maximum over a set that contains it), so it changes only what greedy gets malformed; and so the search runs
only on an utterance whose greedy path does not spell whole syllables (the search: about 55 µs per frame on one
core here, a quarter of what the sample model's graph costs per frame; over the sample eval splits, where 19–43% of
the utterances need it, decoding runs at 1,700–3,900× real time). It reads nothing but the log-probs: no LM.

Pieces of a ``syllable`` or ``char-syllable`` model hold no conjoining jamo: every path spells whole syllables, and
the decoder returns greedy's without a search. :func:`default_decoder` is what korasr decodes a model with when no
decoder is named (``korasr evaluate``, ``make train``'s report, ``korasr transcribe``, ``korasr serve`` and its live
streams' finals): ``greedy-hangul`` for a vocabulary with jamo, ``greedy`` otherwise (where the two are the same).
"""

from __future__ import annotations

import numpy as np

from korasr.runtime.ctc import collapse
from korasr.text.codec import MODERN_FINALS, MODERN_INITIALS, MODERN_VOWELS

BEFORE, INITIAL, VOWEL = 0, 1, 2  # before a syllable (start, after a final, a space or any other character)
STATES = 3
ROLES = {**dict.fromkeys(MODERN_INITIALS, "initial"), **dict.fromkeys(MODERN_VOWELS, "vowel"),
         **dict.fromkeys(MODERN_FINALS, "final")}  # fmt: skip


def _role(ch: str) -> str:
    return ROLES.get(ch, "other")  # other: the word boundary, digits, Latin letters, punctuation


def _step(state: int | None, role: str) -> int | None:
    if state is None:
        return None
    if role == "initial":
        return INITIAL if state != INITIAL else None
    if role == "vowel":
        return VOWEL if state == INITIAL else None
    if role == "final":
        return BEFORE if state == VOWEL else None
    return BEFORE if state != INITIAL else None


def has_jamo(pieces: list[str]) -> bool:
    """Whether a vocabulary holds conjoining jamo (so greedy decoding can spell a broken syllable)."""
    return any(_role(ch) != "other" for piece in pieces for ch in piece)


def default_decoder(pieces: list[str]) -> str:
    """The LM-free decoder korasr uses for a model whose pieces are ``pieces`` when none is named."""
    return "greedy-hangul" if has_jamo(pieces) else "greedy"


class HangulPath:
    """The decoder over one vocabulary (``pieces``: the model's pieces, blank not among them; blank is the last
    label of the log-probs, as in every korasr export)."""

    def __init__(self, pieces: list[str]) -> None:
        self.vocab = len(pieces)
        nxt = np.full((STATES, self.vocab), -1, dtype=np.int64)
        for k, piece in enumerate(pieces):
            for q in range(STATES):
                state: int | None = q
                for ch in piece:
                    state = _step(state, _role(ch))
                nxt[q, k] = -1 if state is None else state
        self.next = nxt  # [state, piece] → state after it, -1: not allowed there
        self.allowed = [np.flatnonzero(nxt[q] >= 0) for q in range(STATES)]
        self.target = [nxt[q][self.allowed[q]] for q in range(STATES)]
        self.trivial = not has_jamo(pieces)  # no jamo: greedy's path

    def accepts(self, path: list[int]) -> bool:
        """Whether a frame path's CTC collapse spells whole syllables."""
        return self.spells_syllables(label for label, _ in collapse(path, self.vocab))

    def spells_syllables(self, pieces) -> bool:  # type: ignore[no-untyped-def]
        """Whether a sequence of piece ids (a collapsed path) spells whole syllables."""
        state = BEFORE
        for label in pieces:
            state = int(self.next[state, label])
            if state < 0:
                return False
        return state != INITIAL

    def path(self, logprobs: np.ndarray) -> list[int]:
        """The most likely label of each frame of ``[frames, vocab + 1]`` log-probabilities whose CTC collapse
        spells whole syllables (its collapse is what the runtime decodes)."""
        frames, labels = logprobs.shape
        if labels != self.vocab + 1:
            raise ValueError(f"log-probs have {labels} labels; this vocabulary has {self.vocab} pieces and blank")
        greedy = logprobs.argmax(axis=-1).tolist()
        if self.trivial or frames == 0 or self.accepts(greedy):
            return greedy  # greedy's path spells whole syllables: it is the best of those (most utterances)
        return self.search(logprobs)

    def search(self, logprobs: np.ndarray) -> list[int]:
        """The Viterbi search itself (what :meth:`path` runs when greedy's path is malformed)."""
        frames, labels = logprobs.shape
        greedy = logprobs.argmax(axis=-1).tolist()
        if frames == 0:
            return greedy
        lp = logprobs.astype(np.float64, copy=False)
        blank = self.vocab
        neg = -np.inf
        score = np.full((STATES, labels), neg)  # [state, label held on this frame]
        score[BEFORE, blank] = lp[0, blank]
        ks, to = self.allowed[BEFORE], self.target[BEFORE]
        score[to, ks] = lp[0, ks]
        # back[t, q, l] = the previous frame's (state, label), flattened as state * labels + label
        back = np.empty((frames, STATES, labels), dtype=np.int32)
        flat = np.arange(STATES * labels, dtype=np.int32).reshape(STATES, labels)
        rows = np.arange(STATES)
        for t in range(1, frames):
            new = score + lp[t]  # the label held: a repeat, or blank continued
            nb = flat.copy()
            best = score.argmax(axis=1)  # blank after any label of the same state
            through = score[rows, best] + lp[t, blank]
            take = through > new[:, blank]
            new[take, blank] = through[take]
            nb[take, blank] = flat[rows[take], best[take]]
            top2 = np.argpartition(-score, 1, axis=1)[:, :2]
            for q in range(STATES):  # a new piece k after any label but k itself
                ks, to = self.allowed[q], self.target[q]
                if ks.size == 0:
                    continue
                first, second = top2[q]
                if score[q, second] > score[q, first]:
                    first, second = second, first
                source = np.where(ks == first, second, first)
                value = score[q, source] + lp[t, ks]
                better = value > new[to, ks]
                new[to[better], ks[better]] = value[better]
                nb[to[better], ks[better]] = flat[q, source[better]]
            score = new
            back[t] = nb
        ends = score.copy()
        ends[INITIAL] = neg  # an initial with no vowel cannot end the utterance
        state, label = np.unravel_index(int(ends.argmax()), ends.shape)
        if not np.isfinite(ends[state, label]):  # nothing well-formed (cannot happen: all blank always is)
            return greedy
        path = [0] * frames
        for t in range(frames - 1, -1, -1):
            path[t] = int(label)
            if t:
                state, label = divmod(int(back[t, state, label]), labels)
        return path
