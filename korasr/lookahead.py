"""The streaming descriptors of a NeMo model: is it cache-aware (``korasr train --streaming``), and the look-aheads
it was trained with.

Evaluate scores a streaming ``.nemo`` at each look-ahead and export writes ``streaming/`` at one; both read them
here. Pure reads of the model's config and encoder: no torch or NeMo import.
"""

from __future__ import annotations


def is_streaming(model) -> bool:  # type: ignore[no-untyped-def]
    """A cache-aware model: chunked attention (``korasr train --streaming``)."""
    return str(model.cfg.encoder.get("att_context_style", "regular")) == "chunked_limited"


def lookaheads(model) -> list[dict]:  # type: ignore[no-untyped-def]
    """The look-aheads a streaming model was trained with, the default first: ``att_context_size``, look-ahead
    frames and milliseconds, chunk milliseconds."""
    encoder = model.encoder
    frame_ms = 1000 * int(model.cfg.encoder.subsampling_factor) * float(model.cfg.preprocessor.window_stride)
    out = []
    for left, right in encoder.att_context_size_all:
        out.append({"att_context_size": [int(left), int(right)], "lookahead_frames": int(right),
                    "lookahead_ms": round(right * frame_ms), "chunk_ms": round((right + 1) * frame_ms),
                    "left_context_ms": round(left * frame_ms) if left >= 0 else None})  # fmt: skip
    return out


def lookahead_label(entry: dict) -> str:
    return f"look-ahead {entry['lookahead_ms']} ms"
