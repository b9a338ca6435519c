"""Running jobs: one writer per job moves it through the state machine, persisting before each step the outside
world can see, and hands the ending to its front end.

Order of work for one job: wait for a provider slot (`queued`) → record `submitting` → create → record the
handle (`starting`/`running`) → poll (or wait for the provider's own signal) until done → download → store the
outputs (`succeeded`) → finish the pictures → the front end shows them → record `delivered`. Every status change
goes through `JobStore.move`, so nothing else can move a job, and never backwards. `recovery.py` says what
happens when the process dies between any two of these steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bot.errors import ProviderError, UserError
from bot.lifecycle.pacing import Pace
from bot.lifecycle.sink import Ending, JobSink, Progress
from bot.lifecycle.slots import SlotQueue
from bot.lifecycle.states import State, allowed
from bot.lifecycle.store import JobStore, NotOwner, StoreUnavailable
from bot.params import EditRequest, FillRequest, request_from_json
from bot.pipeline import Groundwork, JobInputs, job_from_sent
from bot.providers.base import Handle, Provider, ProviderJob, Status
from bot.service import FillService
from bot.storage import JobRecord

log = logging.getLogger(__name__)

# Poll errors worth waiting out (the GET already retried a few times); anything else ends the job.
_TRANSIENT = frozenset({"unavailable", "rate_limited", "bad_response"})
_MAX_POLL_FAILURES = 5
_BACKOFF = 1.6
# While a job runs, its percentage should reach the reply within about 2 s; before that, back off further.
_RUNNING_POLL_CAP = 2.0
_WAITING_POLL_CAP = 5.0
MAX_OUTPUTS = 4  # the most any spec allows: more outputs from a provider are dropped, never downloaded

MSG_BUG = "Something went wrong on our side; the error was logged. Please try again."
# What a job left in these states by a process that stopped ends with (recovery.py has the whole table).
MSG_RESTART_PREPARING = (
    "The bot restarted while it was preparing your pictures. Nothing was sent to the provider and nothing was "
    "charged: please run the command again."
)
MSG_RESTART_SUBMITTING = (
    "The bot restarted while this job was being sent to the provider, so it cannot tell whether the provider got "
    "it. It was not sent again, to avoid paying twice; you may be charged once for it. Press Rerun to try again."
)
MSG_INPUTS_GONE = "The pictures of this job are no longer stored, so it cannot be sent."


def charged_note(state: State) -> str:
    """Whether the person may pay for a job that ends in `state`'s shadow: said plainly, every time."""
    if state.may_be_at_provider:
        return "The provider may already have started it, so you may be charged for it."
    return "Nothing was sent to the provider, so nothing was charged."


def store_failure_message(state: State) -> str:
    return f"The bot's database stopped answering, so this job was stopped. {charged_note(state)}"


def failure_state(exc: ProviderError) -> State:
    return {
        "moderated": State.MODERATED,
        "canceled": State.CANCELED,
        "expired": State.EXPIRED,
        "timed_out": State.TIMED_OUT,
    }.get(exc.kind, State.FAILED)


def _duration(seconds: float) -> str:
    """"10 minutes", "1.5 minutes" or "45 seconds" (not "0.0833333 minutes")."""
    if seconds < 60:
        return f"{seconds:.0f} seconds"
    return f"{round(seconds / 60, 1):g} minutes"


# Waits wake this much early to sleep the rest awake (see `Runner._wait`).
_WAKE_EARLY = 0.03
# The finish's groundwork (pipeline.Groundwork) is laid once a job is predicted to end within this long: a
# running job's progress is read at least every 2 s (the poll cap; the webhooks' wake gap), so its last reading
# before the end is within it. At most this many jobs hold theirs at once (each holds a full-size picture).
_GROUNDWORK_AHEAD = _RUNNING_POLL_CAP + 0.5
_GROUNDWORK_AT_ONCE = 4


class _Stop(Exception):
    """Ends a job early with an outcome (already recorded)."""

    def __init__(self, ending: Ending) -> None:
        self.ending = ending


@dataclass
class LiveJob:
    """A job this process is running now."""

    record: JobRecord
    request: FillRequest | EditRequest
    sink: JobSink
    state: State
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    position: int | None = None
    progress: float | None = None
    handle: Handle | None = None
    groundwork: asyncio.Task[tuple[JobInputs, Groundwork] | None] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    def elapsed(self) -> float:
        return max(0.0, time.time() - self.record.created_at)


