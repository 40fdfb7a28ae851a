"""Tokenization speed: manifest text → jamo → SentencePiece ids, korasr's path vs the `jamo` package's `h2j`.

Both paths feed the same SentencePiece model (a jamo unigram tokenizer built by `korasr tokenizer build`) and
must produce identical ids; only the decomposition differs: korasr uses `unicodedata.normalize("NFD")`, the peer
`jamo.h2j`. Prints chars/s of the decomposition alone and end to end, with the ratios; target: decomposition
≥ 10 M chars/s. Text: normalized sentences of the sample corpus's generator (no audio needed).

    python bench/tokenize_speed.py [--sentences 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def best_rate(fn, chars: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return chars / best


def main() -> int:
    import jamo
    import sentencepiece as spm

    from korasr.data.sample_text import sentence
    from korasr.text.codec import to_model_text
    from korasr.text.normalize import normalize_text
    from korasr.tokenizer.build import TokenizerOptions, build_tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()

    r = random.Random(0)
    texts = [normalize_text(sentence(r)) for _ in range(args.sentences)]
    texts = [t for t in texts if t]
    chars = sum(len(t) for t in texts)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "train.jsonl"
        manifest.write_text(
            "".join(json.dumps({"text": t, "duration": 1.0}, ensure_ascii=False) + "\n" for t in texts[:20000]),
            encoding="utf-8",
        )
        directory = build_tokenizer(
            manifest, Path(tmp) / "tok", TokenizerOptions(unit="jamo", vocab=args.vocab), report_manifests=[]
        )
        sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))

    def korasr_decompose() -> list[str]:
        return [to_model_text(t, "jamo") for t in texts]

    def peer_decompose() -> list[str]:
        return [jamo.h2j(t) for t in texts]

    ours, theirs = korasr_decompose(), peer_decompose()
    assert ours == theirs, "both decompositions must give the same conjoining jamo"
    threads = os.cpu_count() or 1
    assert sp.encode(ours[:1000]) == sp.encode(theirs[:1000])

    rates = {
        "decompose: korasr (NFD)": best_rate(korasr_decompose, chars, args.repeats),
        "decompose: jamo.h2j": best_rate(peer_decompose, chars, args.repeats),
        "text → ids: korasr": best_rate(
            lambda: sp.encode(korasr_decompose(), num_threads=threads), chars, args.repeats
        ),
        "text → ids: jamo.h2j": best_rate(
            lambda: sp.encode(peer_decompose(), num_threads=threads), chars, args.repeats
        ),
    }
    result = {
        "sentences": len(texts),
        "chars": chars,
        "sentencepiece_threads": threads,
        "chars_per_second": {k: round(v) for k, v in rates.items()},
        "decompose_ratio": round(rates["decompose: korasr (NFD)"] / rates["decompose: jamo.h2j"], 1),
        "end_to_end_ratio": round(rates["text → ids: korasr"] / rates["text → ids: jamo.h2j"], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tokenize.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(texts)} sentences, {chars / 1e6:.1f} M chars, SentencePiece jamo unigram {sp.get_piece_size()}")
    for name, rate in rates.items():
        print(f"{name:<26} {rate / 1e6:8.2f} M chars/s")
    print(f"decomposition: korasr / jamo.h2j = {result['decompose_ratio']}×   (target: korasr ≥ 10 M chars/s)")
    print(f"end to end:    korasr / jamo.h2j = {result['end_to_end_ratio']}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
