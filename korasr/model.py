"""Loading a model, and what korasr reads off a NeMo one.

A ``.nemo`` (``korasr train``) loads through NeMo, an export folder (``korasr export``) through
:class:`korasr.runtime.Recognizer`. Evaluate, export and ``korasr lm tune`` all load models here; torch and NeMo are
imported inside the functions that need them, so importing this module stays light.
"""

from __future__ import annotations

import os
from pathlib import Path


def load_model(path: str | os.PathLike[str], precision: str = "fp32"):  # type: ignore[no-untyped-def]
    """A NeMo model from a ``.nemo``, or a :class:`korasr.runtime.Recognizer` from an export directory."""
    if Path(path).is_dir():
        from korasr.runtime import Recognizer

        return Recognizer(path, precision=precision)
    if precision != "fp32":
        raise ValueError(f"{path}: --precision {precision} needs an export directory (a .nemo runs in float32)")
    import torch
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(path), map_location="cuda" if torch.cuda.is_available() else "cpu")
    model.eval()
    return model


def nemo_pieces(model) -> list[str]:  # type: ignore[no-untyped-def]
    """A NeMo model's pieces in id order (the CTC blank, one past the last, not included)."""
    return [model.tokenizer.ids_to_tokens([i])[0] for i in range(model.tokenizer.vocab_size)]


def nemo_tokenizer_sha256(model) -> str:  # type: ignore[no-untyped-def]
    """A NeMo model's tokenizer identity, as an LM directory records it (korasr.runtime.lm_artifact)."""
    from korasr.runtime.lm_artifact import vocabulary_sha256

    return vocabulary_sha256(model.tokenizer.tokenizer)


def nemo_logprobs(model, paths: list[str], batch_size: int = 16, progress: bool = False) -> list:  # type: ignore[no-untyped-def]
    """CTC log-probabilities ``[frames, vocab + 1]`` (numpy) of audio files through a NeMo model, in order."""
    import numpy as np
    import soundfile as sf
    import torch
    from tqdm import tqdm

    from korasr.runtime.audio import to_mono_16k

    out = []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(paths), batch_size), desc="log-probs", unit="batch", disable=not progress):
        waves = []
        for path in paths[start : start + batch_size]:
            audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
            waves.append(to_mono_16k(audio, rate))
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
        batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(np.ascontiguousarray(w))
        with torch.inference_mode():
            logprobs, frames, _ = model.forward(input_signal=batch.to(device), input_signal_length=lengths.to(device))
        out += [logprobs[i, : int(n)].float().cpu().numpy() for i, n in enumerate(frames)]
    return out
