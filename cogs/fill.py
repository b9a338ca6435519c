"""`/fill`, `/edit` and the "Fill with…" / "Edit with…" message context menus.

Cheap checks (options against the chosen provider's ranges, attachment type and size from metadata, server
rules and limits) run before anything is acknowledged, so their answers are ephemeral; everything else
happens in `JobFlow.start` after deferring within Discord's 3-second window.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import UserError
from bot.imaging.loading import megabytes
from bot.params import (
    KONTEXT_ASPECT_RATIOS,
    MAX_PROMPT_CHARS,
    Delivery,
    EditRequest,
    FillRequest,
    MaskOptions,
    Value,
)
from bot.pipeline import Prepared
from bot.providers.registry import option_note, option_span
from cogs.errors import SafeModal
from cogs.jobflow import Admission, Request, flow
from cogs.paint import FillPlan, paint

if TYPE_CHECKING:
    from bot.app import FillBot

log = logging.getLogger(__name__)

ACCEPTED_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
OutputFormat = Literal["auto", "png", "jpeg", "webp"]
Megapixels = Literal["1", "0.25", "match_input"]
# Option ranges span every provider's spec for the command; the chosen provider checks its own before any work.
FILL_SEED = option_span("fill", "seed")
FILL_STEPS = option_span("fill", "steps")
FILL_GUIDANCE = option_span("fill", "guidance")
FILL_OUTPUTS = option_span("fill", "outputs")
FILL_LORA_SCALE = option_span("fill", "lora_scale")
EDIT_SEED = option_span("edit", "seed")
EDIT_STEPS = option_span("edit", "steps")
EDIT_GUIDANCE = option_span("edit", "guidance")


def check_attachment(attachment: discord.Attachment, what: str, max_bytes: int) -> None:
    """Refuse from metadata alone what cannot be a picture we accept; the bytes are checked again later."""
    if attachment.size > max_bytes:
        raise UserError(
            f"The {what} `{attachment.filename}` is {megabytes(attachment.size)}; "
            f"the limit is {megabytes(max_bytes, limit=True)}."
        )
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    if content_type and content_type not in ACCEPTED_TYPES:
        raise UserError(
            f"The {what} `{attachment.filename}` is `{content_type}`, not a picture this bot accepts: "
            "use PNG, JPEG, WebP or GIF."
        )


_MASK_NAME = re.compile(r"(?<![a-z])mask(?![a-z])")  # "mask.png", "photo_mask.png", "Mask-2.png"; not "unmasked"


def message_images(message: discord.Message) -> tuple[discord.Attachment | None, discord.Attachment | None]:
    """The picture (and a mask, if one is named with the word "mask") attached to a message."""
    pictures = [a for a in message.attachments if (a.content_type or "").startswith("image/") or
                a.filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".gif"))]
    masks = [a for a in pictures if _MASK_NAME.search(a.filename.lower().rsplit(".", 1)[0])]
    images = [a for a in pictures if a not in masks]
    return (images[0] if images else None), (masks[0] if masks else None)


class FillCog(commands.Cog):
    def __init__(self, bot: FillBot) -> None:
        self.bot = bot
        self.fill_menu = app_commands.ContextMenu(name="Fill with…", callback=self.fill_from_message)
        self.edit_menu = app_commands.ContextMenu(name="Edit with…", callback=self.edit_from_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.fill_menu)
        self.bot.tree.add_command(self.edit_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.fill_menu.name, type=self.fill_menu.type)
        self.bot.tree.remove_command(self.edit_menu.name, type=self.edit_menu.type)

    # ------------------------------------------------------------------------------------------- /fill
    @app_commands.command(name="fill", description="Repaint part of a picture with AI (inpainting).")
    @app_commands.describe(
        image="The picture to change (PNG, JPEG, WebP or GIF). Transparent holes are filled.",
        prompt="What should appear in the filled area.",
        mask="Black-and-white mask of the same shape: white = repaint, black = keep.",
        region="No mask? Give the area as x,y,w,h in pixels or percent, e.g. 25%,40%,50%,30%.",
        invert_mask="Repaint the black part of the mask instead of the white part.",
        provider="Which AI service runs the job (default: the server's choice).",
        seed="Same seed + same options = same result.",
        steps=f"Denoising steps ({option_note('fill', 'steps')}).",
        guidance=f"How strictly to follow the prompt ({option_note('fill', 'guidance')}).",
        outputs=f"How many images to make ({option_note('fill', 'outputs')}), if the server allows.",
        output_format="File type of the results (auto: like your picture, full resolution).",
        megapixels=f"Working size ({option_note('fill', 'megapixels')}); the result is fitted back to your picture.",
        prompt_upsampling=f"Let the provider rewrite the prompt for more creative results "
        f"({option_note('fill', 'prompt_upsampling')}).",
        lora="LoRA weights: a Replicate model, Hugging Face, CivitAI or .safetensors URL.",
        lora_scale=f"LoRA strength ({option_note('fill', 'lora_scale')}).",
        composite="Keep every pixel outside the mask exactly as in your picture (default: yes).",
    )
    async def fill(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 0, MAX_PROMPT_CHARS] = "",
        mask: discord.Attachment | None = None,
        region: app_commands.Range[str, 1, 60] | None = None,
        invert_mask: bool = False,
        provider: str | None = None,
        seed: app_commands.Range[int, FILL_SEED.minimum, FILL_SEED.maximum] | None = None,
        steps: app_commands.Range[int, FILL_STEPS.minimum, FILL_STEPS.maximum] | None = None,
        guidance: app_commands.Range[float, FILL_GUIDANCE.minimum, FILL_GUIDANCE.maximum] | None = None,
        outputs: app_commands.Range[int, FILL_OUTPUTS.minimum, FILL_OUTPUTS.maximum] | None = None,
        output_format: OutputFormat = "auto",
        megapixels: Megapixels | None = None,
        prompt_upsampling: bool | None = None,
        lora: app_commands.Range[str, 1, 500] | None = None,
        lora_scale: app_commands.Range[float, FILL_LORA_SCALE.minimum, FILL_LORA_SCALE.maximum] | None = None,
        composite: bool = True,
    ) -> None:
        options: dict[str, Value | None] = {
            "seed": seed, "steps": steps, "guidance": guidance, "outputs": outputs, "megapixels": megapixels,
            "prompt_upsampling": prompt_upsampling, "lora": lora, "lora_scale": lora_scale,
        }
        limit = self.bot.settings.max_attachment_bytes
        check_attachment(image, "image", limit)
        if mask is not None:
            check_attachment(mask, "mask", limit)
            if region:
                raise UserError("Give either a mask or a region, not both.")
        elif not region and self.bot.web is not None:  # nothing says what to fill: offer the painter page
            plan = FillPlan(provider, options, Delivery(output_format, composite=composite))
            await paint(self.bot).fill_without_mask(interaction, image, prompt, plan)
            return
        await self._start_fill(
            interaction, prompt, options, image.read, mask.read if mask else None,
            MaskOptions(region=region, invert=invert_mask), Delivery(output_format, composite=composite), provider,
        )

    async def _start_fill(
        self,
        interaction: discord.Interaction,
        prompt: str,
        options: dict[str, Value | None],
        read_image: Any,
        read_mask: Any,
        mask_options: MaskOptions,
        delivery: Delivery,
        provider: str | None,
    ) -> None:
        jobs = flow(self.bot)

        async def decide() -> tuple[Request, Admission]:
            admission = await jobs.admit(interaction, provider=provider, operation="fill", prompt=prompt,
                                         outputs=options.get("outputs"), lora=options.get("lora"))
            request = FillRequest.build(
                admission.provider, admission.prompt, options, mask=mask_options, delivery=delivery,
                internal=admission.internal,
            )
            return request, admission

        async def load(request: Request) -> Prepared:
            assert isinstance(request, FillRequest)
            image_bytes = await read_image()
            mask_bytes = await read_mask() if read_mask else None
            return await self.bot.service.prepare_fill(image_bytes, mask_bytes, request)

        await jobs.start(interaction, decide, load)

    # ------------------------------------------------------------------------------------------- /edit
    @app_commands.command(name="edit", description="Edit a picture by instruction with FLUX Kontext.")
    @app_commands.describe(
        image="The picture to edit (PNG, JPEG, WebP or GIF).",
        prompt='What to change, e.g. "make the car red".',
        provider="Which AI service runs the job (default: the server's choice).",
        aspect_ratio="Shape of the result; match_input_image keeps your picture's.",
        steps=f"Denoising steps ({option_note('edit', 'steps')}).",
        guidance=f"How strictly to follow the instruction ({option_note('edit', 'guidance')}).",
        seed="Same seed + same options = same result.",
        go_fast=f"Faster, slightly lower quality on hard instructions ({option_note('edit', 'go_fast')}).",
        output_format="File type of the result (auto: like your picture, full resolution).",
    )
    @app_commands.choices(aspect_ratio=[app_commands.Choice(name=r, value=r) for r in KONTEXT_ASPECT_RATIOS])
    async def edit(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
        provider: str | None = None,
        aspect_ratio: str | None = None,
        steps: app_commands.Range[int, EDIT_STEPS.minimum, EDIT_STEPS.maximum] | None = None,
        guidance: app_commands.Range[float, EDIT_GUIDANCE.minimum, EDIT_GUIDANCE.maximum] | None = None,
        seed: app_commands.Range[int, EDIT_SEED.minimum, EDIT_SEED.maximum] | None = None,
        go_fast: bool | None = None,
        output_format: OutputFormat = "auto",
    ) -> None:
        check_attachment(image, "image", self.bot.settings.max_attachment_bytes)
        options: dict[str, Value | None] = {
            "aspect_ratio": aspect_ratio, "steps": steps, "guidance": guidance, "seed": seed, "go_fast": go_fast,
        }
        await self._start_edit(interaction, prompt, options, image.read, Delivery(output_format, composite=False),
                               provider)

    async def _start_edit(
        self,
        interaction: discord.Interaction,
        prompt: str,
        options: dict[str, Value | None],
        read_image: Any,
        delivery: Delivery,
        provider: str | None,
    ) -> None:
        jobs = flow(self.bot)

        async def decide() -> tuple[Request, Admission]:
            admission = await jobs.admit(interaction, provider=provider, operation="edit", prompt=prompt,
                                         outputs=None)
            request = EditRequest.build(admission.provider, admission.prompt, options, delivery=delivery,
                                        internal=admission.internal)
            return request, admission

        async def load(request: Request) -> Prepared:
            assert isinstance(request, EditRequest)
            return await self.bot.service.prepare_edit(await read_image(), request)

        await jobs.start(interaction, decide, load)

    @fill.autocomplete("provider")
    @edit.autocomplete("provider")
    async def provider_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        operation = "edit" if interaction.command is not None and interaction.command.name == "edit" else "fill"
        names = await flow(self.bot).providers_for(interaction.guild_id, "edit" if operation == "edit" else "fill")
        return [app_commands.Choice(name=label, value=name) for name, label in names if current.lower() in name][:25]

    # ------------------------------------------------------------------------------------ context menus
    async def fill_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        image, mask = message_images(message)
        if image is None:
            raise UserError("That message has no picture attached (PNG, JPEG, WebP or GIF).")
        limit = self.bot.settings.max_attachment_bytes
        check_attachment(image, "image", limit)
        if mask is not None:
            check_attachment(mask, "mask", limit)
        await interaction.response.send_modal(PromptModal(self, "fill", image, mask))

    async def edit_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        image, _ = message_images(message)
        if image is None:
            raise UserError("That message has no picture attached (PNG, JPEG, WebP or GIF).")
        check_attachment(image, "image", self.bot.settings.max_attachment_bytes)
        await interaction.response.send_modal(PromptModal(self, "edit", image, None))


class PromptModal(SafeModal):
    """Asks for the prompt (and, for fills without a mask, a region) for a context-menu job."""

    prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(
        label="Prompt", style=discord.TextStyle.paragraph, max_length=2000
    )

    def __init__(
        self, cog: FillCog, operation: str, image: discord.Attachment, mask: discord.Attachment | None
    ) -> None:
        super().__init__(title="Fill with…" if operation == "fill" else "Edit with…")
        self.cog = cog
        self.operation = operation
        self.image = image
        self.mask = mask
        self.region: discord.ui.TextInput[Any] | None = None
        if operation == "fill":
            self.prompt.placeholder = "What should appear in the filled area?"
            if mask is None:
                self.region = discord.ui.TextInput(
                    label="Region (x,y,w,h in px or %)", required=False, max_length=60,
                    placeholder="leave empty if the picture has transparent holes",
                )
                self.add_item(self.region)
        else:
            self.prompt.placeholder = 'What to change, e.g. "make the car red"'

    async def on_submit(self, interaction: discord.Interaction) -> None:
        if self.operation == "fill":
            region = (self.region.value.strip() or None) if self.region is not None else None
            await self.cog._start_fill(
                interaction, self.prompt.value, {}, self.image.read, self.mask.read if self.mask else None,
                MaskOptions(region=region), Delivery(), None,
            )
        else:
            await self.cog._start_edit(interaction, self.prompt.value, {}, self.image.read,
                                       Delivery(composite=False), None)


async def setup(bot: FillBot) -> None:
    await bot.add_cog(FillCog(bot))
