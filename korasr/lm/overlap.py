"""How much of a test set's text an LM has already read: the share of each manifest's token n-grams that occur in the
LM's training text.

The LM's text is read again from the sources its ``lm.json`` records (checked against their recorded hashes, so the
numbers describe the LM that was built) and encoded with its tokenizer, exactly as ``korasr lm build`` fed KenLM;
n-grams run over each sentence's token ids with sentence boundaries, as KenLM counts them. A test set whose
n-grams the LM has mostly seen measures the LM's memory of it, not what beam search with an LM brings to text it
has not read (recipes/sample/RESULTS.md: eval_clean and eval_other share templates with train; eval_novel does not).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from korasr.fsutil import sha256_file
from korasr.lm.build import file_texts, load_tokenizer, manifest_texts
from korasr.runtime.lm_artifact import LMError, read_lm

BOS, EOS = -1, -2  # sentence boundaries, outside every token id


def _ngrams(ids: list[int], n: int) -> Iterator[tuple[int, ...]]:
    padded = [BOS, *ids, EOS]
    for i in range(len(padded) - n + 1):
        yield tuple(padded[i : i + n])


def lm_texts(lm_dir: str | os.PathLike[str]) -> Iterator[str]:
    """The sentences an LM directory was built from, from the sources its ``lm.json`` names; a source that changed
    or went missing since is an error naming it."""
    info = read_lm(lm_dir)
    for source in info.meta.get("sources", []):
        path = Path(source["path"])
        if not path.is_file():
            raise LMError(f"{path}: a text source of {info.dir} is gone; its overlap cannot be measured")
        if sha256_file(path) != source["sha256"]:
            raise LMError(f"{path}: changed since {info.dir} was built from it (sha256 differs)")
        yield from manifest_texts(path) if source["kind"] == "manifest" else file_texts(path)


def _counted(texts: Iterable[str], encode, orders: tuple[int, ...]) -> dict[int, set[tuple[int, ...]]]:  # type: ignore[no-untyped-def]
    seen: dict[int, set[tuple[int, ...]]] = {n: set() for n in orders}
    for text in texts:
        ids = encode(text) if text else []
        if ids and 0 not in ids:  # korasr lm build skips empty and unencodable lines
            for n in orders:
                seen[n].update(_ngrams(ids, n))
    return seen


def text_overlap(lm_dir: str | os.PathLike[str], manifests: list[str | os.PathLike[str]],
                 orders: tuple[int, ...] = (3, 6)) -> dict[str, dict]:  # fmt: skip
    """For each manifest: its utterances, its token n-gram occurrences per order and the percentage of them the
    LM's text holds, plus the share of its sentences that occur verbatim in the LM's text."""
    info = read_lm(lm_dir)
    tok = load_tokenizer(info.meta["tokenizer"]["dir"])
    if tok.sha256 != info.meta["tokenizer"]["sha256"]:
        raise LMError(f"{tok.dir}: not the tokenizer {info.dir} was built with (its vocabulary hash differs)")
    texts = list(lm_texts(lm_dir))
    known = _counted(texts, tok.encode, orders)
    sentences = set(texts)
    report: dict[str, dict] = {}
    for manifest in manifests:
        rows = [t for t in manifest_texts(Path(manifest)) if t]
        entry: dict = {"utterances": len(rows), "sentences_in_lm_text": _percent(sum(t in sentences for t in rows),
                                                                                 len(rows))}  # fmt: skip
        for n in orders:
            grams = [g for t in rows for g in _ngrams(tok.encode(t), n)]
            entry[f"{n}-grams"] = len(grams)
            entry[f"{n}-gram overlap"] = _percent(sum(g in known[n] for g in grams), len(grams))
        report[str(manifest)] = entry
    return report


def _percent(part: int, whole: int) -> float:
    return round(100 * part / whole, 2) if whole else 0.0
