"""Streaming recognition without torch or NeMo: an export's ``streaming/`` graphs, chunk by chunk, with caches.

A :class:`Stream` takes audio of any rate in pieces of any size (:meth:`Stream.accept`), turns it into log-mel
frames as it arrives (``frontend.onnx``; the pre-emphasis sample and the last ``n_fft - hop`` samples are all it
keeps), and holds the encoder's caches. :meth:`StreamingModel.step` advances every stream that has a chunk
ready in one batched call of ``encoder.onnx``, so one process serves many live streams; a stream's memory is its
caches plus less than one chunk of audio, however long it runs.

Greedy CTC runs across chunk boundaries. Endpointing (:class:`Endpoint`, sherpa-onnx's three rules) cuts an
endless stream into utterances: each ends in a final :class:`Segment` (text, words with times, start, end), and
the partial text in between is what the current utterance has so far. Finals carry confidence as offline results
do (:mod:`korasr.runtime.confidence`, NeMo's measures): each token's from its frames, its words' from their tokens',
the segment's from its tokens' frames; a stream keeps only the current utterance's frame confidences.

``decoder="greedy-hangul"`` (the default; a jamo model's, greedy's own on other vocabularies) decodes each final as offline
``greedy-hangul`` decodes a file (:mod:`korasr.runtime.hangul`): where greedy's utterance spells a broken syllable,
the final is the best path over the utterance's log-probs that spells whole ones (the stream keeps the current
utterance's log-probs for that: a few hundred bytes a frame, at most ``HANGUL_MAX_SECONDS`` of them; a longer
utterance, under no endpoint or a long ``max_utterance``, keeps greedy's final, as the search would stall the batch).
Partials and the endpoint's decisions stay greedy's, so a final may correct its last partial. After a cut by
``max_utterance`` the search starts the next utterance afresh, where greedy carries the label held across the cut.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from korasr import SAMPLE_RATE
from korasr.runtime.confidence import ConfidenceOptions, PathConfidence, frame_confidence, path_confidence
from korasr.runtime.ctc import collapse
from korasr.runtime.onnx import read_tokens, session
from korasr.runtime.results import Segment, token_words, tokens_text

FOLDER = "streaming"


@dataclass(frozen=True)
class Endpoint:
    """When an utterance ends (sherpa-onnx's rules; silence = frames whose best CTC label is the blank):
    ``silence_after_speech`` seconds of it after something was decoded, ``silence_alone`` seconds of it with
    nothing decoded (the stream resets, no final), or ``max_utterance`` seconds in all."""

    silence_after_speech: float = 0.8
    silence_alone: float = 2.4
    max_utterance: float = 20.0

    def __post_init__(self) -> None:
        for name in ("silence_after_speech", "silence_alone", "max_utterance"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"endpoint {name} must be in (0, 3600] seconds, got {getattr(self, name)}")


@dataclass
class Event:
    """What a step changed in a stream: ``partial`` (the current utterance's text) or ``final`` (a segment)."""

    type: str
    text: str
    start: float
    end: float
    segment: Segment | None = None

    def as_dict(self) -> dict:
        out = {"type": self.type, "text": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}
        if self.segment is not None:
            segment = self.segment.as_dict()
            out["words"] = segment["words"]
            if "confidence" in segment:
                out["confidence"] = segment["confidence"]
        return out


HANGUL_MAX_SECONDS = 30.0  # an utterance longer than this (no endpoint, a long max_utterance) keeps greedy's final


class StreamingModel:
    """The streaming graphs of an export folder (``korasr export`` of a ``--streaming`` model)."""

    def __init__(self, export_dir: str | os.PathLike[str], *, threads: int | None = None, providers=None,  # type: ignore[no-untyped-def]
                 folder: str = FOLDER, confidence: ConfidenceOptions | None = None, decoder: str | None = None):  # fmt: skip
        """``decoder``: how finals decode, ``greedy`` or ``greedy-hangul`` (default: greedy-hangul, which is greedy on
        a vocabulary without jamo)."""
        from korasr.runtime.hangul import HangulPath, has_jamo

        decoder = decoder or "greedy-hangul"
        if decoder not in ("greedy", "greedy-hangul"):
            raise ValueError(f"a stream decodes with greedy or greedy-hangul, not {decoder!r}")
        self.confidence = confidence or ConfidenceOptions()
        self.dir = Path(export_dir) / folder
        meta = self.dir / "streaming.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{Path(export_dir)}: no streaming graphs ({meta} missing): export a model "
                                    "trained with --streaming (make train STREAMING=1)")  # fmt: skip
        self.cfg = json.loads(meta.read_text(encoding="utf-8"))
        self.unit = self.cfg["unit"]
        self.pieces = read_tokens(self.dir / "tokens.txt", int(self.cfg["vocab_size"]))
        self.blank = len(self.pieces) - 1
        self.decoder = decoder
        vocabulary = self.pieces[: self.blank]
        self.hangul = HangulPath(vocabulary) if decoder == "greedy-hangul" and has_jamo(vocabulary) else None
        self.hangul_max_frames = round(HANGUL_MAX_SECONDS / float(self.cfg["frame_shift_s"]))
        # one thread: a few frames per call, and a second thread pool spinning after each call would take the
        # cores from the encoder's (measured: 6 ms per chunk instead of 1.7 on 2 cores)
        self.frontend = session(self.dir / "frontend.onnx", 1, providers)
        self.encoder = session(self.dir / "encoder.onnx", threads, providers)
        self.frame_shift = float(self.cfg["frame_shift_s"])
        self.chunk_seconds = float(self.cfg["chunk_seconds"])
        self.lookahead_ms = int(self.cfg["lookahead_ms"])

    def stream(self, sample_rate: int = SAMPLE_RATE, endpoint: Endpoint | None = Endpoint(), *,
               keep_segments: bool = True, record_features: bool = False) -> Stream:  # fmt: skip
        """A new stream of audio at ``sample_rate``; ``endpoint=None`` never cuts (one utterance)."""
        return Stream(self, sample_rate, endpoint, keep_segments=keep_segments, record_features=record_features)

    def step(self, streams: list[Stream]) -> list[Stream]:
        """One encoder call over every stream with a chunk ready (at most ``len(streams)``); returns them."""
        ready = [s for s in streams if s.ready]
        if not ready:
            return []
        cfg = self.cfg
        window, shift, pre = cfg["window_size"], cfg["chunk_shift"], cfg["pre_encode_cache"]
        signal = np.zeros((len(ready), cfg["n_mels"], window), np.float32)
        length = np.zeros(len(ready), np.int64)
        takes = []
        for i, s in enumerate(ready):
            take = min(s._new, shift)
            signal[i, :, : pre + take] = s._features[:, : pre + take]
            length[i] = pre + take
            takes.append(take)
        feeds = {
            "audio_signal": signal,
            "length": length,
            "cache_last_channel": np.concatenate([s._channel for s in ready]),
            "cache_last_time": np.concatenate([s._time for s in ready]),
            "cache_last_channel_len": np.concatenate([s._channel_len for s in ready]),
        }
        logprobs, lengths, channel, time_cache, channel_len = self.encoder.run(None, feeds)
        for i, (s, take) in enumerate(zip(ready, takes, strict=True)):
            s._channel, s._time, s._channel_len = channel[i : i + 1], time_cache[i : i + 1], channel_len[i : i + 1]
            s._features = s._features[:, take:]
            s._new -= take
            try:
                s._decode(logprobs[i, : int(lengths[i])])
            except Exception as e:  # this stream fails alone (its state is past this chunk; it steps no more)
                s.error = e
        return ready

    def run(self, streams: list[Stream]) -> None:
        """Step until no stream has a chunk ready."""
        while self.step(streams):
            pass

    def transcribe(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE, endpoint: Endpoint | None = None,
                   piece_seconds: float | None = None) -> list[Segment]:  # fmt: skip
        """A whole recording through a stream (fed in ``piece_seconds`` pieces, default all at once)."""
        stream = self.stream(sample_rate, endpoint)
        size = len(audio) if not piece_seconds else max(1, int(piece_seconds * sample_rate))
        for start in range(0, len(audio), size):
            stream.accept(audio[start : start + size])
            self.run([stream])
        stream.finish()
        self.run([stream])
        return stream.segments


def resampler_to_16k(sample_rate: int) -> soxr.ResampleStream | None:
    """A streaming resampler from ``sample_rate`` to 16 kHz (None at 16 kHz), after checking the rate."""
    if not 8000 <= int(sample_rate) <= 192000:
        raise ValueError(f"sample rate must be 8000-192000 Hz, got {sample_rate}")
    if int(sample_rate) == SAMPLE_RATE:
        return None
    return soxr.ResampleStream(int(sample_rate), SAMPLE_RATE, 1, dtype="float32", quality="HQ")


def mono_float(audio: np.ndarray) -> np.ndarray:
    """A stream's audio as float32 mono: float (-1..1) or int16 samples, ``[N]`` or ``[N, channels]``."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.ndim != 1:
        raise ValueError(f"audio must be [samples] or [samples, channels], got shape {audio.shape}")
    return audio


class Stream:
    """One live audio stream: see :class:`StreamingModel` for how it is advanced."""

    def __init__(self, model: StreamingModel, sample_rate: int, endpoint: Endpoint | None, *,
                 keep_segments: bool = True, record_features: bool = False):  # fmt: skip
        self._resampler = resampler_to_16k(sample_rate)  # checks the rate
        cfg = model.cfg
        self.model, self.endpoint, self.sample_rate = model, endpoint, int(sample_rate)
        self.keep_segments = keep_segments
        self._n_fft, self._hop, self._preemph = cfg["n_fft"], cfg["hop_length"], cfg["preemph"]
        self._previous = np.float32(0.0)  # the pre-emphasis filter's memory
        self._samples = np.zeros(self._n_fft // 2, np.float32)  # NeMo's centre padding, then unframed samples
        self._received = 0  # 16 kHz samples so far
        self._frames_out = 0  # feature frames made so far
        self._features = np.zeros((cfg["n_mels"], cfg["pre_encode_cache"]), np.float32)  # pre-encode cache + new
        self._new = 0
        self._record = [] if record_features else None
        layers, left, d_model = cfg["cache_last_channel"]
        t_layers, t_model, kernel = cfg["cache_last_time"]
        self._channel = np.zeros((1, layers, left, d_model), np.float32)
        self._time = np.zeros((1, t_layers, t_model, kernel), np.float32)
        self._channel_len = np.zeros(1, np.int64)
        self.finished = False
        self._frame = 0  # encoder frames decoded
        self._previous_id = model.blank
        self._tokens: list[tuple[int, int]] = []  # the current utterance's (piece id, frame)
        self._token_frames: list[list[float]] = []  # the frame confidences behind each of those tokens
        self._all_ids: list[int] = []
        self._utterance_start = 0
        self._trailing_blanks = 0
        self._rows: list[np.ndarray] | None = [] if model.hangul is not None else None  # the utterance's log-probs
        self._rows_full = False  # the utterance outgrew HANGUL_MAX_SECONDS: its final stays greedy's
        self._partial = ""
        self.segments: list[Segment] = []
        self.events: list[Event] = []
        self.error: Exception | None = None  # decoding failed: the stream is not stepped again

    # --- audio in ----------------------------------------------------------------------------------------------

    def accept(self, audio: np.ndarray) -> None:
        """Audio at the stream's rate: float (-1..1) or int16 samples, mono ``[N]`` or ``[N, channels]``."""
        if self.finished:
            raise ValueError("the stream is finished: no more audio")
        audio = mono_float(audio)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio)
        self._add(audio)

    def finish(self) -> None:
        """No more audio: the last frames are made (the model then decodes them on its next steps)."""
        if self.finished:
            return
        if self._resampler is not None:
            self._add(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        self.finished = True
        self._samples = np.concatenate([self._samples, np.zeros(self._n_fft // 2, np.float32)])
        self._frame_samples(limit=self._received // self._hop)
        if self._new == 0:  # nothing left to decode: the last utterance ends now
            self._end_utterance()

    def _add(self, audio: np.ndarray) -> None:
        if not len(audio):
            return
        emphasized = audio.copy()
        if self._preemph:
            emphasized[1:] -= self._preemph * audio[:-1]
            emphasized[0] -= self._preemph * self._previous
        self._previous = audio[-1]
        self._received += len(audio)
        self._samples = np.concatenate([self._samples, emphasized])
        self._frame_samples()

    def _frame_samples(self, limit: int | None = None) -> None:
        count = (len(self._samples) - self._n_fft) // self._hop + 1 if len(self._samples) >= self._n_fft else 0
        if limit is not None:
            count = min(count, limit - self._frames_out)
        if count <= 0:
            return
        used = self._n_fft + (count - 1) * self._hop
        (features,) = self.model.frontend.run(None, {"samples": self._samples[None, :used]})
        self._samples = self._samples[count * self._hop :]
        self._frames_out += count
        self._features = np.concatenate([self._features, features[0]], axis=1)
        self._new += count
        if self._record is not None:
            self._record.append(features[0])

    @property
    def ready(self) -> bool:
        """A whole chunk of new frames is waiting, or the stream is finished and some are."""
        if self.error is not None:
            return False
        return self._new >= self.model.cfg["chunk_shift"] or (self.finished and self._new > 0)

    @property
    def backlog(self) -> float:
        """Chunks of features waiting to be decoded (a stream fed faster than real time holds more than one)."""
        return self._new / self.model.cfg["chunk_shift"]

    @property
    def done(self) -> bool:
        """Finished and every frame decoded (the last final, if any, is in ``events``)."""
        return self.finished and self._new == 0

    @property
    def decoded_seconds(self) -> float:
        """How far into the stream decoding has gone (encoder frames decoded, in seconds)."""
        return self._frame * self.model.frame_shift

    def features_seen(self) -> np.ndarray:
        """Every feature frame made so far ``[n_mels, T]`` (``record_features=True`` only; for the export gate)."""
        if self._record is None:
            raise ValueError("this stream does not record its features (record_features=True)")
        return np.concatenate(self._record, axis=1) if self._record else np.zeros((self.model.cfg["n_mels"], 0))

    # --- text out ----------------------------------------------------------------------------------------------

    def _decode(self, logprobs: np.ndarray) -> None:
        model = self.model
        exclude_blank = model.confidence.exclude_blank
        scores = frame_confidence(logprobs, model.confidence).tolist() if len(logprobs) else []
        rows = self._rows
        if rows is not None:
            logprobs = np.array(logprobs)  # its own copy: a view would keep the whole batch's output alive
        for row, (label, score) in enumerate(zip(logprobs.argmax(axis=-1).tolist(), scores, strict=True)):
            if rows is not None and not self._rows_full:
                rows.append(logprobs[row])
                if len(rows) > model.hangul_max_frames:  # bounded memory, and no long search stalling the batch
                    rows.clear()
                    self._rows_full = True
            if label != model.blank and label != self._previous_id:
                self._tokens.append((label, self._frame))
                self._token_frames.append([score])
                if self.keep_segments:  # a served stream keeps nothing that grows with its length
                    self._all_ids.append(label)
            elif self._tokens and (not exclude_blank or (label != model.blank and label == self._previous_id)):
                # as offline (confidence.path_confidence): a token's repeats; with exclude_blank off, also the
                # blanks after it up to the next token
                self._token_frames[-1].append(score)
            self._trailing_blanks = self._trailing_blanks + 1 if label == model.blank else 0
            self._previous_id = label
            self._frame += 1
            self._check_endpoint()
        partial = self._text(self._tokens)
        if partial != self._partial and self._tokens:
            self._partial = partial
            self.events.append(Event("partial", partial, self._utterance_start * model.frame_shift,
                                     self._frame * model.frame_shift))  # fmt: skip
        if self.done:
            self._end_utterance()

    def _check_endpoint(self) -> None:
        rule = self.endpoint
        if rule is None:
            return
        shift = self.model.frame_shift
        silence = self._trailing_blanks * shift
        if self._tokens and silence >= rule.silence_after_speech:
            self._end_utterance()
        elif not self._tokens and silence >= rule.silence_alone:
            self._utterance_start, self._trailing_blanks = self._frame, 0
            if self._rows is not None:
                self._rows, self._rows_full = [], False
        elif (self._frame - self._utterance_start) * shift >= rule.max_utterance:
            self._end_utterance()

    def _end_utterance(self) -> None:
        model = self.model
        if self._rows is not None:
            malformed = self._tokens and not model.hangul.spells_syllables(t for t, _ in self._tokens)  # type: ignore[union-attr]
            if malformed and not self._rows_full:
                self._whole_syllables(np.stack(self._rows))
            self._rows, self._rows_full = [], False
        text = self._text(self._tokens)
        if text:  # a word boundary alone in silence is no utterance
            shift = model.frame_shift
            scores = self._confidence()
            words = token_words(self._tokens, model.pieces, model.unit, shift, confidence=scores)
            start = self._tokens[0][1] * shift
            end = max(words[-1].end if words else 0.0, (self._tokens[-1][1] + 1) * shift)
            segment = Segment(text, round(start, 3), round(end, 3), words, scores.utterance)
            if self.keep_segments:
                self.segments.append(segment)
            self.events.append(Event("final", text, segment.start, segment.end, segment))
        self._tokens, self._token_frames, self._partial = [], [], ""
        self._utterance_start, self._trailing_blanks = self._frame, 0

    def _whole_syllables(self, logprobs: np.ndarray) -> None:
        """Replace the utterance's tokens (greedy's, malformed) with greedy-hangul's over its log-probs ``logprobs``
        (its frames up to now), each token's frame confidences as :func:`path_confidence` gathers them."""
        model = self.model
        path = model.hangul.search(logprobs)  # type: ignore[union-attr]
        first = self._frame - len(logprobs)
        tokens = [(label, first + frame) for label, frame in collapse(path, model.blank)]
        frames = path_confidence(logprobs, path, model.blank, model.confidence).token_frames
        if self.keep_segments:
            del self._all_ids[len(self._all_ids) - len(self._tokens) :]
            self._all_ids.extend(t for t, _ in tokens)
        self._tokens, self._token_frames = tokens, [f.tolist() for f in frames]

    def _confidence(self) -> PathConfidence:
        """The current utterance's confidence, as :func:`korasr.runtime.confidence.path_confidence` measures a path
        (the utterance's value aggregates its tokens' frames: its non-blank frames by default)."""
        return PathConfidence.of_tokens(self._token_frames, self.model.confidence.aggregation)

    def _text(self, tokens: list[tuple[int, int]]) -> str:
        """NFC text of tokens, spaces collapsed (a word-boundary piece alone changes nothing a reader sees)."""
        return " ".join(tokens_text(self.model.pieces, [t for t, _ in tokens], self.model.unit).split())

    def pop_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    @property
    def partial(self) -> str:
        return self._partial

    def token_ids(self) -> list[int]:
        """Every piece id decoded so far, in order (across utterances; ``keep_segments`` streams only)."""
        return list(self._all_ids)

    def text(self) -> str:
        """The text of every final so far (and the current utterance's), space-joined."""
        parts = [s.text for s in self.segments]
        if self._partial:
            parts.append(self._partial)
        return " ".join(p for p in parts if p)
