"""Streaming on CPU, one run, same export and audio: korasr's streaming runtime vs sherpa-onnx's online recognizer,
then korasr serve's WebSocket under 1, 8 and 32 real-time clients and one long stream.

1. In process (``--threads``, default 2): each eval utterance streamed alone in 100 ms pieces; compute per chunk
   (one encoder call: p50 / p99), RTFx, CER; then N streams advanced together (korasr: one batched ``step``;
   sherpa-onnx: ``decode_streams``) for N = 1, 2, 4, … : the largest N whose p99 compute per chunk stays below the
   chunk's duration (N live streams in real time on this machine).
2. Over the WebSocket (``korasr serve`` in a subprocess): C clients each stream an utterance in real time (100 ms
   frames), then ``{"type": "end"}``: end of speech → final (p50 / p99), interval between partials, errors, the
   server's RSS; then one long stream (``--long-minutes``, default 10, fed at ``--long-speed`` × real time) with the
   RSS sampled along it (flat = bounded memory).
3. Flooding (``--flood``, on by default; before the long stream): ``--flood-clients`` (8) real-time clients, each
   streaming ``--flood-rounds`` utterances one after another, alone; then the same beside ``--flooders`` (4)
   clients that each push a ``--long-minutes`` file of eval speech as fast as the server reads it (and read their
   results), from before the first real-time client starts until the last is done. End of speech → final p99 of
   both runs and their ratio.

Targets (issue 14): korasr ≥ 1.0× sherpa-onnx's concurrent streams; final p99 ≤ look-ahead + 200 ms at 8 clients;
zero errors; flat memory. Issue 22: the final p99 beside 4 flooders within 2× of the same clients alone.

    python bench/streaming.py [--export exp/sample/<run>/export] [--limit 60] [--clients 1,8,32] [--no-flood]
        [--no-in-process] [--long-minutes 10]

At a deployed size (issue 38), ``--size small|medium|large`` (``make bench-streaming SIZE=medium``): the cache-aware
FastConformer of ``conf/size/SIZE.yaml`` + ``conf/streaming.yaml``, seeded and untrained (speed does not depend on
training; its CER means nothing), exported once per trained look-ahead under ``bench/out/streaming-SIZE/``; parts 1
and 2 at each look-ahead (the WebSocket at 1 and 8 clients; flooding and the long stream only when asked), a table,
and ``bench/out/streaming-SIZE.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    OUT,
    ROOT,
    RSSSampler,
    Server,
    audio_seconds,
    cpu_seconds,
    export_code_sha,
    long_wave,
    newest,
    pcm16,
    pct,
    read_utterances,
    write_json,
)
from peers import sherpa_online
from stream_clients import PIECE_S, HostileClients, client, client_stats


def newest_export() -> Path:
    found = newest("exp/sample/*streaming*/*/export/streaming/streaming.json")
    if found is None:
        raise SystemExit("no streaming export: make train STREAMING=1 && make export")
    return found.parent.parent


def encoder_calls(metrics: dict[str, float]) -> tuple[float, float, float]:
    """From /metrics: streaming encoder calls so far, the seconds they took, and the streams they stepped."""
    return (metrics.get("korasr_stream_chunk_seconds_count", 0.0), metrics.get("korasr_stream_chunk_seconds_sum", 0.0),
            metrics.get("korasr_stream_batch_size_sum", 0.0))  # fmt: skip


def korasr_single(model, waves: list[np.ndarray]) -> dict:  # type: ignore[no-untyped-def]
    chunks, texts, total = [], [], 0.0
    piece = int(PIECE_S * 16000)
    original = model.step

    def timed(streams):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = original(streams)
        if out:
            chunks.append(time.perf_counter() - start)
        return out

    model.transcribe(waves[0], piece_seconds=PIECE_S)  # warm-up, untimed
    model.step = timed
    try:
        for wave in waves:
            stream = model.stream(endpoint=None)
            start = time.perf_counter()
            for i in range(0, len(wave), piece):
                stream.accept(wave[i : i + piece])
                model.run([stream])
            stream.finish()
            model.run([stream])
            total += time.perf_counter() - start
            texts.append(stream.text())
    finally:
        model.step = original
    return {"chunks": chunks, "total": total, "texts": texts}


def sherpa_single(recognizer, waves: list[np.ndarray], unit: str) -> dict:  # type: ignore[no-untyped-def]
    from korasr.text.codec import from_model_text

    chunks, texts, total = [], [], 0.0
    piece = int(PIECE_S * 16000)

    def decode_ready(stream) -> None:  # type: ignore[no-untyped-def]
        """Every window the stream has ready, each call timed."""
        while recognizer.is_ready(stream):
            t = time.perf_counter()
            recognizer.decode_stream(stream)
            chunks.append(time.perf_counter() - t)

    warm = recognizer.create_stream()  # warm-up, untimed
    warm.accept_waveform(16000, np.concatenate([waves[0], np.zeros(16000, np.float32)]))
    while recognizer.is_ready(warm):
        recognizer.decode_stream(warm)
    for wave in waves:
        stream = recognizer.create_stream()
        start = time.perf_counter()
        padded = np.concatenate([wave, np.zeros(int(0.8 * 16000), np.float32)])  # sherpa decodes whole windows
        for i in range(0, len(padded), piece):
            stream.accept_waveform(16000, padded[i : i + piece])
            decode_ready(stream)
        stream.input_finished()
        decode_ready(stream)
        total += time.perf_counter() - start
        text = recognizer.get_result(stream).replace("▁", " ").strip()
        texts.append(from_model_text(text, unit))
    return {"chunks": chunks, "total": total, "texts": texts}


def korasr_concurrent(model, wave: np.ndarray, n: int, steps: int = 12) -> list[float]:  # type: ignore[no-untyped-def]
    """Compute per batched step with ``n`` streams, each given one chunk of audio per step."""
    chunk = int(model.chunk_seconds * 16000)
    streams = [model.stream(endpoint=None) for _ in range(n)]
    times = []
    for k in range(steps + 2):
        piece = np.resize(wave, (k + 1) * chunk)[k * chunk :]
        start = time.perf_counter()
        for s in streams:
            s.accept(piece)
        model.step(streams)
        if k >= 2:  # the first steps fill the buffers
            times.append(time.perf_counter() - start)
    return times


def sherpa_concurrent(recognizer, wave: np.ndarray, n: int, chunk_s: float, steps: int = 12) -> list[float]:  # type: ignore[no-untyped-def]
    chunk = int(chunk_s * 16000)
    streams = [recognizer.create_stream() for _ in range(n)]
    times = []
    for k in range(steps + 3):
        piece = np.resize(wave, (k + 1) * chunk)[k * chunk :]
        start = time.perf_counter()
        for s in streams:
            s.accept_waveform(16000, piece)
        ready = [s for s in streams if recognizer.is_ready(s)]
        if ready:
            recognizer.decode_streams(ready)
        if k >= 3:
            times.append(time.perf_counter() - start)
    return times


def sustained(measure, chunk_s: float, limit: int = 2048) -> tuple[int, dict[int, float]]:  # type: ignore[no-untyped-def]
    best, table, n = 0, {}, 1
    while n <= limit:
        p99 = pct(measure(n), 99) / 1000
        table[n] = p99
        if p99 >= chunk_s:
            break
        best, n = n, n * 2
    if best and best < limit:  # refine between best and 2 × best
        lo, hi = best, min(2 * best, limit)
        while hi - lo > max(1, lo // 8):
            mid = (lo + hi) // 2
            p99 = pct(measure(mid), 99) / 1000
            table[mid] = p99
            lo, hi = (mid, hi) if p99 < chunk_s else (lo, mid)
        best = lo
    return best, table


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}%"


def cer(refs: list[str], hyps: list[str]) -> float:
    from korasr import metrics

    return metrics.cer([unicodedata.normalize("NFC", r) for r in refs], hyps)


# --- the WebSocket ---------------------------------------------------------------------------------------------


async def realtime_clients(url: str, waves: list[np.ndarray], clients: int, rounds: int) -> dict:
    """``clients`` real-time clients at once, each streaming ``rounds`` utterances one after another (a connection
    each): the stats of :func:`client`, texts by utterance index."""
    stats = client_stats()

    async def one(i: int) -> None:
        for r in range(rounds):
            k = i * rounds + r
            await client(url, waves[k % len(waves)], stats, index=k)

    await asyncio.gather(*(one(i) for i in range(clients)))
    return stats


async def flood_bench(server: Server, waves: list[np.ndarray], refs: list[str], args) -> dict:  # type: ignore[no-untyped-def]
    """Issue 22: the real-time clients' end of speech → final p99 beside flooding clients within 2× of the same
    clients alone. Alone first, then with ``--flooders`` clients each pushing a ``--long-minutes`` file (looped)
    as fast as the server reads it from before the first real-time client starts until the last one is done."""

    def summary(stats: dict) -> dict:
        done = sorted(stats["texts"])
        return {"finals": len(stats["final"]), "final_p50_ms": pct(stats["final"], 50),
                "final_p99_ms": pct(stats["final"], 99), "errors": len(stats["errors"]),
                "cer": cer([refs[i % len(refs)] for i in done], [stats["texts"][i] for i in done]) if done else None,
                "error_examples": stats["errors"][:3]}  # fmt: skip

    async def measured(job) -> dict:  # type: ignore[no-untyped-def]
        """``job``'s summary with what the server did meanwhile: its CPU (cores), encoder calls, their mean time
        and mean batch."""
        before, cpu, started = encoder_calls(await server.metrics()), cpu_seconds(server.proc.pid), time.monotonic()
        out = summary(await job)
        wall = time.monotonic() - started
        after = encoder_calls(await server.metrics())
        calls, seconds, streams = (a - b for a, b in zip(after, before, strict=True))
        out.update(server_cores=(cpu_seconds(server.proc.pid) - cpu) / wall, encoder_calls=calls,
                   encoder_ms=1000 * seconds / max(calls, 1), batch=streams / max(calls, 1))  # fmt: skip
        return out

    def server_side(r: dict) -> str:
        return (f"server: {r['server_cores']:.2f} cores busy, {r['encoder_calls']:.0f} encoder calls of "
                f"{r['encoder_ms']:.0f} ms and {r['batch']:.1f} streams on average")  # fmt: skip

    n, rounds = args.flood_clients, args.flood_rounds
    alone = await measured(realtime_clients(server.url, waves, n, rounds))
    print(f"  {n} real-time clients × {rounds} utterances, alone: end of speech → final p50 "
          f"{alone['final_p50_ms']:.0f} ms, p99 {alone['final_p99_ms']:.0f} ms ({alone['finals']} finals); errors "
          f"{alone['errors']}; CER {percent(alone['cer'])}; {server_side(alone)}", flush=True)  # fmt: skip
    audio = pcm16(long_wave(waves, args.long_minutes * 60))
    flooders = HostileClients("flooding", server.port, args.flooders, audio, end=True)
    waited = time.monotonic() + 60
    while time.monotonic() < waited:  # every flooder under way
        report = await flooders.ask("report")
        if len(report["each"]) == args.flooders and min(f["sent_s"] for f in report["each"]) >= 4:
            break
        await asyncio.sleep(0.2)
    decoded = sum(f["decoded_s"] for f in report["each"])
    flooders_cpu = cpu_seconds(flooders.proc.pid)
    started = time.perf_counter()
    rss = RSSSampler(server.proc.pid, 0.2)
    beside = await measured(realtime_clients(server.url, waves, n, rounds))
    wall = time.perf_counter() - started
    flooders_cpu = (cpu_seconds(flooders.proc.pid) - flooders_cpu) / wall
    rss.stop()
    report = await flooders.ask("stop")
    decoded = sum(f["decoded_s"] for f in report["each"]) - decoded
    still_flooding = report["connected"] - sum(report["closes"].values())
    flooded = await flooders.ask("close")
    ratio = beside["final_p99_ms"] / alone["final_p99_ms"]
    out = {"clients": n, "rounds": rounds, "flooders": args.flooders, "flood_file_s": len(audio) / 32000,
           "flood_x_real_time": decoded / wall, "flooders_cores": flooders_cpu, "flooders_throughout": still_flooding, "flooder_closes": flooded["closes"],
           "flooder_errors": flooded["errors"][:3], "alone": alone, "beside_flooders": beside, "p99_ratio": ratio,
           "rss_mb": rss.peak, "met": ratio <= 2.0}  # fmt: skip
    print(f"  the same beside {args.flooders} flooders (a {args.long_minutes:g}-minute file each, looped; "
          f"decoded at {out['flood_x_real_time']:.0f}× real time together, {still_flooding} still flooding at the end; "
          f"their process {flooders_cpu:.2f} cores): "
          f"final "
          f"p50 {beside['final_p50_ms']:.0f} ms, p99 {beside['final_p99_ms']:.0f} ms ({beside['finals']} finals); "
          f"errors {beside['errors']}; CER {percent(beside['cer'])}; flooders closed {flooded['closes']}, errors "
          f"{len(flooded['errors'])}; server RSS {out['rss_mb']:.0f} MB; {server_side(beside)}", flush=True)  # fmt: skip
    print(
        f"  final p99 beside flooders / alone: {ratio:.2f}× (target ≤ 2×): {'PASS' if out['met'] else 'FAIL'}",
        flush=True,
    )
    return out


async def websocket_bench(export: Path, waves: list[np.ndarray], refs: list[str], args) -> dict:  # type: ignore[no-untyped-def]
    server = Server(export, "--threads", str(args.threads), "--decoder", "greedy")  # as sherpa-onnx decodes
    out = {}
    try:
        await asyncio.to_thread(server.ready)
        for clients in args.clients:
            stats = client_stats()
            chosen = [waves[i % len(waves)] for i in range(clients)]
            rss = RSSSampler(server.proc.pid, 0.2)
            await asyncio.gather(*(client(server.url, w, stats, index=i) for i, w in enumerate(chosen)))
            rss.stop()
            done = sorted(stats["texts"])
            texts = [stats["texts"][i] for i in done]
            out[clients] = {
                "final_p50_ms": pct(stats["final"], 50), "final_p99_ms": pct(stats["final"], 99),
                "partial_interval_p50_ms": pct(stats["partials"], 50), "errors": len(stats["errors"]),
                "rss_mb": rss.peak, "cer": cer([refs[i % len(refs)] for i in done], texts) if texts else None,
                "error_examples": stats["errors"][:3],
            }  # fmt: skip
            r = out[clients]
            print(f"  {clients:3d} clients: end of speech → final p50 {r['final_p50_ms']:6.0f} ms, p99 "
                  f"{r['final_p99_ms']:6.0f} ms; partial every {r['partial_interval_p50_ms']:5.0f} ms (p50); errors "
                  f"{r['errors']}; server RSS {r['rss_mb']:.0f} MB; CER {r['cer']:.2f}%", flush=True)  # fmt: skip
        if args.flood:
            out["flood"] = await flood_bench(server, waves, refs, args)
        if not args.long:
            return out
        # one long stream, RSS sampled along it
        long_audio = long_wave(waves, args.long_minutes * 60)
        stats = client_stats()
        rss = RSSSampler(server.proc.pid, 1.0, keep=True)
        await client(server.url, long_audio, stats, speed=args.long_speed)
        rss.stop()
        samples = rss.samples
        half = len(samples) // 2
        out["long"] = {"minutes": args.long_minutes, "speed": args.long_speed, "errors": len(stats["errors"]),
                       "rss_first_half_max": max(samples[:half] or [0]), "rss_second_half_max": max(samples[half:] or [0]),
                       "rss_samples": [round(s) for s in samples[:: max(1, len(samples) // 12)]]}  # fmt: skip
        r = out["long"]
        print(f"  one {args.long_minutes:g}-minute stream at {args.long_speed:g}× real time: errors {r['errors']}, RSS "
              f"max {r['rss_first_half_max']:.0f} MB (first half) vs {r['rss_second_half_max']:.0f} MB (second half); "
              f"samples {r['rss_samples']}", flush=True)  # fmt: skip
    finally:
        server.stop()
    return out


def in_process(export: Path, model, waves: list[np.ndarray], refs: list[str], audio_s: float, threads: int) -> dict:  # type: ignore[no-untyped-def]
    """Part 1: korasr's runtime vs sherpa-onnx in this process, one stream and N streams."""
    chunk_s = model.chunk_seconds
    recognizer = sherpa_online(export, threads)
    ours = korasr_single(model, waves)
    theirs = sherpa_single(recognizer, waves, model.unit)
    result: dict = {}
    for name, r in (("korasr", ours), ("sherpa-onnx", theirs)):
        result[name] = {"chunk_p50_ms": pct(r["chunks"], 50), "chunk_p99_ms": pct(r["chunks"], 99),
                        "rtfx": audio_s / r["total"], "cer": cer(refs, r["texts"])}  # fmt: skip
        x = result[name]
        print(f"  {name:12s} one stream: compute per chunk p50 {x['chunk_p50_ms']:.2f} ms, p99 {x['chunk_p99_ms']:.2f} "
              f"ms; RTFx {x['rtfx']:.0f}; CER {x['cer']:.2f}%", flush=True)  # fmt: skip
    wave = np.concatenate(waves[:5])
    ours_n, ours_table = sustained(lambda n: korasr_concurrent(model, wave, n), chunk_s)
    theirs_n, theirs_table = sustained(lambda n: sherpa_concurrent(recognizer, wave, n, chunk_s), chunk_s)
    result["concurrent"] = {"korasr": ours_n, "sherpa-onnx": theirs_n, "korasr_p99_s": ours_table,
                            "sherpa_p99_s": theirs_table}  # fmt: skip
    print(f"  concurrent real-time streams (p99 compute per chunk < {chunk_s * 1000:.0f} ms): korasr {ours_n}, "
          f"sherpa-onnx {theirs_n} → {ours_n / max(theirs_n, 1):.2f}× (target ≥ 1.0×)", flush=True)  # fmt: skip
    return result


