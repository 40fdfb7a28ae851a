"""Inference from an export directory with onnxruntime alone (no torch, no NeMo).

- :mod:`korasr.runtime.offline`: :class:`Recognizer`, whole files and arrays (``model.onnx``), greedy or beam search
  (:mod:`korasr.runtime.beam`), long audio in chunks;
- :mod:`korasr.runtime.streaming`: live streams chunk by chunk with caches (``streaming/``), endpointing;
- :mod:`korasr.runtime.results`: words, results, segments; :mod:`korasr.runtime.audio`: reading audio under limits;
  :mod:`korasr.runtime.onnx`: sessions, tokens.txt, batch padding; :mod:`korasr.runtime.ctc`: CTC's collapse rule;
  :mod:`korasr.runtime.lm_artifact`: the reader of LM directories (``korasr lm build``), below all who read them.

>>> from korasr.runtime import Recognizer
>>> Recognizer("exp/sample/.../export").transcribe(["a.wav", "b.flac"])     # any sample rate or channel count
"""

from korasr.runtime.audio import SAMPLE_RATE
from korasr.runtime.offline import (
    BUNDLED_LM,
    CHUNK_SECONDS,
    DECODERS,
    GRAPHS,
    MIN_CHUNK_SECONDS,
    Recognizer,
    _quiet_cut,
    check_chunk_seconds,
    chunk_bounds,
    join,
)
from korasr.runtime.results import (
    WORD_BOUNDARY,
    Result,
    Segment,
    Word,
    subtitles,
    token_segments,
    token_words,
    tokens_text,
)

__all__ = ["BUNDLED_LM", "CHUNK_SECONDS", "DECODERS", "GRAPHS", "MIN_CHUNK_SECONDS", "SAMPLE_RATE", "WORD_BOUNDARY",
           "Recognizer", "Result", "Segment", "Word", "_quiet_cut", "check_chunk_seconds", "chunk_bounds", "join", "subtitles",
           "token_segments", "token_words", "tokens_text"]  # fmt: skip
