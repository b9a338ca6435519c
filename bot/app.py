"""The Discord bot: `create_bot(settings)` builds it with its dependencies, without connecting.

The bot holds the core (settings, the picture service, storage and the job lifecycle); everything Discord-facing
lives in the `cogs/` extensions loaded by name in `setup_hook` (this module imports none of them). A serving bot
takes over the jobs nobody runs, including its own from before a restart. Commands are synced on purpose
(`fillbot sync`), never on every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
from discord.ext import commands, tasks

from bot.config import Settings
from bot.errors import ConfigError
from bot.lifecycle.jobs import Lifecycle, Mode
from bot.service import FillService
from bot.storage import Storage
from bot.web.hooks import WebhookHub
from bot.web.relay import CHANNEL as RELAY_CHANNEL
from bot.web.relay import RelayListener
from bot.web.server import WebServer

log = logging.getLogger(__name__)

# Order matters: the error handler first, then the job flow the command cogs start jobs through.
EXTENSIONS = ("cogs.errors", "cogs.jobflow", "cogs.buttons", "cogs.paint", "cogs.fill", "cogs.settings",
              "cogs.history")


class FillBot(commands.AutoShardedBot):
    """Sharded the way Discord asks (`shard_count` None: as many as Discord recommends, all in this process);
    `shard_ids` runs a subset, so several processes can share one bot."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: FillService | None = None,
        storage: Storage | None = None,
        edit_interval: float = 1.5,
        recover: bool = True,
        mode: Mode = Mode.LOCAL,
        shard_ids: Sequence[int] | None = None,
        shard_count: int | None = None,
    ) -> None:
        # No message content or member intents: everything arrives as interactions.
        intents = discord.Intents.none()
        intents.guilds = True
        shards: dict[str, Any] = {"shard_count": shard_count}
        if shard_ids is not None:
            shards["shard_ids"] = list(shard_ids)
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None, **shards)
        self.settings = settings
        self.mode = mode
        self.service = service or FillService(settings)
        self._storage = storage
        self._lifecycle: Lifecycle | None = None
        self.edit_interval = edit_interval
        self.recover = recover
        self.web: WebServer | None = None  # on when PUBLIC_URL is set (bot/web)

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("storage is opened in setup_hook")
        return self._storage

    @property
    def lifecycle(self) -> Lifecycle:
        if self._lifecycle is None:
            raise RuntimeError("the lifecycle starts in setup_hook")
        return self._lifecycle

    async def setup_hook(self) -> None:
        if self._storage is None:
            self._storage = await Storage.open(self.settings.database_target)
        self._lifecycle = Lifecycle(self.settings, self._storage, self.service, mode=self.mode)
        web = self.settings.web
        # Relayed webhooks travel as PostgreSQL notifications; on SQLite (one machine) workers simply poll.
        relayed = self._storage.dialect == "postgresql"
        if web is not None and self.recover and self.mode is Mode.WORKER and relayed:
            # Creates ask for callbacks to the bot processes' web side, which relays them here (bot/web/relay.py).
            hub = WebhookHub.attach(web, self.service.providers.values())
            self._storage.subscribe(RELAY_CHANNEL, RelayListener(hub, self.service.providers))
        elif web is not None and self.recover and self.mode is not Mode.WORKER:
            self.web = WebServer(web, storage=self._storage, runner=self._lifecycle.runner,
                                 providers=self.service.providers, gateway_ok=self.gateway_connected,
                                 relay_unknown=self.mode is Mode.FRONT and relayed)
            await self.web.start()
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.recover:  # background work only for a serving bot, not for `fillbot sync`
            self.purge_history.start()

    def gateway_connected(self) -> bool:
        return self.is_ready() and not self.is_closed() and math.isfinite(self.latency)

    @tasks.loop(hours=6)
    async def purge_history(self) -> None:
        """Forget prompts, pictures and history older than HISTORY_DAYS (also right after start-up)."""
        purged = await self.storage.purge(self.settings.history_days)
        if purged:
            log.info("purged %d jobs older than %d days", purged, self.settings.history_days)

    async def spoiler_flagged(self, guild_id: int | None, channel_nsfw: bool) -> bool:
        """Flagged outputs are shown (spoilered) only in age-restricted channels of servers that chose so."""
        if guild_id is None or not channel_nsfw:
            return False
        settings = await self.storage.guild_settings(guild_id)
        return settings.flagged_outputs == "spoiler"

    async def close(self) -> None:
        purge = self.purge_history.get_task()
        self.purge_history.cancel()
        if purge is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await purge
        if self.web is not None:
            await self.web.stop()
        if self._lifecycle is not None:
            await self._lifecycle.aclose()
        await self.service.aclose()
        if self._storage is not None:
            await self._storage.close()
        await super().close()


