"""Start a training from any NeMo ASR checkpoint (``korasr train --init``, ``make train INIT=``).

The checkpoint's **front end and encoder** come over as they are, config and weights: its filterbank (80 or 128 mel
bands, ``per_feature`` or no normalization), its subsampling, its attention context (cache-aware streaming
included). The **head** is a fresh CTC decoder over the recipe's tokenizer, unless

- the checkpoint is CTC (or hybrid RNNT-CTC: its CTC head) **and** its tokenizer has exactly the recipe's pieces in
  the same order: then the head is kept (a fine-tuning: what ``korasr retrain`` does). A tokenizer of the same size
  with other pieces gets a new head: its rows would mean other tokens (NeMo issue 15778);
- ``korasr.keep_tokenizer`` (``--keep-tokenizer``): the checkpoint's own tokenizer is written out and trained with,
  and its CTC head kept.

A character-vocabulary CTC checkpoint (NeMo's ``EncDecCTCModel``, as older released models are: no tokenizer, the
decoder's ``vocabulary`` is its labels) gives its front end and encoder like any other and always gets a new head
over the recipe's tokenizer; ``--keep-tokenizer`` on one is refused, since korasr trains a stock
``EncDecCTCModelBPE`` over a SentencePiece tokenizer and characters are not one.

Weights move with NeMo's partial initialization (``load_part_of_state_dict``: include and exclude lists, the dict
form of ``init_from_nemo_model``), never a whole ``strict=False`` load that would take a head of the right shape
for the wrong tokens; then every encoder tensor of the new model is checked to be the checkpoint's.

Anything that is not a CTC, RNNT or hybrid speech-recognition ``.nemo`` (a TTS or speaker model, a corrupt file)
is refused by name before training starts. Pretrained names go to NeMo's ``from_pretrained`` (a model hub must be
reachable). torch and NeMo are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from korasr.errors import KorasrError
from korasr.fsutil import replace_durably, sync_dir, sync_tree

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
HEADS = {"ctc": "decoder.", "hybrid": "ctc_decoder."}  # where each kind keeps a CTC head
KINDS = (  # the base class each kind descends from, most specific first
    ("hybrid", "nemo.collections.asr.models.hybrid_rnnt_ctc_models.EncDecHybridRNNTCTCModel"),
    ("rnnt", "nemo.collections.asr.models.rnnt_models.EncDecRNNTModel"),
    ("ctc", "nemo.collections.asr.models.ctc_models.EncDecCTCModel"),
)
_HANGUL_JAMO = re.compile("[\u1100-\u11ff]")


class InitError(KorasrError, ValueError):
    pass


@dataclass
class Source:
    """A checkpoint to start from, read without loading its weights."""

    path: Path
    target: str  # the checkpoint's model class
    kind: str  # ctc, rnnt or hybrid
    config: DictConfig  # its model config, resolved

    @property
    def streaming(self) -> bool:
        return str(self.config.encoder.get("att_context_style", "regular")) == "chunked_limited"

    @property
    def characters(self) -> list[str] | None:
        """A character model's labels (``EncDecCTCModel``: no tokenizer); ``None`` for a tokenizer's model."""
        if "tokenizer" in self.config:
            return None
        labels = self.config.get("labels") or (self.config.get("decoder") or {}).get("vocabulary") or []
        return [str(c) for c in labels]


def locate(init: str | os.PathLike[str], cache: Path | None = None) -> Path:
    """The ``.nemo`` an ``--init`` names: a file; a release or training folder holding one; or a NeMo pretrained
    name, fetched by NeMo's ``from_pretrained`` into ``cache`` (needs a reachable hub)."""
    path = Path(init)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("*.nemo")) or sorted(path.glob("*/*.nemo"))
        if len(found) != 1:
            raise InitError(f"--init {path}: a folder needs exactly one .nemo (at its top or one level down); "
                            f"found {len(found)}")  # fmt: skip
        return found[0]
    text = str(init)
    if "/" in text.strip("/").replace("nvidia/", "", 1) or text.endswith(".nemo"):
        raise InitError(f"--init {text}: no such file or folder")
    return _pretrained(text, cache or ROOT / "exp" / "pretrained")


