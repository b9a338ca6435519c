"""One job on Discord, from a validated request to a delivered reply; shared by every command and button.

Order of work, so that nothing is lost and bad input never reaches a provider:
1. the caller has already answered cheap checks ephemerally and holds an admission `Reservation`;
2. `start` defers within Discord's 3-second window, downloads and prepares the pictures in a thread
   (user errors then reach only the user: the public "thinking" reply is deleted and the error is sent
   ephemerally);
3. the job and its inputs are recorded, then the reply shows the mask preview and a live status;
4. the engine runs the job; updates are stored and rendered (throttled); the final edit carries the images.
`resume_all` picks up recorded jobs after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import UserError
from bot.guild_settings import AuditEntry, GuildSettings, channel_allowed, effective_safety, usable_providers
from bot.jobs import JobUpdate
from bot.lifecycle.states import State
from bot.moderation import LimitGate, blocked_notice, guild_filter
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
from bot.pipeline import Finished, JobInputs, Prepared
from bot.providers.base import Handle, ProviderJob
from bot.service import JobResult
from bot.storage import JobRecord, OutputMeta
from cogs import buttons, rendering
from cogs.channels import own_text_channel
from cogs.live_reply import TOKEN_LIFETIME, Edit, LiveReply, ReplyTarget, Upload

if TYPE_CHECKING:
    from bot.app import FillBot

log = logging.getLogger(__name__)

# Discord's upload limit for a bot message without boosts; keep a margin for the multipart envelope.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024 - 64 * 1024


@dataclass(frozen=True)
class JobContext:
    """Who asked, where, and what the server's rules decided for this job."""

    user_id: int
    guild_id: int | None
    channel_id: int
    channel_nsfw: bool
    spoiler_flagged: bool  # flagged outputs: spoiler (age-restricted channels) instead of withholding


@dataclass(frozen=True)
class Admission:
    """What the server's rules decided before any picture was touched."""

    provider: str
    prompt: str  # blocked 'strip' terms removed
    internal: dict[str, Value]  # the provider's safety controls for this channel
    context: JobContext
    settings: GuildSettings
    private_notices: tuple[str, ...] = ()  # told only to the user (e.g. which terms were removed)


