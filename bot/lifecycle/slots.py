"""Provider slots: a FIFO of jobs waiting for one of `limit` places at a provider account."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any


class SlotQueue:
    """A FIFO of jobs waiting for one of `limit` provider slots, reporting each waiter's position."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: collections.deque[tuple[str, asyncio.Future[None], Callable[[int], None]]] = (
            collections.deque()
        )

    def __len__(self) -> int:
        return len(self._waiters)

    async def acquire(self, job_id: str, on_position: Callable[[int], None]) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((job_id, future, on_position))
        on_position(len(self._waiters))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed to us just as we were cancelled
            else:
                self._remove(job_id)
            raise

    def release(self) -> None:
        self.active -= 1
        while self._waiters:
            _, future, _ = self._waiters.popleft()
            if not future.done():
                self.active += 1
                future.set_result(None)
                break
        self._announce()

    def _remove(self, job_id: str) -> None:
        self._waiters = collections.deque(w for w in self._waiters if w[0] != job_id)
        self._announce()

    def _announce(self) -> None:
        for index, (_, _, on_position) in enumerate(self._waiters, start=1):
            on_position(index)

    async def acquire_unless(self, job_id: str, on_position: Callable[[int], None], cancel: asyncio.Event) -> bool:
        """Wait for a slot or for `cancel`, whichever comes first; True if the slot was won (release it)."""
        acquired = asyncio.ensure_future(self.acquire(job_id, on_position))
        waiter: asyncio.Future[Any] = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait({acquired, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            acquired.cancel()  # our own task is being cancelled: give up the place (or the slot just won)
            raise
        finally:
            waiter.cancel()
        if acquired.done() and not acquired.cancelled() and acquired.exception() is None:
            if not cancel.is_set():
                return True
            self.release()
            return False
        acquired.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquired
        return False
