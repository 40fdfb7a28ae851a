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
        _on_cpu(cfg)
    return cfg


def _on_cpu(cfg: DictConfig) -> None:
    """CPU: fp32 (faster there than bf16 autocast), no pinned memory, no synchronized batch norm (torch's
    SyncBatchNorm needs CUDA); ``trainer.devices`` processes per node, more than one in all is Lightning's DDP over
    gloo. ``devices: -1`` / ``auto`` (all GPUs) means one process here, and the log says so."""
    cfg.trainer.accelerator = "cpu"
    cfg.trainer.sync_batchnorm = False
    cfg.trainer.precision = 32
    devices = cfg.trainer.devices
    if devices in (-1, "-1", "auto"):
        log.info("trainer.devices=%s on CPU: one process (DEVICES=N, or trainer.devices=N, for N)", devices)
        cfg.trainer.devices = devices = 1
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise TrainConfigError(f"trainer.devices={devices!r}: on CPU a number of processes (1, 2, …) is expected")
    world = devices * int(cfg.trainer.num_nodes)
    cfg.trainer.strategy = "ddp" if world > 1 else "auto"
    if world > 1:
        log.info("CPU: %d processes (%d per node × %d nodes), DDP over gloo", world, devices, cfg.trainer.num_nodes)
    for split in ("train_ds", "validation_ds", "test_ds"):
        cfg.model[split].pin_memory = False


def _absolute(path: str) -> str:
    """Config paths are relative to the repository root, wherever the command runs from."""
    return str(path) if Path(path).is_absolute() else str(ROOT / path)


def _reads_shards(cfg: DictConfig) -> bool:
    """Whether the train set is read from shards (``model.train_ds.shar_path``, korasr shard pack)."""
    return cfg.model.train_ds.get("shar_path") is not None


def _manifest_splits(cfg: DictConfig) -> tuple[str, ...]:
    """The datasets read from manifests: the train set reads shards instead when ``model.train_ds.shar_path`` is set."""
    return ("validation_ds",) if _reads_shards(cfg) else ("train_ds", "validation_ds")


def resolve_inputs(cfg: DictConfig) -> None:
    """Make manifest, shard and tokenizer paths absolute (relative to the repository root), then check they exist."""
    if _reads_shards(cfg):  # shards (korasr shard pack) instead of the train manifest
        from korasr.train_from_shards import resolve_shards

        resolve_shards(cfg, _absolute)
    for split in _manifest_splits(cfg):
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
    for split in _manifest_splits(cfg):
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
    if _reads_shards(cfg):  # their cut manifests, converted beside links to their audio
        from korasr.train_from_shards import to_model_unit_shards

        sources["train_ds"] = to_model_unit_shards(cfg, unit, out_dir)
    for split in _manifest_splits(cfg):
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
    from korasr.train_from_shards import shard_folders, shard_rows

    cfg = cfg.copy()
    options = cfg.get("korasr") or {}
    limit = float(options.get("max_infeasible", MAX_INFEASIBLE))
    drop = bool(options.get("drop_infeasible", False))
    subsampling = int(cfg.model.encoder.subsampling_factor)
    # speed perturbation (NeMo's lhotse loader: 0.9 and 1.1) shortens audio by up to 1.1×: check at the fastest
    fastest = FASTEST_PERTURBATION if cfg.model.train_ds.get("perturb_speed") else 1.0
    unit = tokenizer_unit(cfg.model.tokenizer.dir)
    processor = spm.SentencePieceProcessor(model_file=str(Path(cfg.model.tokenizer.dir) / "tokenizer.model"))
    shards = _reads_shards(cfg)  # then the utterances of the shards' cut manifests
    paths = shard_folders(cfg) if shards else cfg.model.train_ds.manifest_filepath
    kept_paths, total, infeasible, examples = [], 0, 0, []
    for path in [paths] if isinstance(paths, str) else list(paths):
        rows = shard_rows(path) if shards else [json.loads(line) for line in Path(path).read_text(encoding="utf-8")
                                                .splitlines() if line.strip()]  # fmt: skip
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
    if not shards:
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


