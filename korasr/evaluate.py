"""`korasr evaluate`: transcribe manifests with a ``.nemo`` and score them (CER without and with spaces, WER).

Hypotheses are composed back to NFC with the model's text unit (``model.korasr_text_unit``, written by
`korasr train`; jamo by default, which is also right for syllable models) and written as JSONL
(``utt_id``, ``ref``, ``hyp``) so that every metric can be recomputed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from korasr.fsutil import atomic_open, write_json
from korasr.metrics import cer, cer_space, wer
from korasr.text.codec import from_model_text

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    pass


def read_manifest(path: str | os.PathLike[str]) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_model(path: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    import torch
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(path), map_location="cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model


def transcribe(model, rows: list[dict], batch_size: int = 32, progress: bool = True) -> list[str]:  # type: ignore[no-untyped-def]
    """NFC transcripts of the manifest rows' audio, in order."""
    unit = str(model.cfg.get("korasr_text_unit", "jamo"))
    outputs = model.transcribe([r["audio_filepath"] for r in rows], batch_size=batch_size, verbose=progress)
    if isinstance(outputs, tuple):  # some NeMo versions return (best, all)
        outputs = outputs[0]
    return [from_model_text(o.text if hasattr(o, "text") else str(o), unit) for o in outputs]


def score(refs: list[str], hyps: list[str]) -> dict:
    return {
        "cer": round(cer(refs, hyps), 2),
        "cer_space": round(cer_space(refs, hyps), 2),
        "wer": round(wer(refs, hyps), 2),
        "utterances": len(refs),
    }


def evaluate(
    model_path: str | os.PathLike[str],
    manifests: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 32,
    max_cer: float | None = None,
    progress: bool = True,
) -> dict:
    """Score each manifest (keyed by its stem); write ``<split>.hyp.jsonl`` and ``report.json`` to ``out_dir``."""
    model = load_model(model_path)
    out = Path(out_dir) if out_dir else Path(model_path).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": str(Path(model_path).resolve()), "splits": {}}
    for manifest in manifests:
        rows = read_manifest(manifest)
        split = Path(manifest).stem
        hyps = transcribe(model, rows, batch_size, progress)
        refs = [r["text"] for r in rows]
        with atomic_open(out / f"{split}.hyp.jsonl") as f:
            for row, hyp in zip(rows, hyps, strict=True):
                f.write(
                    json.dumps({"utt_id": row.get("utt_id"), "ref": row["text"], "hyp": hyp}, ensure_ascii=False) + "\n"
                )
        report["splits"][split] = score(refs, hyps)
    write_json(out / "report.json", report)
    log.info("evaluation of %s:\n%s", model_path, format_table(report))
    if max_cer is not None:
        over = {s: r["cer"] for s, r in report["splits"].items() if r["cer"] > max_cer}
        if over:
            raise GateFailed(f"CER above {max_cer}%: {over}")
    return report


def format_table(report: dict) -> str:
    lines = [f"{'split':<12} {'utts':>6} {'CER':>7} {'CER+sp':>7} {'WER':>7}"]
    for split, r in report["splits"].items():
        lines.append(f"{split:<12} {r['utterances']:>6} {r['cer']:>6.2f}% {r['cer_space']:>6.2f}% {r['wer']:>6.2f}%")
    return "\n".join(lines)
