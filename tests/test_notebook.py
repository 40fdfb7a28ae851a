"""The fine-tuning notebook, executed top to bottom with papermill on CPU: a few steps on the sample corpus,
moved onto a different tokenizer of the same size (NeMo's decoder-reload trap), evaluated and exported. Other kinds
of checkpoint (RNNT, hybrid, streaming, 128 bands) go through the same korasr.transfer path: tests/test_transfer.py."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run

pytestmark = pytest.mark.slow


def test_finetune_notebook_runs_and_writes_its_outputs(trained, recipe, tmp_path):
    import papermill

    # the same size as the model's unigram 80, another model: what NeMo's fine-tune script silently mixes up
    other = tmp_path / "jamo_bpe_v80"
    run("tokenizer", "build", "--manifest", str(recipe["manifests"] / "train.jsonl"), "--unit", "jamo",
        "--type", "bpe", "--vocab", "80", "--out", str(other))  # fmt: skip
    out = tmp_path / "finetune"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "finetune.ipynb"),
        str(tmp_path / "executed.ipynb"),
        parameters={
            "init": str(trained),
            "new_tokenizer_dir": str(other),
            "train_manifest": str(recipe["manifests"] / "train.jsonl"),
            "dev_manifest": str(recipe["manifests"] / "dev.jsonl"),
            "eval_manifests": [str(recipe["manifests"] / "eval_clean.jsonl")],
            "out_dir": str(out),
            "max_steps": 40,
            "warmup_steps": 5,
            "learning_rate": 2e-3,
            "freeze_encoder_steps": 20,
            "val_every": 20,
            "cer_utterances": 16,
        },
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
    )
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["vocabulary_changed"] and summary["steps"] == 40
    # what was kept and what is new, with parameter counts: the head is new (other pieces, the same size)
    kept = {m["module"]: m["from"] for m in summary["modules"]}
    assert kept["decoder"] == "new" and kept["encoder"].startswith(trained.name) and summary["source_kind"] == "ctc"
    assert all(m["parameters"] > 0 for m in summary["modules"] if m["module"] != "preprocessor")
    assert summary["loss_last"] < summary["loss_first"]  # the new decoder learns
    assert [step for step, _ in summary["dev_cer_curve"]] == [20, 40]
    assert set(summary["before"]) == set(summary["after"]) == {"eval_clean"}
    assert (
        summary["before"]["eval_clean"] < 15.0
    )  # the fixture's checkpoint (about 6%), before its decoder was replaced
    assert (out / "curves.png").stat().st_size > 5_000
    assert (out / "eval_after" / "report.md").is_file() and (out / "finetuned.nemo").is_file()
    assert json.loads((out / "export" / "model.json").read_text())["parity"]["model.onnx"]["greedy_identical"]
    # committed with outputs cleared: no hidden state travels with the notebook
    committed = json.loads((ROOT / "notebooks" / "finetune.ipynb").read_text(encoding="utf-8"))
    assert all(
        not c.get("outputs") and not c.get("execution_count") for c in committed["cells"] if c["cell_type"] == "code"
    )
