"""Hotwords from a request: ``hotwords`` is strict (a 400 names what is wrong), OpenAI's ``prompt`` is a hint
(what the model cannot use is left out and counted)."""

from __future__ import annotations

import logging

from korasr.serve.errors import ClientError

log = logging.getLogger(__name__)


def parse_hotwords(recognizer, text: str | None, field: str, max_phrases: int):  # type: ignore[no-untyped-def]
    """Hotwords from a form field: one phrase per line (``phrase<TAB>boost``), bounded before anything is encoded;
    a phrase the model cannot spell, or hotwords on a greedy server, are a 400 naming them."""
    from korasr.runtime.beam import HotwordError

    if not text or not text.strip():
        return None
    if recognizer is not None and recognizer.beam is None:
        raise ClientError(400, f"{field}: this server decodes greedily; hotwords need beam search (serve an "
                          "export with a bundled LM, or korasr serve --decoder beam)")  # fmt: skip
    if len(text) > max_phrases * 101:
        raise ClientError(400, f"{field}: {len(text)} characters (at most {max_phrases * 101})")
    lines = text.split("\n")
    if sum(1 for line in lines if line.strip() and not line.strip().startswith("#")) > max_phrases:
        raise ClientError(400, f"{field}: more than {max_phrases} phrases")
    try:
        return recognizer.hotwords(lines, field)
    except HotwordError as e:
        raise ClientError(400, str(e)) from None


def prompt_hotwords(recognizer, text: str | None, max_phrases: int, metrics):  # type: ignore[no-untyped-def]
    """OpenAI's ``prompt`` is a hint, never a reason for a 400: its phrases (commas or lines) become hotwords with
    what the model cannot use left out (:func:`prompt_words`), counted by reason and logged. Ignored by a greedy
    server."""
    from korasr.runtime.beam import HotwordError

    if not text or not text.strip() or recognizer is None or recognizer.beam is None:
        return None
    limit = max_phrases * 101
    found = prompt_words(text[:limit], recognizer.piece_variants, max_phrases)
    phrases = found.pop("phrases")
    if len(text) > limit:
        found["too_long"] = 1
    for reason, n in found.items():
        metrics.prompt_dropped.labels(reason).inc(n)
    if found:
        log.info("prompt: left out %s", ", ".join(f"{n} × {r}" for r, n in sorted(found.items())))
    try:
        return recognizer.hotwords(phrases, "prompt") if phrases else None
    except HotwordError as e:  # not expected after the filtering above; still a hint, not a 400
        metrics.prompt_dropped.labels("unspellable").inc()
        log.info("prompt: left out: %s", e)
        return None


def prompt_words(text: str, spell, max_phrases: int) -> dict:  # type: ignore[no-untyped-def]
    """The usable phrases of an OpenAI ``prompt`` (``"phrases"``) and the counts of what was left out, by reason.
    ``spell(word)`` gives the word's piece sequences (0: a piece the tokenizer lacks)."""
    import unicodedata

    out: dict = {"phrases": []}

    def drop(reason: str) -> None:
        out[reason] = out.get(reason, 0) + 1

    for raw in text.replace(",", "\n").split("\n"):
        kept = []
        for word in unicodedata.normalize("NFC", raw).split():
            bare = "".join(c for c in word if unicodedata.category(c)[0] not in "PSC")
            if bare != word:
                drop("punctuation")
            if not bare:
                continue
            if any(c.isdigit() for c in bare):
                drop("digits")
            elif any(c.isascii() and c.isalpha() for c in bare):
                drop("latin")
            elif len(bare) > 100 or not (variants := spell(bare)) or any(0 in v for v in variants):
                drop("unspellable")
            else:
                kept.append(bare)
        phrase = " ".join(kept)[:100].strip()
        if phrase:
            if len(out["phrases"]) < max_phrases:
                out["phrases"].append(phrase)
            else:
                drop("too_many")
    return out
