"""Offline export (`korasr export`): a ``.nemo`` → whole-file deployment graphs that need only onnxruntime.

- ``model.onnx``: 16 kHz waveform ``[B, N]`` + lengths → log-probs ``[B, T, V+1]`` + lengths. NeMo's mel front end
  (pre-emphasis, STFT, power, mel, log, per-feature normalization; no dither) is rebuilt from the model's own
  window and filterbank as a convolution with a DFT basis (NeMo's complex STFT does not export).
- ``encoder.onnx``: NeMo's I/O (80-mel features ``[B, 80, T]`` + ``length`` → ``logprobs``) with the metadata
  sherpa-onnx reads, and ``tokens.txt`` (``piece id`` per line, ``<blk>`` last). Its valid length is cut to whole
  subsampling windows, so that clients computing the output length as ``T // subsampling`` read every frame.
- ``model.fp16.onnx`` and, when asked, ``model.int8.onnx`` (Q/DQ INT8 calibrated on a manifest): reduced-precision
  copies of ``model.onnx`` for TensorRT (korasr.precision), gated against ``model.onnx``; with CUDA and TensorRT,
  ``model.fp16.plan`` / ``model.int8.plan``. ``model.int8-dynamic.onnx`` (INT8 weights, activations quantized per
  call, no calibration), gated the same way: the graph that runs faster than float32 on CPUs.
- ``tokenizer.model``, ``model.json`` (unit, text codec, sample rate, blank id, versions, checksums), and a
  ``README.md`` listing the files with what each gate measured.

Both graphs compute the relative positional encoding from the sequence length instead of slicing NeMo's
precomputed table, so they accept audio of any length (NeMo's table caps encoder frames at 5,000, 400 s at 8×);
memory then bounds the length, and the runtime feeds long audio in chunks.

Every export is parity-gated against NeMo on sample utterances before the directory is published.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from korasr import SAMPLE_RATE
from korasr.errors import KorasrError
from korasr.export.sherpa import add_metadata, tokens_txt
from korasr.fsutil import ArtifactKind, sha256_file, staged_dir, write_json
from korasr.lookahead import is_streaming
from korasr.model import load_model, nemo_pieces, nemo_tokenizer_sha256
from korasr.provenance import git_commit, versions
from korasr.runtime.lm_artifact import LMInfo, check_tokenizer, read_lm
from korasr.runtime.onnx import pad_batch
from korasr.triton import TritonOptions

log = logging.getLogger(__name__)

OPSET = 17
# |log-prob| difference allowed between model.onnx and NeMo on the same audio (float32, different STFT route)
LOGPROB_TOLERANCE = 1e-3
# ... and for a model whose subsampling LayerNorms each stacked frame of raw log-mel (stacking_norm, the streaming
# sample model): on digitally silent frames the stacked frame's std is ~1e-6, so LayerNorm (eps 1e-5) multiplies
# the float rounding of two STFT routes (1e-4 in log-mel) by ~300: measured 5.9e-3 on one such frame, 5e-4 at most
# elsewhere. Greedy transcripts must still be identical.
LOGPROB_TOLERANCE_FRAME_NORM = 1e-2
# An export folder, as every korasr version wrote it: model.json, the graphs (fp32, fp16, int8 and TensorRT plans),
# tokens, the tokenizer, README.md, and the lm/, streaming/ and triton/ folders.
EXPORT_FOLDER = ArtifactKind("export", ("model.json", '"format": "korasr-export/1"'),
                             ("model.json", "README.md", "tokens.txt", "tokenizer.model", "*.onnx", "*.plan", "lm",
                              "streaming", "triton"))  # fmt: skip


def logprob_tolerance(model) -> float:  # type: ignore[no-untyped-def]
    """The parity tolerance for ``model``'s graphs (see LOGPROB_TOLERANCE_FRAME_NORM)."""
    frame_norm = str(model.cfg.encoder.get("subsampling", "")) == "stacking_norm"
    return LOGPROB_TOLERANCE_FRAME_NORM if frame_norm else LOGPROB_TOLERANCE


class ExportError(KorasrError, RuntimeError):
    pass


