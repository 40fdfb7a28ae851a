"""Tokenization speed: manifest text → jamo → SentencePiece ids, korasr's path vs the `jamo` package's `h2j`.

Both paths feed the same SentencePiece model (a jamo unigram tokenizer built by `korasr tokenizer build`) and
must produce identical ids; only the decomposition differs: korasr uses `unicodedata.normalize("NFD")`, the peer
`jamo.h2j`. Prints chars/s of the decomposition alone and end to end, with the ratios; target: decomposition
≥ 10 M chars/s. Text: normalized sentences of the sample corpus's generator (no audio needed).

    python bench/tokenize_speed.py [--sentences 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, best_of, jamo_tokenizer, sample_sentences, write_json
from peers import jamo_decompose


def main() -> int:
    import sentencepiece as spm

    from korasr.text.codec import to_model_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    texts = sample_sentences(args.sentences)
    chars = sum(len(t) for t in texts)
    with tempfile.TemporaryDirectory() as tmp:
        directory = jamo_tokenizer(texts[:20000], Path(tmp), args.vocab)
        sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))

    def korasr_decompose() -> list[str]:
        return [to_model_text(t, "jamo") for t in texts]

    def peer_decompose() -> list[str]:
        return jamo_decompose(texts)

    ours, theirs = korasr_decompose(), peer_decompose()
    assert ours == theirs, "both decompositions must give the same conjoining jamo"
    threads = os.cpu_count() or 1
    assert sp.encode(ours[:1000]) == sp.encode(theirs[:1000])

    rates = {
        "decompose: korasr (NFD)": chars / best_of(korasr_decompose, args.repeats),
        "decompose: jamo.h2j": chars / best_of(peer_decompose, args.repeats),
        "text → ids: korasr": chars / best_of(lambda: sp.encode(korasr_decompose(), num_threads=threads), args.repeats),
        "text → ids: jamo.h2j": chars / best_of(lambda: sp.encode(peer_decompose(), num_threads=threads), args.repeats),
    }
    result = {
        "sentences": len(texts),
        "chars": chars,
        "sentencepiece_threads": threads,
        "chars_per_second": {k: round(v) for k, v in rates.items()},
        "decompose_ratio": round(rates["decompose: korasr (NFD)"] / rates["decompose: jamo.h2j"], 1),
        "end_to_end_ratio": round(rates["text → ids: korasr"] / rates["text → ids: jamo.h2j"], 2),
    }
    write_json(args.out / "tokenize.json", result)
    print(f"{len(texts)} sentences, {chars / 1e6:.1f} M chars, SentencePiece jamo unigram {sp.get_piece_size()}")
    for name, rate in rates.items():
        print(f"{name:<26} {rate / 1e6:8.2f} M chars/s")
    print(f"decomposition: korasr / jamo.h2j = {result['decompose_ratio']}×   (target: korasr ≥ 10 M chars/s)")
    print(f"end to end:    korasr / jamo.h2j = {result['end_to_end_ratio']}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
