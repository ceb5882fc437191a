"""Micro-batching: concurrent queries of one modality share one encoder forward pass.

    batcher = MicroBatcher(process, cpu_limiter, max_size=32, wait_s=0.002)
    result, waited_s = await batcher.submit(payload)      # in a request handler

A query that arrives waits at most `wait_s` for others to join it (a batch leaves at once when `max_size` queries are
waiting); the batch then waits for a CPU slot (the service's DSCMR_CPU_WORKERS limiter), and every query that arrived
meanwhile joins it, up to `max_size`. So under load batches grow by themselves while the slots are busy, and a lone
query pays at most `wait_s`. `process` runs in a worker thread over the batch's payloads and returns one result per
payload, in order: a value, or an exception instance that only that query's request raises (one undecodable image
fails its own request, not the batch). An exception raised by `process` itself fails every query of the batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

import anyio

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[P]):
    payload: P
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[P, R]):
    """Collects concurrent submissions into batches processed by `process` in a worker thread (see the module doc)."""

    def __init__(
        self,
        process: Callable[[Sequence[P]], Sequence[R | BaseException]],
        cpu: anyio.CapacityLimiter,
        max_size: int,
        wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_size < 1 or wait_s < 0:
            raise ValueError(f"max_size must be >= 1 and wait_s >= 0, got {max_size} and {wait_s}")
        self.process = process
        self.cpu = cpu
        self.max_size = max_size
        self.wait_s = wait_s
        self.on_batch = on_batch or (lambda size: None)
        self._waiting: deque[_Waiting[P]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, payload: P) -> tuple[R, float]:
        """(this payload's result, seconds from submission until its batch started); raises the payload's exception."""
        loop = asyncio.get_running_loop()
        entry = _Waiting(payload, loop.create_future())
        self._waiting.append(entry)
        if len(self._waiting) >= self.max_size:
            self._dispatch()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_s, self._dispatch)
        return await entry.future  # a cancelled request cancels its future: the batch then skips it

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = asyncio.get_running_loop().create_task(self._run())
        self._tasks.add(task)  # a reference until it finishes (the event loop keeps only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        async with self.cpu:  # a CPU slot first: whatever arrives while it is busy joins this batch
            batch: list[_Waiting[P]] = []
            while self._waiting and len(batch) < self.max_size:
                entry = self._waiting.popleft()
                if not entry.future.done():
                    batch.append(entry)
            if self._waiting and self._timer is None:
                self._dispatch()  # more than a batch was waiting: the rest goes next, without another wait
            if not batch:
                return
            if self._timer is not None and not self._waiting:
                self._timer.cancel()  # the queries its timer was for are in this batch
                self._timer = None
            started = time.perf_counter()
            self.on_batch(len(batch))
            try:
                results = await anyio.to_thread.run_sync(self.process, [entry.payload for entry in batch])
            except Exception as exc:  # noqa: BLE001 -- handed to every request of the batch, which raise it
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                return
        if len(results) != len(batch):
            error = RuntimeError(f"a batch of {len(batch)} queries gave {len(results)} results")
            results = [error] * len(batch)
        for entry, result in zip(batch, results):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result((result, started - entry.submitted))

    def pending(self) -> int:
        """Queries waiting for a batch (for tests and diagnostics)."""
        return len(self._waiting)


def group_by(keys: Sequence[Any]) -> dict[int, list[int]]:
    """{id(key): positions} in first-seen order: the queries of a batch that share one object (an encoder)."""
    groups: dict[int, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(id(key), []).append(position)
    return groups


__all__ = ["MicroBatcher", "group_by"]