def _modules():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class DynamicRelPositionalEncoding(nn.Module):
        """NeMo's RelPositionalEncoding computed from the input length (same values, no length cap)."""

        def __init__(self, original: nn.Module):
            super().__init__()
            from nemo.collections.asr.parts.submodules.multi_head_attention import INF_VAL

            self.xscale = original.xscale
            d_model = original.d_model
            div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(INF_VAL) / d_model))
            self.register_buffer("div_term", div, persistent=False)
            self.d_model = d_model

        def extend_pe(self, *args, **kwargs) -> None:  # the encoder calls this for longer inputs: nothing to do
            return None

        def forward(self, x, cache_len: int = 0):  # type: ignore[no-untyped-def]
            if self.xscale:
                x = x * self.xscale
            length = x.size(1) + cache_len
            positions = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=x.device).unsqueeze(1)
            angles = positions * self.div_term
            pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(1, -1, self.d_model)
            return x, pe.to(x.dtype)

    class MelFrontend(nn.Module):
        """NeMo's FilterbankFeatures (eval mode) with the STFT as a strided convolution."""

        def __init__(self, featurizer: nn.Module):
            super().__init__()
            f = featurizer
            unsupported = []
            if f.stft_pad_amount is not None:
                unsupported.append("exact_pad")
            if getattr(f, "frame_splicing", 1) > 1:
                unsupported.append("frame_splicing")
            if f.normalize not in ("per_feature", None, "NA", "None"):
                unsupported.append(f"normalize={f.normalize}")
            if not f.log or f.log_zero_guard_type != "add":
                unsupported.append("log with log_zero_guard_type=add")
            if f.mag_power != 2.0:
                unsupported.append(f"mag_power={f.mag_power}")
            if unsupported:
                raise ExportError(f"preprocessor settings not supported by the ONNX front end: {unsupported}")
            self.n_fft, self.hop = int(f.n_fft), int(f.hop_length)
            self.preemph = float(f.preemph) if f.preemph is not None else 0.0
            self.normalize = f.normalize == "per_feature"
            self.log_guard = float(f.log_zero_guard_value_fn(torch.zeros(1)))
            self.pad_value = float(f.pad_value)
            window = f.window.to(torch.float64)
            left = (self.n_fft - window.numel()) // 2
            window = torch.nn.functional.pad(window, (left, self.n_fft - window.numel() - left))
            k = torch.arange(self.n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
            n = torch.arange(self.n_fft, dtype=torch.float64).unsqueeze(0)
            angle = 2 * math.pi * k * n / self.n_fft
            basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window], dim=0)
            self.register_buffer("basis", basis.to(torch.float32).unsqueeze(1))
            self.register_buffer("fb", f.fb.detach().to(torch.float32).squeeze(0))
            self.bins = self.n_fft // 2 + 1

        def forward(self, audio, length):  # type: ignore[no-untyped-def]
            frames_len = torch.div(length + 2 * (self.n_fft // 2) - self.n_fft, self.hop, rounding_mode="floor")
            time_mask = torch.arange(audio.size(1), device=audio.device).unsqueeze(0) < length.unsqueeze(1)
            if self.preemph:
                audio = torch.cat([audio[:, :1], audio[:, 1:] - self.preemph * audio[:, :-1]], dim=1)
            audio = audio.masked_fill(~time_mask, 0.0)
            padded = torch.nn.functional.pad(audio.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2))
            spec = torch.nn.functional.conv1d(padded, self.basis, stride=self.hop)
            power = spec[:, : self.bins] ** 2 + spec[:, self.bins :] ** 2
            x = torch.log(torch.matmul(self.fb, power) + self.log_guard)
            valid = torch.arange(x.size(2), device=x.device).unsqueeze(0) < frames_len.unsqueeze(1)
            if self.normalize:
                mask = valid.unsqueeze(1)
                count = valid.sum(dim=1).to(x.dtype).unsqueeze(1)
                mean = torch.where(mask, x, 0.0).sum(dim=2) / count
                centered = torch.where(mask, x - mean.unsqueeze(2), 0.0)
                std = torch.sqrt((centered**2).sum(dim=2) / (count - 1.0))
                std = torch.where(torch.isnan(std), torch.zeros_like(std), std) + 1e-5
                x = (x - mean.unsqueeze(2)) / std.unsqueeze(2)
            x = x.masked_fill(~valid.unsqueeze(1), self.pad_value)
            return x, frames_len

    class FeaturesCTC(nn.Module):
        """Encoder + decoder on features. With ``whole_windows`` the valid length is cut to a whole number of
        subsampling windows (at most ``subsampling - 1`` trailing frames, silence after the centre padding), so
        that a client computing the output length as ``frames // subsampling`` (sherpa-onnx) reads every valid
        encoder frame: NeMo's rounding gives one more frame otherwise, the one a CTC model often emits its last
        piece in."""

        def __init__(self, model: nn.Module, whole_windows: bool = False):
            super().__init__()
            self.encoder, self.decoder = model.encoder, model.decoder
            self.sub = int(model.cfg.encoder.get("subsampling_factor", 8)) if whole_windows else 1

        def forward(self, audio_signal, length):  # type: ignore[no-untyped-def]
            if self.sub > 1:
                length = torch.div(length, self.sub, rounding_mode="floor") * self.sub
                valid = torch.arange(audio_signal.size(2), device=audio_signal.device).unsqueeze(0) < length.unsqueeze(
                    1
                )
                audio_signal = audio_signal.masked_fill(~valid.unsqueeze(1), 0.0)
            encoded, encoded_len = self.encoder(audio_signal=audio_signal, length=length)
            return self.decoder(encoder_output=encoded), encoded_len

    class WaveformCTC(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.frontend = MelFrontend(model.preprocessor.featurizer)
            self.ctc = FeaturesCTC(model)

        def forward(self, audio, audio_length):  # type: ignore[no-untyped-def]
            features, features_len = self.frontend(audio, audio_length)
            return self.ctc(features, features_len)

    return DynamicRelPositionalEncoding, WaveformCTC, FeaturesCTC


def _test_audio(manifest: str | os.PathLike[str] | None, count: int) -> list[np.ndarray]:
    """Parity inputs: the first utterances of a manifest, else a synthetic chirp and noise."""
    import soundfile as sf

    if manifest:
        with open(manifest, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()][:count]
        return [sf.read(r["audio_filepath"], dtype="float32")[0] for r in rows]
    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * SAMPLE_RATE)) / SAMPLE_RATE
    return [
        (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32),
        (0.1 * rng.standard_normal(int(1.3 * SAMPLE_RATE))).astype(np.float32),
    ]


