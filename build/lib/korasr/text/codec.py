"""The text codec at NeMo's boundaries: normalized NFC text ↔ the unit a tokenizer models.

- ``jamo`` and ``char-jamo``: Hangul syllables become conjoining jamo (NFD, U+1100–U+11FF), everything else is
  unchanged (a Latin letter with a canonical decomposition, é, decomposes too, and NFC restores it exactly).
- ``syllable`` and ``char-syllable``: NFC syllables, as normalized.

``from_model_text`` composes back to NFC. A jamo model can emit sequences that compose into no syllable: a vowel
or a final with no initial before it, or an initial with no vowel after it (``ᅥ우에``). Such an orphan becomes
the compatibility jamo of the same letter (U+3131–U+318E: ``ㅓ우에``), so the error stays visible to a reader
and counts as one wrong character in CER; the rule is deterministic. Non-modern conjoining jamo and the Hangul
fillers, which no korasr vocabulary contains, are dropped.
"""

from __future__ import annotations

import re
import unicodedata

UNITS = ("jamo", "syllable", "char-jamo", "char-syllable")
JAMO_UNITS = frozenset({"jamo", "char-jamo"})

MODERN_INITIALS = [chr(c) for c in range(0x1100, 0x1113)]  # 19
MODERN_VOWELS = [chr(c) for c in range(0x1161, 0x1176)]  # 21
MODERN_FINALS = [chr(c) for c in range(0x11A8, 0x11C3)]  # 27
MODERN_JAMO = MODERN_INITIALS + MODERN_VOWELS + MODERN_FINALS

_CONJOINING = re.compile("[\u1100-\u11ff]")


def _compatibility(ch: str) -> str:
    name = unicodedata.name(ch, "")
    for role in ("CHOSEONG ", "JUNGSEONG ", "JONGSEONG "):
        if role in name:
            try:
                return unicodedata.lookup(name.replace(role, "LETTER "))
            except KeyError:
                return ""
    return ""


_ORPHAN_TABLE = {ord(ch): _compatibility(ch) if ch in MODERN_JAMO else "" for ch in map(chr, range(0x1100, 0x1200))}


def check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")


def to_model_text(text: str, unit: str) -> str:
    """What NeMo (the tokenizer) sees for normalized ``text``."""
    check_unit(unit)
    return unicodedata.normalize("NFD" if unit in JAMO_UNITS else "NFC", text)


def count_ill_formed(model_text: str) -> int:
    """How many conjoining jamo compose into no syllable (what :func:`from_model_text` repairs)."""
    return len(_CONJOINING.findall(unicodedata.normalize("NFC", model_text)))


def from_model_text(model_text: str, unit: str) -> str:
    """Decoded model text → NFC text; orphan jamo become compatibility jamo (see the module docstring)."""
    check_unit(unit)
    text = unicodedata.normalize("NFC", model_text)
    if unit in JAMO_UNITS and _CONJOINING.search(text):
        text = text.translate(_ORPHAN_TABLE)
    return " ".join(text.split())
