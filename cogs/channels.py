"""Which channel ids a server's settings may make the bot post to, and the log-channel notices posted there.

Any moderator can type any channel id, and any stranger can be a moderator of a server they made: a gallery or
log channel is only used when the bot itself knows it as a text channel of that very server, both when it is
set and before every post (rows stored before this check existed, or channels moved since, are ignored).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord

from bot.guild_settings import AuditEntry

if TYPE_CHECKING:
    from bot.app import FillBot

log = logging.getLogger(__name__)


def own_text_channel(bot: discord.Client, guild_id: int, channel_id: int) -> discord.TextChannel | None:
    """The text channel `channel_id` if the bot's cache holds it as a channel of `guild_id`; None when it is
    unknown, belongs to another server or is not a text channel. Never post to an id that gets None."""
    channel = bot.get_channel(channel_id)
    if isinstance(channel, discord.TextChannel) and channel.guild.id == guild_id:
        return channel
    return None


async def announce(bot: FillBot, guild_id: int, text: str) -> None:
    """Post a moderation notice to the server's log channel (best effort)."""
    settings = await bot.storage.guild_settings(guild_id)
    if settings.log_channel_id is None:
        return
    channel = own_text_channel(bot, guild_id, settings.log_channel_id)
    if channel is None:
        log.warning("log channel %s is not a text channel of %s: notice not posted", settings.log_channel_id, guild_id)
        return
    try:
        await channel.send(text[:2000], allowed_mentions=discord.AllowedMentions.none())
    except discord.HTTPException as exc:
        log.warning("could not post to log channel %s of %s: %s", settings.log_channel_id, guild_id, exc.status)


async def moderation_event(bot: FillBot, entry: AuditEntry) -> None:
    """Audit a moderation action and post it to the server's log channel, if one is set."""
    await bot.storage.record_event(entry)
    await announce(bot, entry.guild_id, f"<@{entry.actor_id}> {entry.key}: {entry.old or ''}".strip())
