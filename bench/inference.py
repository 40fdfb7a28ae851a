"""Offline inference speed on CPU at every model size, in one run: korasr's runtime (fp32, fp16, INT8 dynamic and
static) vs sherpa-onnx vs NeMo eager ``transcribe``, each against the machine's own limit.

For each size (``tiny``: the sample recipe's trained ``.nemo``; ``small``, ``medium``, ``large``: the real configs of
``conf/size/`` with seeded, untrained weights over the sample tokenizer), on the same audio (eval utterances of
several lengths, at least ``--seconds`` in all, held in memory: file reading is not timed):

- every row runs in a fresh process (its peak RSS is its own), the fastest of ``--repeats`` passes over the audio:
  batch 1 (every utterance alone: per-call p50 / p99, RTFx = audio seconds / compute seconds) and batch 16 (the
  utterances by length, 16 per call, as an offline job groups them: p50 / p99 of the calls);
- korasr runtime on each graph ``korasr export`` writes: ``model.onnx`` (fp32), ``model.fp16.onnx``,
  ``model.int8-dynamic.onnx`` (INT8 weights, activations quantized per call) and ``model.int8.onnx`` (static Q/DQ,
  calibrated on 16 dev utterances: ``--int8-calibration``);
- sherpa-onnx's offline recognizer on the export's ``encoder.onnx``, one stream per call and ``decode_streams``;
- NeMo ``transcribe`` (eager PyTorch), batch_size 1 per call and 16;
- **the limit**: the model's FLOPs per audio second (counted by torch's ``FlopCounterMode`` on NeMo's forward over
  10 s of audio) over the GEMM throughput onnxruntime reaches on these cores for the encoder's matrix shapes
  (measured here, fp32 and INT8): the RTFx a runtime that did nothing but those products at that speed would
  reach. Each row's share of it is printed.

Untrained graphs are benchmarks, not models: their INT8 graphs are compared with fp32 (frame-wise top-1 agreement,
max |Δ log-prob|), never gated on accuracy; the trained tiny model's INT8 rows also get a CER next to fp32's.
The untrained models and exports are cached under ``bench/out/inference/SIZE/``. Each size's table goes to
``bench/out/inference-SIZE.json``; ``--profile`` adds onnxruntime's top operators by time for the fp32 batch-16
graph.

    python bench/inference.py [--sizes tiny,small,medium,large] [--seconds 120] [--threads 2] [--model TINY.nemo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, SAMPLE_RATE, best_of, export_code_sha, newest, pct, read_wave, write_json

SIZES = ("tiny", "small", "medium", "large")
BATCH = 16
FLOP_SECONDS = 10.0  # the FLOPs are counted on this much audio, then per second
AIMS = {"sherpa-onnx": 1.1, "NeMo": 2.0, "limit_b16": 0.6, "int8_large": 1.5}
CACHE = OUT / "inference"


# --- the audio -----------------------------------------------------------------------------------------------------


def bench_audio(manifest: Path, seconds: float) -> tuple[list[str], list[str]]:
    """Paths and references of the manifest's utterances, longest-first interleaved with shortest (several
    lengths in every batch of 16), until ``seconds`` of audio."""
    from korasr.report import read_jsonl

    rows = sorted(read_jsonl(manifest), key=lambda r: r["duration"])
    mixed = [r for pair in zip(rows, reversed(rows), strict=True) for r in pair][: len(rows)]
    picked, total = [], 0.0
    for row in mixed:
        picked.append(row)
        total += row["duration"]
        if total >= seconds:
            break
    if total < seconds:
        raise SystemExit(f"{manifest}: {total:.0f} s of audio, fewer than --seconds {seconds:.0f}")
    return [r["audio_filepath"] for r in picked], [r["text"] for r in picked]


# --- the models ---------------------------------------------------------------------------------------------------


def untrained(size: str, tokenizer_dir: Path, folder: Path, streaming: bool = False) -> Path:
    """``conf/size/SIZE.yaml``'s FastConformer-CTC over the sample tokenizer, seeded, untrained, saved as .nemo
    (cached: built once). ``streaming``: the cache-aware one (``conf/streaming.yaml`` on top, as ``korasr train
    --streaming`` composes it)."""
    path = folder / "untrained.nemo"
    if path.is_file():
        return path
    import torch
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from omegaconf import OmegaConf

    from korasr.train import BASE, CONF, STREAMING, compose

    torch.manual_seed(0)
    configs = [BASE, CONF / "size" / f"{size}.yaml", *([STREAMING] if streaming else [])]
    cfg = compose(configs, [f"model.tokenizer.dir={tokenizer_dir}"])
    for key in ("train_ds", "validation_ds", "test_ds"):
        cfg.model.pop(key, None)
    OmegaConf.set_struct(cfg, False)
    cfg.model.korasr_text_unit = "jamo"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".untrained.{os.getpid()}.nemo"
    EncDecCTCModelBPE(cfg=cfg.model).save_to(str(tmp))
    os.replace(tmp, path)
    return path


def exported(nemo_path: Path, folder: Path, parity: Path, calibration: Path, untrained: bool) -> Path:
    """``korasr export`` of ``nemo_path``, parity-gated against NeMo, with every reduced-precision graph: fp16, INT8
    dynamic, and INT8 static calibrated on ``calibration``'s first 16 utterances. An untrained graph's reduced
    precisions are compared with fp32, not gated (``export(untrained=True)``). Cached by the .nemo's size and time
    and this korasr's export code."""
    from korasr.export import export

    stamp = f"{nemo_path.resolve()}:{nemo_path.stat().st_size}:{nemo_path.stat().st_mtime_ns}:{export_code_sha()}"
    out = folder / "export"
    if (folder / "stamp").is_file() and (folder / "stamp").read_text(encoding="utf-8") == stamp and \
            (out / "model.int8-dynamic.onnx").is_file():  # fmt: skip
        return out
    export(nemo_path, out, parity_manifest=parity, int8_manifest=calibration, int8_utterances=16, force=True,
           untrained=untrained)  # fmt: skip
    (folder / "stamp").write_text(stamp, encoding="utf-8")
    return out


