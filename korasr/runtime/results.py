"""What recognition returns, shared by the whole-file and the streaming runtime: words with times, results,
text from piece ids, and utterance segments (SRT / WebVTT) from word times."""

from __future__ import annotations

from dataclasses import dataclass, field

from korasr.runtime.confidence import PathConfidence
from korasr.text.codec import from_model_text

WORD_BOUNDARY = "▁"
CONFIDENCE_DIGITS = 4  # as outputs print confidence


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    confidence: float | None = None  # its tokens' confidence aggregated (korasr.runtime.confidence)

    def as_dict(self) -> dict:
        out = {"word": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, CONFIDENCE_DIGITS)
        return out


@dataclass
class Segment:
    """One utterance: text, its bounds and words with times, in seconds of the recording or stream, and its
    confidence (its non-blank frames' aggregated) when the decoder gave one."""

    text: str
    start: float
    end: float
    words: list[Word] = field(default_factory=list)
    confidence: float | None = None

    def as_dict(self) -> dict:
        out = {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3),
               "words": [w.as_dict() for w in self.words]}  # fmt: skip
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, CONFIDENCE_DIGITS)
        return out


@dataclass
class Result:
    text: str
    words: list[Word] | None = field(default=None)
    segments: list[Segment] | None = field(default=None)  # with timestamps: utterances (token_segments)
    confidence: float | None = None  # the utterance's (korasr.runtime.confidence); None: no frames
    confidence_frames: int = 0  # how many frames it aggregates (joining chunks weighs by them)

    def as_dict(self) -> dict:
        out: dict = {"text": self.text}
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, CONFIDENCE_DIGITS)
        if self.words is not None:
            out["words"] = [w.as_dict() for w in self.words]
        return out


def tokens_text(pieces: list[str], ids: list[int], unit: str) -> str:
    """NFC text of decoded piece ids: pieces joined, word boundaries to spaces, composed from the model's unit."""
    return from_model_text("".join(pieces[i] for i in ids).replace(WORD_BOUNDARY, " "), unit)


def token_words(tokens: list[tuple[int, int]], pieces: list[str], unit: str, frame_shift: float,
                offset: float = 0.0, confidence: PathConfidence | None = None) -> list[Word]:  # fmt: skip
    """Words with times from ``(piece id, frame)`` tokens: a word starts at a piece with the boundary mark and
    spans its pieces' frames (start of the first, end of the last), ``offset`` seconds added. With ``confidence``
    (of these tokens), each word's aggregates its tokens' (NeMo's rule for SentencePiece words); a boundary piece
    alone is no word and its confidence counts for none."""
    words: list[Word] = []
    first = 0  # index of the current word's first token

    def flush(stop: int) -> None:
        current = tokens[first:stop]
        text = from_model_text("".join(pieces[t] for t, _ in current).replace(WORD_BOUNDARY, ""), unit)
        if text:
            start = offset + current[0][1] * frame_shift
            score = confidence.word(first, stop) if confidence is not None else None
            words.append(Word(text, round(start, 3), round(offset + (current[-1][1] + 1) * frame_shift, 3), score))

    for i, (token, _) in enumerate(tokens):
        if pieces[token].startswith(WORD_BOUNDARY) and i > first:
            flush(i)
            first = i
    if tokens:
        flush(len(tokens))
    return words


def token_segments(tokens: list[tuple[int, int]], pieces: list[str], unit: str, frame_shift: float,
                   offset: float = 0.0, silence: float = 0.8, max_seconds: float = 20.0,
                   confidence: PathConfidence | None = None) -> list[Segment]:  # fmt: skip
    """Utterances of a decoded sequence by the streaming endpoint rule: a run of blank frames of ``silence``
    seconds or more between two pieces ends one, and none runs past ``max_seconds`` (times from ``offset``). With
    ``confidence`` (of these tokens), a segment's aggregates its tokens' frames, its words' their tokens'."""
    bounds: list[list[int]] = []  # [first, stop) token indices of each group
    for i, token in enumerate(tokens):
        last = bounds[-1] if bounds else None
        if (last and (token[1] - tokens[last[1] - 1][1] - 1) * frame_shift < silence
                and (token[1] + 1 - tokens[last[0]][1]) * frame_shift <= max_seconds):  # fmt: skip
            last[1] = i + 1
        else:
            bounds.append([i, i + 1])
    segments = []
    for first, stop in bounds:
        group = tokens[first:stop]
        text = " ".join(tokens_text(pieces, [t for t, _ in group], unit).split())
        if text:  # a word boundary alone is no utterance
            start, end = offset + group[0][1] * frame_shift, offset + (group[-1][1] + 1) * frame_shift
            part = confidence.part(first, stop) if confidence is not None else None
            words = token_words(group, pieces, unit, frame_shift, offset, part)
            segments.append(Segment(text, round(start, 3), round(end, 3), words,
                                    part.utterance if part is not None else None))  # fmt: skip
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
