"""GPU training throughput of FastConformer-L CTC: utterance-seconds of audio per second, bf16, synthetic batches.

What it measures, plainly: the model step alone (forward + CTC loss + backward + the config's gradient clipping +
AdamW on random audio batches of one fixed shape, after warm-up), for korasr's `large` (conf/fastconformer_ctc.yaml
+ conf/size/large.yaml) and for the same config with 18 layers instead of 17 (NeMo's example YAML says 18 where its
model table says 17). The ratio is therefore close to 18/17 by construction: it is a step-time check of our config,
not a comparison with NeMo's published recipe. That comparison would also need NeMo's data path as published
(bucketing, batch duration, workers), which this script does not run.
Without a CUDA GPU (or without NeMo) it says so and exits 0. bench/gpu_check.py (`make gpu-check`) runs the same
step for korasr's composed kspon config against NeMo's own example config (bench/nemo_fastconformer_ctc_bpe.yaml).

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


def korasr_config(overrides: list[str], tok: Path, size: str):  # type: ignore[no-untyped-def]
    """korasr's base + size config over the tokenizer ``tok``, with ``overrides``, ready to instantiate without data."""
    from korasr.train import BASE, CONF, compose

    return without_data(compose([BASE, CONF / "size" / f"{size}.yaml"], [f"model.tokenizer.dir={tok}", *overrides]))


def without_data(cfg):  # type: ignore[no-untyped-def]
    """``cfg`` with no manifests, so that NeMo builds the model without data loaders (the batches are synthetic)."""
    for split in ("train_ds", "validation_ds", "test_ds"):
        cfg.model[split].manifest_filepath = None
        cfg.model[split].use_lhotse = False
    return cfg


def throughput(cfg, *, batch: int, seconds: float, steps: int, warmup: int, device: str) -> dict:  # type: ignore[no-untyped-def]
    """The model step of ``cfg`` (forward in bf16 autocast on CUDA, CTC loss, backward, the config's gradient
    clipping, AdamW with the config's betas and weight decay) on one fixed random batch: ``batch`` utterances of
    ``seconds`` of noise, about 5 target pieces per second; ``warmup`` steps untimed, then ``steps`` timed."""
    import torch
    from nemo.collections.asr.models import EncDecCTCModelBPE

    model = EncDecCTCModelBPE(cfg=cfg.model).to(device).train()
    optim_cfg = cfg.model.get("optim", {})
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=tuple(optim_cfg.get("betas", (0.9, 0.98))),
                              weight_decay=float(optim_cfg.get("weight_decay", 1e-3)))  # fmt: skip
    clip = float(cfg.get("trainer", {}).get("gradient_clip_val", 0.0) or 0.0)
    samples = int(seconds * 16000)
    gen = torch.Generator(device=device).manual_seed(0)
    audio = torch.randn(batch, samples, device=device, generator=gen) * 0.1
    audio_len = torch.full((batch,), samples, device=device, dtype=torch.long)
    vocab = model.tokenizer.vocab_size
    tokens_per_utt = max(1, int(seconds * 5))  # about 5 jamo pieces per second of Korean speech
    targets = torch.randint(0, vocab, (batch, tokens_per_utt), device=device, generator=gen)
    target_len = torch.full((batch,), tokens_per_utt, device=device, dtype=torch.long)
    cuda = device == "cuda"

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            log_probs, enc_len, _ = model.forward(input_signal=audio, input_signal_length=audio_len)
        loss = model.loss(
            log_probs=log_probs.float(), targets=targets, input_lengths=enc_len, target_lengths=target_len
        )
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optim.step()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "step_seconds": round(elapsed / steps, 4),
        "steps_per_second": round(steps / elapsed, 3),
        "audio_seconds_per_second": round(batch * seconds * steps / elapsed, 1),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def measure(overrides: list[str], tok: Path, args: argparse.Namespace) -> dict:
    cfg = korasr_config(overrides, tok, args.size)
    return throughput(cfg, batch=args.batch, seconds=args.seconds, steps=args.steps, warmup=args.warmup,
                      device=args.device)  # fmt: skip


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
