"""One way to answer a failed interaction, for commands, buttons and modals alike: user errors become
ephemeral messages; anything else is logged with its context and the user gets a short apology.

A job command acknowledges with a public "thinking" reply before it knows whether the job can run. Discord
turns the first follow-up after such a reply into that very reply (public, whatever its flags), and has
answered follow-ups with 404 once the reply is deleted. So a refusal there takes three steps that work
whichever way Discord behaves: settle the public reply with a neutral line, send the explanation privately,
then delete the public reply (if the private message could not be sent, the public reply carries the
explanation instead: it must arrive).
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError

log = logging.getLogger(__name__)

APOLOGY = "Sorry, something went wrong on our side. The error was logged."
PUBLIC_THINKING = "fillbot.public_thinking"  # `Interaction.extras` key: the reply is a public "thinking" one
NEUTRAL = "This request could not be started."


async def send_ephemeral(interaction: discord.Interaction[Any], message: str) -> None:
    """Answer only the user, whether or not the interaction was already acknowledged."""
    try:
        if interaction.extras.pop(PUBLIC_THINKING, False):
            await _refuse_in_place(interaction, message)
        elif interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not send a message to user %s: %s", interaction.user.id, exc.status)


async def _refuse_in_place(interaction: discord.Interaction[Any], message: str) -> None:
    await interaction.edit_original_response(content=NEUTRAL, embed=None, attachments=[], view=None)
    try:
        await interaction.followup.send(message, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("private refusal to user %s failed (%s); showing it in the reply", interaction.user.id,
                    exc.status)
        await interaction.edit_original_response(content=message)
        return
    try:
        await interaction.delete_original_response()
    except discord.HTTPException as exc:  # the neutral line stays; the member has the explanation
        log.info("could not delete the refused reply of user %s: %s", interaction.user.id, exc.status)


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


async def setup(bot: commands.Bot | commands.AutoShardedBot) -> None:
    """Every command error goes through `report`."""

    async def on_error(interaction: discord.Interaction[Any], error: app_commands.AppCommandError) -> None:
        original: BaseException = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(original, app_commands.CheckFailure | app_commands.TransformerError):
            original = UserError(str(original) or "You cannot use this command here.")
        command = interaction.command.qualified_name if interaction.command else "?"
        await report(interaction, original, f"command /{command}")

    bot.tree.error(on_error)
