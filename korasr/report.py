"""The evaluation report: every metric per split from ``<split>.hyp.jsonl`` files, written as ``report.json``
(for scripts), ``report.md`` (tables), ``error_rates.png`` (a chart) and rows of a recipe's RESULTS.md.

Scoring needs only the hypothesis files: ``korasr score`` recomputes a report without NeMo or audio.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import unicodedata
from pathlib import Path

from korasr.fsutil import atomic_open, atomic_path, write_json
from korasr.metrics import SLOTS, cer_counts, cer_detail, cer_space_counts, jamo_analysis, swer_counts, wer_counts

log = logging.getLogger(__name__)

DEFINITIONS = {
    "cer": "character (syllable) error rate, spaces removed from reference and hypothesis (SpeechBrain, icefall)",
    "cer_space": "character error rate with spaces counted as characters (ESPnet2, K-wav2vec)",
    "wer": "word error rate over space-separated words",
    "swer": "space-normalized WER: the reference's spacing copied onto the hypothesis where characters align, "
    "then WER (ESPnet)",
    "onset/nucleus/coda": "초성/중성/종성 error rates over the syllable alignment of CER: (sub + del + ins) / "
    "reference count of that slot; coda insertions and deletions included",
    "common": "all on NFC text, corpus-level (errors summed over utterances / reference length summed), percent; "
    "edit distance by kaldialign",
}

RESULTS_BEGIN = "<!-- korasr:results:begin (rows written by `korasr evaluate --results`; edit outside) -->"
RESULTS_END = "<!-- korasr:results:end -->"
RESULTS_HEADER = (
    "| date | commit | model | split | utts | CER | CER+sp | WER | sWER | onset / nucleus / coda | normalization "
    "| command |\n|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|"
)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    return rows


def read_hypotheses(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """References and hypotheses of a ``<split>.hyp.jsonl`` (``utt_id``, ``ref``, ``hyp``)."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("ref"), str) or not isinstance(row.get("hyp"), str):
            raise ValueError(f"{path}: row {number} needs string fields 'ref' and 'hyp'")
    return [r["ref"] for r in rows], [r["hyp"] for r in rows]


def split_scores(refs: list[str], hyps: list[str], top_confusions: int = 20) -> dict:
    """Every metric of one split, in percent (rounded to 0.01; None where only empty references met insertions),
    with the counts behind them."""
    jamo = jamo_analysis(refs, hyps, top=top_confusions)
    return {
        "cer": cer_counts(refs, hyps).percent,
        "cer_space": cer_space_counts(refs, hyps).percent,
        "wer": wer_counts(refs, hyps).percent,
        "swer": swer_counts(refs, hyps).percent,
        "utterances": len(refs),
        "cer_counts": cer_detail(refs, hyps),
        "jamo": {slot: jamo[slot] for slot in SLOTS},
        "confusions": jamo["confusions"],
    }


def normalization_of(manifest: str | os.PathLike[str]) -> dict | None:
    """The normalization options `korasr prepare` recorded beside a manifest (prepare.json), if any."""
    meta = Path(manifest).parent / "prepare.json"
    if not meta.is_file():
        return None
    options = json.loads(meta.read_text(encoding="utf-8")).get("options", {})
    return {k: options.get(k) for k in ("form", "disfluency", "unk")}


def describe_normalization(normalization: dict | None) -> str:
    if not normalization:
        return "unknown (no prepare.json beside the manifest)"
    text = f"--form {normalization['form']} --disfluency {normalization['disfluency']}"
    return text + (f" --unk {normalization['unk']}" if normalization.get("unk") else "")


# --- writing -----------------------------------------------------------------------------------------------------


