"""Before training: overrides wherever they stand (make's ARGS), a dry run that stops after every check, and the
CTC feasibility guard that refuses to train what CTC cannot emit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, korasr_cmd

pytestmark = pytest.mark.slow  # uses the session's sample-recipe corpus and tokenizer (not its training)


def data_args(recipe) -> list[str]:
    return [f"model.tokenizer.dir={recipe['tokenizer']}",
            f"model.train_ds.manifest_filepath={recipe['manifests'] / 'train.jsonl'}",
            f"model.validation_ds.manifest_filepath={recipe['manifests'] / 'dev.jsonl'}"]  # fmt: skip


def resolved(stdout: str) -> dict:
    return yaml.safe_load(stdout[stdout.index("name:") :])


@pytest.mark.parametrize("recipe_name", ["sample", "kspon"])
def test_make_train_passes_args_through_after_its_own_options(recipe, tmp_path, recipe_name):
    """`make train ARGS=...` put the overrides after --evaluate/--results and argparse refused them."""
    args = " ".join([*data_args(recipe), f"exp_manager.exp_dir={tmp_path}", "trainer.max_steps=2",
                     "model.encoder.subsampling_factor=4", "--dry-run"])  # fmt: skip
    # -o tokenizer: the prerequisites (corpus, manifests, tokenizer) count as made; the train stage runs
    proc = subprocess.run(["make", "-o", "tokenizer", "-o", "noise", "train", f"RECIPE={recipe_name}", f"ARGS={args}", "NOISE_MANIFEST=",
                           "KSPON_ROOT=/nonexistent"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--evaluate manifests/" in proc.stdout  # ARGS came after the evaluation options
    config = resolved(proc.stdout)
    assert config["trainer"]["max_steps"] == 2 and config["korasr"]["recipe"] == recipe_name
    assert config["model"]["train_ds"]["manifest_filepath"] == str(recipe["manifests"] / "train.jsonl")
    assert config["korasr"]["feasibility"]["infeasible"] == 0
    proc = subprocess.run(
        ["make", "train-only", f"ARGS={args}", "NOISE_MANIFEST="], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and resolved(proc.stdout)["trainer"]["max_steps"] == 2, proc.stderr[-3000:]


def test_unknown_arguments_are_still_refused(recipe):
    proc = subprocess.run(korasr_cmd("train", "--recipe", "recipes/sample", "--bogus", *data_args(recipe)),
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


def test_training_ctc_cannot_emit_is_refused_or_filtered(recipe, tmp_path):
    # at 16× the sample corpus's jamo pieces (about 9.5 a second) outrun the 6.25 encoder frames a second
    base = ["train", "--recipe", "recipes/sample", *data_args(recipe), f"exp_manager.exp_dir={tmp_path}",
            "model.encoder.subsampling_factor=16", "--dry-run"]  # fmt: skip
    refused = subprocess.run(korasr_cmd(*base), cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stdout[-2000:]
    for way_out in ("subsampling_factor=4", "VOCAB=", "--drop-infeasible", "korasr.max_infeasible=1"):
        assert way_out in refused.stderr, way_out
    assert "cannot emit" in refused.stderr and "Traceback" not in refused.stderr

    dropped = subprocess.run(korasr_cmd(*base, "--drop-infeasible"), cwd=ROOT, capture_output=True, text=True)
    assert dropped.returncode == 0, dropped.stderr[-3000:]
    config = resolved(dropped.stdout)
    feasibility = config["korasr"]["feasibility"]
    total = len((recipe["manifests"] / "train.jsonl").read_text().splitlines())
    kept = Path(config["model"]["train_ds"]["manifest_filepath"])
    assert feasibility["utterances"] == total and feasibility["dropped"] == feasibility["infeasible"] > 0
    assert len(kept.read_text().splitlines()) == total - feasibility["dropped"]
    assert kept.is_relative_to(tmp_path)  # a filtered copy in the run folder; the prepared manifest is untouched
    rows = [json.loads(line) for line in kept.read_text(encoding="utf-8").splitlines()]
    assert all(r["duration"] > 0 for r in rows)

    anyway = subprocess.run(korasr_cmd(*base, "korasr.max_infeasible=1"), cwd=ROOT, capture_output=True, text=True)
    assert anyway.returncode == 0 and resolved(anyway.stdout)["korasr"]["feasibility"]["dropped"] == 0


def test_the_guard_checks_at_the_fastest_speed_perturbation(recipe, tmp_path):
    """NeMo's loader plays each utterance at 0.9 and 1.1× too: one that CTC can just emit at its own speed cannot
    at 1.1×, so with perturb_speed the guard counts it (and says how to get out)."""
    import sentencepiece as spm
    from omegaconf import OmegaConf

    from korasr.text.codec import to_model_text
    from korasr.tokenizer.report import emittable
    from korasr.train import FASTEST_PERTURBATION, TrainConfigError, check_feasibility, tokenizer_unit

    row = json.loads((recipe["manifests"] / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    processor = spm.SentencePieceProcessor(model_file=str(recipe["tokenizer"] / "tokenizer.model"))
    ids = processor.encode(to_model_text(row["text"], tokenizer_unit(recipe["tokenizer"])))
    shortest = next(n / 100 for n in range(1, 100_000) if emittable(ids, n / 100, 8))  # just emittable at 8×
    assert not emittable(ids, shortest / FASTEST_PERTURBATION, 8)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({**row, "duration": shortest}, ensure_ascii=False) + "\n", encoding="utf-8")
    cfg = OmegaConf.create({"model": {"encoder": {"subsampling_factor": 8}, "tokenizer": {"dir": str(recipe["tokenizer"])},
                                      "train_ds": {"manifest_filepath": str(manifest), "perturb_speed": False}}})  # fmt: skip
    plain = check_feasibility(cfg, tmp_path)
    assert plain.korasr.feasibility.infeasible == 0 and plain.korasr.feasibility.speed == 1.0
    cfg.model.train_ds.perturb_speed = True
    with pytest.raises(TrainConfigError, match=r"1\.1× speed perturbation.*perturb_speed=false"):
        check_feasibility(cfg, tmp_path)
    OmegaConf.update(cfg, "korasr.max_infeasible", 1.0, force_add=True)
    assert check_feasibility(cfg, tmp_path).korasr.feasibility.infeasible == 1


def test_make_train_and_evaluate_touch_tracked_files_only_when_asked():
    """A user's `make train` / `make evaluate` writes its report beside the model and prints the table; the recipe's
    tracked RESULTS.md gains rows only with RESULTS=1 (or RESULTS=path)."""

    def korasr_lines(*args: str) -> list[str]:
        proc = subprocess.run(["make", "-n", "--no-print-directory", *args, "MODEL=exp/m.nemo"], capture_output=True,
                              text=True, cwd=ROOT)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stdout.splitlines() if "korasr train " in line or "korasr evaluate " in line]

    for target in ("train", "evaluate"):
        plain = korasr_lines(target)
        assert plain and all("--results" not in line for line in plain), plain
        assert "--evaluate manifests/sample/eval_novel.jsonl" in plain[-1] or target == "evaluate"
        asked = korasr_lines(target, "RESULTS=1")
        assert "--results recipes/sample/RESULTS.md" in asked[-1]
        assert "--results /tmp/r.md" in korasr_lines(target, "RESULTS=/tmp/r.md")[-1]
