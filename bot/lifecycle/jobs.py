"""The lifecycle as front ends use it: record an admitted job, queue it once its pictures are ready, cancel it,
and let this process take over jobs left behind by others (`recovery.Keeper`)."""

from __future__ import annotations

import dataclasses
import logging
from enum import Enum

from bot.config import Settings
from bot.lifecycle.dispatch import Dispatcher
from bot.lifecycle.recovery import Keeper, SinkFactory
from bot.lifecycle.runner import Runner
from bot.lifecycle.sink import JobSink, Progress
from bot.lifecycle.states import State
from bot.lifecycle.store import JobStore
from bot.pipeline import Prepared
from bot.service import FillService
from bot.storage import Front, JobRecord, Storage

log = logging.getLogger(__name__)


class CancelResult(Enum):
    STOPPING = "stopping"  # running here: it stops now
    REQUESTED = "requested"  # running in another process, which will see the request within seconds
    NOT_RUNNING = "not_running"


class Mode(Enum):
    """Where the jobs a process admits are run."""

    LOCAL = "local"  # here: one process does everything (the default)
    FRONT = "front"  # by job workers: this process admits, prepares and queues them
    WORKER = "worker"  # a job worker: runs the queued jobs of every front process


class Lifecycle:
    def __init__(
        self, settings: Settings, storage: Storage, service: FillService, *, owner: str | None = None,
        mode: Mode = Mode.LOCAL,
    ) -> None:
        self.storage = storage
        self.mode = mode
        self.store = JobStore(storage, owner=owner, lease=settings.job_lease)
        self.capacity = {name: cfg.max_concurrency for name, cfg in settings.providers.items()}
        self.runner = Runner(
            self.store,
            service,
            concurrency=self.capacity,
            poll_interval=settings.poll_interval,
            deadline=settings.job_deadline,
        )
        self.worker_max_jobs = settings.worker_max_jobs
        self._keeper: Keeper | None = None
        self._dispatcher: Dispatcher | None = None

    @property
    def owner(self) -> str:
        return self.store.owner

    def serve(self, front: Front, sink_for: SinkFactory | None) -> None:
        """Keep this process's leases; with `sink_for`, also take over `front`'s jobs that nobody runs (after a
        restart too), and in a job worker claim the queued ones. The command line passes None: it only follows
        the jobs it was asked to run; so does a front process, whose jobs the workers run."""
        if self._keeper is not None:
            return
        if self.mode is Mode.FRONT:
            sink_for = None
        worker = self.mode is Mode.WORKER and sink_for is not None
        self._keeper = Keeper(self.store, self.runner, front, sink_for, queued=not worker)
        self._keeper.start()
        if worker:
            assert sink_for is not None
            self._dispatcher = Dispatcher(self.store, self.runner, front, sink_for, capacity=self.capacity,
                                          max_jobs=self.worker_max_jobs)
            self.runner.on_leave.append(self._dispatcher.wake)
            self._dispatcher.start()

    async def record(self, record: JobRecord) -> JobRecord:
        """Record an admitted job before anything else happens to it (call under the admission lock)."""
        return await self.store.record(record)

    async def discard(self, job_id: str) -> None:
        """Forget a recorded job whose pictures were refused: nothing was sent, it counts toward no limit."""
        await self.store.discard(job_id)

    async def queue(self, record: JobRecord, prepared: Prepared, sink: JobSink) -> None:
        """Store the prepared pictures (the job is `queued`: safe to send) and run it in the background, or
        leave it to the job workers."""
        hand_off = self.mode is Mode.FRONT
        job = prepared.job
        await self.store.queue(record.id, prepared.inputs.original, prepared.inputs.mask, prepared.notices,
                               sent=(job.image.data, None if job.mask is None else job.mask.data), hand_off=hand_off)
        queued = dataclasses.replace(record, status=State.QUEUED.value, notices=prepared.notices)
        if hand_off:
            sink.show(Progress(record.id, State.QUEUED, 0.0))
            return
        self.runner.start(queued, sink, job=prepared.job)

    async def resume(self, job_id: str, sink: JobSink) -> bool:
        """Take one job over now (the command line's `resume`); False if another process holds it."""
        claimed = await self.store.claim(job_id)
        if claimed is None:
            return False
        self.runner.start(claimed, sink)
        return True

    async def cancel(self, job_id: str) -> CancelResult:
        if self.runner.cancel(job_id):
            return CancelResult.STOPPING
        if await self.storage.request_cancel(job_id):
            return CancelResult.REQUESTED
        return CancelResult.NOT_RUNNING

    async def wait(self, job_id: str) -> None:
        await self.runner.wait(job_id)

    async def aclose(self) -> None:
        """Stop; hand this process's jobs back at once so the next process need not wait for their leases."""
        if self._dispatcher is not None:
            await self._dispatcher.stop()
        if self._keeper is not None:
            await self._keeper.stop()
        mine = sorted(self.store.held)
        await self.runner.aclose()
        try:
            await self.store.release(mine)
        except Exception:
            log.exception("could not hand back %d jobs; they resume once their leases run out", len(mine))
