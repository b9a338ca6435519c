"""Storage: migrations, the job lifecycle, history erasure and purging, with an injected clock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import db
from bot.lifecycle.states import IllegalMove, State
from bot.storage import JobRecord, Migration, NotOwner, OutputMeta, Storage, load_migrations

DAY = 86_400.0
SHIPPED = [1, 2, 3]  # the migrations in bot/migrations
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def job(
    job_id: str, *, user_id: int = 1, guild_id: int | None = 10, status: str = "queued", owner: str | None = "me",
    lease_until: float | None = T0 + 30,
) -> JobRecord:
    """A job as some process left it; jobs in an outcome state count as delivered (the usual end)."""
    ended = State(status).terminal
    return JobRecord(
        id=job_id, kind="fill", user_id=user_id, guild_id=guild_id, channel_id=100, provider="bfl",
        model="flux-pro-1.0-fill", request='{"prompt": "a cat"}', prompt="a cat", application_id=999,
        status=status, interaction_token=None if ended else "tok", token_expires_at=T0 + 900,
        owner=None if ended else owner, lease_until=None if ended else lease_until,
        delivered_at=T0 if ended else None,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(clock: Clock, database_target: str | Path) -> AsyncIterator[Storage]:
    async with await Storage.open(database_target, clock=clock) as storage:
        yield storage


async def tables(storage: Storage) -> set[str]:
    if storage.dialect == "sqlite":
        rows = await storage._rows("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await storage._rows("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {r[0] for r in rows}


async def test_migrations_apply_once_and_reopen_cleanly(database_target: str | Path) -> None:
    target = database_target
    if isinstance(target, Path):
        target = target.parent / "data" / "nested" / "bot.db"  # the folder does not exist yet
    async with await Storage.open(target) as storage:
        assert await storage.applied_migrations() == SHIPPED
        await storage.create_job(job("j1"), b"img", None)
    async with await Storage.open(target) as storage:
        assert await storage.applied_migrations() == SHIPPED
        assert (await storage.get_job("j1")) is not None
        assert await storage.load_inputs("j1") == (b"img", None)
        assert {"jobs", "job_inputs", "job_outputs", "guild_settings", "schema_migrations"} <= await tables(storage)
        assert not {"jobs_new", "job_inputs_new"} & await tables(storage)
    if isinstance(target, Path):
        with sqlite3.connect(target) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(SHIPPED)


async def test_new_migration_applies_on_reopen_and_a_failing_one_rolls_back(database_target: str | Path) -> None:
    target = database_target
    base = load_migrations()
    assert [(m.version, m.name) for m in base] == [(1, "initial"), (2, "lifecycle"), (3, "sent_pictures")]
    async with await Storage.open(target):  # first start: the shipped migrations
        pass
    extra = Migration(4, "notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); -- a; comment\n"
                                  "INSERT INTO notes (body) VALUES ('x;y');")
    async with await Storage.open(target, migrations=(*base, extra)) as storage:
        assert await storage.applied_migrations() == [*SHIPPED, 4]
    broken = Migration(5, "broken", "CREATE TABLE half (id INTEGER); INSERT INTO missing VALUES (1);")
    with pytest.raises(db.StorageError):
        await Storage.open(target, migrations=(*base, extra, broken))
    async with await Storage.open(target, migrations=(*base, extra)) as storage:
        assert "half" not in await tables(storage)  # the whole migration rolled back
        assert [tuple(r) for r in await storage._rows("SELECT id, body FROM notes")] == [(1, "x;y")]
    with pytest.raises(RuntimeError, match="does not know"):
        await Storage.open(target, migrations=base)  # the database is newer than this code


async def test_job_round_trip_with_inputs(store: Storage, clock: Clock) -> None:
    stored = await store.create_job(job("j1"), b"original-bytes", b"mask-bytes")
    assert stored.created_at == stored.updated_at == T0
    assert await store.get_job("j1") == stored
    assert await store.load_inputs("j1") == (b"original-bytes", b"mask-bytes")
    await store.create_job(job("j2", guild_id=None), b"x", None)
    assert await store.load_inputs("j2") == (b"x", None)
    dm = await store.get_job("j2")
    assert dm is not None and dm.guild_id is None
    assert await store.get_job("nope") is None and await store.load_inputs("nope") is None


async def test_create_job_is_one_transaction(store: Storage) -> None:
    await store.create_job(job("j1"), b"first", None)
    with pytest.raises(db.IntegrityError):
        await store.create_job(job("j1"), b"second", None)
    assert await store.load_inputs("j1") == (b"first", None)
    # The failed insert left no transaction open.
    await store.create_job(job("j2"), b"ok", None)


async def test_upgrade_from_the_first_schema_keeps_jobs_and_their_meaning(database_target: str | Path) -> None:
    """A database written by the first version: running jobs stay resumable, a create in flight is never resent,
    finished jobs count as delivered, inputs survive the table rebuild."""
    first = [m for m in load_migrations() if m.version == 1]
    async with await Storage.open(database_target, migrations=first) as old, old._transaction():
        for job_id, status, handle in (("run", "running", '{"provider": "bfl", "job_id": "x"}'),
                                       ("sent", "starting", None), ("done", "succeeded", None)):
            await old._execute(
                "INSERT INTO jobs (id, kind, user_id, channel_id, provider, model, status, handle, request, prompt, "
                "application_id, created_at, updated_at, finished_at) VALUES (?, 'fill', 1, 2, 'bfl', 'm', ?, ?, "
                "'{}', 'p', 3, 10, 11, 12)", (job_id, status, handle))
            await old._execute("INSERT INTO job_inputs (job_id, original) VALUES (?, ?)", (job_id, b"\x01"))
    async with await Storage.open(database_target) as storage:
        run, sent, done = [await storage.get_job(j) for j in ("run", "sent", "done")]
        assert run is not None and run.state is State.RUNNING and run.delivered_at is None
        assert sent is not None and sent.state is State.SUBMITTING  # it may exist: never submitted again
        assert done is not None and done.delivered_at == 12
        assert await storage.load_inputs("run") == (b"\x01", None)


async def test_the_owner_moves_a_job_forward_only(store: Storage, clock: Clock) -> None:
    await store.create_job(job("j1", status="preparing"))
    await store.queue_job("j1", "me", b"img", b"mask", ["note"])
    queued = await store.get_job("j1")
    assert queued is not None and queued.state is State.QUEUED and queued.notices == ("note",)
    assert await store.load_inputs("j1") == (b"img", b"mask")
    clock.advance(5)
    await store.move_job("j1", "me", State.SUBMITTING)
    running = await store.move_job("j1", "me", State.RUNNING, handle='{"provider": "bfl", "job_id": "x"}')
    assert (running.state, running.updated_at, running.finished_at) == (State.RUNNING, T0 + 5, None)
    with pytest.raises(IllegalMove):
        await store.move_job("j1", "me", State.QUEUED)  # a stale update never moves a job back
    with pytest.raises(NotOwner):
        await store.move_job("j1", "another process", State.FAILED)
    clock.advance(10)
    await store.store_outputs("j1", "me", [(b"out-1", False), (b"out-2", True)])
    done = await store.get_job("j1")
    assert done is not None and done.state is State.SUCCEEDED and done.finished_at == T0 + 15
    assert done.delivered_at is None and done.interaction_token == "tok"  # still needed to show it
    assert await store.load_outputs("j1") == [(b"out-1", False), (b"out-2", True)]
    with pytest.raises(IllegalMove):
        await store.move_job("j1", "me", State.FAILED)  # outcomes are final
    outputs = (OutputMeta("fill-1.png", 512, 384, False, 1234),)
    await store.mark_delivered("j1", "me", outputs=outputs)
    shown = await store.get_job("j1")
    assert shown is not None and shown.delivered_at == T0 + 15 and shown.outputs == outputs
    assert shown.interaction_token is None and shown.lease_until is None
    assert await store.load_outputs("j1") == []  # the outputs were only kept until delivery
    assert await store.load_inputs("j1") == (b"img", b"mask")  # Rerun still works


async def test_update_job_only_changes_what_front_ends_own(store: Storage) -> None:
    await store.create_job(job("j1"), b"img", None)
    for field in ("user_id", "status", "handle", "outputs"):
        with pytest.raises(TypeError, match=field):
            await store.update_job("j1", **{field: "x"})
    with pytest.raises(TypeError):
        await store.update_job("j1", reply_message_id="555")
    updated = await store.update_job("j1", reply_message_id=555)
    assert updated is not None and updated.reply_message_id == 555 and updated.status == "queued"


async def test_leases_decide_who_runs_a_job(store: Storage, clock: Clock) -> None:
    await store.create_job(job("mine", lease_until=T0 + 30))
    await store.create_job(job("orphan", owner="dead", lease_until=T0 - 1))
    await store.create_job(job("done", status="succeeded"))
    assert [j.id for j in await store.claimable_jobs("discord")] == ["orphan"]
    assert await store.claim_job("mine", "other", T0 + 60) is None  # its owner keeps renewing
    taken = await store.claim_job("orphan", "other", T0 + 60)
    assert taken is not None and taken.owner == "other"
    assert await store.claim_job("orphan", "third", T0 + 60) is None  # only one process gets it
    assert await store.renew_leases("me", ["mine", "orphan"], T0 + 90) == {"mine"}
    assert await store.active_jobs(1) == 2
    clock.advance(100)  # every owner stopped renewing: their jobs hold no slot until taken over
    assert await store.active_jobs(1) == 0
    await store.release_jobs("other", ["orphan"])
    assert [j.id for j in await store.claimable_jobs("discord")] == ["mine", "orphan"]
    assert await store.claimable_jobs("cli") == []


async def test_cancel_requests_reach_whoever_runs_the_job(store: Storage) -> None:
    await store.create_job(job("j1"))
    await store.create_job(job("ended", status="failed"))
    assert not await store.cancel_requested("j1")
    assert await store.request_cancel("j1")
    assert await store.cancel_requested("j1")
    assert not await store.request_cancel("ended")


async def test_counts_for_quotas(store: Storage, clock: Clock) -> None:
    await store.create_job(job("a", status="succeeded"), b"i", None)
    clock.advance(10)
    await store.create_job(job("b", status="failed"), b"i", None)  # not counted: not the user's doing
    await store.create_job(job("c", guild_id=11), b"i", None)
    await store.create_job(job("d", user_id=2), b"i", None)
    assert await store.count_jobs(user_id=1, guild_id=10, since=T0) == 1
    assert await store.count_jobs(user_id=1, since=T0) == 2
    assert await store.count_jobs(guild_id=10, since=T0) == 2
    assert await store.count_jobs(guild_id=10, since=T0 + 1) == 1
    assert await store.count_jobs(user_id=1, since=T0, statuses=("failed",)) == 1
    assert await store.job_times(user_id=1, since=T0) == [T0, T0 + 10]


async def test_erase_user_history(store: Storage, clock: Clock) -> None:
    await store.create_job(job("old", status="succeeded"), b"i", None)
    clock.advance(2 * DAY)
    await store.create_job(job("recent", status="succeeded"), b"i", b"m")
    await store.create_job(job("running", status="running"), b"i", None)
    await store.create_job(job("theirs", user_id=2, status="succeeded"), b"i", None)

    assert await store.erase_user_history(1) == 2
    assert await store.get_job("old") is None and await store.get_job("recent") is None
    assert await store.load_inputs("recent") is None
    assert [j.id for j in await store.recent_jobs(1)] == ["running"]  # kept until it ends
    assert await store.load_inputs("running") == (b"i", None)
    assert await store.get_job("theirs") is not None
    # Erasing history must not reset the daily quota: today's job still counts.
    assert await store.count_jobs(user_id=1, since=clock.now - DAY) == 2
    assert await store.erase_user_history(1) == 0
    # The content-free row leaves once the quota window has passed.
    clock.advance(DAY + 1)
    await store.purge(30)
    assert await store.count_jobs(user_id=1, since=0) == 1  # only the running job remains


async def test_purge_by_age(store: Storage, clock: Clock) -> None:
    await store.create_job(job("ancient", status="succeeded"), b"i", None)
    await store.create_job(job("stuck", status="running"), b"i", None)
    clock.advance(10 * DAY)
    await store.create_job(job("week-old", status="succeeded"), b"i", None)
    clock.advance(8 * DAY)
    await store.create_job(job("fresh", status="moderated"), b"i", None)

    assert await store.purge(14) == 1  # "ancient" ended 18 days ago
    assert await store.get_job("ancient") is None
    assert await store.get_job("stuck") is not None  # unfinished jobs are never purged
    assert await store.load_inputs("stuck") is not None
    # Inputs of finished jobs go after 7 days even though the job stays for 14.
    assert await store.get_job("week-old") is not None
    assert await store.load_inputs("week-old") is None
    assert await store.load_inputs("fresh") is not None
    with pytest.raises(ValueError):
        await store.purge(0)


async def test_a_write_cancelled_as_it_begins_leaves_no_transaction_open(store: Storage) -> None:
    """A task cancelled while its transaction begins (a shutdown, a job dropped) must not leave the connection
    inside a transaction: the next write would fail ("cannot start a transaction within a transaction")."""
    await store.create_job(job("j1"))
    for _ in range(50):
        doomed = asyncio.create_task(store.release_jobs("me", ["j1"]))
        await asyncio.sleep(0)  # it has queued its BEGIN
        doomed.cancel()
        await store.renew_leases("me", ["j1"], T0 + 60)  # the next write goes through
    assert (await store.get_job("j1")).lease_until == T0 + 60  # type: ignore[union-attr]
