"""korasr serve's Grafana dashboard as code (Grafana's foundation SDK): ``python deploy/monitoring/dashboard.py``
writes ``grafana/korasr.json`` beside it (the compose stack provisions it); ``--check`` exits 1 when that file is not
what this script makes (tests/test_monitoring.py runs it). Every query reads the service's own metrics, so the
dashboard works without the recording rules; ``PANELS`` is also what ``picture.py`` draws from a Prometheus."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "grafana" / "korasr.json"
DATASOURCE_UID = "prometheus"  # grafana/datasources.yaml
V1 = 'route=~"/v1/.*"'


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana's unit id: s, percentunit, reqps, bytes, short
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)


def p99(histogram: str, by: str = "", match: str = "") -> str:
    group = f"{by}, le" if by else "le"
    selector = f"{{{match}}}" if match else ""
    return f"histogram_quantile(0.99, sum by ({group}) (rate({histogram}_bucket{selector}[5m])))"


def quantiles(histogram: str) -> tuple[tuple[str, str], ...]:
    """p10, p50 and p90 per model version: a swap, or a shift in the traffic, moves them apart."""
    return tuple((f"histogram_quantile({q}, sum by (model_version, le) (rate({histogram}_bucket[15m])))",
                  f"p{round(q * 100)} version {{{{model_version}}}}") for q in (0.1, 0.5, 0.9))  # fmt: skip


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Requests", (
        Panel("Requests by route and status", "reqps",
              ((f"sum by (route, status) (rate(korasr_requests_total{{{V1}}}[5m]))", "{{route}} {{status}}"),)),
        Panel("Latency p99 by route (alert: 500 ms)", "s",
              ((p99("korasr_request_seconds", "route", V1), "{{route}}"),)),
        Panel("Server errors and refusals (alerts: 1 %, 5 %)", "percentunit", (
            (f'sum(rate(korasr_requests_total{{{V1}, status=~"5..", status!="503"}}[5m])) '
             f"/ sum(rate(korasr_requests_total{{{V1}}}[5m]))", "server errors"),
            (f'sum(rate(korasr_requests_total{{{V1}, status="503"}}[5m])) '
             f"/ sum(rate(korasr_requests_total{{{V1}}}[5m]))", "refused (503)"))),
        Panel("In flight, and real-time factor p99", "short", (
            ("sum(korasr_in_flight_requests)", "in flight"),
            (p99("korasr_real_time_factor"), "real-time factor p99"))),
    )),
    ("Streams", (
        Panel("Open streams", "short", (("sum(korasr_streams_active)", "open"),)),
        Panel("Stream result latency p99 (alert: 500 ms)", "s", (
            (p99("korasr_stream_partial_seconds"), "audio to result p99"),
            (p99("korasr_stream_chunk_seconds"), "encoder call p99"))),
        Panel("Streams ended, by close code", "short",
              (("sum by (code) (rate(korasr_stream_closes_total[5m]))", "{{code}}"),)),
        Panel("Send deadlines hit", "short",
              (("sum by (kind) (rate(korasr_send_timeouts_total[5m]))", "{{kind}}"),)),
    )),
    ("Jobs", (
        Panel("Queued jobs", "short", (("max(korasr_jobs_queued)", "queued"),)),
        Panel("Oldest queued job (alert: 15 min)", "s", (("max(korasr_jobs_oldest_queued_seconds)", "age"),)),
        Panel("Jobs finished, by status", "short",
              (("sum by (status) (rate(korasr_jobs_finished_total[5m]))", "{{status}}"),)),
        Panel("Callbacks, by outcome", "short",
              (("sum by (outcome) (rate(korasr_job_callbacks_total[5m]))", "{{outcome}}"),)),
    )),
    ("Model", (
        Panel("Model loaded", "short", (("min(korasr_model_loaded)", "loaded"),)),
        Panel("Reloads, by outcome", "short",
              (("sum by (outcome) (increase(korasr_model_reloads_total[15m]))", "{{outcome}}"),)),
        Panel("Registry: behind the alias, reachable", "s", (
            ("max(korasr_registry_behind_seconds)", "behind"),
            ("min(korasr_registry_reachable)", "reachable"))),
        Panel("Served version's registered CER", "percent", (("max by (split) (stt_model_cer)", "{{split}}"),)),
    )),
    ("Accuracy: the canary (korasr serve --canary)", (
        Panel("Canary CER by version vs registered CER (alert: 5 points above)", "percent", (
            ("max by (split, version) (korasr_canary_cer)", "canary {{split}} version {{version}}"),
            ("max by (split) (stt_model_cer)", "registered {{split}}"))),
        Panel("Canary runs, by outcome", "short",
              (("sum by (outcome) (increase(korasr_canary_runs_total[1h]))", "{{outcome}}"),)),
        Panel("Since the last canary run (alert: 3 intervals)", "s", (
            ("time() - min(korasr_canary_last_run_timestamp_seconds)", "since the last run"),
            ("max(korasr_canary_interval_seconds)", "interval"))),
    )),
    ("Drift without labels, per model version (p10, p50, p90 over 15 min)", (
        Panel("Utterance confidence", "percentunit", quantiles("korasr_confidence")),
        Panel("Speech rate (characters per second)", "short", quantiles("korasr_speech_rate")),
        Panel("Audio level (dB below full scale)", "short", quantiles("korasr_audio_db_below_full_scale")),
    )),
    ("Resources", (
        Panel("Resident memory per process", "bytes", (
            ("sum by (instance, pid) (korasr_process_resident_memory_bytes)", "{{instance}} pid {{pid}}"),
            ("max by (instance) (korasr_memory_limit_bytes)", "limit {{instance}}"))),
        Panel("GPU memory used (CUDA hosts only; alert: 90 %)", "percentunit",
              (("korasr_gpu_memory_used_bytes / korasr_gpu_memory_total_bytes", "{{instance}} gpu {{gpu}}"),)),
    )),
)  # fmt: skip
PANELS = tuple(panel for _, panels in ROWS for panel in panels)


def build() -> str:
    """The dashboard's JSON, stable (sorted keys) so that a diff shows what changed."""
    from grafana_foundation_sdk.builders.dashboard import Dashboard, Row
    from grafana_foundation_sdk.builders.prometheus import Dataquery
    from grafana_foundation_sdk.builders.timeseries import Panel as TimeSeries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    source = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    board = (Dashboard("korasr serve").uid("korasr-serve").tags(["korasr"]).refresh("30s").time("now-1h", "now")
             .description("korasr serve: requests, streams, jobs, the model, its accuracy and drift, resources "
                          "(deploy/monitoring/dashboard.py; alerts: deploy/monitoring/rules)"))  # fmt: skip
    ids = iter(range(1, 1000))  # Grafana wants them unique within a dashboard
    for row, panels in ROWS:
        board = board.with_row(Row(row).id(next(ids)))
        for panel in panels:
            chart = TimeSeries().id(next(ids)).title(panel.title).unit(panel.unit).datasource(source).height(8).span(6)
            for i, (expr, legend) in enumerate(panel.queries):
                chart = chart.with_target(Dataquery().expr(expr).legend_format(legend).ref_id("ABCD"[i]))
            board = board.with_panel(chart)
    return JSONEncoder(sort_keys=True, indent=2).encode(board.build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 when {OUTPUT.name} is not current")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        current = OUTPUT.is_file() and OUTPUT.read_text(encoding="utf-8") == text
        print(f"{OUTPUT}: {'current' if current else 'stale: run python deploy/monitoring/dashboard.py'}")
        return 0 if current else 1
    tmp = OUTPUT.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(OUTPUT)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
