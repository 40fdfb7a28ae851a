"""The ``korasr`` command: argument parsing only; every subcommand calls into the library."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

from korasr import __version__

log = logging.getLogger("korasr")
MIN_CHUNK_SECONDS = 4.0  # korasr.runtime.MIN_CHUNK_SECONDS, which checks it too (not imported: the CLI starts light)


def bounded(kind: type, low: float | None = None, high: float | None = None):  # type: ignore[no-untyped-def]
    """An argparse type: ``kind`` (int or float) within ``[low, high]``, finite, or a clear usage error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"from {low:g}" if high is None else f"{low:g} to {high:g}" if low is not None else f"up to {high:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({span})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or not all(math.isfinite(v) and abs(v) <= 100 for v in values):
        raise argparse.ArgumentTypeError(f"need finite numbers within ±100: {text!r}")
    return values


def _add_decoder(p: argparse.ArgumentParser, repeatable: bool = False) -> None:
    p.add_argument("--decoder", choices=("greedy", "greedy-hangul", "beam", "nemo-beam") if repeatable else
                   ("greedy", "greedy-hangul", "beam"), action="append" if repeatable else "store", default=None,
                   help="greedy CTC; greedy-hangul, greedy's best path restricted to whole Hangul syllables (a "
                   "jamo model then writes no orphan jamo); or beam search with --lm and --hotwords (default: "
                   + ("greedy-hangul for a jamo model, else greedy; repeatable: one report row per decoder; "
                      "nemo-beam: NeMo's own beam_batch on a .nemo)" if repeatable else
                      "beam when the export bundles an LM, else greedy-hangul for a jamo model, else greedy; "
                      "--streaming: greedy-hangul finals unless greedy)"))  # fmt: skip
    p.add_argument("--lm", default=None, help="an LM directory (korasr lm build); default: the export's bundled LM")
    p.add_argument("--hotwords", default=None, metavar="FILE", help="one phrase per line, optionally TAB boost")
    p.add_argument("--beam", type=bounded(int, 1, 256), default=None, help="beam size (default: the LM's tuned, or 8)")
    p.add_argument("--alpha", type=bounded(float, 0, 100), default=None, help="LM weight (default: the LM's tuned)")
    p.add_argument("--beta", type=bounded(float, -100, 100), default=None, help="bonus per piece (default: tuned)")


def _add_force(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true",
                   help=f"replace --out whole even when it is not {what} folder korasr wrote (default: refuse a "
                   "folder holding anything else, naming what it holds)")  # fmt: skip


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("fp32", "fp16", "int8", "int8-dynamic"), default="fp32",
                   help="which graph of the export runs: model.onnx, model.fp16.onnx, model.int8.onnx (static Q/DQ, "
                   "TensorRT's) or model.int8-dynamic.onnx (the fast one on CPUs)")  # fmt: skip


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-cer",
        type=float,
        default=None,
        metavar="X",
        help="exit 1 when the CER (no spaces) of any split exceeds X percent",
    )
    p.add_argument(
        "--results",
        default=None,
        metavar="RESULTS_MD",
        help="add this evaluation's rows (replacing the same model and split) to a recipe's RESULTS.md",
    )


def _add_text_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--form",
        choices=("spelling", "phonetic"),
        default="spelling",
        help="which side of (spelling)/(pronunciation) pairs to keep (default: spelling)",
    )
    p.add_argument(
        "--disfluency",
        choices=("df", "dt", "fl"),
        default="df",
        help="df: keep fillers/repeats without markers; dt: keep markers; fl: drop them (default: df)",
    )
    p.add_argument(
        "--unk",
        metavar="SYMBOL",
        default=None,
        help="write the unintelligible-word tag u/ as SYMBOL (e.g. [unk]) instead of deleting it",
    )


def _normalize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("normalize", help="normalize raw KsponSpeech transcripts: stdin → stdout, line by line")
    _add_text_options(p)
    p.set_defaults(func=_normalize)


def _normalize(args: argparse.Namespace) -> int:
    from korasr.text.normalize import normalize

    malformed = 0
    out = sys.stdout
    for number, line in enumerate(sys.stdin, start=1):
        result = normalize(line.rstrip("\r\n"), args.form, args.disfluency, args.unk)
        if result.error:
            malformed += 1
            print(f"line {number}: {result.error}", file=sys.stderr)
        out.write(result.text + "\n")
    if malformed:
        print(f"{malformed} malformed line(s) written as empty lines", file=sys.stderr)
    return 0


def _prepare_parser(sub: argparse._SubParsersAction) -> None:
    prepare = sub.add_parser("prepare", help="raw corpus → NeMo JSONL manifests")
    corpora = prepare.add_subparsers(dest="corpus", required=True)
    p = corpora.add_parser("kspon", help="KsponSpeech (the four .trn scripts and raw PCM)")
    p.add_argument("--root", required=True, help="the KsponSpeech folder (read only)")
    p.add_argument("--out", default="manifests/kspon", help="manifest folder (default: manifests/kspon)")
    p.add_argument("--audio-dir", default="data/kspon/audio", help="converted audio (default: data/kspon/audio)")
    p.add_argument(
        "--audio-format",
        choices=("wav", "flac"),
        default="wav",
        help="wav: header + the PCM bytes, copy speed (default); flac: ~40%% less disk, 2-3x slower",
    )
    p.add_argument("--jobs", type=bounded(int, 1, 1024), default=os.cpu_count() or 1,
                   help="worker processes (default: all cores)")  # fmt: skip
    p.add_argument("--min-duration", type=bounded(float, 0), default=0.0, metavar="S",
                   help="reject train utterances < S s")  # fmt: skip
    p.add_argument("--max-duration", type=bounded(float, 0), default=None, metavar="S",
                   help="reject train utterances > S s")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_text_options(p)
    p.set_defaults(func=_prepare_kspon)

    p = corpora.add_parser("noise", help="a folder of noise audio (or MUSAN) → the lhotse manifest noise_path takes")
    p.add_argument("--root", required=True, help="a folder of audio files (any depth), or MUSAN's music/noise/speech")
    p.add_argument("--out", required=True, help="output folder: noise_cuts.jsonl.gz, rejects.jsonl, noise.json")
    p.set_defaults(func=_prepare_noise)


def _prepare_kspon(args: argparse.Namespace) -> int:
    from korasr.data.kspon import PrepareOptions, prepare_kspon

    options = PrepareOptions(
        form=args.form,
        disfluency=args.disfluency,
        unk=args.unk,
        audio_format=args.audio_format,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
    )
    result = prepare_kspon(
        args.root, args.out, audio_dir=args.audio_dir, options=options, jobs=args.jobs, progress=not args.quiet
    )
    print(result.out_dir)
    return 0