# --- a deployed size, untrained, at each look-ahead ----------------------------------------------------------------

SIZES = ("small", "medium", "large")


def sized_exports(args) -> list[Path]:  # type: ignore[no-untyped-def]
    """The untrained cache-aware model of ``args.size`` (seeded; bench/inference.py builds it the same way) exported
    once per look-ahead under ``bench/out/streaming-SIZE/`` (cached by the .nemo, the look-ahead and korasr's export
    code; the export's parity check compares the runtime with NeMo's cache-aware step on the same graph, not an
    accuracy gate)."""
    from inference import untrained

    from korasr.export import export
    from korasr.lookahead import lookaheads
    from korasr.model import load_model

    folder = OUT / f"streaming-{args.size}"
    nemo_path = untrained(args.size, args.tokenizer, folder, streaming=True)
    stamp = f"{nemo_path.stat().st_size}:{nemo_path.stat().st_mtime_ns}:{export_code_sha()}"
    options = [o["lookahead_ms"] for o in lookaheads(load_model(nemo_path))]
    wanted = options if args.lookaheads == "all" else [int(x) for x in args.lookaheads.split(",")]
    if missing := sorted(set(wanted) - set(options)):
        raise SystemExit(f"look-ahead {missing} ms: the {args.size} streaming model has {options} ms")
    exports = []
    for ms in wanted:
        out = folder / f"lookahead-{ms}"
        if not ((out / "stamp").is_file() and (out / "stamp").read_text(encoding="utf-8") == stamp):
            print(f"exporting {args.size} at look-ahead {ms} ms → {out / 'export'}", flush=True)
            export(nemo_path, out / "export", parity_manifest=args.parity, lookahead_ms=ms, force=True,
                   untrained=True)  # fmt: skip
            (out / "stamp").write_text(stamp, encoding="utf-8")
        exports.append(out / "export")
    return exports


