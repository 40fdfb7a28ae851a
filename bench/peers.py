"""The peers the bench scripts measure korasr against, each built and called the way its scripts use it: sherpa-onnx
(offline and online), NeMo's own ``transcribe``, lhotse's KsponSpeech recipe, a raw copy of the bytes, the
``jamo`` package, and NeMo's published layer count. Not a script: nothing runs at import, and each peer is
imported only when it is used (a bench that does not need one runs without it)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# NeMo's example YAML says 18 layers for FastConformer-L where its model table (and korasr's `large`) says 17.
NEMO_PUBLISHED = ["model.encoder.n_layers=18"]

_RAW_COPY = """
import os, shutil, sys
from multiprocessing import Pool
src, dst, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = []
for dirpath, _, names in os.walk(src):
    for name in names:
        if name.endswith(".pcm"):
            s = os.path.join(dirpath, name)
            pairs.append((s, os.path.join(dst, os.path.relpath(s, src))))
for d in {os.path.dirname(t) for _, t in pairs}:
    os.makedirs(d, exist_ok=True)
def copy(pair):
    shutil.copyfile(*pair)
with Pool(jobs) as pool:
    pool.map(copy, pairs, chunksize=256)
"""

_LHOTSE = """
import sys
from lhotse.recipes.ksponspeech import prepare_ksponspeech
prepare_ksponspeech(sys.argv[1], output_dir=sys.argv[2], num_jobs=int(sys.argv[3]))
"""


# --- sherpa-onnx, on the graphs `korasr export` writes for it ----------------------------------------------------


def sherpa_offline(export_dir: Path, threads: int):  # type: ignore[no-untyped-def]
    """sherpa-onnx's whole-file recognizer on an export's ``encoder.onnx`` and ``tokens.txt``."""
    import sherpa_onnx

    return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
        model=str(export_dir / "encoder.onnx"), tokens=str(export_dir / "tokens.txt"), num_threads=threads
    )


def sherpa_online(export_dir: Path, threads: int):  # type: ignore[no-untyped-def]
    """sherpa-onnx's streaming recognizer on an export's ``streaming/encoder.onnx`` and ``streaming/tokens.txt``."""
    import sherpa_onnx

    folder = export_dir / "streaming"
    return sherpa_onnx.OnlineRecognizer.from_nemo_ctc(tokens=str(folder / "tokens.txt"),
                                                      model=str(folder / "encoder.onnx"), num_threads=threads)  # fmt: skip


# --- NeMo ------------------------------------------------------------------------------------------------------


def nemo_transcribe(model, audio: list, batch_size: int) -> list:  # type: ignore[no-untyped-def]
    """NeMo's own ``transcribe`` on file paths or arrays, quietly: its outputs (``.text``) in order."""
    return model.transcribe(audio, batch_size=batch_size, verbose=False)


# --- data preparation: lhotse, and a raw copy (the physical limit) ----------------------------------------------


def raw_copy_command(src: Path, dst: Path, jobs: int) -> list[str]:
    """A fresh Python process copying every ``.pcm`` under ``src`` to the same place under ``dst`` with ``jobs``
    processes: every byte read and written once."""
    return [sys.executable, "-c", _RAW_COPY, str(src), str(dst), str(jobs)]


def lhotse_command(root: Path, out: Path, jobs: int) -> list[str]:
    """A fresh Python process running lhotse's ``prepare_ksponspeech`` on a tree made by :func:`lhotse_tree`."""
    return [sys.executable, "-c", _LHOTSE, str(root), str(out), str(jobs)]


def lhotse_tree(corpus: Path, dst: Path) -> Path:
    """lhotse reads `<root>/<split>.trn` and eval audio at `<root>/eval_*`, and writes FLAC beside each PCM:
    give it a tree of hard links to the same PCM files, arranged as it expects."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(corpus, dst, copy_function=os.link, ignore=shutil.ignore_patterns("*.flac"))
    for trn in (dst / "KsponSpeech_scripts").iterdir():
        shutil.copy(trn, dst / trn.name)
    for split in ("eval_clean", "eval_other"):
        (dst / split).symlink_to(dst / "KsponSpeech_eval" / split)
    return dst


# --- text: the jamo package ------------------------------------------------------------------------------------


def jamo_decompose(texts: list[str]) -> list[str]:
    """Hangul syllables → conjoining jamo with the ``jamo`` package's ``h2j``."""
    import jamo

    return [jamo.h2j(t) for t in texts]
