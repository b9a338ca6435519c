"""One job on Discord, from a command to a running job; shared by every command, modal and button.

Order of work, so that nothing waits on the database before Discord's 3-second acknowledgement and bad input
never reaches a provider:
1. the command has checked its options against their ranges and the attachments' metadata (no database);
2. `start` acknowledges at once (a public "thinking" reply), then applies the server's rules (`admit`), checks
   limits and records the job under the admission lock, downloads and prepares the pictures in a thread;
   anything refused from here on reaches only the member (`cogs.errors`);
3. the reply shows the mask preview and a live status, and the lifecycle (`bot/lifecycle`) runs the job,
   rendering into the reply through a `DiscordSink` until the ending is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import discord
from discord.ext import commands

from bot.errors import UserError
from bot.guild_settings import (
    DM_SETTINGS,
    AuditEntry,
    GuildSettings,
    channel_allowed,
    effective_safety,
    usable_providers,
)
from bot.imaging.preview import BEFORE_NAME
from bot.lifecycle.sink import Progress
from bot.lifecycle.states import State
from bot.lifecycle.store import StoreUnavailable
from bot.moderation import LimitGate, TermFilter, blocked_notice, guild_filter, operator_filter, share_refusal
from bot.params import (
    SPECS,
    EditRequest,
    FillRequest,
    MaskOptions,
    Operation,
    Value,
    request_from_json,
    request_to_json,
)
from bot.picture_pool import usable_cpus
from bot.pipeline import JobInputs, Prepared
from bot.storage import JobRecord
from cogs import buttons, rendering
from cogs.channels import announce, moderation_event, own_text_channel
from cogs.delivery import DiscordSink, JobContext, new_target, sink_for_record
from cogs.errors import PUBLIC_THINKING
from cogs.live_reply import LiveReply, ReplyTarget, Upload

if TYPE_CHECKING:
    from bot.app import FillBot

log = logging.getLogger(__name__)

Request = FillRequest | EditRequest
Decide = Callable[[], Awaitable[tuple[Request, "Admission"]]]
Load = Callable[[Request], Awaitable[Prepared]]


class Origin(Protocol):
    """Who asks and where: an interaction, or a request stored without one (the painter page)."""

    @property
    def guild_id(self) -> int | None: ...
    @property
    def channel_id(self) -> int | None: ...
    @property
    def channel(self) -> object: ...
    @property
    def user(self) -> discord.abc.Snowflake: ...


@dataclass(frozen=True)
class Admission:
    """What the server's rules decided before any picture was touched."""

    provider: str
    prompt: str  # blocked 'strip' terms removed
    internal: dict[str, Value]  # the provider's safety controls for this channel
    context: JobContext
    settings: GuildSettings
    private_notices: tuple[str, ...] = ()  # told only to the user (e.g. which terms were removed)


CogT = TypeVar("CogT", bound=commands.Cog)


def loaded(bot: commands.Bot | commands.AutoShardedBot, kind: type[CogT]) -> CogT:
    """The loaded cog of class `kind` (cogs reach each other through this, not through the bot's attributes)."""
    cog = bot.get_cog(kind.__cog_name__)
    if not isinstance(cog, kind):
        raise RuntimeError(f"the {kind.__module__} extension is not loaded")
    return cog


def flow(bot: commands.Bot | commands.AutoShardedBot) -> JobFlow:
    """The loaded JobFlow cog (other cogs start jobs through it)."""
    return loaded(bot, JobFlow)


