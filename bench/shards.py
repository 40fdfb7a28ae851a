"""Training data from shards vs from a manifest and loose files: NeMo's lhotse data loader (the sample recipe's
train_ds settings: dynamic bucketing, batches of 80 s of audio, buffers of 4,000 cuts) reading the same utterances
from `korasr shard pack`'s shards (``shar_path``) and from the manifest with one WAV per utterance
(``manifest_filepath``), every batch's audio decoded. Each measurement is a fresh process; the two alternate, best
of ``--repeats``, after one untimed pass that warms the page cache for both. The first batch waits for the bucketing
buffer to fill (with shards that buffer holds the audio, not just the metadata): it is timed apart, and the rate
counts the batches after it. Then the loader's resident memory over
a long run: ``--long`` batches of each (the shard stream is endless; the manifest loader starts epoch after epoch),
RSS of the process and its workers sampled along the way. Prints the ratio and a table; writes
bench/out/shards.json.

    .venv/bin/python bench/shards.py --shards data/sample/shards/train --manifest manifests/sample/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, tree_rss_mb, write_json

# recipes/sample/train.yaml over conf/size/tiny.yaml, augmentation off (it costs the same on both paths)
LOADER = {"sample_rate": 16000, "use_lhotse": True, "batch_duration": 80, "use_bucketing": True, "num_buckets": 6,
          "bucket_buffer_size": 4000, "shuffle_buffer_size": 4000, "shuffle": True, "shard_seed": 0, "seed": 0,
          "concurrent_bucketing": False, "min_duration": 0.1, "max_duration": 30.0}  # fmt: skip


class Decode:
    """A lhotse dataset that decodes every cut's audio and returns how much it read."""

    def __getitem__(self, cuts):  # type: ignore[no-untyped-def]
        return sum(cut.load_audio().shape[-1] for cut in cuts), len(cuts)


def child(source: str, path: str, batches: int, workers: int, every: int) -> None:
    """One loader over ``path`` for ``batches`` batches: prints one JSON line (seconds, samples, utterances, RSS)."""
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config

    config = {**LOADER, ("shar_path" if source == "shards" else "manifest_filepath"): path, "num_workers": workers}
    loader = get_lhotse_dataloader_from_config(config, global_rank=0, world_size=1, dataset=Decode())
    samples = utterances = done = 0
    rss = [(0, round(tree_rss_mb(os.getpid()), 1))]
    started = first = time.perf_counter()
    while done < batches:  # the manifest loader ends with its epoch: start the next one, as training does
        for n_samples, n_cuts in loader:
            if done == 0:  # the first batch waits for the bucketing buffer to fill: timed apart
                first = time.perf_counter()
            else:
                samples, utterances = samples + int(n_samples), utterances + int(n_cuts)
            done += 1
            if done % every == 0:
                rss.append((done, round(tree_rss_mb(os.getpid()), 1)))
            if done >= batches:
                break
    seconds = time.perf_counter() - first
    print(
        json.dumps(
            {
                "first_batch_s": first - started,
                "seconds": seconds,
                "samples": samples,
                "utterances": utterances,
                "batches": done,
                "rss": rss,
            }
        )
    )


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--shards", type=Path, default=ROOT / "data/sample/shards/train", help="korasr shard pack's folder"
    )
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests/sample/train.jsonl",
                        help="the manifest the shards were packed from")  # fmt: skip
    parser.add_argument("--batches", type=int, default=150, help="batches per throughput measurement")
    parser.add_argument("--repeats", type=int, default=2, help="throughput runs per source; the best is reported")
    parser.add_argument("--long", type=int, default=3000, help="batches of the memory run")
    parser.add_argument("--workers", type=int, default=0, help="data loader workers (the sample recipe: 0)")
    parser.add_argument("--child", nargs=5, metavar=("SOURCE", "PATH", "BATCHES", "WORKERS", "EVERY"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.child:
        source, path, batches, workers, every = args.child
        child(source, path, int(batches), int(workers), int(every))
        return 0

    from korasr.data.shar import check_shards

    index = check_shards(args.shards)
    if [m["path"] for m in index["inputs"]["manifests"]] != [str(args.manifest.resolve())]:
        print(f"note: {args.shards} was packed from {index['inputs']['manifests'][0]['path']}", file=sys.stderr)
    sources = {"shards": str(args.shards.resolve() / "shar"), "manifest": str(args.manifest.resolve())}
    for source, path in sources.items():  # warm the page cache for both
        run_child(source, path, str(args.batches), str(args.workers), str(args.batches))
    runs: dict[str, list[dict]] = {s: [] for s in sources}
    for _ in range(args.repeats):
        for source, path in sources.items():
            runs[source].append(run_child(source, path, str(args.batches), str(args.workers), str(args.batches)))
    best = {s: min(r, key=lambda x: x["seconds"]) for s, r in runs.items()}
    rate = {s: {"utterances_per_s": round(b["utterances"] / b["seconds"], 1), "first_batch_s": round(min(
                x["first_batch_s"] for x in runs[s]), 2), "audio_s_per_s": round(b["samples"] / 16000 / b["seconds"], 1)}
            for s, b in best.items()}  # fmt: skip
    every = max(1, args.long // 10)
    memory = {s: run_child(s, p, str(args.long), str(args.workers), str(every)) for s, p in sources.items()}
    result = {"shards": str(args.shards), "manifest": str(args.manifest), "utterances": index["utterances"],
              "shard_count": index["shards"], "batches": args.batches, "repeats": args.repeats,
              "workers": args.workers, "loader": LOADER, "rate": rate,
              "shards_vs_manifest": round(rate["shards"]["audio_s_per_s"] / rate["manifest"]["audio_s_per_s"], 2),
              "memory": {s: {"batches": m["batches"], "seconds": round(m["seconds"], 1), "rss_mb": m["rss"]}
                         for s, m in memory.items()},
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}  # fmt: skip
    write_json(OUT / "shards.json", result)

    print(f"{index['utterances']} utterances ({index['hours']:.2f} h) in {index['shards']} shards; {args.batches} "
          f"batches of 80 s per run, {args.workers} workers, best of {args.repeats}")  # fmt: skip
    print(f"{'':<9} {'first batch':>12} {'utt/s':>8} {'audio s/s':>10}   (after the first batch)")
    for s in sources:
        print(
            f"{s:<9} {rate[s]['first_batch_s']:>10.2f} s {rate[s]['utterances_per_s']:>8.0f} "
            f"{rate[s]['audio_s_per_s']:>10.0f}"
        )
    print(f"shards / manifest = {result['shards_vs_manifest']:.2f}×")
    print(f"\nRSS (MB) over {args.long} batches (the process and its workers)")
    print(f"{'batch':>7} " + " ".join(f"{s:>9}" for s in sources))
    for i, (step, _) in enumerate(memory["shards"]["rss"]):
        print(f"{step:>7} " + " ".join(f"{memory[s]['rss'][i][1]:>9.0f}" for s in sources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