def _pretrained(name: str, cache: Path) -> Path:
    target = cache / f"{name.replace('/', '--')}.nemo"
    if target.is_file():
        return target
    from nemo.collections.asr.models import ASRModel

    try:
        model = ASRModel.from_pretrained(name, map_location="cpu")
    except Exception as e:
        raise InitError(f"--init {name}: not a file, and NeMo's from_pretrained could not fetch it "
                        f"({type(e).__name__}: {str(e)[:200]}). Where no model hub is reachable, download the .nemo "
                        "elsewhere and pass its path") from e  # fmt: skip
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    model.save_to(str(partial))
    replace_durably([(partial, target)])
    return target


def inspect(path: Path) -> Source:
    """Read the checkpoint's config and decide its kind; a clear error for anything korasr cannot start from."""
    import importlib

    from nemo.core.classes.modelPT import ModelPT

    try:
        config = ModelPT.restore_from(str(path), map_location="cpu", return_config=True)
    except Exception as e:
        raise InitError(f"--init {path}: not a readable .nemo archive ({type(e).__name__}: {str(e)[:200]})") from e
    target = str(config.get("target", ""))
    model_cls = None
    if target.startswith("nemo.collections.asr."):
        module, _, name = target.rpartition(".")
        try:
            model_cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            model_cls = None
    kind = None
    for candidate, base_path in KINDS:
        module, _, name = base_path.rpartition(".")
        if model_cls is not None and issubclass(model_cls, getattr(importlib.import_module(module), name)):
            kind = candidate
            break
    if kind is None:
        raise InitError(f"--init {path}: a {target or 'model without a target class'} checkpoint, not a "
                        "speech-recognition model korasr can start from (NeMo CTC, RNNT or hybrid RNNT-CTC)")  # fmt: skip
    for part in ("preprocessor", "encoder"):
        if part not in config:
            raise InitError(f"--init {path}: the {target} checkpoint has no {part} config")
    resolved = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    return Source(path=path, target=target, kind=kind, config=resolved)  # type: ignore[arg-type]


def adopt(cfg: DictConfig) -> DictConfig:
    """The recipe's config with the checkpoint's front end and encoder (``korasr.init``); with
    ``korasr.keep_tokenizer``, its tokenizer too. What was taken is recorded under ``korasr.init_source``."""
    options = cfg.get("korasr") or {}
    if not options.get("init"):
        return cfg
    cfg = cfg.copy()
    path = locate(options.init)
    source = inspect(path)
    rate = int(source.config.preprocessor.get("sample_rate", 16000))
    if rate != int(cfg.model.get("sample_rate", 16000)):
        raise InitError(f"--init {path}: its front end reads {rate} Hz audio; korasr's manifests are 16 kHz")
    cfg.model.preprocessor = source.config.preprocessor
    cfg.model.encoder = source.config.encoder
    encoder = source.config.encoder
    width = int(encoder.get("feat_out", -1))
    cfg.model.decoder.feat_in = width if width > 0 else int(encoder.d_model)
    if options.get("keep_tokenizer"):
        if source.kind not in HEADS:
            raise InitError(f"--init {path}: --keep-tokenizer keeps a CTC head, and this {source.kind} checkpoint "
                            "has none (a new CTC head over the recipe's tokenizer is what --init does without it)")  # fmt: skip
        if source.characters is not None:
            raise InitError(f"--init {path}: --keep-tokenizer keeps the checkpoint's tokenizer, and this "
                            f"{source.target.rpartition('.')[2]} has a character vocabulary "
                            f"({len(source.characters)} characters), not a SentencePiece tokenizer: korasr trains a "
                            "stock EncDecCTCModelBPE over one. Without --keep-tokenizer its front end and encoder "
                            "come over and a new CTC head over the recipe's tokenizer learns")  # fmt: skip
        cfg.model.tokenizer.dir = str(extract_tokenizer(path, source.config.tokenizer))
    cfg.korasr.init = str(path.resolve())
    cfg.korasr.init_source = {"path": str(path.resolve()), "target": source.target, "kind": source.kind,
                              "streaming": source.streaming, "n_mels": int(source.config.preprocessor.features),
                              "subsampling": int(encoder.get("subsampling_factor", 1))}  # fmt: skip
    return cfg


