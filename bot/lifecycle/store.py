"""The lifecycle's view of the database: one owner id per process, leases, and writes that ride out brief faults.

Every write names this process as the job's owner (`Storage` changes nothing for a job another process has
taken over and raises `NotOwner`). A write that fails (a lock held by another process, a full disk) is retried
for a few seconds; after that `StoreUnavailable` tells the runner to end the job without the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from bot.db import StorageError
from bot.lifecycle.states import State
from bot.storage import Front, JobRecord, NotOwner, OutputMeta, SentPictures, Storage

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database kept failing for a few seconds; the job cannot be kept on record now."""


def new_owner_id() -> str:
    """Unique per process start, readable in the database: host, pid and a random part."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobStore:
    def __init__(
        self,
        storage: Storage,
        *,
        owner: str | None = None,
        lease: float = 30.0,
        attempts: int = 5,
        first_delay: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.owner = owner or new_owner_id()
        self.lease = lease
        self.attempts = attempts
        self.first_delay = first_delay
        self.clock = clock
        self.held: set[str] = set()  # jobs this process owns: being prepared, running or being delivered

    def lease_until(self) -> float:
        return self.clock() + self.lease

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self.attempts):
            try:
                return await op()
            except StorageError as exc:
                if attempt == self.attempts - 1:
                    log.error("database: %s failed %d times, giving up: %s", what, self.attempts, exc)
                    raise StoreUnavailable(what) from exc
                delay = self.first_delay * 2**attempt
                log.warning("database: %s failed (%s); retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def record(self, record: JobRecord) -> JobRecord:
        """Record an admitted job as `preparing`, owned by this process."""
        owned = dataclasses.replace(record, status=State.PREPARING.value, owner=self.owner,
                                    lease_until=self.lease_until())
        stored = await self._retry("record job", lambda: self.storage.create_job(owned))
        self.held.add(stored.id)
        return stored

    async def discard(self, job_id: str) -> None:
        await self._retry("discard job", lambda: self.storage.discard_job(job_id))
        self.held.discard(job_id)

    async def queue(
        self, job_id: str, original: bytes, mask: bytes | None, notices: Sequence[str], *,
        sent: tuple[bytes, bytes | None] | None = None, hand_off: bool = False,
    ) -> None:
        if hand_off:
            self.held.discard(job_id)  # before the write: a keeper round meanwhile must not think it was taken
        try:
            await self._retry("store inputs", lambda: self.storage.queue_job(
                job_id, self.owner, original, mask, notices, sent=sent, hand_off=hand_off))
        except BaseException:
            if hand_off:
                self.held.add(job_id)
            raise

    async def move(self, job_id: str, state: State, *, handle: str | None = None, error: str | None = None) -> None:
        await self._retry(
            f"move to {state}", lambda: self.storage.move_job(job_id, self.owner, state, handle=handle, error=error)
        )

    async def store_outputs(self, job_id: str, files: Sequence[tuple[bytes, bool]]) -> None:
        await self._retry("store outputs", lambda: self.storage.store_outputs(job_id, self.owner, files))

    async def load_outputs(self, job_id: str) -> list[tuple[bytes, bool]]:
        return await self._retry("load outputs", lambda: self.storage.load_outputs(job_id))

    async def load_sent(self, job_id: str) -> SentPictures | None:
        return await self._retry("load sent pictures", lambda: self.storage.load_sent(job_id))

    async def load_inputs(self, job_id: str) -> tuple[bytes, bytes | None] | None:
        return await self._retry("load inputs", lambda: self.storage.load_inputs(job_id))

    async def delivered(self, job_id: str, outputs: Sequence[OutputMeta], note: str | None) -> None:
        await self._retry(
            "mark delivered", lambda: self.storage.mark_delivered(job_id, self.owner, outputs=outputs, error=note)
        )

    async def cancel_requested(self, job_id: str) -> bool:
        return await self._retry("read cancel request", lambda: self.storage.cancel_requested(job_id))

    async def claimable(self, front: Front, *, queued: bool = True) -> list[JobRecord]:
        return await self.storage.claimable_jobs(front, queued=queued)

    async def claim_next(self, front: Front, capacity: Mapping[str, int]) -> JobRecord | None:
        claimed = await self.storage.claim_next_queued(front, self.owner, self.lease_until(), capacity)
        if claimed is not None:
            self.held.add(claimed.id)
        return claimed

    async def claim(self, job_id: str) -> JobRecord | None:
        claimed = await self.storage.claim_job(job_id, self.owner, self.lease_until())
        if claimed is not None:
            self.held.add(job_id)
        return claimed

    async def renew(self) -> set[str]:
        """Extend the leases of every job held here; returns the ids another process has taken meanwhile."""
        mine = sorted(self.held)
        kept = await self.storage.renew_leases(self.owner, mine, self.lease_until())
        lost = (set(mine) - kept) & self.held  # one let go meanwhile (delivered, handed off) was not taken
        self.held -= lost
        return lost

    async def release(self, job_ids: Sequence[str]) -> None:
        """Let another process (or this one's next keeper round) take these jobs at once."""
        await self.storage.release_jobs(self.owner, job_ids)
        self.held -= set(job_ids)


__all__ = ["JobStore", "NotOwner", "StoreUnavailable", "new_owner_id"]