def greedy_ids(logprobs: np.ndarray, length: int, blank: int) -> list[int]:
    from korasr.runtime.ctc import greedy

    return [token for token, _ in greedy(logprobs[:length], blank)]


def export(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    parity_manifest: str | os.PathLike[str] | None = None,
    parity_utterances: int = 8,
    int8_manifest: str | os.PathLike[str] | None = None,
    int8_utterances: int = 64,
    triton_device: str = "cpu",
    triton_backend: str = "onnxruntime",
    triton_instances: int = 1,
    triton_keep_versions: int = 1,
    triton_stream_idle: float = 60.0,
    lm: str | os.PathLike[str] | None = None,
    lookahead_ms: int | None = None,
    force: bool = False,
    untrained: bool = False,
) -> Path:
    """Export ``model_path`` into ``out_dir`` (default: ``export/`` beside the model); returns the directory.

    With ``lm`` (a directory from ``korasr lm build``, checked against the model's tokenizer) the export bundles it
    as ``lm/``: the runtime and the service then decode with beam search and that LM (tuned alpha/beta) by default.

    A cache-aware streaming model (``korasr train --streaming``) also gets ``streaming/`` (korasr.export.streaming)
    at its default look-ahead, or ``lookahead_ms`` (one it was trained with).

    Writes into a temporary sibling and renames it into place only after every check passed; an existing
    ``out_dir`` is replaced only when it is an export korasr wrote (:func:`korasr.fsutil.staged_dir`), or with
    ``force``. With ``int8_manifest``, also ``model.int8.onnx`` calibrated on its first ``int8_utterances``
    utterances.

    ``untrained``: the model is a benchmark graph with untrained weights (bench/inference.py). The graphs are gated
    against NeMo as always, but the fp16/INT8 graphs are only compared with model.onnx and the comparison recorded:
    an untrained model's scores are near ties that any rounding flips, so its greedy pieces measure nothing. model.json
    says ``"untrained": true``.
    """
    started = time.time()
    lm_info = None
    triton = TritonOptions(
        triton_device, triton_backend, triton_instances, triton_keep_versions, stream_idle_seconds=triton_stream_idle
    )  # refused before the work
    if lm is not None:
        lm_info = read_lm(lm)  # a missing or corrupt LM fails before the long export
    model_path = Path(model_path)
    out = Path(out_dir) if out_dir else model_path.parent / "export"
    with staged_dir(out, EXPORT_FOLDER, force=force) as tmp:
        parity = _write_export(tmp, model_path, lm_info, parity_manifest=parity_manifest,
                               parity_utterances=parity_utterances, int8_manifest=int8_manifest,
                               int8_utterances=int8_utterances,
                               triton=triton, lookahead_ms=lookahead_ms, started=started,
                               untrained=untrained)  # fmt: skip
    log.info("exported %s → %s (parity: max |Δ log-prob| %.2e, transcripts identical)", model_path, out,
             parity["max_abs_logprob_diff"])  # fmt: skip
    return out


def _write_export(
    tmp: Path,
    model_path: Path,
    lm_info: LMInfo | None,
    *,
    parity_manifest: str | os.PathLike[str] | None,
    parity_utterances: int,
    int8_manifest: str | os.PathLike[str] | None,
    int8_utterances: int,
    triton: TritonOptions,
    lookahead_ms: int | None,
    started: float,
    untrained: bool = False,
) -> dict:
    """Every file of the export folder, written into ``tmp`` and gated; returns the parity summary. The stages:
    load, NeMo's references, build the graphs, gate them, streaming, reduced precision, write model.json, Triton
    and the README."""
    model, pieces = _load(model_path)
    unit = str(model.cfg.get("korasr_text_unit", "jamo"))
    streaming_model = _check_lookahead(model, model_path, lookahead_ms)  # before the references: they use it
    refs = _nemo_references(model, _test_audio(parity_manifest, parity_utterances))
    frontend = _build_graphs(tmp, model, refs)
    _write_vocabulary(tmp, model, pieces, unit)
    if lm_info is not None:
        _bundle_lm(tmp, model, lm_info, model_path)
    parity = _gate(tmp, model, refs, len(pieces), untrained)
    streaming_info = None
    if streaming_model:
        streaming_info = _write_streaming(tmp, model, frontend, pieces, unit, lookahead_ms, refs.waves, untrained)
    info = _model_info(model_path, model, unit, len(pieces), parity, streaming_info, started)
    if lm_info is not None:
        info["lm"] = _lm_info(lm_info)
    feeds = {"audio": refs.audio, "audio_length": refs.lengths}
    calibration = _test_audio(int8_manifest, int8_utterances) if int8_manifest else None
    if untrained:
        info["untrained"] = True
    info["precisions"] = _reduced_precision(tmp, feeds, len(pieces), calibration, gate=not untrained)
    info["tensorrt"] = build_tensorrt(tmp, feeds)
    _write_info(tmp, info, triton)
    return parity