def _prepare_noise(args: argparse.Namespace) -> int:
    from korasr.data.noise import prepare_noise

    print(prepare_noise(args.root, args.out).manifest)
    return 0


def _tokenizer_parser(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenizer", help="build tokenizers; report their CTC feasibility")
    tok_sub = tok.add_subparsers(dest="action", required=True)
    p = tok_sub.add_parser("build", help="train a tokenizer directory on a train manifest")
    p.add_argument("--manifest", required=True, help="the train manifest (JSONL); other splits are refused")
    p.add_argument("--unit", choices=("jamo", "syllable", "char-jamo", "char-syllable"), default="jamo")
    p.add_argument(
        "--type", choices=("unigram", "bpe"), default="unigram", help="SentencePiece model (default: unigram)"
    )
    p.add_argument("--vocab", type=int, default=1024, help="vocabulary size for jamo/syllable units (default: 1024)")
    p.add_argument("--character-coverage", type=float, default=1.0, help="SentencePiece character coverage")
    p.add_argument(
        "--out", default=None, help="default: tokenizers/<recipe>/<unit>_<type>_v<vocab> (char units: <unit>)"
    )
    _add_force(p, "a tokenizer")
    p.set_defaults(func=_tokenizer_build)
    p = tok_sub.add_parser("report", help="tokens per second and CTC-infeasible utterances per manifest")
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory written by `korasr tokenizer build`")
    p.add_argument("--manifest", required=True, action="append", help="a manifest (repeat for several splits)")
    p.add_argument("--subsampling", type=int, default=8, help="encoder subsampling factor (default: 8)")
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.set_defaults(func=_tokenizer_report)


def _tokenizer_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from korasr.tokenizer.build import TokenizerOptions, build_tokenizer
    from korasr.tokenizer.report import format_report

    options = TokenizerOptions(
        unit=args.unit, type=args.type, vocab=args.vocab, character_coverage=args.character_coverage
    )
    out = build_tokenizer(args.manifest, args.out, options, force=args.force)
    report = json.loads((Path(out) / "report.json").read_text(encoding="utf-8"))
    for sub in report.values():
        print(format_report(sub), file=sys.stderr)
    print(out)
    return 0


def _tokenizer_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    import sentencepiece as spm
    import yaml

    from korasr.tokenizer.report import feasibility_report, format_report

    directory = Path(args.tokenizer)
    meta = directory / "tokenizer.yaml"
    if not meta.is_file():
        raise FileNotFoundError(f"{directory}: not a korasr tokenizer directory (no tokenizer.yaml)")
    unit = yaml.safe_load(meta.read_text(encoding="utf-8"))["unit"]
    processor = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    report = feasibility_report(processor, unit, [Path(m) for m in args.manifest], subsampling=args.subsampling)
    print(format_report(report))
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a FastConformer-CTC (stock NeMo) from a recipe's train.yaml")
    p.add_argument("--recipe", required=True, help="a recipe folder (its train.yaml) or a train.yaml")
    p.add_argument(
        "--size",
        choices=("large", "medium", "small", "tiny"),
        default=None,
        help="model size (default: the recipe's korasr.size)",
    )
    p.add_argument("--config", action="append", default=[], help="more YAML merged after the recipe (repeatable)")
    p.add_argument("--streaming", action="store_true",
                   help="the cache-aware streaming variant (conf/streaming.yaml, then the recipe's streaming.yaml)")  # fmt: skip
    p.add_argument(
        "--evaluate",
        action="append",
        default=[],
        metavar="MANIFEST",
        help="after training, score the final model on MANIFEST (repeatable; in the same process)",
    )
    p.add_argument("--results", default=None, metavar="RESULTS_MD", help="add the evaluation's rows to RESULTS_MD")
    p.add_argument("--drop-infeasible", action="store_true",
                   help="train without the utterances CTC cannot emit at the subsampling (counted), instead of "
                   "refusing when they are over korasr.max_infeasible (0.5%%)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true",
                   help="compose, check inputs and CTC feasibility, print the resolved config; no training")  # fmt: skip
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from a NeMo ASR checkpoint (a .nemo; a release folder; models:/NAME@ALIAS; a NeMo "
                   "pretrained name where a hub is reachable): its front end and encoder, a CTC head over the "
                   "recipe's tokenizer (kept when the tokenizer is the same)")  # fmt: skip
    p.add_argument(
        "--keep-tokenizer",
        action="store_true",
        help="with --init: train with the checkpoint's own tokenizer and CTC head (CTC or hybrid)",
    )
    p.add_argument(
        "--freeze-encoder-steps",
        type=bounded(int, 0, 10**7),
        default=0,
        metavar="N",
        help="the encoder's weights stay fixed for the first N steps (the new head learns first)",
    )
    p.add_argument("overrides", nargs="*",
                   help="dotted overrides, anywhere on the line: model.optim.lr=1e-3 trainer.devices=8 ...")  # fmt: skip
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from korasr.train import compose, dry_run, recipe_configs, train

    configs = recipe_configs(args.recipe, args.size, args.streaming) + list(args.config)
    overrides = [*args.overrides, *(["korasr.drop_infeasible=true"] if args.drop_infeasible else [])]
    if args.init:
        from korasr import registry

        init = registry.resolve(args.init, "nemo") if registry.is_ref(args.init) else args.init
        overrides.append(f"korasr.init={init}")
        if args.keep_tokenizer:
            overrides.append("korasr.keep_tokenizer=true")
    elif args.keep_tokenizer:
        raise SystemExit("--keep-tokenizer needs --init")
    if args.freeze_encoder_steps:
        overrides.append(f"korasr.freeze_encoder_steps={args.freeze_encoder_steps}")
    if args.dry_run:
        print(dry_run(compose(configs, overrides)))
        return 0
    model = train(compose(configs, overrides))
    if model is None:  # a DDP rank other than 0: rank 0 evaluates and prints the model
        return 0
    if args.evaluate:
        from korasr.evaluate import evaluate
        from korasr.report import format_table

        report = evaluate(model, args.evaluate, results_md=args.results, progress=True)
        print(format_table(report), file=sys.stderr)
        print(
            f"report: {model.parent / 'eval' / 'report.md'}"
            + (f"; rows added to {args.results}" if args.results else ""),
            file=sys.stderr,
        )
        from korasr.train import log_evaluation

        log_evaluation(model, model.parent / "eval", report)
    print(model)
    return 0


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="transcribe manifests with a model; CER, CER+space, WER, sWER, jamo slots; report + chart"
    )
    p.add_argument("--model", required=True, help="a .nemo (korasr train) or an export folder (korasr export)")
    p.add_argument("--manifest", required=True, action="append", help="a manifest to score (repeatable)")
    p.add_argument("--out", default=None, help="output folder (default: eval/ beside the model)")
    p.add_argument("--batch-size", type=bounded(int, 1, 1024), default=32)
    _add_report_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_precision(p)
    _add_decoder(p, repeatable=True)
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from korasr.evaluate import GREEDY, Decoding, GateFailed, evaluate
    from korasr.report import format_table

    decodings = []  # none named: the model's own (greedy-hangul for a jamo model, else greedy)
    for d in args.decoder or []:
        beam = d not in GREEDY
        lm, hotwords = (args.lm, args.hotwords) if beam else (None, None)
        decodings.append(Decoding(d, lm, hotwords, args.beam, args.alpha, args.beta))
    if (args.lm or args.hotwords) and all(d.decoder in GREEDY for d in decodings):
        raise ValueError("--lm and --hotwords need a beam decoder: add --decoder beam")
    try:
        report = evaluate(
            args.model,
            args.manifest,
            args.out,
            batch_size=args.batch_size,
            max_cer=args.max_cer,
            results_md=args.results,
            progress=not args.quiet,
            precision=args.precision,
            decodings=decodings or None,
        )
    except GateFailed as e:
        print(f"korasr evaluate: gate failed: {e}", file=sys.stderr)
        return 1
    print(format_table(report))
    return 0


