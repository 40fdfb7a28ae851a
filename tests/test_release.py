"""`korasr release` (issue 25): a trained run as a hub folder with a model card and checksums; the folder works
wherever a model path does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import eval_rows, korasr_cmd, run, train_args

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def released(trained, exported, recipe) -> Path:
    evaluation = recipe["tmp"] / "eval_for_release"
    run("evaluate", "--model", str(exported), "--manifest", str(recipe["manifests"] / "eval_clean.jsonl"),
        "--manifest", str(recipe["manifests"] / "eval_other.jsonl"), "--out", str(evaluation), "--quiet")  # fmt: skip
    out = recipe["tmp"] / "release"
    proc = run("release", str(trained.parent), "--out", str(out), "--export", str(exported), "--eval", str(evaluation),
               "--license", "apache-2.0")  # fmt: skip
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    return out


def test_the_card_carries_the_runs_own_numbers_in_the_hubs_conventions(released, recipe):
    card = (released / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["language"] == ["ko"] and front["license"] == "apache-2.0" and front["library_name"] == "nemo"
    report = json.loads((released / "eval" / "report.json").read_text())
    index = {r["dataset"]["split"]: r["metrics"][0] for r in front["model-index"][0]["results"]}
    assert set(index) == {"eval_clean", "eval_other"}
    for split, metric in index.items():
        assert metric["type"] == "cer" and metric["value"] == round(report["splits"][split]["cer"], 2)
        assert "form phonetic" in metric["name"]  # the normalization it was scored under
    assert "synthetic speech only" in card and "trainer.max_steps=300" in card  # limits; the exact command
    assert (released / "training" / "korasr_run.yaml").is_file() and (
        released / "tokenizer" / "tokenizer.model"
    ).is_file()


def test_check_verifies_every_file_and_names_what_changed(released, tmp_path):
    assert subprocess.run(korasr_cmd("release", "--check", str(released)), capture_output=True, text=True,
                          cwd=ROOT).returncode == 0  # fmt: skip
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=released).returncode == 0
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(released, copy)
    with open(copy / "export" / "tokens.txt", "a", encoding="utf-8") as f:
        f.write("x 999\n")
    (copy / "notes.txt").write_text("added\n")
    (copy / "eval" / "report.md").unlink()
    proc = subprocess.run(korasr_cmd("release", "--check", str(copy)), capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    for named in ("missing: eval/report.md", "changed: export/tokens.txt", "not in SHA256SUMS: notes.txt"):
        assert named in proc.stderr, proc.stderr


def test_a_release_folder_is_a_model_path(released, exported, recipe, tmp_path):
    wav = eval_rows(recipe, 1)[0]["audio_filepath"]
    ours = run("transcribe", "--model", str(released), wav).stdout.strip()
    assert ours and ours == run("transcribe", "--model", str(exported), wav).stdout.strip()
    proc = run(*train_args(recipe, tmp_path / "exp"), "--init", str(released), "--dry-run")
    config = yaml.safe_load(proc.stdout)
    assert config["korasr"]["init_source"]["kind"] == "ctc"
    assert Path(config["korasr"]["init"]).parent == released


def test_release_refuses_a_folder_it_did_not_write(released, trained, exported, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me\n")
    proc = subprocess.run(korasr_cmd("release", str(trained.parent), "--out", str(tmp_path / "mine"), "--export",
                                     str(exported), "--eval", str(released / "eval")),
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode != 0 and "thesis.tex" in proc.stderr
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me\n"


def test_check_exempts_only_the_top_level_checksums_and_marker(tmp_path):
    """Issue 34 §6: a ``SHA256SUMS`` or ``.korasr*`` file below the top is an extra file like any other."""
    from korasr.fsutil import sha256_file
    from korasr.release import SUMS, ReleaseError, check

    folder = tmp_path / "release"
    (folder / "export").mkdir(parents=True)
    (folder / "README.md").write_text("card\n")
    (folder / "export" / "tokens.txt").write_text("a 0\n")
    (folder / ".korasr-artifact").write_text("{}\n")  # the top-level marker staged_dir writes: exempt
    listed = ("README.md", "export/tokens.txt")
    (folder / SUMS).write_text("".join(f"{sha256_file(folder / n)}  {n}\n" for n in listed))
    assert check(folder)["files"] == 2
    (folder / "export" / SUMS).write_text("planted\n")
    (folder / "export" / ".korasr-anything").write_text("planted\n")
    with pytest.raises(ReleaseError) as raised:
        check(folder)
    assert f"not in SHA256SUMS: export/.korasr-anything, export/{SUMS}" in str(raised.value)
