"""Small stand-ins for released NeMo ASR checkpoints, built with stock NeMo classes (untrained: what matters is
their structure and that their weights are recognisable): CTC over SentencePiece or over characters (as older
released models are), RNNT, hybrid RNNT-CTC, cache-aware, 80 or 128 mel bands, 4× or 8× subsampling."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from korasr.train import compose, recipe_configs

RNNT = {
    "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                "random_state_sampling": False, "blank_as_pad": True,
                "prednet": {"pred_hidden": 64, "pred_rnn_layers": 1, "t_max": None, "dropout": 0.0}},
    "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None, "preserve_memory": False,
              "fuse_loss_wer": False, "fused_batch_size": 4,
              "jointnet": {"joint_hidden": 64, "activation": "relu", "dropout": 0.0}},
    "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
    "loss": {"loss_name": "default"},
}  # fmt: skip
AUX_CTC = {
    "aux_ctc": {"ctc_loss_weight": 0.3, "use_cer": False, "ctc_reduction": "mean_batch",
                "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": None,
                            "num_classes": -1, "vocabulary": []},
                "decoding": {"strategy": "greedy"}},
}  # fmt: skip
# A character vocabulary as an older released Korean model's (``EncDecCTCModel``: no tokenizer, the decoder's
# ``vocabulary`` is the labels): a space, some syllables, an apostrophe.
CHARACTERS = [" ", *"가나다라마바사아자차카타파하는이에요고를", "'"]
CLASSES = {
    "ctc": "nemo.collections.asr.models.EncDecCTCModelBPE",
    "char_ctc": "nemo.collections.asr.models.EncDecCTCModel",
    "rnnt": "nemo.collections.asr.models.EncDecRNNTBPEModel",
    "hybrid": "nemo.collections.asr.models.EncDecHybridRNNTCTCBPEModel",
}


def standin(out: Path, kind: str, tokenizer: Path, train: Path, *, n_mels: int = 80, subsampling: int = 4,
            streaming: bool = False, seed: int = 7, encoder_from: Path | None = None,
            layers: int | None = None) -> Path:  # fmt: skip
    """Write a stock NeMo ``kind`` model over ``tokenizer`` to ``out`` (a .nemo) and return its path (``char_ctc``:
    over :data:`CHARACTERS`, ``tokenizer`` unused). With ``encoder_from`` (a .nemo of the same encoder shape), its
    front end and encoder weights: a stand-in whose encoder has learned something. ``layers``: the encoder's."""
    import hydra.utils
    import torch

    cfg = compose(recipe_configs(Path(__file__).resolve().parent.parent / "recipes" / "sample", streaming=streaming), [f"model.tokenizer.dir={tokenizer}", f"model.train_ds.manifest_filepath={train}",
                            f"model.validation_ds.manifest_filepath={train}"])  # fmt: skip
    model_cfg = cfg.model
    model_cfg.preprocessor.features = n_mels
    model_cfg.encoder.feat_in = n_mels
    model_cfg.encoder.subsampling_factor = subsampling
    if layers is not None:
        model_cfg.encoder.n_layers = layers
    for split in ("train_ds", "validation_ds", "test_ds"):
        model_cfg.pop(split, None)
    if kind in ("rnnt", "hybrid"):
        model_cfg.pop("decoder")
        model_cfg = OmegaConf.merge(model_cfg, RNNT, AUX_CTC if kind == "hybrid" else {})
        model_cfg.decoder.vocab_size = -1
        model_cfg.joint.num_classes = -1
        model_cfg.model_defaults = {"enc_hidden": int(model_cfg.encoder.d_model), "pred_hidden": 64}
        if kind == "hybrid":
            model_cfg.aux_ctc.decoder.feat_in = int(model_cfg.encoder.d_model)
    if kind == "char_ctc":
        model_cfg.pop("tokenizer")
        model_cfg.labels = CHARACTERS
        model_cfg.decoder.vocabulary = CHARACTERS
        model_cfg.decoder.num_classes = len(CHARACTERS)
    OmegaConf.resolve(model_cfg)
    torch.manual_seed(seed)
    model = hydra.utils.get_class(CLASSES[kind])(cfg=model_cfg)
    if encoder_from is not None:
        from nemo.collections.asr.models import ASRModel

        trained = ASRModel.restore_from(str(encoder_from), map_location="cpu").state_dict()
        model.load_state_dict({k: v for k, v in trained.items() if k.startswith(("encoder.", "preprocessor."))},
                              strict=False)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(out))
    return out
