"""Micro-batching with bounded memory: requests wait in a queue (bounded by the admission gate); one worker
decodes up to ``max_batch`` of them at a time. Long audio is cut into chunks and chunks are batched by length
under a padded-seconds budget (``Recognizer.transcribe_arrays``), so neither a long request nor a mix of lengths
can multiply the model's memory. A failing batch is retried request by request: a failure fails only its own.

In gateway mode (``korasr serve --triton``: the graph runs in Triton) batches do not wait for each other: up to
``--triton-max-in-flight`` are in flight at once, each awaiting its log-probs on Triton's asyncio gRPC client
(:meth:`korasr.runtime.Recognizer.transcribe_arrays_async`) while the worker thread only chunks and decodes, so Triton's
dynamic batcher and its instances see the replica's whole load."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import numpy as np

from korasr.runtime import Recognizer, Result
from korasr.runtime.triton_session import UpstreamError, UpstreamUnavailable
from korasr.serve.worker import Worker


class Batcher(Worker):
    thread_name = "korasr-decode"

    def __init__(self, recognizer: Recognizer, *, max_batch: int, max_wait_s: float, chunk_seconds: float,
                 batch_seconds: float, on_batch: Callable[[int], None] | None = None):  # fmt: skip
        super().__init__(on_batch)
        self.recognizer, self.max_batch, self.max_wait_s = recognizer, max_batch, max_wait_s
        self.chunk_seconds, self.batch_seconds = chunk_seconds, batch_seconds
        self.queue: asyncio.Queue = asyncio.Queue()
        self.arriving = 0  # requests admitted but not yet queued
        upstream = getattr(recognizer, "upstream", None)
        self.in_flight = upstream.max_in_flight if hasattr(upstream, "run_async") else 1  # batches at once
        self.running: set[asyncio.Task] = set()
        self.most_in_flight = 0  # the most batches that were in flight at once (tests, benches)

    @contextlib.contextmanager
    def arrival(self):  # type: ignore[no-untyped-def]
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def submit(self, audio: np.ndarray, hotwords=None) -> Result:  # type: ignore[no-untyped-def]
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((audio, hotwords, future))
        return await future

    def _options(self, hotwords: list) -> dict:
        return {"batch_size": self.max_batch, "timestamps": True, "chunk_seconds": self.chunk_seconds,
                "batch_seconds": self.batch_seconds, "hotwords_per_wave": hotwords if any(hotwords) else None}  # fmt: skip

    def _decode(self, waves: list[np.ndarray], hotwords: list) -> list[Result]:
        return self.recognizer.transcribe_arrays(waves, **self._options(hotwords))

    async def _transcribe(self, waves: list[np.ndarray], hotwords: list) -> list[Result]:
        if self.in_flight == 1:
            return await self.in_thread(self._decode, waves, hotwords)
        return await self.recognizer.transcribe_arrays_async(waves, run_in=self.in_thread, **self._options(hotwords))

    async def stop(self) -> None:
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)  # each answers its requests as it ends
        await super().stop()
        upstream = getattr(self.recognizer, "upstream", None)
        if hasattr(upstream, "close_async"):
            await upstream.close_async()  # the asyncio channel, on the loop that opened it

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while len(self.running) >= self.in_flight:  # gateway mode: a batch in flight must come back first, so
                await asyncio.wait(self.running, return_when=asyncio.FIRST_COMPLETED)  # the queue fills meanwhile
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            # wait for more only while other requests are on their way, so a lone request is not delayed
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 or (self.queue.empty() and self.arriving == 0):
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            self.count_batch(len(batch))
            if self.in_flight == 1:
                await self._finish(batch)
                continue
            task = loop.create_task(self._finish(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
            self.most_in_flight = max(self.most_in_flight, len(self.running))

    async def _finish(self, batch: list) -> None:  # type: ignore[type-arg]
        """Decode one batch and answer its requests (every one of them, even when the service stops meanwhile)."""
        try:
            await self._answer(batch)
        finally:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(UpstreamUnavailable("the service is stopping"))

    async def _answer(self, batch: list) -> None:  # type: ignore[type-arg]
        waves = [audio for audio, _, _ in batch]
        hotwords = [words for _, words, _ in batch]
        outcomes: list[Result | BaseException]
        try:
            outcomes = list(await self._transcribe(waves, hotwords))
        except UpstreamError as e:  # Triton did not answer (gateway mode): one by one would not either
            outcomes = [e] * len(batch)
        except Exception:
            outcomes = []
            for wave, words in zip(waves, hotwords, strict=True):  # the one that failed; the others get text
                try:
                    outcomes.append((await self._transcribe([wave], [words]))[0])
                except Exception as e:
                    outcomes.append(e)
        for (_, _, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
