"""Every YAML in conf/ and recipes/ composes, has its required keys, and instantiates a stock NeMo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from korasr.data.kspon import prepare_kspon
from korasr.data.sample_corpus import SampleOptions, make_sample_corpus
from korasr.tokenizer.build import TokenizerOptions, build_tokenizer
from korasr.train import (
    BASE,
    CONF,
    SIZES,
    TrainConfigError,
    compose,
    finalize,
    model_unit_manifest,
    recipe_configs,
    to_model_unit,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.parent.name for p in (ROOT / "recipes").glob("*/train.yaml"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("conf")
    corpus = make_sample_corpus(tmp / "K", SampleOptions(utterances=40, synth="tone"), progress=False)
    out = prepare_kspon(corpus, tmp / "manifests" / "sample", audio_dir=tmp / "a", progress=False).out_dir
    tok = build_tokenizer(out / "train.jsonl", tmp / "tok", TokenizerOptions(unit="jamo", vocab=128))
    return {"train": str(out / "train.jsonl"), "dev": str(out / "dev.jsonl"), "tokenizer": str(tok), "tmp": str(tmp)}


def overrides(data: dict[str, str]) -> list[str]:
    return [
        f"model.train_ds.manifest_filepath={data['train']}",
        f"model.validation_ds.manifest_filepath={data['dev']}",
        f"model.tokenizer.dir={data['tokenizer']}",
        f"exp_manager.exp_dir={data['tmp']}/exp",
    ]


def test_every_conf_file_is_a_size_or_the_base():
    files = sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml"))
    assert files == ["fastconformer_ctc.yaml"] + [f"size/{s}.yaml" for s in sorted(SIZES)] + ["streaming.yaml"]
    assert RECIPES == ["kspon", "sample"]


def test_required_keys_are_reported():
    cfg = compose([BASE, CONF / "size" / "tiny.yaml"])
    with pytest.raises(TrainConfigError, match=r"model\.train_ds\.manifest_filepath.*model\.tokenizer\.dir"):
        finalize(cfg, cuda_available=False)
    with pytest.raises(TrainConfigError, match="not of the form"):
        compose([BASE], ["model.optim.lr"])
    with pytest.raises(TrainConfigError, match="size"):
        recipe_configs(ROOT / "recipes" / "sample", "huge")


def test_large_is_nemos_published_fastconformer_l():
    cfg = compose([BASE, CONF / "size" / "large.yaml"])
    enc = cfg.model.encoder
    assert (enc.d_model, enc.n_heads, enc.n_layers, enc.subsampling, enc.subsampling_factor, enc.conv_kernel_size) == (
        512, 8, 17, "dw_striding", 8, 9)  # fmt: skip
    aug = cfg.model.spec_augment
    assert (aug.freq_masks, aug.freq_width, aug.time_masks, aug.time_width) == (2, 27, 10, 0.05)
    optim = cfg.model.optim
    assert (optim.name, optim.lr, list(optim.betas), optim.weight_decay, optim.sched.name) == (
        "adamw", 1e-3, [0.9, 0.98], 1e-3, "CosineAnnealing")  # fmt: skip
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.train_ds.use_lhotse and cfg.model.train_ds.batch_duration > 0
    assert cfg.model.train_ds.perturb_speed is False and cfg.model.train_ds.noise_path is None


def test_cpu_adaptation_and_derived_names(data):
    cfg = finalize(compose(recipe_configs(ROOT / "recipes" / "sample"), overrides(data)), cuda_available=False)
    assert (cfg.trainer.strategy, cfg.trainer.sync_batchnorm, cfg.trainer.precision) == ("auto", False, 32)
    assert cfg.exp_manager.name == f"tiny_{Path(data['tokenizer']).name}"
    cfg = compose(
        recipe_configs(ROOT / "recipes" / "kspon"), [*overrides(data), "trainer.devices=8", "trainer.num_nodes=2"]
    )
    gpu = finalize(cfg, cuda_available=True)
    assert (gpu.trainer.devices, gpu.trainer.num_nodes, gpu.trainer.strategy, gpu.trainer.sync_batchnorm) == (
        8, 2, "ddp", True)  # fmt: skip
    # on a CPU the devices are processes (DDP over gloo), never silently replaced; -1 (all GPUs) is one process
    cpu = finalize(cfg, cuda_available=False)
    assert (cpu.trainer.devices, cpu.trainer.num_nodes, cpu.trainer.strategy, cpu.trainer.accelerator) == (
        8, 2, "ddp", "cpu")  # fmt: skip
    kspon = finalize(compose(recipe_configs(ROOT / "recipes" / "kspon"), overrides(data)), cuda_available=False)
    assert (kspon.trainer.devices, kspon.trainer.strategy) == (1, "auto")
    with pytest.raises(TrainConfigError, match=r"trainer.devices=\[0, 1\]"):
        finalize(compose(recipe_configs(ROOT / "recipes" / "sample"), [*overrides(data), "trainer.devices=[0,1]"]),
                 cuda_available=False)  # fmt: skip


def test_model_unit_manifests_carry_jamo(data, tmp_path):
    converted = model_unit_manifest(data["train"], "jamo", tmp_path)
    rows = [json.loads(line) for line in converted.read_text(encoding="utf-8").splitlines()]
    source = [json.loads(line) for line in Path(data["train"]).read_text(encoding="utf-8").splitlines()]
    assert [r["utt_id"] for r in rows] == [r["utt_id"] for r in source]
    assert all(not any("\uac00" <= ch <= "\ud7a3" for ch in r["text"]) for r in rows)
    assert model_unit_manifest(data["train"], "jamo", tmp_path) == converted  # written once
    cfg = to_model_unit(compose([BASE], overrides(data)), tmp_path)
    assert cfg.model.korasr_text_unit == "jamo"
    assert cfg.model.train_ds.manifest_filepath == str(converted)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
def test_every_size_instantiates_a_stock_nemo_model(size, data):
    import lightning.pytorch as pl
    from nemo.collections.asr.models import EncDecCTCModelBPE

    cfg = finalize(compose([BASE, CONF / "size" / f"{size}.yaml"], overrides(data)), cuda_available=False)
    cfg.model.train_ds.num_workers = 0
    cfg.model.validation_ds.num_workers = 0
    trainer = pl.Trainer(**{**OmegaConf.to_container(cfg.trainer), "logger": False, "enable_progress_bar": False})
    model = EncDecCTCModelBPE(cfg=cfg.model, trainer=trainer)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    expected = {"large": (100, 125), "medium": (25, 40), "small": (10, 18), "tiny": (1, 6)}[size]
    assert expected[0] < params < expected[1], params
    assert model.decoder.num_classes_with_blank == model.tokenizer.vocab_size + 1


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "size", "lookaheads_ms"), [("kspon", "small", [1040, 480, 80, 0]),
                                                                ("sample", "tiny", [480, 120, 40])])  # fmt: skip
def test_streaming_variant_is_nemos_cache_aware_model(recipe, size, lookaheads_ms, data):
    """--streaming composes NeMo's cache-aware FastConformer on any size; the look-aheads the recipe promises are
    the ones the model has, in milliseconds."""
    import lightning.pytorch as pl
    from nemo.collections.asr.models import EncDecCTCModelBPE

    from korasr.lookahead import is_streaming, lookaheads

    configs = recipe_configs(ROOT / "recipes" / recipe, size, streaming=True)
    assert CONF / "streaming.yaml" in configs
    cfg = finalize(compose(configs, overrides(data)), cuda_available=False)
    assert cfg.model.preprocessor.normalize == "NA" and cfg.model.encoder.att_context_style == "chunked_limited"
    assert cfg.model.encoder.conv_context_size == "causal" and "_streaming_" in cfg.exp_manager.name
    cfg.model.train_ds.num_workers = cfg.model.validation_ds.num_workers = 0
    trainer = pl.Trainer(**{**OmegaConf.to_container(cfg.trainer), "logger": False, "enable_progress_bar": False})
    model = EncDecCTCModelBPE(cfg=cfg.model, trainer=trainer)
    assert is_streaming(model) and [o["lookahead_ms"] for o in lookaheads(model)] == lookaheads_ms