class JobFlow(commands.Cog):
    def __init__(self, bot: FillBot) -> None:
        self.bot = bot
        self._gate: LimitGate | None = None
        # Downloads + preparation at once: more would only hold pictures in memory while waiting for a CPU.
        self._preparing = asyncio.Semaphore(2 * usable_cpus())
        self._background: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Best-effort work that must not delay the member's answer (a log-channel notice)."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def cog_unload(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def cog_load(self) -> None:
        if self.bot.recover:  # a serving bot takes over jobs nobody runs (after a restart too); `sync` does not
            self.bot.lifecycle.serve("discord", lambda record: sink_for_record(self.bot, record))

    # ----------------------------------------------------------------------------------------------- start
    async def admit(
        self,
        interaction: Origin,
        *,
        provider: str | None,
        operation: Operation,
        prompt: str,
        outputs: Value | None,
        lora: Value | None = None,
    ) -> Admission:
        """Apply the operator's and the server's rules that need no pictures: DMs, channel, provider, outputs,
        blocked terms (the operator's, then the server's, in every free-text field), safety."""
        guild_id = interaction.guild_id
        storage = self.bot.storage
        if guild_id is None and not self.bot.settings.rules.dm_enabled:
            raise UserError(f"This bot does not take jobs in direct messages: use /{operation} in a server.")
        settings = await storage.guild_settings(guild_id) if guild_id is not None else DM_SETTINGS
        channel = interaction.channel
        channel_id = interaction.channel_id or 0
        home = getattr(channel, "parent_id", None) or channel_id  # threads follow their parent's rules
        if guild_id is not None and not channel_allowed(settings, home):
            where = ", ".join(f"<#{c}>" for c in settings.channels) or "no channel yet"
            raise UserError(f"/{operation} is not enabled in this channel. It can be used in: {where}.")
        nsfw = bool(channel is not None and hasattr(channel, "is_nsfw") and channel.is_nsfw())
        chosen = await self._choose_provider(guild_id, settings, provider, operation)
        if isinstance(outputs, int) and outputs > settings.max_outputs:
            raise UserError(f"`outputs` = {outputs} is more than this server allows (at most {settings.max_outputs}).")
        fields = {"prompt": prompt, **({"lora": lora} if isinstance(lora, str) else {})}
        filters: list[tuple[TermFilter, str]] = [(operator_filter(self.bot.settings.rules), "this bot")]
        if guild_id is not None:
            filters.append((await guild_filter(storage, guild_id), "this server"))
        private: list[str] = []
        for term_filter, owner in filters:
            verdict = term_filter.check_fields(fields)
            if verdict.blocked_term is not None:
                field = verdict.blocked_field or "prompt"
                if guild_id is not None and owner == "this server":  # the operator's list stays the operator's
                    notice = blocked_notice(interaction.user.id, channel_id, verdict.blocked_term, field)
                    self.spawn(announce(self.bot, guild_id, notice))  # in the background: the refusal goes first
                what = "Your prompt" if field == "prompt" else f"The `{field}` option"
                raise UserError(
                    f"{what} contains “{verdict.blocked_term}”, which {owner} does not allow. Please rephrase it."
                )
            if verdict.stripped_terms:
                removed = ", ".join(f"“{t}”" for t in verdict.stripped_terms)
                private.append(f"{owner.capitalize()} removed {removed} from your prompt.")
            fields = dict(verdict.values)
        prompt = fields["prompt"]
        override = await storage.channel_override(guild_id, home) if guild_id is not None else None
        safety = effective_safety(settings, override, channel_is_nsfw=nsfw)
        context = JobContext(
            user_id=interaction.user.id,
            guild_id=guild_id,
            channel_id=channel_id,
            channel_nsfw=nsfw,
            spoiler_flagged=safety.flagged_outputs == "spoiler",
        )
        return Admission(chosen, prompt, safety.for_provider(chosen), context, settings, tuple(private))

    async def providers_for(self, guild_id: int | None, operation: Operation) -> list[tuple[str, str]]:
        """(name, label) of the providers this server (or, `guild_id` None, a DM) may use for `operation`."""
        able = [s for s in SPECS if s.operation == operation and s.provider in self.bot.service.providers]
        if guild_id is None:
            allowed = self.bot.settings.rules.dm_providers
            usable: tuple[str, ...] = tuple(s.provider for s in able if s.provider in allowed)
        else:
            settings = await self.bot.storage.guild_settings(guild_id)
            usable = usable_providers(settings, [s.provider for s in able])
        return [(s.provider, f"{s.provider}: {s.label}"[:100]) for s in able if s.provider in usable]

    async def _choose_provider(
        self, guild_id: int | None, settings: GuildSettings, asked: str | None, operation: Operation
    ) -> str:
        usable = [name for name, _ in await self.providers_for(guild_id, operation)]
        if not usable:
            where = ("A moderator can allow one with `/fill-settings providers`." if guild_id is not None
                     else f"Use /{operation} in a server instead.")
            raise UserError(f"No provider that can do /{operation} is available here. {where}")
        if asked is not None:
            if asked not in usable:
                raise UserError(f"The provider `{asked}` is not available for /{operation} here; "
                                f"use one of: {', '.join(usable)}.")
            return asked
        for candidate in (settings.default_provider, self.bot.settings.default_provider):
            if candidate in usable:
                return candidate
        return usable[0]

    @property
    def gate(self) -> LimitGate:
        if self._gate is None:
            self._gate = LimitGate(self.bot.storage, rules=self.bot.settings.rules)
        return self._gate

    async def acknowledge(self, interaction: discord.Interaction) -> None:
        """Defer publicly within Discord's 3-second window, before any database or picture work."""
        if not interaction.response.is_done():
            await interaction.response.defer(thinking=True)
            interaction.extras[PUBLIC_THINKING] = True

    async def start(self, interaction: discord.Interaction, decide: Decide, load: Load) -> None:
        """Acknowledge, decide under the server's rules, record, prepare, then hand the job to the lifecycle."""
        await self.acknowledge(interaction)
        request, admission = await decide()
        context = admission.context
        target = new_target(interaction.application_id, interaction.token, interaction.created_at.timestamp(),
                            context)
        record, prepared = await self._admit_and_prepare(
            self._record(self.bot.service.new_job_id(), request, context, target.token_expires_at,
                         interaction.token, interaction.application_id),
            admission, request, load,
        )
        started = time.time()
        reply = LiveReply(self.bot, target, min_interval=self.bot.edit_interval, last_edit=time.monotonic())
        sink = DiscordSink(self.bot, record.id, request, context, reply, started_at=record.created_at,
                           notices=prepared.notices)
        first = rendering.status_embed(request, Progress(record.id, State.QUEUED, time.time() - started),
                                       started_at=record.created_at, notices=prepared.notices)
        async with reply.putting_up():  # the job goes to its provider while Discord shows its first state
            await self.bot.lifecycle.queue(record, prepared, sink)
            preview = await self.bot.service.afterwards(prepared)  # drawn while the job is being sent
            try:
                message = await interaction.edit_original_response(
                    embed=first, attachments=_preview_file(prepared, preview), view=buttons.working_view(record.id)
                )
            except discord.HTTPException as exc:
                log.warning("job %s: could not show its reply (%s); running it anyway", record.id, exc.status)
                reply.gone = True
                return
            interaction.extras.pop(PUBLIC_THINKING, None)
            reply.target = dataclasses.replace(reply.target, message_id=message.id)
            await self.bot.storage.update_job(record.id, reply_message_id=message.id)
        # Only now: while the public reply is still "thinking", a follow-up would replace it, flags and all.
        for note in admission.private_notices:
            with contextlib.suppress(discord.HTTPException):
                await interaction.followup.send(note, ephemeral=True)

    async def start_detached(self, decide: Decide, load: Load) -> tuple[discord.Message, tuple[str, ...]]:
        """Start a job asked for outside any interaction (the painter page), through the same rules, limits,
        record and lifecycle as `start`. Its reply is a new channel message mentioning the member, edited
        through the channel (no interaction token). Returns that message and the notices meant for the member
        alone, which the caller shows them privately. Refusals are `UserError`s raised before anything runs."""
        request, admission = await decide()
        context = admission.context
        application_id = self.bot.application_id or 0
        record, prepared = await self._admit_and_prepare(
            self._record(self.bot.service.new_job_id(), request, context, 0.0, None, application_id),
            admission, request, load,
        )
        first = rendering.status_embed(request, Progress(record.id, State.QUEUED, 0.0),
                                       started_at=record.created_at, notices=prepared.notices)
        mention = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(context.user_id)])
        preview = await self.bot.service.afterwards(prepared)  # the message is posted before the job is sent
        try:
            message = await self.bot.get_partial_messageable(context.channel_id).send(
                f"<@{context.user_id}>", embed=first, files=_preview_file(prepared, preview),
                view=buttons.working_view(record.id), allowed_mentions=mention,
            )
        except discord.HTTPException as exc:
            with contextlib.suppress(StoreUnavailable):
                await self.bot.lifecycle.discard(record.id)
            raise UserError(f"I could not post in that channel (Discord said {exc.status}); nothing was started "
                            "or charged.") from None
        await self.bot.storage.update_job(record.id, reply_message_id=message.id)
        target = ReplyTarget(application_id, None, 0.0, context.channel_id, message.id, context.user_id)
        reply = LiveReply(self.bot, target, min_interval=self.bot.edit_interval, last_edit=time.monotonic())
        sink = DiscordSink(self.bot, record.id, request, context, reply, started_at=record.created_at,
                           notices=prepared.notices)
        await self.bot.lifecycle.queue(record, prepared, sink)
        return message, admission.private_notices

    async def _admit_and_prepare(
        self, record: JobRecord, admission: Admission, request: Request, load: Load
    ) -> tuple[JobRecord, Prepared]:
        """Check the limits and record the job under one lock, then prepare its pictures (discarded on failure)."""
        context = admission.context
        try:
            # Decide and record under the same lock, so a burst cannot pass one check twice.
            async with self.gate.admission(admission.settings, context.user_id, context.guild_id) as decision:
                if not decision.allowed:
                    raise UserError(decision.message)
                record = await self.bot.lifecycle.record(record)
        except StoreUnavailable:
            raise UserError("The bot's database is not answering right now; nothing was started or charged. "
                            "Please try again in a minute.") from None
        try:
            async with self._preparing:
                prepared = await load(request)
        except BaseException:
            with contextlib.suppress(StoreUnavailable):
                await self.bot.lifecycle.discard(record.id)
            raise
        return record, prepared

    def _record(
        self, job_id: str, request: Request, context: JobContext, token_expires_at: float, token: str | None,
        application_id: int,
    ) -> JobRecord:
        seed = request.params.get("seed")
        return JobRecord(
            id=job_id,
            kind=request.spec.operation,
            user_id=context.user_id,
            guild_id=context.guild_id,
            channel_id=context.channel_id,
            provider=request.spec.provider,
            model=request.spec.model,
            request=request_to_json(request),
            prompt=request.prompt,
            application_id=application_id,
            interaction_token=token,
            token_expires_at=token_expires_at,
            seed=int(seed) if isinstance(seed, int) else None,
            channel_nsfw=context.channel_nsfw,
        )

    # -------------------------------------------------------------------------------------- button actions
    async def rerun(
        self, interaction: discord.Interaction, record: JobRecord, *, prompt: str | None = None,
        seed: int | None = None,
    ) -> None:
        """The same pictures again as a new reply: with a new seed (the Rerun button, which says so), or with the
        prompt and seed the member chose (Edit & rerun), so a seed is only ever kept or changed on purpose."""
        request = request_from_json(record.request)
        stored = await self.bot.storage.load_inputs(record.id)
        if stored is None:
            raise UserError("The pictures of this job are no longer stored, so it cannot be rerun.")
        inputs = JobInputs(*stored)
        if prompt is not None:
            request = dataclasses.replace(request, prompt=prompt)

        async def load(r: Request) -> Prepared:
            prepared = await self.bot.service.prepare(r, inputs)
            new = r.params.get("seed")
            if seed is not None or new is None:
                return prepared
            note = (f"Rerun with a new seed, {new} (job {record.id} used {record.seed}). To keep a seed or change "
                    "the prompt, use ✏️ Edit & rerun.")
            return dataclasses.replace(prepared, notices=(note, *prepared.notices))

        await self._again(interaction, request, load, seed=seed)

    async def reuse(
        self, interaction: discord.Interaction, record: JobRecord, index: int, prompt: str, region: str | None
    ) -> None:
        """A new job whose input is output `index` of this one (same mask unless a region is given)."""
        message = interaction.message
        if message is None or index >= len(message.attachments):
            raise UserError("That image is no longer attached to the message.")
        attachment = message.attachments[index]
        request = request_from_json(record.request)
        if isinstance(request, FillRequest):
            mask = request.mask
            request = dataclasses.replace(
                request, prompt=prompt,
                mask=MaskOptions(region=region, feather=mask.feather) if region else MaskOptions(feather=mask.feather),
            )
        else:
            request = dataclasses.replace(request, prompt=prompt)
        stored = None if region or record.kind == "edit" else await self.bot.storage.load_inputs(record.id)
        stored_mask = stored[1] if stored else None
        if record.kind == "fill" and not region and stored_mask is None:
            raise UserError("The mask of this job is no longer stored: give a region instead.")

        async def load(r: FillRequest | EditRequest) -> Prepared:
            image = await attachment.read()
            if isinstance(r, FillRequest):
                return await self.bot.service.prepare_fill(image, stored_mask, r)
            return await self.bot.service.prepare_edit(image, r)

        await self._again(interaction, request, load)

    async def _again(
        self,
        interaction: discord.Interaction,
        request: FillRequest | EditRequest,
        prepare: Load,
        *,
        seed: int | None = None,
    ) -> None:
        """Start a follow-up job under today's server rules: admission, safety and `seed` (None: a fresh one)."""
        await self.start(interaction, lambda: self._decide_again(interaction, request, seed), prepare)

    async def _decide_again(
        self, interaction: discord.Interaction, request: Request, seed: int | None
    ) -> tuple[Request, Admission]:
        admission = await self.admit(
            interaction, provider=request.spec.provider, operation=request.spec.operation, prompt=request.prompt,
            outputs=request.params.get("outputs"), lora=request.params.get("lora"),
        )
        user_params: dict[str, Value | None] = {
            k: v for k, v in request.params.items() if not _is_internal(request, k) and k != "seed"
        }
        user_params["seed"] = seed
        again: FillRequest | EditRequest
        if isinstance(request, FillRequest):
            again = FillRequest.build(
                admission.provider, admission.prompt, user_params, mask=request.mask,
                delivery=request.delivery, internal=admission.internal,
            )
        else:
            again = EditRequest.build(
                admission.provider, admission.prompt, user_params, delivery=request.delivery,
                internal=admission.internal,
            )
        return again, admission

    async def delete_result(self, interaction: discord.Interaction, job_id: str) -> None:
        await interaction.response.defer()
        try:
            await interaction.delete_original_response()
        except discord.NotFound:
            pass
        await self.bot.storage.update_job(job_id, reply_message_id=None)
        record = await self.bot.storage.get_job(job_id)
        if record is not None and interaction.user.id != record.user_id and interaction.guild_id is not None:
            entry = AuditEntry(interaction.guild_id, interaction.user.id, "deleted result",
                               f"job {job_id} by <@{record.user_id}>", None, time.time())
            await moderation_event(self.bot, entry)

    async def share(self, interaction: discord.Interaction, record: JobRecord) -> None:
        """Post the result to the server's gallery, if that gallery is fit for it (`share_refusal`)."""
        if interaction.guild_id is None:
            raise UserError("Sharing works in servers only.")
        settings = await self.bot.storage.guild_settings(interaction.guild_id)
        if settings.gallery_channel_id is None:
            raise UserError("This server has no gallery channel yet: a moderator can set one with "
                            "`/fill-settings set gallery_channel_id`.")
        gallery = own_text_channel(self.bot, interaction.guild_id, settings.gallery_channel_id)
        if gallery is None:
            raise UserError("The gallery channel set for this server is not one of its text channels, so nothing was "
                            "shared. A moderator can set it again with `/fill-settings set gallery_channel_id`.")
        message = interaction.message
        if message is None or not message.attachments:
            raise UserError("There is no image on this message to share.")
        refusal = share_refusal(record, spoilered=any(a.is_spoiler() for a in message.attachments),
                                gallery_is_nsfw=gallery.is_nsfw())
        if refusal is not None:
            raise UserError(refusal)
        await interaction.response.defer(ephemeral=True, thinking=True)
        # The results only: the small "before" picture stays with the member's own reply.
        files = [await a.to_file(spoiler=a.is_spoiler()) for a in message.attachments if a.filename != BEFORE_NAME]
        request = request_from_json(record.request)
        embed = discord.Embed(description=rendering.quote_prompt(request.prompt, rendering.DESCRIPTION_MAX),
                              colour=rendering.COLOUR_DONE)
        embed.add_field(name="By", value=f"<@{record.user_id}>")
        embed.add_field(name="Model", value=request.spec.label)
        embed.add_field(name="Original", value=message.jump_url, inline=False)
        try:
            posted = await gallery.send(embed=embed, files=files, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.warning("share of job %s to %s failed: %s", record.id, settings.gallery_channel_id, exc.status)
            await interaction.followup.send(
                "I could not post in the gallery channel (missing permissions?). Ask a moderator to check it.",
                ephemeral=True,
            )
            return
        await interaction.followup.send(f"Shared to the gallery: {posted.jump_url}", ephemeral=True)


def _preview_file(prepared: Prepared, preview: bytes | None) -> list[discord.File]:
    """The status message's picture, if it could be drawn."""
    return [] if preview is None else [Upload(prepared.preview_name, preview).to_file()]


def _is_internal(request: FillRequest | EditRequest, name: str) -> bool:
    spec = request.spec.field(name)
    return spec is not None and spec.internal


async def setup(bot: FillBot) -> None:
    await bot.add_cog(JobFlow(bot))