def _load(model_path: Path):  # type: ignore[no-untyped-def]
    """The .nemo on the CPU in eval mode and its pieces, refused when a client could not use its graphs."""
    model = load_model(model_path).cpu().eval()
    featurizer = model.preprocessor.featurizer
    if int(featurizer.sample_rate) != SAMPLE_RATE:
        raise ExportError(f"{model_path}: sample rate {featurizer.sample_rate}, expected {SAMPLE_RATE}")
    pieces = nemo_pieces(model)
    controls = [p for p in pieces if p in ("<s>", "</s>", "<pad>")]
    if controls:
        raise ExportError(f"{model_path}: the vocabulary holds control pieces a client would print: {controls}")
    return model, pieces


@dataclass
class _References:
    """The parity batch and NeMo's outputs on it: what model.onnx (waveform in) and encoder.onnx (features in, cut
    to whole subsampling windows) must compute."""

    waves: list[np.ndarray]
    audio: np.ndarray
    lengths: np.ndarray
    logprobs: np.ndarray
    logprobs_len: np.ndarray
    features: Any  # torch tensors: the encoder graph is traced on them
    features_len: Any
    whole: np.ndarray
    whole_len: np.ndarray


def _nemo_references(model, waves: list[np.ndarray]) -> _References:  # type: ignore[no-untyped-def]
    import torch

    audio, lengths = pad_batch(waves)
    with torch.inference_mode():
        reference, reference_len = model.forward(
            input_signal=torch.from_numpy(audio), input_signal_length=torch.from_numpy(lengths)
        )[:2]
        features, features_len = model.preprocessor(
            input_signal=torch.from_numpy(audio), length=torch.from_numpy(lengths)
        )
    subsampling = int(model.cfg.encoder.get("subsampling_factor", 8))
    with torch.inference_mode():  # what encoder.onnx must compute: NeMo's modules on whole subsampling windows
        whole_len = torch.div(features_len, subsampling, rounding_mode="floor") * subsampling
        valid = torch.arange(features.size(2)).unsqueeze(0) < whole_len.unsqueeze(1)
        encoded, whole_ref_len = model.encoder(
            audio_signal=features.masked_fill(~valid.unsqueeze(1), 0.0), length=whole_len
        )
        whole_ref = model.decoder(encoder_output=encoded)
    return _References(waves, audio, lengths, reference.numpy(), reference_len.numpy(), features, features_len,
                       whole_ref.numpy(), whole_ref_len.numpy())  # fmt: skip


