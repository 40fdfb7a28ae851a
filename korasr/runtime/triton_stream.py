"""Live streams decoded by a Triton server: `korasr serve --triton` (gateway mode) with a streaming export.

:class:`TritonStreamingModel` stands where :class:`korasr.runtime.streaming.StreamingModel` stands in the service's
stream hub (``stream``, ``step``, ``chunk_seconds``), and each :class:`RemoteStream` where a local ``Stream`` does. The
audio is resampled to 16 kHz here and cut into the export's chunks; each chunk goes to the repository's
``korasr_stream`` model (``korasr export`` of a ``--streaming`` model: the same streaming runtime under Triton's
sequence batcher, the encoder's caches held there per sequence) with the stream's correlation id, START on its first
chunk and END on its last; the partials and finals Triton answers are the events the WebSocket sends, as they are.
One step sends a chunk of every ready stream at once (gRPC requests in flight together), so Triton's sequence batcher
can batch them.

Failures stay with their stream: a chunk Triton refuses or does not answer within ``timeout_s`` ends that stream with
the reason (the client is told, as for any failed stream); a restarted Triton has lost every sequence's caches, so a
stream is not retried mid-way. Endpointing (when an utterance ends) is the Triton model's (its repository's
parameters), not the gateway's. A client that disconnects leaves its sequence to the batcher's idle timeout
(``korasr export --triton-stream-idle``).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from korasr import SAMPLE_RATE
from korasr.runtime.streaming import FOLDER, Event, mono_float, resampler_to_16k
from korasr.runtime.triton_session import UpstreamError, UpstreamTimeout, UpstreamUnavailable

_MISSING = object()  # no answer within the deadline


class RemoteEvent(Event):
    """An event as Triton's korasr_stream sent it (``as_dict`` gives it back unchanged)."""

    def __init__(self, raw: dict):
        super().__init__(str(raw.get("type", "")), str(raw.get("text", "")), float(raw.get("start", 0.0)),
                         float(raw.get("end", 0.0)))  # fmt: skip
        self.raw = raw
        if self.type == "final" and isinstance(raw.get("confidence"), (int, float)):
            self.segment = _Confidence(float(raw["confidence"]))  # type: ignore[assignment]

    def as_dict(self) -> dict:
        return dict(self.raw)


class _Confidence:
    """What the hub's metrics read of a final's segment: its confidence."""

    def __init__(self, confidence: float):
        self.confidence = confidence


