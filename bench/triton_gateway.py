"""`korasr serve --triton` (the gateway, the graph in Triton) against `korasr serve` in-process, and Triton alone.

One run on one machine: a python-backend repository written from the export (korasr triton-repository), make
triton's tritonserver over it on loopback, then 5 s clips from 1, 8 and 32 concurrent clients:

- the in-process service (onnxruntime in the service's process, micro-batching on);
- the gateway in front of Triton (the same service; each batch's graph run by Triton over gRPC);
- Triton alone: concurrent tritonclient gRPC requests straight at the `korasr_asr` ensemble (no HTTP front, no
  upload decoding: what the model costs through Triton). PyPI's `perf-analyzer` is not Triton's perf_analyzer, and
  tritonclient's wheel no longer ships it, so the same load comes from Python threads here.

Printed: req/s, p50/p99 latency and errors per row, and the ratios gateway / in-process and Triton alone /
in-process at each concurrency. On 2 CPU cores the three share the cores with the clients; Triton's dynamic
batching is meant for a GPU, where one batch costs about what one request does: read the CPU ratios as the cost of
the extra hop, not as Triton's speed.

    python bench/triton_gateway.py [--export exp/sample/.../export] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import io
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Server, add_export_options, export_of, free_port, pct, read_wave
from serve_load import clip_5s, load


def start_triton(export: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    from korasr.triton import write_repository

    repo = write_repository(export, tmp / "repository", backend="python")
    http, grpc, metrics = free_port(), free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "korasr.triton_server", "--repository", str(repo), "--http-port",
                             str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {proc.returncode} (make triton first)")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, grpc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("tritonserver did not become ready")


def triton_alone(grpc_port: int, wave, clients: int, requests: int) -> dict:  # type: ignore[no-untyped-def]
    import numpy as np
    import tritonclient.grpc as grpc

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        nonlocal errors
        with grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c:
            inputs = [
                grpc.InferInput("audio", [1, len(wave)], "FP32"),
                grpc.InferInput("audio_length", [1, 1], "INT64"),
            ]
            inputs[0].set_data_from_numpy(wave[None].astype(np.float32))
            inputs[1].set_data_from_numpy(np.array([[len(wave)]], dtype=np.int64))
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                start = time.perf_counter()
                try:
                    c.infer("korasr_asr", inputs, client_timeout=120)
                    ok = True
                except Exception:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    return {"rps": requests / wall, "p50": pct(latencies, 50), "p99": pct(latencies, 99), "errors": errors}


def row(label: str, clients: int, r: dict) -> None:
    print(f"{label:<12} {clients:>3} clients: {r['rps']:6.1f} req/s  p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  "
          f"errors {r['errors']}", flush=True)  # fmt: skip


async def main_async(args: argparse.Namespace) -> int:
    body = clip_5s(args.manifest)
    wave = read_wave(io.BytesIO(body))
    results: dict[str, dict[int, dict]] = {"in-process": {}, "gateway": {}, "triton alone": {}}
    with tempfile.TemporaryDirectory(prefix="korasr-bench-triton-") as tmp:
        triton, grpc_port = start_triton(args.export, Path(tmp))
        try:
            for label, options in (("in-process", ()), ("gateway", ("--triton", f"127.0.0.1:{grpc_port}"))):
                server = Server(args.export, "--queue-size", "256", *options)
                try:
                    await asyncio.to_thread(server.ready)
                    await load(server.http, body, 4, 8)  # warm-up
                    for clients in (1, 8, 32):
                        results[label][clients] = r = await load(server.http, body, clients, args.requests)
                        row(label, clients, r)
                finally:
                    server.stop()
            triton_alone(grpc_port, wave, 4, 8)  # warm-up
            for clients in (1, 8, 32):
                results["triton alone"][clients] = r = await asyncio.to_thread(triton_alone, grpc_port, wave, clients,
                                                                               args.requests)  # fmt: skip
                row("triton alone", clients, r)
        finally:
            triton.terminate()
            triton.wait(60)
    print()
    for clients in (1, 8, 32):
        base = results["in-process"][clients]["rps"]
        print(f"{clients:>3} clients: gateway / in-process {results['gateway'][clients]['rps'] / base:.2f}×, "
              f"Triton alone / in-process {results['triton alone'][clients]['rps'] / base:.2f}× (throughput)")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_options(parser)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    args.export = export_of(args)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
