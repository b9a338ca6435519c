"""The job engine: per-provider FIFO queues, submission, adaptive polling, deadlines, cancellation.

It knows nothing about Discord or pictures: it moves a `ProviderJob` through a provider and publishes typed
`JobUpdate`s that any front end can render, then hands back the downloaded output bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.errors import ProviderError
from bot.lifecycle.states import State
from bot.providers.base import Handle, Provider, ProviderJob, Status

log = logging.getLogger(__name__)

# Poll errors worth waiting out (the GET already retried a few times); anything else ends the job.
_TRANSIENT = frozenset({"unavailable", "rate_limited", "bad_response"})
_MAX_POLL_FAILURES = 5
_BACKOFF = 1.6
_MAX_POLL_DELAY = 5.0


@dataclass(frozen=True)
class JobUpdate:
    """What a front end shows while a job moves."""

    job_id: str
    state: State
    elapsed: float
    position: int | None = None  # place in our queue (1 = next) while QUEUED
    progress: float | None = None  # 0..1, only when the provider reports it
    handle: Handle | None = None  # set once the provider accepted the job
    message: str | None = None


@dataclass(frozen=True)
class OutputFile:
    data: bytes
    flagged: bool = False


@dataclass(frozen=True)
class Outcome:
    """How a job ended. `files` are downloaded at once (provider URLs expire in minutes)."""

    job_id: str
    state: State
    files: tuple[OutputFile, ...] = ()
    dropped: int = 0
    message: str | None = None
    handle: Handle | None = None
    elapsed: float = 0.0
    finished_at: float = 0.0  # monotonic time the provider was seen finished, for latency figures


UpdateCallback = Callable[[JobUpdate], Awaitable[None]]


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


class JobEngine:
    """Runs jobs against providers. One engine per process; `aclose` is the owner's business."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        *,
        concurrency: Mapping[str, int],
        poll_interval: float,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.providers = providers
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.clock = clock
        self._queues = {name: SlotQueue(concurrency.get(name, 4)) for name in providers}
        self._cancel: dict[str, asyncio.Event] = {}

    def queue_length(self, provider: str) -> int:
        return len(self._queues[provider])

    def cancel(self, job_id: str) -> bool:
        """Ask a running or queued job to stop; False if it is not running here."""
        event = self._cancel.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    def is_running(self, job_id: str) -> bool:
        return job_id in self._cancel

    async def run(
        self,
        job_id: str,
        provider_name: str,
        on_update: UpdateCallback,
        *,
        job: ProviderJob | None = None,
        handle: Handle | None = None,
        before_submit: Callable[[], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Queue, submit (or resume polling `handle`), poll until done, download. Never raises for job faults.

        `before_submit` is awaited right before the create request, so callers can record that the job may
        now exist at the provider (after a crash such a job must not be submitted again).
        """
        if (job is None) == (handle is None):
            raise ValueError("give exactly one of job (new) or handle (resume)")
        provider = self.providers[provider_name]
        cancel = self._cancel.setdefault(job_id, asyncio.Event())
        started = self.clock()
        publish = _Publisher(job_id, started, self.clock, on_update)
        try:
            return await self._run(job_id, provider, job, handle, cancel, publish, before_submit)
        finally:
            self._cancel.pop(job_id, None)
            await publish.drain()

    async def _run(
        self,
        job_id: str,
        provider: Provider,
        job: ProviderJob | None,
        handle: Handle | None,
        cancel: asyncio.Event,
        publish: _Publisher,
        before_submit: Callable[[], Awaitable[None]] | None,
    ) -> Outcome:
        queue = self._queues[provider.name]
        acquired = asyncio.ensure_future(
            queue.acquire(job_id, lambda pos: publish.soon(JobUpdate(job_id, State.QUEUED, 0.0, position=pos)))
        )
        if not await _first(acquired, cancel):
            return publish.outcome(State.CANCELED, "Canceled before it started; nothing was sent to the provider.")
        try:
            if handle is None and before_submit is not None:
                await before_submit()
            return await self._submit_and_poll(job_id, provider, job, handle, cancel, publish)
        finally:
            queue.release()

    async def _submit_and_poll(
        self,
        job_id: str,
        provider: Provider,
        job: ProviderJob | None,
        handle: Handle | None,
        cancel: asyncio.Event,
        publish: _Publisher,
    ) -> Outcome:
        deadline = self.clock() + self.deadline
        if handle is None:
            assert job is not None
            # Sync-mode creates (Replicate's `Prefer: wait`) can hold for a minute: say we are past the queue.
            publish.soon(JobUpdate(job_id, State.STARTING, 0.0))
            try:
                handle, status = await provider.submit(job)
            except ProviderError as exc:
                return publish.outcome(_failure_state(exc), exc.message)
        else:
            status = Status(State.STARTING, raw_status="resumed")
        publish.soon(JobUpdate(job_id, status.state, 0.0, progress=status.progress, handle=handle))

        failures = 0
        polls = 0
        while not status.state.terminal:
            if cancel.is_set():
                await self._cancel_at_provider(provider, handle)
                return publish.outcome(State.CANCELED, "Canceled.", handle=handle)
            remaining = deadline - self.clock()
            if remaining <= 0:
                await self._cancel_at_provider(provider, handle)
                return publish.outcome(
                    State.TIMED_OUT,
                    f"The provider did not finish within {_duration(self.deadline)}, so the job was stopped.",
                    handle=handle,
                )
            delay = min(self.poll_interval * _BACKOFF**polls, _MAX_POLL_DELAY, remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel.wait(), timeout=delay)
            if cancel.is_set():
                continue
            polls += 1
            try:
                status = await provider.poll(handle)
                failures = 0
            except ProviderError as exc:
                failures += 1
                if exc.kind not in _TRANSIENT or failures >= _MAX_POLL_FAILURES:
                    return publish.outcome(_failure_state(exc), exc.message, handle=handle)
                log.warning("job %s: poll failed (%s), will retry: %s", job_id, exc.kind, exc.message)
                continue
            if not status.state.terminal:
                publish.soon(
                    JobUpdate(job_id, status.state, 0.0, progress=status.progress, handle=handle)
                )

        finished_at = self.clock()
        if status.state is not State.SUCCEEDED:
            return publish.outcome(status.state, status.message, handle=handle, finished_at=finished_at)
        if not status.outputs:
            message = "The provider returned no images"
            if status.dropped:
                message += ": all of them were withheld by its safety checker."
            state = State.MODERATED if status.dropped else State.FAILED
            return publish.outcome(state, message + ".", handle=handle, finished_at=finished_at)
        try:
            files = await asyncio.gather(*(provider.download(output) for output in status.outputs))
        except ProviderError as exc:
            return publish.outcome(_failure_state(exc), exc.message, handle=handle, finished_at=finished_at)
        return publish.outcome(
            State.SUCCEEDED,
            status.message,
            handle=handle,
            files=tuple(OutputFile(data, o.flagged) for data, o in zip(files, status.outputs, strict=True)),
            dropped=status.dropped,
            finished_at=finished_at,
        )

    async def _cancel_at_provider(self, provider: Provider, handle: Handle) -> None:
        try:
            await provider.cancel(handle)
        except ProviderError as exc:  # best effort: the user asked us to stop, and we have
            log.warning("cancel of %s at %s failed: %s", handle.job_id, provider.name, exc.message)


def _duration(seconds: float) -> str:
    """"10 minutes", "1.5 minutes" or "45 seconds" (not "0.0833333 minutes")."""
    if seconds < 60:
        return f"{seconds:.0f} seconds"
    return f"{round(seconds / 60, 1):g} minutes"


def _failure_state(exc: ProviderError) -> State:
    return {
        "moderated": State.MODERATED,
        "canceled": State.CANCELED,
        "expired": State.EXPIRED,
        "timed_out": State.TIMED_OUT,
    }.get(exc.kind, State.FAILED)


async def _first(acquired: asyncio.Future[None], cancel: asyncio.Event) -> bool:
    """Wait for a queue slot or a cancel, whichever comes first; True if the slot was won."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(cancel.wait())
    pending: set[asyncio.Future[Any]] = {acquired, waiter}
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if acquired.done() and not cancel.is_set():
        return True
    acquired.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acquired
    return False


class _Publisher:
    """Delivers updates in order without letting a slow or broken front end stall the job."""

    def __init__(self, job_id: str, started: float, clock: Callable[[], float], sink: UpdateCallback) -> None:
        self.job_id = job_id
        self.started = started
        self.clock = clock
        self.sink = sink
        self._pending: asyncio.Queue[JobUpdate | None] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._pump())

    def elapsed(self) -> float:
        return self.clock() - self.started

    def soon(self, update: JobUpdate) -> None:
        self._pending.put_nowait(
            JobUpdate(
                update.job_id, update.state, self.elapsed(), update.position, update.progress,
                update.handle, update.message,
            )
        )

    def outcome(
        self,
        state: State,
        message: str | None,
        *,
        handle: Handle | None = None,
        files: tuple[OutputFile, ...] = (),
        dropped: int = 0,
        finished_at: float = 0.0,
    ) -> Outcome:
        outcome = Outcome(
            self.job_id, state, files, dropped, message, handle, self.elapsed(), finished_at or self.clock()
        )
        if state is not State.SUCCEEDED:
            self.soon(JobUpdate(self.job_id, state, 0.0, handle=outcome.handle, message=message))
        return outcome

    async def drain(self) -> None:
        self._pending.put_nowait(None)
        await self._task

    async def _pump(self) -> None:
        while (update := await self._pending.get()) is not None:
            try:
                await self.sink(update)
            except Exception:
                log.exception("job %s: update handler failed for %s", self.job_id, update.state)
