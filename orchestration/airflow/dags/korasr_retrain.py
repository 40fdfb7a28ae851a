"""korasr's weekly retraining as an Airflow DAG: one task per `korasr retrain` stage, the gate as the branch that
stops promotion.

Each task runs ``korasr retrain … --until STAGE`` in the project's own environment (``KORASR_HOME/.venv``), so the
stages are exactly the ones ``make retrain`` runs: each one finishes by recording its result in
``exp/retrain/<drop>/state.json``, and the next task's command skips everything already recorded. Airflow itself
lives in its own virtual environment (``make airflow``: ``.venv-airflow``), as Airflow's documentation advises, since
its pins collide with the ML stack's; it only schedules, retries and shows the runs. Nothing in korasr depends on
Airflow: ``make retrain`` is the same pipeline without it.

The gate task exits 99 when the candidate fails the gate, which Airflow reads as *skipped*: export, register and
promotion are skipped with it, and ``notify`` (trigger rule ``all_done``) still sends the gate's table.

Parameters (``airflow dags trigger korasr_retrain --conf '{…}'``, or ``airflow dags test korasr_retrain --conf …``):
``new_data`` (a KsponSpeech-layout folder or a manifest; default ``$KORASR_NEW_DATA``, else ``data/incoming``: the
week's drop), ``recipe`` (sample), ``name``
(``korasr-<recipe>``), ``eval`` and ``replay`` (manifests; the sample recipe's by default), ``promote`` (false),
``args`` (more ``korasr retrain`` options and training overrides, e.g. ``--form phonetic model.tokenizer.dir=…``).
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG, Param
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.models.param import Param
    from airflow.operators.bash import BashOperator

# orchestration/airflow/dags/ → the checkout
HERE = os.path.dirname(os.path.abspath(__file__))
HOME = os.environ.get("KORASR_HOME", os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
STAGES = ("ingest", "train", "evaluate", "gate", "export", "register", "notify")
GATE_FAILED = 1  # korasr retrain's exit status when the candidate fails the gate
SKIP = 99  # BashOperator's default skip_on_exit_code


def command(stage: str) -> str:
    """The shell command of one stage's task (Jinja-templated from the run's params)."""
    retrain = (
        'cd "{{ params.home }}" && .venv/bin/korasr retrain --name "{{ params.name or "korasr-" ~ params.recipe }}" '
        '--recipe "recipes/{{ params.recipe }}" --new-data "{{ params.new_data }}" '
        '{% for m in params.eval %}--eval "{{ m }}" {% endfor %}{% for m in params.replay %}--replay "{{ m }}" {% endfor %}'
        "{% if params.promote %}--promote {% endif %}{{ params.args }} "
        f"--until {stage}"
    )
    if stage == "gate":  # a failed gate is a skip: what depends on it is skipped too
        return f"{retrain}; rc=$?; if [ $rc -eq {GATE_FAILED} ]; then exit {SKIP}; fi; exit $rc"
    if stage == "notify":  # the run's outcome was decided by the gate; notify reports it either way
        return f"{retrain}; rc=$?; if [ $rc -eq {GATE_FAILED} ]; then exit 0; fi; exit $rc"
    return retrain


with DAG(
    dag_id="korasr_retrain",
    description="new data → fine-tune from production → evaluate both → gate → export → register → notify",
    schedule="@weekly",
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "home": Param(HOME, type="string", description="the korasr checkout (its .venv runs the stages)"),
        "new_data": Param(
            os.environ.get("KORASR_NEW_DATA", os.path.join(HOME, "data", "incoming")),
            type="string",
            description="a KsponSpeech-layout folder or a NeMo manifest (default: $KORASR_NEW_DATA, data/incoming)",
        ),
        "recipe": Param("sample", type="string"),
        "name": Param("", type="string", description="registered model (default korasr-<recipe>)"),
        "eval": Param(
            [f"manifests/sample/{s}.jsonl" for s in ("eval_clean", "eval_other", "eval_novel")],
            type="array",
            description="the fixed evaluation splits the gate scores (paths from home)",
        ),
        "replay": Param(["manifests/sample/train.jsonl"], type="array", description="earlier training data"),
        "promote": Param(False, type="boolean"),
        "args": Param("", type="string", description="more korasr retrain options and training overrides"),
    },
    tags=["korasr"],
) as dag:
    tasks = {}
    for stage in STAGES:
        tasks[stage] = BashOperator(
            task_id=stage,
            bash_command=command(stage),
            retries=0 if stage in ("gate", "notify") else 2,
            trigger_rule="all_done" if stage == "notify" else "all_success",
            append_env=True,
        )
    for before, after in itertools.pairwise(STAGES):
        tasks[before] >> tasks[after]