def create_bot(
    settings: Settings,
    *,
    service: FillService | None = None,
    storage: Storage | None = None,
    edit_interval: float = 1.5,
    recover: bool = True,
    mode: Mode | None = None,
    shards: ShardPlan | None = None,
) -> FillBot:
    """Build the bot and its dependencies without connecting (tests and tools use this too). `mode` None: the
    jobs run here, or by job workers when EXTERNAL_WORKERS is set."""
    if mode is None:
        mode = Mode.FRONT if settings.external_workers else Mode.LOCAL
    return FillBot(settings, service=service, storage=storage, edit_interval=edit_interval, recover=recover,
                   mode=mode, shard_ids=None if shards is None else shards.ids,
                   shard_count=None if shards is None else shards.count)


def explain_startup_failure(exc: BaseException) -> str | None:
    """One line saying what to check, for the failures an operator meets when starting the bot; None for bugs."""
    if isinstance(exc, discord.LoginFailure):
        return ("Discord refused DISCORD_TOKEN: it is wrong or was reset. Copy it again from the Developer Portal "
                "(your application → Bot → Reset Token) into .env.")
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return "Discord refused the bot's intents; this bot needs none of the privileged ones: report this as a bug."
    if isinstance(exc, discord.HTTPException):
        return f"Discord answered HTTP {exc.status} at start-up; try again in a few minutes (status.discord.com)."
    if isinstance(exc, aiohttp.ClientError | OSError | discord.GatewayNotFound | TimeoutError):
        return (f"Discord could not be reached ({type(exc).__name__}): check this machine's network connection, "
                "DNS and any proxy or firewall.")
    return None


@dataclass(frozen=True)
class ShardPlan:
    """The shards one process runs, of `count` in all (`fillbot run --shards 0-3 --shard-count 8`)."""

    ids: tuple[int, ...]
    count: int

    @classmethod
    def parse(cls, ids: str, count: int) -> ShardPlan:
        """"0-3", "4,6" or "0-1,5" of `count` shards; ConfigError says what is wrong."""
        if count < 1:
            raise ConfigError(f"--shard-count must be at least 1, not {count}.")
        chosen: set[int] = set()
        for part in ids.split(","):
            first, dash, last = part.strip().partition("-")
            if not first.isdigit() or (dash and not last.isdigit()):
                raise ConfigError(f"--shards {ids!r}: write shard numbers and ranges such as 0-3 or 0,2,5.")
            low, high = int(first), int(last) if dash else int(first)
            if low > high or high >= count:
                raise ConfigError(f"--shards {ids!r}: shards are numbered 0 to {count - 1} with --shard-count {count}.")
            chosen.update(range(low, high + 1))
        return cls(tuple(sorted(chosen)), count)

    @property
    def partial(self) -> bool:
        return len(self.ids) < self.count


def run_bot(settings: Settings, shards: ShardPlan | None = None) -> int:
    token = settings.require_discord_token()
    bot = create_bot(settings, shards=shards)
    bot.run(token.reveal(), log_handler=None)
    return 0


async def run_worker(settings: Settings, *, on_ready: Callable[[], None] | None = None) -> int:
    """A job worker: no gateway, only Discord's REST API, running the jobs the bot processes queue until it is
    stopped (SIGTERM or Ctrl-C hand its jobs back at once)."""
    token = settings.require_discord_token()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bot = create_bot(settings, mode=Mode.WORKER)
    async with bot:
        await bot.login(token.reveal())  # runs setup_hook: the lifecycle starts claiming jobs
        log.info("job worker %s running (at most %d jobs)", bot.lifecycle.owner, settings.worker_max_jobs)
        if on_ready is not None:
            on_ready()
        await stop.wait()
    return 0


async def sync_commands(settings: Settings, *, guild_id: int | None = None) -> int:
    """Register the slash commands: to one server (instant) or globally (can take up to an hour)."""
    token = settings.require_discord_token()
    guild_id = guild_id or settings.dev_guild_id
    bot = create_bot(settings, recover=False)
    async with bot:
        await bot.login(token.reveal())
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            bot.tree.copy_global_to(guild=guild)
            synced = await bot.tree.sync(guild=guild)
            where = f"server {guild_id}"
        else:
            synced = await bot.tree.sync()
            where = "all servers (may take up to an hour to appear)"
        print(f"Synced {len(synced)} commands to {where}: {', '.join(c.name for c in synced)}")
    await asyncio.sleep(0)
    return 0
