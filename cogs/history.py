"""`/fill-history`: a person's own recent jobs (ephemeral), and erasing them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError
from cogs.rendering import truncate

if TYPE_CHECKING:
    from bot.app import FillBot


class HistoryCog(commands.GroupCog, group_name="fill-history", group_description="Your fillbot jobs"):
    def __init__(self, bot: FillBot) -> None:
        self.bot = bot
        super().__init__()

    @app_commands.command(name="show", description="Your recent jobs (only you see this).")
    async def show(self, interaction: discord.Interaction) -> None:
        jobs = await self.bot.storage.recent_jobs(interaction.user.id, limit=10)
        if not jobs:
            await interaction.response.send_message("You have no stored jobs.", ephemeral=True)
            return
        lines = []
        for job in jobs:
            link = ""
            if job.reply_message_id and job.guild_id:
                link = f" — https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.reply_message_id}"
            prompt = truncate(job.prompt.replace("\n", " "), 80) or "(no prompt)"
            lines.append(f"<t:{int(job.created_at)}:R> `{job.id}` /{job.kind} **{job.status}** {prompt}{link}")
        days = self.bot.settings.history_days
        text = "\n".join(lines) + f"\n-# Kept for {days} days. `/fill-history erase` deletes it now."
        await interaction.response.send_message(truncate(text, 2000), ephemeral=True)

    @app_commands.command(name="erase", description="Delete your stored prompts, pictures and job history.")
    @app_commands.describe(confirm="Set to True to confirm; this cannot be undone")
    async def erase(self, interaction: discord.Interaction, confirm: bool = False) -> None:
        if not confirm:
            raise UserError("Nothing was erased: run `/fill-history erase confirm:True` to confirm.")
        count = await self.bot.storage.erase_user_history(interaction.user.id)
        await interaction.response.send_message(
            f"Erased {count} stored job(s). Jobs still running are kept until they finish.", ephemeral=True
        )


async def setup(bot: FillBot) -> None:
    await bot.add_cog(HistoryCog(bot))
