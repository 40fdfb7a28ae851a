"""CTC feasibility of a tokenizer on manifests: tokens per second of audio and how many utterances cannot fit.

CTC emits at most one token per encoder frame and needs a blank between two equal consecutive tokens, so an
utterance is infeasible when ``tokens + repeats > encoder frames``. Encoder frames follow NeMo's FastConformer
front end: 10 ms mel frames (``samples // 160 + 1``), then ``log2(subsampling)`` stride-2 convolutions with
kernel 3 and padding 1 (``dw_striding``), each taking ``n`` frames to ``(n - 1) // 2 + 1``.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

from korasr import SAMPLE_RATE
from korasr.text.codec import count_ill_formed, from_model_text, to_model_text

HOP = 160


def encoder_frames(seconds: float, subsampling: int) -> int:
    if subsampling < 1 or subsampling & (subsampling - 1):
        raise ValueError(f"subsampling must be a power of two, not {subsampling}")
    frames = round(seconds * SAMPLE_RATE) // HOP + 1
    for _ in range(int(math.log2(subsampling))):
        frames = (frames - 1) // 2 + 1
    return frames


def ctc_length(ids: list[int]) -> int:
    """Frames CTC needs for ``ids``: one per token plus a blank between each pair of equal neighbours."""
    return len(ids) + sum(a == b for a, b in itertools.pairwise(ids))


def emittable(ids: list[int], seconds: float, subsampling: int) -> bool:
    """Whether CTC can emit ``ids`` from ``seconds`` of audio at this subsampling."""
    return ctc_length(ids) <= encoder_frames(seconds, subsampling)


def feasibility_report(processor, unit: str, manifests: list[Path], subsampling: int = 8) -> dict:  # type: ignore[no-untyped-def]
    """Per manifest (keyed by its stem): tokens/s (mean, p50, p99), the CTC-infeasible share, utterances with
    ``<unk>``, utterances without ``<unk>`` that do not decode back exactly, and ill-formed jamo after decoding."""
    report = {}
    unk = processor.unk_id()
    for manifest in manifests:
        rows = [json.loads(line) for line in Path(manifest).read_text(encoding="utf-8").splitlines()]
        model_texts = [to_model_text(r["text"], unit) for r in rows]
        encoded = processor.encode(model_texts)
        rates, infeasible, unk_utts, not_round_trip, ill_formed = [], 0, 0, 0, 0
        for row, ids in zip(rows, encoded, strict=True):
            rates.append(len(ids) / row["duration"])
            if not emittable(ids, row["duration"], subsampling):
                infeasible += 1
            decoded = processor.decode(ids)
            ill_formed += count_ill_formed(decoded)
            if unk in ids:
                unk_utts += 1
            elif from_model_text(decoded, unit) != row["text"]:
                not_round_trip += 1  # lost text that <unk> does not explain: a tokenizer bug
        r = np.array(rates) if rates else np.zeros(1)
        report[Path(manifest).stem] = {
            "utterances": len(rows),
            "subsampling": subsampling,
            "tokens_per_second": {
                "mean": round(float(r.mean()), 2),
                "p50": round(float(np.percentile(r, 50)), 2),
                "p99": round(float(np.percentile(r, 99)), 2),
            },
            "encoder_frames_per_second": round(100 / subsampling, 2),
            "infeasible_share": round(infeasible / max(1, len(rows)), 4),
            "infeasible": infeasible,
            "utterances_with_unk": unk_utts,
            "not_round_trip": not_round_trip,
            "ill_formed_jamo": ill_formed,
        }
    return report


def format_report(report: dict) -> str:
    lines = [
        f"{'split':<11} {'sub':>3} {'utts':>6} {'tok/s mean':>10} {'p50':>6} {'p99':>6} {'frames/s':>8} "
        f"{'infeasible':>10} {'unk utts':>8}"
    ]
    for split, r in report.items():
        t = r["tokens_per_second"]
        lines.append(
            f"{split:<11} {r['subsampling']:>3} {r['utterances']:>6} {t['mean']:>10.2f} {t['p50']:>6.2f} "
            f"{t['p99']:>6.2f} {r['encoder_frames_per_second']:>8.2f} {r['infeasible_share']:>10.2%} "
            f"{r['utterances_with_unk']:>8}"
        )
    return "\n".join(lines)
