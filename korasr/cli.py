"""The ``korasr`` command: argument parsing only; every subcommand calls into the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from korasr import __version__

log = logging.getLogger("korasr")


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


def _sample_corpus(args: argparse.Namespace) -> int:
    from korasr.data.sample_corpus import SampleOptions, make_sample_corpus

    options = SampleOptions(utterances=args.utterances, seed=args.seed, synth=args.synth)
    print(make_sample_corpus(args.out, options, jobs=args.jobs, progress=not args.quiet))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="korasr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"korasr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("normalize", help="normalize raw KsponSpeech transcripts: stdin → stdout, line by line")
    _add_text_options(p)
    p.set_defaults(func=_normalize)

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
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--min-duration", type=float, default=0.0, metavar="S", help="reject train utterances < S s")
    p.add_argument("--max-duration", type=float, default=None, metavar="S", help="reject train utterances > S s")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_text_options(p)
    p.set_defaults(func=_prepare_kspon)

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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sample_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    from korasr import log as korasr_log
    from korasr.data.kspon import CorpusError

    args = build_parser().parse_args(argv)
    korasr_log.setup()
    try:
        return args.func(args)
    except (CorpusError, ValueError, FileNotFoundError) as e:
        print(f"korasr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
