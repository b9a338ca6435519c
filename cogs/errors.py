"""One way to answer a failed interaction, for commands, buttons and modals alike: user errors become
ephemeral messages; anything else is logged with its context and the user gets a short apology."""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.errors import UserError

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on our side. The error was logged."


async def send_ephemeral(interaction: discord.Interaction[Any], message: str) -> None:
    """Answer only the user, whether or not the interaction was already acknowledged."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not send a message to user %s: %s", interaction.user.id, exc.status)


async def report(interaction: discord.Interaction[Any], error: BaseException, where: str) -> None:
    if isinstance(error, UserError):
        await send_ephemeral(interaction, error.message)
        return
    log.error(
        "%s failed (guild %s, channel %s, user %s)",
        where, interaction.guild_id, interaction.channel_id, interaction.user.id, exc_info=error,
    )
    await send_ephemeral(interaction, APOLOGY)


class SafeModal(discord.ui.Modal):
    """A modal whose errors are reported like every other interaction's."""

    # discord.py's Modal.on_error takes (interaction, error); mypy compares it with View's 3-argument form.
    async def on_error(self, interaction: discord.Interaction[Any], error: Exception, /) -> None:  # type: ignore[override]
        await report(interaction, error, f"modal {type(self).__name__}")
