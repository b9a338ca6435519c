"""SQLite: one aiosqlite connection in autocommit mode, one asyncio.Lock, `BEGIN IMMEDIATE` transactions.

BEGIN IMMEDIATE takes the database's write lock at once, so a transaction is already exclusive across processes
(`lock_in_transaction` has nothing to add). Notifications reach this process only, after the commit that sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from pathlib import Path

import aiosqlite

from bot.db.base import Dialect, Row, Subscribers

log = logging.getLogger(__name__)

# The notifications a task sent inside its open transaction: delivered on commit, dropped on rollback.
_pending: ContextVar[list[tuple[str, str]] | None] = ContextVar("fillbot_sqlite_pending", default=None)


class SQLiteBackend:
    dialect: Dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self.lock = asyncio.Lock()
        self._subscribers = Subscribers()

    @classmethod
    async def open(cls, path: str | Path, *, busy_timeout: float) -> SQLiteBackend:
        """Open the file (creating it and its folder) with WAL and `busy_timeout` for locks other processes hold."""
        target = str(path)
        in_memory = target == ":memory:"
        if not in_memory:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(target, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            if not in_memory:
                # Most of the bytes are pictures: with 64 KiB pages a job's 4.5 MB of inputs is written in 4 ms
                # instead of 16 (1/16 the WAL frames). SQLite takes it only for a new, empty file; the cache is
                # then 16 MiB, so the job tables' pages stay in it.
                await db.execute("PRAGMA page_size = 65536")
                await db.execute("PRAGMA cache_size = -16384")
                # WAL lets readers (a backup, sqlite3 shell) work while the bot writes.
                await db.execute("PRAGMA journal_mode = WAL")
                await db.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        async with self.lock:
            if self._db.in_transaction:
                # Only possible if a ROLLBACK was itself interrupted (task cancelled at the wrong moment).
                log.warning("rolling back a transaction left open")
                await self._db.execute("ROLLBACK")
            await self._begin()
            pending: list[tuple[str, str]] = []
            token = _pending.set(pending)
            try:
                yield
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            finally:
                _pending.reset(token)
            await self._db.execute("COMMIT")
        for channel, payload in pending:
            self._subscribers.deliver(channel, payload)

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE, also when the task is cancelled while it waits: aiosqlite's thread runs a queued
        statement anyway, so a cancelled BEGIN would leave the connection inside a transaction and the next
        task's BEGIN would fail ("cannot start a transaction within a transaction")."""
        begin = asyncio.ensure_future(self._db.execute("BEGIN IMMEDIATE"))
        try:
            await asyncio.shield(begin)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await begin
                await self._db.execute("ROLLBACK")
            raise

    async def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        async with self._db.execute(sql, params) as cursor:
            return cursor.rowcount

    async def lock_in_transaction(self, key: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already excludes every other writer, in any process."""

    @contextlib.asynccontextmanager
    async def session_locks(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Only the caller's in-process locks apply: SQLite has no named locks between processes."""
        yield

    @contextlib.asynccontextmanager
    async def migrating(self) -> AsyncIterator[None]:
        # SQLite's way to rebuild a table (its CHECK constraints cannot be altered): foreign keys off meanwhile,
        # checked once the migrations are in (the pragma is a no-op inside a transaction, so it is set here).
        async with self.lock:
            await self._db.execute("PRAGMA foreign_keys = OFF")
        try:
            yield
        finally:
            async with self.lock:
                await self._db.execute("PRAGMA foreign_keys = ON")
        async with self.lock:
            broken = await self.rows("PRAGMA foreign_key_check")
        if broken:
            raise RuntimeError(f"migrations left {len(broken)} rows with broken references")

    def migration_sql(self, sql: str) -> str:
        return sql

    async def notify(self, channel: str, payload: str) -> None:
        pending = _pending.get()
        if pending is not None:
            pending.append((channel, payload))
        else:
            self._subscribers.deliver(channel, payload)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        self._subscribers.add(channel, callback)

    async def listening(self) -> None:
        """In-process delivery is ready as soon as `subscribe` returns."""

