"""Provider slots: jobs waiting for one of `limit` places at a provider account, served fairly.

A free slot goes to the waiting job whose server has the fewest jobs at this provider right now, then whose
member has the fewest, then the oldest: one busy server (or one member) cannot make everyone else wait behind
its whole backlog. DMs count as a server of their own per member.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Tenant = tuple[int | None, int]  # (server id, or None in DMs; member id)


@dataclass
class _Waiter:
    seq: int
    job_id: str
    tenant: Tenant
    future: asyncio.Future[None]
    on_position: Callable[[int], None]


class SlotQueue:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._holders: dict[str, Tenant] = {}
        self._by_server: Counter[tuple[int | None, int | None]] = Counter()
        self._by_member: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._waiters)

    @staticmethod
    def _server(tenant: Tenant) -> tuple[int | None, int | None]:
        guild, user = tenant
        return (guild, None) if guild is not None else (None, user)

    def _order(self) -> list[_Waiter]:
        return sorted(self._waiters, key=lambda w: (self._by_server[self._server(w.tenant)],
                                                    self._by_member[w.tenant[1]], w.seq))

    def _take(self, job_id: str, tenant: Tenant) -> None:
        self.active += 1
        self._holders[job_id] = tenant
        self._by_server[self._server(tenant)] += 1
        self._by_member[tenant[1]] += 1

    async def acquire(self, job_id: str, tenant: Tenant, on_position: Callable[[int], None]) -> None:
        if self.active < self.limit and not self._waiters:
            self._take(job_id, tenant)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(next(self._seq), job_id, tenant, future, on_position))
        self._announce()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(job_id)  # the slot was handed to us just as we were cancelled
            else:
                self._waiters = [w for w in self._waiters if w.job_id != job_id]
                self._announce()
            raise

    def release(self, job_id: str) -> None:
        tenant = self._holders.pop(job_id, None)
        if tenant is None:
            return
        self.active -= 1
        self._by_server[self._server(tenant)] -= 1
        self._by_member[tenant[1]] -= 1
        while self._waiters and self.active < self.limit:
            chosen = self._order()[0]
            self._waiters.remove(chosen)
            if not chosen.future.done():
                self._take(chosen.job_id, chosen.tenant)
                chosen.future.set_result(None)
        self._announce()

    def _announce(self) -> None:
        for index, waiter in enumerate(self._order(), start=1):
            waiter.on_position(index)

    async def acquire_unless(
        self, job_id: str, tenant: Tenant, on_position: Callable[[int], None], cancel: asyncio.Event
    ) -> bool:
        """Wait for a slot or for `cancel`, whichever comes first; True if the slot was won (release it)."""
        acquired = asyncio.ensure_future(self.acquire(job_id, tenant, on_position))
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
            self.release(job_id)
            return False
        acquired.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquired
        return False