def _score_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="recompute the evaluation report from <split>.hyp.jsonl files (no model)")
    p.add_argument("hyps", nargs="+", help="hypothesis files (utt_id, ref, hyp per line); split = name before .hyp")
    p.add_argument("--out", default=None, help="output folder (default: the first file's folder)")
    p.add_argument("--model", default=None, help="the model that made them (recorded in the report)")
    p.add_argument("--manifest", default=None, help="a manifest of the references (its prepare.json: normalization)")
    p.add_argument("--decoder", default=None, help="the decoder that made them (recorded in the report)")
    _add_report_options(p)
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from korasr.evaluate import GateFailed, gate, score_files
    from korasr.report import format_table, normalization_of

    files = {Path(p).name.removesuffix(".jsonl").removesuffix(".hyp"): Path(p) for p in args.hyps}
    if len(files) != len(args.hyps):
        raise ValueError(f"two hypothesis files share a split name: {args.hyps}")
    normalization = normalization_of(args.manifest) if args.manifest else None
    out = args.out or Path(args.hyps[0]).parent
    report = score_files(files, out, model=args.model, normalization=normalization, results_md=args.results,
                         decoder=args.decoder)  # fmt: skip
    print(format_table(report))
    try:
        gate(report, args.max_cer)
    except GateFailed as e:
        print(f"korasr score: gate failed: {e}", file=sys.stderr)
        return 1
    return 0


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a .nemo → ONNX (waveform in, and NeMo's features in), tokens, model.json")
    p.add_argument("--model", required=True, help="a .nemo written by `korasr train`")
    p.add_argument("--out", default=None, help="export folder (default: export/ beside the model)")
    p.add_argument(
        "--parity-manifest", default=None, help="utterances for the NeMo parity check (default: synthetic audio)"
    )
    p.add_argument(
        "--int8-calibration", default=None, metavar="MANIFEST",
        help="also write model.int8.onnx (Q/DQ INT8) calibrated on this manifest's utterances (e.g. dev.jsonl)",
    )  # fmt: skip
    p.add_argument("--int8-utterances", type=int, default=64, help="calibration utterances (the manifest's first)")
    _add_triton_options(p)
    p.add_argument("--lookahead", type=int, default=None, metavar="MS",
                   help="streaming models: the look-ahead streaming/ runs at (one trained; default: the first)")  # fmt: skip
    p.add_argument("--lm", default=None, metavar="DIR",
                   help="bundle this LM directory (korasr lm build/tune) as lm/: beam search with it by default")  # fmt: skip
    _add_force(p, "an export")
    p.set_defaults(func=_export)


def _add_triton_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--triton-device", choices=("cpu", "gpu"), default="cpu", help="Triton instance group kind")
    p.add_argument("--triton-backend", choices=("onnxruntime", "python"), default="onnxruntime",
                   help="the CTC step's Triton backend: onnxruntime (a GPU node's), or python (the same graph through "
                   "onnxruntime inside Triton's python backend: a CPU node's, and what make triton's server runs)")  # fmt: skip
    p.add_argument("--triton-instances", type=int, default=1, metavar="N", help="CTC model instances (1-64)")
    p.add_argument("--triton-keep-versions", type=int, default=1, metavar="N",
                   help="versions of each model Triton keeps loaded, the newest N (1-16)")  # fmt: skip
    p.add_argument("--triton-stream-idle", type=float, default=60.0, metavar="SECONDS",
                   help="streaming models: a sequence that sends nothing this long is released (0-3600]")  # fmt: skip


def _triton_repository_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("triton-repository", help="(re)write an export's Triton model repository with other options")
    p.add_argument("--model", required=True, help="an export folder (korasr export)")
    p.add_argument("--out", default=None, help="the repository (default: triton/ inside the export)")
    _add_triton_options(p)
    p.add_argument("--max-batch", type=int, default=16, help="Triton's max_batch_size (1-1024)")
    _add_force(p, "a Triton repository")
    p.set_defaults(func=_triton_repository)


def _triton_repository(args: argparse.Namespace) -> int:
    from pathlib import Path

    from korasr.triton import validate, write_repository

    if not (Path(args.model) / "model.json").is_file():
        raise FileNotFoundError(f"{args.model}: not an export folder (no model.json)")
    out = write_repository(args.model, args.out, device=args.triton_device, backend=args.triton_backend,
                           instances=args.triton_instances, keep_versions=args.triton_keep_versions,
                           max_batch=args.max_batch, stream_idle_seconds=args.triton_stream_idle,
                           force=args.force)  # fmt: skip
    validate(out)
    print(out)
    return 0


def _export(args: argparse.Namespace) -> int:
    from korasr.export import export

    print(
        export(
            args.model,
            args.out,
            parity_manifest=args.parity_manifest,
            int8_manifest=args.int8_calibration,
            int8_utterances=args.int8_utterances,
            triton_device=args.triton_device,
            triton_backend=args.triton_backend,
            triton_instances=args.triton_instances,
            triton_keep_versions=args.triton_keep_versions,
            triton_stream_idle=args.triton_stream_idle,
            lm=args.lm,
            lookahead_ms=args.lookahead,
            force=args.force,
        )
    )
    return 0


def _transcribe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files with an export folder (onnxruntime only)")
    p.add_argument("--model", required=True, help="an export folder (model.onnx, tokens.txt, model.json)")
    p.add_argument("audio", nargs="*", help="audio files, any sample rate and channel count")
    p.add_argument("--manifest", default=None, metavar="IN",
                   help="an archive on Ray Data instead: a NeMo manifest, a list of paths, a folder or a glob, local "
                   "or by URI (s3://, gs://, file://); needs --out")  # fmt: skip
    p.add_argument("--out", default=None, metavar="DIR",
                   help="with --manifest: sharded results, summary.json; a killed run started again resumes")  # fmt: skip
    p.add_argument(
        "--format", choices=("jsonl", "parquet"), default="jsonl", help="with --manifest: the shards' format"
    )
    p.add_argument("--shard-size", type=bounded(int, 1, 1_000_000), default=1000,
                   help="with --manifest: files per output shard (default: 1000)")  # fmt: skip
    p.add_argument("--actors", type=bounded(int, 1, 100_000), default=None,
                   help="with --manifest: actors, each one runtime session (default: CPUs ÷ --threads, or GPUs)")  # fmt: skip
    p.add_argument("--gpus-per-actor", type=bounded(float, 0, 64), default=0.0,
                   help="with --manifest: GPUs per actor (CUDA onnxruntime); 0: CPU actors")  # fmt: skip
    p.add_argument("--address", default=None,
                   help="with --manifest: an existing Ray cluster (default: RAY_ADDRESS, else a local Ray started "
                   "and stopped)")  # fmt: skip
    p.add_argument("--max-audio-seconds", type=bounded(float, 1, 24 * 3600), default=4 * 3600.0,
                   help="with --manifest: longer files get an error row (default: 4 h)")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="with --manifest: --out holds another run's shards: start over (removes only those)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument("--timestamps", action="store_true", help="word start/end times (implies --json)")
    p.add_argument("--streaming", action="store_true",
                   help="decode as a live stream with the export's streaming/ graphs (a --streaming model): "
                   "chunk by chunk, utterances cut by endpointing")  # fmt: skip
    p.add_argument("--realtime", action="store_true",
                   help="with --streaming: feed the file at real-time speed, show partials as they change")  # fmt: skip
    p.add_argument("--endpoint-silence", type=bounded(float, 0.1, 60), default=0.8, metavar="SECONDS",
                   help="with --streaming: trailing silence that ends an utterance (default 0.8)")  # fmt: skip
    p.add_argument("--batch-size", type=bounded(int, 1, 1024), default=16)
    p.add_argument("--chunk-seconds", type=bounded(float, MIN_CHUNK_SECONDS, 3600), default=30.0,
                   help="longer files are decoded in chunks of at most this many seconds (default: 30)")  # fmt: skip
    p.add_argument("--threads", type=bounded(int, 1, 256), default=None,
                   help="onnxruntime intra-op threads (with --manifest: per actor, default 1)")  # fmt: skip
    _add_precision(p)
    _add_decoder(p)
    p.set_defaults(func=_transcribe)


def _transcribe(args: argparse.Namespace) -> int:
    from korasr.evaluate import Decoding, use_decoding, with_bundled_lm
    from korasr.runtime import Recognizer

    if args.manifest or args.out:
        return _transcribe_archive(args)
    if not args.audio:
        raise ValueError("name audio files, or an archive with --manifest IN --out DIR")
    if args.streaming or args.realtime:
        return _transcribe_streaming(args)

    recognizer = Recognizer(args.model, threads=args.threads, precision=args.precision)
    decoder = args.decoder or ("beam" if args.lm or args.hotwords else recognizer.default_decoder)
    decoding = with_bundled_lm(Decoding(decoder, args.lm, args.hotwords, args.beam, args.alpha, args.beta), recognizer)
    use_decoding(recognizer, decoding)
    results = recognizer.transcribe(
        args.audio, batch_size=args.batch_size, timestamps=args.timestamps, chunk_seconds=args.chunk_seconds
    )
    for path, result in zip(args.audio, results, strict=True):
        if args.json or args.timestamps:
            print(json.dumps({"audio": str(path), **result.as_dict()}, ensure_ascii=False))
        else:
            print(result.text)
    return 0


def _transcribe_archive(args: argparse.Namespace) -> int:
    """``--manifest IN --out DIR``: an archive on Ray Data (korasr.archive)."""
    from pathlib import Path

    from korasr.archive import ArchiveOptions, Settings, transcribe_archive
    from korasr.evaluate import Decoding, with_bundled_lm
    from korasr.runtime import Recognizer

    if not (args.manifest and args.out) or args.audio or args.streaming or args.realtime:
        raise ValueError("--manifest IN and --out DIR go together, without audio files or --streaming")
    recognizer = Recognizer(args.model, precision=args.precision)  # checks the export and the graph before Ray starts
    decoder = args.decoder or ("beam" if args.lm or args.hotwords else recognizer.default_decoder)
    decoding = with_bundled_lm(Decoding(decoder, args.lm, args.hotwords, args.beam, args.alpha, args.beta), recognizer)
    lm_info = decoding.lm_info()
    lm = Path(decoding.lm) if decoding.lm else None
    bundled = lm is not None and recognizer.bundled_lm is not None and lm.resolve() == recognizer.bundled_lm.resolve()
    hotword_lines = None
    if decoding.hotwords:
        from korasr.runtime.beam import hotword_file_lines

        hotword_lines = tuple(hotword_file_lines(decoding.hotwords))
        recognizer.hotwords(list(hotword_lines), decoding.hotwords)  # unencodable phrases fail here, named
    settings = Settings(precision=args.precision, threads=args.threads or 1, gpu=args.gpus_per_actor > 0,
                        decoder=decoder, lm=None if lm is None else ("lm" if bundled else "_lm"),
                        beam_options=decoding.options(lm_info) if decoder == "beam" else None,
                        hotword_lines=hotword_lines, batch_size=args.batch_size, chunk_seconds=args.chunk_seconds,
                        timestamps=args.timestamps, max_audio_seconds=args.max_audio_seconds)  # fmt: skip
    label = f"{Path(args.model).resolve().name}@{recognizer.info.get('source_sha256', '')[:12]}"
    if getattr(args, "model_ref", None):  # models:/NAME@ALIAS: the version it named when the run started
        from korasr import registry

        version = registry.resolve_version(args.model_ref)
        label = f"models:/{version.name}/{version.version}"
    options = ArchiveOptions(
        source=args.manifest, out=Path(args.out), model=Path(args.model), model_label=label,
        decoder_label=decoding.label(lm_info), settings=settings, lm=None if bundled else lm, fmt=args.format,
        shard_size=args.shard_size, actors=args.actors, gpus_per_actor=args.gpus_per_actor, address=args.address,
        force=args.force, progress=sys.stderr.isatty() or bool(os.environ.get("KORASR_PROGRESS")),
    )  # fmt: skip
    del recognizer
    summary = transcribe_archive(options)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 1 if summary["failed"] and summary["failed"] == summary["files"] else 0


def _transcribe_streaming(args: argparse.Namespace) -> int:
    """Each file through a live stream (korasr.runtime.streaming), in 100 ms pieces; ``--realtime`` paces them at
    the audio's speed and shows the partial text as it changes (stderr), each final as a line."""
    import time

    import soundfile as sf

    from korasr.runtime.streaming import Endpoint, StreamingModel

    if args.decoder == "beam" or args.lm or args.hotwords:
        raise ValueError("--streaming decodes with greedy or greedy-hangul (beam search and hotwords are for whole "
                         "files)")  # fmt: skip
    model = StreamingModel(args.model, threads=args.threads, decoder=args.decoder or "greedy-hangul")
    endpoint = Endpoint(silence_after_speech=args.endpoint_silence)
    for path in args.audio:
        info = sf.info(path)
        stream = model.stream(info.samplerate, endpoint)
        piece = max(1, info.samplerate // 10)
        started, fed = time.monotonic(), 0
        for block in sf.blocks(path, blocksize=piece, dtype="float32", always_2d=True):
            if args.realtime:
                time.sleep(max(0.0, started + fed / info.samplerate - time.monotonic()))
            stream.accept(block)
            fed += len(block)
            model.run([stream])
            if args.realtime:
                _show(stream.pop_events())
        stream.finish()
        model.run([stream])
        if args.realtime:
            _show(stream.pop_events())
        if args.json or args.timestamps:
            print(json.dumps({"audio": str(path), "text": stream.text(), "lookahead_ms": model.lookahead_ms,
                              "segments": [s.as_dict() for s in stream.segments]}, ensure_ascii=False))  # fmt: skip
        elif not args.realtime:
            print(stream.text())
    return 0


def _show(events) -> None:  # type: ignore[no-untyped-def]
    for event in events:
        if event.type == "partial":
            print(f"\r\033[K… {event.text}", end="", file=sys.stderr, flush=True)
        else:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            print(f"[{event.start:7.2f} – {event.end:7.2f}] {event.text}", flush=True)


def _lm_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="token n-gram LMs for beam search: build (KenLM), tune alpha/beta on dev, overlap")
    lm_sub = p.add_subparsers(dest="action", required=True)
    q = lm_sub.add_parser("build", help="an LM directory (ARPA, KenLM binary, lm.json) over a tokenizer's pieces")
    q.add_argument("--tokenizer", required=True, help="a tokenizer directory (korasr tokenizer build)")
    q.add_argument("--out", required=True, help="the LM directory to write")
    q.add_argument("--manifest", action="append", default=None,
                   help="train manifest(s) whose text trains the LM (default: the tokenizer's own train manifest)")  # fmt: skip
    q.add_argument("--text", action="append", default=None,
                   help="extra text, one normalized sentence per line (repeatable)")  # fmt: skip
    q.add_argument("--order", type=bounded(int, 2, 10), default=6, help="n-gram order (default: 6)")
    _add_force(q, "an LM")
    q.set_defaults(func=_lm_build)
    q = lm_sub.add_parser("tune", help="grid-search alpha and beta on a dev manifest; records them in the LM")
    q.add_argument("--model", required=True, help="an export folder or a .nemo")
    q.add_argument("--lm", required=True, help="the LM directory (korasr lm build)")
    q.add_argument("--manifest", required=True, help="a dev manifest (eval manifests are refused)")
    q.add_argument("--alphas", type=_floats, default="0.2,0.3,0.5,0.7,1.0,1.5,2.0", help="comma-separated")
    q.add_argument("--betas", type=_floats, default="0,0.5,1,2,3", help="comma-separated")
    q.add_argument("--beam", type=bounded(int, 1, 256), default=8)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_lm_tune)
    q = lm_sub.add_parser("overlap", help="how much of each manifest's text the LM has read (token n-grams)")
    q.add_argument("--lm", required=True, help="the LM directory (korasr lm build)")
    q.add_argument("--manifest", action="append", required=True, help="a manifest to measure (repeatable)")
    q.add_argument("--order", type=bounded(int, 1, 10), action="append", default=None,
                   help="n-gram order (repeatable; default: 3 and the LM's own order)")  # fmt: skip
    q.set_defaults(func=_lm_overlap)


