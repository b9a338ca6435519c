"""Fixtures that run the real bot (create_bot) against the fake Discord API and fake providers."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from bot.app import FillBot, create_bot
from bot.config import Settings, load_settings
from bot.storage import Storage
from tests.fakes.discord_harness import DiscordHarness

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"


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
    base = {"DATABASE_PATH": str(tmp_path / "fillbot.db"), "POLL_INTERVAL": "0.02", "JOB_DEADLINE": "30"}
    return load_settings({**base, **env})




@pytest.fixture
def make_bot(tmp_path: Path) -> Callable[..., FillBot]:
    """Build the real bot with fast edits; the database file lives in tmp_path (survives 'restarts')."""

    def build(**env: str) -> FillBot:
        return create_bot(settings_for(tmp_path, **env), edit_interval=0.05)

    return build


@asynccontextmanager
async def running(bot: FillBot, **kwargs: object) -> AsyncIterator[DiscordHarness]:
    async with DiscordHarness(bot, **kwargs) as h:  # type: ignore[arg-type]
        yield h


__all__ = ["Storage", "mask_for", "photo", "running", "settings_for"]
