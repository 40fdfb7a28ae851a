"""Data preparation speed: `korasr prepare kspon` vs lhotse's `prepare_ksponspeech` vs a raw copy of the bytes.

All three run as fresh processes (start-up and imports included) on the same generated corpus in
KsponSpeech's layout, with the same number of jobs and a warm page cache. The raw copy reads and writes
every PCM byte once: the physical limit for any preparation that converts the audio. Prints utterances per
second and the ratios; writes bench/out/prepare_vs_lhotse.json.

    python bench/prepare_vs_lhotse.py [--utterances 3000] [--jobs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, timed, write_json
from peers import lhotse_command, lhotse_tree, raw_copy_command

BIN = Path(sys.executable).parent


def run_quiet(cmd: list[str]) -> float:
    """Wall seconds of a command run to completion, its output discarded."""
    return timed(subprocess.run, cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=3000, help="train utterances of the generated corpus")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool; the best is reported")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    out: Path = args.out.resolve()
    corpus = out / "corpus" / "KsponSpeech"
    subprocess.run(
        [
            str(BIN / "korasr"),
            "sample-corpus",
            str(corpus),
            "--synth",
            "tone",
            "--utterances",
            str(args.utterances),
            "--jobs",
            str(args.jobs),
            "--quiet",
        ],
        check=True,
    )
    pcms = list(corpus.rglob("*.pcm"))
    n_utts = len(pcms)
    n_bytes = sum(p.stat().st_size for p in pcms)
    for p in pcms:  # warm the page cache for every contender alike
        p.read_bytes()
    lhotse_root = lhotse_tree(corpus, out / "lhotse_corpus")

    work = out / "work"
    runs: dict[str, list[float]] = {"raw copy": [], "korasr": [], "lhotse": []}
    for _ in range(args.repeats):
        shutil.rmtree(work, ignore_errors=True)
        runs["raw copy"].append(run_quiet(raw_copy_command(corpus, work / "copy", args.jobs)))
        runs["korasr"].append(
            run_quiet(
                [
                    str(BIN / "korasr"),
                    "prepare",
                    "kspon",
                    "--root",
                    str(corpus),
                    "--out",
                    str(work / "m"),
                    "--audio-dir",
                    str(work / "audio"),
                    "--jobs",
                    str(args.jobs),
                    "--quiet",
                ]
            )
        )
        for flac in lhotse_root.rglob("*.flac"):
            flac.unlink()
        runs["lhotse"].append(run_quiet(lhotse_command(lhotse_root, work / "lhotse", args.jobs)))
    shutil.rmtree(work, ignore_errors=True)

    best = {name: min(times) for name, times in runs.items()}
    rate = {name: n_utts / t for name, t in best.items()}
    result = {
        "utterances": n_utts,
        "megabytes": round(n_bytes / 1e6, 1),
        "jobs": args.jobs,
        "repeats": args.repeats,
        "seconds_best": {k: round(v, 3) for k, v in best.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "utterances_per_second": {k: round(v, 1) for k, v in rate.items()},
        "korasr_vs_raw_copy": round(rate["korasr"] / rate["raw copy"], 3),
        "korasr_vs_lhotse": round(rate["korasr"] / rate["lhotse"], 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    write_json(out / "prepare_vs_lhotse.json", result)

    print(f"{n_utts} utterances, {n_bytes / 1e6:.0f} MB of PCM, {args.jobs} jobs, best of {args.repeats}")
    print(f"{'':<10} {'seconds':>8} {'utt/s':>9}")
    for name in runs:
        print(f"{name:<10} {best[name]:>8.3f} {rate[name]:>9.0f}")
    print(f"korasr / raw copy = {result['korasr_vs_raw_copy']:.0%}   (target ≥ 80%)")
    print(f"korasr / lhotse   = {result['korasr_vs_lhotse']:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
