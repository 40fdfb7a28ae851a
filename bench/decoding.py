"""Decoding on CPU, one run: greedy vs beam vs beam + LM, korasr's runtime vs NeMo's own beam_batch + NGPU-LM.

Same model, same token 6-gram LM (`make lm`: ARPA for NeMo, KenLM binary for korasr), same alpha/beta/beam (the
LM's dev-tuned values, `korasr lm tune`). For each decoder: CER on eval_clean, eval_other and (the sample corpus)
eval_novel, whose sentences come from templates and words the LM's text never uses, and RTFx (audio
seconds / wall seconds, acoustic model included: onnxruntime for korasr, NeMo eager for NeMo; audio already in
memory for korasr, NeMo reads its files), plus decode-only RTFx for korasr's search. Candidates for the runtime's
search, and why flashlight-text: it is the only maintained lexicon-free CTC beam search with shallow fusion of
a token LM that installs as a wheel here (pyctcdecode scores a word-level KenLM at word boundaries, sherpa-onnx
offers CTC LMs only as Kaldi HLG graphs, NeMo's needs torch). Prints a table, the targets, how much of each split's
text the LM has read (`korasr lm overlap`), and writes bench/out/decoding.json.

    python bench/decoding.py [--model exp/sample/.../x.nemo] [--export DIR] [--lm DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, audio_seconds, newest, read_utterances, write_json
from peers import nemo_transcribe

SPLITS = ("eval_clean", "eval_other", "eval_novel")  # those whose manifest exists


def logprobs_of(rec, waves: list[np.ndarray], batch: int = 16) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    out: list[np.ndarray] = []
    for i in range(0, len(waves), batch):
        out += rec.logprobs(waves[i : i + batch])
    return out


def _read(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=newest("exp/sample/*/run/*.nemo"))
    parser.add_argument("--export", type=Path, default=None, help="default: export/ beside the model")
    parser.add_argument("--lm", type=Path, default=newest("exp/sample/lm/*/lm.json"), help="an LM directory")
    parser.add_argument("--manifests", type=Path, default=ROOT / "manifests" / "sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beam", type=int, default=None, help="default: the LM's tuned beam")
    args = parser.parse_args()
    if args.model is None or not args.model.is_file():
        raise SystemExit("no model: make train first (or --model x.nemo)")
    export = args.export or args.model.parent / "export"
    if not (export / "model.json").is_file():
        raise SystemExit(f"no export at {export}: make export first (or --export DIR)")
    if args.lm is None:
        raise SystemExit("no LM: make lm first (or --lm DIR)")
    lm_dir = args.lm.parent if args.lm.name == "lm.json" else args.lm

    import torch

    torch.set_num_threads(args.threads)
    from korasr.evaluate import Decoding, _use_nemo_beam, _use_nemo_greedy, load_model
    from korasr.lm import read_lm
    from korasr.metrics import cer
    from korasr.runtime import Recognizer, tokens_text
    from korasr.runtime.beam import BeamDecoder, BeamOptions
    from korasr.runtime.ctc import greedy
    from korasr.text.codec import from_model_text

    info = read_lm(lm_dir)
    tuned = info.tuned or {}
    options = Decoding("beam", str(lm_dir), beam=args.beam).options(info)
    print(f"model {args.model}\nLM {lm_dir} (order {info.meta['order']}, tuned: {bool(tuned)}); "
          f"alpha {options.alpha:g}, beta {options.beta:g}, beam {options.beam}")  # fmt: skip

    splits = [s for s in SPLITS if (args.manifests / f"{s}.jsonl").is_file()]
    data = {}
    for split in splits:
        rows, waves = read_utterances(args.manifests / f"{split}.jsonl")
        data[split] = {"rows": rows, "refs": [r["text"] for r in rows], "waves": waves,
                       "seconds": audio_seconds(waves)}  # fmt: skip

    results: dict[str, dict] = {}
    rec = Recognizer(export, threads=args.threads)
    rec.logprobs([np.zeros(16000, np.float32)])
    decoders = {
        "korasr greedy": None,
        f"korasr beam {options.beam}, no LM": BeamDecoder(rec.blank, BeamOptions(beam=options.beam, alpha=0.0)),
        f"korasr beam {options.beam} + LM": BeamDecoder(rec.blank, options, info.binary),
    }
    for split, d in data.items():
        start = time.perf_counter()
        logprobs = d["logprobs"] = logprobs_of(rec, d["waves"])
        acoustic = time.perf_counter() - start
        for name, decoder in decoders.items():
            start = time.perf_counter()
            ids = [[t for t, _ in (decoder.decode(lp) if decoder else greedy(lp, rec.blank))] for lp in logprobs]
            search = time.perf_counter() - start
            hyps = [tokens_text(rec.pieces, i, rec.unit) for i in ids]
            results.setdefault(name, {})[split] = {
                "cer": cer(d["refs"], hyps),
                "rtfx": d["seconds"] / (acoustic + search),
                "search_rtfx": d["seconds"] / max(search, 1e-9),
            }

    # hotwords: a set of sentences with terms the corpus never says, and an unrelated list on eval_clean
    from korasr.data.hotword_set import make_hotword_set, term_recall

    hot_manifest = make_hotword_set(OUT / "hotword_set")
    hot_rows, hot_waves = read_utterances(hot_manifest)
    hot_lp = logprobs_of(rec, hot_waves)
    clean_lp = data["eval_clean"]["logprobs"]

    def texts(decoder, logprobs) -> list[str]:  # type: ignore[no-untyped-def]
        return [tokens_text(rec.pieces, [t for t, _ in (decoder.decode(lp) if decoder else greedy(lp, rec.blank))],
                            rec.unit) for lp in logprobs]  # fmt: skip

    hot_words = rec.hotwords(_read(hot_manifest.parent / "hotwords.txt"), "hotwords.txt")
    unrelated = rec.hotwords(_read(hot_manifest.parent / "unrelated.txt"), "unrelated.txt")
    with_lm = decoders[f"korasr beam {options.beam} + LM"]
    hot_refs = [r["text"] for r in hot_rows]
    hotword_rows = {}
    for name, decoder in (
        ("greedy", None),
        ("beam + LM", with_lm),
        ("beam + LM + hotwords", with_lm.with_hotwords(hot_words)),
    ):
        hyps = texts(decoder, hot_lp)
        hotword_rows[name] = {"recall": term_recall(hot_rows, hyps), "cer": cer(hot_refs, hyps)}
    false_boost = cer(data["eval_clean"]["refs"], texts(with_lm.with_hotwords(unrelated), clean_lp))

    model = load_model(args.model)
    unit = str(model.cfg.get("korasr_text_unit", "jamo"))
    nemo_beam = Decoding("beam", str(lm_dir), None, options.beam, options.alpha, options.beta)
    nemo = {"NeMo greedy_batch": None, f"NeMo beam_batch {options.beam} + NGPU-LM": nemo_beam}
    for name, decoding in nemo.items():
        if decoding is None:
            _use_nemo_greedy(model)
        else:
            _use_nemo_beam(model, decoding)
        for split, d in data.items():
            paths = [r["audio_filepath"] for r in d["rows"]]
            nemo_transcribe(model, paths[:4], 4)  # warm-up
            start = time.perf_counter()
            outputs = nemo_transcribe(model, paths, 16)
            wall = time.perf_counter() - start
            hyps = [from_model_text(o.text, unit) for o in outputs]
            results.setdefault(name, {})[split] = {"cer": cer(d["refs"], hyps), "rtfx": d["seconds"] / wall}

    print(f"\n| decoder | {' | '.join(f'{s} CER' for s in splits)} | RTFx {' / '.join(splits)} | search-only RTFx |")
    print(f"|---|{'---:|' * len(splits)}---:|---:|")
    for name, r in results.items():
        search = " / ".join(f"{r[s]['search_rtfx']:.0f}" for s in splits) if "search_rtfx" in r["eval_clean"] else "—"
        cers = " | ".join(f"{r[s]['cer']:.2f}" for s in splits)
        rtfx = " / ".join(f"{r[s]['rtfx']:.0f}" for s in splits)
        print(f"| {name} | {cers} | {rtfx} | {search} |")
    greedy_row, lm_row = results["korasr greedy"], results[f"korasr beam {options.beam} + LM"]
    nemo_row = results[f"NeMo beam_batch {options.beam} + NGPU-LM"]
    other_gain = 100 * (1 - lm_row["eval_other"]["cer"] / max(greedy_row["eval_other"]["cer"], 1e-9))
    print(
        f"\nbeam + LM vs greedy: eval_other CER {other_gain:+.1f}% relative lower (target ≥ 10%), eval_clean "
        f"{lm_row['eval_clean']['cer']:.2f} vs {greedy_row['eval_clean']['cer']:.2f} (target: no worse)"
    )
    print("korasr beam + LM RTFx: " + " / ".join(f"{lm_row[s]['rtfx']:.0f}" for s in splits) + " (target ≥ 100)")
    print("parity with NeMo (|Δ CER|, target ≤ 0.3): " + ", ".join(
        f"{s} {abs(lm_row[s]['cer'] - nemo_row[s]['cer']):.2f}" for s in splits))  # fmt: skip
    if "eval_novel" in splits:
        novel_gain = 100 * (1 - lm_row["eval_novel"]["cer"] / max(greedy_row["eval_novel"]["cer"], 1e-9))
        print(f"beam + LM vs greedy on eval_novel (text the LM never read): {novel_gain:+.1f}% relative lower")

    from korasr.lm.overlap import text_overlap

    orders = tuple(sorted({3, int(info.meta["order"])}))
    overlap = text_overlap(lm_dir, [args.manifests / f"{s}.jsonl" for s in splits], orders)
    print(f"\nwhat the LM has read of each split (`korasr lm overlap --lm {lm_dir} --manifest …`):\n"
          f"| split | sentences in LM text | {' | '.join(f'{n}-gram overlap' for n in orders)} |\n"
          f"|---|---:|{'---:|' * len(orders)}")  # fmt: skip
    for split, r in zip(splits, overlap.values(), strict=True):
        cells = " | ".join(f"{r[f'{n}-gram overlap']:.2f}%" for n in orders)
        print(f"| {split} | {r['sentences_in_lm_text']:.2f}% | {cells} |")
    print(f"\nhotwords ({len(hot_rows)} utterances, {len(hot_words)} terms the corpus never says):\n"
          "| decoder | term recall | CER |\n|---|---:|---:|")  # fmt: skip
    for name, r in hotword_rows.items():
        print(f"| {name} | {r['recall']:.1f}% | {r['cer']:.2f} |")
    base = hotword_rows["beam + LM"]["recall"]
    print(f"recall with hotwords {hotword_rows['beam + LM + hotwords']['recall']:.1f}% vs {base:.1f}% (target: at least "
          f"double); eval_clean CER with {len(unrelated)} unrelated hotwords {false_boost:.2f} vs "
          f"{lm_row['eval_clean']['cer']:.2f} (target: within 0.2 points)")  # fmt: skip
    record = {"lm": str(lm_dir), "alpha": options.alpha, "beta": options.beta, "beam": options.beam,
              "results": results, "hotwords": hotword_rows, "eval_clean_cer_unrelated_hotwords": false_boost,
              "overlap": dict(zip(splits, overlap.values(), strict=True))}  # fmt: skip
    write_json(OUT / "decoding.json", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
