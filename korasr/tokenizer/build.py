"""Tokenizer directories that a stock NeMo ``EncDecCTCModelBPE`` loads with ``tokenizer: {dir: ..., type: bpe}``.

Every unit is a SentencePiece model trained on the *train* manifest's text after :func:`to_model_text`:

- ``jamo``: pieces over conjoining jamo (unigram or BPE); ``syllable``: pieces over NFC syllables;
- ``char-jamo`` / ``char-syllable``: SentencePiece ``char`` models, one piece per jamo / syllable.

SentencePiece runs with ``normalization_rule_name=identity``: its default (nmt_nfkc) recomposes conjoining jamo
into syllables, which would silently turn a "jamo" tokenizer into a syllable one. ``<s>``/``</s>`` are disabled
(a CTC model would learn to emit them); id 0 is ``<unk>``. Jamo units see every modern jamo once in training,
so all 11,172 Hangul syllables encode without ``<unk>``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from korasr import __version__
from korasr.errors import KorasrError
from korasr.fsutil import ArtifactKind, sha256_file, staged_dir
from korasr.text.codec import JAMO_UNITS, MODERN_JAMO, UNITS, to_model_text

log = logging.getLogger(__name__)

TYPES = ("unigram", "bpe")
CHAR_UNITS = frozenset({"char-jamo", "char-syllable"})
NORMALIZATION_RULE = "identity"
FILES = ("tokenizer.model", "tokenizer.vocab", "vocab.txt", "tokenizer.yaml")
TOKENIZER_FOLDER = ArtifactKind("tokenizer", ("tokenizer.yaml", "normalization_rule_name:"), (*FILES, "report.json"))
_SPECIALS = ("<s>", "</s>", "<pad>", "<unk>")


class TokenizerError(KorasrError, RuntimeError):
    pass


@dataclass(frozen=True)
class TokenizerOptions:
    unit: str = "jamo"
    type: str = "unigram"  # ignored for char units (SentencePiece "char")
    vocab: int = 1024  # upper bound for SentencePiece units; char units take their alphabet
    character_coverage: float = 1.0

    def validate(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, not {self.unit!r}")
        if self.type not in TYPES:
            raise ValueError(f"type must be one of {TYPES}, not {self.type!r}")
        if self.vocab < 2:
            raise ValueError(f"vocab must be at least 2, not {self.vocab}")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise ValueError(f"character coverage must lie in [0.9, 1], not {self.character_coverage}")

    @property
    def model_type(self) -> str:
        return "char" if self.unit in CHAR_UNITS else self.type


def default_out(manifest: Path, options: TokenizerOptions) -> Path:
    """``tokenizers/<recipe>/<unit>_<type>_v<vocab>`` (char units: ``<unit>``), recipe = the manifest's folder."""
    name = options.unit if options.unit in CHAR_UNITS else f"{options.unit}_{options.type}_v{options.vocab}"
    return Path("tokenizers") / manifest.resolve().parent.name / name


def read_texts(manifest: Path) -> list[str]:
    texts = []
    with open(manifest, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError) as e:
                raise TokenizerError(f"{manifest} line {number}: not a NeMo manifest row with a text ({e})") from e
    return texts


