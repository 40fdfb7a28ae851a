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
4. The WebSocket (``/v1/stream``) on a streaming export (``--streaming-export``; default ``--export`` when it has
   streaming/ graphs, else the newest streaming export; skipped, saying why, when there is none), its own server
   with short deadlines (``STREAM_OPTIONS``: --send-timeout 2, --stream-rate-window 5, --stream-idle 5). For each
   kind, ``--ws-clients`` hostile clients open first and go on as they are while ``--ws-honest`` clients stream eval
   utterances in real time, one after another, for ``--ws-duration`` seconds:
   - non-reading: raw sockets with a 4 kB receive buffer that send speech as fast as the server reads it and never
     read a byte after the handshake;
   - trickling: a few bytes every 2 s (half send 4-byte frames, half dribble one frame 4 bytes at a time);
   - flooding: a ``--long-minutes`` file as fast as the server reads it (results read), then silence, unended.
   Printed per kind: the server's peak RSS over idle, the streams still held (``korasr_streams_active``) once the
   longest deadline + 2 s has passed after the honest clients finished (every hostile socket still open), honest
   streams served / attempted, and the close outcomes and send timeouts from /metrics. Targets: no stream held,
   every honest stream served, no 1011, ≤ idle + 1 GB.

    python bench/serve_hostile.py [--export DIR] [--duration 60] [--hostile 32] [--legit 4] [--sections 0,1,2,3,4]
        [--streaming-export DIR] [--ws-clients 16] [--ws-honest 4] [--ws-duration 20] [--long-minutes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    OUT,
    ROOT,
    RSSSampler,
    Server,
    audio_seconds,
    encode,
    grew,
    joined_utterances,
    labelled,
    long_wave,
    newest,
    pcm16,
    pct,
    read_utterances,
    rss_mb,
    write_json,
)
from stream_clients import HostileClients, client_stats
from stream_clients import client as realtime_client

GAP_S = 0.25  # silence between the eval utterances joined into long files


def hour_of_flac_silence() -> bytes:
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", 48000, 2, format="FLAC") as f:
        block = np.zeros((48000 * 60, 2), np.float32)
        for _ in range(60):
            f.write(block)
    return buffer.getvalue()


def payloads(clip: np.ndarray) -> dict[str, dict]:
    """name → request (multipart file, form fields) for every hostile case."""
    from korasr.data.audio import wav_header

    streaming = bytearray(encode(np.tile(clip, 320)[: 16000 * 320], 16000, "WAV", subtype="PCM_16"))
    streaming[40:44] = struct.pack("<I", 0xFFFFFFFF)  # "length unknown": 320 s in the body
    hidden = bytearray(encode(np.tile(clip, 320), 16000, "FLAC"))  # STREAMINFO total samples 0: "unknown"
    hidden[18:26] = (int.from_bytes(hidden[18:26], "big") & ~((1 << 36) - 1)).to_bytes(8, "big")
    ogg, mp3 = encode(clip, 16000, "OGG"), encode(clip, 16000, "MP3")
    pcm = pcm16(clip)
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
    files = [joined_utterances(manifest, 90, gap_s=GAP_S, skip=n * 25) for n in range(4)]
    rows = []
    for label, chunk in (("whole", 3600), ("30 s chunks", 30), ("15 s chunks", 15)):
        hyps = [recognizer.transcribe_arrays([audio], chunk_seconds=chunk)[0].text for audio, _ in files]
        refs = [" ".join(texts) for _, texts in files]
        rows.append({"decoding": label, "cer": round(cer(refs, hyps), 2), "files": len(files),
                     "seconds": round(audio_seconds([a for a, _ in files]), 1)})  # fmt: skip
    return rows


