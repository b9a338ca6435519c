"""How a job survives a restart, and how two processes never run the same job.

Each process has an owner id; a job it runs carries that id and a lease in the database, renewed every third of
the lease (`JOB_LEASE_SECONDS`). When a process dies (killed, crashed, its machine lost) it stops renewing, and
once the lease has run out any process serving the same front end claims the job — atomically, so only one
does — and carries on from the last recorded state. A clean shutdown hands its leases back at once.

What a crash at each step leaves, and what the next owner does (states in `states.py`):

| crashed while…                         | recorded state | next owner                                                |
|----------------------------------------|----------------|-----------------------------------------------------------|
| preparing the pictures                 | preparing      | ends it: nothing was sent, nothing charged; run it again  |
| waiting in the queue                   | queued         | prepares the stored pictures again and submits: never sent |
| the create request was in flight       | submitting     | ends it: it may exist and bill, so it is not sent again    |
| the provider had it (any time after)   | starting/running | polls the stored handle and carries on                  |
| downloading the outputs                | starting/running | polls again and downloads again (nothing re-created)    |
| finishing the pictures / the final edit | succeeded     | finishes the stored outputs again and shows them once     |
| showing a failure                      | an outcome     | shows it again                                            |

"Shown" is recorded (`delivered_at`) only after the front end confirmed it, so the last two rows may repeat an
edit of the same reply, never a second job. The branches themselves are `Runner._advance`, one per state (the
same code runs a fresh job), with the messages `MSG_RESTART_PREPARING` and `MSG_RESTART_SUBMITTING`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.lifecycle.rounds import Rounds
from bot.lifecycle.runner import Runner
from bot.lifecycle.sink import JobSink
from bot.lifecycle.store import JobStore
from bot.storage import Front, JobRecord

log = logging.getLogger(__name__)

SinkFactory = Callable[[JobRecord], Awaitable[JobSink]]


class Keeper(Rounds):
    """Renews this process's leases and (with a `sink_for`) takes over jobs whose owner stopped renewing theirs."""

    name = "job-keeper"

    def __init__(
        self, store: JobStore, runner: Runner, front: Front, sink_for: SinkFactory | None, *, queued: bool = True
    ) -> None:
        super().__init__(max(0.05, min(10.0, store.lease / 3)))
        self.store = store
        self.runner = runner
        self.front = front
        self.sink_for = sink_for
        self.queued = queued  # False in a job worker: queued jobs are claimed through its Dispatcher

    async def round(self) -> None:
        await self.renew()
        if self.sink_for is not None:
            await self.take_over()

    async def renew(self) -> None:
        for job_id in await self.store.renew():
            log.warning("job %s was taken over by another process", job_id)
            self.runner.drop(job_id)

    async def take_over(self) -> int:
        """Claim and resume the jobs nobody holds; returns how many were taken."""
        assert self.sink_for is not None
        taken = 0
        for record in await self.store.claimable(self.front, queued=self.queued):
            if record.id in self.store.held:
                continue  # ours (being prepared or delivered): its lease is renewed with the others
            claimed = await self.store.claim(record.id)
            if claimed is None:
                continue  # another process was quicker
            log.info("resuming job %s (%s at %s)", claimed.id, claimed.status, claimed.provider)
            try:
                sink = await self.sink_for(claimed)
            except Exception:
                log.exception("no front end for job %s; leaving it for later", claimed.id)
                continue
            self.runner.start(claimed, sink)
            taken += 1
        return taken