# --- one row, in a process of its own ------------------------------------------------------------------------------


def run_row(spec: dict) -> dict:
    """Time one system on the audio: batch 1 then batch 16 are separate rows (separate processes)."""
    waves = [read_wave(p) for p in spec["paths"]]
    batch, system = spec["batch"], spec["system"]
    if system == "korasr":
        from korasr.runtime import Recognizer

        rec = Recognizer(Path(spec["export"]), threads=spec["threads"], precision=spec["precision"])
        rec.use_decoder("greedy")  # the peers' decoder: the rows compare graphs and runtimes

        def call(group: list[np.ndarray]) -> list[str]:
            return [r.text for r in rec.transcribe_arrays(group, batch_size=len(group))]
    elif system == "sherpa-onnx":
        from peers import sherpa_offline

        sherpa = sherpa_offline(Path(spec["export"]), spec["threads"])

        def call(group: list[np.ndarray]) -> list[str]:
            streams = []
            for wave in group:
                stream = sherpa.create_stream()
                stream.accept_waveform(SAMPLE_RATE, wave)
                streams.append(stream)
            sherpa.decode_streams(streams) if len(streams) > 1 else sherpa.decode_stream(streams[0])
            return [unicodedata.normalize("NFC", s.result.text) for s in streams]
    else:
        import torch
        from peers import nemo_transcribe

        from korasr.evaluate import load_model

        torch.set_num_threads(spec["threads"])  # only NeMo's rows import torch: the others' RSS is their own
        model = load_model(Path(spec["nemo"])).cpu().eval()

        def call(group: list[np.ndarray]) -> list[str]:
            return [h.text for h in nemo_transcribe(model, group, len(group))]

    # batched, the utterances go by length, as an offline job groups them (little padding); every system alike
    order = sorted(range(len(waves)), key=lambda i: len(waves[i])) if batch > 1 else list(range(len(waves)))
    groups = [[waves[i] for i in order[k : k + batch]] for k in range(0, len(order), batch)]
    call(groups[0])  # warm-up: sessions, allocators, NeMo's dataloader
    passes = []
    for _ in range(spec["repeats"]):  # the least disturbed pass over all the audio counts
        texts, calls = [], []
        for group in groups:
            start = time.perf_counter()
            texts += call(group)
            calls.append(time.perf_counter() - start)
        passes.append((sum(calls), calls, texts))
    _, calls, got = min(passes, key=lambda p: p[0])
    texts = [""] * len(waves)
    for i, text in zip(order, got, strict=True):
        texts[i] = text
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    return {"rtfx": seconds / sum(calls), "p50_ms": pct(calls, 50), "p99_ms": pct(calls, 99), "rss_mb": peak_rss_mb(),
            "texts": texts}  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec from the parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def row(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"{spec['system']} {spec['precision']} batch {spec['batch']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the limit ---------------------------------------------------------------------------------------------------


def flops_per_audio_second(nemo_path: Path) -> tuple[float, float]:
    """The model's FLOPs per second of audio (multiply-adds × 2, matrix products, convolutions and attention, as
    torch's FlopCounterMode counts them) on one 10 s utterance, and its parameters (M)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from korasr.evaluate import load_model

    model = load_model(nemo_path).cpu().eval()
    samples = int(FLOP_SECONDS * SAMPLE_RATE)
    audio = torch.randn(1, samples) * 0.1
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.forward(input_signal=audio, input_signal_length=torch.tensor([samples]))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return counter.get_total_flops() / FLOP_SECONDS, params


def gemm_throughput(d_model: int, rows: int, threads: int, folder: Path) -> dict[str, float]:
    """FLOP/s onnxruntime reaches on these cores for the encoder's feed-forward products ([rows, d] × [d, 4d] and
    [rows, 4d] × [4d, d], ``rows`` = frames in a batch), fp32 and INT8 (the same graph through quantize_dynamic, as
    the dynamic INT8 rows run). The best of several runs: the machine's limit, not a typical call."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    layers, nodes, inits, width = 4, [], [], d_model
    for i in range(layers):
        shape = (d_model, 4 * d_model) if i % 2 == 0 else (4 * d_model, d_model)
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.02).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"x{i + 1}"], name=f"mm{i}"))
        width = shape[1]
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [None, d_model])],
                              [helper.make_tensor_value_info(f"x{layers}", TensorProto.FLOAT, [None, width])], inits)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / f"gemm-{d_model}.onnx", folder / f"gemm-{d_model}.int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    x = rng.standard_normal((rows, d_model)).astype(np.float32)
    flops = layers * 2.0 * rows * d_model * 4 * d_model
    out = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        sess.run(None, {"x0": x})
        best = best_of(lambda sess=sess: sess.run(None, {"x0": x}), 20)
        out[name] = flops / best
    return out