def _lm_overlap(args: argparse.Namespace) -> int:
    from korasr.lm import read_lm
    from korasr.lm.overlap import text_overlap

    orders = tuple(args.order or sorted({3, int(read_lm(args.lm).meta["order"])}))
    report = text_overlap(args.lm, args.manifest, orders)
    print(f"| manifest | utts | sentences in LM text | {' | '.join(f'{n}-gram overlap' for n in orders)} |")
    print(f"|---|---:|---:|{'---:|' * len(orders)}")
    for path, r in report.items():
        cells = " | ".join(f"{r[f'{n}-gram overlap']:.2f}%" for n in orders)
        print(f"| {path} | {r['utterances']} | {r['sentences_in_lm_text']:.2f}% | {cells} |")
    return 0


def _lm_build(args: argparse.Namespace) -> int:
    from korasr.lm.build import build_lm

    print(build_lm(args.tokenizer, args.out, manifests=args.manifest, texts=args.text, order=args.order,
                   force=args.force))  # fmt: skip
    return 0


def _lm_tune(args: argparse.Namespace) -> int:
    from korasr.lm.tune import tune

    result = tune(args.model, args.lm, args.manifest, alphas=args.alphas, betas=args.betas, beam=args.beam,
                  progress=not args.quiet)  # fmt: skip
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the FastAPI transcription service over an export folder")
    p.set_defaults(func=_serve)


