"""`fillbot sync` registers every command through the real discord.py sync path (fake Discord API)."""

from __future__ import annotations

import asyncio
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


async def test_a_refused_token_is_one_line_saying_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "not-the-token")
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "bot.db"))
    saved = Route.BASE
    async with FakeDiscord(bot_token="the-real-token") as fake:
        Route.BASE = fake.api_base
        try:
            code = await asyncio.to_thread(main, ["sync"])
        finally:
            Route.BASE = saved
    err = capsys.readouterr().err
    assert code == 2 and "Discord refused DISCORD_TOKEN" in err and "Reset Token" in err, err
    assert "Traceback" not in err and "not-the-token" not in err


def test_no_network_is_one_line_saying_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCORD_TOKEN", "some-token")
    monkeypatch.setenv("DATABASE_PATH", str(tmp_path / "bot.db"))
    monkeypatch.setattr(Route, "BASE", "http://127.0.0.1:9/api/v10")  # nothing listens there
    assert main(["sync"]) == 1
    err = capsys.readouterr().err
    assert "could not be reached" in err and "network" in err and "Traceback" not in err, err


def test_a_mistyped_env_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["--env-file", "prod.evn", "sync"]) == 2
    assert "prod.evn" in capsys.readouterr().err
