"""Buttons on job replies. Each is a `DynamicItem` whose custom id carries the job id, so it keeps working
after a restart: state is loaded from the database, and `interaction_check` refuses other users politely."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Self, cast

import discord

from bot.errors import UserError
from bot.lifecycle.jobs import CancelResult
from bot.params import MAX_PROMPT_CHARS, request_from_json
from bot.storage import JobRecord
from cogs import rendering
from cogs.errors import SafeModal, report

if TYPE_CHECKING:
    from bot.app import FillBot
    from cogs.jobflow import JobFlow

log = logging.getLogger(__name__)

_ID = r"(?P<job>[0-9a-f]{12})"


def _bot(interaction: discord.Interaction) -> FillBot:
    return cast("FillBot", interaction.client)


def _flow(interaction: discord.Interaction) -> JobFlow:
    from cogs.jobflow import flow  # jobflow renders these buttons: importing it at the top would be circular

    return flow(_bot(interaction))


def is_moderator(interaction: discord.Interaction) -> bool:
    perms = interaction.permissions
    return interaction.guild_id is not None and (perms.manage_messages or perms.manage_guild)


class JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"fill:none:" + _ID):
    """Shared behaviour: load the job; only its requester (or a moderator, where allowed) may press."""

    action = "none"
    label = ""
    emoji = ""
    style = discord.ButtonStyle.secondary
    moderators_too = False

    def __init__(self, job_id: str, *, suffix: str = "", label: str | None = None) -> None:
        super().__init__(discord.ui.Button(
            label=label or self.label, style=self.style, emoji=self.emoji,
            custom_id=f"fill:{self.action}:{job_id}{suffix}",
        ))
        self.job_id = job_id
        self.record: JobRecord | None = None

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> JobButton:
        return cls(match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        try:
            await self.run(interaction)
        except Exception as exc:
            await report(interaction, exc, f"button {self.action} on job {self.job_id}")

    async def run(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        self.record = await _bot(interaction).storage.get_job(self.job_id)
        if self.record is None:
            await interaction.response.send_message(
                "This job is no longer stored (history is kept for a limited time).", ephemeral=True
            )
            return False
        if interaction.user.id == self.record.user_id or (self.moderators_too and is_moderator(interaction)):
            return True
        who = "the person who started this job or a moderator" if self.moderators_too else (
            "the person who started this job"
        )
        await interaction.response.send_message(f"Sorry, only {who} can use this button.", ephemeral=True)
        return False


class CancelButton(JobButton, template=r"fill:cancel:" + _ID):
    action = "cancel"
    label = "Cancel"
    emoji = "⏹️"
    style = discord.ButtonStyle.secondary
    moderators_too = True

    async def run(self, interaction: discord.Interaction) -> None:
        result = await _bot(interaction).lifecycle.cancel(self.job_id)
        if result is CancelResult.STOPPING:
            await interaction.response.defer()  # the job's own final edit shows "Canceled"
        elif result is CancelResult.REQUESTED:
            await interaction.response.send_message("Canceling… the reply will say so in a few seconds.",
                                                    ephemeral=True)
        else:
            await interaction.response.send_message("This job is not running any more.", ephemeral=True)


class RerunButton(JobButton, template=r"fill:rerun:" + _ID):
    action = "rerun"
    label = "Rerun"
    emoji = "🔁"
    style = discord.ButtonStyle.primary

    async def run(self, interaction: discord.Interaction) -> None:
        assert self.record is not None
        await _flow(interaction).rerun(interaction, self.record)


class EditRerunButton(JobButton, template=r"fill:change:" + _ID):
    """Rerun with changes: a modal with the prompt and seed prefilled, so the seed is kept or changed on purpose."""

    action = "change"
    label = "Edit & rerun"
    emoji = "✏️"
    style = discord.ButtonStyle.secondary

    async def run(self, interaction: discord.Interaction) -> None:
        assert self.record is not None
        await interaction.response.send_modal(RerunModal(self.record))


class RerunModal(SafeModal, title="Rerun with changes"):
    prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Prompt", style=discord.TextStyle.paragraph, max_length=MAX_PROMPT_CHARS, required=False,
    )
    seed: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Seed (same seed + same prompt = same result)", required=False, max_length=10,
    )

    def __init__(self, record: JobRecord) -> None:
        super().__init__()
        self.record = record
        request = request_from_json(record.request)
        self.prompt.default = request.prompt
        self.prompt.required = request.spec.prompt_required
        seed = request.spec.field("seed")
        if seed is None:
            self.remove_item(self.seed)  # a model without seeds (local inpainting)
        else:
            self.seed.default = str(record.seed) if record.seed is not None else None
            self.seed.placeholder = f"{seed.range_text()}; leave empty for a new seed"

    async def on_submit(self, interaction: discord.Interaction) -> None:
        text = (self.seed.value or "").strip()
        if text and not text.isdigit():
            raise UserError(f"`seed` = {text!r} is not a seed: use a whole number, or leave it empty for a new one.")
        seed = int(text) if text else None
        await _flow(interaction).rerun(interaction, self.record, prompt=self.prompt.value, seed=seed)


class InfoButton(JobButton, template=r"fill:info:" + _ID):
    action = "info"
    label = "Info"
    emoji = "ℹ️"
    style = discord.ButtonStyle.secondary

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        self.record = await _bot(interaction).storage.get_job(self.job_id)
        if self.record is None:
            await interaction.response.send_message("This job is no longer stored.", ephemeral=True)
            return False
        return True  # parameters are no secret: anyone who sees the result may read them

    async def run(self, interaction: discord.Interaction) -> None:
        assert self.record is not None
        request = request_from_json(self.record.request)
        text = rendering.parameters_text(request, {"job": self.record.id, "status": self.record.status})
        await interaction.response.send_message(text, ephemeral=True)


class DeleteButton(JobButton, template=r"fill:delete:" + _ID):
    action = "delete"
    label = "Delete"
    emoji = "🗑️"
    style = discord.ButtonStyle.danger
    moderators_too = True

    async def run(self, interaction: discord.Interaction) -> None:
        await _flow(interaction).delete_result(interaction, self.job_id)


class ShareButton(JobButton, template=r"fill:share:" + _ID):
    action = "share"
    label = "Share"
    emoji = "📣"
    style = discord.ButtonStyle.success

    async def run(self, interaction: discord.Interaction) -> None:
        assert self.record is not None
        await _flow(interaction).share(interaction, self.record)


class OutputButton(JobButton, template=r"fill:output:" + _ID + r":(?P<index>[0-9])"):
    """A button about one output of a finished job: its index follows the job id in the custom id."""

    def __init__(self, job_id: str, index: int = 0, label: str | None = None) -> None:
        super().__init__(job_id, suffix=f":{index}", label=label)
        self.index = index

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Self:
        return cls(match["job"], int(match["index"]))


class ReuseButton(OutputButton, template=r"fill:reuse:" + _ID + r":(?P<index>[0-9])"):
    action = "reuse"
    label = "Use as input"
    emoji = "🖌️"

    async def run(self, interaction: discord.Interaction) -> None:
        assert self.record is not None
        await interaction.response.send_modal(ReuseModal(self.record, self.index))


class ReuseModal(SafeModal, title="Use this image as the new input"):
    prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Prompt", style=discord.TextStyle.paragraph, max_length=2000,
        placeholder="What should appear in the same area?",
    )
    region: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Region (optional: x,y,w,h in px or %)", required=False, max_length=60,
        placeholder="leave empty to reuse the same mask",
    )

    def __init__(self, record: JobRecord, index: int) -> None:
        super().__init__()
        self.record = record
        self.index = index
        if record.kind == "edit":
            self.remove_item(self.region)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        region = (self.region.value or "").strip() or None if self.record.kind == "fill" else None
        await _flow(interaction).reuse(interaction, self.record, self.index, self.prompt.value, region)


class PaintButton(OutputButton, template=r"fill:paint:" + _ID + r":(?P<index>[0-9])"):
    """Fill an area of result `index` again, painted on the web page or uploaded in a modal (`cogs.paint`)."""

    action = "paint"
    label = "Paint"
    emoji = "🖌"

    async def run(self, interaction: discord.Interaction) -> None:
        from cogs.paint import paint  # paint starts jobs through jobflow, which renders these buttons

        assert self.record is not None
        await paint(_bot(interaction)).paint_result(interaction, self.record, self.index)


def working_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def finished_view(job_id: str, outputs: int, *, shareable: bool) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(RerunButton(job_id))
    view.add_item(EditRerunButton(job_id))
    view.add_item(InfoButton(job_id))
    if shareable:
        view.add_item(ShareButton(job_id))
    view.add_item(DeleteButton(job_id))
    for index in range(outputs):
        label = "Use as input" if outputs == 1 else f"Use #{index + 1}"
        view.add_item(ReuseButton(job_id, index, label))
        view.add_item(PaintButton(job_id, index, "Paint" if outputs == 1 else f"Paint #{index + 1}"))
    return view


def failed_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(RerunButton(job_id))
    view.add_item(EditRerunButton(job_id))
    view.add_item(InfoButton(job_id))
    view.add_item(DeleteButton(job_id))
    return view


async def setup(bot: FillBot) -> None:
    """Buttons on old replies keep working after a restart: their custom ids are matched by template."""
    bot.add_dynamic_items(
        CancelButton, RerunButton, EditRerunButton, InfoButton, DeleteButton, ShareButton, ReuseButton, PaintButton
    )
