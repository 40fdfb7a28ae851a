"""A service that follows the registry, under load while its alias moves (issue 24): 16 HTTP clients in a loop and
4 real-time WebSocket streams against `korasr serve --model models:/NAME@production --follow 1`, while production
moves twice (a promotion, then a rollback). Measured: failed requests, dropped streams, p99 latency during the swaps
against steady state (the same load before any move), and the server's RSS after the swaps against before them.
Targets: zero failures, zero drops, p99 within 2× of steady state, RSS back to one model's footprint.

The registry is a temporary SQLite store; the export (a streaming one, so that streams run too) is registered three
times, as versions 1, 2 and 3 (the same files: what is measured is the swap, not a different model).

    python bench/registry_swap.py [--export DIR] [--manifest M] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, ROOT, RSSSampler, Server, newest, pct, read_utterances, rss_mb, write_json
from stream_clients import client, client_stats


async def http_load(base: str, wav: bytes, stop: asyncio.Event, latencies: list, failures: list) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=60) as c:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                r = await c.post(f"{base}/v1/transcribe", files={"audio": ("a.wav", wav, "audio/wav")})
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text[:100]}")
                else:
                    latencies.append((started, time.perf_counter() - started))
            except Exception as e:  # counted: the bench reports failures
                failures.append(f"{type(e).__name__}: {e}"[:200])


async def streams(url: str, waves: list, stop: asyncio.Event, stats: dict) -> None:
    index = 0
    while not stop.is_set():
        await asyncio.gather(*(client(url, waves[(index + i) % len(waves)], stats, index=index + i) for i in range(4)))
        index += 4


async def phase(server: Server, wav: bytes, waves: list, seconds: float, during=None) -> dict:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    latencies: list = []
    failures: list = []
    stats = client_stats()
    tasks = [asyncio.create_task(http_load(server.http, wav, stop, latencies, failures)) for _ in range(16)]
    tasks.append(asyncio.create_task(streams(server.url, waves, stop, stats)))
    marks = await during() if during else None
    if not during:
        await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "failures": failures, "streams": stats, "marks": marks}


ADMIN_KEY = "bench-operator-key-" + "0" * 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, default=newest("exp/sample/*/run/export/streaming/streaming.json"))
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests" / "sample" / "eval_clean.jsonl")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    export = args.export.parent.parent if args.export and args.export.name == "streaming.json" else args.export
    if export is None or not (export / "model.json").is_file():
        raise SystemExit("no export: make train STREAMING=1 && make export (or --export DIR)")
    store = Path(tempfile.mkdtemp(prefix="korasr-swap-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["KORASR_REGISTRY_CACHE"] = str(store / "cache")
    os.environ["KORASR_ADMIN_KEY"] = ADMIN_KEY  # /admin/status names the version served
    from korasr import registry
    from korasr.data.audio import SAMPLE_RATE

    for _ in range(3):
        registry.register(export, "ko-swap")
    registry.promote("ko-swap", 1)
    _, waves = read_utterances(args.manifest, 40)
    import io

    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, waves[0], SAMPLE_RATE, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()

    server = Server("models:/ko-swap@production", "--follow", "1", "--max-streams", "16")
    try:
        server.ready()

        async def run() -> dict:
            steady = await phase(server, wav, waves, args.seconds)
            rss_before = rss_mb(server.proc.pid)

            async def moves() -> list:
                import httpx

                marks = []
                for move in (lambda: registry.promote("ko-swap", 2), lambda: registry.rollback("ko-swap")):
                    started = time.perf_counter()
                    await asyncio.to_thread(move)
                    want = registry.show("ko-swap", alias="production").version
                    async with httpx.AsyncClient(timeout=10, headers={"X-API-Key": ADMIN_KEY}) as c:
                        status = server.http + "/admin/status"
                        while (await c.get(status)).json().get("registered", {}).get("version") != want:
                            await asyncio.sleep(0.1)
                        while "finishing_on_previous" in (await c.get(status)).json():
                            await asyncio.sleep(0.1)
                    marks.append((started, time.perf_counter()))
                    await asyncio.sleep(2)
                return marks

            sampler = RSSSampler(server.proc.pid, 0.05)
            swapping = await phase(server, wav, waves, args.seconds, during=moves)
            sampler.stop()
            await asyncio.sleep(2)
            return {"steady": steady, "swapping": swapping, "rss_before": rss_before, "rss_peak": sampler.peak,
                    "rss_after": rss_mb(server.proc.pid)}  # fmt: skip

        result = asyncio.run(run())
    finally:
        server.stop()

    steady_lat = [d for _, d in result["steady"]["latencies"]]
    marks = result["swapping"]["marks"]
    during = [d for t, d in result["swapping"]["latencies"] if any(a - 1 <= t <= b for a, b in marks)]
    p99_steady, p99_swap = pct(steady_lat, 99), pct(during or [0.0], 99)
    s_steady, s_swap = result["steady"]["streams"], result["swapping"]["streams"]
    failed = len(result["steady"]["failures"]) + len(result["swapping"]["failures"])
    dropped = len(s_steady["errors"]) + len(s_swap["errors"])
    print(f"steady: {len(steady_lat)} requests, p99 {p99_steady:.0f} ms; {len(s_steady['final'])} streams")
    print(f"swaps (promote, rollback): {[round(b - a, 1) for a, b in marks]} s each from the move to the old model's "
          f"release; {len(during)} requests during them, p99 {p99_swap:.0f} ms "
          f"({p99_swap / max(p99_steady, 1e-9):.2f}× steady; target ≤ 2×); {len(s_swap['final'])} streams")  # fmt: skip
    print(
        f"failed requests {failed} (target 0), dropped streams {dropped} (target 0): "
        f"{(result['steady']['failures'] + result['swapping']['failures'] + s_steady['errors'] + s_swap['errors'])[:3]}"
    )
    print(
        f"RSS before the swaps {result['rss_before']:.0f} MB, peak during them {result['rss_peak']:.0f} MB, "
        f"after {result['rss_after']:.0f} MB "
        f"({result['rss_after'] - result['rss_before']:+.0f} MB; target: one model's footprint)"
    )
    write_json(OUT / "registry_swap.json", {
        "p99_steady_ms": p99_steady, "p99_swap_ms": p99_swap, "ratio": p99_swap / max(p99_steady, 1e-9),
        "requests_steady": len(steady_lat), "requests_during_swaps": len(during), "failed_requests": failed,
        "dropped_streams": dropped, "streams": len(s_steady["final"]) + len(s_swap["final"]),
        "swap_seconds": [b - a for a, b in marks], "rss_before_mb": result["rss_before"],
        "rss_peak_mb": result["rss_peak"], "rss_after_mb": result["rss_after"],
    })  # fmt: skip
    return 0 if failed == 0 and dropped == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