def sized(args) -> int:  # type: ignore[no-untyped-def]
    """``--size``: parts 1 and 2 (the WebSocket at ``--clients``; flooding and the long stream only when asked) at
    each look-ahead, a table at the end, ``bench/out/streaming-SIZE.json``."""
    from korasr.runtime.streaming import StreamingModel

    args.clients = args.clients or [1, 8]  # unset options: the sized run's defaults
    args.flood = bool(args.flood)
    args.long = bool(args.long)
    exports = sized_exports(args)
    rows, waves = read_utterances(args.manifest, args.limit)
    refs = [r["text"] for r in rows]
    audio_s = audio_seconds(waves)
    table = []
    for export in exports:
        model = StreamingModel(export, threads=args.threads, decoder="greedy")  # sherpa-onnx's decoder
        print(f"\n## {args.size} (untrained), look-ahead {model.lookahead_ms} ms, chunk {model.chunk_seconds * 1000:.0f} "
              f"ms; {len(waves)} utterances, {audio_s:.1f} s; {args.threads} threads", flush=True)  # fmt: skip
        result: dict = {"export": str(export), "lookahead_ms": model.lookahead_ms, "chunk_s": model.chunk_seconds}
        result.update(in_process(export, model, waves, refs, audio_s, args.threads))
        print("WebSocket (korasr serve, real-time clients):", flush=True)
        result["websocket"] = asyncio.run(websocket_bench(export, waves, refs, args))
        table.append(result)
        del model
    print(f"\n## {args.size} streaming, untrained, {args.threads} threads: real-time streams and final p99")
    print("| look-ahead | chunk | korasr streams | sherpa-onnx streams | ratio | chunk p99 korasr / sherpa | "
          "final p99 at 8 clients | look-ahead + 200 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        c, eight = r["concurrent"], r["websocket"].get(8)
        final = f"{eight['final_p99_ms']:.0f} ms" if eight else "—"
        met = "" if not eight else (" met" if eight["final_p99_ms"] <= r["lookahead_ms"] + 200 else " MISSED")
        print(f"| {r['lookahead_ms']} ms | {r['chunk_s'] * 1000:.0f} ms | {c['korasr']} | {c['sherpa-onnx']} | "
              f"{c['korasr'] / max(c['sherpa-onnx'], 1):.2f}× | {r['korasr']['chunk_p99_ms']:.1f} / "
              f"{r['sherpa-onnx']['chunk_p99_ms']:.1f} ms | {final}{met} | {r['lookahead_ms'] + 200} ms |")  # fmt: skip
    write_json(args.json or OUT / f"streaming-{args.size}.json", {"size": args.size, "lookaheads": table})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=None)
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifests/sample/eval_clean.jsonl")
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="WebSocket clients per run (default 1,8,32; with --size 1,8)")  # fmt: skip
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--long-speed", type=float, default=10.0)
    parser.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="part 1, korasr's runtime vs sherpa-onnx in this process (default: on)",
    )
    parser.add_argument(
        "--flood",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="real-time clients alone, then beside flooding clients (final p99 ratio; default: on, off with --size)",
    )
    parser.add_argument("--flood-clients", type=int, default=8, help="real-time clients in the flood test")
    parser.add_argument("--flood-rounds", type=int, default=5, help="utterances each of them streams, one by one")
    parser.add_argument("--flooders", type=int, default=4, help="flooding clients (each a --long-minutes file)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--long", action=argparse.BooleanOptionalAction, default=None,
                        help="the --long-minutes stream with RSS sampled (default: on, off with --size)")  # fmt: skip
    parser.add_argument("--size", choices=SIZES, default=None,
                        help="an untrained (seeded) cache-aware model of conf/size/SIZE.yaml instead of the trained "
                             "export, measured at every look-ahead it has (--lookaheads)")  # fmt: skip
    parser.add_argument("--lookaheads", default="all", help="with --size: comma-separated ms, or all")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "tokenizers" / "sample" / "char-jamo")
    parser.add_argument("--parity", type=Path, default=ROOT / "manifests" / "sample" / "dev.jsonl",
                        help="with --size: the export's parity check against NeMo runs on its first utterances")  # fmt: skip
    args = parser.parse_args()
    if args.size is not None:
        return sized(args)
    args.clients = args.clients or [1, 8, 32]
    args.flood = args.flood is not False
    args.long = args.long is not False

    from korasr.runtime.streaming import StreamingModel

    export = args.export or newest_export()
    rows, waves = read_utterances(args.manifest, args.limit)
    refs = [r["text"] for r in rows]
    audio_s = audio_seconds(waves)
    model = StreamingModel(export, threads=args.threads, decoder="greedy")  # sherpa-onnx's decoder
    chunk_s = model.chunk_seconds
    print(f"export {export}: look-ahead {model.lookahead_ms} ms, chunk {chunk_s * 1000:.0f} ms; {len(waves)} "
          f"utterances, {audio_s:.1f} s; {args.threads} threads")  # fmt: skip
    result: dict = {"export": str(export), "lookahead_ms": model.lookahead_ms, "chunk_s": chunk_s}
    if args.in_process:
        result.update(in_process(export, model, waves, refs, audio_s, args.threads))
    print("WebSocket (korasr serve, real-time clients):", flush=True)
    result["websocket"] = asyncio.run(websocket_bench(export, waves, refs, args))
    eight = result["websocket"].get(8)
    if eight:
        target = model.lookahead_ms + 200
        print(f"  final p99 at 8 clients {eight['final_p99_ms']:.0f} ms vs target look-ahead + 200 = {target} ms: "
              f"{'met' if eight['final_p99_ms'] <= target else 'MISSED'}")  # fmt: skip
    flooded = result["websocket"].get("flood")
    if args.json:
        write_json(args.json, result)
    return 0 if flooded is None or flooded["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
