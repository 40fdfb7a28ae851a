"""Training past one process, on CPU (Lightning's DDP over gloo): `make train DEVICES=2` (Lightning starts the second
process), two "nodes" on the loopback address (two launches with the variables a SLURM or Kubernetes job sets), a
run resumed with another world size, and a run that is not the checkpoint's refused. tests/ddp_probe.py records
what each rank saw."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, korasr_cmd, nemo_path, train_args

PROBE = "korasr.callbacks=[tests/ddp_probe.py:Probe]"
COMMON = ("model.train_ds.perturb_speed=false", "exp_manager.create_wandb_logger=false", "trainer.val_check_interval=6")
pytestmark = pytest.mark.alone  # DDP's ranks step in lockstep: after the background builds (tests/conftest.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], probe: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "KORASR_PROBE_DIR": str(probe), **env}
    return subprocess.Popen(korasr_cmd(*args), cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return out, err


def records(probe: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(probe.glob("rank*.json"))]


def step_of(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])


@pytest.fixture(scope="module")
def two_processes(recipe, trained, tmp_path_factory) -> dict:
    """`korasr train` with trainer.devices=2 on CPU, 12 steps, validating at 6 and 12, evaluated after. It starts
    from the suite's trained model (NeMo's init_from_nemo_model), so the validations have errors to count."""
    tmp = tmp_path_factory.mktemp("ddp")
    exp, results = tmp / "exp", tmp / "RESULTS.md"
    common = (*COMMON, f"init_from_nemo_model={trained}")
    args = train_args(recipe, exp, "trainer.devices=2", "trainer.max_steps=12", *common, PROBE,
                      "--evaluate", str(recipe["manifests"] / "eval_clean.jsonl"), "--results", str(results))  # fmt: skip
    out, err = finish(launch(args, tmp / "probe_a"))
    return {"tmp": tmp, "exp": exp, "run": exp / "tiny_tokenizer" / "run", "stdout": out, "stderr": err,
            "results": results, "probe": records(tmp / "probe_a"), "common": common}  # fmt: skip


def test_two_processes_split_the_data_reduce_the_metric_and_write_once(two_processes, recipe):
    ranks = two_processes["probe"]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    # training: each rank its own batches (within the first epoch no utterance on both)
    seen = [{u for batch in r["train"] for u in batch} for r in ranks]
    assert len(ranks[0]["train"]) == len(ranks[1]["train"]) == 12
    assert all(len(s) > 12 for s in seen) and not seen[0] & seen[1], "both ranks trained on the same utterances"
    # validation: the dev set split between the ranks, every utterance once, the metric over all of it
    dev = len((recipe["manifests"] / "dev.jsonl").read_text(encoding="utf-8").splitlines())
    assert [v["step"] for v in ranks[0]["validations"]] == [6, 12]
    for v0, v1 in zip(ranks[0]["validations"], ranks[1]["validations"], strict=True):
        assert v0["utterances"] and v1["utterances"] and len(set(v0["utterances"]) | set(v1["utterances"])) == dev
        assert len(v0["utterances"]) + len(v1["utterances"]) <= dev + 1  # lhotse repeats one when one is left over
        pooled = (v0["errors"] + v1["errors"]) / (v0["units"] + v1["units"])
        shares = (v0["errors"] / v0["units"], v1["errors"] / v1["units"])
        assert shares[0] != shares[1]  # so a metric of one rank's share could not pass for the pooled one
        assert v0["val_wer"] == pytest.approx(pooled, abs=1e-6) and v1["val_wer"] == pytest.approx(pooled, abs=1e-6)
    # rank 0 alone writes the model, its record and its RESULTS rows; the command prints the model once
    run = two_processes["run"]
    assert [p.name for p in run.glob("*.nemo")] == ["tiny_tokenizer.nemo"]
    assert nemo_path(two_processes["stdout"]) == run / "tiny_tokenizer.nemo"
    assert two_processes["stdout"].splitlines().count(str(run / "tiny_tokenizer.nemo")) == 1  # rank 1 prints none
    assert json.loads((run / "training.json").read_text(encoding="utf-8"))["global_step"] == 12
    rows = [line for line in two_processes["results"].read_text(encoding="utf-8").splitlines() if "eval_clean" in line]
    assert len(rows) == 1, rows
    assert "DDP over gloo" in two_processes["stderr"]


def test_two_nodes_on_loopback_resume_then_one_process_resumes_them(two_processes, recipe):
    """The run above goes on as two "nodes" (two launches, one process each, NODE_RANK 0 and 1 on 127.0.0.1), then
    in one process (another world size): each continues from the last checkpoint."""
    exp, run, tmp = two_processes["exp"], two_processes["run"], two_processes["tmp"]
    common = two_processes["common"]
    args = train_args(recipe, exp, "trainer.num_nodes=2", "trainer.devices=1", "trainer.max_steps=18", *common, PROBE)
    port = str(free_port())
    nodes = [launch(args, tmp / "probe_b", MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                    NODE_RANK=str(rank)) for rank in (0, 1)]  # fmt: skip
    (out0, err0), (out1, _) = (finish(p) for p in nodes)
    assert "resuming" in err0 and "from step 12" in err0
    assert nemo_path(out0) == run / "tiny_tokenizer.nemo" and str(run / "tiny_tokenizer.nemo") not in out1.splitlines()
    ranks = records(tmp / "probe_b")
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert [len(r["train"]) for r in ranks] == [6, 6]  # steps 13–18, not from the start
    seen = [{u for batch in r["train"] for u in batch} for r in ranks]
    assert not seen[0] & seen[1]
    assert step_of(max(run.glob("checkpoints/*last.ckpt"), key=lambda p: p.stat().st_mtime)) == 18

    args = train_args(recipe, exp, "trainer.devices=1", "trainer.max_steps=24", *common, PROBE)
    out, err = finish(launch(args, tmp / "probe_c"))
    assert "from step 18" in err and nemo_path(out) == run / "tiny_tokenizer.nemo"
    (only,) = records(tmp / "probe_c")
    assert (only["world_size"], len(only["train"])) == (1, 6)
    assert json.loads((run / "training.json").read_text(encoding="utf-8"))["global_step"] == 24


def test_a_run_resumes_only_with_its_own_config(two_processes, recipe):
    exp, run = two_processes["exp"], two_processes["run"]
    done = json.loads((run / "training.json").read_text(encoding="utf-8"))["global_step"]
    nemo = (run / "tiny_tokenizer.nemo").stat().st_mtime_ns

    def attempt(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(korasr_cmd(*train_args(recipe, exp, *two_processes["common"], *extra)), cwd=ROOT,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    def listed(stderr: str) -> str:
        return stderr.split("another config: ")[1].split(". ")[0]

    shorter = attempt("trainer.max_steps=5")  # the case: a shorter budget than the run's
    assert shorter.returncode != 0
    assert listed(shorter.stderr) == f"trainer.max_steps: {done} → 5"
    assert "past trainer.max_steps=5: nothing to train" in shorter.stderr
    assert "exp_manager.name=NEW_NAME" in shorter.stderr
    changed = attempt(f"trainer.max_steps={done + 20}", "model.optim.lr=0.0005")  # a longer budget alone may change
    lr = OmegaConf.load(run / "korasr_run.yaml").model.optim.lr
    assert changed.returncode != 0 and listed(changed.stderr) == f"model.optim.lr: {lr} → 0.0005"
    finished = attempt(f"trainer.max_steps={done}")  # the same run, at its budget
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"already trained to step {done}" in finished.stderr
    assert nemo_path(finished.stdout) == run / "tiny_tokenizer.nemo"
    assert (run / "tiny_tokenizer.nemo").stat().st_mtime_ns == nemo  # nothing trained, nothing rewritten


def test_the_encoder_stays_frozen_under_ddp_then_trains(recipe, tmp_path):
    """Issue 34 §6: `make train DEVICES=2 INIT=… ARGS='--freeze-encoder-steps N'` stopped at step 1 ("Expected to
    have finished reduction…": requires_grad changed after DDP had wrapped the model). Two processes, a 2-layer
    stand-in, 4 steps of which the first 2 frozen: the encoder is the checkpoint's until step 2 on both ranks, then
    moves; the head moves from the first step."""
    from tests.ddp_probe import encoder_digest
    from tests.standins import standin

    checkpoint = standin(tmp_path / "ctc_2layers.nemo", "ctc", recipe["tokenizer"],
                         recipe["manifests"] / "train.jsonl", layers=2, seed=12)  # fmt: skip
    args = train_args(recipe, tmp_path / "exp", "--init", str(checkpoint), "--freeze-encoder-steps", "2",
                      "trainer.devices=2", "trainer.max_steps=4", "trainer.val_check_interval=4",
                      "trainer.limit_val_batches=1", "model.optim.sched.warmup_steps=1", "model.train_ds.perturb_speed=false",
                      "exp_manager.create_wandb_logger=false",
                      "korasr.callbacks=[tests/ddp_probe.py:Weights]")  # fmt: skip
    out, err = finish(launch(args, tmp_path / "probe"))
    assert "DDP over gloo" in err and nemo_path(out).is_file()
    from nemo.collections.asr.models import ASRModel

    source = ASRModel.restore_from(str(checkpoint), map_location="cpu").encoder.parameters()
    ranks = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((tmp_path / "probe").glob("weights_rank*.json"))]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["encoder"] == ranks[1]["encoder"] and ranks[0]["decoder"] == ranks[1]["decoder"]  # replicas agree
    encoder, decoder = ranks[0]["encoder"], ranks[0]["decoder"]
    assert sorted(encoder, key=int) == ["0", "1", "2", "3", "4"]
    assert encoder["0"] == encoder["1"] == encoder["2"] == encoder_digest(source)  # frozen for steps 0 and 1
    assert encoder["2"] != encoder["3"] != encoder["4"]  # then it trains
    assert decoder["0"] != decoder["1"] != decoder["2"]  # the head learns while the encoder is frozen