async def http_sections(args: argparse.Namespace, report: dict) -> dict[str, bool]:
    """Sections 1–3 (the HTTP routes) on one server: the report's entries, and the targets with their outcome."""
    import httpx

    manifest = Path(args.manifest)
    clip5 = joined_utterances(manifest, 5, gap_s=GAP_S)[0][: 5 * 16000]
    legit_wav = encode(clip5, 16000, "WAV", subtype="PCM_16")
    speech300 = encode(joined_utterances(manifest, 300, gap_s=GAP_S)[0][: 300 * 16000], 16000, "FLAC")
    silence300 = encode(np.zeros(300 * 16000, np.float32), 16000, "FLAC")
    hostile = payloads(clip5[:16000])
    targets: dict[str, bool] = {}

    server = Server(Path(args.export), "--upload-timeout", "5")
    port, url, proc = server.port, server.http, server.proc
    try:
        await asyncio.to_thread(server.ready)
        async with httpx.AsyncClient(timeout=300) as client:
            await send(client, url, {"file": legit_wav})
            await asyncio.sleep(1)
            idle = rss_mb(proc.pid)
            peak = RSSSampler(proc.pid)
            print(f"1. idle RSS {idle:.0f} MB", flush=True)
            report.update(idle_rss_mb=round(idle, 1))

            if 2 in args.sections:
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
                report.update(singles=singles)
                worst_single = max(r["peak_above_idle_mb"] for r in singles)
                print(f"   worst single request +{worst_single} MB over idle {idle:.0f} MB "
                      f"({(idle + worst_single) / idle:.2f}× idle)")  # fmt: skip
                targets["single request ≤ idle + 300 MB"] = worst_single <= 300
                targets["zero 5xx on single requests"] = all(r["status"] < 500 for r in singles)

            if 3 in args.sections:
                print(f"3. {args.hostile} hostile clients + {args.legit} legitimate clients for {args.duration} s",
                      flush=True)  # fmt: skip
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
                c = report["concurrent"] = {
                    "peak_above_idle_mb": round(peak.peak - idle, 1),
                    "hostile_status": {str(k): v for k, v in hostile_status.items()},
                    "legit": legit,
                    "health": health,
                    "five_xx": five_xx,
                    "request_series": series,
                    "same_process": proc.poll() is None,
                }
                print(f"   peak +{c['peak_above_idle_mb']} MB; hostile answers {c['hostile_status']}")
                print(f"   legitimate: {legit['served']}/{legit['attempts']} served, {legit['retried_503']} retries "
                      f"after 503, p50 {legit['p50_ms']} ms, p99 {legit['p99_ms']} ms; /health not ready "
                      f"{health['not_ready']}/{health['checks']}; korasr_requests_total series: {series}")  # fmt: skip
                targets.update({
                    f"{args.hostile} hostile clients ≤ idle + 1 GB": c["peak_above_idle_mb"] <= 1024,
                    "zero 5xx under attack (503 with Retry-After aside)": five_xx == 0,
                    "every legitimate request served": legit["served"] == legit["attempts"] > 0,
                    "/health ready throughout": health["not_ready"] == 0,
                    "server never restarted": c["same_process"],
                })  # fmt: skip
            peak.stop()
    finally:
        server.stop()
    return targets


# --- 4. hostile WebSocket clients ------------------------------------------------------------------------------

# The streaming server's deadlines for this section, short so that it finishes in a few minutes.
STREAM_OPTIONS = {"--send-timeout": 2.0, "--stream-rate-window": 5.0, "--stream-idle": 5.0, "--min-stream-rate": 0.5}
# uvicorn's WebSocket keepalive (korasr serve keeps its defaults: a ping every 20 s, 20 s for the pong): a client
# that reads nothing is dropped by then even while the kernel still takes what the server sends it.
UVICORN_PING_S = 20.0 + 20.0
MARGIN_S = 3.0  # after a deadline, before the streams still open are counted


