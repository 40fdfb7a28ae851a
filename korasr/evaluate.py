"""`korasr evaluate`: transcribe manifests with a ``.nemo`` and score them (CER without and with spaces, WER, sWER,
jamo slots; see :mod:`korasr.report`).

Hypotheses are composed back to NFC with the model's text unit (``model.korasr_text_unit``, written by
`korasr train`; jamo by default, which is also right for syllable models) and written as JSONL
(``utt_id``, ``ref``, ``hyp``) so that every metric can be recomputed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from korasr.fsutil import atomic_open, sha256_file
from korasr.lookahead import is_streaming, lookahead_label, lookaheads
from korasr.model import load_model, nemo_logprobs, nemo_pieces, nemo_tokenizer_sha256
from korasr.provenance import command_line, git_commit, versions
from korasr.report import (
    DEFINITIONS,
    normalization_of,
    read_hypotheses,
    read_jsonl,
    split_scores,
    update_results,
    write_report,
)
from korasr.text.codec import from_model_text

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    pass


DECODERS = ("greedy", "greedy-hangul", "beam", "nemo-beam")
GREEDY = ("greedy", "greedy-hangul")  # no LM, no hotwords


@dataclass(frozen=True)
class Decoding:
    """One decoder setting: ``greedy``; ``greedy-hangul`` (greedy's best path restricted to whole Hangul syllables,
    korasr.runtime.hangul: on an export's or a .nemo's log-probabilities); ``beam`` (korasr's runtime beam search with an LM directory and hotwords,
    on an export's or a .nemo's log-probabilities); ``nemo-beam`` (NeMo's own ``beam_batch`` with the same LM's
    ARPA through NGPU-LM, and hotwords through its boosting tree; a .nemo only). Unset beam/alpha/beta come from
    the LM's tuning (``korasr lm tune``), else korasr's defaults."""

    decoder: str = "greedy"
    lm: str | None = None
    hotwords: str | None = None
    beam: int | None = None
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.decoder in GREEDY and (self.lm or self.hotwords):
            raise ValueError("--lm and --hotwords need a beam decoder (--decoder beam)")

    def options(self, lm_info=None):  # type: ignore[no-untyped-def]
        """The beam options this setting resolves to (explicit values, else the LM's tuned ones, else defaults)."""
        from korasr.runtime.beam import BeamOptions

        tuned = (lm_info.tuned if lm_info is not None else None) or {}
        chosen = {"beam": self.beam, "alpha": self.alpha, "beta": self.beta}
        return BeamOptions(
            **{k: v if v is not None else tuned.get(k, getattr(BeamOptions, k)) for k, v in chosen.items()}
        )

    def lm_info(self):  # type: ignore[no-untyped-def]
        """The LM directory's metadata, checked (None without ``lm``): a missing or corrupt LM is an error."""
        from korasr.runtime.lm_artifact import read_lm

        return read_lm(self.lm) if self.lm else None

    def label(self, lm_info=None) -> str:  # type: ignore[no-untyped-def]
        if self.decoder in GREEDY:
            return self.decoder
        o = self.options(lm_info)
        parts = [f"lm {Path(self.lm).name}" if self.lm else "no lm", f"α {o.alpha:g}", f"β {o.beta:g}"]
        if self.hotwords:
            parts.append(f"hotwords {Path(self.hotwords).name}")
        return f"{self.decoder} {o.beam} ({', '.join(parts)})"

    def slug(self, lm_info=None) -> str:  # type: ignore[no-untyped-def]
        return re.sub(r"[^0-9A-Za-z.]+", "_", self.label(lm_info)).strip("_")


def read_manifest(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a NeMo JSONL manifest (a line that is not JSON is an error naming the file and line)."""
    return read_jsonl(path)


def transcribe(model, rows: list[dict], batch_size: int = 32, progress: bool = True,  # type: ignore[no-untyped-def]
               decoding: Decoding | None = None) -> list[str]:  # fmt: skip
    """NFC transcripts of the manifest rows' audio, in order, with ``decoding`` (default: the model's own,
    :func:`default_decoding`)."""
    decoding = decoding or default_decoding(model)
    paths = [r["audio_filepath"] for r in rows]
    if hasattr(model, "session"):  # an export directory: onnxruntime
        from tqdm import tqdm

        if decoding.decoder == "nemo-beam":
            raise ValueError("--decoder nemo-beam runs NeMo's beam search: it needs a .nemo, not an export folder")
        use_decoding(model, decoding)
        texts: list[str] = []
        for start in tqdm(range(0, len(paths), batch_size), desc="transcribing", unit="batch", disable=not progress):
            texts += [r.text for r in model.transcribe(paths[start : start + batch_size], batch_size=batch_size)]
        return texts
    unit = str(model.cfg.get("korasr_text_unit", "jamo"))
    if decoding.decoder == "beam":
        return _korasr_beam_on_nemo(model, paths, batch_size, decoding, unit, progress)
    if decoding.decoder == "nemo-beam":
        return _nemo_beam(model, paths, batch_size, decoding, unit, progress)
    if decoding.decoder == "greedy-hangul":
        return _hangul_on_nemo(model, paths, batch_size, unit, progress)
    outputs = model.transcribe(paths, batch_size=batch_size, verbose=progress)
    if isinstance(outputs, tuple):  # some NeMo versions return (best, all)
        outputs = outputs[0]
    return [from_model_text(o.text if hasattr(o, "text") else str(o), unit) for o in outputs]


def default_decoding(model) -> Decoding:  # type: ignore[no-untyped-def]
    """The decoding a model is scored with when none is named: greedy-hangul for a jamo vocabulary, else greedy
    (:func:`korasr.runtime.hangul.default_decoder`; no LM, even where an export bundles one)."""
    from korasr.runtime.hangul import default_decoder

    pieces = model.pieces[: model.blank] if hasattr(model, "session") else nemo_pieces(model)
    return Decoding(default_decoder(pieces))


def use_decoding(recognizer, decoding: Decoding) -> None:  # type: ignore[no-untyped-def]
    """Set an export's :class:`korasr.runtime.Recognizer` to decode as ``decoding`` says (its LM, its hotwords file,
    its beam options; greedy otherwise)."""
    if decoding.decoder in GREEDY:
        recognizer.use_decoder(decoding.decoder)
        return
    from korasr.runtime.beam import hotword_file_lines

    options = decoding.options(decoding.lm_info())
    lines = hotword_file_lines(decoding.hotwords) if decoding.hotwords else None
    hotwords = recognizer.hotwords(lines, decoding.hotwords) if lines is not None else None
    recognizer.use_decoder("beam", lm=decoding.lm, beam_options=options, hotwords=hotwords)


def with_bundled_lm(decoding: Decoding, model) -> Decoding:  # type: ignore[no-untyped-def]
    """A beam decoding without ``lm`` on an export that bundles one uses it (and its tuned alpha/beta)."""
    import dataclasses

    bundled = getattr(model, "bundled_lm", None)
    if decoding.decoder == "beam" and not decoding.lm and bundled is not None:
        return dataclasses.replace(decoding, lm=str(bundled))
    return decoding


def _check_lm_for_nemo(model, info) -> None:  # type: ignore[no-untyped-def]
    from korasr.runtime.lm_artifact import check_tokenizer

    check_tokenizer(info, nemo_tokenizer_sha256(model), model.tokenizer.vocab_size, "the .nemo's")


def _nemo_hotwords(model, decoding: Decoding, unit: str):  # type: ignore[no-untyped-def]
    """The decoding's hotword file over the .nemo's own tokenizer (None without one)."""
    if not decoding.hotwords:
        return None
    from korasr.runtime.beam import hotword_file_lines, hotwords_from_lines, piece_variants

    sp = model.tokenizer.tokenizer
    lines = hotword_file_lines(decoding.hotwords)
    return hotwords_from_lines(lines, lambda p: piece_variants(sp, unit, p), decoding.hotwords)


def _hangul_on_nemo(model, paths, batch_size, unit, progress) -> list[str]:  # type: ignore[no-untyped-def]
    from korasr.runtime import tokens_text
    from korasr.runtime.ctc import collapse
    from korasr.runtime.hangul import HangulPath

    pieces = nemo_pieces(model)
    decoder = HangulPath(pieces)
    return [tokens_text(pieces, [t for t, _ in collapse(decoder.path(lp), len(pieces))], unit)
            for lp in nemo_logprobs(model, paths, batch_size, progress)]  # fmt: skip


def _korasr_beam_on_nemo(model, paths, batch_size, decoding, unit, progress) -> list[str]:  # type: ignore[no-untyped-def]
    from korasr.runtime import tokens_text
    from korasr.runtime.beam import BeamDecoder

    info = decoding.lm_info()
    if info is not None:
        _check_lm_for_nemo(model, info)
    hotwords = _nemo_hotwords(model, decoding, unit)
    vocab = model.tokenizer.vocab_size
    decoder = BeamDecoder(vocab, decoding.options(info), info.binary if info else None, hotwords)
    pieces = nemo_pieces(model)
    return [tokens_text(pieces, [t for t, _ in decoder.decode(lp)], unit)
            for lp in nemo_logprobs(model, paths, batch_size, progress)]  # fmt: skip


def _use_nemo_beam(model, decoding: Decoding) -> None:  # type: ignore[no-untyped-def]
    """NeMo's ``beam_batch`` CTC search with the LM's ARPA (NGPU-LM reads ``chr(id + 100)`` symbols) and, for
    hotwords, NeMo's boosting tree over the same phrases in the model's unit."""
    import copy

    from omegaconf import open_dict

    from korasr.text.codec import to_model_text

    info = decoding.lm_info()
    if info is not None:
        _check_lm_for_nemo(model, info)
    options = decoding.options(info)
    cfg = copy.deepcopy(model.cfg.decoding)
    with open_dict(cfg):
        cfg.strategy = "beam_batch"
        cfg.beam.beam_size = options.beam
        cfg.beam.beam_beta = options.beta
        cfg.beam.beam_threshold = options.threshold
        cfg.beam.allow_cuda_graphs = False
        cfg.beam.return_best_hypothesis = True
        cfg.beam.ngram_lm_model = str(info.arpa) if info is not None else None
        cfg.beam.ngram_lm_alpha = options.alpha
        if decoding.hotwords:
            unit = str(model.cfg.get("korasr_text_unit", "jamo"))
            words = _nemo_hotwords(model, decoding, unit)
            cfg.beam.boosting_tree = {"key_phrases_list": [to_model_text(w.phrase, unit) for w in words],
                                      "context_score": max(w.boost for w in words), "use_triton": False}  # fmt: skip
            cfg.beam.boosting_tree_alpha = 1.0
    model.change_decoding_strategy(cfg, verbose=False)


def _nemo_beam(model, paths, batch_size, decoding, unit, progress) -> list[str]:  # type: ignore[no-untyped-def]
    """NeMo's beam_batch on the same log-probabilities korasr's beam search gets (:func:`nemo_logprobs`): only the
    searches differ, not the batches the acoustic model saw."""
    import torch

    logprobs = nemo_logprobs(model, paths, batch_size, progress)
    _use_nemo_beam(model, decoding)
    texts: list[str] = []
    try:
        for start in range(0, len(logprobs), batch_size):
            batch = logprobs[start : start + batch_size]
            lengths = torch.tensor([len(lp) for lp in batch], dtype=torch.long)
            padded = torch.zeros(len(batch), int(lengths.max()), batch[0].shape[1], dtype=torch.float32)
            for i, lp in enumerate(batch):
                padded[i, : len(lp)] = torch.from_numpy(lp)
            with torch.inference_mode():
                hyps = model.decoding.ctc_decoder_predictions_tensor(padded, decoder_lengths=lengths)
            if isinstance(hyps, tuple):
                hyps = hyps[0]
            texts += [from_model_text(h.text if hasattr(h, "text") else str(h), unit) for h in hyps]
    finally:
        _use_nemo_greedy(model)
    return texts


def _use_nemo_greedy(model) -> None:  # type: ignore[no-untyped-def]
    import copy

    from omegaconf import open_dict

    cfg = copy.deepcopy(model.cfg.decoding)
    with open_dict(cfg):
        cfg.strategy = "greedy_batch"
    model.change_decoding_strategy(cfg, verbose=False)


def evaluate(
    model_path: str | os.PathLike[str],
    manifests: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 32,
    max_cer: float | None = None,
    results_md: str | os.PathLike[str] | None = None,
    progress: bool = True,
    precision: str = "fp32",
    decodings: list[Decoding] | None = None,
) -> dict:
    """Transcribe each manifest (split = its stem), write ``<split>.hyp.jsonl`` and the report (``report.json``,
    ``report.md``, ``error_rates.png``) to ``out_dir`` (default: ``eval/`` beside the model), add rows to
    ``results_md`` when given, and raise :class:`GateFailed` when a split's CER exceeds ``max_cer``.
    ``precision`` picks an export's graph (fp32, fp16, int8; see korasr.runtime.Recognizer). Without ``decodings``
    the model's own decoder scores it (:func:`default_decoding`: greedy-hangul for a jamo model, else greedy; the
    report's ``meta.decoder`` names it). With several
    ``decodings`` (or one that is not the model's own) each split is scored once per decoder setting, named
    ``<split> · <setting>`` (files ``<split>.<setting>.hyp.jsonl``). A streaming ``.nemo`` (``korasr train
    --streaming``) is scored at each look-ahead it was trained with (``<split> · look-ahead 480 ms``): NeMo's
    offline forward with the chunked attention of that look-ahead, which is what its cache-aware streaming
    computes (korasr export checks the streaming graphs against NeMo's streaming step)."""
    splits = {Path(m).stem: Path(m) for m in manifests}
    if len(splits) != len(manifests):
        raise ValueError(f"two manifests share a split name (file stem): {[str(m) for m in manifests]}")
    for manifest in splits.values():
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no such manifest")
    infos = [d.lm_info() for d in decodings or []]  # a missing or corrupt LM fails before any model loads
    model = load_model(model_path, precision)
    own = default_decoding(model)
    decodings = [with_bundled_lm(d, model) for d in decodings or [own]]
    infos = [d.lm_info() for d in decodings]
    out = Path(out_dir) if out_dir else Path(model_path).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    contexts: list = [None]
    if not hasattr(model, "session") and is_streaming(model):
        contexts = lookaheads(model)
    plain = decodings == [own]
    hyp_files: dict[str, Path] = {}
    for context in contexts:
        if context is not None:
            model.encoder.set_default_att_context_size(context["att_context_size"])
        for decoding, info in zip(decodings, infos, strict=True):
            for split, manifest in splits.items():
                rows = read_manifest(manifest)
                labels = ([lookahead_label(context)] if context else []) + ([] if plain else [decoding.label(info)])
                name = " · ".join([split, *labels])
                slug = re.sub(r"[^0-9A-Za-z.]+", "_", " ".join(labels)).strip("_")
                log.info("transcribing %s: %d utterances (%s)", manifest, len(rows), " · ".join(labels) or own.decoder)
                hyps = transcribe(model, rows, batch_size, progress, decoding)
                hyp_files[name] = out / (f"{split}.{slug}.hyp.jsonl" if slug else f"{split}.hyp.jsonl")
                with atomic_open(hyp_files[name]) as f:
                    for row, hyp in zip(rows, hyps, strict=True):
                        record = {"utt_id": row.get("utt_id"), "ref": row["text"], "hyp": hyp}
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    report = score_files(
        hyp_files,
        out,
        model=model_path if precision == "fp32" else f"{model_path} ({precision})",
        normalization=normalization_of(next(iter(splits.values()))),
        results_md=results_md,
        decoder=own.decoder if plain else None,
    )
    gate(report, max_cer)
    return report


def score_files(
    hyp_files: dict[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    normalization: dict | None = None,
    results_md: str | os.PathLike[str] | None = None,
    decoder: str | None = None,
) -> dict:
    """The report of ``{split: <split>.hyp.jsonl}``, written to ``out_dir`` (and rows to ``results_md``);
    ``decoder``: what decoded splits whose names carry no decoder."""
    report: dict = {"model": None, "model_sha256": None}
    if model is not None:
        report["model"] = str(Path(model).resolve())
        if Path(model).is_file():
            report["model_sha256"] = sha256_file(model)
    report["meta"] = {
        "date": dt.date.today().isoformat(),
        "command": command_line(),
        "git_commit": git_commit(),
        "versions": versions(),
        "normalization": normalization,
        "definitions": DEFINITIONS,
        "decoder": decoder,
    }
    report["splits"] = {split: split_scores(*read_hypotheses(path)) for split, path in hyp_files.items()}
    write_report(report, out_dir)
    if results_md:
        update_results(results_md, report)
    return report


def gate(report: dict, max_cer: float | None) -> None:
    if max_cer is None:
        return
    over = {s: r["cer"] for s, r in report["splits"].items() if r["cer"] is None or r["cer"] > max_cer}
    if over:
        raise GateFailed(f"CER (no spaces) above {max_cer}%: {over}")
