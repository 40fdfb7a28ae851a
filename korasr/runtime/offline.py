"""Whole-file inference from an export directory with onnxruntime alone (no torch, no NeMo).

>>> from korasr.runtime import Recognizer
>>> rec = Recognizer("exp/sample/.../export")
>>> rec.transcribe(["a.wav", "b.flac"])            # any sample rate or channel count
[Result(text='...', words=None), ...]

Audio is mixed to mono and resampled to 16 kHz with soxr, batched by length, decoded with greedy CTC
(``greedy-hangul``, greedy's best path restricted to whole syllables, for a jamo model: :mod:`korasr.runtime.hangul`;
what a new Recognizer uses) or with a beam search that fuses a token n-gram LM and hotwords
(:mod:`korasr.runtime.beam`; :meth:`Recognizer.use_decoder`), and composed to NFC syllables with the model's text unit. Audio longer than ``chunk_seconds`` (files and arrays alike)
is decoded in chunks cut at the quietest 20 ms near each boundary, so the model's memory (quadratic in the length
under full attention) is bounded by the chunk, for an hour of audio too; files are also read chunk by chunk.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from korasr.runtime.audio import SAMPLE_RATE, AudioLimits, to_mono_16k
from korasr.runtime.confidence import ConfidenceOptions, join_confidence, path_confidence
from korasr.runtime.ctc import best_path, collapse
from korasr.runtime.onnx import pad_batch, read_tokens, session
from korasr.runtime.results import Result, Segment, Word, token_segments, token_words, tokens_text

CHUNK_SECONDS = 30.0
MIN_CHUNK_SECONDS = 4.0  # the quiet cut searches the last 2 s of a chunk
GRAPHS = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx",
          "int8-dynamic": "model.int8-dynamic.onnx"}  # fmt: skip
DECODERS = ("greedy", "greedy-hangul", "beam")  # greedy-hangul: korasr.runtime.hangul
BUNDLED_LM = "lm"  # the export's LM folder (korasr export --lm)


class DecodeStopped(RuntimeError):
    """Decoding a long file ended early: the caller's ``stop`` event was set."""


def check_chunk_seconds(chunk_seconds: float) -> float:
    """Chunks must be long enough for a quiet cut and finite; ``chunk_seconds`` itself if it is."""
    if not MIN_CHUNK_SECONDS <= chunk_seconds <= 3600:
        raise ValueError(f"chunk_seconds must be between {MIN_CHUNK_SECONDS:g} and 3600 s, got {chunk_seconds}")
    return chunk_seconds


