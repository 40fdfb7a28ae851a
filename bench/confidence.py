"""How good word confidence is: reliability (confidence bins vs word accuracy) and the AUROC of "this word is
wrong", korasr's runtime (onnxruntime, numpy confidence) against NeMo's own confidence on the same model.

Both decode greedily with NeMo's default confidence (Tsallis entropy, alpha 0.33, exp normalization, min
aggregation, blanks excluded); korasr also with the other settings listed in ALTERNATIVES. A hypothesis word is
correct when kaldialign aligns it to the same reference word (NeMo's ``get_correct_marks``: substitutions and
insertions are wrong, deletions have no hypothesis word); words are compared as NFC text. AUROC: how often a wrong
word gets lower confidence than a right one (0.5: chance, 1: every wrong word below every right one). Prints the
tables, writes bench/out/confidence.json and the reliability plot (PNG).

    python bench/confidence.py --model X.nemo --export DIR --manifests DIR [--splits eval_other eval_novel]
        [--plot docs/img/confidence_reliability.png] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, write_json

from korasr.runtime.confidence import ConfidenceOptions

BINS = np.linspace(0.0, 1.0, 11)
ALTERNATIVES = {
    "korasr max_prob (α 1, mean)": ConfidenceOptions(method="max_prob", alpha=1.0, aggregation="mean"),
    "korasr tsallis exp (α 0.33, mean)": ConfidenceOptions(aggregation="mean"),
}


def correct_marks(ref: list[str], hyp: list[str]) -> list[bool]:
    """Per hypothesis word: aligned to the same reference word (NeMo's rule; deletions carry no mark)."""
    import kaldialign

    return [a == b for a, b in kaldialign.align(ref, hyp, "<eps>") if b != "<eps>"]


def korasr_words(export: Path, rows: list[dict], options: dict[str, ConfidenceOptions], threads: int) -> dict:
    """{name: [(words, confidences) per row]} from one pass of the export over the audio."""
    import soundfile as sf

    from korasr.runtime import Recognizer

    rec = Recognizer(export, threads=threads)
    rec.use_decoder("greedy")  # NeMo's greedy_batch is what it is compared with
    logprobs = []
    for start in range(0, len(rows), 16):
        waves = [sf.read(r["audio_filepath"], dtype="float32")[0] for r in rows[start : start + 16]]
        logprobs += rec.logprobs(waves)
    out = {}
    for name, opts in options.items():
        rec.confidence = opts
        results = [rec.decode(x, timestamps=True) for x in logprobs]
        out[name] = [([w.text for w in r.words], [w.confidence for w in r.words]) for r in results]
    return out


def nemo_words(model_path: Path, rows: list[dict], unit: str) -> list[tuple[list[str], list[float]]]:
    """NeMo's greedy decoding with its default confidence, words composed to NFC as korasr's."""
    from nemo.collections.asr.models import ASRModel
    from omegaconf import open_dict

    from korasr.text.codec import from_model_text

    model = ASRModel.restore_from(str(model_path), map_location="cpu").eval()
    cfg = model.cfg.decoding
    with open_dict(cfg):
        cfg.strategy = "greedy_batch"
        cfg.confidence_cfg = {"preserve_word_confidence": True}  # NeMo's defaults otherwise
    model.change_decoding_strategy(cfg, verbose=False)
    hyps = model.transcribe([r["audio_filepath"] for r in rows], batch_size=16, return_hypotheses=True, verbose=False)
    return [([from_model_text(w, unit) for w in h.words], list(h.word_confidence)) for h in hyps]


def score(rows: list[dict], words: list[tuple[list[str], list[float]]]) -> dict:
    from sklearn.metrics import roc_auc_score

    right, conf = [], []
    for row, (hyp, values) in zip(rows, words, strict=True):
        marks = correct_marks(row["text"].split(), hyp)
        right += marks
        conf += values
    right_a, conf_a = np.array(right, dtype=bool), np.array(conf, dtype=float)
    which = np.clip(np.digitize(conf_a, BINS[1:-1]), 0, len(BINS) - 2)
    table = []
    for b in range(len(BINS) - 1):
        sel = which == b
        table.append({"bin": f"{BINS[b]:.1f}–{BINS[b + 1]:.1f}", "words": int(sel.sum()),
                      "mean_confidence": float(conf_a[sel].mean()) if sel.any() else None,
                      "accuracy": float(right_a[sel].mean()) if sel.any() else None})  # fmt: skip
    wrong = ~right_a
    auroc = float(roc_auc_score(wrong, -conf_a)) if 0 < wrong.sum() < len(wrong) else None
    ece = sum(t["words"] * abs(t["mean_confidence"] - t["accuracy"]) for t in table if t["words"]) / len(conf_a)
    order = np.argsort(conf_a, kind="stable")
    deciles = [{"decile": k + 1, "words": len(part), "max_confidence": float(conf_a[part].max()),
                "accuracy": float(right_a[part].mean())}
               for k, part in enumerate(np.array_split(order, 10)) if len(part)]  # fmt: skip
    return {"deciles": deciles, "words": len(conf_a), "accuracy": float(right_a.mean()), "mean_confidence": float(conf_a.mean()),
            "median_confidence": float(np.median(conf_a)), "auroc_wrong": auroc, "ece": float(ece), "bins": table,
            "pairs": list(zip(conf, right, strict=True))}  # fmt: skip


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(results)
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.5), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        for name, marker in (("korasr", "o"), ("NeMo", "x"), *((n, ".") for n in ALTERNATIVES)):
            if name not in results[split]:
                continue
            got = results[split][name]
            rows = [t for t in got["bins"] if t["words"]]
            ax.plot([t["mean_confidence"] for t in rows], [t["accuracy"] for t in rows], marker=marker,
                    label=f"{name} (AUROC {got['auroc_wrong']:.3f})")  # fmt: skip
        ax.set_title(f"{split}: word accuracy by confidence bin")
        ax.set_xlabel("mean word confidence in the bin")
        ax.set_ylabel("word accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the .nemo the export was made from")
    parser.add_argument("--export", type=Path, required=True, help="korasr export directory (model.json)")
    parser.add_argument("--manifests", type=Path, required=True, help="folder with SPLIT.jsonl manifests")
    parser.add_argument("--splits", nargs="+", default=["eval_other", "eval_novel"])
    parser.add_argument("--plot", type=Path, default=OUT / "confidence_reliability.png")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for path in (args.model, args.export / "model.json", *(args.manifests / f"{s}.jsonl" for s in args.splits)):
        if not path.exists():
            raise SystemExit(f"{path}: not found")
    info = json.loads((args.export / "model.json").read_text(encoding="utf-8"))
    options = {"korasr": ConfidenceOptions(), **ALTERNATIVES}
    results: dict = {}
    for split in args.splits:
        lines = (args.manifests / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        started = time.monotonic()
        ours = korasr_words(args.export, rows, options, args.threads)
        nemo = nemo_words(args.model, rows, info["unit"])
        results[split] = {name: score(rows, words) for name, words in ours.items()}
        results[split]["NeMo"] = score(rows, nemo)
        same = sum(a[0] == b[0] for a, b in zip(ours["korasr"], nemo, strict=True))
        diffs = [abs(x - y) for a, b in zip(ours["korasr"], nemo, strict=True) if a[0] == b[0]
                 for x, y in zip(a[1], b[1], strict=True)]  # fmt: skip
        results[split]["agreement"] = {"utterances": len(rows), "same_words": same,
                                       "max_abs_word_confidence_diff": max(diffs, default=0.0)}  # fmt: skip
        print(f"\n## {split}: {len(rows)} utterances ({time.monotonic() - started:.0f} s); korasr and NeMo give the "
              f"same words on {same}, word confidences there differ by at most {max(diffs, default=0.0):.2g}")  # fmt: skip
        print(
            "\n| confidence | words (korasr) | mean conf. | word accuracy | words (NeMo) | mean conf. | word accuracy |"
        )
        print("|---|---|---|---|---|---|---|")
        for a, b in zip(results[split]["korasr"]["bins"], results[split]["NeMo"]["bins"], strict=True):
            cells = [f"{t['words']} | {_f(t['mean_confidence'])} | {_f(t['accuracy'])}" for t in (a, b)]
            print(f"| {a['bin']} | {cells[0]} | {cells[1]} |")
        print("\n| decile of word confidence (korasr default) | words | up to | word accuracy |\n|---|---|---|---|")
        for d in results[split]["korasr"]["deciles"]:
            print(f"| {d['decile']} | {d['words']} | {d['max_confidence']:.2g} | {d['accuracy']:.3f} |")
        print("\n| confidence | words | word accuracy | mean / median confidence | AUROC (word wrong) | ECE |")
        print("|---|---|---|---|---|---|")
        for name in ("korasr", "NeMo", *ALTERNATIVES):
            r = results[split][name]
            print(f"| {name} | {r['words']} | {r['accuracy']:.3f} | {r['mean_confidence']:.4f} / "
                  f"{r['median_confidence']:.4f} | {_f(r['auroc_wrong'])} | {r['ece']:.3f} |")  # fmt: skip
    plot(results, args.plot)
    for split in results.values():
        for r in split.values():
            r.pop("pairs", None)
    write_json(OUT / "confidence.json", results)
    print(f"\nplot: {args.plot}; numbers: {OUT / 'confidence.json'}")


def _f(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()
