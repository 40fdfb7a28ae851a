"""The decoding worker both the request batcher and the stream hub are: one thread that alone touches the model,
fed from the event loop by a task; ``start`` and ``stop`` on the loop, batch sizes kept and reported."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from korasr.serve.logs import detached


class Worker:
    thread_name = "korasr-worker"

    def __init__(self, on_batch: Callable[[int], None] | None = None):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        self.task: asyncio.Task | None = None
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # the most recent batches (tests, benches)
        self.on_batch = on_batch

    def start(self) -> None:  # a reload starts it inside its request: the task outlives it, without its fields
        self.task = asyncio.get_running_loop().create_task(self._run(), context=detached())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` on the worker's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    def count_batch(self, size: int) -> None:
        self.batch_sizes.append(size)
        if self.on_batch:
            self.on_batch(size)

    async def _run(self) -> None:
        raise NotImplementedError
