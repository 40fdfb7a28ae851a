"""CTC prefix beam search with shallow fusion of a token n-gram LM and hotword boosting (no torch, no NeMo).

The search is flashlight-text's lexicon-free CTC decoder (C++, PyPI wheel with KenLM built in); the fusion score
of every new piece comes from :class:`FusionLM`, which scores it the way NeMo's ``beam_batch`` does, so that one
alpha/beta means the same in both:

    score(piece | history) = alpha · ln P_lm(piece | history) + beta + hotword boost

``ln`` of KenLM's log10 score; beta is added per emitted piece (not per repeated frame or blank), the end of
sentence is scored with alpha when the utterance ends. Hotwords are phrases, each with a boost per matched piece:
a hypothesis earns the boost piece by piece while it follows a hotword's pieces and gives back all it earned when
the match breaks (or the utterance ends) before the hotword is complete, so a partial match wins nothing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flashlight.lib.text.decoder import LM, CriterionType, LexiconFreeDecoder, LexiconFreeDecoderOptions, LMState

from korasr.errors import KorasrError
from korasr.runtime.ctc import collapse
from korasr.runtime.lm_artifact import token_symbol

LN10 = math.log(10.0)
DEFAULT_BEAM = 8
DEFAULT_BOOST = 2.0
MAX_HOTWORDS = 10_000


class HotwordError(KorasrError, ValueError):
    pass


@dataclass(frozen=True)
class BeamOptions:
    beam: int = DEFAULT_BEAM  # hypotheses kept per frame
    alpha: float = 0.5  # LM weight (natural-log scale, NeMo's ngram_lm_alpha)
    beta: float = 0.0  # bonus per emitted piece (NeMo's beam_beta)
    beam_tokens: int = 16  # pieces tried per frame, best first
    threshold: float = 20.0  # hypotheses further than this below the best are pruned (NeMo's beam_threshold)

    def validate(self) -> None:
        if not 1 <= self.beam <= 256:
            raise ValueError(f"beam must be between 1 and 256, got {self.beam}")
        if not 1 <= self.beam_tokens <= 4096:
            raise ValueError(f"beam_tokens must be between 1 and 4096, got {self.beam_tokens}")
        for name in ("alpha", "beta", "threshold"):
            value = getattr(self, name)
            if not math.isfinite(value) or abs(value) > 1000:
                raise ValueError(f"{name} must be a finite number within ±1000, got {value}")
        if self.threshold <= 0:
            raise ValueError(f"threshold must be positive, got {self.threshold}")


@dataclass(frozen=True)
class Hotword:
    phrase: str
    boost: float
    variants: tuple[tuple[int, ...], ...]  # piece-id sequences that spell the phrase


class HotwordTrie:
    """Pieces of every hotword variant in a trie. Reaching a node earns the boost of its last piece; leaving a
    partial match gives back what was earned since the last complete hotword on the way (a complete one keeps its
    boost). After a mismatch the match restarts at the root with the current piece (no Aho-Corasick failure links:
    a hotword that starts inside another's partial match is found only from its own first piece)."""

    def __init__(self, hotwords: list[Hotword]):
        self.children: list[dict[int, int]] = [{}]
        self.step: list[float] = [0.0]  # boost earned by the piece into the node
        self.parent: list[int] = [0]
        self.complete: list[bool] = [False]
        for word in hotwords:
            for variant in word.variants:
                self._add(variant, word.boost)
        # what leaving each node gives back: the boosts since its nearest complete ancestor (itself included)
        self.refund = [0.0] * len(self.children)
        for node in range(1, len(self.children)):  # parents are numbered before their children
            self.refund[node] = 0.0 if self.complete[node] else self.refund[self.parent[node]] + self.step[node]

    def _add(self, pieces: tuple[int, ...], boost: float) -> None:
        node = 0
        for piece in pieces:
            nxt = self.children[node].get(piece)
            if nxt is None:
                nxt = len(self.children)
                self.children[node][piece] = nxt
                self.children.append({})
                self.step.append(boost)
                self.parent.append(node)
                self.complete.append(False)
            else:  # a prefix shared by two hotwords earns the larger boost
                self.step[nxt] = max(self.step[nxt], boost)
            node = nxt
        self.complete[node] = True

    def advance(self, node: int, piece: int) -> tuple[int, float]:
        """The next node and the score change for ``piece`` after ``node``."""
        nxt = self.children[node].get(piece)
        if nxt is not None:
            delta = self.step[nxt]
        else:
            delta = -self.refund[node]
            nxt = self.children[0].get(piece, 0)
            delta += self.step[nxt] if nxt else 0.0
        if self.complete[nxt] and not self.children[nxt]:
            return 0, delta  # complete, and no longer hotword goes on from here: keep the boost, start over
        return nxt, delta

    def settle(self, node: int) -> float:
        """At the end of an utterance a partial match gives its boost back."""
        return -self.refund[node]


def piece_variants(processor, unit: str, phrase: str, n: int = 4) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """Up to ``n`` distinct piece sequences that spell ``phrase`` with a SentencePiece ``processor`` (its best
    segmentation first): inside a sentence the same words may be cut differently."""
    from korasr.text.codec import to_model_text

    text = to_model_text(phrase, unit)
    variants = [processor.encode(text)]
    try:
        alternatives = processor.nbest_encode_as_ids(text, n)
    except RuntimeError:  # only unigram models have n-best segmentations (char and BPE models have one)
        alternatives = []
    for ids in alternatives:
        if ids not in variants:
            variants.append(ids)
    return variants[:n]


def hotwords_from_lines(lines: list[str], encode, source: str = "hotwords") -> list[Hotword]:  # type: ignore[no-untyped-def]
    """``phrase`` or ``phrase<TAB>boost`` (or ``phrase :boost``) per line; ``#`` comments and blank lines skipped.

    ``encode(text) -> list[list[int]]`` gives the piece sequences that spell the phrase (the tokenizer's best
    segmentation first). A phrase the tokenizer cannot encode is an error naming the line."""
    import unicodedata

    words = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        boost = DEFAULT_BOOST
        phrase = line
        for sep in ("\t", " :"):
            if sep in line:
                phrase, _, value = line.rpartition(sep)
                try:
                    boost = float(value)
                except ValueError:
                    raise HotwordError(f"{source}:{number}: boost {value.strip()!r} is not a number") from None
                if not math.isfinite(boost) or not 0 < boost <= 50:
                    raise HotwordError(f"{source}:{number}: boost must be in (0, 50], got {boost}")
                break
        phrase = " ".join(unicodedata.normalize("NFC", phrase).split())
        if not phrase:
            raise HotwordError(f"{source}:{number}: an empty phrase")
        if len(phrase) > 100:
            raise HotwordError(f"{source}:{number}: a phrase of {len(phrase)} characters (at most 100)")
        if len(words) == MAX_HOTWORDS:
            raise HotwordError(f"{source}:{number}: more than {MAX_HOTWORDS:,} hotwords")
        variants = encode(phrase)
        if not variants or any(0 in v for v in variants):
            bad = sorted({c for c in phrase if c != " " and 0 in encode(c)[0]})
            raise HotwordError(f"{source}:{number}: {phrase!r} has characters the model's tokenizer cannot encode: "
                               f"{' '.join(bad) or '?'}")  # fmt: skip
        words.append(Hotword(phrase, boost, tuple(tuple(v) for v in variants)))
    return words


def hotword_file_lines(path: str | os.PathLike[str]) -> list[str]:
    """The lines of a hotwords file (for :func:`hotwords_from_lines`); a missing or non-UTF-8 file is a clear error."""
    try:
        return Path(path).read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such hotwords file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None


class FusionLM(LM):
    """A flashlight ``LM`` whose score is NeMo's fusion score (see the module docstring). ``kenlm`` may be None
    (beam search with beta and hotwords only); ``trie`` None for no hotwords."""

    def __init__(self, kenlm, alpha: float, beta: float, trie: HotwordTrie | None):  # type: ignore[no-untyped-def]
        LM.__init__(self)
        self.kenlm, self.alpha, self.beta, self.trie = kenlm, alpha * LN10, beta, trie
        self.states: dict = {}  # LMState -> (KenLM state, trie node); flashlight needs the LMStates kept alive
        self.cache: dict = {}  # (LMState, piece) -> (child LMState, score)

    def start(self, start_with_nothing: bool):  # type: ignore[no-untyped-def]
        self.states.clear()
        self.cache.clear()
        state = LMState()
        self.states[state] = (self.kenlm.start(start_with_nothing) if self.kenlm is not None else None, 0)
        return state

    def score(self, state, piece: int):  # type: ignore[no-untyped-def]
        # flashlight asks again for the same (history, piece) on every frame a hypothesis waits in a blank
        key = (state, piece)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        kstate, node = self.states[state]
        total = self.beta
        knext = None
        if self.kenlm is not None:
            knext, log10p = self.kenlm.score(kstate, piece)
            total += self.alpha * log10p
        if self.trie is not None:
            node, delta = self.trie.advance(node, piece)
            total += delta
        child = state.child(piece)  # one object per history, so hypotheses with the same pieces merge
        self.states.setdefault(child, (knext, node))
        self.cache[key] = (child, total)
        return child, total

    def finish(self, state):  # type: ignore[no-untyped-def]
        kstate, node = self.states[state]
        total = 0.0
        if self.kenlm is not None:
            total += self.alpha * self.kenlm.finish(kstate)[1]
        if self.trie is not None:
            total += self.trie.settle(node)
        return state, total


class BeamDecoder:
    """Beam search over one utterance's CTC log-probabilities ``[frames, vocab + 1]`` (blank last)."""

    def __init__(self, vocab_size: int, options: BeamOptions, lm_binary: str | os.PathLike[str] | None = None,
                 hotwords: list[Hotword] | None = None):  # fmt: skip
        options.validate()
        self.options, self.vocab_size, self.blank = options, vocab_size, vocab_size
        self.kenlm = None
        if lm_binary is not None:
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import Dictionary

            words = Dictionary([token_symbol(i) for i in range(vocab_size)] + ["<blank>"])
            self.kenlm = KenLM(str(Path(lm_binary)), words)
        self.trie = HotwordTrie(hotwords) if hotwords else None
        self._flashlight_options = LexiconFreeDecoderOptions(
            beam_size=options.beam,
            beam_size_token=min(options.beam_tokens, vocab_size + 1),
            beam_threshold=options.threshold,
            lm_weight=1.0,  # FusionLM returns the weighted score itself
            sil_score=0.0,
            log_add=False,  # Viterbi merging of equal prefixes, as NeMo's beam_batch
            criterion_type=CriterionType.CTC,
        )

    def with_hotwords(self, hotwords: list[Hotword] | None) -> BeamDecoder:
        """The same decoder (shared KenLM) with another hotword list, for one request."""
        other = object.__new__(BeamDecoder)
        other.__dict__.update(self.__dict__)
        other.trie = HotwordTrie(hotwords) if hotwords else None
        return other

    def decode(self, logprobs: np.ndarray) -> list[tuple[int, int]]:
        """``(piece id, frame)`` of the best hypothesis, as greedy decoding returns them."""
        return collapse(self.path(logprobs), self.blank)

    def path(self, logprobs: np.ndarray) -> list[int]:
        """The best hypothesis's alignment: one label per frame (blank included), the path it was scored on."""
        frames, width = logprobs.shape
        if width != self.vocab_size + 1:
            raise ValueError(f"log-probabilities have {width} columns, the decoder expects {self.vocab_size + 1}")
        if frames == 0:
            return []
        emissions = np.ascontiguousarray(logprobs, dtype=np.float32)
        lm = FusionLM(self.kenlm, self.options.alpha, self.options.beta, self.trie)
        decoder = LexiconFreeDecoder(self._flashlight_options, lm, self.blank, self.blank, [])
        best = decoder.decode(emissions.ctypes.data, frames, width)[0]
        return list(best.tokens)[1 : frames + 1]  # flashlight adds a symbol at each end
