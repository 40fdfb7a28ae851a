"""One GPU check (`make gpu-check`, issue 27): what korasr promises on a GPU, measured by one command that fits in
10 minutes on one H100 or H200 and prints one table (also in bench/out/gpu_check.json).

a. training: the FastConformer-L model step in bf16 (steps/s, audio seconds/s; bench/train_throughput.py's step) of
   korasr's config as `korasr train` composes it (conf/fastconformer_ctc.yaml + conf/size/large.yaml +
   recipes/kspon/train.yaml) vs NeMo's stock FastConformer-CTC-BPE config (bench/nemo_fastconformer_ctc_bpe.yaml), on
   the same random batch (--train-batch utterances of --train-seconds of noise) with the same jamo tokenizer.
b. TensorRT: FP16 and INT8 engines from the export, built by korasr.export.offline.build_tensorrt (the tensorrt Python
   package, as `korasr export` does; INT8 from a Q/DQ copy of model.onnx calibrated here on --calibration
   utterances), each against model.onnx on onnxruntime's CPU provider (greedy piece error rate; 0% = identical
   transcripts; max |Δ log-prob|) and timed, beside model.onnx on onnxruntime's CUDA provider.
c. the service: `korasr serve` with its onnxruntime sessions on CUDA, 32 clients posting 5 s WAV clips
   (bench/serve_load.py's client), batched (--max-batch 32) vs unbatched (--max-batch 1).
d. streaming: the streaming export's encoder on CUDA (front end on the CPU, as the service runs it), the most streams
   whose p99 compute per chunk stays under the chunk's duration (bench/streaming.py's search), vs all CPU cores.

Audio: utterances synthesized here by the sample corpus's code (korasr.data.sample_corpus: eSpeak NG reading the
sample sentence generator; its chirp stand-ins where eSpeak NG is missing, and the table says so). Nothing is
downloaded. Each part runs in a process of its own with a share of --budget (default 540 s; time a part leaves unused
goes to the next ones): a part that fails or runs out of time is a row saying so, and the others still run. The exit
status is 1 when a part failed or timed out.

Without a CUDA GPU it says so; then (and with --check-only) it checks that each part would start (imports, with the
command that installs what is missing; both configs compose, instantiate and take one training step on the CPU; the
export's files; the audio source), prints every check ok / missing, and exits 0. --device cpu runs the parts on the
CPU: a smoke test of this script, not GPU figures.

    python bench/gpu_check.py [--budget 540] [--export DIR] [--streaming-export DIR] [--parts a,b,c,d] [--check-only]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, encode, jamo_tokenizer, join, newest, pct, sample_sentences, write_json

BENCH = Path(__file__).resolve().parent
STOCK = BENCH / "nemo_fastconformer_ctc_bpe.yaml"  # NeMo's example config, restated (the wheel ships none)
RECIPE = ROOT / "recipes" / "kspon"  # korasr's FastConformer-L recipe
PARTS = {"a": "training", "b": "tensorrt", "c": "service", "d": "streaming"}
SHARES = {"a": 0.35, "b": 0.35, "c": 0.15, "d": 0.15}  # of the budget left when a part starts, over those still to run
MIN_PART_S = 20  # a part offered less is skipped ("no budget left")
PARITY = 8  # utterances in the TensorRT parity and timing batch (the engines' profile takes 1–16)
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
SEED = 27  # the synthesized utterances' (the sample corpus itself uses 0)


# --- checks: would each part start? ----------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    parts: tuple[str, ...] = ()  # the parts that cannot run without it

    def line(self) -> str:
        gates = f" [part {', '.join(self.parts)}]" if self.parts else ""
        fix = f"\n          → {self.fix}" if self.fix and not self.ok else ""
        return f"{'ok' if self.ok else 'missing':<8}{self.name}{gates}: {self.detail}{fix}"


def gpu_extra() -> list[str]:
    """pyproject.toml's ``gpu`` extra: the exact pins of onnxruntime-gpu and TensorRT."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["project"]["optional-dependencies"]["gpu"]


def gpu_fix() -> str:
    return ("make gpu-check GPU_DEPS=1, i.e. pip uninstall -y onnxruntime && pip install -e '.[gpu]' (" +
            ", ".join(gpu_extra()) + "; onnxruntime-gpu replaces the CPU onnxruntime: they share one module)")  # fmt: skip


