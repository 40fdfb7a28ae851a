"""Peak memory of `korasr prepare kspon` against corpus size: it must stay flat.

Writes corpora of N short utterances (real PCM files, KsponSpeech layout) for N in --sizes, prepares each in a
fresh process and reports the peak resident memory of the main process and of its largest worker, with the
ratio between the largest and smallest corpus. At full KsponSpeech scale (622,545 utterances) only the set of
utterance ids grows: about 170 bytes per utterance, about 106 MB of index at 622,545 (a main process of about
130 MB; recipes/kspon/README.md).

    python bench/prepare_memory.py [--sizes 10000 100000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, write_json

MEASURE = """
import resource, sys
from korasr.data.kspon import prepare_kspon
prepare_kspon(sys.argv[1], sys.argv[2], audio_dir=sys.argv[3], jobs=int(sys.argv[4]), progress=False)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(own, workers)
"""


def make_corpus(root: Path, n: int) -> None:
    """n train utterances of 0.5 s each (16 KB), and a few in each other split."""
    if (root / "done").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    pcm = os.urandom(16000)
    scripts = root / "KsponSpeech_scripts"
    scripts.mkdir(parents=True)
    lines: dict[str, list[str]] = {"train": [], "dev": [], "eval_clean": [], "eval_other": []}
    for i in range(1, n + 1):
        folder = (i - 1) // 1000 + 1
        lines["train"].append(f"KsponSpeech_01/KsponSpeech_{folder:04d}/KsponSpeech_{i:06d}.pcm")
    for j, split in enumerate(("eval_clean", "eval_other"), start=1):
        lines[split].append(f"KsponSpeech_eval/{split}/KsponSpeech_E{j:05d}.pcm")
    lines["dev"].append("KsponSpeech_05/KsponSpeech_0623/KsponSpeech_622545.pcm")
    for split, rels in lines.items():
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(pcm)
        text = "".join(
            f"{rel} :: o/ 어/ (3시)/(세 시)에 저+ 저는 학교에 갔어요. 번호 {k}\n" for k, rel in enumerate(rels)
        )
        (scripts / f"{split}.trn").write_text(text, encoding="utf-8")
    (root / "done").write_text("")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=OUT / "memory")
    args = parser.parse_args()

    results = []
    for n in args.sizes:
        root = args.out / f"corpus_{n}"
        make_corpus(root, n)
        work = args.out / "work"
        shutil.rmtree(work, ignore_errors=True)
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(root), str(work / "m"), str(work / "a"), str(args.jobs)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        own_mb, worker_mb = (int(x) / 1024 for x in out[-2:])  # ru_maxrss is in KiB on Linux
        results.append({"utterances": n, "main_peak_mb": round(own_mb, 1), "worker_peak_mb": round(worker_mb, 1)})
        shutil.rmtree(work, ignore_errors=True)
        print(f"{n:>8} utterances: main process {own_mb:6.1f} MB, largest worker {worker_mb:6.1f} MB")
    first, last = results[0], results[-1]
    growth = last["main_peak_mb"] / first["main_peak_mb"]
    print(
        f"{last['utterances'] / first['utterances']:.0f}× the utterances → main process peak ×{growth:.2f}, "
        f"worker peak ×{last['worker_peak_mb'] / first['worker_peak_mb']:.2f}"
    )
    write_json(args.out / "prepare_memory.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
