"""Fixtures that run the real bot (create_bot) against the fake Discord API and fake providers."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from bot.app import FillBot, create_bot
from bot.config import Settings, load_settings
from tests.conftest import BACKENDS, fresh_database
from tests.fakes.discord_api import FakeMessage
from tests.fakes.discord_harness import DiscordHarness, Dispatched

TESTDATA = Path(__file__).resolve().parents[1] / "data"


def photo(width: int = 640, height: int = 480) -> bytes:
    """A generated photo-like PNG (gradients and shapes), different every size."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((width // 4, height // 4, width // 2, height // 2), fill=(200, 40, 40))
    draw.rectangle((width // 2, height // 2, width - 20, height - 20), fill=(30, 120, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def mask_for(width: int = 640, height: int = 480) -> bytes:
    img = Image.new("L", (width, height), 0)
    ImageDraw.Draw(img).rectangle((width // 4, height // 4, width // 2, height // 2), fill=255)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def settings_for(tmp_path: Path, **env: str) -> Settings:
    base = {"DATABASE_PATH": str(tmp_path / "fillbot.db"), "POLL_INTERVAL": "0.02", "JOB_DEADLINE": "30",
            "ALLOW_PRIVATE_DOWNLOADS": "true"}  # the fakes serve results from 127.0.0.1
    return load_settings({**base, **env})




# A representative set of end-to-end tests (a fill, restarts, a burst, moderation and history) also runs with the
# bot on PostgreSQL; the rest stay on SQLite to keep the suite quick.
both_backends = pytest.mark.parametrize("bot_database", BACKENDS, indirect=True)


@pytest.fixture
async def bot_database(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The bot's database settings: none extra (the SQLite file in tmp_path), or with `both_backends` also a fresh
    PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield {}
        return
    async with fresh_database(request.getfixturevalue("postgres_server")) as url:
        yield {"DATABASE_URL": url}


@pytest.fixture
def make_bot(tmp_path: Path, bot_database: dict[str, str]) -> Callable[..., FillBot]:
    """Build the real bot with fast edits; its database (a file in tmp_path, or PostgreSQL with `both_backends`)
    survives 'restarts'."""

    def build(**env: str) -> FillBot:
        return create_bot(settings_for(tmp_path, **bot_database, **env), edit_interval=0.05)

    return build


@asynccontextmanager
async def running(bot: FillBot, **kwargs: object) -> AsyncIterator[DiscordHarness]:
    async with DiscordHarness(bot, **kwargs) as h:  # type: ignore[arg-type]
        yield h


FINAL_MARKS = ("✅", "❌", "🛡", "⏹", "⌛")


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def is_final(message: FakeMessage | None) -> bool:
    return (
        message is not None
        and not message.loading
        and bool(message.embeds)
        and str(message.embeds[0].get("title", "")).startswith(FINAL_MARKS)
    )


async def final_reply(h: DiscordHarness, sent: Dispatched, within: float = 15) -> FakeMessage:
    """Wait for the interaction's reply to reach a final state (success or a failure embed)."""
    await h.wait_for(lambda: is_final(h.original(sent)), timeout=within, message="final reply")
    message = h.original(sent)
    assert message is not None
    return message


def job_id_of(message: FakeMessage) -> str:
    for custom_id in message.custom_ids():
        found = re.fullmatch(r"fill:\w+:([0-9a-f]{12})(?::\d)?", custom_id)
        if found:
            return found.group(1)
    raise AssertionError(f"no job button on the message: {message.custom_ids()}")
