"""korasr's weekly retraining as an Airflow DAG: one task per `korasr retrain` stage, the gate as the branch that
stops promotion.

Each stage task runs ``make retrain UNTIL=STAGE`` in the checkout (``KORASR_HOME``), so the command, its defaults
(normalization form, per-split bounds, evaluation splits, replay) and the project's environment (``.venv``) are
exactly ``make retrain``'s: the run's parameters travel as environment variables that the recipe quotes, never as
text pasted into a shell line. ``korasr retrain`` records each finished stage in its work folder, so the next task's
command skips what is already recorded. Airflow itself lives in its own virtual environment (``make airflow``:
``.venv-airflow``), as Airflow's documentation advises, since its pins collide with the ML stack's; it only schedules,
retries and shows the runs. Nothing in korasr depends on Airflow: ``make retrain`` is the same pipeline without it.

Three outcomes, each its own colour in Airflow:

- **passed**: every task succeeds; ``notify`` runs korasr's own notify stage (the gate's table to the webhook).
- **the gate refused the candidate**: ``korasr retrain`` exits :data:`GATE_REJECTED`, the gate task is *skipped* (its
  log shows the gate's table), export, register and promotion are skipped with it, ``notify`` reports the table and
  the run succeeds: the pipeline worked and production did not move.
- **a stage failed** (any other non-zero exit: an exception, a bad input, a killed process): that task fails, the ones
  after it are never run, ``notify`` posts the failure to the webhook (once; it never re-runs a stage) and fails too,
  so the run is failed.

Parameters (``airflow dags trigger korasr_retrain --conf '{…}'``, or ``airflow dags test korasr_retrain --conf …``);
an empty one means ``make retrain``'s default: ``new_data`` (a KsponSpeech-layout folder or a manifest; default
``$KORASR_NEW_DATA``, else ``data/incoming``: the week's drop), ``recipe`` (``RECIPE``, sample), ``name``
(``REGISTRY_NAME``), ``eval`` and ``replay`` (manifests: ``RETRAIN_EVAL``, ``RETRAIN_REPLAY``), ``promote``
(``PROMOTE``), ``webhook`` (``WEBHOOK``; default ``$KORASR_WEBHOOK``), ``args`` (``ARGS``: more ``korasr retrain``
options and training overrides, words split on blanks and passed literally, e.g. ``--tolerance-abs 1
trainer.max_steps=500``). ``recipe`` and ``name`` must be plain names (letters, digits, ``._-``; make pastes RECIPE
into paths): anything else is refused before the run starts. Other make variables (``NOISE``, ``DEVICES``, …) come
from the worker's environment, as they would from a shell.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import time
import urllib.request
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG, Param
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.exceptions import AirflowFailException
    from airflow.models.param import Param
    from airflow.operators.bash import BashOperator
    from airflow.operators.python import PythonOperator

log = logging.getLogger(__name__)

# orchestration/airflow/dags/ → the checkout
HERE = os.path.dirname(os.path.abspath(__file__))
HOME = os.environ.get("KORASR_HOME", os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
# korasr.retrain.STAGES (Airflow cannot import korasr: tests/test_airflow.py checks that the two agree)
STAGES = ("ingest", "train", "evaluate", "gate", "export", "register", "promote", "notify")
GATE_REJECTED = 3  # `korasr retrain`'s exit status for a candidate the gate refused (GateRejected; not 1 or 2)
NOTIFY_TIMEOUT_S = 120  # korasr's own notify: a webhook POST, a few bounded tries
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_TRIES = 3
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # a recipe folder or a registered model: make pastes RECIPE into paths

# The run's parameters as make's variables, in the task's environment (Jinja renders each value as one string, which
# no shell parses). UNTIL is set per task.
MAKE_ENV = {
    "KORASR_HOME": "{{ params.home }}",
    "RECIPE": "{{ params.recipe }}",
    "NEW_DATA": "{{ params.new_data }}",
    "REGISTRY_NAME": "{{ params.name }}",
    "RETRAIN_EVAL": "{{ params.eval | join(' ') }}",
    "RETRAIN_REPLAY": "{{ params.replay | join(' ') }}",
    "PROMOTE": "{{ '1' if params.promote else '' }}",
    "WEBHOOK": "{{ params.webhook }}",
    "ARGS": "{{ params.args }}",
}
OPTIONAL = ("REGISTRY_NAME", "RETRAIN_EVAL", "RETRAIN_REPLAY", "PROMOTE", "WEBHOOK", "ARGS")
# make's exit status is 2 whatever failed, so the recipe leaves korasr's in RETRAIN_STATUS; `-o setup`: a run never
# installs software (a stale .venv is the checkout's `make setup`, not a retraining's).
STAGE_COMMAND = (
    f'for v in {" ".join(OPTIONAL)}; do [ -n "${{!v}}" ] || unset "$v"; done; '  # empty: make's default
    "export RETRAIN_STATUS; RETRAIN_STATUS=$(mktemp) || exit 1; "
    'make -C "$KORASR_HOME" --no-print-directory -o setup retrain; rc=$?; '
    '[ "$rc" -eq 0 ] || rc=$(cat "$RETRAIN_STATUS"); rm -f "$RETRAIN_STATUS"; exit "${rc:-2}"'
)


def post(webhook: str, payload: dict) -> bool:
    """POST ``payload`` as JSON (Slack-compatible ``text``); a few tries with a bounded wait each."""
    body = json.dumps(payload, ensure_ascii=False).encode()
    for attempt in range(1, WEBHOOK_TRIES + 1):
        request = urllib.request.Request(
            webhook, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S):
                return True
        except Exception as e:  # URLError, HTTPError, TimeoutError, OSError
            log.warning("webhook try %d/%d: %s: %s", attempt, WEBHOOK_TRIES, type(e).__name__, e)
            time.sleep(0.5 * attempt)
    return False


def task_states(context: dict) -> dict[str, str]:
    """This run's task states, by task id."""
    ti, run_id = context["ti"], context["run_id"]
    if hasattr(ti, "get_task_states"):  # Airflow 3: through the execution API
        return dict(ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id]).get(run_id, {}))
    return {t.task_id: t.state for t in context["dag_run"].get_task_instances()}  # Airflow 2