def serve_dest(setting) -> str:  # type: ignore[no-untyped-def]
    # --model's dest: serve resolves its own models:/ reference (kept for following, and from the local cache during
    # an outage), not main's _resolve_model_ref
    return "serve_model" if setting.name == "model" else setting.flag[2:].replace("-", "_")


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """`korasr serve`'s flags, from the settings schema (korasr/serve/config.py): help, type, bounds, default and the
    variable each. Added only when serve runs (the schema imports the service), or for build_parser()'s callers."""
    from korasr.serve.config import check_flag, flag_settings, number

    for s in flag_settings():
        shown = s.flag_default if not isinstance(s.flag_default, float) else number(s.flag_default)
        notes = [f"default: {shown}"] * (s.flag_default not in (None, False, ())) + [s.span(), s.env]
        options: dict = {"dest": serve_dest(s), "help": f"{s.help} ({'; '.join(n for n in notes if n)})",
                         "metavar": s.metavar}  # fmt: skip
        if s.kind is bool:
            options.update(action="store_true", default=False)
            del options["metavar"]
        elif s.repeatable:
            options.update(action="append", default=[])
        elif s.choices:
            options.update(choices=s.choices, default=s.flag_default, metavar=None)
        else:
            options.update(default=s.flag_default, required=s.required)
            if s.kind is not str:
                options["type"] = _checked(s, check_flag)
        p.add_argument(s.flag, **options)


