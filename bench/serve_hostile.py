"""`korasr serve` under hostile clients: bounded memory, no 5xx, legitimate clients still served.

One run, 2 cores, the server as its own process on 127.0.0.1 (defaults: 25 MB uploads, 300 s audio, 16 requests
admitted, 30 s chunks, 60 s per model batch; --upload-timeout 5 here so slow clients cycle):

0. Accuracy cost of chunked decoding (in-process, no server): long files made of eval_clean utterances, decoded
   whole vs in 30 s and 15 s chunks; CER of each.
1. Idle RSS after warm-up.
2. Single requests, one at a time, peak RSS sampled from /proc every 5 ms: 300 s of speech (FLAC), 300 s of
   silence, and every hostile payload (a WAV declaring 1 Hz, an hour of 48 kHz stereo FLAC silence, a streaming
   WAV with no length, absurd raw PCM rates, truncated OGG/MP3, NaN samples, 9 channels, garbage, an oversized
   and a slow upload). Target: peak ≤ idle + 300 MB.
3. 32 concurrent hostile clients looping over those payloads for --duration seconds while --legit clients
   transcribe 5 s clips (retrying after Retry-After on 503) and /health is polled. Targets: peak ≤ idle + 1 GB,
   zero 5xx, every legitimate request served, /health ready throughout, the same server process at the end.

    python bench/serve_hostile.py [--export DIR] [--duration 60] [--hostile 32] [--legit 4]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, rss_mb

ROOT = Path(__file__).resolve().parent.parent


def encode(audio: np.ndarray, rate: int, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, **kwargs)
    return buffer.getvalue()


def hour_of_flac_silence() -> bytes:
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", 48000, 2, format="FLAC") as f:
        block = np.zeros((48000 * 60, 2), np.float32)
        for _ in range(60):
            f.write(block)
    return buffer.getvalue()


def eval_audio(manifest: Path, seconds: float, skip: int = 0) -> tuple[np.ndarray, list[str]]:
    """Eval utterances joined with 0.25 s of silence up to ``seconds``: audio and the references."""
    waves, texts, total = [], [], 0
    for line in manifest.read_text(encoding="utf-8").splitlines()[skip:]:
        row = json.loads(line)
        audio = sf.read(row["audio_filepath"], dtype="float32")[0]
        waves += [audio, np.zeros(4000, np.float32)]
        texts.append(row["text"])
        total += len(audio) + 4000
        if total >= seconds * 16000:
            break
    return np.concatenate(waves), texts


def payloads(clip: np.ndarray) -> dict[str, dict]:
    """name → request (multipart file, form fields) for every hostile case."""
    from korasr.data.audio import wav_header

    streaming = bytearray(encode(np.tile(clip, 320)[: 16000 * 320], 16000, "WAV", subtype="PCM_16"))
    streaming[40:44] = struct.pack("<I", 0xFFFFFFFF)  # "length unknown": 320 s in the body
    hidden = bytearray(encode(np.tile(clip, 320), 16000, "FLAC"))  # STREAMINFO total samples 0: "unknown"
    hidden[18:26] = (int.from_bytes(hidden[18:26], "big") & ~((1 << 36) - 1)).to_bytes(8, "big")
    ogg, mp3 = encode(clip, 16000, "OGG"), encode(clip, 16000, "MP3")
    pcm = (clip * 32767).astype("<i2").tobytes()
    raw = {"channels": "1", "encoding": "s16le"}
    return {
        "wav declaring 1 Hz": {"file": wav_header(40_000, sample_rate=1) + b"\0" * 40_000},
        "1 h FLAC silence 48k stereo": {"file": hour_of_flac_silence()},
        "streaming WAV, 320 s": {"file": bytes(streaming)},
        "FLAC hiding its length, 320 s": {"file": bytes(hidden)},
        "raw PCM at 2^63-1 Hz": {"file": pcm, "data": {**raw, "sample_rate": str(2**63 - 1)}},
        "raw PCM, 401-digit rate": {"file": pcm, "data": {**raw, "sample_rate": "9" * 401}},
        "truncated OGG": {"file": ogg[: len(ogg) * 2 // 3]},
        "truncated MP3": {"file": mp3[: len(mp3) * 2 // 3]},
        "NaN float WAV": {"file": encode(np.full(16000, np.nan, np.float32), 16000, "WAV", subtype="FLOAT")},
        "9-channel WAV": {"file": encode(np.zeros((16000, 9), np.float32), 16000, "WAV")},
        "garbage": {"file": bytes(random.Random(0).randbytes(200_000))},
    }


class Peak:
    """Samples a process's RSS every 5 ms in a thread; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, 0.0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            time.sleep(0.005)

    def reset(self) -> None:
        self.peak = rss_mb(self.pid)


