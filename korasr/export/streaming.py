"""Streaming export: a cache-aware FastConformer-CTC (``korasr train --streaming``) → ``streaming/`` in the export.

- ``streaming/encoder.onnx``: NeMo's cache-aware encoder + CTC decoder for one chunk:
  ``audio_signal [B, n_mels, window_size]`` (``pre_encode_cache`` feature frames of the past, zeros at the start,
  then ``chunk_shift`` new ones), ``length [B]``, ``cache_last_channel [B, layers, left, d_model]``,
  ``cache_last_time [B, layers, d_model, kernel - 1]``, ``cache_last_channel_len [B]`` → ``logprobs [B, T, V+1]``,
  ``encoded_lengths``, and the three caches for the next chunk. Its metadata is what sherpa-onnx's
  ``OnlineRecognizer.from_nemo_ctc`` reads (``window_size``, ``chunk_shift``, ``subsampling_factor``,
  ``vocab_size``, ``cache_last_channel_dim1..3``, ``cache_last_time_dim1..3``, ``normalize_type``); ``tokens.txt``
  beside it (the blank last, no control pieces).
- ``streaming/frontend.onnx``: NeMo's mel front end without its centre padding and pre-emphasis, on raw frames:
  ``samples [B, n_fft + (F - 1) · hop]`` (pre-emphasized) → ``features [B, n_mels, F]``. korasr's stream keeps
  the pre-emphasis state and the last ``n_fft - hop`` samples, so its features equal NeMo's preprocessor on the
  whole file (centre padding included), frame for frame.

The gate (:func:`check`) runs before the export folder is published: the chunk front end against NeMo's
preprocessor on whole files, each chunk's log-probs and caches against NeMo's own cache-aware step
(``conformer_stream_step`` on the same windows), and the final greedy text of korasr's streaming runtime (the
exported graphs, chunk by chunk) against NeMo's streaming on NeMo's features: identical.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from korasr import SAMPLE_RATE
from korasr.errors import KorasrError
from korasr.export.sherpa import add_metadata, tokens_txt
from korasr.fsutil import write_json
from korasr.lookahead import is_streaming, lookahead_label, lookaheads  # noqa: F401  (is_streaming, lookahead_label: re-exported)

log = logging.getLogger(__name__)

FOLDER = "streaming"
OPSET = 17
# |log-prob| difference allowed between a chunk of streaming/encoder.onnx and NeMo's cache-aware step
STEP_TOLERANCE = 1e-3
# |log-mel| difference allowed between streaming/frontend.onnx (chunk by chunk) and NeMo's preprocessor
FEATURE_TOLERANCE = 1e-3


class StreamingExportError(KorasrError, RuntimeError):
    pass


def pick_lookahead(model, lookahead_ms: int | None) -> dict:  # type: ignore[no-untyped-def]
    """The trained look-ahead of ``lookahead_ms`` (default: the model's default); sets it on the encoder."""
    options = lookaheads(model)
    chosen = (
        options[0] if lookahead_ms is None else next((o for o in options if o["lookahead_ms"] == lookahead_ms), None)
    )
    if chosen is None:
        raise StreamingExportError(f"look-ahead {lookahead_ms} ms was not trained; this model has "
                                   f"{', '.join(str(o['lookahead_ms']) for o in options)} ms")  # fmt: skip
    model.encoder.set_default_att_context_size(chosen["att_context_size"])
    return chosen


def config(model) -> dict:  # type: ignore[no-untyped-def]
    """What a streaming client needs, from NeMo's ``streaming_cfg`` for the encoder's current look-ahead (as in
    NeMo's streaming with ``pad_and_drop_preencoded``: every chunk, the first too, gets the pre-encode cache)."""
    encoder = model.encoder
    encoder.setup_streaming_params()
    cfg = encoder.streaming_cfg

    def second(value):  # type: ignore[no-untyped-def]
        return int(value[1]) if isinstance(value, list | tuple) else int(value)

    featurizer = model.preprocessor.featurizer
    channel, time_cache, _ = encoder.get_initial_cache_state(batch_size=1)
    shift = second(cfg.shift_size)
    return {
        "att_context_size": [int(v) for v in encoder.att_context_size],
        "window_size": second(cfg.chunk_size) + second(cfg.pre_encode_cache_size),
        "chunk_shift": shift,
        "pre_encode_cache": second(cfg.pre_encode_cache_size),
        "valid_out_len": int(cfg.valid_out_len),
        "subsampling_factor": int(model.cfg.encoder.subsampling_factor),
        "cache_last_channel": [int(channel.shape[0]), int(channel.shape[2]), int(channel.shape[3])],
        "cache_last_time": [int(time_cache.shape[0]), int(time_cache.shape[2]), int(time_cache.shape[3])],
        "n_mels": int(featurizer.nfilt),
        "n_fft": int(featurizer.n_fft),
        "hop_length": int(featurizer.hop_length),
        "preemph": float(featurizer.preemph) if featurizer.preemph is not None else 0.0,
        "chunk_seconds": shift * int(featurizer.hop_length) / SAMPLE_RATE,
        "frame_shift_s": int(model.cfg.encoder.subsampling_factor) * int(featurizer.hop_length) / SAMPLE_RATE,
    }


def _modules():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class ChunkFrontend(nn.Module):
        """log(mel(|STFT|²) + guard) of uncentred frames: NeMo's FilterbankFeatures (no normalization, no dither)
        with the STFT as a strided convolution over a DFT basis of the model's window."""

        def __init__(self, mel):  # type: ignore[no-untyped-def]  # korasr.export.offline's MelFrontend
            super().__init__()
            self.hop, self.bins, self.log_guard = mel.hop, mel.bins, mel.log_guard
            self.register_buffer("basis", mel.basis.clone())
            self.register_buffer("fb", mel.fb.clone())

        def forward(self, samples):  # type: ignore[no-untyped-def]
            spec = torch.nn.functional.conv1d(samples.unsqueeze(1), self.basis, stride=self.hop)
            power = spec[:, : self.bins] ** 2 + spec[:, self.bins :] ** 2
            return torch.log(torch.matmul(self.fb, power) + self.log_guard)

    class StepCTC(nn.Module):
        """One cache-aware step: NeMo's encoder ``forward_for_export`` (valid outputs only) + the CTC decoder."""

        def __init__(self, model):  # type: ignore[no-untyped-def]
            super().__init__()
            self.encoder, self.decoder = model.encoder, model.decoder

        def forward(self, audio_signal, length, cache_last_channel, cache_last_time, cache_last_channel_len):  # type: ignore[no-untyped-def]
            encoded, encoded_len, channel, time_cache, channel_len = self.encoder.forward_for_export(
                audio_signal, length, cache_last_channel, cache_last_time, cache_last_channel_len
            )
            return self.decoder(encoder_output=encoded), encoded_len, channel, time_cache, channel_len

    return ChunkFrontend, StepCTC


def write(model, folder: Path, mel_frontend, pieces: list[str], unit: str, lookahead_ms: int | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Write ``folder`` (frontend.onnx, encoder.onnx with sherpa-onnx metadata, tokens.txt); returns the config
    recorded in model.json. ``mel_frontend``: the offline export's MelFrontend of this model."""
    import onnx
    import torch
    from nemo.core.classes.common import typecheck

    if str(model.cfg.preprocessor.get("normalize", "NA")) not in ("NA", "None", "none", ""):
        raise StreamingExportError(f"preprocessor normalize={model.cfg.preprocessor.normalize}: per-utterance "
                                   "statistics do not exist mid-stream (train with --streaming: normalize NA)")  # fmt: skip
    chosen = pick_lookahead(model, lookahead_ms)
    cfg = {**config(model), **{k: chosen[k] for k in ("lookahead_ms", "chunk_ms", "left_context_ms")}}
    cfg["lookaheads_ms"] = [o["lookahead_ms"] for o in lookaheads(model)]
    folder.mkdir(parents=True, exist_ok=True)
    chunk_frontend, step_ctc = _modules()
    window = cfg["window_size"]
    frames = cfg["chunk_shift"]
    samples = torch.zeros(2, cfg["n_fft"] + (frames - 1) * cfg["hop_length"])
    channel, time_cache, channel_len = model.encoder.get_initial_cache_state(batch_size=2)
    step_inputs = (
        torch.zeros(2, cfg["n_mels"], window),
        torch.full((2,), window, dtype=torch.int64),
        channel.transpose(0, 1).contiguous(),
        time_cache.transpose(0, 1).contiguous(),
        channel_len,
    )
    names_in = ["audio_signal", "length", "cache_last_channel", "cache_last_time", "cache_last_channel_len"]
    names_out = ["logprobs", "encoded_lengths", "cache_last_channel_next", "cache_last_time_next",
                 "cache_last_channel_next_len"]  # fmt: skip
    model.encoder.export_cache_support = True
    typecheck.set_typecheck_enabled(enabled=False)
    try:
        with torch.no_grad():
            torch.onnx.export(chunk_frontend(mel_frontend).eval(), (samples,), str(folder / "frontend.onnx"),
                              input_names=["samples"], output_names=["features"],
                              dynamic_axes={"samples": {0: "batch", 1: "samples"}, "features": {0: "batch", 2: "frames"}},
                              opset_version=OPSET, dynamo=False)  # fmt: skip
            torch.onnx.export(step_ctc(model).eval(), step_inputs, str(folder / "encoder.onnx"),
                              input_names=names_in, output_names=names_out,
                              dynamic_axes={name: {0: "batch"} for name in names_in + names_out},
                              opset_version=OPSET, dynamo=False)  # fmt: skip
    finally:
        typecheck.set_typecheck_enabled(enabled=True)
        model.encoder.export_cache_support = False
    meta = {
        "model_type": "EncDecCTCModelBPE",
        "version": "1",
        "vocab_size": str(len(pieces) + 1),
        "window_size": str(window),
        "chunk_shift": str(frames),
        "subsampling_factor": str(cfg["subsampling_factor"]),
        "normalize_type": "",
        **{f"cache_last_channel_dim{i + 1}": str(v) for i, v in enumerate(cfg["cache_last_channel"])},
        **{f"cache_last_time_dim{i + 1}": str(v) for i, v in enumerate(cfg["cache_last_time"])},
        "korasr_lookahead_ms": str(cfg["lookahead_ms"]),
    }
    add_metadata(folder / "encoder.onnx", meta)
    for name in ("frontend.onnx", "encoder.onnx"):
        onnx.checker.check_model(str(folder / name))
    (folder / "tokens.txt").write_text(tokens_txt(pieces), encoding="utf-8")
    cfg.update(unit=unit, vocab_size=len(pieces) + 1, blank_id=len(pieces), metadata=meta)
    write_json(folder / "streaming.json", cfg)
    return cfg


def nemo_stream(model, features: np.ndarray, cfg: dict) -> list[tuple[np.ndarray, dict]]:  # type: ignore[no-untyped-def]
    """NeMo's own cache-aware streaming of one utterance's features ``[n_mels, T]``, in the windows korasr feeds:
    ``(log-probs [t, V+1] of each chunk, the step's inputs)``."""
    import torch

    window, shift, pre = cfg["window_size"], cfg["chunk_shift"], cfg["pre_encode_cache"]
    padded = np.concatenate([np.zeros((features.shape[0], pre), np.float32), features], axis=1)
    channel, time_cache, channel_len = model.encoder.get_initial_cache_state(batch_size=1)
    steps = []
    for start in range(0, features.shape[1], shift):
        chunk = padded[:, start : start + window]
        length = chunk.shape[1]
        signal = np.zeros((1, features.shape[0], window), np.float32)
        signal[0, :, :length] = chunk
        feeds = {"audio_signal": signal, "length": np.array([length], np.int64),
                 "cache_last_channel": channel.transpose(0, 1).numpy().copy(),
                 "cache_last_time": time_cache.transpose(0, 1).numpy().copy(),
                 "cache_last_channel_len": channel_len.numpy().copy()}  # fmt: skip
        with torch.inference_mode():
            out = model.conformer_stream_step(
                processed_signal=torch.from_numpy(signal), processed_signal_length=torch.tensor([length]),
                cache_last_channel=channel, cache_last_time=time_cache, cache_last_channel_len=channel_len,
                keep_all_outputs=False, return_transcription=False, return_log_probs=True,
            )  # fmt: skip
        _, _, channel, time_cache, channel_len, _, logprobs, encoded_len = out
        steps.append((logprobs[0, : int(encoded_len[0])].numpy(), feeds))
    return steps


def check(model, folder: Path, waves: list[np.ndarray], blank: int, threads: int | None = None,  # type: ignore[no-untyped-def]
          step_tolerance: float = STEP_TOLERANCE, transcripts: bool = True) -> dict:  # fmt: skip
    """The streaming gate on ``waves`` (16 kHz); raises :class:`StreamingExportError` when a check fails.
    ``step_tolerance``: |Δ log-prob| allowed per chunk (korasr.export.offline.logprob_tolerance of the model).
    Without ``transcripts`` (an untrained benchmark graph: near ties) the greedy pieces are counted, not gated."""
    import torch

    from korasr.runtime.ctc import greedy
    from korasr.runtime.onnx import session
    from korasr.runtime.streaming import StreamingModel

    streaming = StreamingModel(folder.parent, threads=threads, folder=folder.name, decoder="greedy")
    encoder = session(folder / "encoder.onnx", threads)
    worst_feature = worst_step = 0.0
    stream_texts_identical = 0
    for wave in waves:
        with torch.inference_mode():
            features, features_len = model.preprocessor(
                input_signal=torch.from_numpy(wave[None]), length=torch.tensor([len(wave)])
            )
        features = features[0, :, : int(features_len[0])].numpy()
        # 1. the chunk front end, fed in uneven pieces as a live client would, against the whole-file features
        stream = streaming.stream(endpoint=None, record_features=True)
        for piece in np.array_split(wave, max(1, len(wave) // 2731)):
            stream.accept(piece)
        stream.finish()
        ours = stream.features_seen()
        if ours.shape != features.shape:
            raise StreamingExportError(f"streaming front end: {ours.shape[1]} frames, NeMo's preprocessor "
                                       f"{features.shape[1]}")  # fmt: skip
        worst_feature = max(worst_feature, float(np.abs(ours - features).max()))
        # 2. each chunk of encoder.onnx against NeMo's conformer_stream_step on the same windows and caches
        reference = nemo_stream(model, features, streaming.cfg)
        channel = time_cache = channel_len = None
        got_ids: list[int] = []
        ref_ids: list[int] = []
        got_all, ref_all = [], []
        for ref_logprobs, feeds in reference:
            if channel is not None:  # ours carries its own caches forward; NeMo's inputs only seed the first step
                feeds = {**feeds, "cache_last_channel": channel, "cache_last_time": time_cache,
                         "cache_last_channel_len": channel_len}  # fmt: skip
            logprobs, length, channel, time_cache, channel_len = encoder.run(None, feeds)
            got = logprobs[0, : int(length[0])]
            if got.shape != ref_logprobs.shape:
                raise StreamingExportError(
                    f"streaming encoder: chunk output {got.shape} vs NeMo's {ref_logprobs.shape}"
                )
            worst_step = max(worst_step, float(np.abs(got - ref_logprobs).max()) if got.size else 0.0)
            got_all.append(got)
            ref_all.append(ref_logprobs)
        got_ids = [t for t, _ in greedy(np.concatenate(got_all), blank)]
        ref_ids = [t for t, _ in greedy(np.concatenate(ref_all), blank)]
        # 3. korasr's streaming runtime end to end (audio in, text out) against NeMo's streaming greedy text
        streaming.run([stream])  # the stream above, decoded: its audio came in uneven pieces
        runtime_ids = stream.token_ids()
        if (got_ids != ref_ids or runtime_ids != ref_ids) and not transcripts:
            continue
        if got_ids != ref_ids or runtime_ids != ref_ids:
            raise StreamingExportError(
                f"streaming greedy pieces differ from NeMo's cache-aware streaming: encoder.onnx {got_ids[:20]}, "
                f"runtime {runtime_ids[:20]}, NeMo {ref_ids[:20]}"
            )
        stream_texts_identical += 1
    if worst_feature > FEATURE_TOLERANCE:
        raise StreamingExportError(f"streaming front end: log-mel differs from NeMo's by {worst_feature:.2e} > "
                                   f"{FEATURE_TOLERANCE}")  # fmt: skip
    if worst_step > step_tolerance:
        raise StreamingExportError(f"streaming encoder: log-probs differ from NeMo's conformer_stream_step by "
                                   f"{worst_step:.2e} > {step_tolerance}")  # fmt: skip
    return {
        "utterances": len(waves),
        "max_abs_feature_diff": worst_feature,
        "feature_tolerance": FEATURE_TOLERANCE,
        "max_abs_step_logprob_diff": worst_step,
        "step_tolerance": step_tolerance,
        "greedy_identical": stream_texts_identical,
        "greedy_gated": transcripts,
        "reference": "NeMo conformer_stream_step (cache-aware; every window: the pre-encode cache, zeros before the start, then one chunk) on NeMo's "
        "preprocessor features",
    }
