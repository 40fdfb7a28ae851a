"""What recognition returns, shared by the whole-file and the streaming runtime: words with times, results,
text from piece ids, and utterance segments (SRT / WebVTT) from word times."""

from __future__ import annotations

from dataclasses import dataclass, field

from korasr.text.codec import from_model_text

WORD_BOUNDARY = "▁"


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float


@dataclass
class Result:
    text: str
    words: list[Word] | None = field(default=None)

    def as_dict(self) -> dict:
        out: dict = {"text": self.text}
        if self.words is not None:
            out["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in self.words]
        return out


def tokens_text(pieces: list[str], ids: list[int], unit: str) -> str:
    """NFC text of decoded piece ids: pieces joined, word boundaries to spaces, composed from the model's unit."""
    return from_model_text("".join(pieces[i] for i in ids).replace(WORD_BOUNDARY, " "), unit)


def token_words(tokens: list[tuple[int, int]], pieces: list[str], unit: str, frame_shift: float,
                offset: float = 0.0) -> list[Word]:  # fmt: skip
    """Words with times from ``(piece id, frame)`` tokens: a word starts at a piece with the boundary mark and
    spans its pieces' frames (start of the first, end of the last), ``offset`` seconds added."""
    words: list[Word] = []
    current: list[tuple[int, int]] = []

    def flush() -> None:
        text = from_model_text("".join(pieces[t] for t, _ in current).replace(WORD_BOUNDARY, ""), unit)
        if text:
            start = offset + current[0][1] * frame_shift
            words.append(Word(text, round(start, 3), round(offset + (current[-1][1] + 1) * frame_shift, 3)))

    for token, frame in tokens:
        if pieces[token].startswith(WORD_BOUNDARY) and current:
            flush()
            current = []
        current.append((token, frame))
    if current:
        flush()
    return words


def utterances(words: list[Word], silence: float = 0.8, max_seconds: float = 20.0) -> list[dict]:
    """Utterance segments of a whole-file result, by the streaming endpoint rules on its word times: a pause of
    ``silence`` seconds or more between words ends a segment, and none runs past ``max_seconds``."""
    segments: list[list[Word]] = []
    for word in words:
        current = segments[-1] if segments else None
        if current and word.start - current[-1].end < silence and word.end - current[0].start <= max_seconds:
            current.append(word)
        else:
            segments.append([word])
    return [{"id": i, "start": s[0].start, "end": s[-1].end, "text": " ".join(w.text for w in s)}
            for i, s in enumerate(segments)]  # fmt: skip


def subtitles(segments: list[dict], kind: str) -> str:
    """SubRip (``srt``) or WebVTT (``vtt``) text of utterance segments."""

    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        h, rest = divmod(ms, 3_600_000)
        m, rest = divmod(rest, 60_000)
        s, ms = divmod(rest, 1000)
        return f"{h:02d}:{m:02d}:{s:02d}{',' if kind == 'srt' else '.'}{ms:03d}"

    blocks = [f"{stamp(seg['start'])} --> {stamp(seg['end'])}\n{seg['text']}\n" for seg in segments]
    if kind == "srt":
        return "\n".join(f"{i + 1}\n{block}" for i, block in enumerate(blocks))
    return "WEBVTT\n\n" + "\n".join(blocks)
