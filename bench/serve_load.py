"""Loopback load on `korasr serve`: batched (micro-batching on) vs unbatched (--max-batch 1), same run.

Starts each server as its own process on 127.0.0.1, sends 5 s clips (sample eval utterances joined) from 1, 8
and 32 concurrent clients, and prints req/s, p50/p99 latency, errors and the server's RSS; then 2,000 requests
to the batched server with its RSS sampled along the way (memory growth). Targets on 2 cores: zero errors,
batched throughput at 32 clients ≥ 2× the unbatched server's, no memory growth. It first times the model alone
at batch 1 and 8 (no server): the bound on what batching can win on this machine.

    python bench/serve_load.py [--export exp/sample/.../export] [--requests 200] [--soak 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, add_export_options, encode, export_of, joined_utterances, pct, read_wave, rss_mb


def clip_5s(manifest: Path) -> bytes:
    """Eval utterances joined up to 5 s, as a 16-bit WAV file."""
    return encode(joined_utterances(manifest, 5)[0][: 5 * 16000], 16000, "WAV", subtype="PCM_16")


async def load(url: str, body: bytes, clients: int, requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal errors
        for _ in counter:
            start = time.perf_counter()
            try:
                r = await c.post(url + "/v1/transcribe", files={"audio": ("clip.wav", body, "audio/wav")})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        start = time.perf_counter()
        await asyncio.gather(*[client(c) for _ in range(clients)])
        wall = time.perf_counter() - start
    return {"rps": requests / wall, "p50": pct(latencies, 50), "p99": pct(latencies, 99), "errors": errors}


def model_only(export: Path, body: bytes) -> dict[int, float]:
    """Milliseconds of onnxruntime per 5 s clip at batch 1 and 8, in this process, with the server's threads: the
    ceiling any server reaches (no HTTP, no audio decoding, no client on the same cores)."""
    from korasr.runtime import Recognizer

    rec = Recognizer(export)
    wave = read_wave(io.BytesIO(body))
    out = {}
    for batch in (1, 8):
        rec.logprobs([wave] * batch)
        start = time.perf_counter()
        for _ in range(64 // batch):
            rec.logprobs([wave] * batch)
        out[batch] = (time.perf_counter() - start) * 1000 / 64
    return out


async def main_async(args: argparse.Namespace) -> int:
    body = clip_5s(args.manifest)
    ceiling = model_only(args.export, body)
    print(f"model only: {ceiling[1]:.1f} ms per 5 s clip at batch 1, {ceiling[8]:.1f} ms at batch 8 "
          f"(at most {1000 / ceiling[8]:.0f} req/s batched)")  # fmt: skip
    results: dict[str, dict[int, dict]] = {}
    for label, max_batch in (("unbatched", 1), ("batched", 8)):
        server = Server(args.export, "--max-batch", str(max_batch), "--queue-size", "256")
        try:
            await asyncio.to_thread(server.ready)
            await load(server.http, body, 4, 8)  # warm-up
            results[label] = {}
            for clients in (1, 8, 32):
                r = await load(server.http, body, clients, args.requests)
                r["rss"] = rss_mb(server.proc.pid)
                results[label][clients] = r
                print(f"{label:<10} {clients:>3} clients: {r['rps']:6.1f} req/s  p50 {r['p50']:7.1f} ms  "
                      f"p99 {r['p99']:7.1f} ms  errors {r['errors']}  RSS {r['rss']:.0f} MB", flush=True)  # fmt: skip
            if label == "batched":
                samples = [rss_mb(server.proc.pid)]
                for _ in range(args.soak // 200):
                    r = await load(server.http, body, 32, 200)
                    samples.append(rss_mb(server.proc.pid))
                    if r["errors"]:
                        print(f"soak: {r['errors']} errors")
                print("RSS over " + f"{args.soak} requests (MB): " + " ".join(f"{s:.0f}" for s in samples))
                print(f"growth after the first 400 requests: {samples[-1] - samples[min(2, len(samples) - 1)]:+.1f} MB")
        finally:
            server.stop()
    ratio = results["batched"][32]["rps"] / results["unbatched"][32]["rps"]
    print(f"\nbatched / unbatched throughput at 32 clients: {ratio:.2f}× (target ≥ 2×)")
    bound = 1000 / ceiling[8] / results["unbatched"][32]["rps"]
    print(
        f"the model alone at batch 8 / the unbatched server at 32 clients: {bound:.2f}× (what batching could at"
        " most reach here, with zero HTTP, decoding and client cost)"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_options(parser)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--soak", type=int, default=2000)
    args = parser.parse_args()
    args.export = export_of(args)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