class RemoteStream:
    """One live stream whose decoding runs in Triton (the interface of a local ``Stream`` the hub uses)."""

    def __init__(self, model: TritonStreamingModel, sample_rate: int, correlation_id: int):
        self._resampler = resampler_to_16k(sample_rate)
        self.model, self.sample_rate, self.correlation_id = model, int(sample_rate), correlation_id
        self._audio: list[np.ndarray] = []  # 16 kHz samples not yet sent
        self._waiting = 0
        self._sent = 0  # 16 kHz samples sent and answered
        self.started = False  # the first chunk (START) went
        self.finished = False  # no more audio will come
        self.ended = False  # the END chunk was answered
        self.events: list[Event] = []
        self.error: Exception | None = None

    def accept(self, audio: np.ndarray) -> None:
        if self.finished:
            raise ValueError("the stream is finished: no more audio")
        audio = mono_float(audio)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio)
        self._keep(audio)

    def finish(self) -> None:
        if self.finished:
            return
        if self._resampler is not None:
            self._keep(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))
        self.finished = True

    def _keep(self, audio: np.ndarray) -> None:
        if len(audio):
            self._audio.append(audio)
            self._waiting += len(audio)

    @property
    def ready(self) -> bool:
        """More than a chunk of audio is waiting (a sample at least stays for the END chunk: Triton refuses an empty
        tensor), or the stream is finished and its END has not gone."""
        if self.error is not None or self.ended:
            return False
        return self._waiting > self.model.chunk_samples or self.finished

    @property
    def backlog(self) -> float:
        return self._waiting / self.model.chunk_samples

    @property
    def done(self) -> bool:
        return self.ended

    @property
    def decoded_seconds(self) -> float:
        """The audio Triton has answered for, in seconds."""
        return self._sent / SAMPLE_RATE

    def take_chunk(self) -> tuple[np.ndarray, bool]:
        """The next chunk to send, and whether it is the last (END)."""
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        chunk, rest = audio[: self.model.chunk_samples], audio[self.model.chunk_samples :]
        self._audio, self._waiting = ([rest] if len(rest) else []), len(rest)
        return chunk, self.finished and not len(rest)

    def pop_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class TritonStreamingModel:
    """The export's streaming model, run by Triton's ``model`` (korasr_stream) at ``url`` (gRPC HOST:PORT)."""

    _ids = itertools.count(1)

    def __init__(self, export_dir: str | os.PathLike[str], url: str, model: str = "korasr_stream", *,
                 timeout_s: float = 30.0):  # fmt: skip
        from korasr.runtime.triton_session import TritonSession

        meta = Path(export_dir) / FOLDER / "streaming.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{Path(export_dir)}: no streaming graphs ({meta} missing)")
        self.chunk_seconds = float(json.loads(meta.read_text(encoding="utf-8"))["chunk_seconds"])
        self.chunk_samples = max(1, round(self.chunk_seconds * SAMPLE_RATE))
        self.session = TritonSession(url, model, timeout_s=timeout_s)  # the client, its settings and readiness
        self.url, self.model, self.timeout_s = url, model, timeout_s
        # correlation ids unique across gateway replicas and restarts sharing one Triton: a random 32-bit base
        self.base = int.from_bytes(os.urandom(4), "big") << 24

    def stream(self, sample_rate: int = SAMPLE_RATE, endpoint=None, *, keep_segments: bool = False) -> RemoteStream:  # type: ignore[no-untyped-def]
        """A new stream (``endpoint`` and ``keep_segments`` are the Triton model's own: ignored here)."""
        return RemoteStream(self, sample_rate, self.base + next(self._ids))

    def ready(self) -> bool:
        return self.session.ready()

    def step(self, streams: list[RemoteStream]) -> list[RemoteStream]:
        """Send one chunk of every ready stream, all in flight at once; each stream gets its answer's events, or its
        error (the others go on). Returns the streams stepped."""
        import tritonclient.grpc as grpc

        ready = [s for s in streams if s.ready]
        answers: dict[int, object] = {}
        arrived = threading.Condition()

        def answered(index: int):  # type: ignore[no-untyped-def]
            def callback(result, error) -> None:  # type: ignore[no-untyped-def]
                with arrived:
                    answers[index] = error if error is not None else result
                    arrived.notify_all()

            return callback

        deadline = time.monotonic() + self.timeout_s
        sizes = [0] * len(ready)
        for i, stream in enumerate(ready):
            chunk, last = stream.take_chunk()
            sizes[i] = len(chunk)
            if not len(chunk):  # a stream that ended before any audio: nothing to decode, nothing to release
                stream.ended = True
                answers[i] = None
                continue
            audio = grpc.InferInput("audio", [1, len(chunk)], "FP32")
            audio.set_data_from_numpy(chunk.reshape(1, -1))
            first, stream.started = not stream.started, True
            try:
                self.session.client.async_infer(
                    self.model, [audio], answered(i), outputs=[grpc.InferRequestedOutput("events")],
                    sequence_id=stream.correlation_id, sequence_start=first, sequence_end=last,
                    client_timeout=self.timeout_s,
                )  # fmt: skip
            except Exception as e:  # the request could not even go (a closed channel)
                answers[i] = e
            if last:
                stream.ended = True
        with arrived:
            arrived.wait_for(lambda: len(answers) == len(ready), timeout=max(0.0, deadline - time.monotonic()) + 1)
        for i, stream in enumerate(ready):
            answer = answers.get(i, _MISSING)
            if answer is None:
                continue
            if answer is _MISSING:
                stream.error = UpstreamTimeout(f"Triton at {self.url} did not answer within {self.timeout_s:g} s")
            elif isinstance(answer, Exception):
                stream.error = _upstream_error(self.url, answer, self.timeout_s)
            else:
                stream._sent += sizes[i]
                body = json.loads(answer.as_numpy("events").reshape(-1)[0])  # type: ignore[attr-defined]
                stream.events.extend(RemoteEvent(event) for event in body.get("events", []))
        return ready


def _upstream_error(url: str, error: Exception, timeout_s: float) -> UpstreamError:
    status = str(getattr(error, "status", lambda: "")() or "")
    message = error.message() if hasattr(error, "message") else str(error)  # type: ignore[attr-defined]
    if "DEADLINE_EXCEEDED" in status:
        return UpstreamTimeout(f"Triton at {url} did not answer within {timeout_s:g} s")
    return UpstreamUnavailable(f"Triton at {url}: {message}")
