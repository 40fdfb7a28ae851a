"""Monitoring as code (deploy/monitoring/): the alert and recording rules checked and unit-tested with promtool, the
Grafana dashboard generated from code and current, its queries parsed and made of metrics the service exports, and a
real Prometheus (Debian's, on loopback) scraping a running `korasr serve` with the rules loaded: the recording rules
produce values and an induced condition (admission refusals) takes its alert to firing. Needs Debian's `prometheus`
package (`make prometheus`); skipped, saying so, where it is not installed.

``KORASR_MONITORING_PICTURE=docs/img/monitoring-dashboard.png`` makes the live test draw the dashboard's panels from
its Prometheus into that file (deploy/monitoring/picture.py)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, eval_rows, serve_process, slow_upload, wait_for

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "rules" / "korasr.rules.yml"
RULE_TESTS = MONITORING / "tests" / "korasr.rules.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
WAIT_S = 45.0  # any wait for Prometheus or the server below
wait_for = functools.partial(wait_for, timeout=WAIT_S, interval=0.5)
INDUCED = "KorasrRequestsRefused"  # the alert the live test makes fire
CUDA_ONLY = {"korasr_gpu_memory_used_bytes", "korasr_gpu_memory_total_bytes"}  # absent on a host without NVML


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian's prometheus package: make prometheus; needs root and apt)")
    return found


def promtool(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([binary("promtool"), *args], input=stdin, capture_output=True, text=True, cwd=cwd,
                          timeout=120)  # fmt: skip


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


# --- the rules -----------------------------------------------------------------------------------------------------


def test_rules_and_the_prometheus_config_pass_promtool_check():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0 and "SUCCESS" in checked.stdout, checked.stdout + checked.stderr
    config = promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert config.returncode == 0 and "1 rule files found" in config.stdout, config.stdout + config.stderr


def test_rule_unit_tests_pass_and_make_every_alert_fire_and_not_fire(tmp_path):
    proc = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fired == set(), "alerts no unit test makes fire"
    assert names - quiet == set(), "alerts no unit test keeps from firing"
    # the tests can fail: the same tests against rules whose thresholds are doubled
    broken = tmp_path / "rules" / RULES.name
    broken.parent.mkdir()
    broken.write_text(RULES.read_text().replace("> 0.5\n", "> 1.0\n").replace("> 900\n", "> 1800\n"))
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    failing = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path / "tests")
    said = failing.stdout + failing.stderr
    assert failing.returncode == 1 and "KorasrLatencyHigh" in said and "KorasrBehindRegistry" in said, said


def test_every_alert_has_a_summary_a_severity_and_a_runbook_in_the_docs():
    headings = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(encoding="utf-8"), re.MULTILINE)}  # fmt: skip
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        page, anchor = rule["annotations"]["runbook_url"].split("#")
        assert (ROOT / page) == OPERATIONS and anchor == name.lower() and anchor in headings, name


# --- the dashboard -------------------------------------------------------------------------------------------------


def dashboard_panels() -> tuple:
    import importlib.util

    spec = importlib.util.spec_from_file_location("korasr_dashboard", MONITORING / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.PANELS


def test_dashboard_json_is_generated_and_current():
    proc = subprocess.run([sys.executable, str(MONITORING / "dashboard.py"), "--check"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    board = json.loads((MONITORING / "grafana" / "korasr.json").read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert queries == [expr for panel in dashboard_panels() for expr, _ in panel.queries]
    uid = yaml.safe_load((MONITORING / "grafana" / "datasources.yaml").read_text())["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in board["panels"] if p["type"] != "row"} == {uid}


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label matchers, groupings, strings and durations left out)."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    return {
        t for t in re.findall(r"[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()", bare) if t not in KEYWORDS and not t[0].isdigit()
    }


def exported_names(text: str) -> set[str]:
    """Every series name a scrape's families can show (a histogram's _bucket, _count, _sum)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names |= {f"{name}{s}" for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else {name}
    return names


# --- a live service under a real Prometheus --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(prometheus: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).raise_for_status().json()
    return answer["data"]["result"]


def transcribe(url: str, wav: bytes) -> int:
    with httpx.Client(timeout=60) as client:
        return client.post(url + "/v1/transcribe", files={"audio": ("a.wav", wav, "audio/wav")}).status_code


@pytest.fixture(scope="module")
def live(exported, recipe, tmp_path_factory):  # type: ignore[no-untyped-def]
    """`korasr serve` (one admission slot, none waiting) and a Prometheus scraping it every second with the rules
    loaded, every ``for:`` cut to 2 s (the test overlay); yields (service URL, Prometheus URL, its log)."""
    prometheus_bin = binary("prometheus")
    base = tmp_path_factory.mktemp("monitoring")
    canary = base / "canary.jsonl"  # four eval_clean rows, checked at start and after each swap: the canary's gauge
    canary.write_text("".join(json.dumps({**row, "split": "eval_clean"}) + "\n" for row in eval_rows(recipe, 4)))
    with serve_process(exported, base / "serve.log", "--queue-size", "1", "--max-waiting", "0",
                       "--upload-timeout", "60", "--canary", str(canary)) as url:  # fmt: skip
        overlay = base / "rules.yml"
        overlay.write_text(re.sub(r"^(\s+for:) \S+$", r"\1 2s", RULES.read_text(), flags=re.MULTILINE))
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(overlay)]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [url.removeprefix("http://")]}]
        (base / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = base / "prometheus.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([prometheus_bin, f"--config.file={base / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={base / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                    stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            yield url, f"http://127.0.0.1:{port}", log
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_live_metrics_pass_promtool_and_the_dashboard_reads_only_them(live, tmp_path):
    url, _, _ = live
    text = httpx.get(url + "/metrics", timeout=30).raise_for_status().text
    lint = promtool("check", "metrics", stdin=text)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
    exported = exported_names(text)
    assert {"korasr_model_loaded", "korasr_jobs_oldest_queued_seconds", "korasr_registry_behind_seconds",
            "korasr_process_resident_memory_bytes", "korasr_memory_limit_bytes"} <= exported  # fmt: skip
    rss = re.search(r'^korasr_process_resident_memory_bytes\{pid="\d+"\} (\S+)$', text, re.MULTILINE)
    assert rss and float(rss.group(1)) > 50e6, "the server's resident memory, a loaded model's worth"
    panels = dashboard_panels()
    queries = [expr for panel in panels for expr, _ in panel.queries]
    for expr in queries:
        names = metric_names(expr)
        assert names and names <= exported | CUDA_ONLY, (expr, names - exported - CUDA_ONLY)
    rules = tmp_path / "dashboard.rules.yml"  # promtool parses each query as a recording rule's expression
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(queries)]}]}))  # fmt: skip
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0 and f"{len(queries)} rules found" in checked.stdout, checked.stdout + checked.stderr
    assert metric_names("sum by (route) (rate(korasr_requests_total{a=\"b\"}[5m])) / on (x) up") == {
        "korasr_requests_total", "up"}  # fmt: skip


