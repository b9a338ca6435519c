"""Persistence: jobs (recorded before they are submitted, so they survive a restart), their inputs, and
per-server moderation settings, overrides, blocked terms and the audit log of every moderator change.

Every query is written once, here, in SQL that SQLite and PostgreSQL both accept, with `?` placeholders; the
backend (`bot.db`: SQLite by default, PostgreSQL for a `postgresql://` URL) runs it. Writes that belong together
run in one transaction (`_transaction`); read-then-write transactions take `_lock_in_transaction` on what they
decide about, so that on PostgreSQL (whose transactions run side by side) they stay as exclusive as SQLite's
`BEGIN IMMEDIATE` ones. The per-server caches are dropped across processes by a notification on every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, cast

from bot import db
from bot.guild_settings import (
    MAX_TERMS_PER_GUILD,
    SETTING_NAMES,
    AuditEntry,
    BlockedTerm,
    ChannelOverride,
    GuildSettings,
    SettingsError,
    apply_changes,
    check_override_safety,
    check_term,
    format_value,
    settings_from_stored,
    term_key,
)
from bot.lifecycle.states import State, check_move
from bot.params import Operation

log = logging.getLogger(__name__)

JOB_STATUSES: tuple[str, ...] = tuple(s.value for s in State)
ACTIVE_STATUSES: tuple[str, ...] = tuple(s.value for s in State if not s.terminal)
FINISHED_STATUSES: tuple[str, ...] = tuple(s.value for s in State if s.terminal)
# Jobs admitted but not yet sent to a provider: what the operator's queue caps count.
WAITING_STATUSES: tuple[str, ...] = (State.PREPARING.value, State.QUEUED.value)
Front = Literal["discord", "cli"]
# Jobs that use up a daily quota: everything except failures that were the provider's or ours.
QUOTA_STATUSES: tuple[str, ...] = tuple(s for s in JOB_STATUSES if s not in ("failed", "timed_out"))
QUOTA_WINDOW_SECONDS = 86_400.0  # quotas are per rolling 24 hours
INPUT_RETENTION_DAYS = 7  # user-uploaded pictures are the heaviest and most personal data: keep them briefly

_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(package: str = "bot.migrations") -> tuple[Migration, ...]:
    """The package's `NNN_name.sql` files in version order; a repeated number is a packaging mistake."""
    found: list[Migration] = []
    for entry in resources.files(package).iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise RuntimeError(f"migration file {entry.name!r} is not named NNN_name.sql")
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number in {package}: {versions}")
    return tuple(found)


def _statements(sql: str) -> Iterator[str]:
    """Split a script into statements (sqlite3's own tokenizer decides where one ends), so a migration can run
    inside our transaction; `executescript` would commit it halfway."""
    buffer = ""
    for piece in re.split(r"(?<=;)", sql):
        buffer += piece
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


_HEAD_BYTES = 16  # enough of the original to tell its kind (`sniff_format`) without reading it all


class SentPictures(NamedTuple):
    """A job's pictures as they go to the provider, and the first bytes of the user's original (its kind picks
    the result format to ask for)."""

    image: bytes
    mask: bytes | None
    original_head: bytes


@dataclass(frozen=True)
class OutputMeta:
    """One delivered image, as stored in `jobs.outputs`."""

    filename: str
    width: int
    height: int
    flagged: bool = False
    bytes: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "filename": self.filename, "width": self.width, "height": self.height,
            "flagged": self.flagged, "bytes": self.bytes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputMeta:
        return cls(
            filename=str(data["filename"]), width=int(data["width"]), height=int(data["height"]),
            flagged=bool(data.get("flagged", False)), bytes=int(data.get("bytes", 0)),
        )


@dataclass(frozen=True)
class JobRecord:
    """One row of `jobs`. `request` and `handle` stay JSON text: their owners (params, providers) decode them."""

    id: str
    kind: Operation
    user_id: int
    guild_id: int | None
    channel_id: int
    provider: str
    model: str
    request: str
    prompt: str
    application_id: int
    status: str = "queued"
    handle: str | None = None
    interaction_token: str | None = None
    token_expires_at: float | None = None
    reply_message_id: int | None = None
    outputs: tuple[OutputMeta, ...] = ()
    seed: int | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    channel_nsfw: bool = False
    front: Front = "discord"
    notices: tuple[str, ...] = ()
    owner: str | None = None
    lease_until: float | None = None
    cancel_requested_at: float | None = None
    delivered_at: float | None = None

    @property
    def state(self) -> State:
        return State(self.status)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


_JOB_COLUMNS = (
    "id", "kind", "user_id", "guild_id", "channel_id", "provider", "model", "status", "handle", "request", "prompt",
    "application_id", "interaction_token", "token_expires_at", "reply_message_id", "outputs", "seed", "error",
    "created_at", "updated_at", "finished_at", "channel_nsfw", "front", "notices", "owner", "lease_until",
    "cancel_requested_at", "delivered_at",
)
_SELECT_JOB = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"


def _encode_outputs(outputs: Iterable[OutputMeta]) -> str:
    return json.dumps([o.to_dict() for o in outputs])


