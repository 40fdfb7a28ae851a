"""Token n-gram language models over a korasr tokenizer's pieces, for CTC beam search with shallow fusion.

An LM directory (``korasr lm build``) holds ``lm.arpa`` and its KenLM binary ``lm.bin`` over *token ids*, each id
written as one character ``chr(id + 100)`` (NeMo's ``DEFAULT_TOKEN_OFFSET``, so NeMo's ``beam_batch`` reads the same
ARPA), and ``lm.json``: the tokenizer it was built for (hash of ``tokenizer.model``), order, text sources with
their hashes, n-gram counts, versions, and the alpha/beta that ``korasr lm tune`` chose on dev. Lexicon-free, as
NeMo's: Korean eojeols glue particles to stems, so a word-level LM would meet many unseen words.

The reader of LM directories lives below its users, in :mod:`korasr.runtime.lm_artifact` (the runtime and the
service read LMs with it); its names are re-exported here.
"""

from korasr.runtime.lm_artifact import (
    ARPA,
    BINARY,
    FORMAT,
    META,
    TOKEN_OFFSET,
    LMError,
    LMInfo,
    check_tokenizer,
    read_lm,
    token_symbol,
    vocabulary_sha256,
)

__all__ = ["ARPA", "BINARY", "FORMAT", "META", "TOKEN_OFFSET", "LMError", "LMInfo", "check_tokenizer", "read_lm",
           "token_symbol", "vocabulary_sha256"]  # fmt: skip
