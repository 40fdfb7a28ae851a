"""Archive transcription, same machine, same export, same files, one run: `korasr transcribe --manifest` on Ray Data
(1 actor and one per core) vs today's single-process `korasr transcribe` vs sherpa-onnx's offline recognizer with
``num_threads`` = cores. Each is a command of its own, timed whole (start-up included), so the ratios are what a
user waits for. Transcripts of the Ray path are compared with the single process's, file by file.

``--memory`` adds the archive path's memory on a long manifest: 10,000 and 100,000 lines (one in a hundred a real clip,
the rest error rows for missing files, which flow through the same listing, actors and shard writer at a fraction of
the decoding time), peak RSS of the driver and of the whole process tree (Ray's head and actors) sampled every
0.5 s. Results also in bench/out/archive.json.

    .venv/bin/python bench/archive.py --files 10000 [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, newest, rss_mb, tree_rss_mb, write_json

KORASR = str(Path(sys.executable).parent / "korasr")
SHERPA = """
import sys, time, unicodedata, soundfile as sf
sys.path.insert(0, sys.argv[1])
from peers import sherpa_offline
from pathlib import Path
rec = sherpa_offline(Path(sys.argv[2]), int(sys.argv[3]))
paths = open(sys.argv[4]).read().split()
texts = []
for i in range(0, len(paths), 16):
    streams = []
    for p in paths[i:i + 16]:
        audio, rate = sf.read(p, dtype="float32")
        s = rec.create_stream(); s.accept_waveform(rate, audio); streams.append(s)
    rec.decode_streams(streams)
    texts += [unicodedata.normalize("NFC", s.result.text) for s in streams]
print(len(texts))
"""


def timed_command(cmd: list[str], sample: bool = False) -> dict:
    """Wall seconds of a command (and, with ``sample``, peak RSS of it and of its process tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"driver_mb": 0.0, "tree_mb": 0.0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            try:
                peaks["driver_mb"] = max(peaks["driver_mb"], rss_mb(proc.pid))
                peaks["tree_mb"] = max(peaks["tree_mb"], tree_rss_mb(proc.pid))
            except OSError:
                return

    watcher = threading.Thread(target=watch, daemon=True)
    if sample:
        watcher.start()
    out, err = proc.communicate()
    stop.set()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed:\n{err[-3000:]}")
    return {"wall_s": time.perf_counter() - start, "stdout": out, **(peaks if sample else {})}


def workload(manifests: list[Path], files: int) -> tuple[list[str], float]:
    """``files`` paths cycling over the manifests' audio, and their audio seconds."""
    rows = [json.loads(line) for m in manifests for line in m.read_text(encoding="utf-8").splitlines()]
    chosen = [rows[i % len(rows)] for i in range(files)]
    return [r["audio_filepath"] for r in chosen], sum(r["duration"] for r in chosen)


def archive_rows(out: Path) -> dict[str, str]:
    texts = {}
    for part in sorted(out.glob("part-*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts.setdefault(row["path"], row["text"])
    return texts


def speed(export: Path, paths: list[str], audio_s: float, cores: int, tmp: Path) -> dict:
    listing = tmp / "paths.txt"
    listing.write_text("\n".join(paths) + "\n", encoding="utf-8")
    results = {}
    single = timed_command([KORASR, "transcribe", "--model", str(export), "--json", "--threads", str(cores), *paths])
    expected = {}
    for line in single["stdout"].splitlines():
        row = json.loads(line)
        expected.setdefault(row["audio"], row["text"])
    results["korasr transcribe (1 process)"] = single
    for actors in sorted({1, cores}):
        out = tmp / f"ray{actors}"
        run = timed_command([KORASR, "transcribe", "--model", str(export), "--manifest", str(listing), "--out",
                             str(out), "--actors", str(actors), "--threads", str(max(1, cores // actors))])  # fmt: skip
        got = archive_rows(out)
        run["mismatches"] = sum(got.get(p) != t for p, t in expected.items())
        results[f"korasr transcribe --manifest (Ray, {actors} actor{'s' * (actors > 1)})"] = run
    results[f"sherpa-onnx offline ({cores} threads)"] = timed_command(
        [sys.executable, "-c", SHERPA, str(Path(__file__).parent), str(export), str(cores), str(listing)]
    )
    print(f"\n{len(paths)} files, {audio_s / 3600:.2f} h of audio, {cores} cores; each command timed whole\n")
    print("| path | wall s | RTFx | vs 1 process | transcripts ≠ 1 process |\n|---|---:|---:|---:|---:|")
    base = single["wall_s"]
    for name, r in results.items():
        print(f"| {name} | {r['wall_s']:.1f} | {audio_s / r['wall_s']:.0f} | {base / r['wall_s']:.2f}× | "
              f"{r.get('mismatches', '—')} |")  # fmt: skip
    return {n: {k: v for k, v in r.items() if k != "stdout"} for n, r in results.items()}


def memory(export: Path, paths: list[str], tmp: Path) -> dict:
    results = {}
    for lines in (10_000, 100_000):
        manifest = tmp / f"long{lines}.txt"
        with open(manifest, "w", encoding="utf-8") as f:
            for i in range(lines):
                f.write((paths[i // 100 % len(paths)] if i % 100 == 0 else f"/nonexistent/korasr-bench/{i}.wav") + "\n")
        run = timed_command([KORASR, "transcribe", "--model", str(export), "--manifest", str(manifest), "--out",
                             str(tmp / f"mem{lines}")], sample=True)  # fmt: skip
        summary = json.loads(run["stdout"])
        results[lines] = {"wall_s": run["wall_s"], "driver_peak_mb": run["driver_mb"], "tree_peak_mb": run["tree_mb"],
                          "files": summary["files"], "failed": summary["failed"]}  # fmt: skip
    print("\n| manifest lines | wall s | driver peak RSS MB | process tree peak RSS MB |\n|---:|---:|---:|---:|")
    for lines, r in results.items():
        print(f"| {lines:,} | {r['wall_s']:.0f} | {r['driver_peak_mb']:.0f} | {r['tree_peak_mb']:.0f} |")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="an export folder (default: the newest sample one)")
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--memory", action="store_true", help="also the 10,000 / 100,000-line memory runs")
    args = parser.parse_args()
    export = args.model or newest("exp/sample/*/*/export")
    if export is None:
        raise SystemExit("no export: run `make export` first or pass --model")
    manifests = [ROOT / "manifests" / "sample" / f"{s}.jsonl" for s in ("eval_clean", "eval_other", "eval_novel")]
    paths, audio_s = workload(manifests, args.files)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"files": len(paths), "audio_s": audio_s, "cores": args.cores, "export": str(export),
                  "speed": speed(export, paths, audio_s, args.cores, Path(tmp))}  # fmt: skip
        if args.memory:
            result["memory"] = memory(export, paths, Path(tmp))
    write_json(OUT / "archive.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
