"""What writing durably costs `korasr prepare kspon`: the same command with korasr's fsyncs and without them.

Every file korasr publishes is fsynced before its rename and its folder after (korasr.fsutil.replace_durably; the
converted audio in batches of one chunk). This runs `korasr prepare kspon` in this process, on a sample corpus it
makes, alternately with the fsyncs and with them turned off (the private switch ``korasr.fsutil._SYNC``, which only
this script flips), and a third way: without them but with one `sync` at the end, the least it costs to have the
same bytes on the disk at all. Before each run the page cache is written back (untimed), so no run pays for the one
before. Prints the median of each and the ratios; writes bench/out/fsync_prepare.json.

    python bench/fsync_prepare.py [--utterances 2000] [--jobs 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, write_json

BIN = Path(sys.executable).parent
MODES = ("fsync", "no fsync", "no fsync, then sync")


def prepare(corpus: Path, work: Path, jobs: int, mode: str) -> float:
    """Wall seconds of one `korasr prepare kspon` into an empty ``work``, in ``mode``."""
    from korasr import fsutil
    from korasr.cli import main as korasr

    shutil.rmtree(work, ignore_errors=True)
    os.sync()  # the previous run's dirty pages go now, untimed
    fsutil._SYNC = mode == "fsync"
    argv = ["prepare", "kspon", "--root", str(corpus), "--out", str(work / "m"), "--audio-dir", str(work / "a"),
            "--jobs", str(jobs), "--quiet"]  # fmt: skip
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            if korasr(argv) != 0:
                raise RuntimeError(f"korasr {' '.join(argv)} failed")
        if mode == "no fsync, then sync":
            os.sync()
        return time.perf_counter() - started
    finally:
        fsutil._SYNC = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=2000, help="train utterances of the generated corpus")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5, help="runs per mode; the median is reported")
    parser.add_argument("--out", type=Path, default=OUT / "fsync_prepare")
    args = parser.parse_args()
    if not 20 <= args.utterances <= 200_000 or not 1 <= args.repeats <= 50 or not 1 <= args.jobs <= 256:
        parser.error("--utterances must be 20..200000, --repeats 1..50, --jobs 1..256")

    out: Path = args.out.resolve()
    corpus = out / "corpus" / "KsponSpeech"
    subprocess.run([str(BIN / "korasr"), "sample-corpus", str(corpus), "--synth", "tone", "--utterances",
                    str(args.utterances), "--jobs", str(args.jobs), "--quiet"], check=True)  # fmt: skip
    pcms = list(corpus.rglob("*.pcm"))
    for p in pcms:  # a warm page cache for every run alike
        p.read_bytes()
    logging.disable(logging.INFO)  # the command's summary, once per run, would bury the table

    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(args.repeats):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:  # alternated, so a drift in the machine's load hits all
            runs[mode].append(prepare(corpus, out / "work", args.jobs, mode))
            print(f"run {i + 1}/{args.repeats} {mode:<20} {runs[mode][-1]:6.2f} s", flush=True)
    shutil.rmtree(out / "work", ignore_errors=True)

    median = {mode: statistics.median(times) for mode, times in runs.items()}
    megabytes = sum(p.stat().st_size for p in pcms) / 1e6
    print(f"\nkorasr prepare kspon, {len(pcms)} utterances ({megabytes:.0f} MB of PCM), {args.jobs} jobs, "
          f"median of {args.repeats}:")  # fmt: skip
    for mode in MODES:
        print(f"  {mode:<20} {median[mode]:6.2f} s   {len(pcms) / median[mode]:7.0f} utt/s")
    ratio = median["fsync"] / median["no fsync"]
    ratio_synced = median["fsync"] / median["no fsync, then sync"]
    print(f"fsync / no fsync: {ratio:.2f}×   fsync / (no fsync, then sync): {ratio_synced:.2f}×")
    write_json(out / "fsync_prepare.json", {
        "utterances": len(pcms), "pcm_mb": round(megabytes, 1), "jobs": args.jobs, "repeats": args.repeats,
        "seconds": runs, "median_s": median, "ratio_fsync_vs_none": round(ratio, 3),
        "ratio_fsync_vs_none_then_sync": round(ratio_synced, 3), "python": platform.python_version(),
        "cpus": os.cpu_count(), "filesystem_of": str(out),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
