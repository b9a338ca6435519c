"""Shared fixtures. Fake provider servers are real HTTP servers on 127.0.0.1 started in the test's loop.

`database_target` runs a test once on a SQLite file and once on an empty PostgreSQL database. The PostgreSQL
server comes from the `pgserver` wheel (binaries included), started once per test process (each pytest-xdist
worker has its own) in a temporary folder, on a Unix socket only; each test gets its own `CREATE DATABASE`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.fakes.replicate_server import FakeReplicate

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
async def fake_replicate() -> AsyncIterator[FakeReplicate]:
    """A fake Replicate API (prefix /v1) with a separate CDN; tweak its attributes inside the test."""
    async with FakeReplicate(duration=0.2) as fake:
        yield fake


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for this test process; yields the URL of its maintenance database."""
    import pgserver  # only when a test asks for PostgreSQL

    # Not under pytest's tmp_path: as root, pgserver runs the server as a `pgserver` user and opens the folders
    # above the data to it, but every pytest session start closes /tmp/pytest-of-root again (to 0700), which
    # would cut a running server off from its own files.
    parent = Path(tempfile.mkdtemp(prefix="fillbot-pg-"))
    # pg_ctl waits 60 s for the server by default; a machine busy with other test processes may need longer.
    os.environ.setdefault("PGCTLTIMEOUT", "180")
    try:
        for attempt in (1, 2):
            data = parent / f"data{attempt}"
            try:
                server = pgserver.get_server(data, cleanup_mode="delete")
                # Test data need not survive a power cut: skip the disk flushes (each is a reloadable setting).
                server.psql("ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off; "
                            "ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();")
                break
            except (subprocess.CalledProcessError, OSError) as exc:
                log = data / "log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no server log)"
                if attempt == 2:
                    raise RuntimeError(f"the test PostgreSQL server did not start: {exc}\n{tail}") from exc
                warnings.warn(f"the test PostgreSQL server did not start, trying again: {exc}\n{tail}",
                              stacklevel=1)
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    """The server's URL (`postgresql://user:@/postgres?host=/socket`) naming another database."""
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """An empty database of its own, dropped afterwards (even if a test left connections open)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    try:
        yield _with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def postgres_url(postgres_server: str) -> AsyncIterator[str]:
    """An empty PostgreSQL database for this test (for tests that are about PostgreSQL itself)."""
    async with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(params=BACKENDS)
async def database_target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str | Path]:
    """What `Storage.open` takes, once per backend: a fresh SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield tmp_path / "fillbot.db"
        return
    async with fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield url
