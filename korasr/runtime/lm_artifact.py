"""The LM artifact reader: an LM directory (``korasr lm build``) as every decoder reads it.

An LM directory holds ``lm.arpa`` and its KenLM binary ``lm.bin`` over *token ids*, each id written as one character
``chr(id + 100)`` (NeMo's ``DEFAULT_TOKEN_OFFSET``, so NeMo's ``beam_batch`` reads the same ARPA), and ``lm.json``:
the tokenizer it was built for (hash of its pieces), order, text sources with their hashes, n-gram counts, versions,
and the alpha/beta that ``korasr lm tune`` chose on dev.

It lives here, below its users: the runtime's beam search and the service read LM directories with it, and so do
``korasr.lm`` (build, tune), evaluate and export. Torch-free, NeMo-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from korasr.errors import KorasrError
from korasr.fsutil import sha256_file

TOKEN_OFFSET = 100  # nemo.collections.asr.parts.submodules.ngram_lm.constants.DEFAULT_TOKEN_OFFSET
META = "lm.json"
ARPA = "lm.arpa"
BINARY = "lm.bin"
FORMAT = "korasr-token-ngram"


class LMError(KorasrError, ValueError):
    pass


def vocabulary_sha256(processor) -> str:  # type: ignore[no-untyped-def]
    """A SentencePiece model's identity for an LM over its ids: the hash of its pieces in id order. Not of the
    serialized proto, which also records the path it was trained from: the same tokenizer rebuilt elsewhere would
    look foreign."""
    import hashlib

    pieces = "\n".join(processor.id_to_piece(i) for i in range(processor.get_piece_size()))
    return hashlib.sha256(pieces.encode("utf-8")).hexdigest()


def token_symbol(token_id: int) -> str:
    """The LM's symbol for a piece id. Some are Unicode whitespace or line breaks (id 33 is U+0085, id 60 is
    U+00A0): KenLM splits on ASCII whitespace only; never ``str.split()`` or ``splitlines()`` such text."""
    return chr(token_id + TOKEN_OFFSET)


@dataclass(frozen=True)
class LMInfo:
    dir: Path
    meta: dict

    @property
    def binary(self) -> Path:
        return self.dir / BINARY

    @property
    def arpa(self) -> Path:
        return self.dir / ARPA

    @property
    def tokenizer_sha256(self) -> str:
        return self.meta["tokenizer"]["sha256"]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def tuned(self) -> dict | None:
        """``{"alpha": …, "beta": …, "beam": …, …}`` recorded by ``korasr lm tune``, or None."""
        return self.meta.get("tuned")


def read_lm(directory: str | os.PathLike[str]) -> LMInfo:
    """An LM directory's metadata, checked: a clear error naming the file for a missing or corrupt LM."""
    directory = Path(directory)
    meta_path = directory / META
    if not directory.is_dir():
        raise LMError(f"{directory}: no such LM directory (korasr lm build writes one)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LMError(f"{meta_path}: missing: {directory} is not a korasr LM directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LMError(f"{meta_path}: corrupt ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LMError(f"{meta_path}: not a korasr token n-gram LM (format {meta.get('format')!r})")
    info = LMInfo(directory, meta)
    for path in (info.binary, info.arpa):
        if not path.is_file():
            raise LMError(f"{path}: missing from the LM directory")
    if not _binary_matches(info.binary, meta["files"][BINARY]["sha256"]):
        raise LMError(f"{info.binary}: corrupt (its hash differs from the one in {meta_path})")
    return info


_VERIFIED: set[tuple[str, int, int, str]] = set()


def _binary_matches(path: Path, sha256: str) -> bool:
    """Hash the binary once per process while its size and mtime stay (a KsponSpeech LM is hundreds of MB, and
    evaluate, the runtime and the service each read the LM directory)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, sha256)
    if key not in _VERIFIED:
        if sha256_file(path) != sha256:
            return False
        _VERIFIED.add(key)
    return True


def check_tokenizer(info: LMInfo, tokenizer_sha256: str, vocab_size: int, where: str) -> None:
    """Refuse an LM built for another tokenizer: its ids would mean other pieces."""
    if info.tokenizer_sha256 != tokenizer_sha256 or info.vocab_size != vocab_size:
        raise LMError(
            f"{info.dir}: built for another tokenizer ({info.meta['tokenizer'].get('dir')}, sha256 "
            f"{info.tokenizer_sha256[:12]}…, {info.vocab_size} pieces) than {where} (sha256 {tokenizer_sha256[:12]}…, "
            f"{vocab_size} pieces): rebuild it with korasr lm build --tokenizer …"
        )