def _checked(setting, check):  # type: ignore[no-untyped-def]
    """An argparse type: the flag's text checked by the schema, or a usage error with the reason."""

    def parse(text: str) -> object:
        try:
            return check(setting, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = setting.kind.__name__  # argparse names the type in its messages
    return parse


def serve_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """serve's parsed flags as the schema's two parts, each field in its own unit: (ServeConfig, Listen); --model
    models:/NAME@ALIAS resolved to its local copy (kept as model_ref), a release folder to its export."""
    from pathlib import Path

    from korasr import registry
    from korasr.release import is_release, model_path
    from korasr.serve.config import Listen, ServeConfig, flag_settings

    values = {s.name: s.to_field(getattr(args, serve_dest(s))) for s in flag_settings()}
    model, model_ref = values.pop("model"), None
    if values["follow_s"] and not registry.is_ref(model):
        raise ValueError(f"--follow needs --model models:/NAME@ALIAS, not {model!r}")
    if registry.is_ref(model):  # a registry outage: the version it last named here, from the cache (with a warning)
        model_ref, model = model, registry.resolve(model, offline_ok=True)
    elif is_release(model):
        model = model_path(model, "export")
    values["job_sources"] = tuple(s if s.startswith(("http://", "https://")) else str(Path(s).resolve())
                                  for s in values["job_sources"])  # fmt: skip
    listen = Listen(**{name: values.pop(name) for name in ("host", "port", "workers")})
    return ServeConfig(model=Path(model), model_ref=model_ref, **values), listen


def _serve(args: argparse.Namespace) -> int:
    from korasr.serve import serve

    config, listen = serve_settings(args)
    if not (config.model / "model.json").is_file():
        raise FileNotFoundError(f"{config.model}: not a korasr export directory (run `make export`)")
    serve(config, host=listen.host, port=listen.port, workers=listen.workers)
    return 0


def _release_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="a trained run as a folder a model hub serves (model card, checksums); --check")
    p.add_argument("run", nargs="?", help="a training run folder (its .nemo, export/ and eval/), or its .nemo")
    p.add_argument("--out", help="the release folder to write")
    p.add_argument("--name", default=None, help="the model's name (default: korasr-<recipe>-<run>)")
    p.add_argument("--license", default="other", help="the card's license id (default: other; set yours)")
    p.add_argument("--lm", default=None, metavar="LM_DIR", help="bundle this token LM (make lm)")
    p.add_argument("--export", default=None, metavar="DIR", help="the run's export folder (default: RUN/export)")
    p.add_argument("--eval", default=None, metavar="DIR", help="the evaluation to report (default: RUN/eval)")
    p.add_argument("--force", action="store_true", help="replace --out whole even when it is not a release folder")
    p.add_argument("--check", metavar="DIR", default=None, help="verify a release folder's checksums instead")
    p.set_defaults(func=_release)


def _release(args: argparse.Namespace) -> int:
    from korasr.release import check, release

    if args.check:
        counts = check(args.check)
        print(f"{args.check}: {counts['files']} files, {counts['bytes']:,} bytes, every checksum matches")
        return 0
    if not args.run or not args.out:
        raise ValueError("korasr release RUN --out DIR (or --check DIR)")
    print(release(args.run, args.out, name=args.name, license=args.license, lm=args.lm, export=args.export,
                  evaluation=args.eval, force=args.force))  # fmt: skip
    return 0


def _sample_corpus_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample-corpus", help="write the synthetic sample corpus in KsponSpeech's layout")
    p.add_argument("out", help="output folder (the corpus root)")
    p.add_argument(
        "--utterances", type=int, default=2500, help="train utterances (default: 2500, about 2.5 h of speech)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--synth",
        choices=("espeak", "tone"),
        default="espeak",
        help="espeak: eSpeak NG Korean speech (default); tone: fast non-speech stand-in for tests",
    )
    p.add_argument("--variety", choices=("wide", "narrow"), default="wide",
                   help="voices and prosody of train/dev/eval_clean: wide (12 voices, 150-230 wpm; default) or narrow "
                   "(3 voices, 165-180 wpm: learns in 300 steps, hears no other voice)")  # fmt: skip
    p.add_argument("--text", choices=("open", "templates"), default="open",
                   help="open: the open-vocabulary lexicon (korasr/data/lexicon/ko.tsv) and the templates (default); "
                   "templates: the templates' few hundred words alone")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sample_corpus)


def _sample_corpus(args: argparse.Namespace) -> int:
    from korasr.data.sample_corpus import SampleOptions, make_sample_corpus

    options = SampleOptions(
        utterances=args.utterances, seed=args.seed, synth=args.synth, variety=args.variety, text=args.text
    )
    print(make_sample_corpus(args.out, options, jobs=args.jobs, progress=not args.quiet))
    return 0


def _sample_noise_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample-noise", help="write the sample recipe's noise set (babble, coloured noise, hum, tones)")
    p.add_argument("out", help="output folder")
    p.add_argument("--files-per-kind", type=bounded(int, 1, 1000), default=8)
    p.add_argument("--seconds", type=bounded(float, 1, 600), default=10.0, help="length of each file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth", choices=("espeak", "tone"), default="espeak",
                   help="tone: chords instead of eSpeak babble (quick tests)")  # fmt: skip
    p.set_defaults(func=_sample_noise)


def _sample_noise(args: argparse.Namespace) -> int:
    from korasr.data.noise import make_sample_noise

    print(make_sample_noise(args.out, files_per_kind=args.files_per_kind, seconds=args.seconds, seed=args.seed,
                            synth=args.synth))  # fmt: skip
    return 0


