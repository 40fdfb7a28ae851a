"""Training from shards (``korasr shard pack``): ``model.train_ds.shar_path`` names a shard folder, or a list of them
(plain, or ``[path, weight]`` pairs, as NeMo takes them), and NeMo's lhotse loader reads the shards instead of the
train manifest (``use_lhotse`` with ``shar_path``); validation stays on its manifest. The same bucketing, noise
mixing and speed perturbation settings apply: NeMo applies them to the cuts whatever their source.

What korasr does on top, and why:

- Text in the tokenizer's unit: NeMo tokenizes a cut's text as it is. The run folder gets copies of the shards' cut
  manifests (kilobytes a shard) with the text converted, beside links to the shards' audio tars, and ``shar_path``
  points there; the shards themselves stay unit-free.
- Readers that read different streams: with shards, each rank and each data loader worker runs its own sampler over
  all shards, shuffled by ``shard_seed``. An integer seed gives them all the same order, hence the same batches; with
  more than one reader it becomes ``randomized`` (lhotse's per-rank, per-worker seeds from ``train_ds.seed``, set to
  the integer: still reproducible). Those seeds are set in data loader workers, so more than one rank needs
  ``num_workers`` >= 1.
- An endless stream: NeMo's Shar cut set repeats forever, and NeMo would size an iterable loader's epoch with
  ``len()``, which it has not. ``trainer.limit_train_batches`` becomes ``max_steps`` × ``accumulate_grad_batches``:
  one epoch for the whole run, so the stream is never restarted (a restarted stream replays the same order).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from korasr.data.shar import INDEX, ShardError, read_cuts, read_index, shard_files
from korasr.fsutil import atomic_open, replace_durably, sha256_file, tmp_name

log = logging.getLogger(__name__)


def reads_shards(cfg: DictConfig) -> bool:
    return cfg.model.train_ds.get("shar_path") is not None


def _items(shar_path) -> list[tuple[str, float | None]]:  # type: ignore[no-untyped-def]
    """``shar_path`` as (folder, weight or None) pairs, whatever its form."""
    if isinstance(shar_path, str | Path):
        return [(str(shar_path), None)]
    if isinstance(shar_path, list | ListConfig):
        items = []
        for item in shar_path:
            if isinstance(item, str | Path):
                items.append((str(item), None))
            elif isinstance(item, list | ListConfig) and len(item) == 2 and isinstance(item[1], int | float):
                items.append((str(item[0]), float(item[1])))
            else:
                raise ShardError(f"model.train_ds.shar_path: {item!r} is neither a folder nor a [folder, weight] pair")
        return items
    raise ShardError("model.train_ds.shar_path: a shard folder (korasr shard pack), a list of them, or a list of "
                     f"[folder, weight] pairs, not {OmegaConf.to_container(shar_path) if OmegaConf.is_config(shar_path) else shar_path!r}")  # fmt: skip


def _rebuild(items: list[tuple[str, float | None]], single: bool):  # type: ignore[no-untyped-def]
    if single:
        return items[0][0]
    return [path if weight is None else [path, weight] for path, weight in items]


def shard_folders(cfg: DictConfig) -> list[str]:
    return [path for path, _ in _items(cfg.model.train_ds.shar_path)]


def _world_size(trainer: DictConfig) -> int | None:
    """Ranks the trainer will run, when the config says (``devices: -1`` or ``auto`` is known only at launch)."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, list | ListConfig):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    elif isinstance(devices, str) and devices.isdigit():
        count = int(devices)
    else:
        return None
    return count * int(trainer.get("num_nodes", 1) or 1)


