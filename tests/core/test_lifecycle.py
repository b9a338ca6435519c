"""The job lifecycle against real provider clients and fake provider servers, on a real SQLite file: progress,
cancellation in every state and on every provider, database faults, and two processes on one database. Tests
taking `database_target` run on PostgreSQL too (those about SQLite's own locks stay on SQLite).

Front ends are replaced by a recording sink (the lifecycle's own interface), nothing of the lifecycle is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image, ImageDraw

from bot.config import Settings, load_settings
from bot.lifecycle.jobs import CancelResult, Lifecycle
from bot.lifecycle.sink import Ending, Progress, Receipt
from bot.lifecycle.states import State
from bot.params import FillRequest, MaskOptions, request_to_json
from bot.service import FillService
from bot.storage import JobRecord, Storage
from tests.fakes.bfl_server import FakeBFL
from tests.fakes.replicate_server import FakeReplicate, Fault
from tests.fakes.wavespeed_server import FakeWaveSpeed

T = TypeVar("T")


def _png(size: tuple[int, int] = (256, 192)) -> bytes:
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    ImageDraw.Draw(img).ellipse((40, 40, 120, 120), fill=(200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class RecordingSink:
    """A front end that remembers everything it was told."""

    shown: list[Progress] = field(default_factory=list)
    endings: list[Ending] = field(default_factory=list)
    max_total_bytes: int | None = None

    def show(self, progress: Progress) -> None:
        self.shown.append(progress)

    async def deliver(self, ending: Ending) -> Receipt:
        self.endings.append(ending)
        return Receipt(True)


class Process:
    """One bot process's core: its own database connection, picture service and lifecycle."""

    def __init__(self, settings: Settings, storage: Storage, service: FillService, lifecycle: Lifecycle) -> None:
        self.settings = settings
        self.storage = storage
        self.service = service
        self.lifecycle = lifecycle
        self.sinks: dict[str, RecordingSink] = {}

    async def submit(self, provider: str = "replicate", prompt: str = "a red vase", user_id: int = 7) -> str:
        request = FillRequest.build(provider, prompt, {}, mask=MaskOptions(region="10%,10%,40%,40%"))
        record = await self.lifecycle.record(JobRecord(
            id=self.service.new_job_id(), kind="fill", front="cli", user_id=user_id, guild_id=None, channel_id=0,
            provider=provider, model=request.spec.model, request=request_to_json(request), prompt=prompt,
            application_id=0,
        ))
        prepared = await self.service.prepare_fill(_png(), None, request)
        sink = self.sinks[record.id] = RecordingSink()
        await self.lifecycle.queue(record, prepared, sink)
        return record.id

    async def status(self, job_id: str) -> State:
        record = await self.storage.get_job(job_id)
        assert record is not None
        return record.state

    async def ending(self, job_id: str, within: float = 20) -> Ending:
        async with asyncio.timeout(within):
            await self.lifecycle.wait(job_id)
        sink = self.sinks[job_id]
        assert len(sink.endings) == 1, sink.endings
        return sink.endings[0]


def settings_for(db: str | Path, **env: str) -> Settings:
    where = {"DATABASE_PATH": str(db)} if isinstance(db, Path) else {"DATABASE_URL": db}
    return load_settings({**where, "POLL_INTERVAL": "0.05", "JOB_DEADLINE": "30",
                          "JOB_LEASE_SECONDS": "0.6", "ALLOW_PRIVATE_DOWNLOADS": "true", **env})


LONG_LEASE = "2.0"  # for tests where a busy machine must not make a live process miss a renewal


@contextlib.asynccontextmanager
async def process(db: str | Path, *, busy_timeout: float = 5.0, **env: str) -> AsyncIterator[Process]:
    settings = settings_for(db, **env)
    async with FillService(settings) as service, \
            await Storage.open(settings.database_target, busy_timeout=busy_timeout) as storage:
        lifecycle = Lifecycle(settings, storage, service)
        try:
            yield Process(settings, storage, service, lifecycle)
        finally:
            await lifecycle.aclose()


