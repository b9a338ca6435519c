"""Painting the area to fill: a link to the painter page (`bot/web/painter.py`) when the web side is on, else
a modal where the member uploads a mask or the picture with the area erased.

Both start from what the member already has: a `/fill` picture with nothing that says what to fill, or a
finished result ("🖌 Paint", like Vary Region). Links are sent privately, so only that member sees them; the job
the page sends starts in the member's channel through the same rules, limits and lifecycle as any `/fill`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.errors import UserError
from bot.imaging.loading import Limits
from bot.imaging.spool import PixelSpool
from bot.params import MAX_PROMPT_CHARS, Delivery, FillRequest, MaskOptions, Value, request_from_json
from bot.pipeline import Prepared, keep_upload, upload_image
from bot.storage import JobRecord
from bot.web.painter import PaintTicket
from cogs.errors import SafeModal
from cogs.jobflow import Admission, Origin, Request, flow, loaded

if TYPE_CHECKING:
    from bot.app import FillBot

log = logging.getLogger(__name__)

LINK_LABEL = "Paint the area"
LINK_EMOJI = "🖌"


@dataclass(frozen=True)
class FillPlan:
    """What the member chose besides the mask; the server's rules are applied again when the mask arrives."""

    provider: str | None
    options: Mapping[str, Value | None]
    delivery: Delivery


@dataclass(frozen=True)
class StoredOrigin:
    """A painter link's member and channel, in the shape `JobFlow.admit` reads from an interaction."""

    guild_id: int | None
    channel_id: int | None
    channel: object
    user: discord.Object


def plan_for(record: JobRecord) -> FillPlan:
    """A new fill of a result keeps a fill's provider and options (not its seed); an edit's start from defaults."""
    request = request_from_json(record.request)
    if not isinstance(request, FillRequest):
        return FillPlan(None, {}, Delivery())
    options = {k: v for k, v in request.params.items() if k != "seed" and not _internal(request, k)}
    return FillPlan(request.spec.provider, options, request.delivery)


def _internal(request: FillRequest, name: str) -> bool:
    spec = request.spec.field(name)
    return spec is not None and spec.internal


def has_holes(data: bytes, limits: Limits, what: str, pixels: PixelSpool | None) -> bool:
    """Whether a picture says by itself what to fill (transparent parts), like `build_mask` decides. The decoded
    picture is kept in `pixels`: the job that follows prepares it without decoding it again."""
    loaded = upload_image(data, limits, pixels, what=what)
    keep_upload(pixels, data, loaded)
    return loaded.image.mode == "RGBA"


def paint(bot: commands.Bot | commands.AutoShardedBot) -> PaintCog:
    return loaded(bot, PaintCog)


class PaintCog(commands.Cog):
    def __init__(self, bot: FillBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        if self.bot.web is not None:
            self.bot.web.painter.starter = self.start_from_page

    async def cog_unload(self) -> None:
        if self.bot.web is not None:
            self.bot.web.painter.starter = None

    # ------------------------------------------------------------------------------------------- offers
    async def fill_without_mask(
        self, interaction: discord.Interaction, image: discord.Attachment, prompt: str, plan: FillPlan
    ) -> None:
        """/fill with only a picture: a picture with transparent holes starts at once (in the channel, as this
        answer is private); any other gets a painter link instead of an error."""
        assert self.bot.web is not None
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await image.read()
        if await self.bot.service.in_pool(has_holes, data, self.bot.service.limits, "image", self.bot.service.pixels):
            answer = await self._start_detached(interaction, data, None, prompt, plan)
            await interaction.followup.send(answer, ephemeral=True)
            return
        await self._send_link(interaction, data, image.content_type, prompt, plan,
                              "Nothing says what to fill yet: paint the area on your picture, then press Fill.")

    async def paint_result(self, interaction: discord.Interaction, record: JobRecord, index: int) -> None:
        """The 🖌 Paint button on a result: a painter link, or without the web side a modal with a file upload."""
        message = interaction.message
        if message is None or index >= len(message.attachments):
            raise UserError("That image is no longer attached to the message.")
        attachment = message.attachments[index]
        prompt = request_from_json(record.request).prompt
        if self.bot.web is None:
            await interaction.response.send_modal(PaintModal(self, record, attachment, prompt))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        await self._send_link(interaction, await attachment.read(), attachment.content_type, prompt,
                              plan_for(record), "Paint the area of this result to fill again, then press Fill.")

    async def _send_link(
        self, interaction: discord.Interaction, picture: bytes, content_type: str | None, prompt: str, plan: FillPlan,
        text: str,
    ) -> None:
        assert self.bot.web is not None
        # The rules that need no mask are applied now too, so nobody paints for a job that cannot run here;
        # they are applied again when the mask arrives (settings may change meanwhile).
        await flow(self.bot).admit(interaction, provider=plan.provider, operation="fill", prompt=prompt,
                                   outputs=plan.options.get("outputs"), lora=plan.options.get("lora"))
        token = self.bot.web.painter.store.issue(
            user_id=interaction.user.id, guild_id=interaction.guild_id, channel_id=interaction.channel_id or 0,
            picture=picture, content_type=content_type or "application/octet-stream", prompt=prompt, plan=plan,
        )
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label=LINK_LABEL, emoji=LINK_EMOJI,
                                        url=f"{self.bot.web.settings.public_url}/paint/{token}"))
        await interaction.followup.send(f"{text} The link is yours alone, works once and expires in 15 minutes.",
                                        view=view, ephemeral=True)

    # ------------------------------------------------------------------------------------------- starts
    async def start_from_page(self, ticket: PaintTicket, mask: bytes, prompt: str) -> str:
        """The painter page sent a mask: start the job in the member's channel, as the member."""
        if not isinstance(ticket.plan, FillPlan):
            raise UserError("This painter link was not made for a fill; ask the bot for a new one.")
        origin = StoredOrigin(ticket.guild_id, ticket.channel_id, self.bot.get_channel(ticket.channel_id),
                              discord.Object(ticket.user_id))
        return await self._start_detached(origin, ticket.picture, mask, prompt, ticket.plan)

    async def _start_detached(
        self, origin: Origin, image: bytes, mask: bytes | None, prompt: str, plan: FillPlan
    ) -> str:
        jobs = flow(self.bot)

        async def decide() -> tuple[Request, Admission]:
            admission = await jobs.admit(origin, provider=plan.provider, operation="fill", prompt=prompt,
                                         outputs=plan.options.get("outputs"), lora=plan.options.get("lora"))
            request = FillRequest.build(admission.provider, admission.prompt, dict(plan.options), mask=MaskOptions(),
                                        delivery=plan.delivery, internal=admission.internal)
            return request, admission

        async def load(request: Request) -> Prepared:
            assert isinstance(request, FillRequest)
            return await self.bot.service.prepare_fill(image, mask, request)

        message, notes = await jobs.start_detached(decide, load)
        where = origin.guild_id if origin.guild_id is not None else "@me"
        link = f"https://discord.com/channels/{where}/{message.channel.id}/{message.id}"
        return " ".join(("Your job has started:", link, *notes))


