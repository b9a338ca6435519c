"""Job workers: the processes that run the jobs other processes admitted.

With external workers (`EXTERNAL_WORKERS`), a bot process records a job, prepares its pictures and queues it
without a lease; `fillbot worker` processes claim queued jobs from the database (`Storage.claim_next_queued`:
one atomic step that keeps each provider account's limit across all processes and serves servers and members
fairly) and run them as a single bot would: submit, poll, download, finish, deliver. A worker holds at most
`max_jobs` jobs, so the others get theirs; jobs a dead worker left are taken over by `recovery.Keeper`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot.lifecycle.recovery import SinkFactory
from bot.lifecycle.rounds import Rounds
from bot.lifecycle.runner import Runner
from bot.lifecycle.store import JobStore
from bot.storage import Front

log = logging.getLogger(__name__)


class Dispatcher(Rounds):
    name = "job-dispatcher"

    def __init__(
        self,
        store: JobStore,
        runner: Runner,
        front: Front,
        sink_for: SinkFactory,
        *,
        capacity: Mapping[str, int],
        max_jobs: int,
        interval: float = 1.0,  # a fallback: claims normally follow a wake-up (a job queued or ended)
    ) -> None:
        super().__init__(interval)
        self.store = store
        self.runner = runner
        self.front = front
        self.sink_for = sink_for
        self.capacity = dict(capacity)
        self.max_jobs = max_jobs

    async def round(self) -> None:
        await self.dispatch()

    async def dispatch(self) -> int:
        """Claim and start queued jobs while this worker has room and a provider has a slot; how many."""
        taken = 0
        while len(self.runner.live) < self.max_jobs:
            claimed = await self.store.claim_next(self.front, self.capacity)
            if claimed is None:
                break
            try:
                sink = await self.sink_for(claimed)
            except Exception:
                log.exception("no front end for job %s; handing it back", claimed.id)
                await self.store.release([claimed.id])
                break
            log.info("claimed job %s (%s)", claimed.id, claimed.provider)
            self.runner.start(claimed, sink)
            taken += 1
        return taken
