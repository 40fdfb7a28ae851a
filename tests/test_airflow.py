"""The Airflow DAG (orchestration/airflow/dags/korasr_retrain.py) in Airflow's own environment (`make airflow`:
.venv-airflow): it parses with its seven stage tasks, and `airflow dags test` on the sample recipe with a small step
budget runs `korasr retrain` stage by stage in the project's environment and leaves a promoted version in the
registry."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_lifecycle import evaluated_report, registry_store

AIRFLOW = ROOT / ".venv-airflow" / "bin" / "airflow"
DAGS = ROOT / "orchestration" / "airflow" / "dags"


def airflow(home: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "KORASR_HOME": str(ROOT)}  # fmt: skip
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
    proc = airflow(airflow_home, "tasks", "list", "korasr_retrain")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    assert tasks == sorted(["ingest", "train", "evaluate", "gate", "export", "register", "notify"])


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
        proc = airflow(airflow_home, "dags", "test", "korasr_retrain", "--conf", json.dumps(conf))
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        production = registry.show("ko-airflow", alias="production")
        assert production.version == 2, (proc.stdout + proc.stderr)[-6000:]
        assert json.loads(production.tags["lineage"])["parent_version"] == 1
        state = json.loads(next((tmp_path / "work").glob("*/state.json")).read_text(encoding="utf-8"))
        assert set(state["stages"]) == {"ingest", "train", "evaluate", "gate", "export", "register", "notify"}
        assert state["stages"]["gate"]["passed"] and state["stages"]["register"]["promoted"]
