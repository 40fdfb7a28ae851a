"""A Lightning callback for the multi-process tests (``korasr.callbacks=[tests/ddp_probe.py:Probe]``): each rank
writes what it saw to ``$KORASR_PROBE_DIR/rank<N>.json``: a fingerprint of every training and validation utterance
(its token ids and sample count), its own share of the validation CER (counted on this rank's batches alone, not
synchronized), and the ``val_wer`` the model logged."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning.pytorch as pl


def fingerprints(batch) -> list[str]:  # type: ignore[no-untyped-def]
    audio_lens, tokens, token_lens = batch[1], batch[2], batch[3]
    return [
        hashlib.sha1(f"{int(n)}:{tokens[i, : int(token_lens[i])].tolist()}".encode()).hexdigest()[:16]
        for i, n in enumerate(audio_lens)
    ]


class Probe(pl.Callback):
    def __init__(self) -> None:
        self.train: list[list[str]] = []
        self.validations: list[dict] = []
        self._val: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.train.append(fingerprints(batch))

    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        from nemo.collections.asr.metrics.wer import WER

        local = WER(decoding=pl_module.decoding, use_cer=pl_module.wer.use_cer, dist_sync_on_step=False,
                    sync_on_compute=False)  # fmt: skip
        self._val = {"local": local, "utterances": [], "errors": 0, "units": 0}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # type: ignore[no-untyped-def]
        log_probs, lengths, _ = pl_module.forward(input_signal=batch[0], input_signal_length=batch[1])
        local = self._val["local"]  # NeMo's WER holds one batch's counts (update sets them): summed here
        local.update(predictions=log_probs, predictions_lengths=lengths, targets=batch[2], targets_lengths=batch[3])
        self._val["errors"] += int(local.scores)
        self._val["units"] += int(local.words)
        local.reset()
        self._val["utterances"] += fingerprints(batch)

    def on_validation_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.validations.append({"step": trainer.global_step, "utterances": self._val["utterances"],
                                 "errors": self._val["errors"], "units": self._val["units"],
                                 "val_wer": float(trainer.callback_metrics["val_wer"])})  # fmt: skip

    def on_fit_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        out = Path(os.environ["KORASR_PROBE_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "train": self.train,
                  "validations": self.validations}  # fmt: skip
        (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record), encoding="utf-8")


def encoder_digest(tensors) -> str:  # type: ignore[no-untyped-def]
    """A fingerprint of the encoder's weights (its parameters, in order)."""
    digest = hashlib.sha1()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Weights(pl.Callback):
    """``korasr.callbacks=[tests/ddp_probe.py:Weights]``: each rank writes ``weights_rank<N>.json``: the encoder's and
    the decoder's fingerprints before every optimizer step (keyed by the step about to run) and after the last."""

    def __init__(self) -> None:
        self.encoder: dict[int, str] = {}
        self.decoder: dict[int, str] = {}

    def _record(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self.encoder[trainer.global_step] = encoder_digest(pl_module.encoder.parameters())
        self.decoder[trainer.global_step] = encoder_digest(pl_module.decoder.parameters())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        self._record(trainer, pl_module)
        out = Path(os.environ["KORASR_PROBE_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "encoder": self.encoder,
                  "decoder": self.decoder}  # fmt: skip
        (out / f"weights_rank{trainer.global_rank}.json").write_text(json.dumps(record), encoding="utf-8")
