"""``korasr lm build``: a token n-gram LM with KenLM's own ``lmplz`` over a tokenizer's pieces.

Text comes from train manifests (the tokenizer's own train manifest by default) and plain text files (one
sentence per line, already in the spoken form the model is scored in). Dev and eval manifests are refused, as the
tokenizer build refuses them. Every line is turned into the tokenizer's unit, encoded to piece ids and written as
``chr(id + 100)`` symbols; lines with pieces the tokenizer cannot encode (``<unk>``) are skipped and counted per
source in ``lm.json``, never silently.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

from korasr import __version__
from korasr.fsutil import ArtifactKind, sha256_file, staged_dir
from korasr.runtime.lm_artifact import (
    ARPA,
    BINARY,
    FORMAT,
    META,
    TOKEN_OFFSET,
    LMError,
    token_symbol,
    vocabulary_sha256,
)
from korasr.text.codec import to_model_text

log = logging.getLogger(__name__)

MIN_ORDER, MAX_ORDER = 2, 10
# An LM folder: lm.json (korasr lm tune rewrites it in place), the ARPA and its KenLM binary.
LM_FOLDER = ArtifactKind("lm", (META, f'"format": "{FORMAT}"'), (META, ARPA, BINARY))


@dataclass(frozen=True)
class Tokenizer:
    """A korasr tokenizer directory, loaded: the SentencePiece model, its unit and hash."""

    dir: Path
    unit: str
    sha256: str
    processor: object

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()  # type: ignore[attr-defined]

    def encode(self, text: str) -> list[int]:
        """Piece ids of normalized text (NFC syllables, single spaces), in the tokenizer's unit."""
        return self.processor.encode(to_model_text(text, self.unit))  # type: ignore[attr-defined]


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    import sentencepiece as spm

    directory = Path(directory)
    model, record = directory / "tokenizer.model", directory / "tokenizer.yaml"
    if not model.is_file() or not record.is_file():
        raise LMError(f"{directory}: not a korasr tokenizer directory (needs tokenizer.model and tokenizer.yaml)")
    meta = yaml.safe_load(record.read_text(encoding="utf-8")) or {}
    processor = spm.SentencePieceProcessor(model_file=str(model))
    return Tokenizer(directory.resolve(), meta["unit"], vocabulary_sha256(processor), processor)