# What may change when a run resumes; the rest of the resolved config must be the one its checkpoints were trained
# with. A longer budget, how many processes share the work and on what, logging, and korasr's record of the run.
RESUME_MAY_CHANGE = (
    "trainer.max_steps", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.accelerator",
    "trainer.precision", "trainer.sync_batchnorm", "trainer.log_every_n_steps", "trainer.enable_progress_bar",
    "trainer.limit_train_batches",  # from shards: max_steps × accumulate_grad_batches (korasr/train_from_shards.py)
    "model.train_ds.num_workers", "model.validation_ds.num_workers", "model.test_ds.num_workers",
    "model.train_ds.pin_memory", "model.validation_ds.pin_memory", "model.test_ds.pin_memory",
    "exp_manager.create_wandb_logger", "exp_manager.wandb_logger_kwargs", "exp_manager.create_tensorboard_logger",
    "korasr.threads", "korasr.mlflow", "korasr.mlflow_experiment", "korasr.callbacks", "korasr.init_modules",
    "korasr.git_commit", "korasr.versions", "korasr.wandb_mode", "korasr.command", "korasr.hardware",
)  # fmt: skip
_ABSENT = "(not set)"


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def config_changes(before: DictConfig, now: DictConfig) -> dict[str, tuple[object, object]]:
    """Keys whose values differ between a run's recorded config and this one, apart from ``RESUME_MAY_CHANGE``
    (``trainer.max_steps`` counts when it shrinks) and a shard seed's form: ``{key: (before, now)}``."""
    from korasr.train_from_shards import as_chosen

    old = as_chosen(_flat(OmegaConf.to_container(before, resolve=True)))
    new = as_chosen(_flat(OmegaConf.to_container(now, resolve=True)))
    changes = {
        key: (old.get(key, _ABSENT), new.get(key, _ABSENT))
        for key in sorted(old.keys() | new.keys())
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
        and not any(key == k or key.startswith(f"{k}.") for k in RESUME_MAY_CHANGE)
    }
    if int(now.trainer.max_steps) < int(before.trainer.max_steps):
        changes["trainer.max_steps"] = (int(before.trainer.max_steps), int(now.trainer.max_steps))
    return changes


