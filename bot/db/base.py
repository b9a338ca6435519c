"""What `Storage` needs from a database: transactions, statements with `?` placeholders, locks, notifications.

Storage writes every query once, in the SQL both backends accept; a backend only carries it to its server.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]

log = logging.getLogger(__name__)

# Delivered to every subscriber when notifications may have been lost (the listener reconnected): drop everything.
MISSED = ""


class Row(Protocol):
    """A result row, read by position or by column name (sqlite3.Row and asyncpg.Record both are)."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Backend(Protocol):
    dialect: Dialect
    @property
    def lock(self) -> AbstractAsyncContextManager[Any]:
        """Held around statements run outside `transaction()`: SQLite's one connection serves one at a time;
        PostgreSQL's pool needs no such lock (a no-op)."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Statements run by this task inside it belong to one transaction; it commits on a clean exit."""
        ...

    async def rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]: ...

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def lock_in_transaction(self, key: str) -> None: ...

    def session_locks(self, keys: Sequence[str]) -> AbstractAsyncContextManager[None]:
        """Hold cross-process locks for `keys` (already sorted) until exit, outside any transaction."""
        ...

    def migrating(self) -> AbstractAsyncContextManager[None]:
        """Around a migration run: whatever the backend needs to rebuild tables safely."""
        ...

    def migration_sql(self, sql: str) -> str:
        """A portable migration statement in this backend's dialect."""
        ...

    async def notify(self, channel: str, payload: str) -> None: ...

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None: ...

    async def listening(self) -> None:
        """Return once every subscription so far receives notifications."""
        ...

    async def close(self) -> None: ...


def lock_id(namespace: str, key: str) -> int:
    """A stable signed 64-bit id for an advisory lock (the same in every process and Python version)."""
    digest = hashlib.blake2b(f"{namespace}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Subscribers:
    """The callbacks of each notification channel, called on the event loop (a failing one does not stop the rest)."""

    def __init__(self) -> None:
        self._callbacks: defaultdict[str, list[Callable[[str], None]]] = defaultdict(list)

    def add(self, channel: str, callback: Callable[[str], None]) -> None:
        self._callbacks[channel].append(callback)

    def channels(self) -> list[str]:
        return list(self._callbacks)

    def deliver(self, channel: str, payload: str) -> None:
        for callback in self._callbacks.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("notification handler for %s failed", channel)
