"""``korasr lm tune``: choose the LM weight (alpha) and the piece bonus (beta) on a dev manifest.

The acoustic model runs once; every (alpha, beta) of the grid decodes the same log-probabilities with the runtime's
beam search, and the lowest CER wins (ties: the smaller alpha, then the smaller beta). The choice, the grid and
the greedy CER are recorded in the LM directory's ``lm.json`` (``tuned``); decoders use them unless told
otherwise. Eval manifests are refused: tuning on the test set would report a number no user can reach.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from korasr.fsutil import atomic_open, sha256_file
from korasr.runtime.lm_artifact import META, LMError, check_tokenizer, read_lm

log = logging.getLogger(__name__)


def check_dev_manifest(path: Path) -> None:
    if not path.is_file():
        raise LMError(f"{path}: no such manifest")
    if path.name.startswith(("eval", "test")):
        raise LMError(f"{path}: alpha and beta are tuned on dev, never on an eval/test split (pass dev.jsonl)")


def _acoustics(model_path: str | os.PathLike[str], paths: list[str], progress: bool):  # type: ignore[no-untyped-def]
    """(log-probabilities per utterance, pieces, unit, tokenizer hash, vocab size) of an export or a .nemo."""
    if Path(model_path).is_dir():
        import soundfile as sf

        from korasr.runtime import Recognizer
        from korasr.runtime.audio import to_mono_16k

        rec = Recognizer(model_path)
        logprobs = []
        for start in range(0, len(paths), 16):
            waves = []
            for p in paths[start : start + 16]:
                audio, rate = sf.read(p, dtype="float32", always_2d=True)
                waves.append(to_mono_16k(audio, rate))
            logprobs += rec.logprobs(waves)
        return logprobs, rec.pieces[: rec.blank], rec.unit, rec.tokenizer_sha256(), rec.blank
    from korasr.model import load_model, nemo_logprobs, nemo_pieces, nemo_tokenizer_sha256

    model = load_model(model_path)
    unit = str(model.cfg.get("korasr_text_unit", "jamo"))
    logprobs = nemo_logprobs(model, paths, progress=progress)
    return logprobs, nemo_pieces(model), unit, nemo_tokenizer_sha256(model), model.tokenizer.vocab_size


def tune(
    model_path: str | os.PathLike[str],
    lm_dir: str | os.PathLike[str],
    manifest: str | os.PathLike[str],
    *,
    alphas: list[float],
    betas: list[float],
    beam: int = 8,
    progress: bool = True,
) -> dict:
    """Grid-search alpha × beta on ``manifest``; record and return the choice."""
    from tqdm import tqdm

    from korasr.evaluate import read_manifest
    from korasr.metrics import cer
    from korasr.runtime import tokens_text
    from korasr.runtime.beam import BeamDecoder, BeamOptions
    from korasr.runtime.ctc import greedy

    manifest = Path(manifest).resolve()
    check_dev_manifest(manifest)
    info = read_lm(lm_dir)
    rows = read_manifest(manifest)
    refs = [r["text"] for r in rows]
    logprobs, pieces, unit, tokenizer_sha, vocab = _acoustics(model_path, [r["audio_filepath"] for r in rows],
                                                             progress)  # fmt: skip
    check_tokenizer(info, tokenizer_sha, vocab, str(model_path))

    def score(decode) -> float:  # type: ignore[no-untyped-def]
        return cer(refs, [tokens_text(pieces, [t for t, _ in decode(lp)], unit) for lp in logprobs])

    greedy_cer = score(lambda lp: greedy(lp, vocab))
    grid = []
    bar = tqdm(total=len(alphas) * len(betas), desc="alpha × beta", disable=not progress)
    for alpha in alphas:
        for beta in betas:
            decoder = BeamDecoder(vocab, BeamOptions(beam=beam, alpha=alpha, beta=beta), info.binary)
            grid.append({"alpha": alpha, "beta": beta, "cer": round(score(decoder.decode), 3)})
            bar.update()
    bar.close()
    best = min(grid, key=lambda g: (g["cer"], abs(g["alpha"]), abs(g["beta"])))
    tuned = {
        "alpha": best["alpha"],
        "beta": best["beta"],
        "beam": beam,
        "cer": best["cer"],
        "greedy_cer": round(greedy_cer, 3),
        "manifest": str(manifest),
        "manifest_sha256": sha256_file(manifest),
        "utterances": len(rows),
        "model": str(Path(model_path).resolve()),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "grid": grid,
    }
    meta = dict(info.meta, tuned=tuned)
    with atomic_open(info.dir / META) as f:
        f.write(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log.info("tuned on %s: alpha %g, beta %g → CER %.2f%% (greedy %.2f%%)", manifest, best["alpha"], best["beta"],
             best["cer"], greedy_cer)  # fmt: skip
    return {k: v for k, v in tuned.items() if k != "grid"}
