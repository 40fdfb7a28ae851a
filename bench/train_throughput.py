"""GPU training throughput of FastConformer-L CTC: utterance-seconds of audio per second, bf16, synthetic batches.

What it measures, plainly: the model step alone (forward + CTC loss + backward + AdamW on random audio batches
of one fixed shape, after warm-up), for korasr's `large` (conf/fastconformer_ctc.yaml + conf/size/large.yaml)
and for the same config with 18 layers instead of 17 (NeMo's example YAML says 18 where its model table says
17). The ratio is therefore close to 18/17 by construction: it is a step-time check of our config, not a
comparison with NeMo's published recipe. That comparison would also need NeMo's data path as published
(bucketing, batch duration, workers), which this script does not run.
Without a CUDA GPU (or without NeMo) it says so and exits 0.

    python bench/train_throughput.py [--batch 32] [--seconds 16] [--steps 20] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, jamo_tokenizer, sample_sentences, write_json
from peers import NEMO_PUBLISHED  # the variant: 18 layers instead of our 17; nothing else differs


def measure(overrides: list[str], tok: Path, args: argparse.Namespace) -> dict:
    import torch
    from nemo.collections.asr.models import EncDecCTCModelBPE

    from korasr.train import BASE, CONF, compose

    cfg = compose([BASE, CONF / "size" / f"{args.size}.yaml"], [f"model.tokenizer.dir={tok}", *overrides])
    for split in ("train_ds", "validation_ds", "test_ds"):
        cfg.model[split].manifest_filepath = None
        cfg.model[split].use_lhotse = False
    device = args.device
    model = EncDecCTCModelBPE(cfg=cfg.model).to(device).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=1e-3)
    samples = int(args.seconds * 16000)
    gen = torch.Generator(device=device).manual_seed(0)
    audio = torch.randn(args.batch, samples, device=device, generator=gen) * 0.1
    audio_len = torch.full((args.batch,), samples, device=device, dtype=torch.long)
    vocab = model.tokenizer.vocab_size
    tokens_per_utt = int(args.seconds * 5)  # about 5 jamo pieces per second of Korean speech
    targets = torch.randint(0, vocab, (args.batch, tokens_per_utt), device=device, generator=gen)
    target_len = torch.full((args.batch,), tokens_per_utt, device=device, dtype=torch.long)
    cuda = device == "cuda"

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            log_probs, enc_len, _ = model.forward(input_signal=audio, input_signal_length=audio_len)
        loss = model.loss(
            log_probs=log_probs.float(), targets=targets, input_lengths=enc_len, target_lengths=target_len
        )
        loss.backward()
        optim.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "step_seconds": round(elapsed / args.steps, 4),
        "audio_seconds_per_second": round(args.batch * args.seconds * args.steps / elapsed, 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=16.0, help="duration of every utterance in the batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--size", default="large", choices=("large", "medium", "small", "tiny"))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke test of this script")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("train_throughput: torch is not installed; nothing to measure")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_throughput: no CUDA GPU here; this benchmark needs one (skipped)")
        return 0
    try:
        import nemo.collections.asr
    except ImportError as e:
        print(f"train_throughput: NeMo is not importable here ({e}); skipped")
        return 0
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        tok = jamo_tokenizer(sample_sentences(20000), Path(tmp), 1024)  # generated text, no audio needed
        ours = measure([], tok, args)
        nemo = measure(NEMO_PUBLISHED, tok, args)
    result = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "size": args.size,
        "torch": torch.__version__,
        "batch": args.batch,
        "utterance_seconds": args.seconds,
        "korasr": ours,
        "nemo_published": nemo,
        "ratio": round(ours["audio_seconds_per_second"] / nemo["audio_seconds_per_second"], 3),
    }
    write_json(args.out / "train_throughput.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