async def slow_upload(port: int) -> int:
    """Opens an upload of 1 MB and sends 1 kB, then nothing: the server must answer 408 and free the slot."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 1000000\r\n\r\n--b\r\n" + b"x" * 1000)  # fmt: skip
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 120)
    writer.close()
    return int(line.split()[1]) if line else 0


async def oversized(client, url: str) -> int:
    async def body():  # a valid multipart upload of 30 MB, chunked (no Content-Length): refused while it streams
        yield b'--x\r\nContent-Disposition: form-data; name="audio"; filename="big.wav"\r\n\r\n'
        for _ in range(300):
            yield b"\0" * 100_000

    r = await client.post(
        url + "/v1/transcribe", content=body(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    return r.status_code


async def send(client, url: str, case: dict) -> int:
    r = await client.post(url + "/v1/transcribe", files={"audio": ("x", case["file"])}, data=case.get("data"))
    if r.status_code != 200:
        assert r.json()["error"]
    return r.status_code


def chunk_accuracy(export: Path, manifest: Path) -> list[dict]:
    from korasr.metrics import cer
    from korasr.runtime import Recognizer

    recognizer = Recognizer(export)
    files = [eval_audio(manifest, 90, skip=n * 25) for n in range(4)]
    rows = []
    for label, chunk in (("whole", 3600), ("30 s chunks", 30), ("15 s chunks", 15)):
        hyps = [recognizer.transcribe_arrays([audio], chunk_seconds=chunk)[0].text for audio, _ in files]
        refs = [" ".join(texts) for _, texts in files]
        rows.append({"decoding": label, "cer": round(cer(refs, hyps), 2), "files": len(files),
                     "seconds": round(sum(len(a) for a, _ in files) / 16000, 1)})  # fmt: skip
    return rows


async def main_async(args: argparse.Namespace) -> dict:
    import httpx

    manifest = Path(args.manifest)
    clip5 = eval_audio(manifest, 5)[0][: 5 * 16000]
    legit_wav = encode(clip5, 16000, "WAV", subtype="PCM_16")
    speech300 = encode(eval_audio(manifest, 300)[0][: 300 * 16000], 16000, "FLAC")
    silence300 = encode(np.zeros(300 * 16000, np.float32), 16000, "FLAC")
    hostile = payloads(clip5[:16000])
    report: dict = {"export": str(args.export)}

    print("0. accuracy of chunked decoding (in-process)", flush=True)
    report["chunking"] = chunk_accuracy(Path(args.export), manifest)
    for row in report["chunking"]:
        print(f"   {row['decoding']:<12} CER {row['cer']:5.2f}%  ({row['files']} files, {row['seconds']} s)")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "korasr.cli", "serve", "--model", str(args.export), "--port",
                             str(port), "--upload-timeout", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=300) as client:
            for _ in range(600):
                try:
                    if (await client.get(url + "/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            await send(client, url, {"file": legit_wav})
            await asyncio.sleep(1)
            idle = rss_mb(proc.pid)
            peak = Peak(proc.pid)
            print(f"1. idle RSS {idle:.0f} MB", flush=True)

            print("2. single requests (peak RSS above idle)", flush=True)
            singles = []
            cases = {"5 s speech (WAV)": {"file": legit_wav}, "300 s speech (FLAC)": {"file": speech300},
                     "300 s silence (FLAC)": {"file": silence300}, **hostile}  # fmt: skip
            for name, case in cases.items():
                peak.reset()
                started = time.perf_counter()
                status = await send(client, url, case)
                await asyncio.sleep(0.05)
                singles.append({"request": name, "status": status, "ms": round((time.perf_counter() - started) * 1000),
                                "peak_above_idle_mb": round(peak.peak - idle, 1)})  # fmt: skip
            for name, job in (
                ("oversized chunked upload (30 MB)", oversized(client, url)),
                ("slow upload", slow_upload(port)),
            ):
                peak.reset()
                started = time.perf_counter()
                status = await job
                singles.append({"request": name, "status": status, "ms": round((time.perf_counter() - started) * 1000),
                                "peak_above_idle_mb": round(peak.peak - idle, 1)})  # fmt: skip
            for row in singles:
                print(
                    f"   {row['request']:<34} {row['status']}  {row['ms']:>6} ms  +{row['peak_above_idle_mb']:6.1f} MB"
                )
            report.update(idle_rss_mb=round(idle, 1), singles=singles)

            print(
                f"3. {args.hostile} hostile clients + {args.legit} legitimate clients for {args.duration} s", flush=True
            )
            peak.reset()
            stop = time.monotonic() + args.duration
            hostile_status: Counter = Counter()
            legit = {"served": 0, "attempts": 0, "retried_503": 0, "failed": 0, "latency": []}
            health = {"checks": 0, "not_ready": 0}
            kinds = [*hostile.values(), {"file": speech300}, {"file": silence300}]

            async def attacker(n: int) -> None:
                rng = random.Random(n)
                while time.monotonic() < stop:
                    roll = rng.random()
                    try:
                        if roll < 0.05:
                            status = await slow_upload(port)
                        elif roll < 0.10:
                            status = await oversized(client, url)
                        elif roll < 0.15:
                            status = (await client.get(f"{url}/p-{rng.randrange(10**9)}")).status_code
                        else:
                            status = await send(client, url, rng.choice(kinds))
                    except (httpx.TransportError, OSError) as e:
                        status = type(e).__name__
                    hostile_status[status] += 1

            async def user() -> None:
                while time.monotonic() < stop:
                    legit["attempts"] += 1
                    started = time.perf_counter()
                    while True:
                        r = await client.post(url + "/v1/transcribe", files={"audio": ("a.wav", legit_wav)})
                        if r.status_code != 503:
                            break
                        legit["retried_503"] += 1
                        await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                    if r.status_code == 200 and r.json()["text"]:
                        legit["served"] += 1
                        legit["latency"].append(time.perf_counter() - started)
                    else:
                        legit["failed"] += 1

            async def poll_health() -> None:
                while time.monotonic() < stop:
                    health["checks"] += 1
                    try:
                        ok = (await client.get(url + "/health", timeout=5)).status_code == 200
                    except httpx.TransportError:
                        ok = False
                    health["not_ready"] += not ok
                    await asyncio.sleep(0.25)

            await asyncio.gather(*[attacker(n) for n in range(args.hostile)], *[user() for _ in range(args.legit)],
                                 poll_health())  # fmt: skip
            metrics = (await client.get(url + "/metrics")).text
            series = sum(1 for line in metrics.splitlines() if line.startswith("korasr_requests_total{"))
            lat = sorted(legit.pop("latency")) or [0.0]
            legit.update(p50_ms=round(1000 * lat[len(lat) // 2]), p99_ms=round(1000 * lat[int(len(lat) * 0.99)]))
            five_xx = sum(n for s, n in hostile_status.items() if isinstance(s, int) and s >= 500 and s != 503)
            report.update(
                concurrent={
                    "peak_above_idle_mb": round(peak.peak - idle, 1),
                    "hostile_status": {str(k): v for k, v in hostile_status.items()},
                    "legit": legit,
                    "health": health,
                    "five_xx": five_xx,
                    "request_series": series,
                    "same_process": proc.poll() is None,
                },
            )
            peak.stop = True
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    c = report["concurrent"]
    print(f"   peak +{c['peak_above_idle_mb']} MB; hostile answers {c['hostile_status']}")
    print(f"   legitimate: {legit['served']}/{legit['attempts']} served, {legit['retried_503']} retries after 503, "
          f"p50 {legit['p50_ms']} ms, p99 {legit['p99_ms']} ms; /health not ready {health['not_ready']}/"
          f"{health['checks']}; korasr_requests_total series: {series}")  # fmt: skip
    worst_single = max(r["peak_above_idle_mb"] for r in report["singles"])
    targets = {
        "single request ≤ idle + 300 MB": worst_single <= 300,
        "32 hostile clients ≤ idle + 1 GB": c["peak_above_idle_mb"] <= 1024,
        "zero 5xx (503 with Retry-After aside)": five_xx == 0 and all(r["status"] < 500 for r in report["singles"]),
        "every legitimate request served": legit["served"] == legit["attempts"] > 0,
        "/health ready throughout": health["not_ready"] == 0,
        "server never restarted": c["same_process"],
    }
    report["targets"] = targets
    print(f"\nworst single request +{worst_single} MB over idle {report['idle_rss_mb']} MB "
          f"({(report['idle_rss_mb'] + worst_single) / report['idle_rss_mb']:.2f}× idle); "
          f"under attack +{c['peak_above_idle_mb']} MB")  # fmt: skip
    for name, ok in targets.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    exports = sorted(ROOT.glob("exp/sample/*/*/export/model.json"), key=lambda p: p.stat().st_mtime)
    parser.add_argument("--export", default=str(exports[-1].parent) if exports else None)
    parser.add_argument("--manifest", default=str(ROOT / "manifests/sample/eval_clean.jsonl"))
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--hostile", type=int, default=32)
    parser.add_argument("--legit", type=int, default=4)
    args = parser.parse_args()
    if not args.export:
        parser.error("no export: run make train && make export, or pass --export")
    report = asyncio.run(main_async(args))
    out = ROOT / "bench/out/serve_hostile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
