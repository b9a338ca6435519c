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

import aiohttp
import discord
from discord.ext import commands, tasks

from bot.config import Settings
from bot.lifecycle.jobs import Lifecycle
from bot.service import FillService
from bot.storage import Storage
from bot.web.server import WebServer

log = logging.getLogger(__name__)

# Order matters: the error handler first, then the job flow the command cogs start jobs through.
EXTENSIONS = ("cogs.errors", "cogs.jobflow", "cogs.buttons", "cogs.paint", "cogs.fill", "cogs.settings",
              "cogs.history")


class FillBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        *,
        service: FillService | None = None,
        storage: Storage | None = None,
        edit_interval: float = 1.5,
        recover: bool = True,
    ) -> None:
        # No message content or member intents: everything arrives as interactions.
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None)
        self.settings = settings
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
        self._lifecycle = Lifecycle(self.settings, self._storage, self.service)
        if self.settings.web is not None and self.recover:
            self.web = WebServer(self.settings.web, storage=self._storage, runner=self._lifecycle.runner,
                                 providers=self.service.providers, gateway_ok=self.gateway_connected)
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
) -> FillBot:
    """Build the bot and its dependencies without connecting (tests and tools use this too)."""
    return FillBot(settings, service=service, storage=storage, edit_interval=edit_interval, recover=recover)


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


def run_bot(settings: Settings) -> int:
    token = settings.require_discord_token()
    bot = create_bot(settings)
    bot.run(token.reveal(), log_handler=None)
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
