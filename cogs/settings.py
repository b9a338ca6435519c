"""`/fill-settings`: the server's safety rules, providers, limits, channels, gallery and log channel.

Hidden from members by `default_permissions(manage_guild=True)` and `guild_only`, and checked again in code
(a client can still send the command). Every change is audited and posted to the log channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError
from bot.guild_settings import (
    SETTING_DESCRIPTIONS,
    SETTING_NAMES,
    AuditEntry,
    format_value,
    parse_setting,
)
from bot.providers.registry import SAFETY_MAX
from cogs.channels import announce, own_text_channel
from cogs.rendering import FIELD_VALUE_MAX, truncate

if TYPE_CHECKING:
    from bot.app import FillBot


def require_manager(interaction: discord.Interaction) -> int:
    """The server id, if the user may manage it; refuses DMs and members without Manage Server."""
    if interaction.guild_id is None:
        raise UserError("Server settings can only be changed inside a server.")
    if not interaction.permissions.manage_guild:
        raise UserError("You need the **Manage Server** permission to change fillbot's settings.")
    return interaction.guild_id


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class SettingsCog(commands.GroupCog, group_name="fill-settings", group_description="fillbot's rules for this server"):
    def __init__(self, bot: FillBot) -> None:
        self.bot = bot
        super().__init__()

    async def _announce(self, interaction: discord.Interaction, guild_id: int, entries: list[AuditEntry]) -> None:
        if not entries:
            await interaction.response.send_message("Nothing changed.", ephemeral=True)
            return
        lines = "\n".join(f"• {e.describe()}" for e in entries)
        await interaction.response.send_message(f"Updated:\n{lines}", ephemeral=True)
        await announce(self.bot, guild_id, f"<@{interaction.user.id}> changed fillbot settings:\n{lines}")

    @app_commands.command(name="show", description="Show this server's fillbot settings.")
    async def show(self, interaction: discord.Interaction) -> None:
        guild_id = require_manager(interaction)
        storage = self.bot.storage
        settings = await storage.guild_settings(guild_id)
        embed = discord.Embed(title="fillbot settings", colour=discord.Colour.blurple())
        for name in SETTING_NAMES:
            value = getattr(settings, name)
            shown = format_value(value, name)
            if name.endswith("channel_id") and value is not None:
                shown = f"<#{value}>"
                if own_text_channel(self.bot, guild_id, value) is None:
                    shown += " (not a text channel of this server: ignored)"
            elif name == "channels" and value:
                shown = " ".join(f"<#{c}>" for c in value)
            embed.add_field(name=f"{name} = {shown}"[:256], value=SETTING_DESCRIPTIONS[name][:FIELD_VALUE_MAX],
                            inline=False)
        overrides = await storage.channel_overrides(guild_id)
        if overrides:
            text = ", ".join(f"<#{o.channel_id}>: {format_value(o.safety)}" for o in overrides.values())
            embed.add_field(name="channel safety overrides", value=truncate(text, FIELD_VALUE_MAX), inline=False)
        terms = await storage.blocked_terms(guild_id)
        embed.set_footer(text=f"{len(terms)} blocked term(s): see /fill-settings blocked-terms")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="set", description="Change one setting (see /fill-settings show for each meaning).")
    @app_commands.describe(setting="Which setting", value="New value; `none` clears, lists are comma-separated")
    @app_commands.choices(setting=[app_commands.Choice(name=n, value=n) for n in SETTING_NAMES])
    async def set_(
        self, interaction: discord.Interaction, setting: str, value: app_commands.Range[str, 0, 1000]
    ) -> None:
        guild_id = require_manager(interaction)
        parsed = parse_setting(setting, value)
        if (setting.endswith("_channel_id") and isinstance(parsed, int)
                and own_text_channel(self.bot, guild_id, parsed) is None):
            raise UserError(f"`{setting}`: <#{parsed}> is not a text channel of this server; pick one of its own.")
        if setting in ("allowed_providers", "default_provider"):
            configured = set(self.bot.service.providers)
            wanted = parsed if isinstance(parsed, tuple) else (parsed,) if parsed else ()
            missing = [p for p in wanted if p not in configured]
            if missing:
                raise UserError(f"{', '.join(missing)} is not configured on this bot; configured: "
                                f"{', '.join(sorted(configured))}.")
        entries = await self.bot.storage.update_guild_settings(guild_id, interaction.user.id, {setting: parsed})
        await self._announce(interaction, guild_id, entries)

    @app_commands.command(name="channel-safety", description="Set or clear one channel's safety level.")
    @app_commands.describe(channel="The channel", level=f"0 strictest … {SAFETY_MAX}; leave empty to clear")
    async def channel_safety(
        self,
        interaction: discord.Interaction,
        channel: discord.TextChannel,
        level: app_commands.Range[int, 0, SAFETY_MAX] | None = None,
    ) -> None:
        guild_id = require_manager(interaction)
        entry = await self.bot.storage.set_channel_override(guild_id, interaction.user.id, channel.id, safety=level)
        await self._announce(interaction, guild_id, [entry] if entry else [])

    @app_commands.command(name="block-term", description="Block a word or phrase in prompts, or strip it out.")
    @app_commands.describe(term='Word or phrase; 4+ letters also catch words starting with it; "quoted": whole words',
                           action="block: refuse the prompt; strip: remove the term and go on")
    async def block_term(
        self,
        interaction: discord.Interaction,
        term: app_commands.Range[str, 1, 100],
        action: Literal["block", "strip"] = "block",
    ) -> None:
        guild_id = require_manager(interaction)
        entry = await self.bot.storage.add_blocked_term(guild_id, interaction.user.id, term, action)
        await self._announce(interaction, guild_id, [entry] if entry else [])

    @app_commands.command(name="unblock-term", description="Remove a blocked term.")
    async def unblock_term(self, interaction: discord.Interaction, term: app_commands.Range[str, 1, 100]) -> None:
        guild_id = require_manager(interaction)
        entry = await self.bot.storage.remove_blocked_term(guild_id, interaction.user.id, term)
        if entry is None:
            raise UserError(f"“{term}” is not on the list.")
        await self._announce(interaction, guild_id, [entry])

    @app_commands.command(name="blocked-terms", description="List the blocked terms.")
    async def blocked_terms(self, interaction: discord.Interaction) -> None:
        guild_id = require_manager(interaction)
        terms = await self.bot.storage.blocked_terms(guild_id)
        text = "\n".join(f"• `{t.term}` ({t.action})" for t in terms) or "No blocked terms."
        await interaction.response.send_message(truncate(text, 2000), ephemeral=True)

    @app_commands.command(name="audit", description="Recent changes to these settings.")
    async def audit(self, interaction: discord.Interaction) -> None:
        guild_id = require_manager(interaction)
        entries = await self.bot.storage.audit_log(guild_id, limit=20)
        text = "\n".join(f"<t:{int(e.at)}:R> <@{e.actor_id}> {e.describe()}" for e in entries) or "No changes yet."
        await interaction.response.send_message(truncate(text, 2000), ephemeral=True,
                                                allowed_mentions=discord.AllowedMentions.none())


async def setup(bot: FillBot) -> None:
    await bot.add_cog(SettingsCog(bot))
