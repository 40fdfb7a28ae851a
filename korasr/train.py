"""`korasr train`: compose YAML + dotted overrides, build a stock NeMo ``EncDecCTCModelBPE``, train it with
Lightning and NeMo's exp_manager (checkpoints, early stopping, resume, TensorBoard, wandb, MLflow), save a ``.nemo``.

``korasr.init`` (``korasr train --init``): the new model takes the front end and encoder of any NeMo ASR checkpoint
(CTC, RNNT, hybrid, streaming or not) and a CTC head over the recipe's tokenizer (korasr/transfer.py), with the
recipe's schedule. NeMo's own ``init_from_nemo_model`` override still works as NeMo defines it.

Composition order: ``conf/fastconformer_ctc.yaml`` → ``conf/size/<size>.yaml`` → the recipe's ``train.yaml`` →
overrides (``key.sub=value``, as Hydra's dotted overrides). torch, Lightning and NeMo are imported inside
:func:`train` only.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from korasr.errors import KorasrError
from korasr.provenance import command_line, git_commit, hardware, versions

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
BASE = CONF / "fastconformer_ctc.yaml"
SIZES = ("large", "medium", "small", "tiny")


class TrainConfigError(KorasrError, ValueError):
    pass


def compose(configs: list[str | os.PathLike[str]], overrides: list[str] | None = None) -> DictConfig:
    """Merge YAML files in order, then dotted overrides (``a.b=c``; values parsed as YAML)."""
    merged = OmegaConf.create()
    for path in configs:
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"{path}: no such config file")
        merged = OmegaConf.merge(merged, OmegaConf.load(path))
    for item in overrides or []:
        if "=" not in item:
            raise TrainConfigError(f"override {item!r} is not of the form key.sub=value")
    if overrides:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    return merged  # type: ignore[return-value]


STREAMING = CONF / "streaming.yaml"


def recipe_configs(recipe: str | os.PathLike[str], size: str | None = None, streaming: bool = False) -> list[Path]:
    """The files a recipe trains with: base, size (the recipe's ``korasr.size`` unless given), recipe. With
    ``streaming``: base, size, ``conf/streaming.yaml``, recipe, the recipe's ``streaming.yaml`` when it has one."""
    recipe_file = Path(recipe)
    if recipe_file.is_dir():
        recipe_file = recipe_file / "train.yaml"
    if not recipe_file.is_file():
        raise TrainConfigError(f"{recipe_file}: no recipe train.yaml")
    size = size or OmegaConf.load(recipe_file).get("korasr", {}).get("size")
    if size not in SIZES:
        raise TrainConfigError(f"model size must be one of {SIZES}, not {size!r} (set korasr.size or --size)")
    if not streaming:
        return [BASE, CONF / "size" / f"{size}.yaml", recipe_file]
    extra = [recipe_file.with_name("streaming.yaml")] if recipe_file.with_name("streaming.yaml").is_file() else []
    return [BASE, CONF / "size" / f"{size}.yaml", STREAMING, recipe_file, *extra]


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    missing = []
    for key in cfg:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            missing.append(full)
        elif isinstance(cfg[key], DictConfig):
            missing += _missing_keys(cfg[key], full + ".")
    return missing


def finalize(cfg: DictConfig, cuda_available: bool) -> DictConfig:
    """Derive what nobody should type (experiment names) and adapt the trainer to the machine."""
    cfg = cfg.copy()
    korasr = cfg.get("korasr", {})
    tokenizer_dir = Path(str(cfg.model.tokenizer.dir)) if not OmegaConf.is_missing(cfg.model.tokenizer, "dir") else None
    if OmegaConf.is_missing(cfg.exp_manager, "exp_dir"):
        cfg.exp_manager.exp_dir = str(ROOT / "exp" / str(korasr.get("recipe", "default")))
    if OmegaConf.is_missing(cfg.exp_manager, "name"):
        tok = tokenizer_dir.name if tokenizer_dir else "tokenizer"
        source = korasr.get("init_source")
        streaming = "_streaming" if korasr.get("streaming") or (source and source.streaming) else ""
        size = f"from_{Path(str(source.path)).stem}" if source else korasr.get("size", "model")
        cfg.exp_manager.name = f"{size}{streaming}_{tok}"
    missing = _missing_keys(cfg)
    if missing:
        raise TrainConfigError(f"required config keys are not set: {', '.join(missing)}")
    if not cuda_available:
        # CPU: no DDP, no synchronized batch norm, no bf16 autocast (fp32 is faster there).
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.strategy = "auto"
        cfg.trainer.sync_batchnorm = False
        cfg.trainer.precision = 32
        if cfg.trainer.devices in (-1, "auto") or int(cfg.trainer.devices) > 1:
            cfg.trainer.devices = 1
        for split in ("train_ds", "validation_ds", "test_ds"):
            cfg.model[split].pin_memory = False
    return cfg


def _absolute(path: str) -> str:
    """Config paths are relative to the repository root, wherever the command runs from."""
    return str(path) if Path(path).is_absolute() else str(ROOT / path)


def resolve_inputs(cfg: DictConfig) -> None:
    """Make manifest and tokenizer paths absolute (relative to the repository root), then check they exist."""
    for split in ("train_ds", "validation_ds"):
        paths = cfg.model[split].manifest_filepath
        cfg.model[split].manifest_filepath = (
            _absolute(paths) if isinstance(paths, str) else [_absolute(p) for p in paths]
        )
    cfg.model.tokenizer.dir = _absolute(cfg.model.tokenizer.dir)
    noise = cfg.model.train_ds.get("noise_path")
    if isinstance(noise, str):  # a lhotse noise manifest (korasr prepare noise); dict forms go to NeMo as they are
        cfg.model.train_ds.noise_path = _absolute(noise)
        if not Path(cfg.model.train_ds.noise_path).is_file():
            raise TrainConfigError(f"model.train_ds.noise_path: {noise} does not exist (run make noise)")
    for split in ("train_ds", "validation_ds"):
        paths = cfg.model[split].manifest_filepath
        for path in [paths] if isinstance(paths, str) else list(paths):
            if not Path(path).is_file():
                raise TrainConfigError(
                    f"model.{split}.manifest_filepath: {path} does not exist (run the prepare stage)"
                )
    tok = Path(cfg.model.tokenizer.dir)
    if not (tok / "tokenizer.model").is_file():
        raise TrainConfigError(f"model.tokenizer.dir: {tok} has no tokenizer.model (run the tokenizer stage)")


def _wandb_mode() -> str:
    """Offline unless the user configured wandb (an explicit WANDB_MODE, an API key, or a `wandb login`)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    logged_in = netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    return "online" if os.environ.get("WANDB_API_KEY") or logged_in else "offline"


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.exp_manager.exp_dir) / str(cfg.exp_manager.name) / str(cfg.exp_manager.version)


def tokenizer_unit(tokenizer_dir: str | os.PathLike[str]) -> str:
    meta = Path(tokenizer_dir) / "tokenizer.yaml"
    if not meta.is_file():
        raise TrainConfigError(f"{tokenizer_dir}: no tokenizer.yaml (build it with `korasr tokenizer build`)")
    return str(OmegaConf.load(meta).unit)


def model_unit_manifest(manifest: str | os.PathLike[str], unit: str, out_dir: Path) -> Path:
    """The manifest with ``text`` in the tokenizer's unit (NeMo tokenizes ``text`` as it is): NFD jamo for
    jamo units. Written once per source manifest content, atomically, under ``out_dir``."""
    import json

    from korasr.fsutil import atomic_open, sha256_file
    from korasr.text.codec import to_model_text

    source = Path(manifest)
    digest = sha256_file(source)[:12]
    target = out_dir / f"{source.stem}.{unit}.{digest}.jsonl"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(source, encoding="utf-8") as fin, atomic_open(target) as fout:
        for line in fin:
            row = json.loads(line)
            row["text"] = to_model_text(row["text"], unit)
            fout.write(json.dumps(row, ensure_ascii=False) + "\n")
    return target


def to_model_unit(cfg: DictConfig, out_dir: Path) -> DictConfig:
    """Point the train and validation datasets at model-unit copies of their manifests; record the unit."""
    cfg = cfg.copy()
    unit = tokenizer_unit(cfg.model.tokenizer.dir)
    sources = {}
    for split in ("train_ds", "validation_ds"):
        paths = cfg.model[split].manifest_filepath
        sources[split] = [str(Path(p).resolve()) for p in ([paths] if isinstance(paths, str) else paths)]
        converted = [str(model_unit_manifest(p, unit, out_dir)) for p in ([paths] if isinstance(paths, str) else paths)]
        cfg.model[split].manifest_filepath = converted[0] if isinstance(paths, str) else converted
    # Travels inside the .nemo (stock NeMo ignores it): how to turn decoded text back into NFC.
    cfg.model.korasr_text_unit = unit
    if "korasr" not in cfg:
        cfg.korasr = {}
    cfg.korasr.source_manifests = sources  # the lineage the registry records (korasr/registry.py)
    return cfg


MAX_INFEASIBLE = 0.005  # the share of train utterances CTC may be unable to emit before training is refused


FASTEST_PERTURBATION = 1.1  # NeMo's lhotse loader perturbs speed by 0.9 and 1.1


def check_feasibility(cfg: DictConfig, out_dir: Path) -> DictConfig:
    """CTC emits at most one token per encoder frame (plus a blank between repeats): refuse to train when more
    than ``korasr.max_infeasible`` of the train utterances cannot be emitted at the encoder's subsampling, or,
    with ``korasr.drop_infeasible``, train on the rest (a filtered copy of the manifest, counted in the run's
    record). Returns the config with the counts under ``korasr.feasibility``."""
    import json

    import sentencepiece as spm

    from korasr.fsutil import atomic_open, sha256_file
    from korasr.text.codec import to_model_text
    from korasr.tokenizer.report import emittable

    cfg = cfg.copy()
    options = cfg.get("korasr") or {}
    limit = float(options.get("max_infeasible", MAX_INFEASIBLE))
    drop = bool(options.get("drop_infeasible", False))
    subsampling = int(cfg.model.encoder.subsampling_factor)
    # speed perturbation (NeMo's lhotse loader: 0.9 and 1.1) shortens audio by up to 1.1×: check at the fastest
    fastest = FASTEST_PERTURBATION if cfg.model.train_ds.get("perturb_speed") else 1.0
    unit = tokenizer_unit(cfg.model.tokenizer.dir)
    processor = spm.SentencePieceProcessor(model_file=str(Path(cfg.model.tokenizer.dir) / "tokenizer.model"))
    paths = cfg.model.train_ds.manifest_filepath
    kept_paths, total, infeasible, examples = [], 0, 0, []
    for path in [paths] if isinstance(paths, str) else list(paths):
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        ids = processor.encode([to_model_text(r["text"], unit) for r in rows])
        bad = [
            i
            for i, (r, t) in enumerate(zip(rows, ids, strict=True))
            if not emittable(t, r["duration"] / fastest, subsampling)
        ]
        total, infeasible = total + len(rows), infeasible + len(bad)
        examples += [
            f"{rows[i].get('utt_id', i)} ({len(ids[i])} tokens in {rows[i]['duration']:.2f} s)" for i in bad[:3]
        ]
        if drop and bad:
            target = out_dir / "manifests" / f"{Path(path).stem}.feasible{subsampling}x.{sha256_file(path)[:12]}.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            skip = set(bad)
            with atomic_open(target) as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for i, r in enumerate(rows) if i not in skip)
            path = str(target)
        kept_paths.append(str(path))
    share = infeasible / max(total, 1)
    speed = f" and {fastest:g}× speed perturbation" if fastest != 1.0 else ""
    log.info("CTC feasibility at %d× subsampling%s: %d of %d train utterances (%.2f%%) cannot be emitted%s",
             subsampling, speed, infeasible, total, 100 * share, " (dropped)" if drop and infeasible else "")  # fmt: skip
    if share > limit and not drop:
        raise TrainConfigError(
            f"{infeasible} of {total} train utterances ({share:.2%}, more than korasr.max_infeasible={limit:.2%}) "
            f"have more tokens than the encoder has frames at {subsampling}× subsampling{speed}, so CTC cannot emit "
            f"them (e.g. {', '.join(examples)}). Ways out: "
            + (
                f"a checkpoint that subsamples 4× (--init {options.init_source.path}: its encoder is fixed), "
                if options.get("init_source")
                else "4× subsampling (model.encoder.subsampling_factor=4), "
            )
            + ("no speed perturbation (model.train_ds.perturb_speed=false), " if fastest != 1.0 else "")
            + "a larger piece vocabulary (make tokenizer VOCAB=...: fewer tokens per second), --drop-infeasible "
            "(train without them; they are counted), or korasr.max_infeasible=1 to train anyway"
        )
    cfg.model.train_ds.manifest_filepath = kept_paths[0] if isinstance(paths, str) else kept_paths
    OmegaConf.update(cfg, "korasr.feasibility", {"subsampling": subsampling, "speed": fastest, "utterances": total,
                     "infeasible": infeasible, "share": round(share, 5), "dropped": infeasible if drop else 0},
                     force_add=True)  # fmt: skip
    return cfg


def resolve(cfg: DictConfig, cuda_available: bool) -> DictConfig:
    """Everything decided before training: the machine's trainer settings, absolute existing inputs, and the
    CTC feasibility guard. ``korasr train --dry-run`` stops after this."""
    from korasr.transfer import adopt

    cfg = finalize(adopt(cfg), cuda_available)
    resolve_inputs(cfg)
    return check_feasibility(cfg, run_dir(cfg))


def dry_run(cfg: DictConfig) -> str:
    """The resolved config as YAML, after every check ``train`` makes before it starts (no training)."""
    import torch

    return OmegaConf.to_yaml(resolve(cfg, torch.cuda.is_available()), resolve=True)


def train(cfg: DictConfig) -> Path:
    """Train and return the final ``.nemo`` (best checkpoint's weights)."""
    import lightning.pytorch as pl
    import torch
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from nemo.utils.exp_manager import exp_manager

    started = time.perf_counter()
    cfg = resolve(cfg, torch.cuda.is_available())
    os.environ["WANDB_MODE"] = _wandb_mode()
    if cfg.exp_manager.get("create_wandb_logger"):
        cfg.exp_manager.wandb_logger_kwargs.save_dir = str(run_dir(cfg))
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    if "threads" in cfg.get("korasr", {}):
        torch.set_num_threads(int(cfg.korasr.threads))
    log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))

    out = run_dir(cfg)
    cfg = to_model_unit(cfg, out / "manifests")
    callbacks = []
    if int(cfg.korasr.get("freeze_encoder_steps", 0) or 0) > 0:
        from korasr.transfer import freeze_encoder

        callbacks.append(freeze_encoder(int(cfg.korasr.freeze_encoder_steps)))
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), callbacks=callbacks)
    exp_manager(trainer, cfg.exp_manager)
    if cfg.get("korasr", {}).get("mlflow"):
        trainer.loggers = [*trainer.loggers, _mlflow_logger(cfg)]
    out.mkdir(parents=True, exist_ok=True)
    record = {"korasr": {"git_commit": git_commit(), "versions": versions(), "wandb_mode": os.environ["WANDB_MODE"],
                         "command": command_line(), "hardware": hardware()}}  # fmt: skip
    if trainer.is_global_zero:
        OmegaConf.save(OmegaConf.merge(cfg, record), out / "korasr_run.yaml", resolve=True)

    model = EncDecCTCModelBPE(cfg=cfg.model, trainer=trainer)
    log.info("model: %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    if cfg.korasr.get("init_source"):
        from korasr.transfer import initialize

        cfg.korasr.init_modules = initialize(model, cfg)
        if trainer.is_global_zero:
            OmegaConf.save(OmegaConf.merge(cfg, record), out / "korasr_run.yaml", resolve=True)
    elif cfg.get("init_from_nemo_model"):
        log.info("initializing from %s", cfg.init_from_nemo_model)
        model.maybe_init_from_pretrained_checkpoint(cfg)
    trainer.fit(model)

    final = out / f"{cfg.exp_manager.name}.nemo"
    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best and Path(best).is_file():
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            model.load_state_dict(state)
            log.info("final model: weights of the best checkpoint %s", best)
        model.save_to(str(final))
        seconds = time.perf_counter() - started
        log.info("saved %s after %.0f s (global step %d)", final, seconds, trainer.global_step)
        from korasr.fsutil import write_json

        write_json(out / "training.json", {"global_step": int(trainer.global_step), "seconds": round(seconds, 1),
                                           "nemo": final.name, "hardware": hardware()})  # fmt: skip
        _mlflow_finish(trainer, out, final)
    _finish_wandb()
    return final


def _mlflow_logger(cfg: DictConfig):  # type: ignore[no-untyped-def]
    """Lightning's MLFlowLogger on korasr's store (the registry's: MLFLOW_TRACKING_URI or exp/mlflow.db), one run
    per training run folder (a resumed training continues its MLflow run: ``mlflow.json``)."""
    import json

    from lightning.pytorch.loggers import MLFlowLogger

    from korasr import registry

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri, location = registry.tracking_uri(), registry.artifact_location()
    # a resumed training continues its MLflow run; NeMo's exp_manager has by now moved the previous attempt's files
    # (mlflow.json among them) into run_<N>/
    previous = run_dir(cfg) / "mlflow.json"
    attempts = sorted(run_dir(cfg).glob("run_*/mlflow.json"), key=lambda p: int(p.parent.name[4:] or 0)
                      if p.parent.name[4:].isdigit() else -1)  # fmt: skip
    found = previous if previous.is_file() else (attempts[-1] if attempts else None)
    run_id = json.loads(found.read_text(encoding="utf-8"))["run_id"] if found else None
    logger = MLFlowLogger(experiment_name=str(cfg.korasr.get("mlflow_experiment", "korasr-train")),
                          run_name=str(cfg.exp_manager.name), tracking_uri=uri, artifact_location=location,
                          run_id=run_id, tags={"korasr.run_dir": str(run_dir(cfg))})  # fmt: skip
    record = {"run_id": logger.run_id, "experiment_id": logger.experiment_id, "tracking_uri": uri}
    run_dir(cfg).mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return logger


def _mlflow_finish(trainer, out: Path, final: Path) -> None:  # type: ignore[no-untyped-def]
    """Add the resolved config and the .nemo to the run's MLflow record (``mlflow.json`` in the run folder names it
    for the evaluation that follows)."""
    from lightning.pytorch.loggers import MLFlowLogger

    found = [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]
    if not found:
        return
    logger = found[0]
    logger.experiment.log_artifact(logger.run_id, str(out / "korasr_run.yaml"), "config")
    logger.experiment.log_artifact(logger.run_id, str(final), "model")


def log_evaluation(model: str | os.PathLike[str], report_dir: str | os.PathLike[str], report: dict) -> None:
    """Log an evaluation of a trained ``.nemo`` (its CER per split, the report) to its training run's MLflow record,
    when the run folder has one (``mlflow.json``)."""
    import json

    record_path = Path(model).parent / "mlflow.json"
    if not record_path.is_file():
        return
    from mlflow import MlflowClient

    record = json.loads(record_path.read_text(encoding="utf-8"))
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    for split, scores in report.get("splits", {}).items():
        name = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in split)
        for key in ("cer", "cer_space", "wer"):
            if scores.get(key) is not None:
                client.log_metric(record["run_id"], f"eval.{name}.{key}", float(scores[key]))
    client.log_artifact(record["run_id"], str(Path(report_dir) / "report.json"), "evaluation")


def _finish_wandb() -> None:
    """Close the wandb run now, so its closing messages come before whatever the caller prints."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
