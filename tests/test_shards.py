"""Shards for many nodes (`korasr shard`): manifest → lhotse Shar shards → manifest gives the same rows and samples,
every utterance lands in exactly one shard and the index counts it, a world size that cannot split the shards evenly
is refused with a size that can, a bad manifest line is named, NeMo's loader applies the same augmentation to shards,
and a short training run reads its train set from shards alone (no train manifest, no loose files)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from korasr.data.shar import SHAR, ShardError, check_shards, pack_shards, read_cuts, unpack_shards
from tests.conftest import ROOT, korasr_cmd, nemo_path, run

pytestmark = pytest.mark.slow  # uses the session's sample-recipe corpus and tokenizer (not its training)
UTTERANCES = 60


@pytest.fixture(scope="module")
def few(recipe, tmp_path_factory) -> Path:
    """The first 60 train rows, their audio copied beside them (a test may delete it)."""
    tmp = tmp_path_factory.mktemp("few")
    (tmp / "audio").mkdir()
    rows = [json.loads(line) for line in (recipe["manifests"] / "train.jsonl").read_text().splitlines()[:UTTERANCES]]
    for row in rows:
        copy = tmp / "audio" / Path(row["audio_filepath"]).name
        shutil.copyfile(row["audio_filepath"], copy)
        row["audio_filepath"] = str(copy)
    manifest = tmp / "few.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return manifest


def rows_of(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_manifest_to_shards_and_back_is_the_same(few, tmp_path):
    result = pack_shards([few], tmp_path / "shards", shard_size=16, jobs=2, progress=False)
    index = result.index
    assert not result.skipped and index["utterances"] == UTTERANCES and index["shards"] == 4
    assert [s["utterances"] for s in index["shard_list"]] == [16, 16, 16, 12]
    original = rows_of(few)
    assert index["seconds"] == pytest.approx(sum(r["duration"] for r in original), abs=0.01)
    # every utterance in exactly one shard, as the index says, and the audio tar matches the cuts one to one
    per_shard = [[c["id"] for c in read_cuts(tmp_path / "shards" / SHAR / s["cuts"])] for s in index["shard_list"]]
    assert sorted(i for ids in per_shard for i in ids) == sorted(r["utt_id"] for r in original)
    assert [len(ids) for ids in per_shard] == [s["utterances"] for s in index["shard_list"]]
    assert sorted(p.name for p in (tmp_path / "shards" / SHAR).iterdir())[:2] == ["cuts.000000.jsonl.gz",
                                                                                  "cuts.000001.jsonl.gz"]  # fmt: skip
    assert check_shards(tmp_path / "shards", world_size=2)["utterances"] == UTTERANCES

    back = unpack_shards(tmp_path / "shards", tmp_path / "back", progress=False)
    restored = rows_of(back.out / "few.jsonl")
    assert [r["utt_id"] for r in restored] == [r["utt_id"] for r in original]
    for a, b in zip(original, restored, strict=True):
        assert {k: v for k, v in a.items() if k != "audio_filepath"} == {k: v for k, v in b.items()
                                                                          if k != "audio_filepath"}  # fmt: skip
        samples_a, rate_a = sf.read(a["audio_filepath"], dtype="int16")
        samples_b, rate_b = sf.read(b["audio_filepath"], dtype="int16")
        assert rate_a == rate_b == 16000 and np.array_equal(samples_a, samples_b)  # FLAC is lossless

    # a rerun with the same inputs and options is skipped; another shard size is written again
    assert pack_shards([few], tmp_path / "shards", shard_size=16, progress=False).skipped
    assert unpack_shards(tmp_path / "shards", tmp_path / "back", progress=False).skipped
    again = pack_shards([few], tmp_path / "shards", shard_size=30, progress=False)
    assert not again.skipped and again.index["shards"] == 2 and len(list((tmp_path / "shards" / SHAR).iterdir())) == 4


def test_a_world_size_that_cannot_split_the_shards_is_refused_with_one_that_can(few, tmp_path):
    with pytest.raises(ShardError) as refused:
        pack_shards([few], tmp_path / "shards", shard_size=16, world_size=3, progress=False)  # 4 shards, 3 ranks
    message = str(refused.value)
    assert "4 shards do not divide among 3 ranks" in message and "--shard-size 10 (6 shards, 2 per rank)" in message
    assert "a world size that divides 4 (1, 2, 4)" in message
    assert not (tmp_path / "shards").exists()  # refused before anything was written
    assert pack_shards([few], tmp_path / "shards", shard_size=10, world_size=3, progress=False).index["shards"] == 6
    # the same check on a folder that exists, from the command line
    proc = subprocess.run(korasr_cmd("shard", "check", str(tmp_path / "shards"), "--world-size", "4"), cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "6 shards do not divide among 4 ranks" in proc.stderr
    assert "--shard-size 8 (8 shards, 2 per rank)" in proc.stderr


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not JSON"),
        ('{"audio_filepath": "/nonexistent.wav", "duration": 1.0, "text": "가"}', "does not exist"),
        (None, "already at"),  # the first row again: a duplicate id
    ],
)
def test_a_bad_manifest_line_is_named_by_file_and_line(few, tmp_path, line, reason):
    lines = few.read_text(encoding="utf-8").splitlines()[:4]
    lines.insert(2, lines[0] if line is None else line)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run(korasr_cmd("shard", "pack", str(bad), "--out", str(tmp_path / "out"), "--quiet"), cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"korasr shard: error: {bad}:3: " in proc.stderr and reason in proc.stderr
    assert not (tmp_path / "out").exists()


def test_nemo_applies_speed_perturbation_and_noise_to_shards(few, tmp_path):
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config

    from korasr.data.noise import make_sample_noise, prepare_noise

    shards = pack_shards([few], tmp_path / "shards", shard_size=16, progress=False).out
    noise = prepare_noise(make_sample_noise(tmp_path / "noise", files_per_kind=1, seconds=4.0, synth="tone"),
                          tmp_path / "noise_manifest").manifest  # fmt: skip

    class Seen:
        def __getitem__(self, cuts):  # type: ignore[no-untyped-def]
            return [(type(c).__name__, c.supervisions[0].id, c.load_audio().shape[-1]) for c in cuts]

    config = {"shar_path": str(shards / SHAR), "sample_rate": 16000, "use_lhotse": True, "batch_duration": 40,
              "shuffle": True, "num_workers": 0, "shard_seed": 0, "seed": 0, "use_bucketing": True, "num_buckets": 2,
              "bucket_buffer_size": 200, "shuffle_buffer_size": 200, "concurrent_bucketing": False,
              "perturb_speed": True, "noise_path": str(noise), "noise_mix_prob": 0.5}  # fmt: skip
    seen = []
    for batch in get_lhotse_dataloader_from_config(config, global_rank=0, world_size=1, dataset=Seen()):
        seen += batch
        if len(seen) >= 3 * UTTERANCES:  # the shard stream never ends
            break
    assert {utt.rsplit("_sp", 1)[1] for _, utt, _ in seen if "_sp" in utt} == {"0.9", "1.1"}
    assert {kind for kind, _, _ in seen} == {"MonoCut", "MixedCut"}  # noise mixed into about half
    utterances = {utt.rsplit("_sp", 1)[0] for _, utt, _ in seen}  # the stream's three speeds each run at a third
    assert utterances <= {r["utt_id"] for r in rows_of(few)} and len(utterances) >= 0.8 * UTTERANCES


def test_readers_of_shards_are_seeded_apart_and_trained_in_steps(few, tmp_path, recipe):
    from korasr.train import compose, config_changes, recipe_configs
    from korasr.train_from_shards import resolve_shards

    shards = pack_shards([few], tmp_path / "shards", shard_size=16, progress=False).out

    def resolved(*overrides: str):  # type: ignore[no-untyped-def]
        cfg = compose(recipe_configs("recipes/sample"), [f"model.train_ds.shar_path={shards}", "exp_manager.name=x",
                                                          *overrides])  # fmt: skip
        resolve_shards(cfg, str)
        return cfg

    one = resolved("trainer.devices=1", "trainer.max_steps=7", "trainer.accumulate_grad_batches=2")
    assert one.model.train_ds.shard_seed == 0 and one.model.train_ds.manifest_filepath is None
    assert one.trainer.limit_train_batches == 14  # one epoch for the whole run: the stream is never restarted
    two = resolved("trainer.devices=2", "model.train_ds.num_workers=1")
    assert two.model.train_ds.shard_seed == "randomized" and two.model.train_ds.seed == 0
    # one reader or two read the same run, which may resume with either; another seed is another run
    alone, shared = resolved("trainer.devices=1"), resolved("trainer.devices=2", "model.train_ds.num_workers=1")
    assert config_changes(alone, shared) == {} == config_changes(shared, alone)
    other = resolved("trainer.devices=2", "model.train_ds.num_workers=1", "model.train_ds.shard_seed=1")
    assert config_changes(alone, other) == {"model.train_ds.shard_seed": (0, 1)}
    with pytest.raises(ShardError, match="num_workers=1 or more"):
        resolved("trainer.devices=2", "model.train_ds.num_workers=0")
    with pytest.raises(ShardError, match="pack them from the filtered manifest"):
        resolved("korasr.drop_infeasible=true")
    with pytest.raises(ShardError, match="not a shard folder"):
        resolved(f"model.train_ds.shar_path={tmp_path}")


def test_a_short_training_run_reads_its_train_set_from_shards_alone(few, tmp_path, recipe):
    loose = tmp_path / "loose"
    (loose / "audio").mkdir(parents=True)  # the test's own copy: the module's manifest and audio stay for the others
    rows = rows_of(few)
    for row in rows:
        row["audio_filepath"] = shutil.copy(row["audio_filepath"], loose / "audio")
    (loose / "few.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    shards = pack_shards([loose / "few.jsonl"], tmp_path / "shards", shard_size=16, progress=False).out
    shutil.rmtree(loose)  # no train manifest, no loose train audio: only the shards
    exp = tmp_path / "exp"
    args = ("train", "--recipe", "recipes/sample", f"model.tokenizer.dir={recipe['tokenizer']}",
            f"model.train_ds.shar_path={shards}", f"model.train_ds.manifest_filepath={loose / 'few.jsonl'}",
            f"model.validation_ds.manifest_filepath={recipe['manifests'] / 'dev.jsonl'}", f"exp_manager.exp_dir={exp}",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
            "exp_manager.create_wandb_logger=false", "korasr.mlflow=false")  # fmt: skip
    proc = run(*args)
    run_dir = nemo_path(proc.stdout).parent
    assert json.loads((run_dir / "training.json").read_text())["global_step"] == 3
    record = yaml.safe_load((run_dir / "korasr_run.yaml").read_text())
    train_ds = record["model"]["train_ds"]
    assert train_ds["manifest_filepath"] is None and record["trainer"]["limit_train_batches"] == 3
    assert record["korasr"]["source_shards"] == [str(shards)]
    assert record["korasr"]["source_manifests"]["train_ds"] == [str((loose / "few.jsonl").resolve())]
    # NeMo read a Shar folder in the run: the cut manifests with text in the tokenizer's unit, links to the audio
    read = Path(train_ds["shar_path"])
    assert read.parent == run_dir / "manifests" and sorted(p.name for p in read.iterdir())[0] == "cuts.000000.jsonl.gz"
    assert (read / "recording.000000.tar").resolve() == shards / SHAR / "recording.000000.tar"
    with gzip.open(read / "cuts.000000.jsonl.gz", "rt", encoding="utf-8") as f:
        text = json.loads(f.readline())["supervisions"][0]["text"]
    assert text == unicodedata.normalize("NFD", text) != unicodedata.normalize("NFC", text)  # jamo, as NeMo tokenizes
    # the same run continued by two processes (another world size: the shard seed becomes 'randomized'), to step 5
    more = run(*args, "trainer.max_steps=5", "trainer.devices=2", "model.train_ds.num_workers=1")
    assert nemo_path(more.stdout).parent == run_dir and "from step 3" in more.stdout + more.stderr
    assert json.loads((run_dir / "training.json").read_text())["global_step"] == 5