def importable(module: str, load: bool = True) -> tuple[bool, str]:
    """Whether ``module`` imports (``load``; else only whether it is installed), and its version or the error."""
    import importlib
    import importlib.util

    if not load:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        return found, "installed" if found else f"No module named {module!r}"
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # an ImportError, or a broken install raising anything else
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return True, str(getattr(mod, "__version__", "importable"))


def check_torch() -> tuple[Check, Check]:
    ok, version = importable("torch")
    if not ok:
        fix = "make setup (pip install torch, then -e '.[train]')"
        return (Check("CUDA GPU", False, f"torch is not importable ({version})", fix, tuple(PARTS)),
                Check("torch with CUDA", False, version, fix, ("a", "b")))  # fmt: skip
    import torch

    gpu = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if gpu else "none visible to torch"
    base = version.split("+")[0]
    cuda = Check("torch with CUDA", torch.version.cuda is not None, f"torch {version}, CUDA {torch.version.cuda}",
                 f"pip install --force-reinstall torch=={base} (PyPI's Linux wheel is the CUDA build)", ("a", "b"))  # fmt: skip
    return Check("CUDA GPU", gpu, name, "", tuple(PARTS)), cuda


def check_imports(load: bool) -> list[Check]:
    """What each part imports; NeMo only found, not imported, when ``load`` is off (the GPU run's parent: its part
    imports it, and the import costs the budget seconds)."""
    checks = []
    ok, detail = importable("nemo.collections.asr", load)
    checks.append(
        Check("NeMo ASR", ok, f"nemo_toolkit {detail}" if ok else detail, "pip install -e '.[train]'", ("a",))
    )
    ok, detail = importable("tensorrt")
    checks.append(Check("TensorRT (Python): part b's engines", ok, detail, gpu_fix()))  # its other rows run without
    ok, detail = importable("onnxruntime.quantization")
    onnx_ok, onnx_detail = importable("onnx")
    checks.append(Check("onnx + onnxruntime.quantization (INT8 calibration)", ok and onnx_ok,
                        f"onnx {onnx_detail}" if ok and onnx_ok else (detail if not ok else onnx_detail),
                        "pip install -e '.[export]'", ("b",)))  # fmt: skip
    ok, detail = importable("onnxruntime")
    if ok:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        ok, detail = "CUDAExecutionProvider" in providers, f"onnxruntime {ort.__version__}: {', '.join(providers)}"
    checks.append(Check("onnxruntime CUDA provider", ok, detail, gpu_fix(), ("c", "d")))
    missing = [m for m in ("fastapi", "uvicorn", "httpx", "websockets", "multipart") if not importable(m)[0]]
    checks.append(Check("service (fastapi, uvicorn, httpx, websockets, python-multipart)", not missing,
                        f"missing {', '.join(missing)}" if missing else "importable", "pip install -e '.[serve]'",
                        ("c",)))  # fmt: skip
    return checks


def korasr_config(tok: Path):  # type: ignore[no-untyped-def]
    """korasr's FastConformer-L config as `korasr train --recipe recipes/kspon` composes it, without data."""
    from train_throughput import without_data

    from korasr.train import compose, recipe_configs

    return without_data(compose(recipe_configs(RECIPE), [f"model.tokenizer.dir={tok}"]))


def stock_config(tok: Path):  # type: ignore[no-untyped-def]
    """NeMo's stock FastConformer-CTC-BPE config (large), without data."""
    from train_throughput import without_data

    from korasr.train import compose

    return without_data(compose([STOCK], [f"model.tokenizer.dir={tok}"]))


def differences(a, b, prefix: str = "model") -> list[str]:  # type: ignore[no-untyped-def]
    """Keys of two configs' ``prefix`` sections whose values differ (data sections left out): 'encoder.n_layers 17 vs
    18'."""
    from omegaconf import OmegaConf

    def flat(cfg) -> dict:  # type: ignore[no-untyped-def]
        out: dict = {}

        def walk(node, path: str) -> None:  # type: ignore[no-untyped-def]
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, f"{path}.{k}" if path else str(k))
            else:
                out[path] = node

        walk(OmegaConf.to_container(OmegaConf.select(cfg, prefix), resolve=False), "")
        return {k: v for k, v in out.items() if not k.split(".")[0].endswith("_ds") and k.split(".")[0] != "tokenizer"}

    fa, fb = flat(a), flat(b)
    return [
        f"{k} {fa.get(k, '—')} vs {fb.get(k, '—')}" for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)
    ]