async def until(predicate: Callable[[], Awaitable[T] | T], within: float = 10.0, what: str = "") -> T:
    """Check `predicate` every few milliseconds until it holds (events we cannot subscribe to)."""
    async with asyncio.timeout(within):
        while True:
            value = predicate()
            if isinstance(value, Awaitable):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.01)


def replicate_env(fake: FakeReplicate, **extra: str) -> dict[str, str]:
    return {"REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url, **extra}


# ------------------------------------------------------------------------------------------------ progress
async def test_replicate_progress_reaches_the_front_end_while_running(database_target: str | Path) -> None:
    async with FakeReplicate(duration=1.5, honour_wait=False, logs="percent") as fake, \
            process(database_target, **replicate_env(fake)) as p:
        job_id = await p.submit()
        await until(lambda: any(s.state is State.RUNNING and s.progress for s in p.sinks[job_id].shown),
                    what="a percentage while running")
        assert await p.status(job_id) is State.RUNNING  # recorded, not only shown
        ending = await p.ending(job_id)
        assert ending.state is State.SUCCEEDED and ending.finished is not None
        percentages = [s.progress for s in p.sinks[job_id].shown if s.progress is not None]
        assert all(0 <= x <= 1 for x in percentages) and percentages == sorted(percentages)
        assert any(0 < x < 1 for x in percentages)
        assert fake.count("POST", "create") == 1
        states = [s.state for s in p.sinks[job_id].shown]
        assert states.index(State.SUBMITTING) < states.index(State.RUNNING)  # never backwards
        assert State.QUEUED not in states[states.index(State.SUBMITTING):]


async def test_the_finish_groundwork_is_laid_while_the_provider_still_works(tmp_path: Path) -> None:
    """A job whose logs say it ends soon gets its finish's result-free work done ahead (decoding the upload and
    the mask, the "before" picture), so only the result's own work is left once it comes."""
    async with FakeReplicate(duration=1.0, honour_wait=False) as fake, \
            process(tmp_path / "bot.db", **replicate_env(fake)) as p:
        laid_at: list[float] = []  # how far into the provider's work the groundwork was asked for
        given: list[Any] = []
        lay, finish = p.service.lay_groundwork, p.service.finish

        async def spy_lay(request: Any, inputs: Any, *, job_id: str) -> Any:
            (prediction,) = fake.predictions.values()
            laid_at.append(prediction.elapsed())
            return await lay(request, inputs, job_id=job_id)

        async def spy_finish(*args: Any, groundwork: Any = None, **kwargs: Any) -> Any:
            given.append(groundwork)
            return await finish(*args, groundwork=groundwork, **kwargs)

        store = p.lifecycle.runner.store
        load_inputs, reads = store.load_inputs, []

        async def spy_load(job_id: str) -> Any:
            reads.append(job_id)
            return await load_inputs(job_id)

        p.service.lay_groundwork = spy_lay  # type: ignore[method-assign]
        p.service.finish = spy_finish  # type: ignore[method-assign]
        store.load_inputs = spy_load  # type: ignore[method-assign]
        ending = await p.ending(await p.submit())
        assert ending.state is State.SUCCEEDED and ending.finished is not None
        assert len(laid_at) == 1 and laid_at[0] < fake.duration  # once, before the result existed
        assert len(reads) == 1  # the finish uses the inputs the groundwork read
        (groundwork,) = given
        assert groundwork is not None and groundwork.filled is not None  # the finish took it
        assert ending.finished.before == groundwork.before


async def test_no_groundwork_for_a_job_without_progress_and_none_left_behind(tmp_path: Path) -> None:
    """Without progress in its logs a job's end cannot be foreseen: the finish does all the work itself."""
    async with FakeReplicate(duration=0.3, honour_wait=False, logs="none") as fake, \
            process(tmp_path / "bot.db", **replicate_env(fake)) as p:
        lay = p.service.lay_groundwork
        laid: list[str] = []

        async def spy_lay(request: Any, inputs: Any, *, job_id: str) -> Any:
            laid.append(job_id)
            return await lay(request, inputs, job_id=job_id)

        p.service.lay_groundwork = spy_lay  # type: ignore[method-assign]
        ending = await p.ending(await p.submit())
        assert ending.state is State.SUCCEEDED and ending.finished is not None and ending.finished.before
        assert laid == [] and not p.lifecycle.runner.live


async def test_a_burst_behind_a_small_limit_never_reads_queued_once_sent(tmp_path: Path) -> None:
    """Queue positions are shown, never recorded: a job whose create may have left is never `queued`."""
    async with FakeReplicate(duration=0.5, honour_wait=False) as fake, \
            process(tmp_path / "bot.db", **replicate_env(fake, REPLICATE_MAX_CONCURRENCY="2")) as p:
        seen_at_create: list[State] = []
        original = p.service.providers["replicate"].submit

        async def submit_and_look(job: Any) -> Any:
            for record in await p.storage.recent_jobs(7, limit=100):
                if record.prompt == job.prompt:
                    seen_at_create.append(record.state)
            return await original(job)

        p.service.providers["replicate"].submit = submit_and_look  # type: ignore[method-assign]
        ids = [await p.submit(prompt=f"burst {n}") for n in range(30)]
        endings = [await p.ending(job_id, within=60) for job_id in ids]
        assert all(e.state is State.SUCCEEDED for e in endings)
        assert seen_at_create == [State.SUBMITTING] * 30
        assert fake.count("POST", "create") == 30
        assert any(s.position and s.position > 1 for s in p.sinks[ids[-1]].shown)  # it did wait in line


# -------------------------------------------------------------------------------------------------- cancel
async def test_cancel_while_queued_sends_nothing(tmp_path: Path) -> None:
    async with FakeReplicate(duration=5, honour_wait=False) as fake, \
            process(tmp_path / "bot.db", **replicate_env(fake, REPLICATE_MAX_CONCURRENCY="1")) as p:
        first = await p.submit(prompt="first")
        second = await p.submit(prompt="second")
        await until(lambda: any(s.position == 1 for s in p.sinks[second].shown), what="second waits in line")
        assert await p.lifecycle.cancel(second) is CancelResult.STOPPING
        ending = await p.ending(second)
        assert ending.state is State.CANCELED and "nothing was charged" in (ending.message or "")
        assert fake.count("POST", "create") == 1  # only the first job reached the provider
        await p.lifecycle.cancel(first)
        assert (await p.ending(first)).state is State.CANCELED


async def test_cancel_while_the_create_is_in_flight_stops_it_at_the_provider(tmp_path: Path) -> None:
    async with FakeReplicate(duration=3, honour_wait=False) as fake, \
            process(tmp_path / "bot.db", **replicate_env(fake)) as p:
        fake.faults.create.append(Fault.slow(0.5))
        job_id = await p.submit()
        await until(lambda: fake.count("POST", "create") == 1, what="create in flight")
        assert await p.status(job_id) is State.SUBMITTING
        assert await p.lifecycle.cancel(job_id) is CancelResult.STOPPING
        ending = await p.ending(job_id)
        assert ending.state is State.CANCELED and ending.finished is None
        assert fake.count("POST", "cancel") == 1  # stopped as soon as it had an id
        assert fake.count("GET", "files") == 0


@pytest.mark.parametrize("provider", ["replicate", "bfl", "wavespeed", "local"])
async def test_cancel_while_running_on_every_provider(tmp_path: Path, provider: str) -> None:
    async with FakeReplicate(duration=4, honour_wait=False) as rep, FakeBFL(duration=4) as bfl, \
            FakeWaveSpeed(duration=4) as ws:
        env = {**replicate_env(rep), "BFL_API_KEY": bfl.key, "BFL_BASE_URL": bfl.base_url,
               "WAVESPEED_API_KEY": ws.key, "WAVESPEED_BASE_URL": ws.base_url}
        async with process(tmp_path / "bot.db", **env) as p:
            job_id = await p.submit(provider)
            await until(lambda: _at_provider(p, job_id), what="at the provider")
            assert await p.lifecycle.cancel(job_id) is CancelResult.STOPPING
            ending = await p.ending(job_id, within=5)  # stops at once, not when the provider finishes
            assert ending.state is State.CANCELED and ending.finished is None
            record = await p.storage.get_job(job_id)
            assert record is not None and record.delivered_at is not None
            if provider == "replicate":
                assert rep.count("POST", "cancel") == 1 and "stopped" in (ending.message or "")
            elif provider in ("bfl", "wavespeed"):  # no cancel endpoint: say so honestly
                assert "may still finish and be billed" in (ending.message or "")
            assert p.sinks[job_id].endings == [ending]  # nothing delivered afterwards


async def _at_provider(p: Process, job_id: str) -> bool:
    return (await p.status(job_id)) in (State.STARTING, State.RUNNING)


async def test_cancel_from_another_process_is_seen_by_the_owner(database_target: str | Path) -> None:
    db = database_target
    async with FakeReplicate(duration=5, honour_wait=False) as fake, \
            process(db, **replicate_env(fake)) as owner, process(db, **replicate_env(fake)) as other:
        job_id = await owner.submit()
        await until(lambda: _at_provider(owner, job_id), what="running")
        assert await other.lifecycle.cancel(job_id) is CancelResult.REQUESTED
        ending = await owner.ending(job_id, within=5)
        assert ending.state is State.CANCELED and fake.count("POST", "cancel") == 1


# ---------------------------------------------------------------------------------------- database faults
@contextlib.contextmanager
def write_lock(db: Path) -> Any:
    """Another process holding the database's write lock (as a backup tool or a second bot might)."""
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        raw.execute("ROLLBACK")
        raw.close()


async def test_a_brief_lock_is_ridden_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "bot.db"
    async with FakeReplicate(duration=0.8, honour_wait=False) as fake, \
            process(db, busy_timeout=0.05, **replicate_env(fake)) as p:
        job_id = await p.submit()
        await until(lambda: _at_provider(p, job_id), what="at the provider")
        with write_lock(db):  # the job's next write (its outputs) meets the lock
            await until(lambda: "retrying" in caplog.text, what="a failed write retried")
        ending = await p.ending(job_id)
        assert ending.state is State.SUCCEEDED and fake.count("POST", "create") == 1
        assert await p.status(job_id) is State.SUCCEEDED


async def test_a_lasting_database_fault_ends_the_job_clearly_and_frees_its_slots(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with FakeReplicate(duration=0.3, honour_wait=False) as fake, \
            process(db, busy_timeout=0.02, **replicate_env(fake, REPLICATE_MAX_CONCURRENCY="1")) as p:
        p.lifecycle.store.first_delay = 0.01  # give up after ~0.3 s instead of seconds
        request = FillRequest.build("replicate", "locked out", {}, mask=MaskOptions(region="0,0,50,50"))
        record = await p.lifecycle.record(JobRecord(
            id="lockedout001", kind="fill", front="cli", user_id=7, guild_id=None, channel_id=0,
            provider="replicate", model=request.spec.model, request=request_to_json(request), prompt="locked out",
            application_id=0,
        ))
        prepared = await p.service.prepare_fill(_png(), None, request)
        sink = p.sinks[record.id] = RecordingSink()
        await p.lifecycle.queue(record, prepared, sink)
        with write_lock(db):
            ending = await p.ending(record.id)
        assert ending.state is State.FAILED
        assert "database stopped answering" in (ending.message or "")
        assert fake.count("POST", "create") <= 1
        # The member's slot frees itself once the lease lapses; the provider slot at once (a new job runs).
        await until(lambda: _no_active(p.storage), what="the member's slot free")
        assert (await p.ending(await p.submit())).state is State.SUCCEEDED


async def _no_active(storage: Storage) -> bool:
    return await storage.active_jobs(7) == 0


# ------------------------------------------------------------------------------------ two processes, one db
async def test_two_processes_never_run_the_same_job_and_one_takes_over_from_a_dead_one(
    database_target: str | Path,
) -> None:
    db = database_target
    async with FakeReplicate(duration=8.0, honour_wait=False) as fake:  # still running when their process dies
        env = replicate_env(fake, JOB_LEASE_SECONDS=LONG_LEASE)
        async with process(db, **env) as survivor:
            taken: list[RecordingSink] = []

            async def sink_for(record: JobRecord) -> RecordingSink:
                sink = RecordingSink()
                survivor.sinks[record.id] = sink
                taken.append(sink)
                return sink

            survivor.lifecycle.serve("cli", sink_for)
            doomed = await _start_dying(db, env)
            await asyncio.sleep(2.5)  # longer than a lease: the dying process keeps renewing its own
            assert not taken  # leases held: the survivor keeps its hands off
            assert all([await _at_provider(survivor, job_id) for job_id in doomed.ids])
            await doomed.die()  # no clean shutdown: its leases are left to run out
            ids = doomed.ids
            for job_id in ids:
                await until(lambda job_id=job_id: job_id in survivor.sinks, within=30, what="taken over")
                ending = await survivor.ending(job_id, within=30)
                assert ending.state is State.SUCCEEDED
            assert fake.count("POST", "create") == len(ids)  # resumed by polling, never sent twice


@dataclass
class Doomed:
    lifecycle: Lifecycle
    service: FillService
    storage: Storage
    ids: list[str]

    async def die(self) -> None:
        """Stop everything this process does without handing anything back (as a killed process would)."""
        if self.lifecycle._keeper is not None:
            await self.lifecycle._keeper.stop()
        await self.lifecycle.runner.aclose()
        await self.service.aclose()
        await self.storage.close()


async def _start_dying(db: str | Path, env: dict[str, str]) -> Doomed:
    settings = settings_for(db, **env)
    service = FillService(settings)
    storage = await Storage.open(settings.database_target)
    lifecycle = Lifecycle(settings, storage, service)
    p = Process(settings, storage, service, lifecycle)
    lifecycle.serve("cli", _never)
    ids = [await p.submit(prompt=f"doomed {n}") for n in range(3)]
    await until(lambda: all_at_provider(p, ids), what="all submitted")
    return Doomed(lifecycle, service, storage, ids)


async def all_at_provider(p: Process, ids: list[str]) -> bool:
    return all([await _at_provider(p, job_id) for job_id in ids])


async def _never(record: JobRecord) -> RecordingSink:
    raise AssertionError("the dying process must not take jobs over")


async def test_a_job_outliving_its_lease_stays_with_its_process(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    env = {"JOB_LEASE_SECONDS": LONG_LEASE}
    async with FakeReplicate(duration=6.0, honour_wait=False) as fake, \
            process(db, **replicate_env(fake, **env)) as runner, process(db, **replicate_env(fake, **env)) as other:
        runner.lifecycle.serve("cli", None)  # renews, takes nothing over
        job_id = await runner.submit()
        await until(lambda: _at_provider(runner, job_id), what="running")
        await asyncio.sleep(4.5)  # two leases and more
        assert await other.storage.claim_job(job_id, other.lifecycle.owner, 0.0) is None
        assert (await runner.ending(job_id)).state is State.SUCCEEDED
        assert fake.count("POST", "create") == 1