def last_checkpoint(out: Path) -> Path | None:
    found = sorted(out.glob("checkpoints/*last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    """The global step of a Lightning checkpoint (memory-mapped: the weights are not read)."""
    import torch

    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])


def resume_state(cfg: DictConfig, out: Path) -> tuple[str, int]:
    """``("fresh", 0)`` without a checkpoint in ``out``; ``("resume", step)`` when the checkpoint's run is this
    config's; ``("finished", step)`` when it is and has reached ``trainer.max_steps``. A run trained with another
    config is refused, naming the keys that differ and the ways on (:class:`TrainConfigError`)."""
    last = last_checkpoint(out)
    if last is None:
        return "fresh", 0
    step = checkpoint_step(last)
    earlier = sorted(out.glob("run_*/korasr_run.yaml"), key=lambda p: p.stat().st_mtime, reverse=True)
    records = [out / "korasr_run.yaml", *earlier]  # this attempt's record, else the newest earlier attempt's
    record = next((r for r in records if r.is_file()), None)
    if record is None:
        log.warning("%s: no korasr_run.yaml beside the checkpoint: resuming without checking its config", out)
        return "resume", step
    changes = config_changes(OmegaConf.load(record), cfg)
    if changes:
        listed = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in list(changes.items())[:12])
        more = f" (and {len(changes) - 12} more)" if len(changes) > 12 else ""
        past = (
            f" Its checkpoint is at step {step}, past trainer.max_steps={cfg.trainer.max_steps}: nothing to train."
            if step >= int(cfg.trainer.max_steps)
            else ""
        )
        raise TrainConfigError(
            f"{out} holds a run (checkpoint at step {step}) trained with another config: {listed}{more}.{past} "
            f"To resume it, run it with its own config (a longer trainer.max_steps, the devices, nodes and logging "
            f"may change); to train this config beside it, name the run: exp_manager.name=NEW_NAME "
            f"(make train ARGS='exp_manager.name=NEW_NAME'); to start over, remove {out}."
        )
    return ("finished" if step >= int(cfg.trainer.max_steps) else "resume"), step


def is_global_zero_env() -> bool:
    """Whether this process is rank 0 by the variables a launcher sets (torchrun, SLURM, Lightning's own)."""
    ranks = (os.environ.get(v) for v in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))
    return all(r in (None, "", "0") for r in ranks)


def load_callback(spec: str):  # type: ignore[no-untyped-def]
    """A Lightning callback named ``package.module:Class`` or ``path/to/file.py:Class`` (``korasr.callbacks``),
    built without arguments."""
    import importlib
    import importlib.util

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise TrainConfigError(f"korasr.callbacks: {spec!r} is not module:Class or file.py:Class")
    if where.endswith(".py"):
        loader = importlib.util.spec_from_file_location(Path(where).stem, where)
        if loader is None or not Path(where).is_file():
            raise TrainConfigError(f"korasr.callbacks: {where}: no such file")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        module = importlib.import_module(where)
    return getattr(module, name)()


def dry_run(cfg: DictConfig) -> str:
    """The resolved config as YAML, after every check ``train`` makes before it starts (no training)."""
    import torch

    return OmegaConf.to_yaml(resolve(cfg, torch.cuda.is_available()), resolve=True)


def train(cfg: DictConfig) -> Path | None:
    """Train and return the final ``.nemo`` (best checkpoint's weights); ``None`` in a process other than rank 0
    (DDP: every rank runs this, rank 0 alone writes the ``.nemo`` and what follows it). A run folder with a
    checkpoint resumes only the same run (:func:`resume_state`)."""
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
    if "threads" in cfg.get("korasr", {}):  # the machine's threads, shared by the processes on it (CPU DDP)
        from korasr.runtime.onnx import thread_cap

        share = 1 if torch.cuda.is_available() else int(cfg.trainer.devices)
        # OMP_NUM_THREADS caps it: a process given fewer cores than the recipe assumes never oversubscribes them
        threads = min(int(cfg.korasr.threads), thread_cap() or int(cfg.korasr.threads))
        torch.set_num_threads(max(1, threads // share))
    log.info("resolved config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))

    out = run_dir(cfg)
    cfg = to_model_unit(cfg, out / "manifests")
    state, step = resume_state(cfg, out)
    final = out / f"{cfg.exp_manager.name}.nemo"
    if state == "finished" and final.is_file():
        log.info("%s: already trained to step %d (trainer.max_steps=%d), nothing to train; a longer "
                 "trainer.max_steps continues it", out, step, cfg.trainer.max_steps)  # fmt: skip
        return final if is_global_zero_env() else None
    if state == "resume":
        log.info("resuming %s from step %d", out, step)
    callbacks = [load_callback(str(spec)) for spec in cfg.get("korasr", {}).get("callbacks") or []]
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

    if torch.distributed.is_initialized():  # DDP is over: what follows (saving, evaluating) is rank 0's alone
        torch.distributed.destroy_process_group()
    if trainer.is_global_zero:
        _save_final(trainer, model, final, started)
    _finish_wandb()
    return final if trainer.is_global_zero else None


def _save_final(trainer, model, final: Path, started: float) -> None:  # type: ignore[no-untyped-def]
    """Rank 0, after training: the best checkpoint's weights as ``final`` (.nemo), ``training.json``, MLflow."""
    import torch

    from korasr.fsutil import write_json

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and Path(best).is_file():
        weights = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(weights)
        log.info("final model: weights of the best checkpoint %s", best)
    model.save_to(str(final))
    seconds = time.perf_counter() - started
    log.info("saved %s after %.0f s (global step %d)", final, seconds, trainer.global_step)
    write_json(final.parent / "training.json", {"global_step": int(trainer.global_step), "seconds": round(seconds, 1),
                                                "nemo": final.name, "hardware": hardware()})  # fmt: skip
    _mlflow_finish(trainer, final.parent, final)


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