def check_configs(instantiate: bool) -> list[Check]:
    """Both configs compose; without a GPU, each also builds on the CPU and takes one training step (batch 1 × 1 s)."""
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            tok = jamo_tokenizer(sample_sentences(3000), Path(tmp), 256)
        except Exception as e:
            return [Check("configs (a jamo tokenizer to build them on)", False, f"{type(e).__name__}: {e}",
                          "pip install -e '.[train]'", ("a",))]  # fmt: skip
        configs = {}
        for name, build in (("korasr config (recipes/kspon, large)", korasr_config),
                            (f"NeMo stock config ({STOCK.name})", stock_config)):  # fmt: skip
            try:
                cfg = configs[name] = build(tok)
                detail = f"{cfg.model.encoder.n_layers} layers, d_model {cfg.model.encoder.d_model}"
                if instantiate:
                    from train_throughput import throughput

                    r = throughput(cfg, batch=1, seconds=1.0, steps=1, warmup=0, device="cpu")
                    detail += f", {r['parameters_m']} M parameters: built and trained one step on the CPU"
                checks.append(Check(name, True, detail, parts=("a",)))
            except Exception as e:
                checks.append(Check(name, False, f"{type(e).__name__}: {e}", "pip install -e '.[train]'", ("a",)))
            gc.collect()
        if len(configs) == 2:
            diff = differences(*configs.values())
            step = ("trainer.gradient_clip_val", "trainer.precision", "trainer.accumulate_grad_batches")
            diff += [d for d in differences(*configs.values(), "trainer") if f"trainer.{d.split()[0]}" in step]
            checks.append(Check("korasr vs NeMo stock: model keys and step settings that differ", True,
                                "; ".join(diff) + " (part a runs both in bf16 autocast)"))  # fmt: skip
    return checks


def default_export() -> Path | None:
    found = newest("exp/kspon/*/*/export/model.json") or newest("exp/sample/*/*/export/model.json")
    return found.parent if found else None


def default_streaming_export(export: Path | None) -> Path | None:
    if export and (export / "streaming" / "streaming.json").is_file():
        return export
    found = newest("exp/*/*streaming*/*/export/streaming/streaming.json")
    return found.parent.parent if found else None