def build_tokenizer(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    options: TokenizerOptions | None = None,
    *,
    report_manifests: list[Path] | None = None,
    force: bool = False,
) -> Path:
    """Train a tokenizer on ``manifest`` (a train split) and write its directory; return the directory.

    Skips the work when ``tokenizer.yaml`` there records the same manifest hash and options. Writes
    ``report.json`` (see :mod:`korasr.tokenizer.report`) over ``report_manifests`` (default: the manifest and
    its sibling dev/eval manifests). An existing directory is replaced only when it is a tokenizer korasr wrote
    (:func:`korasr.fsutil.staged_dir`), or with ``force``.
    """
    import sentencepiece as spm

    from korasr.tokenizer.report import feasibility_report

    started = time.perf_counter()
    options = options or TokenizerOptions()
    options.validate()
    manifest = Path(manifest).resolve()
    if not manifest.is_file():
        raise TokenizerError(f"{manifest}: no such manifest")
    if not manifest.name.startswith("train"):
        raise TokenizerError(f"{manifest}: tokenizers train on the train split only (a train*.jsonl manifest)")
    out_dir = Path(out) if out is not None else default_out(manifest, options)
    out_dir = out_dir.resolve()
    manifest_hash = sha256_file(manifest)
    record = {
        "unit": options.unit,
        "type": options.model_type,
        "requested_vocab": options.vocab,
        "character_coverage": options.character_coverage,
        "normalization_rule_name": NORMALIZATION_RULE,
        "train_manifest": str(manifest),
        "train_manifest_sha256": manifest_hash,
        "korasr_version": __version__,
    }
    existing = out_dir / "tokenizer.yaml"
    if existing.is_file() and all((out_dir / f).is_file() for f in FILES):
        previous = yaml.safe_load(existing.read_text(encoding="utf-8")) or {}
        if all(previous.get(k) == v for k, v in record.items()):
            log.info("%s is up to date (same train manifest and options): nothing to do", out_dir)
            return out_dir

    texts = [to_model_text(t, options.unit) for t in read_texts(manifest)]
    texts = [t for t in texts if t]
    if not texts:
        raise TokenizerError(f"{manifest}: no text to train on")
    log.info("training %s tokenizer (%s) on %d sentences of %s", options.unit, options.model_type, len(texts),
             manifest)  # fmt: skip

    with staged_dir(out_dir, TOKENIZER_FOLDER, force=force) as staging:
        corpus = staging / "train_text.txt"
        lines = list(texts)
        if options.unit in JAMO_UNITS:
            # Every modern jamo once, so that any Hangul syllable encodes without <unk>.
            lines.append(" ".join(MODERN_JAMO))
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        alphabet = sorted({ch for line in lines for ch in line if not ch.isspace()})
        vocab_size = len(alphabet) + 2 if options.unit in CHAR_UNITS else options.vocab  # + <unk> and ▁
        if options.character_coverage == 1.0 and vocab_size < len(alphabet) + 2:
            raise TokenizerError(
                f"--vocab {vocab_size} is below the {len(alphabet)} characters of the {options.unit} alphabet in "
                f"{manifest} (+ <unk> and ▁): raise --vocab to at least {len(alphabet) + 2} or lower "
                "--character-coverage"
            )
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(staging / "tokenizer"),
            model_type=options.model_type,
            vocab_size=vocab_size,
            character_coverage=options.character_coverage,
            normalization_rule_name=NORMALIZATION_RULE,
            hard_vocab_limit=False,
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        corpus.unlink()
        _write_nemo_vocab(staging)
        processor = spm.SentencePieceProcessor(model_file=str(staging / "tokenizer.model"))
        _check(processor, options.unit, texts)
        record.update(
            vocab_size=processor.get_piece_size(),
            blank_id=processor.get_piece_size(),  # NeMo's CTC decoder appends the blank last
            alphabet_size=len(alphabet),
            train_sentences=len(texts),
            python=platform.python_version(),
            sentencepiece=spm.__version__,
            seconds_taken=round(time.perf_counter() - started, 2),
        )
        (staging / "tokenizer.yaml").write_text(yaml.safe_dump(record, allow_unicode=True, sort_keys=False))
        reports = report_manifests if report_manifests is not None else _siblings(manifest)
        report = {str(sub): feasibility_report(processor, options.unit, reports, subsampling=sub) for sub in (4, 8)}
        (staging / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    log.info("wrote %s: %d pieces (%s over %s)", out_dir, record["vocab_size"], options.model_type, options.unit)
    return out_dir


def _siblings(manifest: Path) -> list[Path]:
    names = ["train.jsonl", "dev.jsonl", "eval_clean.jsonl", "eval_other.jsonl"]
    found = [manifest.parent / n for n in names if (manifest.parent / n).is_file()]
    found += sorted(p for p in manifest.parent.glob("eval_*.jsonl") if p.name not in names)  # extra eval splits
    return found if manifest in found else [manifest, *found]


def _write_nemo_vocab(directory: Path) -> None:
    """``vocab.txt`` as NeMo writes it: pieces without specials, ``▁x`` → ``x``, other ``x`` → ``##x``."""
    tokens = []
    for line in (directory / "tokenizer.vocab").read_text(encoding="utf-8").splitlines():
        piece = line.split("\t")[0]
        if piece in _SPECIALS:
            continue
        token = piece[1:] if piece.startswith("▁") else f"##{piece}"
        tokens.append(token or piece[0])
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


def _check(processor, unit: str, texts: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Refuse a tokenizer that is not what its unit says (the nmt_nfkc trap) or that loses text."""
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    if unit in JAMO_UNITS:
        syllables = [p for p in pieces if any("\uac00" <= ch <= "\ud7a3" for ch in p)]
        if syllables:
            raise TokenizerError(f"jamo tokenizer has precomposed syllables in its pieces: {syllables[:5]}")
    for text in texts[:2000]:
        ids = processor.encode(text)
        if processor.unk_id() not in ids and processor.decode(ids) != text:
            raise TokenizerError(f"tokenizer does not round-trip {text!r}")
