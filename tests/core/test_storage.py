"""Storage: migrations, the job lifecycle, history erasure and purging, with an injected clock."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.storage import JobRecord, Migration, OutputMeta, Storage, load_migrations

DAY = 86_400.0
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def job(job_id: str, *, user_id: int = 1, guild_id: int | None = 10, status: str = "queued") -> JobRecord:
    return JobRecord(
        id=job_id, kind="fill", user_id=user_id, guild_id=guild_id, channel_id=100, provider="bfl",
        model="flux-pro-1.0-fill", request='{"prompt": "a cat"}', prompt="a cat", application_id=999,
        status=status, interaction_token="tok", token_expires_at=T0 + 900,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(clock: Clock) -> AsyncIterator[Storage]:
    async with await Storage.open(":memory:", clock=clock) as storage:
        yield storage


async def test_migrations_apply_once_and_reopen_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "bot.db"  # the folder does not exist yet
    async with await Storage.open(path) as storage:
        assert await storage.applied_migrations() == [1]
        await storage.create_job(job("j1"), b"img", None)
    async with await Storage.open(path) as storage:
        assert await storage.applied_migrations() == [1]
        assert (await storage.get_job("j1")) is not None
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == 1


async def test_new_migration_applies_on_reopen_and_a_failing_one_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    base = load_migrations()
    assert [(m.version, m.name) for m in base] == [(1, "initial")]
    async with await Storage.open(path):  # first start: 001 only
        pass
    extra = Migration(2, "notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); -- a; comment\n"
                                  "INSERT INTO notes (body) VALUES ('x;y');")
    async with await Storage.open(path, migrations=(*base, extra)) as storage:
        assert await storage.applied_migrations() == [1, 2]
    broken = Migration(3, "broken", "CREATE TABLE half (id INTEGER); INSERT INTO missing VALUES (1);")
    with pytest.raises(sqlite3.OperationalError):
        await Storage.open(path, migrations=(*base, extra, broken))
    with sqlite3.connect(path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "half" not in tables  # the whole migration rolled back
        assert raw.execute("SELECT body FROM notes").fetchone()[0] == "x;y"
    with pytest.raises(RuntimeError, match="does not know"):
        await Storage.open(path, migrations=base)  # the database is newer than this code


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
    with pytest.raises(sqlite3.IntegrityError):
        await store.create_job(job("j1"), b"second", None)
    assert await store.load_inputs("j1") == (b"first", None)
    # The failed insert left no transaction open.
    await store.create_job(job("j2"), b"ok", None)


async def test_update_job_lifecycle(store: Storage, clock: Clock) -> None:
    await store.create_job(job("j1"), b"img", None)
    clock.advance(5)
    running = await store.update_job("j1", status="running", handle='{"provider": "bfl", "job_id": "x"}')
    assert running is not None
    assert (running.status, running.updated_at, running.finished_at) == ("running", T0 + 5, None)
    assert running.interaction_token == "tok"
    clock.advance(10)
    outputs = (OutputMeta("fill-1.png", 512, 384, False, 1234), OutputMeta("fill-2.png", 512, 384, True, 99))
    done = await store.update_job("j1", status="succeeded", outputs=outputs, seed=42, reply_message_id=555)
    assert done is not None
    assert done.outputs == outputs and done.seed == 42 and done.reply_message_id == 555
    assert done.finished_at == T0 + 15 and done.interaction_token is None  # token cleared when the job ends
    assert done.finished
    clock.advance(1)
    late = await store.update_job("j1", status="running")  # a late poll after the end
    assert late is not None and late.status == "succeeded" and late.finished_at == T0 + 15
    assert await store.update_job("missing", status="failed") is None


async def test_update_job_refuses_unknown_columns_and_bad_values(store: Storage) -> None:
    await store.create_job(job("j1"), b"img", None)
    with pytest.raises(TypeError, match="user_id"):
        await store.update_job("j1", user_id=2)
    with pytest.raises(ValueError, match="status"):
        await store.update_job("j1", status="exploded")
    with pytest.raises(TypeError):
        await store.update_job("j1", outputs=[{"filename": "x"}])
    with pytest.raises(TypeError):
        await store.update_job("j1", reply_message_id="555")
    unchanged = await store.get_job("j1")
    assert unchanged is not None and unchanged.status == "queued"


async def test_unfinished_and_recent_jobs(store: Storage, clock: Clock) -> None:
    for n, status in enumerate(["running", "succeeded", "queued", "starting", "failed"]):
        await store.create_job(job(f"j{n}", status=status), b"img", None)
        clock.advance(1)
    await store.create_job(job("other", user_id=2), b"img", None)
    assert [j.id for j in await store.unfinished_jobs()] == ["j0", "j2", "j3", "other"]
    assert [j.id for j in await store.recent_jobs(1, limit=3)] == ["j4", "j3", "j2"]
    assert await store.active_jobs(1) == 3
    assert await store.active_jobs(2) == 1


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
    await store.create_job(job("fresh", status="queued"), b"i", None)
    fresh = await store.update_job("fresh", status="moderated")
    assert fresh is not None

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