def resolve_shards(cfg: DictConfig, absolute) -> None:  # type: ignore[no-untyped-def]
    """Make the shard folders absolute (``absolute``: the caller's rule) and check them; drop the train manifest; seed
    each reader apart; size the one epoch. Raises :class:`ShardError` with the way out."""
    ds, trainer = cfg.model.train_ds, cfg.trainer
    single = isinstance(ds.shar_path, str | Path)
    items = [(absolute(path), weight) for path, weight in _items(ds.shar_path)]
    for path, _ in items:
        read_index(path)
    ds.shar_path = _rebuild(items, single)
    ds.manifest_filepath = None
    if (cfg.get("korasr") or {}).get("drop_infeasible"):
        raise ShardError("--drop-infeasible filters a train manifest; shards cannot drop utterances without being "
                         "written again: pack them from the filtered manifest (`korasr train --dry-run "
                         "--drop-infeasible` on the manifest writes it to the run folder's manifests/), or train with "
                         "korasr.max_infeasible=1")  # fmt: skip
    world, workers = _world_size(trainer), int(ds.get("num_workers", 0) or 0)
    if (world is None or world > 1) and workers < 1:
        raise ShardError(f"reading shards on {world or 'several'} ranks needs data loader workers "
                         "(model.train_ds.num_workers=1 or more): lhotse seeds each rank's shard order in its workers, "
                         "and without them every rank reads the same shards in the same order")  # fmt: skip
    seed = ds.get("shard_seed", "trng")
    if isinstance(seed, int) and (world is None or world * max(workers, 1) > 1):
        ds.seed, ds.shard_seed = seed, "randomized"
        log.info("shards: %s ranks × %d workers each read their own order: shard_seed %d → 'randomized' "
                 "(train_ds.seed=%d)", world or "several", max(workers, 1), seed, seed)  # fmt: skip
    steps = int(trainer.get("max_steps", -1) or -1)
    if steps <= 0:
        raise ShardError("training from shards is counted in steps (the shard stream never ends): set "
                         "trainer.max_steps")  # fmt: skip
    if not isinstance(trainer.get("limit_train_batches", 1.0), int):
        trainer.limit_train_batches = steps * int(trainer.get("accumulate_grad_batches", 1) or 1)


def as_chosen(flat: dict[str, object]) -> dict[str, object]:
    """A flattened run config with the shard seed as the user chose it. :func:`resolve_shards` turns an integer
    ``shard_seed`` into ``'randomized'`` with ``seed`` set to it when several readers share the shards; both forms are
    the same run whatever the number of readers, which may change on resume (a resumed shard run restarts its stream
    either way). Other configs are returned as they are."""
    if flat.get("model.train_ds.shar_path") is None:
        return flat
    out = dict(flat)
    seed, shard_seed = out.get("model.train_ds.seed"), out.get("model.train_ds.shard_seed")
    if shard_seed == "randomized" and isinstance(seed, int):
        out["model.train_ds.shard_seed"] = out.pop("model.train_ds.seed")
    elif isinstance(shard_seed, int) and seed in (None, shard_seed):
        out.pop("model.train_ds.seed", None)
    return out


def shard_rows(folder: str | os.PathLike[str]) -> list[dict]:
    """Id, text and duration of every utterance of a shard folder (its cut manifests only; no audio is read)."""
    rows = []
    for path in shard_files(folder)["cuts"]:
        for cut in read_cuts(path):
            rows.append({"utt_id": cut["id"], "text": " ".join(s.get("text") or "" for s in cut["supervisions"]),
                         "duration": float(cut["duration"])})  # fmt: skip
    return rows


def _link(target: Path, link: Path) -> None:
    """``link`` → ``target``, made under a temporary name and renamed (ranks may make the same link at once)."""
    tmp = tmp_name(link)
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    replace_durably([(tmp, link)])


def model_unit_folder(folder: str, unit: str, out_dir: Path) -> Path:
    """A Shar folder reading ``folder``'s shards with the text in ``unit``: converted cut manifests and links to the
    audio tars, under ``out_dir``, named by the index's hash (written once; each file atomically)."""
    from korasr.text.codec import to_model_text

    source = Path(folder)
    index = read_index(source)
    target = out_dir / f"{index['name']}.shards.{unit}.{sha256_file(source / INDEX)[:12]}"
    files = shard_files(source)
    target.mkdir(parents=True, exist_ok=True)
    for cuts, recording in zip(files["cuts"], files["recording"], strict=True):
        if not (target / cuts.name).is_file():
            with atomic_open(target / cuts.name, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as f:
                for cut in read_cuts(cuts):
                    for s in cut["supervisions"]:
                        s["text"] = to_model_text(s["text"], unit)
                    f.write(json.dumps(cut, ensure_ascii=False) + "\n")
        if not (target / recording.name).is_symlink():
            _link(recording.resolve(), target / recording.name)
    return target


def to_model_unit_shards(cfg: DictConfig, unit: str, out_dir: Path) -> list[str]:
    """Point ``shar_path`` at model-unit copies of its folders (same form: a folder, a list, pairs) and record the
    folders under ``korasr.source_shards``; return the manifests they were packed from (the run's lineage)."""
    single = isinstance(cfg.model.train_ds.shar_path, str | Path)
    items = _items(cfg.model.train_ds.shar_path)
    converted = [(str(model_unit_folder(path, unit, out_dir)), weight) for path, weight in items]
    cfg.model.train_ds.shar_path = _rebuild(converted, single)
    OmegaConf.update(cfg, "korasr.source_shards", [path for path, _ in items], force_add=True)
    return [m["path"] for path, _ in items for m in read_index(path)["inputs"]["manifests"]]
