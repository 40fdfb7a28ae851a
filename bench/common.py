"""What every bench script shares: paths, timing, /proc readers, eval audio and manifests, JSON results, and
`korasr serve` as a process of its own. The peers live in peers.py, the WebSocket clients in stream_clients.py.
Not a script: nothing runs at import. Scripts put bench/ on sys.path and import from here.

Nothing beyond the standard library is imported until it is used: prepare_memory.py measures its children's peak
RSS, and on Linux a child's peak starts at its parent's size (exec keeps the high-water mark), so the parent must
stay small."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from korasr import SAMPLE_RATE

if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"  # results (gitignored)


def export_code_sha() -> str:
    """korasr's export code, hashed: a benchmark's cached export made by other code is made again."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "korasr" / "export").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def newest(pattern: str) -> Path | None:
    """The most recently modified path under the repository matching ``pattern`` (a default model or export)."""
    found = sorted(ROOT.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def add_export_options(parser) -> None:  # type: ignore[no-untyped-def]
    """``--export`` (default: the newest sample export) and ``--manifest`` (the sample eval_clean), shared by the
    service benchmarks; :func:`export_of` resolves the default."""
    parser.add_argument("--export", type=Path, default=None, help="default: the newest exp/sample/*/*/export")
    parser.add_argument("--size", choices=("tiny", "small", "medium", "large"), default=None,
                        help="instead of --export: bench/inference.py's export of conf/size/SIZE.yaml (untrained, "
                        "seeded; make bench-inference SIZE=SIZE builds it)")  # fmt: skip
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests" / "sample" / "eval_clean.jsonl")


def export_of(args) -> Path:  # type: ignore[no-untyped-def]
    """``args.export``, ``--size``'s benchmark export, or the newest sample export (a clear exit when there is
    none)."""
    if args.export is not None:
        return args.export
    if getattr(args, "size", None):
        folder = OUT / "inference" / args.size / "export"
        if not (folder / "model.json").is_file():
            raise SystemExit(f"{folder}: no {args.size} export yet: run `make bench-inference SIZE={args.size}` first")
        return folder
    found = newest("exp/sample/*/*/export/model.json")
    if found is None:
        raise SystemExit("no export: run `make train` and `make export` first, or pass --export")
    return found.parent


def write_json(path: Path, data: object) -> None:
    """``data`` as indented JSON (UTF-8 as is, anything else JSON lacks as ``str``), its folder made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


# --- timing ----------------------------------------------------------------------------------------------------


def timed(fn: Callable, *args: object, **kwargs: object) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def time_calls(fn: Callable, items: Iterable) -> list[float]:
    """Wall seconds of ``fn(item)`` for each item, one call at a time."""
    return [timed(fn, item) for item in items]


def best_of(fn: Callable, repeats: int) -> float:
    """The fewest wall seconds of ``repeats`` calls (the least disturbed run)."""
    return min(timed(fn) for _ in range(repeats))


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds (nan for none)."""
    import numpy as np

    return float(np.percentile(np.array(values) * 1000.0, q)) if values else float("nan")


# --- a process's memory and CPU, from /proc ---------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """A process's resident memory now, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and every descendant (Ray's head and actors, data loader workers), in MB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_mb(p)
        except OSError:
            continue
        todo += children.get(p, [])
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RSSSampler:
    """A process's RSS read every ``every_s`` in a thread of its own, from now until :meth:`stop` or the process's
    end: ``peak`` (MB) since the start or the last :meth:`reset`, and every reading in ``samples`` (``keep``)."""

    def __init__(self, pid: int, every_s: float = 0.005, *, keep: bool = False):
        self.pid, self.every_s, self.keep = pid, every_s, keep
        self.peak = 0.0
        self.samples: list[float] = []
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                mb = rss_mb(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, mb)
            if self.keep:
                self.samples.append(mb)
            self._stopped.wait(self.every_s)

    def reset(self) -> None:
        self.peak = rss_mb(self.pid)

    def stop(self) -> None:
        self._stopped.set()
        self.thread.join()


# --- audio and manifests ----------------------------------------------------------------------------------------


def read_wave(source: str | Path | IO[bytes]) -> np.ndarray:
    """Float32 samples of an audio file (path or file object)."""
    import soundfile as sf

    return sf.read(source, dtype="float32")[0]


def read_utterances(manifest: Path, limit: int | None = None) -> tuple[list[dict], list[np.ndarray]]:
    """The first ``limit`` rows of a manifest (all without one) and their audio, in memory."""
    from korasr.report import read_jsonl

    rows = read_jsonl(manifest)[:limit]
    return rows, [read_wave(r["audio_filepath"]) for r in rows]


def audio_seconds(waves: list[np.ndarray]) -> float:
    return sum(len(w) for w in waves) / SAMPLE_RATE


def join(waves: Iterable[np.ndarray], gap_s: float = 0.0) -> np.ndarray:
    """The waves one after another, each followed by ``gap_s`` of silence."""
    import numpy as np

    gap = np.zeros(int(gap_s * SAMPLE_RATE), np.float32)
    return np.concatenate([part for wave in waves for part in (wave, gap)])


def joined_utterances(manifest: Path, seconds: float, *, gap_s: float = 0.0,
                      skip: int = 0) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """A manifest's utterances from the ``skip``-th on, each followed by ``gap_s`` of silence, read until they
    reach ``seconds`` (the last one whole): the audio and the references."""
    from korasr.report import read_jsonl

    waves, texts, total = [], [], 0
    for row in read_jsonl(manifest)[skip:]:
        waves.append(read_wave(row["audio_filepath"]))
        texts.append(row["text"])
        total += len(waves[-1]) + int(gap_s * SAMPLE_RATE)
        if total >= seconds * SAMPLE_RATE:
            break
    return join(waves, gap_s), texts


def long_wave(waves: list[np.ndarray], seconds: float) -> np.ndarray:
    """The utterances joined with 0.5 s of silence, repeated or cut to ``seconds`` (a long file of speech)."""
    import numpy as np

    return np.resize(join(waves, 0.5), int(seconds * SAMPLE_RATE))


def pcm16(wave: np.ndarray) -> bytes:
    """16-bit little-endian PCM bytes of a float wave."""
    import numpy as np

    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def encode(audio: np.ndarray, rate: int, fmt: str, **kwargs: object) -> bytes:
    """An audio file's bytes (``fmt``: WAV, FLAC, OGG, MP3, …; ``kwargs``: soundfile's, e.g. ``subtype``)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, **kwargs)
    return buffer.getvalue()


# --- generated text --------------------------------------------------------------------------------------------


def sample_sentences(n: int) -> list[str]:
    """``n`` sentences of the sample corpus's generator (seed 0), normalized, the empty ones left out."""
    from korasr.data.sample_text import sentence
    from korasr.text.normalize import normalize_text

    r = random.Random(0)
    return [t for t in (normalize_text(sentence(r, "templates")) for _ in range(n)) if t]  # as measured before issue 39


def jamo_tokenizer(texts: list[str], out: Path, vocab: int) -> Path:
    """A jamo unigram tokenizer of at most ``vocab`` pieces trained on ``texts``, under ``out``."""
    from korasr.tokenizer.build import TokenizerOptions, build_tokenizer

    manifest = out / "train.jsonl"
    manifest.write_text(
        "".join(json.dumps({"text": t, "duration": 1.0}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    return build_tokenizer(manifest, out / "tok", TokenizerOptions(unit="jamo", vocab=vocab), report_manifests=[])


# --- `korasr serve` as a process of its own --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``korasr serve --model EXPORT *options`` on a free loopback port, its output discarded (or written to ``log``),
    with no API key (the bench clients send none): ``http`` its base URL, ``url`` its WebSocket's. ``launcher``: the
    Python arguments that run korasr's command line (default ``-m korasr.cli``; gpu_check.py passes a ``-c`` script
    that puts the sessions on CUDA first)."""

    def __init__(self, export: Path, *options: str, launcher: list[str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream?sample_rate={SAMPLE_RATE}"
        env = {k: v for k, v in os.environ.items() if k != "KORASR_API_KEY"}
        command = [sys.executable, *(launcher or ["-m", "korasr.cli"]), "serve", "--model", str(export),
                   "--port", str(self.port), *options]  # fmt: skip
        output = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it; closed below)
        try:
            self.proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
        finally:
            if log:
                output.close()  # type: ignore[union-attr]

    def ready(self) -> None:
        """Blocks until /health answers 200 (at most 120 s; an error if the server exits first)."""
        import httpx

        for _ in range(1200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"korasr serve exited with {self.proc.returncode}")
            try:
                if httpx.get(self.http + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    async def metrics(self) -> dict[str, float]:
        """/metrics as ``{'name{labels}': value}``."""
        import httpx

        async with httpx.AsyncClient(timeout=30) as c:
            text = (await c.get(self.http + "/metrics")).text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def labelled(metrics: dict[str, float], name: str) -> dict[str, float]:
    """The series of one labelled metric by their (single) label's value: ``{'1000': 12.0, 'aborted': 3.0}``."""
    return {key.split('"')[1]: value for key, value in metrics.items() if key.startswith(name + "{")}


def grew(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Per label, how much a counter grew between two reads (labels that did not grow left out)."""
    return {k: round(v - before.get(k, 0.0)) for k, v in sorted(after.items()) if v - before.get(k, 0.0) > 0}