def find_tool(name: str) -> Path:
    """KenLM's ``lmplz`` / ``build_binary``: beside this Python (``make kenlm`` installs them into .venv/bin), then
    on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    if found:
        return Path(found)
    raise LMError(f"KenLM's {name} is not installed: run `make kenlm` (builds it from the PyPI source package)")


def manifest_texts(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise LMError(f"{path}:{number}: not a manifest line with a text field ({e})") from None
    return texts


def file_texts(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LMError(f"{path}: not UTF-8 text ({e})") from None
    # split on \n only: str.splitlines() would also split at U+0085 and U+2028 inside a sentence
    return [" ".join(unicodedata.normalize("NFC", line).split()) for line in raw.split("\n")]


def check_source(path: Path, kind: str) -> None:
    if not path.is_file():
        raise LMError(f"{path}: no such {kind}")
    if kind == "manifest" and not path.name.startswith("train"):
        raise LMError(f"{path}: LMs train on train text only (a train*.jsonl manifest); dev and eval manifests "
                      "would leak the test sentences into the model that is scored on them")  # fmt: skip


def build_lm(
    tokenizer_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    manifests: list[str | os.PathLike[str]] | None = None,
    texts: list[str | os.PathLike[str]] | None = None,
    order: int = 6,
    memory: str = "20%",
    force: bool = False,
) -> Path:
    """Write the LM directory ``out``; skip when its ``lm.json`` records the same tokenizer, sources and order.

    ``manifests`` default to the tokenizer's own train manifest (from its ``tokenizer.yaml``). An existing ``out``
    is replaced only when it is an LM folder korasr wrote (:func:`korasr.fsutil.staged_dir`), or with ``force``."""
    if not MIN_ORDER <= order <= MAX_ORDER:
        raise LMError(f"--order must be between {MIN_ORDER} and {MAX_ORDER}, got {order}")
    started = time.perf_counter()
    tok = load_tokenizer(tokenizer_dir)
    if manifests is None and not texts:
        recorded = (yaml.safe_load((tok.dir / "tokenizer.yaml").read_text(encoding="utf-8")) or {}).get(
            "train_manifest"
        )
        if not recorded:
            raise LMError(f"{tok.dir}/tokenizer.yaml records no train manifest: pass --manifest")
        manifests = [recorded]
    sources = [(Path(p).resolve(), "manifest") for p in manifests or []] + [
        (Path(p).resolve(), "text") for p in texts or []
    ]
    for path, kind in sources:
        check_source(path, kind)
    wanted = {
        "format": FORMAT,
        "order": order,
        "token_offset": TOKEN_OFFSET,
        "tokenizer": {"dir": str(tok.dir), "sha256": tok.sha256, "unit": tok.unit, "vocab_size": tok.vocab_size},
        "sources": [{"path": str(p), "kind": k, "sha256": sha256_file(p)} for p, k in sources],
    }
    out = Path(out).resolve()
    try:
        previous = json.loads((out / META).read_text(encoding="utf-8"))
        previous["sources"] = [{k: s.get(k) for k in ("path", "kind", "sha256")} for s in previous.get("sources", [])]
        if {k: previous.get(k) for k in wanted} == wanted and (out / BINARY).is_file():
            log.info("%s is up to date (same tokenizer, sources and order): nothing to do", out)
            return out
    except (FileNotFoundError, json.JSONDecodeError, AttributeError, TypeError):
        pass

    lmplz, build_binary = find_tool("lmplz"), find_tool("build_binary")
    with staged_dir(out, LM_FOLDER, force=force) as staging:
        corpus = staging / "corpus.txt"
        lines_total = 0
        with open(corpus, "w", encoding="utf-8", newline="\n") as f:
            for (path, kind), record in zip(sources, wanted["sources"], strict=True):
                lines = manifest_texts(path) if kind == "manifest" else file_texts(path)
                used = skipped_unk = skipped_empty = 0
                for text in lines:
                    ids = tok.encode(text) if text else []
                    if not ids:
                        skipped_empty += 1
                    elif 0 in ids:  # <unk>: characters the tokenizer cannot encode
                        skipped_unk += 1
                    else:
                        f.write(" ".join(token_symbol(i) for i in ids) + "\n")
                        used += 1
                record.update(lines=used, skipped_unencodable=skipped_unk, skipped_empty=skipped_empty)
                log.info("%s: %d lines (%d skipped: characters the tokenizer cannot encode; %d empty)", path, used,
                         skipped_unk, skipped_empty)  # fmt: skip
                lines_total += used
        if lines_total == 0:
            raise LMError(f"no encodable text in {[str(p) for p, _ in sources]}")
        log.info("lmplz -o %d over %d lines", order, lines_total)
        with open(corpus, "rb") as stdin, open(staging / ARPA, "wb") as stdout:
            _run([str(lmplz), "-o", str(order), "-S", memory, "-T", str(staging), "--discount_fallback"],
                 stdin=stdin, stdout=stdout)  # fmt: skip
        corpus.unlink()
        _run([str(build_binary), str(staging / ARPA), str(staging / BINARY)], stdout=subprocess.DEVNULL)
        meta = {
            **wanted,
            "ngrams": arpa_counts(staging / ARPA),
            "lines": lines_total,
            "files": {
                name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
                for name in (ARPA, BINARY)
            },
            "kenlm": _kenlm_version(lmplz),
            "korasr_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds_taken": round(time.perf_counter() - started, 2),
            "tuned": None,
        }
        (staging / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("wrote %s: order %d, n-grams %s, %.1f s", out, order, meta["ngrams"], meta["seconds_taken"])
    return out


def _run(cmd: list[str], **kwargs) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, **kwargs)
    if proc.returncode:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise LMError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {tail}")


def arpa_counts(path: Path) -> dict[str, int]:
    """``{"1": n1, "2": n2, …}`` from an ARPA file's ``\\data\\`` header."""
    counts: dict[str, int] = {}
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if line.startswith(b"\\1-grams"):
                break
            if m := re.match(rb"ngram (\d+)=(\d+)", line):
                counts[m.group(1).decode()] = int(m.group(2))
    if not counts:
        raise LMError(f"{path}: no \\data\\ header: not an ARPA file")
    return counts


def _kenlm_version(lmplz: Path) -> str:
    marker = lmplz.parent / "kenlm.version"
    return marker.read_text().strip() if marker.is_file() else "unknown"
