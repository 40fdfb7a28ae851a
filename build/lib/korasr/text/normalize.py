"""KsponSpeech transcript normalization: one raw transcript in, one normalized NFC line out.

The transcription conventions (see recipes/kspon/README.md, "Normalization") and the choices made here:

- ``(A)/(B)`` dual transcription: ``form="spelling"`` keeps A, ``form="phonetic"`` keeps B. Spaces inside a side
  are collapsed and trimmed; a ``+`` or ``/`` right after the pair marks the whole pair as a repeat or a filler.
  A pair glued to the next word (``(5월)/(오 월)달``) stays glued to it.
- Noise tags ``b/ l/ n/ o/ u/`` are deleted (``u/`` becomes ``unk`` when asked). A tag letter counts only when no
  Latin letter stands before it, so the English filler ``club/`` stays the word "club" while ``들어서.b/`` and
  ``o/b/`` are tags.
- Fillers ``word/`` and repeats / cut-offs ``word+``: ``df`` keeps the word without its marker, ``dt`` keeps the
  marker, ``fl`` drops the word. ``*`` (speech under noise) is dropped in df/fl and kept in dt.
- Sentence punctuation ``. , ? !`` is removed; a decimal point between digits (``1.5배``) stays and a thousands
  comma between digits (``1,000``) is removed without splitting the number.
- ``%`` stays in the spelling form; in the phonetic form a bare ``%`` (one with no dual pair to say how it was
  read) becomes ``퍼센트``, the only reading it has.
- Any other symbol becomes a word break; whitespace is collapsed; the result is NFC.

Malformed markup (unbalanced parentheses, a pair with an empty side, half a pair) is reported with a reason and
never guessed: :func:`normalize` returns the reason and an empty text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Form = Literal["spelling", "phonetic"]
Disfluency = Literal["df", "dt", "fl"]

FORMS: tuple[Form, ...] = ("spelling", "phonetic")
DISFLUENCIES: tuple[Disfluency, ...] = ("df", "dt", "fl")

#: Characters that carry transcription markup; none of them survives df or fl normalization.
MARKUP_CHARS = frozenset("()/+*")

_WS = re.compile(r"\s+")
# A dual pair; group 3 is a filler/repeat marker that applies to the whole pair.
_PAIR = re.compile(r"\((?P<a>[^()]*)\)\s*/\s*\((?P<b>[^()]*)\)(?P<mark>[+/]?)")
# A noise tag: a tag letter and a slash, with no Latin letter before it (so `club/` is a filler, not `b/`).
_NOISE_TAG = re.compile(r"(?<![A-Za-z])([blnou])/")
_UNK_PLACEHOLDER = "\ue000"  # private-use character: survives symbol stripping, becomes the unk symbol at the end
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_SENTENCE_PUNCT = re.compile(r"[.,?!]")
_DECIMAL_PLACEHOLDER = "\ue001"
# A filler or repeat marker glued to the next word: `어/그러니까` is `어/ 그러니까`.
_GLUED_MARKER = re.compile(r"([/+])(?=[^\s/+])")


@dataclass(frozen=True)
class Normalized:
    """The outcome of normalizing one transcript: ``text`` is empty when ``error`` says why it was refused."""

    text: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class MalformedTranscript(ValueError):
    """Raised by :func:`normalize_text` for markup that cannot be read without guessing."""


def _check_form(form: str, disfluency: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, not {form!r}")
    if disfluency not in DISFLUENCIES:
        raise ValueError(f"disfluency must be one of {DISFLUENCIES}, not {disfluency!r}")


def _resolve_pairs(text: str, form: Form, disfluency: Disfluency) -> tuple[str, str | None]:
    """Replace every ``(A)/(B)`` by the chosen side; report leftover or half pairs as malformed."""
    problems: list[str] = []

    def pick(match: re.Match[str]) -> str:
        spelling, phonetic = (_WS.sub(" ", match[g]).strip() for g in ("a", "b"))
        if not spelling or not phonetic:
            problems.append(f"dual pair with an empty side: {match[0]!r}")
            return " "
        side = spelling if form == "spelling" else phonetic
        mark = match["mark"]
        if mark and disfluency == "fl":
            return " "
        if mark and disfluency == "dt":
            # The marker belongs to the pair; keep it on the pair's last word.
            return side + mark
        return side

    out = _PAIR.sub(pick, text)
    if problems:
        return "", problems[0]
    if "(" in out or ")" in out:
        leftover = re.search(r"\([^()]*\)(?:\s*/)?|[()]", out)
        snippet = leftover[0] if leftover else out
        if re.fullmatch(r"\([^()]*\)\s*/", snippet):
            return "", f"dual pair without its pronunciation side: {snippet!r}"
        if re.fullmatch(r"\([^()]*\)", snippet):
            return "", f"parenthesized text that is not a dual pair: {snippet!r}"
        return "", f"unbalanced parenthesis near {snippet!r}"
    return out, None


def _word(token: str, disfluency: Disfluency) -> str:
    """One whitespace-separated token, with any filler (``/``) or repeat (``+``) marker at its end."""
    base = token.rstrip("/+")
    if not base.strip("*"):
        return ""
    if base == token:
        return token
    if disfluency == "fl":
        return ""
    if disfluency == "dt":
        return base + token[len(base)]
    return base


def normalize(
    raw: str,
    form: Form = "spelling",
    disfluency: Disfluency = "df",
    unk: str | None = None,
) -> Normalized:
    """Normalize one raw KsponSpeech transcript. Never raises on any string.

    ``unk``: the symbol that replaces the unintelligible-word tag ``u/`` (ESPnet uses ``[unk]``); by default the
    tag is deleted like the other noise tags.
    """
    _check_form(form, disfluency)
    # Our two placeholders are private-use characters; any in the input are not text.
    text = unicodedata.normalize("NFC", raw).replace(_UNK_PLACEHOLDER, " ").replace(_DECIMAL_PLACEHOLDER, " ")
    if unk is not None:
        # Protect an unk symbol already present (normalizing our own output again must not change it).
        text = text.replace(unk, f" {_UNK_PLACEHOLDER} ")
    text, error = _resolve_pairs(text, form, disfluency)
    if error:
        return Normalized("", error)

    def tag(match: re.Match[str]) -> str:
        return f" {_UNK_PLACEHOLDER} " if (match[1] == "u" and unk is not None) else " "

    text = _NOISE_TAG.sub(tag, text)
    if disfluency != "dt":
        text = text.replace("*", "")
    text = _THOUSANDS_COMMA.sub("", text)
    text = _DECIMAL_POINT.sub(_DECIMAL_PLACEHOLDER, text)
    text = _SENTENCE_PUNCT.sub(" ", text)
    if form == "phonetic":
        text = text.replace("%", "퍼센트")
    kept_symbols = "%/+" + ("*" if disfluency == "dt" else "")
    text = "".join(
        ch
        if (ch.isalnum() or ch.isspace() or ch in kept_symbols or ch in (_UNK_PLACEHOLDER, _DECIMAL_PLACEHOLDER))
        else " "
        for ch in text
    )
    text = _GLUED_MARKER.sub(r"\1 ", text)
    words = (_word(tok, disfluency) for tok in text.split())
    text = " ".join(w for w in words if w)
    text = text.replace(_DECIMAL_PLACEHOLDER, ".")
    if unk is not None:
        text = text.replace(_UNK_PLACEHOLDER, unk)
    return Normalized(unicodedata.normalize("NFC", text))


def normalize_text(raw: str, form: Form = "spelling", disfluency: Disfluency = "df", unk: str | None = None) -> str:
    """Like :func:`normalize` but raises :class:`MalformedTranscript` instead of returning the reason."""
    result = normalize(raw, form, disfluency, unk)
    if result.error:
        raise MalformedTranscript(result.error)
    return result.text