def write_report(report: dict, out_dir: str | os.PathLike[str]) -> Path:
    """``report.json``, ``report.md`` and ``error_rates.png`` in ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    with atomic_open(out / "report.md") as f:
        f.write(format_markdown(report))
    plot_error_rates(report, out / "error_rates.png")
    return out / "report.json"


def _f(value: float | None, width: int = 0) -> str:
    return f"{'n/a' if value is None else f'{value:.2f}':>{width}}"


def format_table(report: dict) -> str:
    """A terminal summary."""
    lines = [f"{'split':<12} {'utts':>6} {'CER':>7} {'CER+sp':>7} {'WER':>7} {'sWER':>7}  onset/nucleus/coda"]
    for split, r in report["splits"].items():
        jamo = "/".join(_f(r["jamo"][s]["rate"]) for s in SLOTS)
        lines.append(
            f"{split:<12} {r['utterances']:>6} {_f(r['cer'], 6)}% {_f(r['cer_space'], 6)}% {_f(r['wer'], 6)}% "
            f"{_f(r['swer'], 6)}%  {jamo}"
        )
    if report.get("meta", {}).get("decoder"):
        lines.append(f"(decoder: {report['meta']['decoder']})")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    meta = report.get("meta", {})
    lines = [
        "# Evaluation report",
        "",
        f"- model: `{report.get('model', '?')}` (sha256 {str(report.get('model_sha256', '?'))[:12]})",
        f"- command: `{meta.get('command', '?')}`",
        f"- date: {meta.get('date', '?')}, commit {meta.get('git_commit', '?')}",
        f"- normalization of the references: {describe_normalization(meta.get('normalization'))}",
        *([f"- decoder: {meta['decoder']}"] if meta.get("decoder") else []),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
        "",
        "## Error rates (%)",
        "",
        "| split | utts | CER | CER+sp | WER | sWER | sub / del / ins (CER) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for split, r in report["splits"].items():
        c = r["cer_counts"]
        lines.append(
            f"| {split} | {r['utterances']} | **{_f(r['cer'])}** | {_f(r['cer_space'])} | {_f(r['wer'])} | "
            f"{_f(r['swer'])} | {c['sub']} / {c['del']} / {c['ins']} of {c['ref']} |"
        )
    lines += [
        "",
        "## Jamo slots (%)",
        "",
        "| split | onset (초성) | nucleus (중성) | coda (종성) | coda sub / del / ins of codas |",
        "|---|---:|---:|---:|---|",
    ]
    for split, r in report["splits"].items():
        j = r["jamo"]
        coda = j["coda"]
        lines.append(
            f"| {split} | {_f(j['onset']['rate'])} | {_f(j['nucleus']['rate'])} | {_f(coda['rate'])} | "
            f"{coda['sub']} / {coda['del']} / {coda['ins']} of {coda['ref']} |"
        )
    for split, r in report["splits"].items():
        lines += ["", f"## Most frequent syllable substitutions: {split}", ""]
        if not r["confusions"]:
            lines.append("none")
            continue
        lines += ["| reference | hypothesis | count |", "|---|---|---:|"]
        lines += [f"| {a} | {_printable(b)} | {n} |" for a, b, n in r["confusions"]]
    lines += ["", "## Definitions", ""]
    lines += [f"- **{name}**: {text}" for name, text in DEFINITIONS.items()]
    return "\n".join(lines) + "\n"


def _printable(text: str) -> str:
    """Conjoining jamo render as blanks or merge with neighbours in most fonts; show them as compatibility jamo."""
    return "".join(unicodedata.normalize("NFKC", ch) if 0x1100 <= ord(ch) <= 0x11FF else ch for ch in text)


def plot_error_rates(report: dict, path: str | os.PathLike[str]) -> None:
    try:
        import matplotlib
    except ImportError:
        log.warning("no chart (%s): matplotlib is not installed (pip install 'korasr[eval]')", path)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("cer", "CER"), ("cer_space", "CER+sp"), ("wer", "WER"), ("swer", "sWER")]
    slots = [("onset", "onset"), ("nucleus", "nucleus"), ("coda", "coda")]
    splits = list(report["splits"])
    labels = [m for _, m in metrics] + [s for _, s in slots]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 4))
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
        r = report["splits"][split]
        values = [r[k] for k, _ in metrics] + [r["jamo"][k]["rate"] for k, _ in slots]
        values = [float("nan") if v is None else v for v in values]
        xs = [x + (i - (len(splits) - 1) / 2) * width for x in range(len(labels))]
        bars = ax.bar(xs, values, width, label=split)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("error rate (%)")
    ax.set_title(f"{Path(str(report.get('model', ''))).name}: error rates per split")
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:  # matplotlib picks the format by the suffix
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


# --- RESULTS.md --------------------------------------------------------------------------------------------------


def _short(commit: str) -> str:
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def results_rows(report: dict) -> list[str]:
    """One table row per split; the model path relative to the working directory when it lies below it."""
    meta = report.get("meta", {})
    model = Path(str(report.get("model", "?")))
    with contextlib.suppress(ValueError):
        model = model.resolve().relative_to(Path.cwd())
    rows = []
    for split, r in report["splits"].items():
        jamo = " / ".join(_f(r["jamo"][s]["rate"]) for s in SLOTS)
        name = f"{split} · {meta['decoder']}" if meta.get("decoder") else split  # another decoder, another row
        rows.append(
            f"| {meta.get('date', '?')} | {_short(meta.get('git_commit', '?'))} | `{model}` | {name} | {r['utterances']} | "
            f"**{_f(r['cer'])}** | {_f(r['cer_space'])} | {_f(r['wer'])} | {_f(r['swer'])} | {jamo} | "
            f"`{describe_normalization(meta.get('normalization'))}` | `{_cell(meta.get('command', '?'))}` |"
        )
    return rows


def _row_key(row: str) -> tuple[str, str]:
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    return (cells[2], cells[3]) if len(cells) > 3 else ("", "")


def update_results(results_md: str | os.PathLike[str], report: dict) -> None:
    """Add this report's rows to the generated table of a RESULTS.md, replacing rows of the same model and split.
    The table lives between two marker comments (appended with them when absent); the rest of the file is kept."""
    path = Path(results_md)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n"
    new = results_rows(report)
    pattern = re.compile(re.escape(RESULTS_BEGIN) + r"\n(.*?)" + re.escape(RESULTS_END), re.S)
    match = pattern.search(text)
    old = []
    if match:
        old = [line for line in match.group(1).splitlines() if line.startswith("| ") and not line.startswith("| date")]
    keys = {_row_key(row) for row in new}
    rows = [row for row in old if _row_key(row) not in keys] + new
    block = f"{RESULTS_BEGIN}\n{RESULTS_HEADER}\n" + "\n".join(rows) + f"\n{RESULTS_END}"
    if match:
        text = text[: match.start()] + block + text[match.end() :]
    else:
        text = text.rstrip("\n") + "\n\n## Evaluations\n\n" + block + "\n"
    with atomic_open(path) as f:
        f.write(text)