def chunk_bounds(audio: np.ndarray, chunk_seconds: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of at most ``chunk_seconds`` covering ``audio``, each cut at the quietest
    20 ms of its last 2 s."""
    limit = int(check_chunk_seconds(chunk_seconds) * SAMPLE_RATE)
    bounds, start = [], 0
    while len(audio) - start > limit:
        end = start + _quiet_cut(audio[start : start + limit])
        bounds.append((start, end))
        start = end
    bounds.append((start, len(audio)))
    return bounds


def join(results: list[Result], aggregation: str = ConfidenceOptions.aggregation) -> Result:
    """One result from the results of consecutive chunks (word times are already absolute); their utterance
    confidences joined by ``aggregation`` (the decoder's) as if over all their frames."""
    if len(results) == 1:
        return results[0]
    words = None if results[0].words is None else [w for r in results for w in r.words or []]
    segments = None if results[0].segments is None else [s for r in results for s in r.segments or []]
    frames = [r.confidence_frames for r in results]
    confidence = join_confidence([r.confidence for r in results], frames, aggregation)
    return Result(" ".join(r.text for r in results if r.text), words, segments, confidence, sum(frames))


class _Done:
    def __init__(self, results: list[Result]):
        self.results = results


def _advance(steps, logprobs):  # type: ignore[no-untyped-def]
    """Start ``steps`` (``logprobs`` None) or send it a batch's log-probs: its next batch, or :class:`_Done` (a
    StopIteration cannot cross a thread pool's future)."""
    try:
        return next(steps) if logprobs is None else steps.send(logprobs)
    except StopIteration as done:
        return _Done(done.value)


class Recognizer:
    def __init__(
        self,
        export_dir: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers=None,  # type: ignore[no-untyped-def]
        precision: str = "fp32",
        confidence: ConfidenceOptions | None = None,
        graph_session=None,  # type: ignore[no-untyped-def]
    ):
        """``precision``: which graph of the export runs: fp32 (model.onnx), fp16 (model.fp16.onnx) or int8
        (model.int8.onnx, written by ``korasr export --int8-calibration``). ``confidence``: how results' confidence
        is measured (:mod:`korasr.runtime.confidence`; default NeMo's: Tsallis entropy, alpha 0.33, exp, min).
        ``graph_session``: what runs the graph instead of onnxruntime here (its ``run(None, feeds)``; a
        :class:`korasr.runtime.triton_session.TritonSession`: the export folder then gives everything but the
        graph)."""
        self.dir = Path(export_dir)
        meta = self.dir / "model.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{self.dir}: not a korasr export directory (no model.json)")
        self.info = json.loads(meta.read_text(encoding="utf-8"))
        self.unit = self.info["unit"]
        self.blank = int(self.info["blank_id"])
        self.frame_shift = float(self.info["frame_shift_s"])
        self.pieces = read_tokens(self.dir / "tokens.txt", self.blank + 1)
        if precision not in GRAPHS:
            raise ValueError(f"precision must be one of {', '.join(GRAPHS)}, got {precision!r}")
        graph = self.dir / GRAPHS[precision]
        if graph_session is None and not graph.is_file():  # exports older than the fp16 graph lack it too
            hint = " (export with --int8-calibration MANIFEST)" if precision == "int8" else " (re-export)"
            raise FileNotFoundError(f"{graph}: this export has no {precision} graph{hint}")
        self.precision = precision
        self.confidence = confidence or ConfidenceOptions()
        self.session = graph_session if graph_session is not None else session(graph, threads, providers)
        self.upstream = graph_session  # what /health asks whether it is ready (korasr serve --triton)
        self._tokenizer = None
        # utterance segments of results with timestamps: the streaming endpoint rule (korasr serve sets these)
        self.endpoint_silence, self.max_utterance = 0.8, 20.0
        self.beam = None
        self.hangul = None  # the greedy-hangul decoder, else plain greedy when beam is None
        from korasr.runtime.hangul import HangulPath, has_jamo

        if has_jamo(self.pieces[: self.blank]):  # a jamo model decodes with greedy-hangul until told otherwise
            self.hangul = HangulPath(self.pieces[: self.blank])
        self.lm_dir: Path | None = None
        self.global_hotwords: list = []

    # --- decoders ----------------------------------------------------------------------------------------------

    @property
    def bundled_lm(self) -> Path | None:
        lm = self.dir / BUNDLED_LM
        return lm if (lm / "lm.json").is_file() else None

    @property
    def default_decoder(self) -> str:
        """What korasr decodes this export with when no decoder is named: ``beam`` with the bundled LM when it has
        one, else ``greedy-hangul`` for a jamo vocabulary (:func:`korasr.runtime.hangul.default_decoder`), else
        ``greedy``. A new Recognizer decodes with the last two (no LM) until :meth:`use_decoder` says otherwise."""
        from korasr.runtime.hangul import default_decoder

        return "beam" if self.bundled_lm else default_decoder(self.pieces[: self.blank])

    def tokenizer(self):  # type: ignore[no-untyped-def]
        """The export's SentencePiece model (for hotwords)."""
        if self._tokenizer is None:
            import sentencepiece as spm

            self._tokenizer = spm.SentencePieceProcessor(model_file=str(self.dir / "tokenizer.model"))
        return self._tokenizer

    def tokenizer_sha256(self) -> str:
        from korasr.runtime.lm_artifact import vocabulary_sha256

        return vocabulary_sha256(self.tokenizer())

    def use_decoder(self, decoder: str = "greedy", *, lm: str | os.PathLike[str] | None = None, beam_options=None,
                    hotwords=None) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        """Decode with ``greedy``, ``greedy-hangul`` (greedy's best path restricted to whole Hangul syllables:
        :mod:`korasr.runtime.hangul`) or ``beam``. ``beam`` fuses ``lm`` (an LM directory; default: the export's bundled
        LM, none if it has none) with the LM's tuned alpha/beta unless ``beam_options`` says otherwise, and
        ``hotwords`` (from :meth:`hotwords`) in every request. A missing, corrupt or foreign LM is an error."""
        from korasr.runtime.beam import BeamDecoder, BeamOptions
        from korasr.runtime.lm_artifact import check_tokenizer, read_lm

        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if decoder in ("greedy", "greedy-hangul"):
            if lm is not None or hotwords:
                raise ValueError("an LM and hotwords need the beam decoder (--decoder beam)")
            self.beam, self.lm_dir = None, None
            self.hangul = None
            if decoder == "greedy-hangul":
                from korasr.runtime.hangul import HangulPath

                self.hangul = HangulPath(self.pieces[: self.blank])
            return
        lm_dir = Path(lm) if lm is not None else self.bundled_lm
        info = None
        if lm_dir is not None:
            info = read_lm(lm_dir)
            check_tokenizer(info, self.tokenizer_sha256(), self.blank, f"the model in {self.dir}")
        if beam_options is None:
            tuned = (info.tuned if info else None) or {}
            beam_options = BeamOptions(**{k: tuned[k] for k in ("alpha", "beta", "beam") if k in tuned})
        self.hangul = None
        self.beam = BeamDecoder(self.blank, beam_options, info.binary if info else None, hotwords)
        self.lm_dir, self.global_hotwords = lm_dir, list(hotwords or [])

    def _request_beam(self, hotwords):  # type: ignore[no-untyped-def]
        """The beam decoder for one request's extra hotwords (None: the recognizer's own decoder)."""
        if not hotwords:
            return None
        if self.beam is None:
            raise ValueError("hotwords need the beam decoder (--decoder beam)")
        return self.beam.with_hotwords(self.global_hotwords + list(hotwords))

    def hotwords(self, lines: list[str], source: str = "hotwords"):  # type: ignore[no-untyped-def]
        """Parse hotword lines (``phrase[<TAB>boost]``) into the model's pieces; unencodable phrases are errors."""
        from korasr.runtime.beam import hotwords_from_lines

        return hotwords_from_lines(lines, self.piece_variants, source)

    def piece_variants(self, phrase: str, n: int = 4) -> list[list[int]]:
        """Piece sequences that spell ``phrase`` (see :func:`korasr.runtime.beam.piece_variants`)."""
        from korasr.runtime.beam import piece_variants

        return piece_variants(self.tokenizer(), self.unit, phrase, n)

    # --- decoding ----------------------------------------------------------------------------------------------

    def logprobs(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Log-probabilities ``[frames, vocab]`` of 16 kHz mono float32 waveforms, in one batch."""
        audio, lengths = pad_batch(waves)
        out, out_len = self.session.run(None, {"audio": audio, "audio_length": lengths})
        return [out[i, : int(n)] for i, n in enumerate(out_len)]

    async def logprobs_async(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`logprobs` from a session that answers without holding a thread (``run_async``: Triton's asyncio
        gRPC client in gateway mode)."""
        audio, lengths = pad_batch(waves)
        out, out_len = await self.session.run_async({"audio": audio, "audio_length": lengths})
        return [out[i, : int(n)] for i, n in enumerate(out_len)]

    def decode(self, logprobs: np.ndarray, offset: float = 0.0, timestamps: bool = False, beam=None) -> Result:  # type: ignore[no-untyped-def]
        """One utterance's result from its log-probabilities, with ``beam`` (a per-request decoder), the
        recognizer's beam decoder, or greedy CTC."""
        beam = beam or self.beam
        if beam is not None:  # one label per frame
            path = beam.path(logprobs)
        else:
            path = self.hangul.path(logprobs) if self.hangul is not None else best_path(logprobs)
        tokens = collapse(path, self.blank)  # (piece id, frame)
        scores = path_confidence(logprobs, path, self.blank, self.confidence)
        result = Result(tokens_text(self.pieces, [t for t, _ in tokens], self.unit), confidence=scores.utterance,
                        confidence_frames=scores.frames)  # fmt: skip
        if timestamps:
            result.words = token_words(tokens, self.pieces, self.unit, self.frame_shift, offset, scores)
            result.segments = token_segments(tokens, self.pieces, self.unit, self.frame_shift, offset,
                                             self.endpoint_silence, self.max_utterance, scores)  # fmt: skip
        return result

    # --- audio in ----------------------------------------------------------------------------------------------

    def transcribe_arrays(
        self,
        waves: list[np.ndarray],
        sample_rate: int = SAMPLE_RATE,
        *,
        batch_size: int = 16,
        timestamps: bool = False,
        chunk_seconds: float = CHUNK_SECONDS,
        batch_seconds: float | None = None,
        hotwords=None,  # type: ignore[no-untyped-def]
        hotwords_per_wave=None,  # type: ignore[no-untyped-def]
    ) -> list[Result]:
        """Transcripts of waveforms, in order. Waves over ``chunk_seconds`` are decoded in chunks; chunks are
        batched by length, at most ``batch_size`` in a batch and, with ``batch_seconds``, at most that many
        seconds of padded audio, so one batch's memory is bounded whatever the inputs' lengths. ``hotwords`` (from
        :meth:`hotwords`) bias the beam decoder for these waves only; ``hotwords_per_wave`` (one list or None per
        wave) for each wave its own (the service batches requests with different hotwords)."""
        steps = self._array_steps(waves, sample_rate, batch_size=batch_size, timestamps=timestamps,
                                  chunk_seconds=chunk_seconds, batch_seconds=batch_seconds, hotwords=hotwords,
                                  hotwords_per_wave=hotwords_per_wave)  # fmt: skip
        try:
            batch = next(steps)
            while True:
                batch = steps.send(self.logprobs(batch))
        except StopIteration as done:
            return done.value

    async def transcribe_arrays_async(self, waves: list[np.ndarray], *, run_in, **options) -> list[Result]:  # type: ignore[no-untyped-def]
        """:meth:`transcribe_arrays` (the same ``options``) with each batch's log-probabilities awaited from the
        session (:meth:`logprobs_async`) and everything else (chunking, decoding) run by ``run_in(function, *args)``
        (an awaitable: a worker thread), so a service keeps many batches in flight to a remote model."""
        steps = self._array_steps(waves, **options)
        step = await run_in(_advance, steps, None)
        while not isinstance(step, _Done):
            step = await run_in(_advance, steps, await self.logprobs_async(step))
        return step.results

    def _array_steps(self, waves, sample_rate=SAMPLE_RATE, *, batch_size=16, timestamps=False,  # type: ignore[no-untyped-def]
                     chunk_seconds=CHUNK_SECONDS, batch_seconds=None, hotwords=None, hotwords_per_wave=None):  # fmt: skip
        """The work of :meth:`transcribe_arrays` as a generator: it yields each batch's waves, is sent their
        log-probabilities, and returns the results (one plan for a session called in place or awaited)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if batch_seconds is not None and batch_seconds < check_chunk_seconds(chunk_seconds):
            raise ValueError(f"batch_seconds ({batch_seconds}) must be at least chunk_seconds ({chunk_seconds})")
        if hotwords_per_wave is not None and len(hotwords_per_wave) != len(waves):
            raise ValueError(f"hotwords_per_wave has {len(hotwords_per_wave)} entries for {len(waves)} waves")
        shared = self._request_beam(hotwords)
        beams = [self._request_beam(h) or shared for h in hotwords_per_wave] if hotwords_per_wave else None
        mono = [to_mono_16k(w, sample_rate) for w in waves]
        bounds = [chunk_bounds(w, chunk_seconds) for w in mono]
        pieces = sorted(((i, s, e) for i, b in enumerate(bounds) for s, e in b), key=lambda p: p[2] - p[1])
        budget = None if batch_seconds is None else int(batch_seconds * SAMPLE_RATE)
        decoded: dict[tuple[int, int], Result] = {}
        batch: list[tuple[int, int, int]] = []
        for n, piece in enumerate(pieces):
            batch.append(piece)
            following = pieces[n + 1] if n + 1 < len(pieces) else None
            # sorted by length: the next piece is the longest of a batch that takes it, so padding is its length
            full = len(batch) == batch_size or (
                budget is not None
                and following is not None
                and (len(batch) + 1) * (following[2] - following[1]) > budget
            )
            if following is None or full:
                logprobs = yield [mono[i][s:e] for i, s, e in batch]
                for (i, s, _), lp in zip(batch, logprobs, strict=True):
                    decoded[(i, s)] = self.decode(lp, s / SAMPLE_RATE, timestamps, beams[i] if beams else shared)
                batch = []
        return [join([decoded[(i, s)] for s, _ in b], self.confidence.aggregation) for i, b in enumerate(bounds)]

    def transcribe(
        self,
        paths: list[str | os.PathLike[str]],
        *,
        batch_size: int = 16,
        timestamps: bool = False,
        chunk_seconds: float = CHUNK_SECONDS,
        hotwords=None,  # type: ignore[no-untyped-def]
        stop: threading.Event | None = None,
    ) -> list[Result]:
        """Transcripts of audio files (anything libsndfile reads), in order. ``stop``: once set, a long file's
        decoding ends after the chunk in hand (:class:`DecodeStopped`), so a caller that stops waits one chunk."""
        check_chunk_seconds(chunk_seconds)
        self._request_beam(hotwords)  # refuse hotwords without a beam decoder before reading audio
        results: list[Result | None] = [None] * len(paths)
        short: list[int] = []
        for i, path in enumerate(paths):
            try:
                info = sf.info(str(path))
            except (RuntimeError, sf.LibsndfileError) as e:
                raise ValueError(f"{path}: cannot read audio ({e})") from None
            AudioLimits().check_format(str(path), info.samplerate, info.channels)  # a header's 1 Hz is not audio
            if info.duration > chunk_seconds:
                results[i] = self._transcribe_long(path, chunk_seconds, timestamps, hotwords, stop)
            else:
                short.append(i)
        for start in range(0, len(short), batch_size):
            batch = short[start : start + batch_size]
            waves = []
            for i in batch:
                audio, rate = sf.read(str(paths[i]), dtype="float32", always_2d=True)
                waves.append(to_mono_16k(audio, rate))
            for i, result in zip(batch, self.transcribe_arrays(waves, batch_size=batch_size, timestamps=timestamps,
                                                                       hotwords=hotwords),
                                 strict=True):  # fmt: skip
                results[i] = result
        return [r for r in results if r is not None]

    def _transcribe_long(self, path: str | os.PathLike[str], chunk_seconds: float, timestamps: bool,
                         hotwords=None, stop: threading.Event | None = None) -> Result:  # type: ignore[no-untyped-def]  # fmt: skip
        """Read, resample and decode ``chunk_seconds`` at a time; each chunk ends at the quietest 20 ms of its last
        2 s (the rest carries over), so words are rarely cut. Memory: one chunk, whatever the file's length."""
        beam = self._request_beam(hotwords)
        chunks: list[Result] = []  # without words and segments (kept below), for the text and the confidence
        words: list[Word] = []
        segments: list[Segment] = []
        carry = np.zeros(0, dtype=np.float32)
        consumed = 0  # 16 kHz samples decoded so far
        with sf.SoundFile(str(path)) as f:
            stream = soxr.ResampleStream(f.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            block = int(chunk_seconds * f.samplerate)
            while True:
                if stop is not None and stop.is_set():
                    raise DecodeStopped(f"{path}: decoding stopped after {consumed / SAMPLE_RATE:.0f} s")
                raw = f.read(block, dtype="float32", always_2d=True)
                last = len(raw) < block
                pcm = stream.resample_chunk(raw.mean(axis=1), last=last) if len(raw) or last else np.zeros(0)
                audio = np.concatenate([carry, pcm.astype(np.float32)])
                cut = len(audio) if last else _quiet_cut(audio)
                if cut > 0:
                    result = self.decode(self.logprobs([audio[:cut]])[0], consumed / SAMPLE_RATE, timestamps, beam)
                    words += result.words or []
                    segments += result.segments or []
                    chunks.append(Result(result.text, confidence=result.confidence,
                                         confidence_frames=result.confidence_frames))  # fmt: skip
                consumed += cut
                carry = audio[cut:]
                if last:
                    break
        joined = join(chunks, self.confidence.aggregation) if chunks else Result("")
        joined.words, joined.segments = (words, segments) if timestamps else (None, None)
        return joined


def _quiet_cut(audio: np.ndarray, search_seconds: float = 2.0, frame_seconds: float = 0.02) -> int:
    """Sample index of the quietest 20 ms frame in the last ``search_seconds`` of ``audio``."""
    frame = int(frame_seconds * SAMPLE_RATE)
    start = max(0, len(audio) - int(search_seconds * SAMPLE_RATE))
    tail = audio[start:]
    n = len(tail) // frame
    if n == 0:
        return len(audio)
    energy = (tail[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    return start + int(np.argmin(energy)) * frame + frame // 2
