"""The Airflow DAG (orchestration/airflow/dags/korasr_retrain.py) in Airflow's own environment (`make airflow`:
.venv-airflow): it parses with its seven stage tasks; `airflow dags test` on the sample recipe with a small step
budget runs `korasr retrain` stage by stage in the project's environment and leaves a promoted version in the
registry; and, against a stand-in `korasr` in a copy of the checkout's Makefile (seconds, no training), a crashing
stage fails the run and is reported once, a refused candidate is a skip, the run's parameters reach korasr
literally, and each stage's command is `make retrain`'s."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from korasr.retrain import STAGES
from tests.conftest import ROOT
from tests.test_lifecycle import evaluated_report, registry_store, webhook_receiver

AIRFLOW = ROOT / ".venv-airflow" / "bin" / "airflow"
DAGS = ROOT / "orchestration" / "airflow" / "dags"


def dag_constant(name: str):  # type: ignore[no-untyped-def]
    """A module-level constant of the DAG file, read without Airflow (this is the project's environment)."""
    tree = ast.parse((DAGS / "korasr_retrain.py").read_text(encoding="utf-8"))
    (value,) = [ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == name]  # fmt: skip
    return value


def airflow(home: Path, *args: str, timeout: float = 1200, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "KORASR_HOME": str(ROOT), **(env or {})}  # fmt: skip
    return subprocess.run([str(AIRFLOW), *args], capture_output=True, text=True, env=env, cwd=home, timeout=timeout)


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> Path:
    if not AIRFLOW.is_file():
        pytest.fail("Airflow is not installed: `make airflow` (make test installs it)")
    home = tmp_path_factory.mktemp("airflow")
    proc = airflow(home, "db", "migrate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home


def test_the_dag_parses_with_one_task_per_stage(airflow_home):
    """One task per `korasr retrain` stage, korasr's own list (the DAG cannot import korasr, so it keeps a copy)."""
    proc = airflow(airflow_home, "tasks", "list", "korasr_retrain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    assert tasks == sorted(STAGES)
    assert dag_constant("STAGES") == STAGES


def test_dags_test_runs_the_retraining_and_promotes(airflow_home, exported, recipe, tmp_path):
    """Production is the suite's model; the week's drop is a manifest of 100 dev utterances (not a gated split);
    20 fine-tuning steps; the DAG's run promotes the candidate, and the registry says so afterwards."""
    from korasr import registry

    m = recipe["manifests"]
    drop = tmp_path / "drop.jsonl"
    drop.write_text("".join((m / "dev.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:100]),
                    encoding="utf-8")  # fmt: skip
    with registry_store(tmp_path):
        registry.register(exported, "ko-airflow", report=evaluated_report(exported, recipe, tmp_path / "eval"))
        registry.promote("ko-airflow", 1)
        args = (f"--form phonetic --max-cer eval_clean=20 --max-cer eval_other=99 --tolerance-rel 50 --tolerance-abs 5 "
                f"--work {tmp_path / 'work'} --parity-manifest {m / 'dev.jsonl'} model.tokenizer.dir={recipe['tokenizer']} "
                f"model.validation_ds.manifest_filepath={m / 'dev.jsonl'} model.train_ds.perturb_speed=false "
                "trainer.max_steps=20 trainer.val_check_interval=10")  # fmt: skip
        conf = {"home": str(ROOT), "new_data": str(drop), "name": "ko-airflow", "promote": True, "args": args,
                "eval": [str(m / "eval_clean.jsonl"), str(m / "eval_other.jsonl")], "replay": [str(m / "train.jsonl")]}  # fmt: skip
        # make retrain's settings apply, from the worker's environment as from a shell: no noise set in the suite's
        # checkout, and bounds for the two splits scored here
        env = {"NOISE": "", "RETRAIN_MAX_CER": "5"}
        proc = airflow(airflow_home, "dags", "test", "korasr_retrain", "--conf", json.dumps(conf), env=env)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        production = registry.show("ko-airflow", alias="production")
        assert production.version == 2, (proc.stdout + proc.stderr)[-6000:]
        assert json.loads(production.tags["lineage"])["parent_version"] == 1
        state = json.loads(next((tmp_path / "work").glob("*/state.json")).read_text(encoding="utf-8"))
        assert set(state["stages"]) == set(STAGES)
        assert state["stages"]["gate"]["passed"] and state["stages"]["promote"]["promoted"]


# --- the DAG's outcomes, against a stand-in korasr ---------------------------------------------------------------

STAND_IN = '''#!/usr/bin/env python3
"""A stand-in for korasr: records its arguments, then acts out the stage named by --until as the test asks."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STAND_IN_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(args) + "\\n")
stages = STAGES_REPR
stage = args[args.index("--until") + 1] if "--until" in args else "notify"
if stage == os.environ.get("STAND_IN_CRASH"):
    raise RuntimeError("the " + stage + " stage crashed")
if os.environ.get("STAND_IN_REJECT") and stages.index(stage) >= stages.index("gate"):
    print("split       CER   bound\\neval_clean  9.9   5.0   FAIL", file=sys.stderr)
    sys.exit(int(os.environ["STAND_IN_REJECT"]))
'''.replace("STAGES_REPR", repr(STAGES))


@pytest.fixture
def stand_in(tmp_path) -> dict:
    """A checkout of the Makefile alone, set up (its .venv stamped), whose `.venv/bin/korasr` is the stand-in; the
    environment both Airflow and make get (no outer make's flags)."""
    home = tmp_path / "home"
    (home / ".venv" / "bin").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, home / name)
    os.utime(home / "pyproject.toml", (0, 0))
    for name, text in ((".venv/bin/korasr", STAND_IN), (".venv/bin/lmplz", "#!/bin/sh\n"), (".venv/.installed", "")):
        (home / name).write_text(text, encoding="utf-8")
        (home / name).chmod(0o755)
    log = tmp_path / "korasr-calls.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return {"home": home, "log": log, "env": {**env, "STAND_IN_LOG": str(log)}}


def calls(stand_in: dict) -> list[list[str]]:
    log = stand_in["log"]
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []


def dags_test(airflow_home: Path, stand_in: dict, conf: dict, date: str, **env: str) -> tuple[int, dict, str]:
    """`airflow dags test` on the stand-in's checkout: the exit status, the run's task states, the output."""
    conf = {"home": str(stand_in["home"]), **conf}
    proc = airflow(airflow_home, "dags", "test", "korasr_retrain", date, "--conf", json.dumps(conf),
                   env={**stand_in["env"], **env}, timeout=600)  # fmt: skip
    with contextlib.closing(sqlite3.connect(airflow_home / "airflow.db")) as db:  # Airflow's own SQLite metadata
        states = db.execute("SELECT ti.task_id, ti.state FROM task_instance ti JOIN dag_run r ON ti.run_id = r.run_id "
                            "WHERE r.dag_id = 'korasr_retrain' AND r.logical_date LIKE ?", (f"{date}%",)).fetchall()  # fmt: skip
    return proc.returncode, dict(states), proc.stdout + proc.stderr


def gate_rejected_status() -> int:
    """What `korasr retrain` exits with when the candidate fails the gate (its CLI, the stages replaced)."""
    from unittest import mock

    from korasr import cli
    from korasr.retrain import GateRejected

    with mock.patch("korasr.retrain.retrain", side_effect=GateRejected("refused")):
        return cli.main(["retrain", "--name", "m", "--recipe", "r", "--new-data", "d", "--eval", "e"])


def test_a_refused_candidate_is_not_a_crash():
    """korasr retrain's status for a failed gate is its own (an uncaught exception exits 1, an error 2), and it is
    the one the DAG reads as a refusal."""
    constant = dag_constant("GATE_REJECTED")
    assert gate_rejected_status() == constant and constant not in (0, 1, 2)


def test_a_crashing_stage_fails_the_run_and_notify_reports_it_once(airflow_home, stand_in):
    """The gate stage raises (exit 1, as any uncaught exception): the gate task fails, nothing after it runs,
    notify re-runs nothing, posts the failure once and fails, and so does the run."""
    with webhook_receiver() as (url, received):
        rc, states, out = dags_test(airflow_home, stand_in, {"new_data": "drop.jsonl", "webhook": url}, "2026-02-02",
                                    STAND_IN_CRASH="gate")  # fmt: skip
    assert rc != 0 and "DagRun failed" in out, out[-4000:]
    gate = STAGES.index("gate")
    assert states == {**dict.fromkeys(STAGES[:gate], "success"), "gate": "failed",
                      **dict.fromkeys(STAGES[gate + 1 : -1], "upstream_failed"), "notify": "failed"}, out[-4000:]  # fmt: skip
    assert [c[c.index("--until") + 1] for c in calls(stand_in)] == list(STAGES[: gate + 1])  # nothing after
    assert len(received) == 1, received
    assert "the gate stage failed" in received[0]["text"]
    assert received[0]["korasr"]["outcome"] == "error" and received[0]["korasr"]["failed"] == ["gate"]


def test_a_refused_candidate_skips_promotion_and_shows_the_table(airflow_home, stand_in):
    """The gate refuses (korasr's own status): the gate and what follows are skipped (no promotion), notify
    reports, the run passes."""
    rc, states, out = dags_test(airflow_home, stand_in, {"new_data": "drop.jsonl"}, "2026-02-03",
                                STAND_IN_REJECT=str(gate_rejected_status()))  # fmt: skip
    assert rc == 0, out[-4000:]
    gate = STAGES.index("gate")
    assert states == {**dict.fromkeys(STAGES[:gate], "success"), **dict.fromkeys(STAGES[gate:-1], "skipped"),
                      "notify": "success"}, out[-4000:]  # fmt: skip
    assert "eval_clean  9.9   5.0   FAIL" in out and "failed the gate" in out


def hostile(marker: Path) -> dict:
    """Parameters that would create ``marker`` if any shell parsed them."""
    return {"new_data": f'drop; touch {marker} "$(touch {marker})" `touch {marker}`',
            "args": f"--tolerance-abs 1 $(touch${{IFS}}{marker}) ';touch {marker}' trainer.max_steps=5"}  # fmt: skip


def test_params_reach_korasr_literally_and_each_stage_runs_make_retrain(airflow_home, stand_in, tmp_path):
    """Each stage's argument list is `make retrain`'s with the same settings (its defaults: form, bounds, eval splits,
    replay) plus --until STAGE; parameters with `;`, `$(...)`, backquotes and quotes arrive as literal words, and
    nothing they name runs; a recipe or a model name that is not a plain name is refused before anything runs."""
    home, marker = stand_in["home"], tmp_path / "INJECTED"
    params = hostile(marker)
    env = {**stand_in["env"], "NEW_DATA": params["new_data"], "ARGS": params["args"]}
    made = subprocess.run(["make", "-C", str(home), "--no-print-directory", "retrain", "PROMOTE=1"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    (by_make,) = calls(stand_in)
    assert by_make[by_make.index("--new-data") + 1] == params["new_data"]
    words = ["--tolerance-abs", "1", f"$(touch${{IFS}}{marker})", "';touch", f"{marker}'", "trainer.max_steps=5"]
    assert by_make[-len(words) :] == words, by_make
    assert {"--form", "--eval", "--replay", "--max-cer", "--promote"} <= set(by_make), by_make
    stand_in["log"].unlink()

    rc, states, out = dags_test(airflow_home, stand_in, {**params, "promote": True}, "2026-02-04")
    assert rc == 0 and set(states.values()) == {"success"}, out[-4000:]
    assert calls(stand_in) == [[*by_make, "--until", stage] for stage in STAGES], (by_make, calls(stand_in))
    assert not marker.exists()

    for date, bad in (
        ("2026-02-05", {"recipe": f"sample; touch {marker}"}),
        ("2026-02-06", {"name": f"m;touch {marker}"}),
    ):
        proc = airflow(airflow_home, "dags", "test", "korasr_retrain", date, "--conf",
                       json.dumps({"home": str(home), "new_data": "d", **bad}), env=stand_in["env"])  # fmt: skip
        assert proc.returncode != 0 and f"Invalid input for param {next(iter(bad))}" in proc.stderr, proc.stderr[-3000:]
    assert len(calls(stand_in)) == len(STAGES) and not marker.exists()
