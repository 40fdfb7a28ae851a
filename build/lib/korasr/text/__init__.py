"""Korean text handling: KsponSpeech normalization (pure functions, no torch or NeMo)."""

from korasr.text.normalize import (
    DISFLUENCIES,
    FORMS,
    MARKUP_CHARS,
    MalformedTranscript,
    Normalized,
    normalize,
    normalize_text,
)

__all__ = [
    "DISFLUENCIES",
    "FORMS",
    "MARKUP_CHARS",
    "MalformedTranscript",
    "Normalized",
    "normalize",
    "normalize_text",
]