def test_prometheus_records_the_rules_and_fires_an_induced_alert(live, recipe):
    url, prometheus, log = live
    wav = Path(eval_rows(recipe, 1)[0]["audio_filepath"]).read_bytes()
    # a rate needs a series to move between two samples, and a labelled series starts when first counted: one
    # request, scraped, then the traffic
    assert transcribe(url, wav) == 200
    wait_for(f"Prometheus scraping the service (its log: {log})", lambda: query(
        prometheus, 'korasr_requests_total{route="/v1/transcribe", status="200"}'))  # fmt: skip
    assert [transcribe(url, wav) for _ in range(3)] == [200] * 3
    p99 = wait_for("the latency recording rule", lambda: query(
        prometheus, 'korasr:request_seconds:p99_5m{route="/v1/transcribe"} >= 0'))  # fmt: skip
    assert 0 < float(p99[0]["value"][1]) < 60
    memory = wait_for("the memory ratio", lambda: query(prometheus, "korasr:process_resident_memory:ratio"))
    assert 0 < float(memory[0]["value"][1]) < 1
    canary = wait_for("the canary's CER scraped", lambda: query(prometheus, 'korasr_canary_cer{split="eval_clean"}'))
    assert 0 <= float(canary[0]["value"][1]) < 50  # the suite's model: a few percent on eval_clean
    confidence = wait_for("the confidence histogram", lambda: query(prometheus, "korasr_confidence_count > 0"))
    assert confidence[0]["metric"]["model_version"]  # the drift histograms are by model version
    assert not query(prometheus, f'ALERTS{{alertname="{INDUCED}"}}'), "refusals before any were induced"

    held = slow_upload(url)  # the one admission slot taken: every upload now gets 503 before its body is read
    try:
        wait_for("the slow upload admitted", lambda: httpx.get(url + "/metrics", timeout=10).text.count(
            "korasr_in_flight_requests 2.0"))  # fmt: skip
        assert transcribe(url, wav) == 503  # the refusals' series starts, then they count
        wait_for("the refusals' series scraped", lambda: query(prometheus, 'korasr_requests_total{status="503"}'))
        with ThreadPoolExecutor(4) as pool:
            refused = list(pool.map(lambda _: transcribe(url, wav), range(12)))
        assert refused == [503] * 12
        ratio = wait_for("the refusal ratio recorded", lambda: [r for r in query(
            prometheus, "korasr:requests_refused:ratio_rate5m") if float(r["value"][1]) > 0.05])  # fmt: skip
        assert 0.05 < float(ratio[0]["value"][1]) <= 1
        states = []

        def firing() -> bool:
            rules = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).raise_for_status().json()["data"]["alerts"]
            states.extend(a["state"] for a in rules if a["labels"]["alertname"] == INDUCED)
            return "firing" in states

        wait_for(f"{INDUCED} firing", firing)
        assert states[0] in ("pending", "firing")
        up = {a["labels"]["alertname"] for a in httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"][
            "alerts"]}  # fmt: skip
        assert not up & {"KorasrTargetDown", "KorasrNoModelLoaded", "KorasrMemoryHigh"}, up
        if picture := os.environ.get("KORASR_MONITORING_PICTURE"):
            time.sleep(10)  # a few more points after the refusals
            drawn = subprocess.run([sys.executable, str(MONITORING / "picture.py"), prometheus, picture, "--minutes",
                                    "2"], capture_output=True, text=True, timeout=120)  # fmt: skip
            assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    finally:
        held.close()
