"""Data preparation speed: `korasr prepare kspon` vs lhotse's `prepare_ksponspeech` vs a raw copy of the bytes.

All three run as fresh processes (start-up and imports included) on the same generated corpus in
KsponSpeech's layout, with the same number of jobs and a warm page cache. The raw copy reads and writes
every PCM byte once: the physical limit for any preparation that converts the audio. Prints utterances per
second and the ratios; writes bench/out/prepare_vs_lhotse.json.

    python bench/prepare_vs_lhotse.py [--utterances 3000] [--jobs 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

RAW_COPY = """
import os, shutil, sys
from multiprocessing import Pool
src, dst, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = []
for dirpath, _, names in os.walk(src):
    for name in names:
        if name.endswith(".pcm"):
            s = os.path.join(dirpath, name)
            pairs.append((s, os.path.join(dst, os.path.relpath(s, src))))
for d in {os.path.dirname(t) for _, t in pairs}:
    os.makedirs(d, exist_ok=True)
def copy(pair):
    shutil.copyfile(*pair)
with Pool(jobs) as pool:
    pool.map(copy, pairs, chunksize=256)
"""

LHOTSE = """
import sys
from lhotse.recipes.ksponspeech import prepare_ksponspeech
prepare_ksponspeech(sys.argv[1], output_dir=sys.argv[2], num_jobs=int(sys.argv[3]))
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def lhotse_tree(corpus: Path, dst: Path) -> Path:
    """lhotse reads `<root>/<split>.trn` and eval audio at `<root>/eval_*`, and writes FLAC beside each PCM:
    give it a tree of hard links to the same PCM files, arranged as it expects."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(corpus, dst, copy_function=os.link, ignore=shutil.ignore_patterns("*.flac"))
    for trn in (dst / "KsponSpeech_scripts").iterdir():
        shutil.copy(trn, dst / trn.name)
    for split in ("eval_clean", "eval_other"):
        (dst / split).symlink_to(dst / "KsponSpeech_eval" / split)
    return dst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=3000, help="train utterances of the generated corpus")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool; the best is reported")
    parser.add_argument("--out", type=Path, default=HERE / "out")
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
        runs["raw copy"].append(
            timed([sys.executable, "-c", RAW_COPY, str(corpus), str(work / "copy"), str(args.jobs)])
        )
        runs["korasr"].append(
            timed(
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
        runs["lhotse"].append(
            timed([sys.executable, "-c", LHOTSE, str(lhotse_root), str(work / "lhotse"), str(args.jobs)])
        )
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "prepare_vs_lhotse.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"{n_utts} utterances, {n_bytes / 1e6:.0f} MB of PCM, {args.jobs} jobs, best of {args.repeats}")
    print(f"{'':<10} {'seconds':>8} {'utt/s':>9}")
    for name in runs:
        print(f"{name:<10} {best[name]:>8.3f} {rate[name]:>9.0f}")
    print(f"korasr / raw copy = {result['korasr_vs_raw_copy']:.0%}   (target ≥ 80%)")
    print(f"korasr / lhotse   = {result['korasr_vs_lhotse']:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
