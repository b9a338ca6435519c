"""Shared fixtures. Fake provider servers are real HTTP servers on 127.0.0.1 started in the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.replicate_server import FakeReplicate


@pytest.fixture
async def fake_replicate() -> AsyncIterator[FakeReplicate]:
    """A fake Replicate API (prefix /v1) with a separate CDN; tweak its attributes inside the test."""
    async with FakeReplicate(duration=0.2) as fake:
        yield fake