def _registry_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="the MLflow model registry: register exports, list, show, promote, rollback")
    r = p.add_subparsers(dest="action", required=True)
    q = r.add_parser("register", help="an export folder becomes a new version (metrics, lineage, parity); @candidate")
    q.add_argument("--export", required=True, help="an export folder (korasr export)")
    q.add_argument("--name", required=True, help="the registered model (e.g. korasr-sample)")
    q.add_argument("--report", default=None, help="its evaluation report.json (default: eval/ beside its .nemo)")
    q.add_argument("--parent", type=bounded(int, 1), default=None, help="the version it was fine-tuned from")
    q.add_argument("--alias", default="candidate", help="alias to set on it (default: candidate; '' for none)")
    q.add_argument("--scored-on", action="append", default=[], metavar="MANIFEST",
                   help="manifests the report scored, hashed into the lineage (repeatable)")  # fmt: skip
    q.set_defaults(func=_registry)
    q = r.add_parser("list", help="the versions of a registered model with their aliases and CER per split")
    q.add_argument("--name", required=True)
    q.set_defaults(func=_registry)
    q = r.add_parser("show", help="one version as JSON: metrics, normalization, lineage, parity")
    q.add_argument("--name", required=True)
    q.add_argument("--version", type=bounded(int, 1), default=None)
    q.add_argument("--alias", default=None, help="instead of --version (default: production)")
    q.set_defaults(func=_registry)
    q = r.add_parser("promote", help="move an alias (default production) to a version (default: @candidate's)")
    q.add_argument("--name", required=True)
    q.add_argument("--version", type=bounded(int, 1), default=None)
    q.add_argument("--alias", default="production")
    q.set_defaults(func=_registry)
    q = r.add_parser("rollback", help="move production back to the version it pointed at before")
    q.add_argument("--name", required=True)
    q.set_defaults(func=_registry)


def _registry(args: argparse.Namespace) -> int:
    from korasr import registry

    if args.action == "register":
        v = registry.register(args.export, args.name, report=args.report, parent=args.parent,
                              alias=args.alias or None, scored_on=args.scored_on)  # fmt: skip
    elif args.action == "list":
        print(registry.format_versions(registry.list_versions(args.name), registry.history(args.name)))
        return 0
    elif args.action == "show":
        alias = args.alias or (None if args.version else "production")
        v = registry.show(args.name, version=args.version, alias=alias)
    elif args.action == "promote":
        v = registry.promote(args.name, args.version, args.alias)
    else:
        v = registry.rollback(args.name)
    print(json.dumps(v.as_dict(), ensure_ascii=False, indent=2))
    return 0


def _retrain_parser(sub: argparse._SubParsersAction) -> None:
    from korasr.retrain import STAGES

    p = sub.add_parser("retrain", help="new data → fine-tune from production → evaluate both → gate → export → "
                       "register (→ promote) → notify; resumable")  # fmt: skip
    p.add_argument("--name", required=True, help="the registered model (e.g. korasr-sample)")
    p.add_argument("--recipe", required=True, help="the recipe folder (its train.yaml, then retrain.yaml)")
    p.add_argument("--new-data", required=True, help="a KsponSpeech-layout folder or a NeMo manifest")
    p.add_argument("--eval", action="append", required=True, metavar="MANIFEST",
                   help="a fixed evaluation split the gate scores (repeatable)")  # fmt: skip
    p.add_argument("--replay", action="append", default=[], metavar="MANIFEST",
                   help="earlier training data mixed into the fine-tuning (repeatable)")  # fmt: skip
    p.add_argument("--replay-ratio", type=bounded(float, 0, 100), default=1.0,
                   help="replayed utterances per new utterance (default 1)")  # fmt: skip
    p.add_argument("--holdout", type=bounded(float, 0, 0.9), default=0.1, help="share of the new data held out")
    p.add_argument("--max-cer", action="append", type=_cer_bound, default=None, metavar="[SPLIT=]CER",
                   help="absolute CER bound: every split (default 5), or SPLIT=CER for one (repeatable)")  # fmt: skip
    p.add_argument("--tolerance-rel", type=bounded(float, 0, 1000), default=10.0,
                   help="allowed regression vs production, percent of its CER (default 10)")  # fmt: skip
    p.add_argument("--tolerance-abs", type=bounded(float, 0, 100), default=0.5,
                   help="allowed regression vs production, CER points (default 0.5; the larger of the two applies)")  # fmt: skip
    p.add_argument("--promote", action="store_true", help="move production to the new version when the gate passes")
    p.add_argument("--webhook", default=os.environ.get("KORASR_WEBHOOK"),
                   help="POST the gate's table here (Slack-compatible JSON; default $KORASR_WEBHOOK)")  # fmt: skip
    p.add_argument("--work", default="exp/retrain", help="where each increment's stages are kept")
    p.add_argument("--form", choices=("spelling", "phonetic"), default="spelling", help="the recipe's text form")
    p.add_argument("--disfluency", choices=("df", "dt", "fl"), default="df")
    p.add_argument("--parity-manifest", default=None, help="export's parity check (default: the recipe's dev)")
    p.add_argument("--redo", choices=STAGES, default=None, help="run again from this stage")
    p.add_argument("--until", choices=STAGES, default=None, help="stop after this stage")
    p.add_argument(
        "overrides", nargs="*", help="korasr train overrides (trainer.max_steps=..., model.tokenizer.dir=...)"
    )
    p.set_defaults(func=_retrain)


def _cer_bound(text: str) -> tuple[str, float]:
    split, _, value = text.rpartition("=")
    return split or "*", bounded(float, 0.01, 100)(value)


def _retrain(args: argparse.Namespace) -> int:
    from korasr.retrain import GATE_REJECTED_EXIT, GateRejected, RetrainOptions, retrain

    options = RetrainOptions(
        name=args.name, recipe=args.recipe, new_data=args.new_data, eval_manifests=args.eval, replay=args.replay,
        replay_ratio=args.replay_ratio, holdout=args.holdout, max_cer={"*": 5.0, **dict(args.max_cer or [])},
        tolerance_rel=args.tolerance_rel,
        tolerance_abs=args.tolerance_abs, promote=args.promote, webhook=args.webhook, work=args.work, form=args.form,
        disfluency=args.disfluency, parity_manifest=args.parity_manifest, overrides=args.overrides,
    )  # fmt: skip
    try:
        state = retrain(options, redo=args.redo, until=args.until)
    except GateRejected as e:
        print(f"korasr retrain: {e}", file=sys.stderr)
        return GATE_REJECTED_EXIT
    stages = state["stages"]
    if "gate" in stages:
        print(stages["gate"]["table"], file=sys.stderr)
    print(json.dumps({k: stages[k] for k in ("ingest", "register", "promote") if k in stages}, ensure_ascii=False))
    return 0


