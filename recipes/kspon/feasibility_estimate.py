"""How fast may Korean be spoken for a jamo-piece tokenizer at 8× subsampling? An estimate from any Korean text.

    python recipes/kspon/feasibility_estimate.py --text FILE [FILE ...] [--vocab 256 512 1024]

Keeps the Hangul of each line (8+ syllables), holds out a tenth, trains korasr's jamo unigram tokenizers of the given
sizes on the rest and prints, on the held-out lines, the CTC frames needed per syllable (pieces plus a blank between
equal neighbours) and the syllable rate that 8× subsampling (12.5 frames a second) can still emit. Used in
recipes/kspon/README.md with the text that ships inside the konlpy wheel
(`pip download konlpy==0.6.0 --no-deps`, unzip, `konlpy/data/corpus/*/*.txt`). `korasr train` measures the real
thing on your manifest before the first step.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import unicodedata
from pathlib import Path

from korasr.tokenizer.build import TokenizerOptions, build_tokenizer
from korasr.tokenizer.report import ctc_length, encoder_frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, nargs="+", required=True)
    parser.add_argument("--vocab", type=int, nargs="+", default=[256, 512, 1024])
    args = parser.parse_args(argv)
    import sentencepiece as spm

    lines = []
    for path in args.text:
        for raw in path.read_text(encoding="utf-8").splitlines():
            text = " ".join(re.sub(r"[^가-힣 ]+", " ", raw).split())
            if len(text.replace(" ", "")) >= 8:
                lines.append(text)
    if len(lines) < 100:
        raise SystemExit(f"{len(lines)} usable lines in {[str(p) for p in args.text]}: need 100 or more")
    random.Random(0).shuffle(lines)
    held, train = lines[: len(lines) // 10], lines[len(lines) // 10 :]
    frames_per_second = encoder_frames(100.0, 8) / 100.0
    syllables = sum(len(t.replace(" ", "")) for t in held)
    print(f"{len(train)} train / {len(held)} held-out lines, {len({c for t in train for c in t} - {' '})} distinct "
          f"syllables in train; 8x subsampling: {frames_per_second:.2f} frames/s")  # fmt: skip
    print("| pieces | CTC frames per syllable | syllables/s emittable at 8× |\n|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "train.jsonl"
        manifest.write_text("".join(json.dumps({"audio_filepath": "-", "duration": 1.0, "text": t},
                                               ensure_ascii=False) + "\n" for t in train), encoding="utf-8")  # fmt: skip
        for vocab in args.vocab:
            directory = build_tokenizer(manifest, Path(tmp) / f"v{vocab}", TokenizerOptions(unit="jamo", vocab=vocab),
                                        report_manifests=[])  # fmt: skip
            sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
            frames = sum(ctc_length(sp.encode(unicodedata.normalize("NFD", t))) for t in held)
            print(f"| {vocab} | {frames / syllables:.3f} | {frames_per_second * syllables / frames:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
