"""`korasr evaluate`: transcribe manifests with a ``.nemo`` and score them (CER without and with spaces, WER, sWER,
jamo slots; see :mod:`korasr.report`).

Hypotheses are composed back to NFC with the model's text unit (``model.korasr_text_unit``, written by
`korasr train`; jamo by default, which is also right for syllable models) and written as JSONL
(``utt_id``, ``ref``, ``hyp``) so that every metric can be recomputed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from korasr.fsutil import atomic_open, sha256_file
from korasr.provenance import command_line, git_commit, versions
from korasr.report import (
    DEFINITIONS,
    normalization_of,
    read_hypotheses,
    read_jsonl,
    split_scores,
    update_results,
    write_report,
)
from korasr.text.codec import from_model_text

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    pass


def read_manifest(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a NeMo JSONL manifest (a line that is not JSON is an error naming the file and line)."""
    return read_jsonl(path)


def load_model(path: str | os.PathLike[str], precision: str = "fp32"):  # type: ignore[no-untyped-def]
    """A NeMo model from a ``.nemo``, or a :class:`korasr.runtime.Recognizer` from an export directory."""
    if Path(path).is_dir():
        from korasr.runtime import Recognizer

        return Recognizer(path, precision=precision)
    if precision != "fp32":
        raise ValueError(f"{path}: --precision {precision} needs an export directory (a .nemo runs in float32)")
    import torch
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(path), map_location="cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model


def transcribe(model, rows: list[dict], batch_size: int = 32, progress: bool = True) -> list[str]:  # type: ignore[no-untyped-def]
    """NFC transcripts of the manifest rows' audio, in order."""
    if hasattr(model, "session"):  # an export directory: onnxruntime
        from tqdm import tqdm

        paths = [r["audio_filepath"] for r in rows]
        texts: list[str] = []
        for start in tqdm(range(0, len(paths), batch_size), desc="transcribing", unit="batch", disable=not progress):
            texts += [r.text for r in model.transcribe(paths[start : start + batch_size], batch_size=batch_size)]
        return texts
    unit = str(model.cfg.get("korasr_text_unit", "jamo"))
    outputs = model.transcribe([r["audio_filepath"] for r in rows], batch_size=batch_size, verbose=progress)
    if isinstance(outputs, tuple):  # some NeMo versions return (best, all)
        outputs = outputs[0]
    return [from_model_text(o.text if hasattr(o, "text") else str(o), unit) for o in outputs]


def evaluate(
    model_path: str | os.PathLike[str],
    manifests: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 32,
    max_cer: float | None = None,
    results_md: str | os.PathLike[str] | None = None,
    progress: bool = True,
    precision: str = "fp32",
) -> dict:
    """Transcribe each manifest (split = its stem), write ``<split>.hyp.jsonl`` and the report (``report.json``,
    ``report.md``, ``error_rates.png``) to ``out_dir`` (default: ``eval/`` beside the model), add rows to
    ``results_md`` when given, and raise :class:`GateFailed` when a split's CER exceeds ``max_cer``.
    ``precision`` picks an export's graph (fp32, fp16, int8; see korasr.runtime.Recognizer)."""
    splits = {Path(m).stem: Path(m) for m in manifests}
    if len(splits) != len(manifests):
        raise ValueError(f"two manifests share a split name (file stem): {[str(m) for m in manifests]}")
    for manifest in splits.values():
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no such manifest")
    model = load_model(model_path, precision)
    out = Path(out_dir) if out_dir else Path(model_path).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    for split, manifest in splits.items():
        rows = read_manifest(manifest)
        log.info("transcribing %s: %d utterances", manifest, len(rows))
        hyps = transcribe(model, rows, batch_size, progress)
        with atomic_open(out / f"{split}.hyp.jsonl") as f:
            for row, hyp in zip(rows, hyps, strict=True):
                record = {"utt_id": row.get("utt_id"), "ref": row["text"], "hyp": hyp}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    report = score_files(
        {split: out / f"{split}.hyp.jsonl" for split in splits},
        out,
        model=model_path if precision == "fp32" else f"{model_path} ({precision})",
        normalization=normalization_of(next(iter(splits.values()))),
        results_md=results_md,
    )
    gate(report, max_cer)
    return report


def score_files(
    hyp_files: dict[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    normalization: dict | None = None,
    results_md: str | os.PathLike[str] | None = None,
) -> dict:
    """The report of ``{split: <split>.hyp.jsonl}``, written to ``out_dir`` (and rows to ``results_md``)."""
    report: dict = {"model": None, "model_sha256": None}
    if model is not None:
        report["model"] = str(Path(model).resolve())
        if Path(model).is_file():
            report["model_sha256"] = sha256_file(model)
    report["meta"] = {
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "git_commit": git_commit(),
        "versions": versions(),
        "normalization": normalization,
        "definitions": DEFINITIONS,
    }
    report["splits"] = {split: split_scores(*read_hypotheses(path)) for split, path in hyp_files.items()}
    write_report(report, out_dir)
    if results_md:
        update_results(results_md, report)
    return report


def gate(report: dict, max_cer: float | None) -> None:
    if max_cer is None:
        return
    over = {s: r["cer"] for s, r in report["splits"].items() if r["cer"] is None or r["cer"] > max_cer}
    if over:
        raise GateFailed(f"CER (no spaces) above {max_cer}%: {over}")
