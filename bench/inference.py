"""Inference speed on CPU, same weights, one run: korasr's runtime vs sherpa-onnx vs NeMo eager ``transcribe``.

For each model (the sample recipe's trained ``.nemo``, and an untrained ``small`` config for a bigger graph):
export it with `korasr export`, load the eval utterances into memory (file reading is not timed), then measure

- batch 1: every utterance alone; per-utterance latency p50 / p99 and RTFx (audio seconds / compute seconds);
- batched: 16 utterances per call (korasr ``transcribe_arrays``, sherpa-onnx ``decode_streams``, NeMo
  ``transcribe(batch_size=16)``), RTFx.

NeMo at batch 1 is timed both per call (a service calling ``transcribe`` per request: latency) and as one
``transcribe(batch_size=1)`` over all utterances (its dataloader set up once: RTFx). Prints a table and the
ratios against the targets (korasr ≥ 1.0× sherpa-onnx and ≥ 2× NeMo at batch 1, ahead of both batched).
The korasr runtime also runs the export's float16 and INT8 graphs (INT8 calibrated on ``--calibration``, the dev
set), for their CER and CPU speed.

    python bench/inference.py [--model exp/sample/.../x.nemo] [--manifest manifests/sample/eval_clean.jsonl]
                              [--limit 200] [--threads 2] [--no-small]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, audio_seconds, newest, pct, read_utterances, time_calls, timed
from peers import nemo_transcribe, sherpa_offline

BATCH = 16


def bench_korasr(export_dir: Path, waves: list[np.ndarray], threads: int, precision: str = "fp32") -> dict:
    from korasr.runtime import Recognizer

    rec = Recognizer(export_dir, threads=threads, precision=precision)
    rec.transcribe_arrays(waves[:2])  # warm-up
    single = time_calls(lambda w: rec.transcribe_arrays([w]), waves)
    start = time.perf_counter()
    texts = [r.text for r in rec.transcribe_arrays(waves, batch_size=BATCH)]
    return {"single": single, "batched_s": time.perf_counter() - start, "texts": texts}


def bench_sherpa(export_dir: Path, waves: list[np.ndarray], threads: int) -> dict:
    rec = sherpa_offline(export_dir, threads)

    def one(wave: np.ndarray) -> str:
        stream = rec.create_stream()
        stream.accept_waveform(16000, wave)
        rec.decode_stream(stream)
        return stream.result.text

    one(waves[0])
    single = time_calls(one, waves)
    start = time.perf_counter()
    texts = []
    for i in range(0, len(waves), BATCH):
        streams = []
        for wave in waves[i : i + BATCH]:
            stream = rec.create_stream()
            stream.accept_waveform(16000, wave)
            streams.append(stream)
        rec.decode_streams(streams)
        texts += [unicodedata.normalize("NFC", s.result.text) for s in streams]
    return {"single": single, "batched_s": time.perf_counter() - start, "texts": texts}


def bench_nemo(model, waves: list[np.ndarray]) -> dict:  # type: ignore[no-untyped-def]
    nemo_transcribe(model, [waves[0]], 1)
    single = time_calls(lambda w: nemo_transcribe(model, [w], 1), waves)
    amortized = timed(nemo_transcribe, model, waves, 1)
    return {"single": single, "single_amortized_s": amortized, "batched_s": timed(nemo_transcribe, model, waves, BATCH)}


def untrained_small(tokenizer_dir: Path, out: Path) -> Path:
    """An untrained `small` FastConformer-CTC (NeMo's published shape) over the sample tokenizer, saved as .nemo."""
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from omegaconf import OmegaConf

    from korasr.train import BASE, CONF, compose

    cfg = compose([BASE, CONF / "size" / "small.yaml"], [f"model.tokenizer.dir={tokenizer_dir}"])
    for key in ("train_ds", "validation_ds", "test_ds"):
        cfg.model.pop(key, None)
    OmegaConf.set_struct(cfg, False)
    cfg.model.korasr_text_unit = "jamo"
    model = EncDecCTCModelBPE(cfg=cfg.model)
    path = out / "small_untrained.nemo"
    model.save_to(str(path))
    return path


def main() -> int:
    import torch

    from korasr.evaluate import load_model
    from korasr.export import export
    from korasr.metrics import cer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="default: the newest exp/sample/*/*/*.nemo")
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests" / "sample" / "eval_clean.jsonl")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "tokenizers" / "sample" / "jamo_unigram_v80")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-small", action="store_true", help="skip the untrained small model")
    parser.add_argument("--calibration", type=Path, default=ROOT / "manifests" / "sample" / "dev.jsonl",
                        help="INT8 calibration manifest (korasr runtime int8 row)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        args.model = newest("exp/sample/*/*/*.nemo")
        if args.model is None:
            raise SystemExit("no model: run `make train` first or pass --model")
    rows, waves = read_utterances(args.manifest, args.limit)
    refs = [r["text"] for r in rows]
    audio_s = audio_seconds(waves)
    print(f"{len(waves)} utterances, {audio_s:.1f} s of audio, {args.threads} threads")

    with tempfile.TemporaryDirectory() as tmp:
        models = [("sample (trained)", args.model)]
        if not args.no_small:
            models.append(("small (untrained)", untrained_small(args.tokenizer, Path(tmp))))
        for label, nemo_path in models:
            export_dir = export(nemo_path, Path(tmp) / f"export_{len(label)}", parity_manifest=args.manifest,
                                int8_manifest=args.calibration)  # fmt: skip
            nemo = load_model(nemo_path).cpu().eval()
            params = sum(p.numel() for p in nemo.parameters()) / 1e6
            results = {
                "korasr runtime": bench_korasr(export_dir, waves, args.threads),
                "korasr fp16": bench_korasr(export_dir, waves, args.threads, "fp16"),
                "korasr int8": bench_korasr(export_dir, waves, args.threads, "int8"),
                "sherpa-onnx": bench_sherpa(export_dir, waves, args.threads),
                "NeMo transcribe": bench_nemo(nemo, waves),
            }
            print(f"\n## {label}: {params:.1f} M parameters")
            print(f"{'engine':<17} {'RTFx b1':>8} {'p50 ms':>7} {'p99 ms':>7} {'RTFx b16':>9}  CER")
            for name, r in results.items():
                rtf1 = audio_s / sum(r["single"])
                rtf16 = audio_s / r["batched_s"]
                score = f"{cer(refs, r['texts']):.2f}%" if "texts" in r else "—"
                print(f"{name:<17} {rtf1:>8.1f} {pct(r['single'], 50):>7.1f} "
                      f"{pct(r['single'], 99):>7.1f} {rtf16:>9.1f}  {score}")  # fmt: skip
            nemo_amortized = audio_s / results["NeMo transcribe"]["single_amortized_s"]
            print(f"NeMo transcribe(batch_size=1) over all utterances in one call: RTFx {nemo_amortized:.1f}")
            ours = results["korasr runtime"]
            for peer in ("sherpa-onnx", "NeMo transcribe"):
                single = sum(results[peer]["single"]) / sum(ours["single"])
                batched = results[peer]["batched_s"] / ours["batched_s"]
                print(f"korasr vs {peer}: {single:.2f}× at batch 1, {batched:.2f}× batched")
            print(
                f"korasr vs NeMo one-call batch 1: {results['NeMo transcribe']['single_amortized_s'] / sum(ours['single']):.2f}×"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
