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
class Segment:
    """One utterance: text, its bounds and words with times, in seconds of the recording or stream."""

    text: str
    start: float
    end: float
    words: list[Word] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3),
                "words": [{"word": w.text, "start": w.start, "end": w.end} for w in self.words]}  # fmt: skip


@dataclass
class Result:
    text: str
    words: list[Word] | None = field(default=None)
    segments: list[Segment] | None = field(default=None)  # with timestamps: utterances (token_segments)

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


def token_segments(tokens: list[tuple[int, int]], pieces: list[str], unit: str, frame_shift: float,
                   offset: float = 0.0, silence: float = 0.8, max_seconds: float = 20.0) -> list[Segment]:  # fmt: skip
    """Utterances of a decoded sequence by the streaming endpoint rule: a run of blank frames of ``silence``
    seconds or more between two pieces ends one, and none runs past ``max_seconds`` (times from ``offset``)."""
    groups: list[list[tuple[int, int]]] = []
    for token in tokens:
        last = groups[-1] if groups else None
        if (last and (token[1] - last[-1][1] - 1) * frame_shift < silence
                and (token[1] + 1 - last[0][1]) * frame_shift <= max_seconds):  # fmt: skip
            last.append(token)
        else:
            groups.append([token])
    segments = []
    for group in groups:
        text = " ".join(tokens_text(pieces, [t for t, _ in group], unit).split())
        if text:  # a word boundary alone is no utterance
            start, end = offset + group[0][1] * frame_shift, offset + (group[-1][1] + 1) * frame_shift
            words = token_words(group, pieces, unit, frame_shift, offset)
            segments.append(Segment(text, round(start, 3), round(end, 3), words))
    return segments


def subtitles(segments: list[Segment], kind: str) -> str:
    """SubRip (``srt``) or WebVTT (``vtt``) text of utterance segments."""

    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        h, rest = divmod(ms, 3_600_000)
        m, rest = divmod(rest, 60_000)
        s, ms = divmod(rest, 1000)
        return f"{h:02d}:{m:02d}:{s:02d}{',' if kind == 'srt' else '.'}{ms:03d}"

    blocks = [f"{stamp(seg.start)} --> {stamp(seg.end)}\n{seg.text}\n" for seg in segments]
    if kind == "srt":
        return "\n".join(f"{i + 1}\n{block}" for i, block in enumerate(blocks))
    return "WEBVTT\n\n" + "\n".join(blocks)
