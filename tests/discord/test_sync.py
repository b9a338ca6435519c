"""`fillbot sync` registers every command through the real discord.py sync path (fake Discord API)."""

from __future__ import annotations

from pathlib import Path

import pytest
from discord.http import Route

from bot.app import sync_commands
from tests.discord.conftest import settings_for
from tests.fakes.discord_api import FakeDiscord


@pytest.mark.parametrize("guild_id", [None, 123456789012345678])
async def test_sync_registers_all_commands(
    tmp_path: Path, guild_id: int | None, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = Route.BASE
    async with FakeDiscord() as fake:
        Route.BASE = fake.api_base
        try:
            code = await sync_commands(settings_for(tmp_path, DISCORD_TOKEN="fake-token"), guild_id=guild_id)
        finally:
            Route.BASE = saved
    assert code == 0
    names = {c["name"] for c in fake.commands[guild_id]}
    assert {"fill", "edit", "fill-settings", "fill-history", "Fill with…", "Edit with…"} <= names
    where = f"server {guild_id}" if guild_id else "all servers"
    assert where in capsys.readouterr().out


async def test_sync_without_token_is_a_config_error(tmp_path: Path) -> None:
    from bot.errors import ConfigError

    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        await sync_commands(settings_for(tmp_path), guild_id=None)
