"""A real bot process for crash tests: `python -m tests.discord.crash_child CONFIG.json` (or, with "mode":
"worker" in the config, a job worker that only claims and runs jobs).

It logs in against the test's fake Discord API (whose address is in the config), caches the test guild as a
GUILD_CREATE would, prints "ready", then feeds the INTERACTION_CREATE payloads it reads from stdin (one JSON
list) through discord.py's gateway parser, and serves them until it is killed. Payloads come only once it is
ready, so a slow start cannot make them miss Discord's 3-second window. With `crash_at`, it kills itself with
SIGKILL at that point of a job — the way a crashed process stops: no `finally`, no clean shutdown, only what is
already on disk survives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from discord.http import Route

from bot import moderation
from bot.app import ShardPlan, create_bot, run_worker
from bot.config import load_settings
from bot.service import FillService
from cogs.live_reply import LiveReply


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_before(owner: Any, name: str) -> None:
    async def crash(*args: Any, **kwargs: Any) -> Any:
        _die()

    setattr(owner, name, crash)


def _kill_after(owner: Any, name: str) -> None:
    original: Callable[..., Awaitable[Any]] = getattr(owner, name)

    async def crash(*args: Any, **kwargs: Any) -> Any:
        await original(*args, **kwargs)
        _die()

    setattr(owner, name, crash)


CRASH_POINTS: dict[str, Callable[[], None]] = {
    "preparing": lambda: _kill_before(FillService, "prepare_fill"),
    "finishing": lambda: _kill_before(FillService, "finish"),
    "after-final-edit": lambda: _kill_after(LiveReply, "final"),  # shown, not yet recorded as delivered
}


def _slow_admission(seconds: float) -> None:
    """Hold every admission this long between counting a member's jobs and recording the new one, so two
    processes admitting at once surely overlap: only the database's locks can then keep a limit."""
    original = moderation.admit

    async def slow(*args: Any, **kwargs: Any) -> Any:
        decision = await original(*args, **kwargs)
        await asyncio.sleep(seconds)
        return decision

    moderation.admit = slow  # type: ignore[assignment]


async def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())  # noqa: ASYNC240 - once, before anything runs
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    crash_at = config.get("crash_at")
    if crash_at:
        CRASH_POINTS[crash_at]()
    if config.get("slow_admission"):
        _slow_admission(float(config["slow_admission"]))
    Route.BASE = config["api_base"]
    settings = load_settings({"DISCORD_TOKEN": config["token"], **config["env"]})
    if config.get("mode") == "worker":  # `fillbot worker`: REST only, claims the jobs the bot processes queue
        await run_worker(settings, on_ready=lambda: print("ready", flush=True))
        return
    shards = config.get("shards")  # `fillbot run --shards … --shard-count …`
    plan = None if shards is None else ShardPlan(tuple(shards), int(config["shard_count"]))
    bot = create_bot(settings, edit_interval=0.05, shards=plan)
    await bot.login(config["token"])
    for guild in config.get("guilds") or [config["guild"]]:
        bot._connection._add_guild_from_data(guild)
    bot._ready.set()
    bot.dispatch("ready")
    print("ready", flush=True)
    payloads = json.loads(await asyncio.to_thread(sys.stdin.readline))
    for payload in payloads:
        bot._connection.parsers["INTERACTION_CREATE"](payload)
    print("dispatched", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