class Runner:
    """Runs this process's jobs against the providers; one per process."""

    def __init__(
        self,
        store: JobStore,
        service: FillService,
        *,
        concurrency: Mapping[str, int],
        poll_interval: float,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.service = service
        self.poll_interval = poll_interval
        self.deadline = deadline
        self.clock = clock
        self.live: dict[str, LiveJob] = {}
        self._queues = {name: SlotQueue(concurrency.get(name, 4)) for name in service.providers}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._left = asyncio.Event()  # set whenever a job leaves this process
        self.on_leave: list[Callable[[], None]] = []  # called then too (a worker looks for its next job)

    # --------------------------------------------------------------------------------------------- entry
    def start(self, record: JobRecord, sink: JobSink, *, job: ProviderJob | None = None) -> LiveJob:
        """Drive `record` from its stored state to delivered, in the background. `job` is the prepared
        provider job of a fresh `queued` job (a resumed one sends the pictures prepared at admission, kept with
        the job, or prepares its stored upload again)."""
        live = LiveJob(record, request_from_json(record.request), sink, record.state)
        if record.cancel_requested_at is not None:
            live.cancel.set()  # asked while no process ran it
        self.live[record.id] = live
        self.store.held.add(record.id)
        task = asyncio.create_task(self._drive(live, job), name=f"job-{record.id}")
        self._tasks[record.id] = task
        return live

    def cancel(self, job_id: str) -> bool:
        """Ask a job running here to stop; False if it is not running in this process."""
        live = self.live.get(job_id)
        if live is None:
            return False
        live.cancel.set()
        return True

    async def wait(self, job_id: str) -> None:
        """Until the job has left this process (delivered, handed back, or taken over)."""
        await self.wait_until(lambda: job_id not in self.live)

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Until `done()` holds, checked each time a job leaves this process."""
        while not done():
            self._left.clear()
            await self._left.wait()

    def drop(self, job_id: str) -> None:
        """Stop working on a job another process has taken over (its lease was lost)."""
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        """Stop local work; the jobs are left on record and resumed by the next owner."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # --------------------------------------------------------------------------------------------- drive
    async def _drive(self, live: LiveJob, job: ProviderJob | None) -> None:
        try:
            try:
                ending = await self._advance(live, job)
            except _Stop as stop:
                ending = stop.ending
            except NotOwner:
                log.info("job %s was taken over by another process; stopping here", live.id)
                return
            except StoreUnavailable:
                await self._stop_at_provider(live)
                ending = Ending(live.id, State.FAILED, store_failure_message(live.state), live.elapsed())
                await self._show_unrecorded(live, ending)
                return
            except Exception:
                log.exception("job %s crashed (provider %s, user %s)", live.id, live.record.provider,
                              live.record.user_id)
                ending = await self._end_quietly(live, State.FAILED, MSG_BUG)
            await self._hand_over(live, ending)
        finally:
            self._leave(live)

    async def _advance(self, live: LiveJob, job: ProviderJob | None) -> Ending:
        """From the stored state to an ending; each branch is where a restart picks the job up."""
        state = live.state
        if state is State.PREPARING:
            return await self._end(live, State.FAILED, MSG_RESTART_PREPARING)
        if state is State.QUEUED:
            return await self._at_provider(live, job or await self._prepare_again(live), None)
        if state is State.SUBMITTING:
            return await self._end(live, State.FAILED, MSG_RESTART_SUBMITTING)
        if state in (State.STARTING, State.RUNNING):
            if live.record.handle is None:
                raise RuntimeError(f"job {live.id} is {state} without a handle")
            return await self._at_provider(live, None, Handle.from_json(live.record.handle))
        if state is State.SUCCEEDED:
            return await self._finish(live, await self.store.load_outputs(live.id))
        return Ending(live.id, state, live.record.error, live.elapsed(), notices=live.record.notices)

    async def _prepare_again(self, live: LiveJob) -> ProviderJob:
        sent = await self.store.load_sent(live.id)
        if sent is not None:  # prepared at admission: sent as it was, no picture work again
            return job_from_sent(live.request, *sent)
        inputs = await self._inputs(live)
        if inputs is None:
            raise _Stop(await self._end(live, State.FAILED, MSG_INPUTS_GONE))
        try:
            return (await self.service.prepare(live.request, inputs)).job
        except UserError as exc:
            raise _Stop(await self._end(live, State.FAILED, exc.message)) from None

    # ---------------------------------------------------------------------------------------- provider
    async def _at_provider(self, live: LiveJob, job: ProviderJob | None, handle: Handle | None) -> Ending:
        provider = self.service.providers.get(live.record.provider)
        if provider is None:
            return await self._end(live, State.FAILED, f"The provider `{live.record.provider}` is no longer "
                                   "configured on this bot.")
        queue = self._queues[provider.name]

        def at(position: int) -> None:
            live.position = position
            self._show(live)

        tenant = (live.record.guild_id, live.record.user_id)
        if not await queue.acquire_unless(live.id, tenant, at, live.cancel):
            if handle is None:
                return await self._end(live, State.CANCELED, "Canceled before it was sent to the provider; "
                                       "nothing was charged.")
            return await self._cancel_at_provider(live, provider, handle)
        live.position = None
        try:
            status: Status | None = None
            if handle is None:
                assert job is not None
                handle, status = await self._submit(live, provider, job)
            live.handle = handle
            files = await self._watch(live, provider, handle, status)
        finally:
            queue.release(live.id)
        return await self._finish(live, files)

    async def _submit(self, live: LiveJob, provider: Provider, job: ProviderJob) -> tuple[Handle, Status]:
        await self._move(live, State.SUBMITTING)  # from here on the job is never sent again
        try:
            handle, status = await provider.submit(job)
        except ProviderError as exc:
            message = exc.message
            if exc.kind == "maybe_submitted":
                log.warning("job %s: create may have reached %s: %s", live.id, provider.name, exc.message)
            raise _Stop(await self._end(live, failure_state(exc), message)) from None
        live.handle = handle  # known before it is recorded: a database failure can still stop it
        state = status.state if status.state in (State.STARTING, State.RUNNING) else State.STARTING
        await self._move(live, state, handle=handle.to_json())
        log.info("job %s submitted to %s as %s", live.id, provider.name, handle.job_id)
        return handle, status

    async def _watch(self, live: LiveJob, provider: Provider, handle: Handle, status: Status | None) -> list[
            tuple[bytes, bool]]:
        """Poll until the provider finishes, then download and store the outputs."""
        deadline = self.clock() + self.deadline
        polls = failures = 0
        asked_wait = 0.0  # a rate-limited poll's own hint: the next poll waits at least that long
        read_at = self.clock()  # when the last answer came: the next poll's delay counts from there
        pace = Pace(read_at)
        if status is not None:
            pace.read(read_at, read_at, status)
        while status is None or not status.state.terminal:
            if status is not None:
                await self._observe(live, status)
            ends_by = pace.ends_by()
            if ends_by is not None and ends_by - read_at <= _GROUNDWORK_AHEAD:
                self._lay_groundwork(live)
            if live.cancel.is_set():
                raise _Stop(await self._cancel_at_provider(live, provider, handle))
            remaining = deadline - self.clock()
            if remaining <= 0:
                await self._stop_provider_job(provider, handle)
                raise _Stop(await self._end(
                    live, State.TIMED_OUT,
                    f"The provider did not finish within {_duration(self.deadline)}, so the job was stopped. "
                    f"{charged_note(live.state)}",
                ))
            cap = _RUNNING_POLL_CAP if live.state is State.RUNNING else _WAITING_POLL_CAP
            backoff = provider.fallback_poll(handle) or min(self.poll_interval * _BACKOFF ** min(polls, 32), cap)
            at = pace.next_poll(read_at + backoff, self.clock())
            delay = min(max(at - read_at, asked_wait), remaining) - (self.clock() - read_at)
            asked_wait = 0.0
            look_after = await self._wait(live, provider, handle, delay)
            if live.cancel.is_set():
                continue  # canceled meanwhile
            polls += 1
            sent_at = self.clock()
            try:
                status = await provider.poll(handle)
                pace.read(sent_at, self.clock(), status)
                failures = 0
                if look_after and await self.store.cancel_requested(live.id):
                    live.cancel.set()  # asked from another process; seen after the poll the provider's news wanted
            except ProviderError as exc:
                failures += 1
                if exc.kind not in _TRANSIENT or failures >= _MAX_POLL_FAILURES:
                    raise _Stop(await self._end(live, failure_state(exc), exc.message)) from None
                asked_wait = exc.retry_after or 0.0
                log.warning("job %s: poll failed (%s), will retry: %s", live.id, exc.kind, exc.message)
            finally:
                read_at = self.clock()
        return await self._collect(live, provider, status)

    async def _wait(self, live: LiveJob, provider: Provider, handle: Handle, delay: float) -> bool:
        """Wait `delay`, or less if the provider signals news or the job is canceled here. Near its end a wait
        looks for a cancel from another process (noted on `live`); cut short by news, it leaves that to the
        caller after its poll (True), so the news is not held up."""
        settle = asyncio.ensure_future(provider.settle(handle))
        canceled = asyncio.ensure_future(live.cancel.wait())
        news = {settle, canceled}
        until = self.clock() + delay
        asked: asyncio.Future[bool] | None = None
        try:
            # A timer after a second of idling fires ~8 ms late on a VM (vCPU wake-up). Waking _WAKE_EARLY
            # before the end, the database look-up runs while the rest is slept awake, so the poll after this
            # goes out on time and is not held up by it.
            await asyncio.wait(news, timeout=max(0.0, delay - _WAKE_EARLY), return_when=asyncio.FIRST_COMPLETED)
            if settle.done() or canceled.done():
                return settle.done()
            asked = asyncio.ensure_future(self.store.cancel_requested(live.id))
            await asyncio.wait(news, timeout=max(0.0, until - self.clock()), return_when=asyncio.FIRST_COMPLETED)
            if await asked:
                live.cancel.set()
            return False
        finally:
            settle.cancel()
            canceled.cancel()
            if asked is not None:
                asked.cancel()

    async def _observe(self, live: LiveJob, status: Status) -> None:
        if status.state is not live.state and allowed(live.state, status.state):
            await self._move(live, status.state)
        if status.progress is not None and status.progress != live.progress:
            live.progress = status.progress
            self._show(live)

    async def _collect(self, live: LiveJob, provider: Provider, status: Status) -> list[tuple[bytes, bool]]:
        if status.state is not State.SUCCEEDED:
            log.info("job %s ended %s at %s (%s): %s", live.id, status.state, provider.name, status.raw_status,
                     status.detail or "no detail")
            raise _Stop(await self._end(live, status.state, status.message))
        outputs = status.outputs[:MAX_OUTPUTS]
        if len(status.outputs) > MAX_OUTPUTS:
            log.warning("job %s: %s sent %d outputs; keeping %d", live.id, provider.name, len(status.outputs),
                        MAX_OUTPUTS)
        if not outputs:
            message = "The provider returned no images"
            if status.dropped:
                message += ": all of them were withheld by its safety checker"
            state = State.MODERATED if status.dropped else State.FAILED
            raise _Stop(await self._end(live, state, message + "."))
        try:
            data = await asyncio.gather(*(provider.download(output) for output in outputs))
        except ProviderError as exc:
            raise _Stop(await self._end(live, failure_state(exc), exc.message)) from None
        files = [(blob, output.flagged) for blob, output in zip(data, outputs, strict=True)]
        await self.store.store_outputs(live.id, files)
        live.state = State.SUCCEEDED
        notes = list(live.record.notices)
        if status.message:
            notes.append(status.message)
        if status.dropped:
            notes.append(f"{status.dropped} image(s) were withheld by the provider's safety checker.")
        live.record = dataclasses.replace(live.record, notices=tuple(notes))
        return files

    async def _cancel_at_provider(self, live: LiveJob, provider: Provider, handle: Handle) -> Ending:
        if provider.supports_cancel:
            await self._stop_provider_job(provider, handle)
            message = "Canceled: the provider stopped the job and nothing will be shown."
        else:
            message = ("Canceled. This provider has no way to stop a job once it has it, so it may still finish "
                       "and be billed; its result will not be shown.")
        return await self._end(live, State.CANCELED, message)

    async def _stop_provider_job(self, provider: Provider, handle: Handle) -> None:
        try:
            await provider.cancel(handle)
        except ProviderError as exc:  # best effort: the job ends on our side either way
            log.warning("cancel of %s at %s failed: %s", handle.job_id, provider.name, exc.message)

    async def _stop_at_provider(self, live: LiveJob) -> None:
        """The database is gone: stop paying for a job we can no longer keep on record."""
        provider = self.service.providers.get(live.record.provider)
        if provider is not None and live.handle is not None and live.state.may_be_at_provider:
            await self._stop_provider_job(provider, live.handle)

    # ---------------------------------------------------------------------------------------- finishing
    async def _finish(self, live: LiveJob, files: list[tuple[bytes, bool]]) -> Ending:
        notices = live.record.notices
        if not files:
            return Ending(live.id, State.FAILED, MSG_INPUTS_GONE, live.elapsed(), notices=notices)
        laying, live.groundwork = live.groundwork, None
        laid = await laying if laying is not None else None
        inputs, groundwork = laid if laid is not None else (await self._inputs(live), None)
        if inputs is None:
            return Ending(live.id, State.FAILED, MSG_INPUTS_GONE, live.elapsed(), notices=notices)
        try:
            finished = await self.service.finish(live.request, inputs, files, job_id=live.id,
                                                 max_total_bytes=getattr(live.sink, "max_total_bytes", None),
                                                 groundwork=groundwork)
        except UserError as exc:
            log.warning("job %s: provider output unusable: %s", live.id, exc.message)
            return Ending(live.id, State.FAILED, f"The provider's result was unusable: {exc.message}",
                          live.elapsed(), notices=notices)
        return Ending(live.id, State.SUCCEEDED, None, live.elapsed(), finished=finished, notices=notices)

    async def _inputs(self, live: LiveJob) -> JobInputs | None:
        stored = await self.store.load_inputs(live.id)
        return None if stored is None else JobInputs(*stored)

    def _lay_groundwork(self, live: LiveJob) -> None:
        """Start the finish's groundwork for a job about to end, unless it has it or too many jobs hold theirs."""
        if live.groundwork is not None:
            return
        if sum(1 for other in self.live.values() if other.groundwork is not None) >= _GROUNDWORK_AT_ONCE:
            return
        live.groundwork = asyncio.create_task(self._groundwork(live), name=f"fillbot-groundwork-{live.id}")

    async def _groundwork(self, live: LiveJob) -> tuple[JobInputs, Groundwork] | None:
        """The job's inputs and the groundwork laid from them (the finish reads neither again); a head start only:
        any failure leaves the finish to do the work itself."""
        try:
            inputs = await self._inputs(live)
            if inputs is None:
                return None
            return inputs, await self.service.lay_groundwork(live.request, inputs, job_id=live.id)
        except Exception as exc:
            log.warning("job %s: finish groundwork not laid ahead (%s: %s)", live.id, type(exc).__name__, exc)
            return None

    # ------------------------------------------------------------------------------------------- writes
    async def _move(self, live: LiveJob, state: State, *, handle: str | None = None) -> None:
        await self.store.move(live.id, state, handle=handle)
        live.state = state
        if state is not State.RUNNING:
            live.progress = None
        self._show(live)

    async def _end(self, live: LiveJob, state: State, message: str | None) -> Ending:
        await self.store.move(live.id, state, error=message)
        live.state = state
        return Ending(live.id, state, message, live.elapsed(), notices=live.record.notices)

    async def _end_quietly(self, live: LiveJob, state: State, message: str) -> Ending:
        """End after a bug: record it if the database lets us, but show it either way."""
        with contextlib.suppress(Exception):
            if allowed(live.state, state):
                await self._end(live, state, message)
        return Ending(live.id, state, message, live.elapsed(), notices=live.record.notices)

    def _show(self, live: LiveJob) -> None:
        try:
            live.sink.show(Progress(live.id, live.state, live.elapsed(), live.position, live.progress))
        except Exception:
            log.exception("job %s: front end failed to show %s", live.id, live.state)

    # ------------------------------------------------------------------------------------------ delivery
    async def _hand_over(self, live: LiveJob, ending: Ending) -> None:
        """The front end shows the ending; only then is the job marked delivered."""
        try:
            receipt = await live.sink.deliver(ending)
            if receipt.done:
                await self.store.delivered(live.id, receipt.outputs, receipt.note)
            else:
                # Handed back at once: the next keeper round (a third of a lease later) or `resume` tries again.
                log.info("job %s: front end could not show the ending yet; retrying later", live.id)
                await self.store.release([live.id])
        except (NotOwner, StoreUnavailable) as exc:
            log.warning("job %s: delivered, but not recorded (%s); it may be shown again", live.id,
                        type(exc).__name__)
        except Exception:
            log.exception("job %s: delivery failed", live.id)

    async def _show_unrecorded(self, live: LiveJob, ending: Ending) -> None:
        """Tell the person even though nothing can be recorded; the lease lapses and a later owner finishes the
        job from its last recorded state."""
        try:
            await live.sink.deliver(ending)
        except Exception:
            log.exception("job %s: could not show the database failure", live.id)

    def _leave(self, live: LiveJob) -> None:
        if live.groundwork is not None:
            live.groundwork.cancel()  # the job ended without its result: its full-size picture is not needed
            live.groundwork = None
        self.live.pop(live.id, None)
        self._tasks.pop(live.id, None)
        self.store.held.discard(live.id)
        self._left.set()
        for hook in self.on_leave:
            hook()
