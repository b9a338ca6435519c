"""Which channel ids a server's settings may make the bot post to.

Any moderator can type any channel id, and any stranger can be a moderator of a server they made: a gallery or
log channel is only used when the bot itself knows it as a text channel of that very server, both when it is
set and before every post (rows stored before this check existed, or channels moved since, are ignored).
"""

from __future__ import annotations

import discord


def own_text_channel(bot: discord.Client, guild_id: int, channel_id: int) -> discord.TextChannel | None:
    """The text channel `channel_id` if the bot's cache holds it as a channel of `guild_id`; None when it is
    unknown, belongs to another server or is not a text channel. Never post to an id that gets None."""
    channel = bot.get_channel(channel_id)
    if isinstance(channel, discord.TextChannel) and channel.guild.id == guild_id:
        return channel
    return None