def extract_tokenizer(path: Path, tokenizer: DictConfig) -> Path:
    """The checkpoint's SentencePiece tokenizer as a korasr tokenizer folder (``tokenizer.model``, ``vocab.txt``,
    ``tokenizer.yaml`` with the unit its pieces are in), under ``tokenizers/init/`` (``KORASR_INIT_TOKENIZERS``);
    written once per checkpoint."""
    if str(tokenizer.get("type", "bpe")) != "bpe":
        raise InitError(f"--init {path}: --keep-tokenizer needs a SentencePiece tokenizer, not {tokenizer.type!r}")
    digest = hashlib.sha256(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()).hexdigest()
    root = Path(os.environ.get("KORASR_INIT_TOKENIZERS", ROOT / "tokenizers" / "init"))
    out = root / f"{path.stem}.{digest[:12]}"
    if (out / "tokenizer.yaml").is_file():
        return out
    wanted = {"tokenizer.model": str(tokenizer.get("model_path") or tokenizer.get("model") or ""),
              "vocab.txt": str(tokenizer.get("vocab_path") or ""),
              "tokenizer.vocab": str(tokenizer.get("spe_tokenizer_vocab") or "")}  # fmt: skip
    staging = out.with_name(f".{out.name}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "r:*") as archive:
        members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
        for local, ref in wanted.items():
            name = Path(ref.removeprefix("nemo:")).name
            if name not in members:
                if local == "tokenizer.model":
                    raise InitError(f"--init {path}: its tokenizer ({ref}) is not in the archive")
                continue
            (staging / local).write_bytes(archive.extractfile(members[name]).read())  # type: ignore[union-attr]
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(staging / "tokenizer.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    unit = "jamo" if any(_HANGUL_JAMO.search(p) for p in pieces) else "syllable"
    OmegaConf.save({"unit": unit, "type": "checkpoint", "vocab_size": len(pieces), "source": str(path.resolve())},
                   staging / "tokenizer.yaml")  # fmt: skip
    sync_tree(staging)
    if out.exists():  # an earlier copy without its tokenizer.yaml: never complete
        import shutil

        shutil.rmtree(out)
    os.replace(staging, out)
    sync_dir(out.parent)
    return out


def _pieces(tokenizer: Any) -> list[str]:
    return list(tokenizer.ids_to_tokens(list(range(tokenizer.vocab_size))))


def _source_pieces(source: Any) -> list[str] | None:
    """A checkpoint's tokenizer pieces; ``None`` for a character model (``EncDecCTCModel`` has no tokenizer)."""
    tokenizer = getattr(source, "tokenizer", None)
    return None if tokenizer is None else _pieces(tokenizer)


def initialize(model: Any, cfg: DictConfig) -> list[dict]:
    """Load the checkpoint's front end and encoder (and its CTC head when it fits, see the module docstring) into
    ``model``; check that every encoder tensor arrived. Returns the table of modules: parameters, and where each
    came from."""
    import torch
    from nemo.collections.asr.models import ASRModel

    info = cfg.korasr.init_source
    path = str(info.path)
    source = ASRModel.restore_from(path, map_location="cpu")
    state = source.state_dict()
    head = HEADS.get(str(info.kind))
    pieces = _source_pieces(source)
    same_pieces = head is not None and pieces is not None and pieces == _pieces(model.tokenizer)
    keep_head = bool(same_pieces)
    if head is not None and not same_pieces and cfg.korasr.get("keep_tokenizer"):
        raise InitError(f"--init {path}: --keep-tokenizer, yet the model's tokenizer differs from the checkpoint's")
    if head is not None and pieces is None:
        log.info("the checkpoint has a character vocabulary, no tokenizer: a new CTC head over the recipe's %d pieces",
                 model.tokenizer.vocab_size)  # fmt: skip
    elif head is not None and not same_pieces and len(pieces) == model.tokenizer.vocab_size:
        log.info("the checkpoint's tokenizer has %d pieces like the recipe's, but other ones: a new CTC head",
                 model.tokenizer.vocab_size)  # fmt: skip
    taken = {k: v for k, v in state.items() if k.startswith(("preprocessor.", "encoder."))}
    if keep_head:
        taken.update({"decoder." + k[len(head) :]: v for k, v in state.items() if k.startswith(head)})
    del source, state
    model.load_part_of_state_dict(taken, ["preprocessor.", "encoder.", *(["decoder."] if keep_head else [])],
                                  [] if keep_head else ["decoder."], f"--init {path}")  # fmt: skip
    own = model.state_dict()
    absent = [k for k in own if k.startswith("encoder.") and k not in taken]
    changed = [k for k, v in taken.items() if k in own and not torch.equal(own[k], v)]
    if absent or changed:
        raise InitError(f"--init {path}: the encoder did not come over whole: {len(absent)} tensors the checkpoint "
                        f"lacks (e.g. {absent[:3]}), {len(changed)} that differ after loading (e.g. {changed[:3]})")  # fmt: skip
    rows = []
    for name, module in model.named_children():
        count = sum(p.numel() for p in module.parameters())
        if not count and name != "preprocessor":
            continue
        came = name in ("preprocessor", "encoder") or (name == "decoder" and keep_head)
        rows.append({"module": name, "parameters": count,
                     "from": f"{Path(path).name} ({info.kind})" if came else "new"})  # fmt: skip
    for row in rows:
        log.info("init: %-12s %12s parameters  %s", row["module"], f"{row['parameters']:,}", row["from"])
    return rows


def freeze_encoder(steps: int):  # type: ignore[no-untyped-def]
    """A Lightning callback: the encoder stays as it came for the first ``steps`` optimizer steps (the new head
    learns first), then trains with the rest. While frozen its gradients are dropped before each optimizer step (the
    optimizer skips a parameter without one: no update, no weight decay, no moments), and it runs in eval mode, so
    batch norm statistics and dropout hold still too.

    Not ``requires_grad_(False)``: DDP builds its gradient reducer, once, over the parameters that require a gradient
    when Lightning wraps the model; one that stops requiring it afterwards never reports ready and the first step
    fails ("Expected to have finished reduction…"). Dropping the gradients after DDP has reduced them is what
    ``zero_grad(set_to_none=True)`` does every step, so it holds with any number of processes and needs neither
    ``find_unused_parameters`` nor a static graph. The price: the encoder's backward pass is still computed (and its
    gradients all-reduced) during the frozen steps."""
    import lightning.pytorch as pl

    class FreezeEncoder(pl.Callback):
        def __init__(self) -> None:
            self.frozen: bool | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            frozen = trainer.global_step < steps
            if frozen != self.frozen:
                log.info("encoder %s at step %d", "frozen" if frozen else "training", trainer.global_step)
                self.frozen = frozen
            if frozen:  # Lightning puts the whole model back in train mode after each validation
                pl_module.encoder.eval()
            elif pl_module.training:
                pl_module.encoder.train()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # type: ignore[no-untyped-def]
            if trainer.global_step < steps:
                for parameter in pl_module.encoder.parameters():
                    parameter.grad = None

    return FreezeEncoder()