def check_export(export: Path | None) -> Check:
    name, fix = "export (model.json, model.onnx, tokens.txt)", "make train && make export, or --export DIR"
    if export is None:
        return Check(name, False, "no export under exp/", fix, ("b", "c"))
    missing = [f for f in ("model.json", "model.onnx", "tokens.txt") if not (export / f).is_file()]
    if missing:
        return Check(name, False, f"{export}: missing {', '.join(missing)}", fix, ("b", "c"))
    try:
        info = json.loads((export / "model.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return Check(name, False, f"{export / 'model.json'}: {e}", fix, ("b", "c"))
    if info.get("format") != "korasr-export/1":
        return Check(name, False, f"{export}: model.json is not a korasr export's", fix, ("b", "c"))
    size = (export / "model.onnx").stat().st_size / 2**20
    fp16 = "model.fp16.onnx present" if (export / "model.fp16.onnx").is_file() else "model.fp16.onnx made at run time"
    return Check(name, True, f"{export}: model.onnx {size:.1f} MB, {info.get('vocab_size')} outputs; {fp16}",
                 parts=("b", "c"))  # fmt: skip


def check_streaming_export(export: Path | None) -> Check:
    name = "streaming export (streaming/streaming.json, encoder.onnx, frontend.onnx)"
    fix = "make train STREAMING=1 && make export, or --streaming-export DIR"
    if export is None:
        return Check(name, False, "no streaming export under exp/", fix, ("d",))
    missing = [
        f for f in ("streaming.json", "encoder.onnx", "frontend.onnx") if not (export / "streaming" / f).is_file()
    ]
    if missing:
        return Check(name, False, f"{export}/streaming: missing {', '.join(missing)}", fix, ("d",))
    return Check(name, True, str(export), parts=("d",))


def check_audio() -> Check:
    """The synthesized utterances' source: eSpeak NG, else the sample corpus's chirps (gates nothing)."""
    from korasr.data import tts

    try:
        detail = f"eSpeak NG {tts.version()} ({tts.backend()}): the sample corpus's speech"
        return Check("audio (the sample corpus's synthesis)", True, detail)
    except Exception as e:
        return Check("audio (the sample corpus's synthesis)", False,
                     f"{e.__class__.__name__}: the sample corpus's chirp stand-ins will be used (not speech: parity "
                     "and INT8 calibration on them mean less)", tts.INSTALL_HINT)  # fmt: skip


def check_cuda_session(export: Path) -> Check:
    """With a GPU: model.onnx opens on onnxruntime's CUDA provider (a provider listed may still fail to load its CUDA
    and cuDNN libraries, and onnxruntime then falls back to the CPU)."""
    try:
        model_session(export / "model.onnx", "cuda")
    except Exception as e:
        return Check("model.onnx on onnxruntime's CUDA provider", False, f"{type(e).__name__}: {e}", gpu_fix(),
                     ("c", "d"))  # fmt: skip
    return Check("model.onnx on onnxruntime's CUDA provider", True, "a session opens on CUDA", parts=("c", "d"))


def preflight(args: argparse.Namespace, gpu_checks: tuple[Check, Check], instantiate: bool) -> list[Check]:
    """Every check, in order; with --device cpu (a smoke test) the GPU's own checks gate nothing."""
    checks = [*gpu_checks, *check_imports(load=instantiate)]
    if args.device == "cpu":
        for check in checks:
            if check.name in ("CUDA GPU", "torch with CUDA", "onnxruntime CUDA provider"):
                check.parts = ()
    if "a" in args.parts:
        checks += check_configs(instantiate)
    export = check_export(args.export)
    checks += [export, check_streaming_export(args.streaming_export), check_audio()]
    provider = next(c for c in checks if c.name == "onnxruntime CUDA provider")
    if gpu_checks[0].ok and export.ok and provider.ok:
        checks.append(check_cuda_session(args.export))
    return checks


# --- the audio every part shares -------------------------------------------------------------------------------


def synthesize(count: int, jobs: int) -> tuple[list, str]:
    """``count`` utterances of the sample corpus's generator (train-split sentences, its voices and prosody, seed
    SEED), rendered by its own code: float32 waves at 16 kHz and a description of their source."""
    import multiprocessing

    import numpy as np

    from korasr.data import sample_corpus, tts

    try:
        synth, engine = "espeak", f"eSpeak NG {tts.version()}"
    except tts.EspeakUnavailable:
        synth, engine = "tone", "chirp stand-ins (no eSpeak NG: not speech)"
    options = sample_corpus.SampleOptions(utterances=max(20, 2 * count), seed=SEED, synth=synth)
    chosen = [u for u in sample_corpus.plan(options) if u.split == "train" and u.spoken][:count]
    with multiprocessing.get_context("fork").Pool(max(1, jobs)) as pool:
        pcm = pool.starmap(sample_corpus.render, [(u, SEED, synth) for u in chosen])
    waves = [np.frombuffer(b[: len(b) // 2 * 2], "<i2").astype(np.float32) / 32768 for b in pcm]
    seconds = sum(len(w) for w in waves) / 16000
    return waves, f"{len(waves)} sample-corpus utterances ({engine}, seed {SEED}), {seconds:.0f} s"


def load_waves(work: Path) -> list:
    import numpy as np

    with np.load(work / "audio.npz") as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


# --- the parts, each in a process of its own -------------------------------------------------------------------


@dataclass
class Row:
    part: str
    what: str
    measured: str = ""
    compared: str = ""
    ratio: str = ""
    status: str = "ok"
    data: dict = field(default_factory=dict)


class Rows:
    """A part's rows, written to WORK/<part>.json as each one is done, so that a part killed at its deadline keeps
    what it finished."""

    def __init__(self, work: Path, part: str):
        self.path, self.rows = work / f"{part}.json", []

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.save()

    def save(self) -> None:
        write_json(self.path, [asdict(r) for r in self.rows])


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def part_training(setup: dict, rows: Rows) -> None:
    import torch
    from train_throughput import throughput

    work = Path(setup["work"])
    tok = jamo_tokenizer(sample_sentences(20000), work, 1024)  # the kspon recipe's vocabulary size
    shape = dict(batch=setup["train_batch"], seconds=setup["train_seconds"], steps=setup["train_steps"],
                 warmup=setup["train_warmup"], device=setup["device"])  # fmt: skip
    results = {}
    for name, build in (("korasr", korasr_config), ("nemo", stock_config)):
        try:
            results[name] = throughput(build(tok), **shape)
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def said(r: dict) -> str:
        if "error" in r:
            return f"failed: {r['error']}"
        peak = f", peak {r['peak_memory_gb']} GB" if r["peak_memory_gb"] is not None else ""
        return (f"{r['steps_per_second']:.2f} steps/s, {fmt(r['audio_seconds_per_second'], 0)} audio s/s, "
                f"{r['parameters_m']} M parameters{peak}")  # fmt: skip

    ours, stock = results["korasr"], results["nemo"]
    both = "error" not in ours and "error" not in stock
    precision = "bf16" if shape["device"] == "cuda" else "fp32 on the CPU"
    rows.add(Row("a. training", f"FastConformer-L, {precision}, one random batch of {shape['batch']} × "
                 f"{shape['seconds']:g} s, {shape['steps']} steps after {shape['warmup']}: korasr's config (recipes/kspon, 17 layers)",
                 said(ours), f"NeMo's stock FastConformer-CTC-BPE (18 layers): {said(stock)}",
                 f"{ours['steps_per_second'] / stock['steps_per_second']:.2f}×" if both else "",
                 "ok" if both else "failed", {"korasr": ours, "nemo_stock": stock, **shape}))  # fmt: skip


def ort_ms(path: Path, feeds: dict, device: str, repeats: int = 10) -> float:
    """Median milliseconds of one onnxruntime run of ``path`` on ``feeds`` (after one warm-up run), on CUDA or on
    every CPU core."""
    import numpy as np

    made = model_session(path, device)
    made.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        made.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def model_session(path: Path, device: str, threads: int | None = None):  # type: ignore[no-untyped-def]
    """An onnxruntime session of ``path`` on ``device``: on CUDA or an error (onnxruntime would fall back to the CPU
    with a warning), or on the CPU (--device cpu)."""
    import onnxruntime as ort

    from korasr.runtime.onnx import session

    if device == "cpu":
        return session(path, threads)
    with contextlib.suppress(Exception):  # onnxruntime-gpu ≥ 1.21: CUDA and cuDNN from the nvidia-* wheels torch uses
        ort.preload_dlls()
    made = session(path, threads, CUDA)
    if made.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"{path}: onnxruntime did not put it on CUDA (providers {made.get_providers()})")
    return made


def part_tensorrt(setup: dict, rows: Rows) -> None:
    from korasr.export.offline import build_tensorrt
    from korasr.precision import quantize_int8, to_float16
    from korasr.runtime.onnx import pad_batch

    export, work = Path(setup["export"]), Path(setup["work"])
    waves = load_waves(work)
    parity, calibration = waves[:PARITY], waves[PARITY:]
    audio, lengths = pad_batch(parity)
    feeds = {"audio": audio, "audio_length": lengths}
    audio_s = float(lengths.sum()) / 16000
    batch = f"{len(parity)} utterances, {audio_s:.1f} s"
    cpu = ort_ms(export / "model.onnx", feeds, "cpu")
    reference, on = cpu, "CPU"
    if setup["device"] == "cuda":
        try:
            reference, on = ort_ms(export / "model.onnx", feeds, "cuda"), "CUDA"
        except Exception as e:
            print(f"model.onnx on onnxruntime CUDA: {e}; the engines are compared with the CPU", file=sys.stderr)
    rows.add(Row("b. TensorRT", f"model.onnx (fp32) on onnxruntime, one batch of {batch}",
                 f"{fmt(reference, 2)} ms per batch on {on} (RTFx {fmt(audio_s * 1000 / reference, 0)})",
                 f"onnxruntime CPU ({os.cpu_count()} cores): {fmt(cpu, 2)} ms", f"{cpu / reference:.1f}×",
                 data={"ms": reference, "provider": on, "cpu_ms": cpu, "audio_seconds": audio_s}))  # fmt: skip
    for precision in ("fp16", "int8"):
        folder = work / f"trt_{precision}"  # model.onnx (build_tensorrt's reference) and the one graph to compile
        folder.mkdir(exist_ok=True)
        (folder / "model.onnx").symlink_to(export / "model.onnx")
        graph, note = folder / f"model.{precision}.onnx", ""
        try:
            if precision == "int8":
                started = time.perf_counter()
                info = quantize_int8(export / "model.onnx", graph, calibration)
                note = (f", Q/DQ calibrated on {info['calibration_utterances']} utterances "
                        f"({info['calibration_seconds']} s) in {time.perf_counter() - started:.0f} s")  # fmt: skip
            elif (export / graph.name).is_file():
                graph.symlink_to(export / graph.name)
            else:
                to_float16(export / "model.onnx", graph)
                note = ", model.fp16.onnx made here"
            report = build_tensorrt(folder, feeds)
            if not report.get("built"):  # no TensorRT or no CUDA: build_tensorrt says which
                rows.add(Row("b. TensorRT", f"{precision.upper()} engine{note}", status=f"failed: {report['reason']}"))
                continue
            r = report[f"model.{precision}.plan"]
        except Exception as e:
            traceback.print_exc()
            rows.add(Row("b. TensorRT", f"{precision.upper()} engine{note}", status=f"failed: {type(e).__name__}: {e}"))
            continue
        rows.add(Row("b. TensorRT", f"{precision.upper()} engine (TensorRT {report['tensorrt']}, from "
                     f"model.{precision}.onnx{note}), built in {r['build_seconds']} s",
                     f"{r['ms_per_batch']} ms per batch (RTFx {fmt(audio_s * 1000 / r['ms_per_batch'], 0)}); vs "
                     f"model.onnx on onnxruntime CPU: greedy pieces {r['piece_error_rate_vs_fp32']:.2f}% off, max "
                     f"|Δ log-prob| {r['max_abs_logprob_diff']:.3f}",
                     f"model.onnx on onnxruntime {on}: {fmt(reference, 2)} ms",
                     f"{reference / r['ms_per_batch']:.1f}×", data={**r, "tensorrt": report["tensorrt"]}))  # fmt: skip


def serve_on(device: str) -> None:
    """`korasr serve` with every onnxruntime session of the runtime on ``device`` (the service has no device option):
    what part c's launcher runs in the server's process."""
    import korasr.runtime.offline
    import korasr.runtime.streaming
    from korasr.cli import main

    def on_device(path, threads=None, providers=None):  # type: ignore[no-untyped-def]
        return model_session(Path(path), device, threads)

    korasr.runtime.offline.session = korasr.runtime.streaming.session = on_device
    sys.exit(main(sys.argv[1:]))


def part_service(setup: dict, rows: Rows) -> None:
    from common import Server
    from serve_load import load

    export, work, clients, requests = Path(setup["export"]), Path(setup["work"]), 32, setup["requests"]
    body = encode(join(load_waves(work)[:10], 0.3)[: 5 * 16000], 16000, "WAV", subtype="PCM_16")
    device = setup["device"]
    launcher = [
        "-c",
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); import gpu_check; gpu_check.serve_on({device!r})",
    ]
    results = {}
    for label, options in (("unbatched", ["--max-batch", "1"]),
                           ("batched", ["--max-batch", "32", "--batch-seconds", "160", "--max-wait-ms", "5"])):  # fmt: skip
        log = work / f"serve_{label}.log"
        server = Server(export, "--queue-size", "256", "--max-waiting", "256", *options, launcher=launcher, log=log)
        try:
            try:
                server.ready()
            except RuntimeError as e:
                raise RuntimeError(f"{label} server: {e}: {last_line(log)}") from e
            asyncio.run(load(server.http, body, clients, 64))  # warm-up
            results[label] = asyncio.run(load(server.http, body, clients, requests))
        finally:
            server.stop()

    def said(r: dict) -> str:
        return (f"{fmt(r['rps'])} req/s (RTFx {fmt(r['rps'] * 5, 0)}), p50 / p99 {fmt(r['p50'], 0)} / "
                f"{fmt(r['p99'], 0)} ms, {r['errors']} errors")  # fmt: skip

    batched, unbatched = results["batched"], results["unbatched"]
    rows.add(Row("c. service", f"korasr serve, sessions on {device.upper()}, {clients} clients × {requests} requests "
                 "of a 5 s WAV: batched (--max-batch 32)", said(batched), f"unbatched (--max-batch 1): {said(unbatched)}",
                 f"{batched['rps'] / unbatched['rps']:.2f}×",
                 "ok" if not batched["errors"] + unbatched["errors"] else "errors", results))  # fmt: skip


def part_streaming(setup: dict, rows: Rows) -> None:
    from streaming import korasr_concurrent, sustained

    from korasr.runtime.streaming import StreamingModel

    export, work, limit = Path(setup["streaming_export"]), Path(setup["work"]), setup["max_streams"]
    wave = join(load_waves(work)[:20], 0.3)
    found: dict = {}
    row = Row("d. streaming", "")
    devices = ("cuda", "cpu") if setup["device"] == "cuda" else ("cpu",)
    for device in devices:
        model = StreamingModel(export, threads=os.cpu_count(), decoder="greedy")  # speed: the graph, not the decoder
        if device == "cuda":
            model.encoder = model_session(model.dir / "encoder.onnx", "cuda")
        passed = {"best": 0}

        def measure(n: int) -> list[float]:
            if time.monotonic() > setup["deadline"] - (30 if device != devices[-1] else 0):  # noqa: B023
                raise TimeoutError
            times = korasr_concurrent(model, wave, n)  # noqa: B023
            if pct(times, 99) / 1000 < model.chunk_seconds:  # noqa: B023
                passed["best"] = max(passed["best"], n)  # noqa: B023
            return times

        try:
            best, table = sustained(measure, model.chunk_seconds, limit=limit)
            streams = f"{best} streams" + (f" (the search's limit, --max-streams {limit})" if best >= limit else "")
        except TimeoutError:  # the part's share of the budget ran out: what the search had found so far
            best, table = passed["best"], {}
            streams = f"≥ {best} streams (the search stopped at the part's time limit)"
        found[device] = {"streams": best, "complete": bool(table), "p99_s_by_streams": table}
        print(f"{device}: {streams} (p99 step seconds by streams: {table})", flush=True)
        if device == devices[0]:
            chunk = model.chunk_seconds * 1000
            row.what = (f"streams stepped in real time (p99 compute per {chunk:.0f} ms chunk below {chunk:.0f} ms; "
                        f"look-ahead {model.lookahead_ms} ms): encoder on {device.upper()}, front end on the CPU")  # fmt: skip
            row.measured = streams
            row.data = found
            rows.add(row)  # kept if the CPU's search fails
        else:
            row.compared = f"all {os.cpu_count()} CPU cores: {streams}"
            row.ratio = f"{found[devices[0]]['streams'] / max(best, 1):.1f}×"
            rows.save()


PART_RUNNERS = {"a": part_training, "b": part_tensorrt, "c": part_service, "d": part_streaming}


def run_part(part: str, work: Path, seconds: float) -> int:
    """The child process: one part, its rows in WORK/<part>.json; ``seconds`` until the parent stops it."""
    setup = json.loads((work / "setup.json").read_text(encoding="utf-8"))
    setup["deadline"] = time.monotonic() + seconds - 5
    sys.path.insert(0, str(ROOT))
    try:
        PART_RUNNERS[part](setup, Rows(work, PARTS[part]))
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    return lines[-1].strip()[:300] if lines else "no output"


def launch(part: str, work: Path, timeout: float) -> list[dict]:
    """Run one part in a process group of its own (the service's server included) within ``timeout`` seconds; its
    rows, and one more saying why when it failed or ran out of time."""
    log = work / f"{part}.log"
    started = time.perf_counter()
    with open(log, "wb") as out:
        command = [sys.executable, __file__, "--run-part", part, "--work", str(work), "--budget", str(timeout)]
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    path = work / f"{PARTS[part]}.json"
    rows = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    elapsed = time.perf_counter() - started
    label = f"{part}. {PARTS[part]}"
    if code is None:
        rows.append(asdict(Row(label, "(the rest of the part)", status=f"timed out after {elapsed:.0f} s (its share "
                               f"of --budget); last output: {last_line(log)}")))  # fmt: skip
    elif code != 0:
        rows.append(asdict(Row(label, "(the rest of the part)", status=f"failed: {last_line(log)} (log: {log})")))
    print(f"part {label}: {'timed out' if code is None else 'done' if code == 0 else 'failed'} in {elapsed:.0f} s",
          flush=True)  # fmt: skip
    return rows


# --- the whole check -------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| part | what | measured | compared with | ratio | status |", "|---|---|---|---|---:|---|"]
    lines += [f"| {' | '.join(cell(r[k]) for k in ('part', 'what', 'measured', 'compared', 'ratio', 'status'))} |"
              for r in rows]  # fmt: skip
    return "\n".join(lines)


def run_parts(args: argparse.Namespace, checks: list[Check], deadline: float) -> list[dict]:
    work = args.out / "gpu_check"
    work.mkdir(parents=True, exist_ok=True)
    for old in work.iterdir():  # a previous run's rows, logs and graphs
        if old.is_file() or old.is_symlink():
            old.unlink()
        else:
            import shutil

            shutil.rmtree(old)
    setup = {"work": str(work), "export": str(args.export), "streaming_export": str(args.streaming_export),
             "train_batch": args.train_batch, "train_seconds": args.train_seconds, "train_steps": args.train_steps,
             "train_warmup": args.train_warmup, "requests": args.requests, "max_streams": args.max_streams,
             "device": args.device}  # fmt: skip
    blocked = {p: [c.name for c in checks if not c.ok and p in c.parts] for p in args.parts}
    if any(p in args.parts and not blocked[p] for p in "bcd"):
        import numpy as np

        waves, source = synthesize(PARITY + args.calibration, os.cpu_count() or 1)
        np.savez(work / "audio.npz", *waves)
        setup["audio"] = source
        print(f"audio: {source}", flush=True)
    write_json(work / "setup.json", setup)
    rows: list[dict] = []
    todo = list(args.parts)
    while todo:
        part = todo.pop(0)
        label = f"{part}. {PARTS[part]}"
        left = deadline - time.monotonic()
        share = left * SHARES[part] / (SHARES[part] + sum(SHARES[p] for p in todo))
        if blocked[part]:
            rows.append(asdict(Row(label, "", status=f"skipped: missing {'; '.join(blocked[part])}")))
        elif share < MIN_PART_S:
            rows.append(asdict(Row(label, "", status=f"skipped: no budget left ({left:.0f} s of --budget)")))
        else:
            print(f"part {label}: up to {share:.0f} s", flush=True)
            rows += launch(part, work, share)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole check (default 540)")
    parser.add_argument("--parts", default="a,b,c,d", help="a training, b TensorRT, c service, d streaming")
    parser.add_argument(
        "--export", type=Path, default=None, help="default: the newest exp/kspon, else exp/sample export"
    )
    parser.add_argument("--streaming-export", type=Path, default=None,
                        help="default: --export when it has streaming/, else the newest exp/*/*streaming*/*/export")  # fmt: skip
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-seconds", type=float, default=16.0, help="each training utterance's duration")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-warmup", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=300, help="utterances the INT8 graph is calibrated on")
    parser.add_argument("--requests", type=int, default=1000, help="service requests per server (after 64 warm-up)")
    parser.add_argument("--max-streams", type=int, default=4096, help="the streaming search's upper limit")
    parser.add_argument("--check-only", action="store_true", help="only check that each part would start")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a smoke test of the parts themselves on the CPU (no GPU figures)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT, help="gpu_check.json here, logs in OUT/gpu_check/")
    parser.add_argument("--run-part", choices=sorted(PART_RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_part:
        return run_part(args.run_part, args.work, args.budget)
    deadline = time.monotonic() + args.budget
    args.parts = [p for p in args.parts.replace(" ", "").split(",") if p]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {', '.join(f'{k} ({v})' for k, v in PARTS.items())}")
    args.export = args.export.resolve() if args.export else default_export()
    if args.streaming_export:
        args.streaming_export = args.streaming_export.resolve()
    else:
        args.streaming_export = default_streaming_export(args.export)
    print(f"gpu_check: parts {', '.join(f'{p} ({PARTS[p]})' for p in args.parts)}; budget {args.budget:.0f} s; "
          f"export {args.export}; streaming export {args.streaming_export}", flush=True)  # fmt: skip
    gpu, torch_cuda = check_torch()
    run = not args.check_only and (args.device == "cpu" or (gpu.ok and torch_cuda.ok))
    if args.device == "cpu":
        print("gpu_check --device cpu: a smoke test of the parts on the CPU, no GPU figures", flush=True)
    elif not gpu.ok:
        print("gpu_check: no CUDA GPU here: the GPU parts do not run; checking that each would start", flush=True)
    checks = preflight(args, (gpu, torch_cuda), instantiate=not run)
    for check in checks:
        print(check.line(), flush=True)
    missing = [c for c in checks if not c.ok]
    result: dict = {"gpu": gpu.detail if gpu.ok else None, "device": args.device, "budget_s": args.budget,
                    "parts": args.parts,
                    "export": str(args.export), "streaming_export": str(args.streaming_export),
                    "checks": [asdict(c) for c in checks]}  # fmt: skip
    if not run:
        gated = sorted({p for c in missing if c.name != "CUDA GPU" for p in c.parts})
        print(f"\n{len(checks) - len(missing)} checks ok, {len(missing)} missing. With what is missing, a GPU machine "
              f"would skip parts: {', '.join(gated) or 'none'}.", flush=True)  # fmt: skip
        write_json(args.out / "gpu_check.json", {**result, "rows": []})
        return 0
    rows = run_parts(args, checks, deadline)
    result.update(rows=rows, seconds=round(args.budget - (deadline - time.monotonic()), 1))
    from korasr.provenance import git_commit

    result["git_commit"] = git_commit()
    write_json(args.out / "gpu_check.json", result)
    machine = gpu.detail if args.device == "cuda" else "CPU smoke test (--device cpu), not GPU figures"
    print(f"\n{machine}, {time.strftime('%Y-%m-%d %H:%M')}, {result['seconds']:.0f} s of --budget "
          f"{args.budget:.0f}:\n", flush=True)  # fmt: skip
    print(table(rows))
    failed = [r for r in rows if r["status"].startswith(("failed", "timed out"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