class JobFlow:
    def __init__(self, bot: FillBot) -> None:
        self.bot = bot
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gate: LimitGate | None = None
        # Downloads + preparation at once: more would only hold pictures in memory while waiting for a CPU.
        self._preparing = asyncio.Semaphore(2 * (os.cpu_count() or 1))

    # ----------------------------------------------------------------------------------------------- start
    async def admit(
        self,
        interaction: discord.Interaction,
        *,
        provider: str | None,
        operation: Operation,
        prompt: str,
        outputs: Value | None,
    ) -> Admission:
        """Apply the server's rules that need no pictures: channel, provider, outputs, blocked terms, safety."""
        guild_id = interaction.guild_id
        storage = self.bot.storage
        settings = await storage.guild_settings(guild_id) if guild_id is not None else GuildSettings()
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
        private: tuple[str, ...] = ()
        if guild_id is not None:
            verdict = (await guild_filter(storage, guild_id)).check(prompt)
            if verdict.blocked_term is not None:
                notice = blocked_notice(interaction.user.id, channel_id, verdict.blocked_term)
                self.spawn(self.bot.announce(guild_id, notice))  # in the background: the refusal goes first
                raise UserError(
                    f"Your prompt contains “{verdict.blocked_term}”, which this server does not allow. "
                    "Please rephrase it."
                )
            if verdict.stripped_terms:
                private = (f"This server removed {', '.join(f'“{t}”' for t in verdict.stripped_terms)} "
                           "from your prompt.",)
                prompt = verdict.stripped_prompt
        override = await storage.channel_override(guild_id, home) if guild_id is not None else None
        safety = effective_safety(settings, override, channel_is_nsfw=nsfw)
        context = JobContext(
            user_id=interaction.user.id,
            guild_id=guild_id,
            channel_id=channel_id,
            channel_nsfw=nsfw,
            spoiler_flagged=safety.flagged_outputs == "spoiler",
        )
        return Admission(chosen, prompt, safety.for_provider(chosen), context, settings, private)

    async def providers_for(self, guild_id: int | None, operation: Operation) -> list[tuple[str, str]]:
        """(name, label) of the providers this server may use for `operation`."""
        settings = await self.bot.storage.guild_settings(guild_id) if guild_id is not None else GuildSettings()
        able = [s for s in SPECS if s.operation == operation and s.provider in self.bot.service.providers]
        usable = usable_providers(settings, [s.provider for s in able])
        return [(s.provider, f"{s.provider}: {s.label}"[:100]) for s in able if s.provider in usable]

    async def _choose_provider(
        self, guild_id: int | None, settings: GuildSettings, asked: str | None, operation: Operation
    ) -> str:
        usable = [name for name, _ in await self.providers_for(guild_id, operation)]
        if not usable:
            raise UserError(f"No provider that can do /{operation} is available here. A moderator can allow one "
                            "with `/fill-settings providers`.")
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
            self._gate = LimitGate(self.bot.storage)
        return self._gate

    async def start(
        self,
        interaction: discord.Interaction,
        request: FillRequest | EditRequest,
        admission: Admission,
        load: Callable[[], Coroutine[Any, Any, Prepared]],
    ) -> None:
        """Check limits and record the job, defer, prepare with `load`, then run it in the background."""
        context = admission.context
        job_id = self.bot.service.new_job_id()
        target = ReplyTarget(
            application_id=interaction.application_id,
            token=interaction.token,
            token_expires_at=interaction.created_at.timestamp() + TOKEN_LIFETIME,
            channel_id=context.channel_id,
            message_id=0,
            user_id=context.user_id,
        )
        # Decide and record under the same lock, so a burst cannot pass one check twice.
        async with self.gate.admission(admission.settings, context.user_id, context.guild_id) as decision:
            if not decision.allowed:
                raise UserError(decision.message)
            await self.bot.storage.create_job(self._record(job_id, request, context, target), None, None)
        try:
            if not interaction.response.is_done():
                await interaction.response.defer(thinking=True)
            async with self._preparing:
                prepared = await load()
        except UserError as exc:
            await self.bot.storage.discard_job(job_id)
            await self._refuse_after_defer(interaction, exc.message)
            return
        except BaseException:
            await self.bot.storage.discard_job(job_id)
            raise
        await self.bot.storage.save_inputs(job_id, prepared.inputs.original, prepared.inputs.mask)
        started = time.time()
        notices = prepared.notices
        first = rendering.status_embed(
            request, JobUpdate(job_id, State.QUEUED, 0.0), started_at=started, notices=notices
        )
        try:
            message = await interaction.edit_original_response(
                embed=first,
                attachments=[Upload(prepared.preview_name, prepared.preview).to_file()],
                view=buttons.working_view(job_id),
            )
        except discord.HTTPException as exc:
            log.warning("job %s: could not show its reply (%s); running it anyway", job_id, exc.status)
            message = None
        if message is not None:
            target = ReplyTarget(
                target.application_id, target.token, target.token_expires_at, target.channel_id, message.id,
                target.user_id,
            )
            await self.bot.storage.update_job(job_id, reply_message_id=message.id)
            # Only now: while the public reply is still "thinking", a follow-up would replace it, flags and all.
            for note in admission.private_notices:
                with contextlib.suppress(discord.HTTPException):
                    await interaction.followup.send(note, ephemeral=True)
        reply = LiveReply(self.bot, target, min_interval=self.bot.edit_interval, last_edit=time.monotonic())
        if message is None:
            reply.gone = True
        self.spawn(self._run(job_id, request, context, reply, started, notices, job=prepared.job))

    async def _refuse_after_defer(self, interaction: discord.Interaction, message: str) -> None:
        """The public 'thinking' reply is already there: remove it and tell only the user."""
        with contextlib.suppress(discord.HTTPException):
            await interaction.delete_original_response()
        with contextlib.suppress(discord.HTTPException):
            await interaction.followup.send(message, ephemeral=True)

    def _record(
        self, job_id: str, request: FillRequest | EditRequest, context: JobContext, target: ReplyTarget
    ) -> JobRecord:
        now = time.time()
        seed = request.params.get("seed")
        return JobRecord(
            id=job_id,
            kind=request.spec.operation,
            user_id=context.user_id,
            guild_id=context.guild_id,
            channel_id=context.channel_id,
            provider=request.spec.provider,
            model=request.spec.model,
            status=State.QUEUED.value,
            handle=None,
            request=request_to_json(request),
            prompt=request.prompt,
            application_id=target.application_id,
            interaction_token=target.token,
            token_expires_at=target.token_expires_at,
            reply_message_id=None,
            outputs=(),
            seed=int(seed) if isinstance(seed, int) else None,
            error=None,
            created_at=now,
            updated_at=now,
            finished_at=None,
            channel_nsfw=context.channel_nsfw,
        )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop local work; provider jobs keep running and are resumed on the next start."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------------------------ run
    async def _run(
        self,
        job_id: str,
        request: FillRequest | EditRequest,
        context: JobContext,
        reply: LiveReply,
        started: float,
        notices: tuple[str, ...],
        *,
        job: ProviderJob | None = None,
        handle: Handle | None = None,
    ) -> None:
        """Run a recorded job (submit `job`, or resume `handle`); its pictures are read back from storage only
        when the outputs are in, so hundreds of waiting jobs hold little memory."""
        storage = self.bot.storage

        async def load_inputs() -> JobInputs:
            stored = await storage.load_inputs(job_id)
            if stored is None:
                raise UserError("The pictures of this job are no longer stored.")
            return JobInputs(*stored)

        saved_handle = handle

        async def on_update(update: JobUpdate) -> None:
            nonlocal saved_handle
            if update.handle is not None and update.handle != saved_handle:
                saved_handle = update.handle
                await storage.update_job(job_id, status=update.state.value, handle=update.handle.to_json())
            elif not update.state.terminal:
                await storage.update_job(job_id, status=update.state.value)
            if not update.state.terminal:
                embed = rendering.status_embed(request, update, started_at=started, notices=notices)
                reply.update(Edit(embed=embed, view=buttons.working_view(job_id)))
                if reply.gone:
                    self.bot.service.engine.cancel(job_id)  # the user deleted the reply: stop paying for it

        async def before_submit() -> None:
            await storage.update_job(job_id, status=State.STARTING.value)

        try:
            result = await self.bot.service.run(
                job_id,
                request,
                load_inputs,
                on_update,
                job=job if handle is None else None,
                handle=handle,
                before_submit=before_submit,
                max_total_bytes=MAX_UPLOAD_BYTES,
            )
        except Exception:
            log.exception("job %s crashed (provider %s, user %s)", job_id, request.spec.provider, context.user_id)
            result = None
        await self._deliver(job_id, request, context, reply, result, notices)

    async def _deliver(
        self,
        job_id: str,
        request: FillRequest | EditRequest,
        context: JobContext,
        reply: LiveReply,
        result: JobResult | None,
        notices: tuple[str, ...],
    ) -> None:
        storage = self.bot.storage
        state: State
        message: str | None
        if result is None:
            state, message = State.FAILED, "Something went wrong on our side; the error was logged. Please try again."
        else:
            state, message = result.outcome.state, result.outcome.message
        finished = result.finished if result is not None else None
        if finished is not None and result is not None:
            uploads, metas, more = self._uploads(finished, context)
            all_notices = notices + finished.notices + tuple(more)
            if result.outcome.message:
                all_notices += (result.outcome.message,)
            if result.outcome.dropped:
                all_notices += (f"{result.outcome.dropped} image(s) were withheld by the provider's safety checker.",)
            if not uploads:
                state, message = State.MODERATED, "Every image was flagged by the provider's safety checker."
            else:
                embed = rendering.result_embed(
                    request, job_id=job_id, user_id=context.user_id, elapsed=result.outcome.elapsed,
                    notices=all_notices,
                )
                view = buttons.finished_view(job_id, len(uploads), shareable=context.guild_id is not None)
                await storage.update_job(
                    job_id, status=State.SUCCEEDED.value, outputs=metas, finished_at=time.time(),
                    interaction_token=None,
                )
                await reply.final(Edit(embed=embed, view=view, files=uploads))
                return
        embed = rendering.failure_embed(request, state, message, job_id=job_id)
        await storage.update_job(
            job_id, status=state.value, error=message, finished_at=time.time(), interaction_token=None
        )
        await reply.final(Edit(embed=embed, view=buttons.failed_view(job_id), files=[]))

    def _uploads(
        self, finished: Finished, context: JobContext
    ) -> tuple[list[Upload], tuple[OutputMeta, ...], list[str]]:
        uploads: list[Upload] = []
        metas: list[OutputMeta] = []
        withheld = 0
        for image in finished.images:
            if image.flagged and not context.spoiler_flagged:
                withheld += 1
                continue
            uploads.append(Upload(image.filename, image.data, spoiler=image.flagged))
            metas.append(OutputMeta(image.filename, image.size[0], image.size[1], image.flagged, len(image.data)))
        notes = [f"{withheld} image(s) flagged by the provider were withheld (server setting)."] if withheld else []
        return uploads, tuple(metas), notes

    # ------------------------------------------------------------------------------------------- recovery
    async def resume_all(self) -> None:
        """After a restart: keep polling jobs the provider accepted; end the rest with a clear message."""
        for record in await self.bot.storage.unfinished_jobs():
            try:
                await self._resume(record)
            except Exception:
                log.exception("could not resume job %s", record.id)

    async def _resume(self, record: JobRecord) -> None:
        request = request_from_json(record.request)
        context = JobContext(
            record.user_id, record.guild_id, record.channel_id, record.channel_nsfw,
            await self.bot.spoiler_flagged(record.guild_id, record.channel_nsfw),
        )
        target = ReplyTarget(
            record.application_id, record.interaction_token, record.token_expires_at or 0.0, record.channel_id,
            record.reply_message_id or 0, record.user_id,
        )
        reply = LiveReply(self.bot, target, min_interval=self.bot.edit_interval)
        if not record.reply_message_id:
            reply.gone = True
        stored = await self.bot.storage.load_inputs(record.id)
        if stored is None:
            await self._deliver(record.id, request, context, reply, None, ())
            return
        handle = Handle.from_json(record.handle) if record.handle else None
        if handle is not None and handle.provider != "local":
            log.info("resuming job %s at %s", record.id, handle.provider)
            self.spawn(self._run(record.id, request, context, reply, record.created_at, (), handle=handle))
            return
        if record.status == State.QUEUED.value or record.provider == "local":
            # Never sent (or local, which costs nothing): safe to submit again.
            prepared = await self.bot.service.prepare_again(request, JobInputs(*stored))
            log.info("resubmitting job %s that had not reached %s", record.id, record.provider)
            self.spawn(self._run(record.id, request, context, reply, record.created_at, (), job=prepared.job))
            return
        message = (
            "The bot restarted while this job was being submitted, so we cannot tell whether the provider got "
            "it. It was not sent again (to avoid paying twice): press Rerun to try again."
        )
        await self.bot.storage.update_job(
            record.id, status=State.FAILED.value, error=message, finished_at=time.time(), interaction_token=None
        )
        embed = rendering.failure_embed(request, State.FAILED, message, job_id=record.id)
        await reply.final(Edit(embed=embed, view=buttons.failed_view(record.id), files=[]))


    # -------------------------------------------------------------------------------------- button actions
    async def rerun(self, interaction: discord.Interaction, record: JobRecord) -> None:
        """The same job again with a new seed, as a new reply."""
        request = request_from_json(record.request)
        stored = await self.bot.storage.load_inputs(record.id)
        if stored is None:
            raise UserError("The pictures of this job are no longer stored, so it cannot be rerun.")
        inputs = JobInputs(*stored)
        await self._again(interaction, request, lambda r: self.bot.service.prepare_again(r, inputs))

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
        prepare: Callable[[FillRequest | EditRequest], Coroutine[Any, Any, Prepared]],
    ) -> None:
        """Start a follow-up job under today's server rules: admission, safety and a fresh seed."""
        admission = await self.admit(
            interaction, provider=request.spec.provider, operation=request.spec.operation, prompt=request.prompt,
            outputs=request.params.get("outputs"),
        )
        user_params = {k: v for k, v in request.params.items() if not _is_internal(request, k) and k != "seed"}
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
        await self.start(interaction, again, admission, lambda: prepare(again))

    async def delete_result(self, interaction: discord.Interaction, job_id: str) -> None:
        await interaction.response.defer()
        try:
            await interaction.delete_original_response()
        except discord.NotFound:
            pass
        await self.bot.storage.update_job(job_id, reply_message_id=None)
        record = await self.bot.storage.get_job(job_id)
        if record is not None and interaction.user.id != record.user_id and interaction.guild_id is not None:
            await self.bot.moderation_event(
                AuditEntry(interaction.guild_id, interaction.user.id, "deleted result", f"job {job_id} by "
                           f"<@{record.user_id}>", None, time.time())
            )

    async def share(self, interaction: discord.Interaction, record: JobRecord) -> None:
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
        await interaction.response.defer(ephemeral=True, thinking=True)
        files = [await a.to_file(spoiler=a.is_spoiler()) for a in message.attachments]
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


def _is_internal(request: FillRequest | EditRequest, name: str) -> bool:
    spec = request.spec.field(name)
    return spec is not None and spec.internal
