"""Storage backends: SQLite (a file, the default) or PostgreSQL (a `postgresql://` URL), behind `Backend`."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from bot.db.base import MISSED, Backend, Dialect, Row, lock_id

# What a database fault looks like from either backend (a lock held too long, a dropped connection, a full
# disk): callers that retry or give up cleanly catch these.
StorageError: tuple[type[BaseException], ...] = (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
# A constraint refused a write (a duplicate id, a broken reference).
IntegrityError: tuple[type[BaseException], ...] = (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(_POSTGRES_SCHEMES)


async def connect(target: str | Path, *, busy_timeout: float = 5.0) -> Backend:
    """A PostgreSQL pool for a `postgresql://` URL, else the SQLite file at `target` (or ":memory:").

    `busy_timeout`: how long one statement waits for a lock another process holds before it fails."""
    if is_postgres_url(target):
        from bot.db.postgres import PostgresBackend

        return await PostgresBackend.open(str(target), lock_timeout=busy_timeout)
    from bot.db.sqlite import SQLiteBackend

    return await SQLiteBackend.open(target, busy_timeout=busy_timeout)


__all__ = [
    "MISSED", "Backend", "Dialect", "IntegrityError", "Row", "StorageError", "connect", "is_postgres_url", "lock_id",
]
