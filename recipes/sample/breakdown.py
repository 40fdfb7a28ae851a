"""Where a sample model's errors are: CER per voice and per speaking rate, and the learning curves of runs.

    python recipes/sample/breakdown.py voices EVAL_DIR [--corpus data/sample/KsponSpeech]
    python recipes/sample/breakdown.py curves --out curves.png NAME=RUN_DIR [NAME=RUN_DIR ...]

``voices`` reads the ``*.hyp.jsonl`` files `korasr train --evaluate` / `korasr evaluate` wrote and the corpus's
``sample.json``; the sample corpus is planned from its seed, so each utterance's voice, speed and pitch are
recomputed, not stored. ``curves`` draws dev WER and training loss per step from the runs' TensorBoard events.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from korasr.data.sample_corpus import SampleOptions, plan
from korasr.metrics import cer


def voice_table(eval_dir: Path, corpus: Path) -> str:
    record = json.loads((corpus / "sample.json").read_text(encoding="utf-8"))
    utterances = {Path(u.rel_path).stem: u for u in plan(SampleOptions(**record["options"]))}
    lines = []
    for hyp_file in sorted(eval_dir.glob("*.hyp.jsonl")):
        rows = [json.loads(line) for line in hyp_file.read_text(encoding="utf-8").splitlines()]
        missing = [r["utt_id"] for r in rows if r["utt_id"] not in utterances]
        if missing:
            raise SystemExit(f"{hyp_file}: {len(missing)} utterances (e.g. {missing[0]}) are not in the corpus planned "
                             f"from {corpus / 'sample.json'}: another corpus?")  # fmt: skip
        split = hyp_file.name.removesuffix(".hyp.jsonl")
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            u = utterances[r["utt_id"]]
            groups[f"voice {u.voice}"].append(r)
            band = (u.speed // 20) * 20
            groups[f"speed {band}–{band + 19} wpm"].append(r)
        lines += [f"### {split}", "", "| group | utts | CER |", "|---|---:|---:|"]
        lines.append(f"| all | {len(rows)} | {cer([r['ref'] for r in rows], [r['hyp'] for r in rows]):.2f} |")
        for name in sorted(groups, key=lambda n: (n.split()[0], n)):
            g = groups[name]
            lines.append(f"| {name} | {len(g)} | {cer([r['ref'] for r in g], [r['hyp'] for r in g]):.2f} |")
        lines.append("")
    return "\n".join(lines)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points.update((e.step, e.value) for e in acc.Scalars(tag))
    return sorted(points.items())


def draw_curves(runs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (wer_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run_dir in runs.items():
        wer = scalars(run_dir, "val_wer")
        loss = scalars(run_dir, "train_loss")
        if not wer and not loss:
            raise SystemExit(f"{run_dir}: no val_wer or train_loss in its TensorBoard events")
        if wer:
            wer_ax.plot(*zip(*wer, strict=True), marker="o", label=name)
        if loss:
            loss_ax.plot(*zip(*loss, strict=True), label=name)
    wer_ax.set(xlabel="step", ylabel="dev WER", title="dev WER", ylim=(0, 1.05))
    loss_ax.set(xlabel="step", ylabel="CTC loss", title="training loss", yscale="log")
    for ax in (wer_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("voices", help="CER per voice and speaking rate (markdown)")
    p.add_argument("eval_dir", type=Path)
    p.add_argument("--corpus", type=Path, default=Path("data/sample/KsponSpeech"))
    p = sub.add_parser("curves", help="dev WER and training loss per step (PNG)")
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.what == "voices":
        print(voice_table(args.eval_dir, args.corpus))
    else:
        runs = dict(r.split("=", 1) for r in args.runs)
        draw_curves({k: Path(v) for k, v in runs.items()}, args.out)
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