def notify(**context) -> str:
    """Report the run's outcome; never runs a stage. A failed stage: post it and fail (the run is failed). Otherwise
    korasr's own notify stage posts the gate's table (passed, or refused: promotion skipped)."""
    params, run_id = context["params"], context["run_id"]
    states = task_states(context)
    failed = [s for s in STAGES[:-1] if states.get(s) == "failed"]
    unfinished = [s for s in STAGES[:-1] if states.get(s) not in ("success", "skipped")]
    if failed or unfinished:
        name = params["name"] or f"korasr-{params['recipe']}"
        first = (failed or unfinished)[0]
        what = f"the {first} stage failed" if failed else f"{', '.join(unfinished)} did not finish"
        production = "production unchanged" if STAGES.index(first) < STAGES.index("promote") else "see promote"
        text = (f"*korasr retrain* `{name}` run `{run_id}`: {what} (an error, not a refusal by the gate); nothing "
                f"after it ran, {production}. Its task log in Airflow says why.")  # fmt: skip
        payload = {"text": text, "korasr": {"model": name, "run_id": run_id, "outcome": "error", "failed": failed,
                                            "states": {s: states.get(s) for s in STAGES[:-1]}}}  # fmt: skip
        if not params["webhook"]:
            log.warning("no webhook: the failure is reported in Airflow only")
        elif not post(params["webhook"], payload):
            log.error("webhook %s: the failure was not delivered", params["webhook"])
        raise AirflowFailException(text)
    env = {**os.environ, **context["task"].render_template(MAKE_ENV, context), "UNTIL": "notify"}
    with subprocess.Popen(["bash", "-c", STAGE_COMMAND], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as proc:  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=NOTIFY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # make and korasr with it
            raise AirflowFailException(f"korasr's notify stage still running after {NOTIFY_TIMEOUT_S} s") from None
    log.info("%s", output)
    if proc.returncode == GATE_REJECTED:
        log.warning("the candidate failed the gate: export, register and promotion skipped, production unchanged")
        return "gate failed"
    if proc.returncode != 0:
        raise AirflowFailException(f"korasr's notify stage exited {proc.returncode}")
    return "passed"


with DAG(
    dag_id="korasr_retrain",
    description="new data → fine-tune from production → evaluate both → gate → export → register → promote → notify",
    schedule="@weekly",
    start_date=datetime(2026, 1, 5),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "home": Param(HOME, type="string", description="the korasr checkout (its Makefile and .venv run the stages)"),
        "new_data": Param(
            os.environ.get("KORASR_NEW_DATA", os.path.join(HOME, "data", "incoming")),
            type="string",
            minLength=1,
            description="a KsponSpeech-layout folder or a NeMo manifest (default: $KORASR_NEW_DATA, data/incoming)",
        ),
        "recipe": Param("sample", type="string", pattern=NAME),
        "name": Param(
            "", type="string", pattern=f"^$|{NAME}", description="registered model (default korasr-<recipe>)"
        ),
        "eval": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^\S+$"},
            description="the fixed evaluation splits the gate scores (default: make retrain's, the recipe's eval_*)",
        ),
        "replay": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^\S+$"},
            description="earlier training data (default: the recipe's train manifest)",
        ),
        "promote": Param(False, type="boolean"),
        "webhook": Param(
            os.environ.get("KORASR_WEBHOOK", ""),
            type="string",
            description="Slack-compatible webhook for the outcome (default $KORASR_WEBHOOK)",
        ),
        "args": Param("", type="string", description="more korasr retrain options and training overrides (ARGS)"),
    },
    tags=["korasr"],
) as dag:
    tasks = {}
    for stage in STAGES[:-1]:
        tasks[stage] = BashOperator(
            task_id=stage,
            bash_command=STAGE_COMMAND,
            env={**MAKE_ENV, "UNTIL": stage},
            append_env=True,
            # a refused candidate is a skip (what depends on it is skipped too); every other non-zero exit fails
            skip_on_exit_code=GATE_REJECTED if stage == "gate" else None,
            retries=0 if stage == "gate" else 2,
        )
    tasks["notify"] = PythonOperator(task_id="notify", python_callable=notify, trigger_rule="all_done", retries=0)
    for before, after in itertools.pairwise(STAGES):
        tasks[before] >> tasks[after]