def streaming_export(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The export section 4 serves: ``--streaming-export``, else ``--export`` when it has streaming graphs, else the
    newest streaming export under exp/sample; or None and why."""
    has_streams = lambda p: (Path(p) / "streaming" / "streaming.json").is_file()  # noqa: E731
    if args.streaming_export:
        if has_streams(args.streaming_export):
            return Path(args.streaming_export), ""
        return None, f"{args.streaming_export} has no streaming/ graphs (export a model trained with --streaming)"
    if args.export and has_streams(args.export):
        return Path(args.export), ""
    found = newest("exp/sample/*/*/export/streaming/streaming.json")
    if found:
        return found.parent.parent, ""
    return None, (f"{args.export} has no streaming/ graphs and exp/sample holds no streaming export: make train "
                  "STREAMING=1 && make export, or pass --streaming-export DIR")  # fmt: skip


async def stream_phase(server: Server, kind: str, args: argparse.Namespace, waves: list[np.ndarray],
                       peak: RSSSampler, idle: float) -> dict:  # fmt: skip
    """``args.ws_clients`` hostile clients of one kind (in a process of their own) open first and go on as they are,
    while ``args.ws_honest`` real-time clients stream utterances one after another until ``args.ws_duration`` has
    passed and the hostile clients' deadline too. The deadline: non-reading, uvicorn's keepalive (40 s after they
    opened) or the send deadline once the server's buffers for them are full, whichever first; trickling, the
    longer of --stream-idle and --stream-rate-window after they opened; flooding, --stream-idle after the server has
    decoded what they sent (they fall silent then, unended, still reading). MARGIN_S later the open streams are
    read from /metrics (every hostile socket still open), then polled until none is left."""
    idle_s, window_s = STREAM_OPTIONS["--stream-idle"], STREAM_OPTIONS["--stream-rate-window"]
    n = args.ws_clients
    before = await server.metrics()
    peak.reset()
    pcm = b""
    if kind == "non-reading":
        pcm = pcm16(long_wave(waves, 60))
    elif kind == "flooding":
        pcm = pcm16(long_wave(waves, args.long_minutes * 60))
    hostile = HostileClients(kind, server.port, n, pcm)
    opened = time.monotonic()
    while time.monotonic() < opened + 60:  # every hostile client connected (or failed to)
        report = await hostile.ask("report")
        if report["connected"] + len(report["errors"]) >= n:
            break
        await asyncio.sleep(0.1)
    deadline = {"non-reading": opened + UVICORN_PING_S, "trickling": opened + max(idle_s, window_s)}.get(kind, 0.0)
    honest = {**client_stats(), "attempts": 0}
    stop = max(time.monotonic() + args.ws_duration, deadline)

    async def user(i: int) -> None:
        k = i
        while time.monotonic() < stop:
            honest["attempts"] += 1
            await realtime_client(server.url, waves[k % len(waves)], honest, index=k)
            k += args.ws_honest

    await asyncio.gather(*(user(i) for i in range(args.ws_honest)))
    backlog_s = catch_up_s = None
    if kind == "flooding":
        stopped = time.monotonic()
        report = await hostile.ask("stop")
        backlog_s = max(f["sent_s"] - f["decoded_s"] for f in report["each"])
        while time.monotonic() < stopped + 90:  # the server decodes what the flooders sent before they stopped
            report = await hostile.ask("report")
            if all(f["closed"] or f["decoded_s"] >= f["sent_s"] - 3 for f in report["each"]):
                break
            await asyncio.sleep(0.5)
        catch_up_s = time.monotonic() - stopped
        deadline = time.monotonic() + idle_s
    await asyncio.sleep(max(0.0, deadline + MARGIN_S - time.monotonic()))
    after = await server.metrics()
    held = int(after.get("korasr_streams_active", -1))
    released_s = 0.0 if held == 0 else None
    while held and time.monotonic() < deadline + 120:
        await asyncio.sleep(0.5)
        if (await server.metrics()).get("korasr_streams_active") == 0:
            released_s = time.monotonic() - deadline
            break
    stats = await hostile.ask("close")
    ended = Counter(how for how, _ in stats["ended"]) + Counter(stats["closes"])
    times = sorted(t for _, t in stats["ended"])
    return {
        "kind": kind, "clients": n, "peak_above_idle_mb": round(peak.peak - idle, 1),
        "held_after_deadline": held, "all_released_s_after_deadline": released_s,
        "honest_served": len(honest["final"]), "honest_attempts": honest["attempts"],
        "honest_final_p99_ms": round(pct(honest["final"], 99)), "honest_errors": honest["errors"][:3],
        "closes": grew(labelled(before, "korasr_stream_closes_total"), labelled(after, "korasr_stream_closes_total")),
        "send_timeouts": grew(labelled(before, "korasr_send_timeouts_total"),
                              labelled(after, "korasr_send_timeouts_total")),
        "hostile_ended": dict(ended), "hostile_reasons": stats["reasons"], "hostile_open_at_end": stats["open"],
        "hostile_end_s": [round(times[0], 1), round(times[len(times) // 2], 1), round(times[-1], 1)] if times else None,
        "flood_sent_s": round(sum(f["sent_s"] for f in stats["each"])) if kind == "flooding" else None,
        "flood_backlog_s": None if backlog_s is None else round(backlog_s, 1),
        "flood_catch_up_s": None if catch_up_s is None else round(catch_up_s, 1),
        "hostile_errors": stats["errors"][:3], "same_process": server.proc.poll() is None,
    }  # fmt: skip


async def stream_section(args: argparse.Namespace, report: dict) -> dict[str, bool]:
    """Section 4: non-reading, trickling and flooding WebSocket clients beside honest real-time ones."""
    export, why = streaming_export(args)
    if export is None:
        print(f"4. hostile WebSocket clients: skipped ({why})", flush=True)
        report["streams"] = {"skipped": why}
        return {}
    waves = read_utterances(Path(args.manifest), args.limit)[1]
    options = [str(x) for pair in STREAM_OPTIONS.items() for x in pair]
    server = Server(export, *options)
    phases = []
    try:
        await asyncio.to_thread(server.ready)
        warm = client_stats()
        await realtime_client(server.url, waves[0], warm, speed=4)
        await asyncio.sleep(1)
        idle = rss_mb(server.proc.pid)
        peak = RSSSampler(server.proc.pid)
        print(f"4. hostile WebSocket clients ({export}); server {' '.join(options)}, the rest at its defaults; "
              f"{args.ws_clients} hostile clients of each kind beside {args.ws_honest} honest real-time clients for "
              f"{args.ws_duration:g} s; idle RSS {idle:.0f} MB", flush=True)  # fmt: skip
        for kind in ("non-reading", "trickling", "flooding"):
            phase = await stream_phase(server, kind, args, waves, peak, idle)
            phases.append(phase)
            flood = (f"; flooders sent {phase['flood_sent_s']} s of audio, {phase['flood_backlog_s']} s of it (the "
                     f"most for one) not yet decoded when they stopped, decoded {phase['flood_catch_up_s']} s later"
                     if kind == "flooding" else "")  # fmt: skip
            when = ("" if phase["hostile_end_s"] is None else
                    f" after {'/'.join(map(str, phase['hostile_end_s']))} s (first/median/last)")  # fmt: skip
            print(f"   {kind}: peak +{phase['peak_above_idle_mb']} MB; streams held {MARGIN_S:g} s after the "
                  f"deadline {phase['held_after_deadline']} (none left {phase['all_released_s_after_deadline']} s "
                  f"after it); honest {phase['honest_served']}/{phase['honest_attempts']} served, final p99 "
                  f"{phase['honest_final_p99_ms']} ms; server closes {phase['closes']}, send timeouts "
                  f"{phase['send_timeouts']}; as the hostile clients saw it {phase['hostile_ended']}{when}, "
                  f"reasons {phase['hostile_reasons']}, still open {phase['hostile_open_at_end']}{flood}",
                  flush=True)  # fmt: skip
            for error in phase["honest_errors"] + phase["hostile_errors"]:
                print(f"      error: {error}")
        peak.stop()
    finally:
        server.stop()
    report["streams"] = {"export": str(export), "server_options": STREAM_OPTIONS, "idle_rss_mb": round(idle, 1),
                         "phases": phases}  # fmt: skip
    print(f"\n   {'clients (' + str(args.ws_clients) + ' each)':<20} {'peak RSS over idle':>18} {'held after deadline':>19} "
          f"{'honest served':>13}  server closes (korasr_stream_closes_total)")  # fmt: skip
    for p in phases:
        served = f"{p['honest_served']}/{p['honest_attempts']}"
        closes = ", ".join(f"{k} × {v}" for k, v in p["closes"].items())
        print(f"   {p['kind']:<20} {'+' + str(p['peak_above_idle_mb']) + ' MB':>18} {p['held_after_deadline']:>19} "
              f"{served:>13}  {closes}")  # fmt: skip
    targets = {}
    for p in phases:
        targets[f"{p['kind']} clients: no stream held after the deadline"] = p["held_after_deadline"] == 0
        targets[f"{p['kind']} clients: every honest stream served"] = p["honest_served"] == p["honest_attempts"] > 0
        targets[f"{p['kind']} clients: no 1011, same server process"] = "1011" not in p["closes"] and p["same_process"]
        targets[f"{p['kind']} clients: ≤ idle + 1 GB"] = p["peak_above_idle_mb"] <= 1024
    return targets


async def main_async(args: argparse.Namespace) -> dict:
    report: dict = {"export": str(args.export), "sections": sorted(args.sections)}
    targets: dict[str, bool] = {}
    if 0 in args.sections:
        print("0. accuracy of chunked decoding (in-process)", flush=True)
        report["chunking"] = chunk_accuracy(Path(args.export), Path(args.manifest))
        for row in report["chunking"]:
            print(f"   {row['decoding']:<12} CER {row['cer']:5.2f}%  ({row['files']} files, {row['seconds']} s)")
    if args.sections & {1, 2, 3}:
        targets.update(await http_sections(args, report))
    if 4 in args.sections:
        targets.update(await stream_section(args, report))
    report["targets"] = targets
    print()
    for name, ok in targets.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    export = newest("exp/sample/*/*/export/model.json")
    parser.add_argument("--export", default=str(export.parent) if export else None,
                        help="any export (a streaming one too: it has model.onnx)")  # fmt: skip
    parser.add_argument("--manifest", default=str(ROOT / "manifests/sample/eval_clean.jsonl"))
    parser.add_argument("--sections", type=lambda s: {int(x) for x in s.split(",")}, default={0, 1, 2, 3, 4},
                        help="which to run, e.g. 1,4 (default: 0,1,2,3,4; 2 and 3 run after 1)")  # fmt: skip
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--hostile", type=int, default=32)
    parser.add_argument("--legit", type=int, default=4)
    parser.add_argument("--streaming-export", default=None,
                        help="section 4's export (default: --export if it has streaming/ graphs, else the newest "
                        "streaming export); without one section 4 is skipped, saying so")  # fmt: skip
    parser.add_argument("--ws-clients", type=int, default=16, help="section 4: hostile clients of each kind")
    parser.add_argument("--ws-honest", type=int, default=4, help="section 4: honest real-time clients")
    parser.add_argument("--ws-duration", type=float, default=20.0, help="section 4: seconds of honest streams per kind")
    parser.add_argument("--long-minutes", type=float, default=5.0, help="section 4: each flooder's file, in minutes")
    parser.add_argument("--limit", type=int, default=60, help="section 4: eval utterances the clients stream")
    args = parser.parse_args()
    if not args.export and args.sections & {0, 1, 2, 3}:
        parser.error("no export: run make train && make export, or pass --export")
    report = asyncio.run(main_async(args))
    out = OUT / "serve_hostile.json"
    write_json(out, report)
    print(f"wrote {out}")
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
