"""Augmentation that provably runs: NeMo's lhotse data loader with speed perturbation and noise mixing changes
what the model is fed in the way each should, the noise manifests are made here, and a short training run with
both switched on completes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from korasr.data.noise import NOISE_KINDS, make_sample_noise, prepare_noise
from tests.conftest import nemo_path, run, train_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def noise(recipe) -> Path:
    root = make_sample_noise(recipe["tmp"] / "noise", files_per_kind=2, seconds=6.0)
    return prepare_noise(root, recipe["tmp"] / "manifests" / "noise").manifest


class Batch:
    """A lhotse dataset (CutSet → batch) that keeps each cut's id and samples: what the model would be fed."""

    def __getitem__(self, cuts):  # type: ignore[no-untyped-def]
        # a mixed cut (and each of its tracks) has a fresh id: key it by the utterance it carries (its supervision)
        return {
            (cut.supervisions[0].id if hasattr(cut, "tracks") else cut.id): np.asarray(cut.load_audio(), np.float32)[0]
            for cut in cuts
        }


def fed(recipe, tmp_path: Path, **augment) -> dict[str, np.ndarray]:
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config

    rows = (recipe["manifests"] / "train.jsonl").read_text(encoding="utf-8").splitlines()[20:36]
    manifest = tmp_path / "few.jsonl"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = {"manifest_filepath": str(manifest), "sample_rate": 16000, "use_lhotse": True, "batch_size": 4,
              "shuffle": False, "num_workers": 0, "shard_seed": 0, "seed": 0, "use_bucketing": False,
              "concurrent_bucketing": False, **augment}  # fmt: skip
    loader = get_lhotse_dataloader_from_config(config, global_rank=0, world_size=1, dataset=Batch())
    out: dict[str, np.ndarray] = {}
    for batch in loader:
        out.update({key: np.asarray(audio) for key, audio in batch.items()})  # the loader hands back tensors
        if len(out) >= 48:
            break
    return out


def test_speed_perturbation_resamples_what_the_model_hears(recipe, tmp_path):
    clean = fed(recipe, tmp_path)
    perturbed = fed(recipe, tmp_path, perturb_speed=True)
    factors = {key.rsplit("_sp", 1)[1] for key in perturbed if "_sp" in key}
    assert factors == {"0.9", "1.1"}, sorted(perturbed)  # both speeds were drawn, beside the original
    for key, audio in perturbed.items():
        if "_sp" not in key:
            assert np.array_equal(audio, clean[key])
            continue
        base, factor = key.rsplit("_sp", 1)
        expected = len(clean[base]) / float(factor)
        assert abs(len(audio) - expected) <= 0.01 * expected, (key, len(audio), expected)  # 0.9: longer, 1.1: shorter


def test_noise_mixing_adds_noise_at_the_configured_snr(recipe, tmp_path, noise):
    clean = fed(recipe, tmp_path)
    noisy = fed(recipe, tmp_path, noise_path=str(noise), noise_snr=[10.0, 20.0], noise_mix_prob=1.0)
    assert set(noisy) == set(clean)
    snrs = []
    for key, audio in noisy.items():
        assert len(audio) == len(clean[key])
        residual = audio - clean[key]
        snrs.append(10 * np.log10(np.mean(clean[key] ** 2) / np.mean(residual**2)))
    assert all(9.0 <= s <= 21.0 for s in snrs), snrs  # every utterance mixed, at 10–20 dB
    assert np.std(snrs) > 0.5  # drawn per utterance, not one fixed level


def test_noise_manifests_from_a_folder_account_for_every_file(tmp_path, recipe, noise):
    meta = json.loads((noise.parent / "noise.json").read_text())
    assert meta["recordings"] == 2 * len(NOISE_KINDS) and meta["rejected"] == 0 and meta["layout"] == "folder"
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.wav").write_bytes(b"RIFF not really")
    (folder / "ok.wav").write_bytes((noise.parent.parent.parent / "noise" / "hum" / "hum_00.wav").read_bytes())
    result = prepare_noise(folder, tmp_path / "out")
    rejects = [json.loads(line) for line in result.rejects.read_text().splitlines()]
    assert result.recordings == 1 and [r["reason"] for r in rejects] == ["unreadable audio"]
    assert prepare_noise(folder, tmp_path / "out").skipped


def test_a_short_training_run_with_both_augmentations_completes(recipe, noise):
    exp = recipe["tmp"] / "exp_augment"
    proc = run(*train_args(recipe, exp, "trainer.max_steps=6", "trainer.val_check_interval=6",
                           "model.train_ds.perturb_speed=true", f"model.train_ds.noise_path={noise}",
                           "exp_manager.create_wandb_logger=false"))  # fmt: skip
    record = yaml.safe_load((nemo_path(proc.stdout).parent / "korasr_run.yaml").read_text())
    assert record["model"]["train_ds"]["perturb_speed"] is True
    assert record["model"]["train_ds"]["noise_path"] == str(noise)