def _job_from_row(row: db.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], kind=cast(Operation, row["kind"]), user_id=row["user_id"], guild_id=row["guild_id"],
        channel_id=row["channel_id"], provider=row["provider"], model=row["model"], request=row["request"],
        prompt=row["prompt"], application_id=row["application_id"], status=row["status"], handle=row["handle"],
        interaction_token=row["interaction_token"], token_expires_at=row["token_expires_at"],
        reply_message_id=row["reply_message_id"],
        outputs=tuple(OutputMeta.from_dict(o) for o in json.loads(row["outputs"])),
        seed=row["seed"], error=row["error"], created_at=row["created_at"], updated_at=row["updated_at"],
        finished_at=row["finished_at"], channel_nsfw=bool(row["channel_nsfw"]), front=row["front"],
        notices=tuple(str(n) for n in json.loads(row["notices"])), owner=row["owner"], lease_until=row["lease_until"],
        cancel_requested_at=row["cancel_requested_at"], delivered_at=row["delivered_at"],
    )


def _optional(kind: type | tuple[type, ...], name: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise TypeError(f"update_job: {name} must be {kind} or None, not {value!r}")
        return value

    return check


# Columns a front end may change with update_job. Status, handle, outputs and delivery belong to the lifecycle
# and change only through `move_job`, `store_outputs` and `mark_delivered`, fenced by the job's owner.
_UPDATABLE: dict[str, Callable[[object], object]] = {
    "reply_message_id": _optional(int, "reply_message_id"),
    "interaction_token": _optional(str, "interaction_token"),
}


class NotOwner(Exception):
    """The job is gone or another process owns it now: the caller must stop working on it."""


def _placeholders(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


# Notified with a guild id whenever that server's settings, overrides or blocked terms change (db.MISSED: maybe
# several changed), so every process drops what it cached.
GUILD_CACHE_CHANNEL = "fillbot_guild_cache"


class Storage:
    """The bot's database. Open with `await Storage.open(target)` (or `async with await Storage.open(...)`)."""

    def __init__(self, backend: db.Backend, *, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        self._clock = clock
        self._lock = backend.lock
        self._settings: dict[int, GuildSettings] = {}
        self._overrides: dict[int, dict[int, ChannelOverride]] = {}
        self._terms: dict[int, tuple[BlockedTerm, ...]] = {}
        # Bumped on every invalidation: a read that began before one does not fill the cache with what it saw.
        self._cache_epoch = 0
        self._key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @property
    def dialect(self) -> db.Dialect:
        return self._backend.dialect

    @classmethod
    async def open(
        cls,
        target: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[Migration] | None = None,
        busy_timeout: float = 5.0,
    ) -> Storage:
        """Open a SQLite file (created with its folder on first start) or a `postgresql://` URL, and bring the
        schema up to date.

        `busy_timeout`: how long one statement waits for a lock another process holds before it fails (outside
        `serialized`, whose blocks wait for each other as long as it takes)."""
        backend = await db.connect(target, busy_timeout=busy_timeout)
        storage = cls(backend, clock=clock)
        try:
            backend.subscribe(GUILD_CACHE_CHANNEL, storage._guild_changed)
            await backend.listening()
            await storage._migrate(load_migrations() if migrations is None else migrations)
        except BaseException:
            await backend.close()
            raise
        return storage

    async def close(self) -> None:
        await self._backend.close()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- plumbing -------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """Statements this task runs inside go into one transaction, committed on a clean exit."""
        async with self._backend.transaction():
            yield

    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[db.Row]:
        async with self._lock:
            return await self._rows_unlocked(sql, params)

    async def _rows_unlocked(self, sql: str, params: Sequence[object] = ()) -> list[db.Row]:
        return await self._backend.rows(sql, params)

    async def _execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement (inside a transaction); return how many rows it changed."""
        return await self._backend.execute(sql, params)

    async def _lock_in_transaction(self, key: str) -> None:
        """Inside `_transaction()`: wait until no other transaction, in any process, holds `key`; hold it until
        commit. PostgreSQL: an advisory transaction lock. SQLite: nothing (BEGIN IMMEDIATE is already exclusive)."""
        await self._backend.lock_in_transaction(key)

    @contextlib.asynccontextmanager
    async def serialized(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Run the block alone for each of `keys`: one task at a time in this process and, on PostgreSQL, one
        process at a time (advisory session locks), for checks made with separate reads before a write (e.g.
        counting a person's jobs, then `create_job`). Keys are taken in sorted order, so two blocks never deadlock.
        """
        ordered = sorted(set(keys))
        async with contextlib.AsyncExitStack() as stack:
            for key in ordered:
                lock = self._key_locks.get(key)
                if lock is None:
                    lock = self._key_locks[key] = asyncio.Lock()
                await stack.enter_async_context(lock)
            await stack.enter_async_context(self._backend.session_locks(ordered))
            yield

    async def notify(self, channel: str, payload: str) -> None:
        """Tell every process subscribed to `channel` (SQLite: this process only). Sent inside a transaction, it
        arrives when that commits, and never if it rolls back."""
        await self._backend.notify(channel, payload)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call `callback(payload)` on the event loop for each notification on `channel`; `db.MISSED` ("") means
        some may have been lost (the connection dropped), so anything derived from them should be dropped."""
        self._backend.subscribe(channel, callback)

    async def _migrate(self, migrations: Sequence[Migration]) -> None:
        # One process at a time: two starting at once must not both create the same table.
        async with self.serialized(["schema_migrations"]):
            async with self._transaction():
                await self._execute(self._backend.migration_sql(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                ))
            known = {m.version for m in migrations}
            newer = [r["version"] for r in await self._rows("SELECT version FROM schema_migrations")
                     if r["version"] not in known]
            if newer:
                raise RuntimeError(f"the database has migrations this version does not know: {sorted(newer)}")
            async with self._backend.migrating():
                await self._apply(migrations)

    async def _apply(self, migrations: Sequence[Migration]) -> None:
        for migration in migrations:
            async with self._transaction():
                # Checked inside the transaction, so two processes starting at once apply it once.
                if await self._rows_unlocked("SELECT 1 FROM schema_migrations WHERE version = ?",
                                             (migration.version,)):
                    continue
                log.info("applying migration %03d_%s", migration.version, migration.name)
                for statement in _statements(migration.sql):
                    await self._execute(self._backend.migration_sql(statement))
                await self._execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, self._clock()),
                )

    async def applied_migrations(self) -> list[int]:
        return [r["version"] for r in await self._rows("SELECT version FROM schema_migrations ORDER BY version")]

    # -- jobs -----------------------------------------------------------------------------------------------
    # The lifecycle (bot/lifecycle) is the only writer of a job's status, handle, outputs and delivery; every
    # such write names the owner and changes nothing if another process has taken the job over.

    async def create_job(
        self, record: JobRecord, inputs_original: bytes | None = None, inputs_mask: bytes | None = None
    ) -> JobRecord:
        """Record a job (and optionally its inputs) in one transaction; `created_at`/`updated_at` are stamped."""
        now = self._clock()
        stored = replace(record, created_at=now, updated_at=now)
        # Flags are stored as 0/1 (SQLite has no boolean type; PostgreSQL will not take a bool for a number).
        values = [int(v) if isinstance(v, bool) else v for v in (getattr(stored, c) for c in _JOB_COLUMNS)]
        values[_JOB_COLUMNS.index("outputs")] = _encode_outputs(stored.outputs)
        values[_JOB_COLUMNS.index("notices")] = json.dumps(list(stored.notices))
        async with self._transaction():
            await self._execute(
                f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES ({_placeholders(values)})", values
            )
            if inputs_original is not None:
                await self._execute(
                    "INSERT INTO job_inputs (job_id, original, mask) VALUES (?, ?, ?)",
                    (stored.id, inputs_original, inputs_mask),
                )
        return stored

    async def discard_job(self, job_id: str) -> None:
        """Forget a job that never started (its pictures were refused): it must not count toward limits."""
        async with self._transaction():
            await self._execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    async def _owned(self, job_id: str, owner: str) -> JobRecord:
        """The job, if `owner` holds it; the job stays locked until the transaction ends (see `claim_job`)."""
        await self._lock_in_transaction(f"job:{job_id}")
        current = await self._job_unlocked(job_id)
        if current is None or current.owner != owner:
            raise NotOwner(job_id)
        return current

    async def queue_job(
        self, job_id: str, owner: str, original: bytes, mask: bytes | None, notices: Sequence[str],
        *, sent: tuple[bytes, bytes | None] | None = None, hand_off: bool = False,
    ) -> None:
        """Store the prepared pictures (`sent`: as they go to the provider) and move the job from `preparing` to
        `queued`, together. `hand_off` gives up the lease in the same step, for a job worker to claim."""
        sent_image, sent_mask = sent if sent is not None else (None, None)
        async with self._transaction():
            current = await self._owned(job_id, owner)
            check_move(current.state, State.QUEUED)
            await self._execute(
                "INSERT INTO job_inputs (job_id, original, mask, sent_image, sent_mask) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET original = excluded.original, mask = excluded.mask, "
                "sent_image = excluded.sent_image, sent_mask = excluded.sent_mask",
                (job_id, original, mask, sent_image, sent_mask),
            )
            # No owner and no lease: waiting for a worker, and counted by every limit meanwhile (a lapsed lease
            # would mean a dead process, whose jobs count only once taken over).
            release = ", owner = NULL, lease_until = NULL" if hand_off else ""
            await self._execute(
                f"UPDATE jobs SET status = ?, notices = ?, updated_at = ?{release} WHERE id = ?",
                (State.QUEUED.value, json.dumps(list(notices)), self._clock(), job_id),
            )

    async def move_job(
        self, job_id: str, owner: str, state: State, *, handle: str | None = None, error: str | None = None
    ) -> JobRecord:
        """Move a job along the state machine. A move it does not allow (a stale update) changes nothing and
        returns the job as it is; NotOwner if another process owns the job now."""
        async with self._transaction():
            current = await self._owned(job_id, owner)
            if state is current.state and handle is None:
                return current
            if state is not current.state:
                check_move(current.state, state)
            now = self._clock()
            values: dict[str, object] = {"status": state.value, "updated_at": now}
            if handle is not None:
                values["handle"] = handle
            if error is not None:
                values["error"] = error
            if state.terminal:
                values["finished_at"] = now
            assignments = ", ".join(f"{name} = ?" for name in values)
            await self._execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id])
            return await self._owned(job_id, owner)

    async def store_outputs(self, job_id: str, owner: str, files: Sequence[tuple[bytes, bool]]) -> None:
        """Keep the downloaded provider outputs and mark the job `succeeded`, together: from here a restart
        finishes and delivers them without asking the provider again."""
        async with self._transaction():
            current = await self._owned(job_id, owner)
            check_move(current.state, State.SUCCEEDED)
            await self._execute("DELETE FROM job_outputs WHERE job_id = ?", (job_id,))
            for index, (data, flagged) in enumerate(files):
                await self._execute(
                    "INSERT INTO job_outputs (job_id, idx, data, flagged) VALUES (?, ?, ?, ?)",
                    (job_id, index, data, int(flagged)),
                )
            now = self._clock()
            await self._execute(
                "UPDATE jobs SET status = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                (State.SUCCEEDED.value, now, now, job_id),
            )

    async def load_outputs(self, job_id: str) -> list[tuple[bytes, bool]]:
        rows = await self._rows("SELECT data, flagged FROM job_outputs WHERE job_id = ? ORDER BY idx", (job_id,))
        return [(bytes(r["data"]), bool(r["flagged"])) for r in rows]

    async def mark_delivered(
        self, job_id: str, owner: str, *, outputs: Sequence[OutputMeta] = (), error: str | None = None
    ) -> None:
        """The front end showed the outcome: forget the token and the outputs; the job needs no lease any more."""
        async with self._transaction():
            await self._owned(job_id, owner)
            now = self._clock()
            await self._execute(
                "UPDATE jobs SET delivered_at = ?, interaction_token = NULL, outputs = ?, "
                "error = COALESCE(?, error), lease_until = NULL, updated_at = ? WHERE id = ?",
                (now, _encode_outputs(outputs), error, now, job_id),
            )
            await self._execute("DELETE FROM job_outputs WHERE job_id = ?", (job_id,))
            await self._execute("UPDATE job_inputs SET sent_image = NULL, sent_mask = NULL WHERE job_id = ?",
                                (job_id,))

    async def claim_job(self, job_id: str, owner: str, lease_until: float) -> JobRecord | None:
        """Take an undelivered job whose owner's lease ran out (or that has none); None if someone holds it."""
        async with self._transaction():
            await self._lock_in_transaction(f"job:{job_id}")  # an owner's write in progress finishes first
            changed = await self._execute(
                "UPDATE jobs SET owner = ?, lease_until = ? WHERE id = ? AND delivered_at IS NULL "
                "AND erased_at IS NULL AND (owner IS NULL OR owner = ? OR lease_until IS NULL OR lease_until < ?)",
                (owner, lease_until, job_id, owner, self._clock()),
            )
            return await self._job_unlocked(job_id) if changed else None

    async def claimable_jobs(self, front: Front, limit: int = 100, *, queued: bool = True) -> list[JobRecord]:
        """Undelivered jobs nobody holds a lease on, oldest first. `queued=False` leaves out the jobs still
        waiting for a provider slot: job workers take those through `claim_next_queued`, which keeps the
        provider limits."""
        skip = "" if queued else f"AND status <> '{State.QUEUED.value}' "
        rows = await self._rows(
            f"{_SELECT_JOB} WHERE front = ? AND delivered_at IS NULL AND erased_at IS NULL {skip}"
            "AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?) ORDER BY created_at, id LIMIT ?",
            (front, self._clock(), limit),
        )
        return [_job_from_row(r) for r in rows]

    async def handles_in_flight(self) -> list[str]:
        """The provider handles (JSON) of the undelivered jobs a provider has, whoever runs them."""
        rows = await self._rows(
            "SELECT handle FROM jobs WHERE delivered_at IS NULL AND erased_at IS NULL AND handle IS NOT NULL"
        )
        return [str(r["handle"]) for r in rows]

    async def claim_next_queued(
        self, front: Front, owner: str, lease_until: float, capacity: Mapping[str, int]
    ) -> JobRecord | None:
        """Claim the queued job to send next, across every process: only for a provider with a free slot
        (`capacity`: each provider account's limit), fairly (the server with the fewest jobs at that provider
        first, then the member with the fewest, then the oldest), and canceled ones first, whatever the
        provider's load (they end without being sent). None when nothing may go now.

        A job holds its provider slot from its claim (a queued job with a live lease: about to be sent) until it
        ends; a job the provider has counts even when its process died (the provider is still running it). The
        count and the pick must be one step, which row locks alone cannot give (two processes could each lock a
        different row and both see room), so claims take one dispatch lock: on PostgreSQL an advisory lock, on
        SQLite the write lock every transaction takes anyway."""
        now = self._clock()
        sent = ", ".join(f"'{s.value}'" for s in (State.SUBMITTING, State.STARTING, State.RUNNING))
        holds_slot = (f"(a.status IN ({sent}) OR (a.status = '{State.QUEUED.value}' AND a.owner IS NOT NULL "
                      "AND a.lease_until >= ?))")
        async with self._transaction():
            await self._lock_in_transaction("dispatch")
            busy = {r["provider"]: int(r["n"]) for r in await self._rows_unlocked(
                f"SELECT a.provider, COUNT(*) AS n FROM jobs a WHERE {holds_slot} GROUP BY a.provider", (now,))}
            free = [name for name, limit in capacity.items() if busy.get(name, 0) < limit]
            rooms = f"j.provider IN ({_placeholders(free)}) OR " if free else ""
            same_server = ("((j.guild_id IS NOT NULL AND a.guild_id = j.guild_id) OR "
                           "(j.guild_id IS NULL AND a.guild_id IS NULL AND a.user_id = j.user_id))")
            rows = await self._rows_unlocked(
                f"{_SELECT_JOB} j WHERE j.front = ? AND j.status = '{State.QUEUED.value}' "
                "AND j.delivered_at IS NULL AND j.erased_at IS NULL "
                "AND (j.owner IS NULL OR j.lease_until IS NULL OR j.lease_until < ?) "
                f"AND ({rooms}j.cancel_requested_at IS NOT NULL) "
                "ORDER BY CASE WHEN j.cancel_requested_at IS NULL THEN 1 ELSE 0 END, "
                f"(SELECT COUNT(*) FROM jobs a WHERE a.provider = j.provider AND {holds_slot} AND {same_server}), "
                f"(SELECT COUNT(*) FROM jobs a WHERE a.provider = j.provider AND {holds_slot} "
                "AND a.user_id = j.user_id), j.created_at, j.id LIMIT 1",
                (front, now, *free, now, now),
            )
            if not rows:
                return None
            job_id = rows[0]["id"]
            await self._execute("UPDATE jobs SET owner = ?, lease_until = ? WHERE id = ?", (owner, lease_until, job_id))
            return await self._job_unlocked(job_id)

    async def renew_leases(self, owner: str, job_ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend this owner's leases; returns the ids it still owns (a job missing here was taken over)."""
        if not job_ids:
            return set()
        async with self._transaction():
            await self._execute(
                f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND id IN ({_placeholders(job_ids)})",
                (lease_until, owner, *job_ids),
            )
            rows = await self._rows_unlocked(
                f"SELECT id FROM jobs WHERE owner = ? AND id IN ({_placeholders(job_ids)})", (owner, *job_ids)
            )
        return {r["id"] for r in rows}

    async def release_jobs(self, owner: str, job_ids: Sequence[str]) -> None:
        """Let another process (or a later attempt) take these jobs at once."""
        if not job_ids:
            return
        async with self._transaction():
            await self._execute(
                f"UPDATE jobs SET lease_until = 0 WHERE owner = ? AND id IN ({_placeholders(job_ids)})",
                (owner, *job_ids),
            )

    async def request_cancel(self, job_id: str) -> bool:
        """Leave a cancel request for whichever process runs the job; False if it already ended."""
        async with self._transaction():
            changed = await self._execute(
                "UPDATE jobs SET cancel_requested_at = ? "
                f"WHERE id = ? AND status IN ({_placeholders(ACTIVE_STATUSES)})",
                (self._clock(), job_id, *ACTIVE_STATUSES),
            )
        return changed > 0

    async def cancel_requested(self, job_id: str) -> bool:
        rows = await self._rows("SELECT cancel_requested_at FROM jobs WHERE id = ?", (job_id,))
        return bool(rows) and rows[0][0] is not None

    async def update_job(self, job_id: str, **fields: object) -> JobRecord | None:
        """Change what a front end owns (`reply_message_id`, `interaction_token`); None if the job is gone."""
        unknown = sorted(set(fields) - set(_UPDATABLE))
        if unknown:
            raise TypeError(f"update_job cannot change {', '.join(unknown)}")
        values = {name: _UPDATABLE[name](value) for name, value in fields.items()}
        values["updated_at"] = self._clock()
        async with self._transaction():
            assignments = ", ".join(f"{name} = ?" for name in values)
            await self._execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id])
            return await self._job_unlocked(job_id)

    async def _job_unlocked(self, job_id: str) -> JobRecord | None:
        rows = await self._rows_unlocked(f"{_SELECT_JOB} WHERE id = ? AND erased_at IS NULL", (job_id,))
        return _job_from_row(rows[0]) if rows else None

    async def get_job(self, job_id: str) -> JobRecord | None:
        async with self._lock:
            return await self._job_unlocked(job_id)

    async def load_sent(self, job_id: str) -> SentPictures | None:
        """The job's pictures as prepared for the provider, until it is delivered; None if not kept."""
        rows = await self._rows(
            "SELECT sent_image, sent_mask, substr(original, 1, ?) AS head FROM job_inputs WHERE job_id = ?",
            (_HEAD_BYTES, job_id),
        )
        if not rows or rows[0]["sent_image"] is None:
            return None
        mask = rows[0]["sent_mask"]
        return SentPictures(bytes(rows[0]["sent_image"]), None if mask is None else bytes(mask), bytes(rows[0]["head"]))

    async def load_inputs(self, job_id: str) -> tuple[bytes, bytes | None] | None:
        """The job's original picture and mask; None once purged (Rerun then says the inputs are gone)."""
        rows = await self._rows("SELECT original, mask FROM job_inputs WHERE job_id = ?", (job_id,))
        if not rows:
            return None
        mask = rows[0]["mask"]
        return bytes(rows[0]["original"]), None if mask is None else bytes(mask)

    async def recent_jobs(self, user_id: int, limit: int = 10) -> list[JobRecord]:
        rows = await self._rows(
            f"{_SELECT_JOB} WHERE user_id = ? AND erased_at IS NULL ORDER BY created_at DESC, id DESC LIMIT ?",
            (user_id, limit),
        )
        return [_job_from_row(r) for r in rows]

    async def erase_user_history(self, user_id: int) -> int:
        """Erase a person's finished jobs and their inputs; return how many.

        Jobs still running are kept until they end (their inputs are needed to deliver them). Jobs from the last
        24 hours become content-free rows (no prompt, request, outputs or inputs; hidden from every read) until
        the quota window has passed, so erasing history does not reset daily quotas or cooldowns.
        """
        now = self._clock()
        finished = f"user_id = ? AND status IN ({_placeholders(FINISHED_STATUSES)}) AND delivered_at IS NOT NULL"
        params = (user_id, *FINISHED_STATUSES)
        async with self._transaction():
            count_rows = await self._rows_unlocked(f"SELECT COUNT(*) FROM jobs WHERE {finished} AND erased_at IS NULL",
                                                   params)
            await self._execute(f"DELETE FROM jobs WHERE {finished} AND created_at <= ?",
                                (*params, now - QUOTA_WINDOW_SECONDS))
            await self._execute(
                "UPDATE jobs SET prompt = '', request = '{}', handle = NULL, interaction_token = NULL, "
                "reply_message_id = NULL, outputs = '[]', seed = NULL, error = NULL, erased_at = ?, updated_at = ? "
                f"WHERE {finished} AND erased_at IS NULL",
                (now, now, *params),
            )
            await self._execute(
                "DELETE FROM job_inputs WHERE job_id IN "
                "(SELECT id FROM jobs WHERE user_id = ? AND erased_at IS NOT NULL)",
                (user_id,),
            )
        erased = int(count_rows[0][0])
        log.info("erased %d jobs of user %s", erased, user_id)
        return erased

    async def purge(self, older_than_days: int) -> int:
        """Delete finished jobs that ended more than `older_than_days` ago; return how many.

        Inputs (uploaded pictures) go sooner: after min(`older_than_days`, 7) days, after which Rerun and
        Use-as-input are unavailable for that job. Unfinished jobs are never purged; erased rows go after 24 h.
        """
        if older_than_days < 1:
            raise ValueError("purge needs at least one day")
        now = self._clock()
        ended = (f"status IN ({_placeholders(FINISHED_STATUSES)}) AND delivered_at IS NOT NULL "
                 "AND COALESCE(finished_at, updated_at) < ?")
        jobs_cutoff = now - older_than_days * 86_400
        inputs_cutoff = now - min(older_than_days, INPUT_RETENTION_DAYS) * 86_400
        async with self._transaction():
            deleted = await self._execute(f"DELETE FROM jobs WHERE {ended}", (*FINISHED_STATUSES, jobs_cutoff))
            await self._execute(
                "DELETE FROM jobs WHERE erased_at IS NOT NULL AND created_at <= ?", (now - QUOTA_WINDOW_SECONDS,)
            )
            inputs = await self._execute(
                f"DELETE FROM job_inputs WHERE job_id IN (SELECT id FROM jobs WHERE {ended})",
                (*FINISHED_STATUSES, inputs_cutoff),
            )
        log.info("purged %d jobs and the inputs of %d more", deleted, inputs)
        return deleted

    @staticmethod
    def _job_filter(
        user_id: int | None, guild_id: int | None, since: float, statuses: Sequence[str]
    ) -> tuple[str, list[object]]:
        clauses = ["created_at >= ?", f"status IN ({_placeholders(statuses)})"]
        params: list[object] = [since, *statuses]
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(user_id)
        if guild_id is not None:
            clauses.append("guild_id = ?")
            params.append(guild_id)
        return " AND ".join(clauses), params

    async def count_jobs(
        self,
        *,
        user_id: int | None = None,
        guild_id: int | None = None,
        since: float,
        statuses: Sequence[str] = QUOTA_STATUSES,
    ) -> int:
        """Jobs created at or after `since` (None for user/guild = any), erased ones included, for quotas."""
        where, params = self._job_filter(user_id, guild_id, since, statuses)
        rows = await self._rows(f"SELECT COUNT(*) FROM jobs WHERE {where}", params)
        return int(rows[0][0])

    async def job_times(
        self,
        *,
        user_id: int | None = None,
        guild_id: int | None = None,
        since: float,
        statuses: Sequence[str] = QUOTA_STATUSES,
    ) -> list[float]:
        """Creation times of the jobs `count_jobs` counts, oldest first: limits use them to say when to retry."""
        where, params = self._job_filter(user_id, guild_id, since, statuses)
        rows = await self._rows(f"SELECT created_at FROM jobs WHERE {where} ORDER BY created_at", params)
        return [float(r[0]) for r in rows]

    async def active_jobs(self, user_id: int) -> int:
        """A person's queued or running jobs anywhere (they share the same provider capacity). A job whose
        process stopped renewing its lease (crashed, or lost its database) holds no slot until it is taken over."""
        rows = await self._rows(
            f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND status IN ({_placeholders(ACTIVE_STATUSES)}) "
            "AND (lease_until IS NULL OR lease_until >= ?)",
            (user_id, *ACTIVE_STATUSES, self._clock()),
        )
        return int(rows[0][0])

    async def waiting_jobs(self, *, user_id: int | None = None, guild_id: int | None = None) -> int:
        """Jobs admitted but not yet sent to a provider, of one person and/or one server (None = any), for the
        queue caps. As in `active_jobs`, a job whose process stopped renewing its lease counts only once taken over."""
        clauses = [f"status IN ({_placeholders(WAITING_STATUSES)})", "(lease_until IS NULL OR lease_until >= ?)"]
        params: list[object] = [*WAITING_STATUSES, self._clock()]
        for column, value in (("user_id", user_id), ("guild_id", guild_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        rows = await self._rows(f"SELECT COUNT(*) FROM jobs WHERE {' AND '.join(clauses)}", params)
        return int(rows[0][0])

    # -- guild settings -------------------------------------------------------------------------------------

    async def record_event(self, entry: AuditEntry) -> None:
        """Audit a moderation action that is not a settings change (e.g. a moderator deleting a result)."""
        async with self._transaction():
            await self._audit(entry)

    async def _audit(self, entry: AuditEntry) -> None:
        await self._execute(
            "INSERT INTO settings_audit (guild_id, actor_id, key, old, new, at) VALUES (?, ?, ?, ?, ?, ?)",
            (entry.guild_id, entry.actor_id, entry.key, entry.old, entry.new, entry.at),
        )

    @contextlib.asynccontextmanager
    async def _guild_write(self, guild_id: int) -> AsyncIterator[None]:
        """A transaction that changes a server's settings, overrides or terms: one writer per server at a time
        (each checks limits against what is stored), and every process drops its cached copy once it commits."""
        try:
            async with self._transaction():
                await self._lock_in_transaction(f"guild:{guild_id}")
                yield
                await self.notify(GUILD_CACHE_CHANNEL, str(guild_id))
        finally:
            self._forget_guild(guild_id)  # here at once: our own notification arrives later on PostgreSQL

    def _forget_guild(self, guild_id: int | None) -> None:
        self._cache_epoch += 1
        for cache in (self._settings, self._overrides, self._terms):
            if guild_id is None:
                cache.clear()
            else:
                cache.pop(guild_id, None)

    def _guild_changed(self, payload: str) -> None:
        try:
            self._forget_guild(None if payload == db.MISSED else int(payload))
        except ValueError:
            log.warning("ignoring a malformed guild cache notification %r", payload[:40])
            self._forget_guild(None)

    async def _settings_unlocked(self, guild_id: int, *, fresh: bool = False) -> GuildSettings:
        cached = None if fresh else self._settings.get(guild_id)
        if cached is None:
            epoch = self._cache_epoch
            rows = await self._rows_unlocked("SELECT key, value FROM guild_settings WHERE guild_id = ?", (guild_id,))
            cached = settings_from_stored({r["key"]: json.loads(r["value"]) for r in rows})
            if epoch == self._cache_epoch:
                self._settings[guild_id] = cached
        return cached

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """A server's settings (defaults for keys never set), read through a cache invalidated on write."""
        cached = self._settings.get(guild_id)  # a hit needs no lock: every command reads this before acking
        if cached is not None:
            return cached
        async with self._lock:
            return await self._settings_unlocked(guild_id)

    async def update_guild_settings(
        self, guild_id: int, actor_id: int, changes: Mapping[str, object]
    ) -> list[AuditEntry]:
        """Check and save `changes`, with one audit row per key that really changed, in one transaction.

        Raises SettingsError (nothing saved) if any value or the resulting combination is not allowed.
        """
        async with self._guild_write(guild_id):
            current = await self._settings_unlocked(guild_id, fresh=True)
            updated = apply_changes(current, changes)
            now = self._clock()
            entries: list[AuditEntry] = []
            for key in SETTING_NAMES:
                old, new = getattr(current, key), getattr(updated, key)
                if key not in changes or old == new:
                    continue
                await self._execute(
                    "INSERT INTO guild_settings (guild_id, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (guild_id, key) DO UPDATE SET value = excluded.value",
                    (guild_id, key, json.dumps(new)),
                )
                entry = AuditEntry(guild_id, actor_id, key, format_value(old, key), format_value(new, key), now)
                await self._audit(entry)
                entries.append(entry)
        return entries

    async def _overrides_unlocked(self, guild_id: int, *, fresh: bool = False) -> dict[int, ChannelOverride]:
        cached = None if fresh else self._overrides.get(guild_id)
        if cached is None:
            epoch = self._cache_epoch
            rows = await self._rows_unlocked(
                "SELECT channel_id, safety FROM channel_overrides WHERE guild_id = ?", (guild_id,)
            )
            cached = {r["channel_id"]: ChannelOverride(r["channel_id"], r["safety"]) for r in rows}
            if epoch == self._cache_epoch:
                self._overrides[guild_id] = cached
        return cached

    async def channel_overrides(self, guild_id: int) -> dict[int, ChannelOverride]:
        async with self._lock:
            return dict(await self._overrides_unlocked(guild_id))

    async def channel_override(self, guild_id: int, channel_id: int) -> ChannelOverride | None:
        cached = self._overrides.get(guild_id)
        if cached is not None:
            return cached.get(channel_id)
        async with self._lock:
            return (await self._overrides_unlocked(guild_id)).get(channel_id)

    async def set_channel_override(
        self, guild_id: int, actor_id: int, channel_id: int, *, safety: int | None
    ) -> AuditEntry | None:
        """Set (or with None, clear) a channel's safety level; the audit entry, or None if nothing changed."""
        level = check_override_safety(safety)
        async with self._guild_write(guild_id):
            current = (await self._overrides_unlocked(guild_id, fresh=True)).get(channel_id)
            old = None if current is None else current.safety
            if old == level:
                return None
            if level is None:
                await self._execute(
                    "DELETE FROM channel_overrides WHERE guild_id = ? AND channel_id = ?", (guild_id, channel_id)
                )
            else:
                await self._execute(
                    "INSERT INTO channel_overrides (guild_id, channel_id, safety) VALUES (?, ?, ?) "
                    "ON CONFLICT (guild_id, channel_id) DO UPDATE SET safety = excluded.safety",
                    (guild_id, channel_id, level),
                )
            entry = AuditEntry(
                guild_id, actor_id, f"channel {channel_id} safety",
                None if old is None else str(old), None if level is None else str(level), self._clock(),
            )
            await self._audit(entry)
        return entry

    async def clear_channel_override(self, guild_id: int, actor_id: int, channel_id: int) -> AuditEntry | None:
        return await self.set_channel_override(guild_id, actor_id, channel_id, safety=None)

    async def audit_log(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        """Moderator changes in a server, newest first."""
        rows = await self._rows(
            "SELECT guild_id, actor_id, key, old, new, at FROM settings_audit WHERE guild_id = ? "
            "ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
        return [AuditEntry(r["guild_id"], r["actor_id"], r["key"], r["old"], r["new"], r["at"]) for r in rows]

    # -- blocked terms --------------------------------------------------------------------------------------

    async def _terms_unlocked(self, guild_id: int, *, fresh: bool = False) -> tuple[BlockedTerm, ...]:
        cached = None if fresh else self._terms.get(guild_id)
        if cached is None:
            epoch = self._cache_epoch
            rows = await self._rows_unlocked(
                "SELECT term, action, added_by, added_at FROM blocked_terms WHERE guild_id = ? "
                "ORDER BY added_at, term_key",
                (guild_id,),
            )
            cached = tuple(BlockedTerm(r["term"], r["action"], r["added_by"], r["added_at"]) for r in rows)
            if epoch == self._cache_epoch:
                self._terms[guild_id] = cached
        return cached

    async def blocked_terms(self, guild_id: int) -> tuple[BlockedTerm, ...]:
        """A server's filter terms, oldest first, read through a cache invalidated on write."""
        cached = self._terms.get(guild_id)
        if cached is not None:
            return cached
        async with self._lock:
            return await self._terms_unlocked(guild_id)

    async def add_blocked_term(
        self, guild_id: int, actor_id: int, term: str, action: str = "block"
    ) -> AuditEntry | None:
        """Add a term, or change the action of one already listed; None if it was already there as asked."""
        term, action = check_term(term, action)
        key = term_key(term)
        async with self._guild_write(guild_id):
            terms = await self._terms_unlocked(guild_id, fresh=True)
            existing = next((t for t in terms if term_key(t.term) == key), None)
            if existing is not None and existing.action == action:
                return None
            if existing is None and len(terms) >= MAX_TERMS_PER_GUILD:
                raise SettingsError(
                    f"This server already has {MAX_TERMS_PER_GUILD} filter terms; remove some before adding more."
                )
            now = self._clock()
            await self._execute(
                "INSERT INTO blocked_terms (guild_id, term_key, term, action, added_by, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (guild_id, term_key) DO UPDATE SET "
                "term = excluded.term, action = excluded.action, added_by = excluded.added_by, "
                "added_at = excluded.added_at",
                (guild_id, key, term, action, actor_id, now),
            )
            entry = AuditEntry(
                guild_id, actor_id, "blocked term",
                None if existing is None else f"{existing.term} ({existing.action})", f"{term} ({action})", now,
            )
            await self._audit(entry)
        return entry

    async def remove_blocked_term(self, guild_id: int, actor_id: int, term: str) -> AuditEntry | None:
        """Remove a term (matched case-insensitively); None if it was not listed."""
        key = term_key(term)
        async with self._guild_write(guild_id):
            terms = await self._terms_unlocked(guild_id, fresh=True)
            existing = next((t for t in terms if term_key(t.term) == key), None)
            if existing is None:
                return None
            await self._execute("DELETE FROM blocked_terms WHERE guild_id = ? AND term_key = ?", (guild_id, key))
            entry = AuditEntry(
                guild_id, actor_id, "blocked term", f"{existing.term} ({existing.action})", None, self._clock()
            )
            await self._audit(entry)
        return entry
