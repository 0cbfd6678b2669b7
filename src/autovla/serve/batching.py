"""Dynamic batching: requests that arrive close together are planned in one call.

The oldest waiting request opens a batch; the batch closes when `max_batch` requests with the
same key have arrived or when the oldest has waited `max_wait_s`, whichever is first, and is
run on one worker thread (the model runs one batch at a time; the event loop stays free to
accept, decode and answer meanwhile). Requests with different keys (mode, sampling options:
the planner takes one set per call) are batched separately, oldest first. A request whose
caller gave up (timeout) is dropped before its batch runs. `stop()` plans everything already
admitted, then returns: a graceful shutdown finishes in-flight requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from autovla.serve.errors import ServiceError


@dataclass
class BatchInfo:
    size: int  # requests in the batch
    queued_s: float  # this request's wait before its batch started
    run_s: float  # wall time of the batch


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)


RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class Batcher:
    """Collects submitted payloads into batches and runs `run(key, payloads)` on a worker."""

    def __init__(
        self,
        run: RunBatch,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run = run
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self.on_batch = on_batch
        self._pending: list[_Item] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._executor: ThreadPoolExecutor | None = None

    @property
    def waiting(self) -> int:
        """Requests queued for a batch that has not started."""
        return len(self._pending)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autovla-plan")
        self._task = asyncio.create_task(self._loop(), name="autovla-batcher")

    async def stop(self) -> None:
        """Plan everything already submitted, then stop the worker."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, key: Hashable, payload: Any, timeout_s: float) -> tuple[Any, BatchInfo]:
        """Queue one payload; its result and batch info, or ServiceError 504 after timeout_s."""
        if self._closing or self._task is None or self._wake is None:
            raise ServiceError(503, None, "the service is shutting down", "shutting_down")
        item = _Item(key, payload, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._wake.set()
        try:
            return await asyncio.wait_for(item.future, timeout=max(timeout_s, 0.0))
        except TimeoutError:
            if item in self._pending:  # never started: free its memory now
                self._pending.remove(item)
            raise ServiceError(
                504, None, f"no answer within the request timeout ({timeout_s:.3g} s)", "timeout"
            ) from None

    # --- worker --------------------------------------------------------------------------
    def _same_key(self, key: Hashable) -> list[_Item]:
        return [it for it in self._pending if it.key == key and not it.future.done()]

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._pending = [it for it in self._pending if not it.future.done()]
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._pending[0]
            deadline = first.arrived + self.max_wait_s
            while not self._closing and len(self._same_key(first.key)) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._same_key(first.key)[: self.max_batch]
            if not batch:
                continue
            for it in batch:
                self._pending.remove(it)
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_isolated, first.key, [it.payload for it in batch]
                )
            except BaseException as e:  # pragma: no cover - _run_isolated catches per item
                results = [e] * len(batch)
            run_s = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(len(batch), run_s)
            for it, res in zip(batch, results, strict=True):
                if it.future.done():  # the caller timed out meanwhile
                    continue
                if isinstance(res, BaseException):
                    it.future.set_exception(res)
                else:
                    info = BatchInfo(len(batch), started - it.arrived, run_s)
                    it.future.set_result((res, info))

    def _run_isolated(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        """Run a batch; if it fails, run its requests one by one so one bad request fails
        alone. Exceptions are returned in place of results."""
        try:
            out = list(self.run(key, payloads))
            if len(out) != len(payloads):
                raise RuntimeError(f"batch of {len(payloads)} gave {len(out)} results")
            return out
        except Exception as e:
            if len(payloads) == 1:
                return [e]
        results: list[Any] = []
        for p in payloads:
            try:
                results.append(self.run(key, [p])[0])
            except Exception as e:
                results.append(e)
        return results