def profile_top(export_dir: Path, waves: list[np.ndarray], threads: int, top: int = 8) -> list[dict]:
    """onnxruntime's profiler on model.onnx over one batch of 16: the operator types taking the most time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(CACHE / "ort-profile")
    sess = ort.InferenceSession(str(export_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    group = waves[:BATCH]
    longest = max(len(w) for w in group)
    audio = np.zeros((len(group), longest), np.float32)
    for i, w in enumerate(group):
        audio[i, : len(w)] = w
    feeds = {"audio": audio, "audio_length": np.array([len(w) for w in group], np.int64)}
    sess.run(None, feeds)
    sess.run(None, feeds)
    trace = Path(sess.end_profiling())
    by_op: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + event["dur"]
    trace.unlink()
    total = sum(by_op.values()) or 1.0
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": op, "share": round(us / total, 3)} for op, us in ranked]


# --- one size ----------------------------------------------------------------------------------------------------


def agreement(export_dir: Path, other: str, waves: list[np.ndarray], threads: int) -> dict:
    """``model.<other>.onnx`` against model.onnx on a few utterances: frame-wise top-1 agreement, max |Δ log-prob|."""
    from korasr.precision import session

    ref_s, got_s = session(export_dir / "model.onnx", threads), session(export_dir / f"model.{other}.onnx", threads)
    same = frames = 0
    worst = 0.0
    for wave in waves[:8]:
        feeds = {"audio": wave[None].astype(np.float32), "audio_length": np.array([len(wave)], np.int64)}
        (ref, n), (got, _) = ref_s.run(None, feeds), got_s.run(None, feeds)
        n = int(n[0])
        same += int((ref[0, :n].argmax(-1) == got[0, :n].argmax(-1)).sum())
        frames += n
        worst = max(worst, float(np.abs(ref[0, :n] - got[0, :n]).max()))
    return {"top1_agreement": round(same / frames, 4), "max_abs_logprob_diff": round(worst, 3)}


def bench_size(size: str, args: argparse.Namespace, paths: list[str], refs: list[str], gemm: dict) -> dict:
    from omegaconf import OmegaConf

    from korasr.metrics import cer

    folder = CACHE / size
    trained = size == "tiny" and args.model is not None
    nemo_path = args.model if trained else untrained(size, args.tokenizer, folder)
    static = exported(nemo_path, folder, args.manifest, args.calibration, untrained=not trained)
    flops_s, params = flops_per_audio_second(nemo_path)
    d_model = int(OmegaConf.load(ROOT / "conf" / "size" / f"{size}.yaml").model.encoder.d_model)
    waves = [read_wave(p) for p in paths]  # read once: the limit, the agreement and the profile use them
    frames_b16 = int(BATCH * np.mean([len(w) for w in waves[:BATCH]]) / SAMPLE_RATE * 12.5)
    throughput = gemm.setdefault(d_model, gemm_throughput(d_model, frames_b16, args.threads, CACHE))
    limit = {k: v / flops_s for k, v in throughput.items()}
    print(f"\n## {size}: {params:.1f} M parameters, {'trained' if trained else 'untrained (seeded)'}; "
          f"{flops_s / 1e9:.2f} GFLOP per audio second; GEMM d={d_model}: {throughput['fp32'] / 1e9:.1f} GFLOP/s fp32, "
          f"{throughput['int8'] / 1e9:.1f} int8 → limit RTFx {limit['fp32']:.0f} fp32, {limit['int8']:.0f} int8", flush=True)  # fmt: skip

    base = {"paths": paths, "threads": args.threads, "nemo": str(nemo_path), "repeats": args.repeats}
    plan = [("korasr", p, b, str(static)) for p in ("fp32", "fp16", "int8-dynamic", "int8-static") for b in (1, BATCH)]
    plan += [("sherpa-onnx", "fp32", b, str(static)) for b in (1, BATCH)]
    plan += [("NeMo", "fp32", b, None) for b in (1, BATCH)]
    rows = []
    print(f"{'system':<12} {'precision':<13} {'batch':>5} {'RTFx':>7} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7} "
          f"{'of limit':>8}  CER / agreement")  # fmt: skip
    for system, precision, batch, export_dir in plan:
        graph = "int8" if precision == "int8-static" else precision
        spec = {**base, "system": system, "precision": graph, "batch": batch, "export": export_dir}
        r = row(spec)
        family = "int8" if precision.startswith("int8") else "fp32"
        entry = {"system": system, "precision": precision, "batch": batch, "rtfx": round(r["rtfx"], 1),
                 "p50_ms": round(r["p50_ms"], 1), "p99_ms": round(r["p99_ms"], 1), "rss_mb": round(r["rss_mb"]),
                 "of_limit": round(r["rtfx"] / limit[family], 3)}  # fmt: skip
        if trained:
            entry["cer"] = round(cer(refs, r["texts"]), 2)
        rows.append(entry)
        note = f"{entry['cer']:.2f}%" if trained else ""
        print(f"{system:<12} {precision:<13} {batch:>5} {entry['rtfx']:>7.1f} {entry['p50_ms']:>8.1f} "
              f"{entry['p99_ms']:>8.1f} {entry['rss_mb']:>7} {entry['of_limit']:>8.1%}  {note}", flush=True)  # fmt: skip
    parity = {"int8-static": agreement(static, "int8", waves, args.threads),
              "int8-dynamic": agreement(static, "int8-dynamic", waves, args.threads),
              "fp16": agreement(static, "fp16", waves, args.threads)}  # fmt: skip
    for name, p in parity.items():
        print(f"{name} vs fp32 on 8 utterances: top-1 frames agree {p['top1_agreement']:.2%}, "
              f"max |Δ log-prob| {p['max_abs_logprob_diff']}")  # fmt: skip
    result = {"size": size, "params_m": round(params, 1), "trained": trained, "audio_s": round(
        sum(len(w) for w in waves) / SAMPLE_RATE, 1), "threads": args.threads,
        "gflop_per_audio_s": round(flops_s / 1e9, 3), "gemm_gflops": {k: round(v / 1e9, 1) for k, v in throughput.items()},
        "limit_rtfx": {k: round(v, 1) for k, v in limit.items()}, "rows": rows, "parity": parity}  # fmt: skip
    result["ratios"] = ratios(rows)
    for line in result["ratios"]["lines"]:
        print(line)
    if args.profile:
        result["profile_fp32_b16"] = profile_top(static, waves[:BATCH], args.threads)
        print("onnxruntime profile, model.onnx, batch 16: " +
              ", ".join(f"{p['op']} {p['share']:.0%}" for p in result["profile_fp32_b16"]))  # fmt: skip
    return result


def ratios(rows: list[dict]) -> dict:
    def rtfx(system: str, precision: str, batch: int) -> float:
        return next(r["rtfx"] for r in rows if (r["system"], r["precision"], r["batch"]) == (system, precision, batch))

    out: dict = {"lines": []}
    for batch in (1, BATCH):
        for peer, aim in (("sherpa-onnx", AIMS["sherpa-onnx"]), ("NeMo", AIMS["NeMo"])):
            ratio = rtfx("korasr", "fp32", batch) / rtfx(peer, "fp32", batch)
            out[f"vs_{peer}_b{batch}"] = round(ratio, 2)
            aim_note = (
                f" (aim ≥ {aim}×: {'met' if ratio >= aim else f'missed by {aim - ratio:.2f}'})" if batch == 1 else ""
            )
            out["lines"].append(f"korasr fp32 vs {peer} at batch {batch}: {ratio:.2f}×{aim_note}")
    best = max((r for r in rows if r["system"] == "korasr"), key=lambda r: r["rtfx"])
    out["int8_vs_fp32_b16"] = round(max(rtfx("korasr", p, BATCH) for p in ("int8-dynamic", "int8-static"))
                                    / rtfx("korasr", "fp32", BATCH), 2)  # fmt: skip
    out["lines"].append(f"best INT8 vs fp32 at batch 16: {out['int8_vs_fp32_b16']:.2f}×; fastest korasr row: "
                        f"{best['precision']} batch {best['batch']}, RTFx {best['rtfx']} = {best['of_limit']:.0%} of its limit")  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)} (or all)")
    parser.add_argument("--model", type=Path, default=None,
                        help="the trained tiny .nemo (default: the newest exp/sample/*/*/*.nemo; untrained tiny without one)")  # fmt: skip
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests" / "sample" / "eval_clean.jsonl")
    parser.add_argument("--calibration", type=Path, default=ROOT / "manifests" / "sample" / "dev.jsonl",
                        help="static INT8 calibration manifest (its first 16 utterances)")  # fmt: skip
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "tokenizers" / "sample" / "char-jamo")
    parser.add_argument("--seconds", type=float, default=120.0, help="audio per row (≥ 100 s for the issue's table)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the audio per row; the fastest counts")
    parser.add_argument("--profile", action="store_true", help="onnxruntime's top operators, fp32 batch 16")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        result = run_row(json.loads(args.row))
        print(json.dumps(result, ensure_ascii=False))
        return 0
    sizes = SIZES if args.sizes == "all" else tuple(args.sizes.split(","))
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {', '.join(unknown)} (choose from {', '.join(SIZES)})")
    if args.model is None:
        args.model = newest("exp/sample/*/*/*.nemo")
    for needed in (args.manifest, args.calibration, args.tokenizer):
        if not needed.exists():
            raise SystemExit(f"{needed}: missing (make sample-corpus tokenizer, or pass the option)")

    paths, refs = bench_audio(args.manifest, args.seconds)
    print(f"{len(paths)} utterances, {args.seconds:.0f}+ s of audio from {args.manifest}, {args.threads} threads, "
          f"{os.cpu_count()} cores", flush=True)  # fmt: skip
    gemm: dict = {}
    for size in sizes:
        result = bench_size(size, args, paths, refs, gemm)
        result["date"] = time.strftime("%Y-%m-%d")
        write_json(OUT / f"inference-{size}.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