class PaintModal(SafeModal, title="Paint: fill an area again"):
    """Without the web side: the member uploads a mask, or this picture with the area erased to transparent."""

    def __init__(self, cog: PaintCog, record: JobRecord, attachment: discord.Attachment, prompt: str) -> None:
        super().__init__()
        self.cog = cog
        self.record = record
        self.attachment = attachment
        self.prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
            style=discord.TextStyle.paragraph, max_length=MAX_PROMPT_CHARS, default=prompt, required=False,
            custom_id="paint:prompt",
        )
        self.upload: discord.ui.FileUpload[Any] = discord.ui.FileUpload(custom_id="paint:file", required=False)
        self.region: discord.ui.TextInput[Any] = discord.ui.TextInput(
            max_length=60, required=False, custom_id="paint:region", placeholder="e.g. 25%,40%,50%,30%",
        )
        self.add_item(discord.ui.Label(text="Prompt", component=self.prompt))
        self.add_item(discord.ui.Label(
            text="Mask, or this picture with holes", component=self.upload,
            description="Mask: white = repaint, black = keep. Or the picture with the area erased to transparent.",
        ))
        self.add_item(discord.ui.Label(text="Or a region (x,y,w,h in px or %)", component=self.region))

    async def on_submit(self, interaction: discord.Interaction) -> None:
        files = self.upload.values
        region = (self.region.value or "").strip() or None
        if not files and region is None:
            raise UserError("Attach a mask or the picture with holes, or give a region, to say what to fill.")
        if files and region is not None:
            raise UserError("Give either a file or a region, not both.")
        upload = files[0] if files else None
        limit = self.cog.bot.settings.max_attachment_bytes
        if upload is not None:
            from cogs.fill import check_attachment  # fill imports this module: a top-level import would be circular

            check_attachment(upload, "file", limit)
        plan = plan_for(self.record)
        jobs = flow(self.cog.bot)
        result = self.attachment
        prompt = self.prompt.value

        async def decide() -> tuple[Request, Admission]:
            admission = await jobs.admit(interaction, provider=plan.provider, operation="fill", prompt=prompt,
                                         outputs=plan.options.get("outputs"), lora=plan.options.get("lora"))
            request = FillRequest.build(admission.provider, admission.prompt, dict(plan.options),
                                        mask=MaskOptions(region=region), delivery=plan.delivery,
                                        internal=admission.internal)
            return request, admission

        async def load(request: Request) -> Prepared:
            assert isinstance(request, FillRequest)
            service = self.cog.bot.service
            if upload is None:
                return await service.prepare_fill(await result.read(), None, request)
            data = await upload.read()
            if await service.in_pool(has_holes, data, service.limits, "file", service.pixels):
                return await service.prepare_fill(data, None, request)  # the picture itself, with holes
            return await service.prepare_fill(await result.read(), data, request)

        await jobs.start(interaction, decide, load)


async def setup(bot: FillBot) -> None:
    await bot.add_cog(PaintCog(bot))