def _shard_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="manifests ↔ lhotse Shar shards (FLAC audio, cuts, transcripts) for many nodes")
    shard = p.add_subparsers(dest="shard_command", required=True)
    q = shard.add_parser("pack", help="manifests → shards of a set size with an index (counts, seconds per shard)")
    q.add_argument("manifests", nargs="+", help="NeMo manifests, in order (ids unique across them)")
    q.add_argument("--out", required=True, help="shard folder: index.json and shar/ (cuts.*.jsonl.gz, recording.*.tar)")
    q.add_argument("--shard-size", type=bounded(int, 1, 100_000), default=1000, metavar="N",
                   help="utterances per shard (default: 1000)")  # fmt: skip
    q.add_argument("--world-size", type=bounded(int, 1, 65_536), default=None, metavar="N",
                   help="refuse a shard count that N ranks (devices × nodes) cannot split into whole shards evenly")  # fmt: skip
    q.add_argument("--jobs", type=bounded(int, 1, 1024), default=os.cpu_count() or 1,
                   help="worker processes (default: all cores)")  # fmt: skip
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_force(q, "a shard")
    q.set_defaults(func=_shard_pack)
    q = shard.add_parser("check", help="verify a shard folder against its index (and a world size)")
    q.add_argument("folder", help="a shard folder (korasr shard pack)")
    q.add_argument("--world-size", type=bounded(int, 1, 65_536), default=None, metavar="N",
                   help="also check that N ranks split the shards evenly")  # fmt: skip
    q.set_defaults(func=_shard_check)
    q = shard.add_parser("unpack", help="shards → a manifest and 16-bit WAV files (the same rows and samples)")
    q.add_argument("folder", help="a shard folder (korasr shard pack)")
    q.add_argument("--out", required=True, help="output folder: <name>.jsonl and audio/")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_force(q, "an unpacked shard")
    q.set_defaults(func=_shard_unpack)


def _shard_pack(args: argparse.Namespace) -> int:
    from korasr.data.shar import pack_shards

    result = pack_shards(args.manifests, args.out, shard_size=args.shard_size, world_size=args.world_size,
                         jobs=args.jobs, force=args.force, progress=not args.quiet)  # fmt: skip
    print(result.out)
    return 0


def _shard_check(args: argparse.Namespace) -> int:
    from korasr.data.shar import check_shards

    index = check_shards(args.folder, world_size=args.world_size)
    print(json.dumps({k: index[k] for k in ("name", "utterances", "shards", "hours")}, ensure_ascii=False))
    return 0


def _shard_unpack(args: argparse.Namespace) -> int:
    from korasr.data.shar import unpack_shards

    result = unpack_shards(args.folder, args.out, force=args.force, progress=not args.quiet)
    print(result.out / f"{result.index['name']}.jsonl")
    return 0


# the subcommands in the order `korasr --help` lists them
SUBCOMMANDS = (
    _normalize_parser,
    _prepare_parser,
    _tokenizer_parser,
    _shard_parser,
    _train_parser,
    _evaluate_parser,
    _score_parser,
    _export_parser,
    _triton_repository_parser,
    _transcribe_parser,
    _lm_parser,
    _serve_parser,
    _registry_parser,
    _retrain_parser,
    _release_parser,
    _sample_corpus_parser,
    _sample_noise_parser,
)


def build_parser(serve_options: bool = True) -> argparse.ArgumentParser:
    """The whole `korasr` parser; ``serve_options=False`` leaves out serve's flags (their schema imports the service,
    a second for every other command)."""
    parser = argparse.ArgumentParser(prog="korasr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"korasr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(sub)
    if serve_options:
        add_serve_options(subparser(parser, "serve"))
    return parser


def _resolve_model_ref(args: argparse.Namespace) -> None:
    """``--model models:/NAME@ALIAS`` (or ``/VERSION``) becomes the local copy of that registered version: its export
    folder, or its .nemo for ``korasr export``; a release folder (korasr release) likewise. ``korasr serve --follow``
    keeps the reference and follows it."""
    ref = getattr(args, "model", None)
    if isinstance(ref, str) and not ref.startswith("models:/"):
        from korasr.release import is_release, model_path

        if is_release(ref):
            args.model = str(model_path(ref, "nemo" if args.command == "export" else "export"))
            return
    if not isinstance(ref, str) or not ref.startswith("models:/") or getattr(args, "follow", None):
        return
    from korasr import registry

    args.model_ref = ref
    args.model = str(registry.resolve(ref, "nemo" if args.command == "export" else "export"))


# `korasr serve` takes every flag from the environment too: --drain-timeout 20 is KORASR_DRAIN_TIMEOUT=20 (a container's
# settings, docs/deploy.md, docs/settings.md); a flag given beats its variable.


def flag_variables(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``KORASR_<FLAG>`` (the schema's name for it) → the action of ``--flag``, for every option of serve's ``parser``."""
    from korasr.serve.config import flag_settings

    actions = {a.dest: a for a in parser._actions}
    return {s.env: actions[serve_dest(s)] for s in flag_settings() if serve_dest(s) in actions}


def env_defaults(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    """Defaults of serve's options from their variables (read by pydantic-settings), each parsed and checked by the
    schema as its flag is (a switch takes 1/0, true/false, yes/no, on/off; a repeatable flag a comma-separated list,
    which the flag given replaces); a bad value stops the parser naming the variable. An empty variable is unset."""
    from korasr.serve.config import SettingError, environment_values, flag_settings

    try:
        values = environment_values(environ)
    except SettingError as e:
        parser.error(str(e))
    actions = {a.dest: a for a in parser._actions}
    for s in flag_settings():
        if s.name in values:
            action = actions[serve_dest(s)]
            if s.repeatable:
                action.__class__ = _ReplacingAppend  # the flag given replaces the variable's list, never widens it
            action.default, action.required = values[s.name], False


class _ReplacingAppend(argparse._AppendAction):
    """A repeatable flag whose default came from its variable: its first use on the command line starts a new list
    (an allow-list given as flags is the whole list, not the variable's plus more)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        if getattr(namespace, self.dest, None) is self.default:
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def main(argv: list[str] | None = None) -> int:
    from korasr import log as korasr_log
    from korasr.errors import KorasrError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(serve_options=argv[:1] == ["serve"])
    if argv[:1] == ["serve"]:
        env_defaults(subparser(parser, "serve"), dict(os.environ))
    args, extra = parser.parse_known_args(argv)
    # `korasr train` takes dotted overrides anywhere (make puts ARGS after the --evaluate options, and argparse
    # gives a positional list only its first run of words)
    if extra and args.command in ("train", "retrain") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    korasr_log.setup()
    try:
        _resolve_model_ref(args)
        return args.func(args)
    except (KorasrError, ValueError, FileNotFoundError) as e:
        print(f"korasr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