def _check_lookahead(model, model_path: Path, lookahead_ms: int | None) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``model`` streams; its look-ahead is set (and checked) before any graph is built."""
    from korasr.export import streaming

    if is_streaming(model):
        streaming.pick_lookahead(model, lookahead_ms)  # fails early on a look-ahead the model was not trained with
        return True
    if lookahead_ms is not None:
        raise ExportError(f"{model_path}: --lookahead needs a streaming model (korasr train --streaming)")
    return False


def _build_graphs(tmp: Path, model, refs: _References):  # type: ignore[no-untyped-def]
    """model.onnx and encoder.onnx, traced with a positional encoding computed from the length (NeMo's own is put
    back afterwards: the streaming graphs are NeMo's modules as they are); returns model.onnx's mel front end."""
    import torch
    from nemo.core.classes.common import typecheck

    dynamic_pe, waveform_ctc, features_ctc = _modules()
    nemo_pe = model.encoder.pos_enc
    model.encoder.pos_enc = dynamic_pe(nemo_pe)
    waveform_module = waveform_ctc(model).eval()
    typecheck.set_typecheck_enabled(enabled=False)
    try:
        with torch.no_grad():
            torch.onnx.export(
                waveform_module,
                (torch.from_numpy(refs.audio), torch.from_numpy(refs.lengths)),
                str(tmp / "model.onnx"),
                input_names=["audio", "audio_length"],
                output_names=["logprobs", "logprobs_length"],
                dynamic_axes={
                    "audio": {0: "batch", 1: "samples"},
                    "audio_length": {0: "batch"},
                    "logprobs": {0: "batch", 1: "frames"},
                    "logprobs_length": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
            torch.onnx.export(
                features_ctc(model, whole_windows=True).eval(),
                (refs.features, refs.features_len),
                str(tmp / "encoder.onnx"),
                input_names=["audio_signal", "length"],
                output_names=["logprobs", "encoded_lengths"],
                dynamic_axes={
                    "audio_signal": {0: "batch", 2: "frames"},
                    "length": {0: "batch"},
                    "logprobs": {0: "batch", 1: "encoded_frames"},
                    "encoded_lengths": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        typecheck.set_typecheck_enabled(enabled=True)
        model.encoder.pos_enc = nemo_pe
    return waveform_module.frontend


def _write_vocabulary(tmp: Path, model, pieces: list[str], unit: str) -> None:  # type: ignore[no-untyped-def]
    """encoder.onnx's sherpa-onnx metadata, both graphs checked, tokens.txt and tokenizer.model."""
    import onnx

    featurizer = model.preprocessor.featurizer
    meta = {
        "vocab_size": str(len(pieces) + 1),
        "subsampling_factor": str(int(model.cfg.encoder.get("subsampling_factor", 8))),
        "normalize_type": str(featurizer.normalize or ""),
        "model_type": "EncDecCTCModelBPE",
        "korasr_text_unit": unit,
    }
    add_metadata(tmp / "encoder.onnx", meta)
    for name in ("model.onnx", "encoder.onnx"):
        onnx.checker.check_model(str(tmp / name))
    (tmp / "tokens.txt").write_text(tokens_txt(pieces), encoding="utf-8")
    (tmp / "tokenizer.model").write_bytes(model.tokenizer.tokenizer.serialized_model_proto())


def _bundle_lm(tmp: Path, model, lm_info: LMInfo, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``lm/``: the LM directory, refused when it was built for another tokenizer."""
    check_tokenizer(lm_info, nemo_tokenizer_sha256(model), model.tokenizer.vocab_size, str(model_path))
    shutil.copytree(lm_info.dir, tmp / "lm", ignore=shutil.ignore_patterns(".*"))


def _gate(tmp: Path, model, refs: _References, blank: int, untrained: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """Both graphs against NeMo on the parity batch (:func:`_parity`; an untrained graph's transcripts are compared,
    not gated: its scores are near ties)."""
    checks = {
        "model.onnx": ({"audio": refs.audio, "audio_length": refs.lengths}, refs.logprobs, refs.logprobs_len),
        "encoder.onnx": (
            {"audio_signal": refs.features.numpy(), "length": refs.features_len.numpy()},
            refs.whole,
            refs.whole_len,
        ),
    }
    parity = _parity(tmp, checks, blank, logprob_tolerance(model), transcripts=not untrained)
    parity["encoder.onnx"]["reference"] = "NeMo's encoder and decoder on the features cut to whole subsampling windows"
    return parity


def _write_streaming(tmp: Path, model, frontend, pieces: list[str], unit: str, lookahead_ms: int | None,  # type: ignore[no-untyped-def]
                     waves: list[np.ndarray], untrained: bool = False) -> dict:  # fmt: skip
    """``streaming/`` (korasr.export.streaming), gated against NeMo's cache-aware streaming; its model.json entry."""
    from korasr.export import streaming

    streaming_info = streaming.write(model, tmp / streaming.FOLDER, frontend, pieces, unit, lookahead_ms)
    streaming_info["parity"] = streaming.check(model, tmp / streaming.FOLDER, waves, len(pieces),
                                               step_tolerance=logprob_tolerance(model),
                                               transcripts=not untrained)  # fmt: skip
    log.info("streaming export: look-ahead %d ms, chunk %d ms; parity vs conformer_stream_step max |Δ| %.2e",
             streaming_info["lookahead_ms"], streaming_info["chunk_ms"],
             streaming_info["parity"]["max_abs_step_logprob_diff"])  # fmt: skip
    return streaming_info


def _model_info(model_path: Path, model, unit: str, blank: int, parity: dict, streaming_info: dict | None,  # type: ignore[no-untyped-def]
                started: float) -> dict:  # fmt: skip
    """model.json: what a client needs to run the graphs, what the gates measured, and how the export was made."""
    featurizer = model.preprocessor.featurizer
    subsampling = int(model.cfg.encoder.get("subsampling_factor", 8))
    return {
        "format": "korasr-export/1",
        "source_model": str(model_path.resolve()),
        "source_sha256": sha256_file(model_path),
        "sample_rate": SAMPLE_RATE,
        "unit": unit,
        "text_codec": "NFC composition of the decoded pieces (korasr.text.codec.from_model_text), "
        "'▁' is a word boundary",
        "blank_id": blank,
        "vocab_size": blank + 1,
        "subsampling_factor": subsampling,
        "frame_shift_s": subsampling * featurizer.hop_length / SAMPLE_RATE,
        "features": {
            "n_mels": int(featurizer.nfilt),
            "n_fft": int(featurizer.n_fft),
            "hop_length": int(featurizer.hop_length),
            "win_length": int(featurizer.win_length),
            "normalize": featurizer.normalize,
        },
        "inputs": {
            "model.onnx": ["audio float32 [B, N] 16 kHz mono", "audio_length int64 [B]"],
            "encoder.onnx": ["audio_signal float32 [B, n_mels, T]", "length int64 [B]"],
        },
        "outputs": ["logprobs float32 [B, T', vocab_size]", "lengths int64 [B]"],
        "parity": parity,
        "streaming": streaming_info,
        "opset": OPSET,
        "git_commit": git_commit(),
        "versions": versions(),
        "seconds_taken": round(time.time() - started, 1),
    }


def _lm_info(lm_info: LMInfo) -> dict:
    """model.json's ``lm``: the bundled LM's order, size and tuning."""
    tuned = lm_info.tuned or {}
    return {"dir": "lm", "source": str(lm_info.dir), "order": lm_info.meta["order"],
            "ngrams": lm_info.meta["ngrams"], "tuned": {k: tuned.get(k) for k in ("alpha", "beta", "beam")},
            "tuned_cer": tuned.get("cer"), "greedy_cer": tuned.get("greedy_cer")}  # fmt: skip


def _write_info(tmp: Path, info: dict, triton: TritonOptions) -> None:
    """model.json with every file's checksum, the Triton repository (recorded in model.json), the README."""
    from korasr.triton import validate, write_repository

    info["sha256"] = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*"))
                      if p.is_file() and p.parent in (tmp, tmp / "lm", tmp / "streaming")}  # fmt: skip
    write_json(tmp / "model.json", info)
    info["triton"] = validate(write_repository(tmp, tmp / "triton", **asdict(triton)))
    info["triton_options"] = asdict(triton)
    write_json(tmp / "model.json", info)
    (tmp / "README.md").write_text(readme(info), encoding="utf-8")


def readme(info: dict) -> str:
    """The export folder's README.md: what each file is and what its gates measured (from model.json)."""
    parity, precisions, trt = info["parity"], info.get("precisions", {}), info.get("tensorrt", {})
    lines = [
        f"# korasr export of `{Path(info['source_model']).name}`",
        "",
        f"Unit `{info['unit']}`, {info['vocab_size']} outputs (blank id {info['blank_id']}), "
        f"{info['sample_rate']} Hz, one output frame per {info['frame_shift_s'] * 1000:g} ms. "
        f"korasr commit `{info['git_commit'] or 'unknown'}`. Run it with `korasr transcribe --model THIS_FOLDER "
        "audio.wav` (add `--precision fp16|int8` for the other graphs) or `korasr serve --model THIS_FOLDER`.",
        "",
        "| file | what | gate (measured) |",
        "|---|---|---|",
        f"| model.onnx | waveform `[B, N]` + lengths → log-probs + lengths, mel front end inside | vs NeMo on "
        f"{parity['utterances']} utterances: max \\|Δ log-prob\\| {parity['model.onnx']['max_abs_logprob_diff']:.1e} "
        f"(tolerance {parity['tolerance']:g}), greedy transcripts identical |",
        f"| encoder.onnx + tokens.txt | NeMo's features in, sherpa-onnx metadata | vs NeMo on whole subsampling "
        f"windows: {parity['encoder.onnx']['max_abs_logprob_diff']:.1e}, greedy identical |",
    ]

    def gated(tolerance: float | None) -> str:
        return "not gated: untrained weights" if tolerance is None else f"tolerance {tolerance:g}%"

    what = {"fp16": "model.onnx in float16 (front end, positional encoding and softmaxes float32)",
            "int8": "model.onnx with Q/DQ INT8 MatMuls, symmetric (TensorRT's scheme)",
            "int8-dynamic": "model.onnx with INT8 weight MatMuls, activations quantized per call (for CPUs)"}  # fmt: skip
    for precision in ("fp16", "int8-dynamic", "int8"):
        if precision in precisions:
            p = precisions[precision]
            extra = f"; calibrated on {p['calibration_utterances']} utterances" if precision == "int8" else ""
            lines.append(f"| {p['file']} | {what[precision]}{extra} | vs model.onnx: greedy pieces "
                         f"{p['piece_error_rate_vs_fp32']:.2f}% off ({gated(p['tolerance'])}), max \\|Δ "
                         f"log-prob\\| {p['max_abs_logprob_diff']:.2f} |")  # fmt: skip
    for name, entry in trt.items():
        if name.endswith(".plan"):
            lines.append(f"| {name} | TensorRT {trt['tensorrt']} engine from {entry['source']} on {trt['device']} "
                         f"| pieces {entry['piece_error_rate_vs_fp32']:.2f}% off model.onnx, max \\|Δ\\| "
                         f"{entry['max_abs_logprob_diff']:.2f}; {entry['ms_per_batch']} ms for "
                         f"{entry['batch_audio_seconds']} s of audio |")  # fmt: skip
    streaming = info.get("streaming")
    if streaming:
        sp = streaming["parity"]
        lines += [
            f"| streaming/encoder.onnx + tokens.txt | cache-aware encoder + CTC head for one chunk (look-ahead "
            f"{streaming['lookahead_ms']} ms, chunk {streaming['chunk_ms']} ms: {streaming['window_size']} feature "
            f"frames in, {streaming['chunk_shift']} new), caches in and out, sherpa-onnx's online metadata | each "
            f"chunk vs NeMo's conformer_stream_step on {sp['utterances']} utterances: max \\|Δ log-prob\\| "
            f"{sp['max_abs_step_logprob_diff']:.1e} (tolerance {sp['step_tolerance']:g}); korasr's streaming greedy "
            "text identical to NeMo's streaming |",
            f"| streaming/frontend.onnx, streaming.json | NeMo's mel front end on raw frames (the stream keeps the "
            f"pre-emphasis sample and the last n_fft - hop samples); what korasr.runtime.streaming needs | chunked "
            f"features vs NeMo's preprocessor on whole files: max \\|Δ\\| {sp['max_abs_feature_diff']:.1e} |",
        ]
    lines += [
        "| tokenizer.model | the SentencePiece model (pieces over the unit) | |",
        "| model.json | everything above as JSON, versions and SHA-256 checksums | |",
        "| triton/ | Triton model repository (onnxruntime model, NFC decode step, ensemble) | validated offline |",
    ]
    if "lm" in info:
        lm = info["lm"]
        tuned = lm["tuned"]
        gain = (f"dev CER {lm['tuned_cer']:.2f}% vs greedy {lm['greedy_cer']:.2f}% (alpha {tuned['alpha']:g}, beta "
                f"{tuned['beta']:g}, beam {tuned['beam']})" if lm.get("tuned_cer") is not None else "not tuned: "
                "alpha/beta are korasr's defaults (run korasr lm tune)")  # fmt: skip
        lines.append(f"| lm/ | token {lm['order']}-gram LM over the pieces (ARPA + KenLM binary, lm.json): the runtime and "
                     f"the service decode with beam search and this LM by default (`--decoder greedy` to not) | {gain} |")  # fmt: skip
    lines.append("")
    if not trt.get("built"):
        lines += [f"TensorRT: {trt.get('reason', 'not attempted')}. With CUDA and TensorRT installed, `korasr export` "
                  "builds model.fp16.plan (and model.int8.plan) and records their parity and speed here.", ""]  # fmt: skip
    return "\n".join(lines)


def _reduced_precision(tmp: Path, feeds: dict, blank: int, calibration: list[np.ndarray] | None,
                       gate: bool = True) -> dict:  # fmt: skip
    """``model.fp16.onnx`` and ``model.int8-dynamic.onnx`` always, ``model.int8.onnx`` when calibration audio is
    given; each gated by :func:`check_reduced` (only compared without ``gate``)."""
    from korasr.precision import quantize_int8, quantize_int8_dynamic, session, to_float16

    reference = session(tmp / "model.onnx").run(None, feeds)
    report: dict = {"fp32": {"file": "model.onnx"}}
    to_float16(tmp / "model.onnx", tmp / "model.fp16.onnx")
    report["fp16"] = {"file": "model.fp16.onnx", **check_reduced(tmp, "fp16", feeds, blank, reference, gate)}
    dynamic = quantize_int8_dynamic(tmp / "model.onnx", tmp / "model.int8-dynamic.onnx")
    report["int8-dynamic"] = {"file": "model.int8-dynamic.onnx", **dynamic,
                              **check_reduced(tmp, "int8-dynamic", feeds, blank, reference, gate)}  # fmt: skip
    if calibration is not None:
        calibrated = quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx", calibration)
        checked = check_reduced(tmp, "int8", feeds, blank, reference, gate)
        report["int8"] = {"file": "model.int8.onnx", **calibrated, **checked}
    return report


def check_reduced(folder: Path, precision: str, feeds: dict, blank: int, reference=None, gate: bool = True) -> dict:  # type: ignore[no-untyped-def]
    """Gate ``model.<precision>.onnx`` against ``model.onnx`` on ``feeds``: identical output lengths, greedy
    pieces within korasr.precision.TOLERANCE (% piece edits); raises :class:`ExportError` otherwise. Without
    ``gate`` (an untrained benchmark graph) the pieces are compared, not gated.
    ``reference``: model.onnx's (log-probs, lengths) on ``feeds`` when already computed."""
    from korasr.precision import TOLERANCE, session

    name = f"model.{precision}.onnx"
    reference, reference_len = reference or session(folder / "model.onnx").run(None, feeds)
    got, got_len = session(folder / name).run(None, feeds)
    entry = compare_outputs(reference, reference_len, got, got_len, blank)
    if not entry.pop("lengths_identical"):
        raise ExportError(f"{folder / name}: output lengths {got_len.tolist()} differ from model.onnx's")
    rate, tolerance = entry["piece_error_rate_vs_fp32"], TOLERANCE[precision]
    if rate > tolerance and gate:
        raise ExportError(f"{folder / name}: its greedy pieces differ from model.onnx's by {rate:.2f}% > "
                          f"{tolerance}% on the parity utterances")  # fmt: skip
    log.info("%s: pieces %.2f%% off model.onnx's (tolerance %.1f%%), max |Δ log-prob| %.3f",
             name, rate, tolerance, entry["max_abs_logprob_diff"])  # fmt: skip
    return {**entry, "tolerance": tolerance if gate else None}


def compare_outputs(reference, reference_len, got, got_len, blank: int) -> dict:  # type: ignore[no-untyped-def]
    """``got`` against ``reference`` (model.onnx's or NeMo's output): lengths identical?, piece error rate (%) of
    the greedy outputs, max |Δ log-prob| over the frames both have."""
    from korasr.precision import piece_error_rate

    def ids(logprobs, lengths):  # type: ignore[no-untyped-def]
        return [greedy_ids(logprobs[i], n, blank) for i, n in enumerate(lengths.tolist())]

    common = np.minimum(reference_len, got_len).tolist()
    return {
        "lengths_identical": bool(np.array_equal(got_len, reference_len)),
        "piece_error_rate_vs_fp32": round(piece_error_rate(ids(reference, reference_len), ids(got, got_len)), 3),
        "max_abs_logprob_diff": max(
            float(np.abs(got[i, :n] - reference[i, :n]).max(initial=0.0)) for i, n in enumerate(common)
        ),
    }


TENSORRT_PROFILE_SECONDS = {"min": 1, "opt": 10, "max": 60}
TENSORRT_PROFILE_BATCH = {"min": 1, "opt": 8, "max": 16}


def build_tensorrt(export_dir: Path, feeds: dict) -> dict:
    """TensorRT engines ``model.fp16.plan`` (from model.fp16.onnx) and ``model.int8.plan`` (from model.int8.onnx,
    when it exists), strongly typed (precision from the graphs; TensorRT 11 knows no other mode), with one
    explicit shape profile (1–16 utterances of 1–60 s), each checked against onnxruntime's model.onnx on the
    parity batch and timed. Needs CUDA and TensorRT; otherwise returns why it was skipped (never an error).
    Written against TensorRT 10/11's Python API; korasr's CI has no GPU, so it has not run there."""
    try:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise ImportError("no CUDA device")
    except ImportError as e:
        reason = f"skipped: {e}" if "CUDA" in str(e) else "skipped: TensorRT is not installed"
        log.info("TensorRT engine %s", reason)
        return {"built": False, "reason": reason}
    from korasr.precision import session

    reference, reference_len = session(export_dir / "model.onnx").run(None, feeds)
    logger = trt.Logger(trt.Logger.WARNING)
    report: dict = {"built": True, "tensorrt": trt.__version__, "profile_seconds": TENSORRT_PROFILE_SECONDS,
                    "profile_batch": TENSORRT_PROFILE_BATCH, "device": torch.cuda.get_device_name()}  # fmt: skip
    for precision in ("fp16", "int8"):
        source = export_dir / f"model.{precision}.onnx"
        if not source.exists():
            continue
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ExportError(f"TensorRT cannot parse {source.name}: {errors}")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        b, sec = TENSORRT_PROFILE_BATCH, TENSORRT_PROFILE_SECONDS
        profile.set_shape("audio", *[(b[k], sec[k] * SAMPLE_RATE) for k in ("min", "opt", "max")])
        profile.set_shape("audio_length", *[(b[k],) for k in ("min", "opt", "max")])
        config.add_optimization_profile(profile)
        started = time.time()
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise ExportError(f"TensorRT failed to build an engine from {source.name}")
        plan = export_dir / f"model.{precision}.plan"
        plan.write_bytes(bytes(engine))
        got, got_len, ms = _run_engine(trt, logger, plan.read_bytes(), feeds)
        report[plan.name] = {
            "source": source.name,
            "build_seconds": round(time.time() - started, 1),
            **compare_outputs(reference, reference_len, got, got_len, reference.shape[-1] - 1),
            "ms_per_batch": ms,
            "batch_audio_seconds": round(float(feeds["audio_length"].sum()) / SAMPLE_RATE, 2),
        }
        log.info("TensorRT %s: %s", plan.name, report[plan.name])
    return report


def _run_engine(trt, logger, plan: bytes, feeds: dict, repeats: int = 20):  # type: ignore[no-untyped-def]
    """Run a serialized engine on ``feeds`` with torch's CUDA tensors; (log-probs, lengths, median ms)."""
    import torch

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    tensors = {}
    for name, value in feeds.items():
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value)).cuda()
        context.set_input_shape(name, tuple(value.shape))
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            dtype = torch.from_numpy(np.zeros(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            tensors[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
        context.set_tensor_address(name, tensors[name].data_ptr())
    stream = torch.cuda.Stream()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT engine execution failed")
        end.record(stream)
        stream.synchronize()
        times.append(start.elapsed_time(end))
    return (
        tensors["logprobs"].cpu().numpy(),
        tensors["logprobs_length"].cpu().numpy(),
        round(float(np.median(times)), 3),
    )


def _parity(
    tmp: Path, checks: dict, blank: int, tolerance: float = LOGPROB_TOLERANCE, transcripts: bool = True
) -> dict:
    """Each graph against its NeMo reference on the same batch: lengths identical, log-probs within tolerance,
    greedy transcripts (token ids) identical (without ``transcripts``, for an untrained benchmark graph whose scores
    are near ties that any rounding flips: compared and recorded, not gated). ``checks``: name → (feeds, reference
    log-probs, reference lengths)."""
    from korasr.precision import session

    report: dict = {"tolerance": tolerance}
    for name, (feeds, reference, reference_len) in checks.items():
        got, got_len = session(tmp / name).run(None, feeds)
        entry = compare_outputs(reference, reference_len, got, got_len, blank)
        if not entry["lengths_identical"]:
            raise ExportError(f"{name}: output lengths {got_len.tolist()} differ from NeMo's {reference_len.tolist()}")
        if entry["piece_error_rate_vs_fp32"] > 0 and transcripts:
            raise ExportError(f"{name}: greedy transcripts differ from NeMo's "
                              f"({entry['piece_error_rate_vs_fp32']:.2f}% of the pieces)")  # fmt: skip
        worst = entry["max_abs_logprob_diff"]
        if worst > tolerance:
            raise ExportError(f"{name}: log-probs differ from NeMo's by {worst:.2e} > {tolerance}")
        report[name] = {"max_abs_logprob_diff": worst, "greedy_identical": entry["piece_error_rate_vs_fp32"] == 0}
        if not transcripts:
            report[name]["greedy_gated"] = False
        report["utterances"] = len(reference_len)
    report["max_abs_logprob_diff"] = max(report[name]["max_abs_logprob_diff"] for name in checks)
    return report
