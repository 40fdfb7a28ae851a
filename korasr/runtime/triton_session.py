"""The CTC graph run by a Triton server instead of onnxruntime in this process: `korasr serve --triton` (gateway mode).

:class:`TritonSession` has the one method of an onnxruntime session a :class:`korasr.runtime.Recognizer` calls,
``run(None, {"audio", "audio_length"})``, and answers it with Triton's ``korasr_ctc`` model (``korasr export``'s
repository, either backend) over gRPC: the log-probabilities come back and everything after them (greedy or beam
search with the LM, hotwords, word times, confidence, long audio in chunks) stays in the gateway, as it is without
Triton. A batch larger than the model's ``max_batch_size`` goes in several requests.

:meth:`TritonSession.run_async` is the same call on Triton's asyncio gRPC client: the service (gateway mode) awaits
it, so a replica keeps up to ``max_in_flight`` batches in flight to Triton without a thread for each, and Triton's
dynamic batcher and instances get the concurrency they need.

Every call is bounded: at most ``max_in_flight`` requests to Triton at once on each client (a call waits for a slot
only until its deadline), ``timeout_s`` for the whole call. A Triton that does not answer (restarting, unreachable) is retried with
backoff until the deadline; then :class:`UpstreamUnavailable` (the service's 503); a deadline passed is
:class:`UpstreamTimeout` (504); an error Triton returns is :class:`UpstreamUnavailable` naming it.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np


class UpstreamError(RuntimeError):
    """Triton could not answer: ``status`` is what the service answers (503 or 504), the message says why."""

    status = 503


class UpstreamUnavailable(UpstreamError):
    status = 503


class UpstreamTimeout(UpstreamError):
    status = 504


# gRPC statuses after which the same request may succeed on a later try: the server is (re)starting or overloaded
RETRIED = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")


class TritonSession:
    def __init__(self, url: str, model: str = "korasr_ctc", *, timeout_s: float = 30.0, max_in_flight: int = 8):
        try:
            import tritonclient.grpc as grpc
        except ImportError:
            raise ImportError(
                "--triton needs Triton's gRPC client: pip install 'korasr[gateway]' (the service image: "
                "build with --build-arg EXTRAS=gateway)"
            ) from None
        if not 0 < timeout_s <= 3600 or not 1 <= max_in_flight <= 1024:
            raise ValueError(f"timeout_s in (0, 3600] and max_in_flight 1-1024, got {timeout_s}, {max_in_flight}")
        self.url, self.model, self.timeout_s, self.max_in_flight = url, model, timeout_s, max_in_flight
        # a restarted server is found within a second: gRPC's reconnect backoff would otherwise grow to 2 minutes
        self.channel_args = [
            ("grpc.max_send_message_length", grpc.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpc.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]  # fmt: skip
        self.client = grpc.InferenceServerClient(url, channel_args=self.channel_args)
        self.slots = threading.BoundedSemaphore(max_in_flight)  # run()'s bound; run_async has its own, as large
        self._aio: tuple | None = None  # (event loop, asyncio client, its slots): a channel belongs to its loop
        self._max_batch: int | None = None
        self._ready = (0.0, False)  # (checked at, answer): /health asks often, Triton is asked once a second

    def __repr__(self) -> str:
        return f"TritonSession({self.url!r}, {self.model!r})"

    def ready(self) -> bool:
        """Triton answers and has the model loaded (asked at most once a second)."""
        checked, answer = self._ready
        if time.monotonic() - checked < 1.0:
            return answer
        try:
            answer = bool(self.client.is_model_ready(self.model, client_timeout=2.0))
        except Exception:  # any failure to answer is "not ready"
            answer = False
        self._ready = (time.monotonic(), answer)
        return answer

    def max_batch(self, deadline: float) -> int:
        if self._max_batch is None:
            config = self._call(lambda left: self.client.get_model_config(self.model, client_timeout=left), deadline)
            self._max_batch = max(1, int(config.config.max_batch_size))
        return self._max_batch

    def run(self, outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
        """``[logprobs [B, T, V], logprobs_length [B]]`` for ``feeds`` ``audio`` ``[B, N]`` and ``audio_length`` ``[B]``
        (``outputs`` is ignored: the two outputs, as an onnxruntime session given None)."""
        deadline = time.monotonic() + self.timeout_s
        if not self.slots.acquire(timeout=self.timeout_s):
            raise UpstreamTimeout(f"Triton at {self.url}: {self.max_in_flight} requests already in flight for "
                                  f"{self.timeout_s:g} s")  # fmt: skip
        try:
            audio, lengths = feeds["audio"], np.asarray(feeds["audio_length"], dtype=np.int64).reshape(-1)
            step = self.max_batch(deadline)
            parts = [self._infer(audio[i : i + step], lengths[i : i + step], deadline)
                     for i in range(0, len(audio), step)]  # fmt: skip
        finally:
            self.slots.release()
        return _joined(parts)

    async def run_async(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """:meth:`run` awaited on Triton's asyncio client (the event loop's own channel): the same bound on requests
        in flight (a slot is awaited until the deadline), deadline, retries and errors."""
        deadline = time.monotonic() + self.timeout_s
        client, slots = self._aio_client()
        try:
            await asyncio.wait_for(slots.acquire(), self.timeout_s)
        except TimeoutError:
            raise UpstreamTimeout(
                f"Triton at {self.url}: {self.max_in_flight} requests already in flight for {self.timeout_s:g} s"
            ) from None
        try:
            audio, lengths = feeds["audio"], np.asarray(feeds["audio_length"], dtype=np.int64).reshape(-1)
            if self._max_batch is None:
                config = await self._call_async(lambda left: client.get_model_config(self.model, client_timeout=left),
                                                deadline)  # fmt: skip
                self._max_batch = max(1, int(config.config.max_batch_size))
            step = self._max_batch
            requests = [self._request(audio[i : i + step], lengths[i : i + step]) for i in range(0, len(audio), step)]
            tasks = [asyncio.ensure_future(self._call_async(lambda left, inputs=inputs, wanted=wanted: client.infer(
                self.model, inputs, outputs=wanted, client_timeout=left), deadline)) for inputs, wanted in requests]  # fmt: skip
            try:
                parts = await asyncio.gather(*tasks)
            except BaseException:  # one part failed: the others stop too (the slot is released with them)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            slots.release()
        return _joined([(r.as_numpy("logprobs"), r.as_numpy("logprobs_length").reshape(-1)) for r in parts])

    def _aio_client(self):  # type: ignore[no-untyped-def]
        import tritonclient.grpc.aio as aio

        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:  # (another loop's channel dies with that loop)
            client = aio.InferenceServerClient(self.url, channel_args=self.channel_args)
            self._aio = (loop, client, asyncio.Semaphore(self.max_in_flight))
        return self._aio[1], self._aio[2]

    async def close_async(self) -> None:
        """Close the asyncio channel (on the loop that opened it)."""
        if self._aio is not None and self._aio[0] is asyncio.get_running_loop():
            client, self._aio = self._aio[1], None
            await client.close()

    @staticmethod
    def _request(audio: np.ndarray, lengths: np.ndarray) -> tuple[list, list]:  # type: ignore[type-arg]
        """Triton's inputs and the outputs asked for, for one request."""
        import tritonclient.grpc as grpc

        inputs = [grpc.InferInput("audio", list(audio.shape), "FP32"),
                  grpc.InferInput("audio_length", [len(lengths), 1], "INT64")]  # fmt: skip
        inputs[0].set_data_from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        inputs[1].set_data_from_numpy(lengths.reshape(-1, 1))
        return inputs, [grpc.InferRequestedOutput("logprobs"), grpc.InferRequestedOutput("logprobs_length")]

    def _infer(self, audio: np.ndarray, lengths: np.ndarray, deadline: float) -> tuple[np.ndarray, np.ndarray]:
        inputs, wanted = self._request(audio, lengths)
        result = self._call(lambda left: self.client.infer(self.model, inputs, outputs=wanted, client_timeout=left),
                            deadline)  # fmt: skip
        return result.as_numpy("logprobs"), result.as_numpy("logprobs_length").reshape(-1)

    def _call(self, call, deadline: float):  # type: ignore[no-untyped-def]
        """``call(seconds left)`` until it answers, retrying what a restarting server answers, within ``deadline``."""
        from tritonclient.utils import InferenceServerException

        pause = 0.05
        while True:
            left = self._left(deadline)
            try:
                return call(left)
            except InferenceServerException as e:
                self._raise_unless_retried(e, deadline, pause)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    async def _call_async(self, call, deadline: float):  # type: ignore[no-untyped-def]
        """:meth:`_call` with ``call(seconds left)`` awaited and the pauses on the event loop."""
        from tritonclient.utils import InferenceServerException

        pause = 0.05
        while True:
            left = self._left(deadline)
            try:
                return await call(left)
            except InferenceServerException as e:
                self._raise_unless_retried(e, deadline, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UpstreamTimeout(f"Triton at {self.url} did not answer within {self.timeout_s:g} s")
        return left

    def _raise_unless_retried(self, e, deadline: float, pause: float) -> None:  # type: ignore[no-untyped-def]
        """Raise the service's error for Triton's ``e``, unless a try after ``pause`` may succeed in time."""
        status = str(e.status() or "")
        if "DEADLINE_EXCEEDED" in status:
            raise UpstreamTimeout(f"Triton at {self.url} did not answer within {self.timeout_s:g} s") from None
        if not any(s in status for s in RETRIED):
            raise UpstreamUnavailable(f"Triton at {self.url} refused: {e.message()}") from None
        if deadline - time.monotonic() <= pause:
            raise UpstreamUnavailable(f"Triton at {self.url} is unavailable ({e.message()})") from None


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """One batch's ``[logprobs, lengths]`` from the answers to its requests (padded to the longest)."""
    frames = max(p[0].shape[1] for p in parts)
    logprobs = np.concatenate([np.pad(lp, ((0, 0), (0, frames - lp.shape[1]), (0, 0))) for lp, _ in parts])
    return [logprobs, np.concatenate([n for _, n in parts])]
