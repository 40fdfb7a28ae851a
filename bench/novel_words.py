"""What "novel" means: eval_novel's words beside what a model wrote for them.

Reads an evaluation's ``eval_novel.hyp.jsonl`` (``korasr evaluate`` or ``make train`` write it in ``…/run/eval/``),
aligns each reference with its hypothesis word by word (kaldialign, as korasr.metrics does) and prints a Markdown
table of words it got and words it missed, with the syllable CER of each missed word, plus the share of words right.

    .venv/bin/python bench/novel_words.py exp/sample/tiny_char-jamo/run/eval/eval_novel.hyp.jsonl [--rows 10]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from kaldialign import align, edit_distance


def pairs(path: Path) -> list[tuple[str, str]]:
    """(reference word, hypothesis word or "" where it was deleted) for every reference word."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        for ref, hyp in align(row["ref"].split(), row["hyp"].split(), "*"):
            if ref != "*":
                out.append((ref, "" if hyp == "*" else hyp))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hyp", type=Path, help="an eval_novel.hyp.jsonl")
    parser.add_argument("--rows", type=int, default=10, help="words of each kind (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="which words are shown (a fixed random sample)")
    args = parser.parse_args()
    words = pairs(args.hyp)
    right = sorted({ref for ref, hyp in words if ref == hyp})
    wrong = sorted({(ref, hyp) for ref, hyp in words if ref != hyp})
    r = random.Random(args.seed)
    shown_right = r.sample(right, min(args.rows, len(right)))
    shown_wrong = r.sample(wrong, min(args.rows, len(wrong)))
    print(f"{sum(ref == hyp for ref, hyp in words)} of {len(words)} words right ({args.hyp})\n")
    print("| word (reference) | model wrote | syllables wrong |")
    print("|---|---|---:|")
    for ref in shown_right:
        print(f"| {ref} | {ref} | 0 of {len(ref)} |")
    for ref, hyp in shown_wrong:
        errors = edit_distance(list(ref), list(hyp))["total"]
        print(f"| {ref} | {hyp or '(nothing)'} | {errors} of {len(ref)} |")


if __name__ == "__main__":
    main()
