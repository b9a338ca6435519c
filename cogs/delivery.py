"""A job's Discord front end: the lifecycle's sink that renders progress into the job's one reply and delivers
its ending there (pictures, or what went wrong), reporting back whether the member now has it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot.imaging.preview import BEFORE_NAME
from bot.lifecycle.sink import Ending, Progress, Receipt
from bot.lifecycle.states import State
from bot.params import EditRequest, FillRequest, request_from_json
from bot.pipeline import Finished
from bot.storage import JobRecord, OutputMeta
from cogs import buttons, rendering
from cogs.live_reply import TOKEN_LIFETIME, Edit, LiveReply, ReplyTarget, Shown, Upload

if TYPE_CHECKING:
    from bot.app import FillBot

log = logging.getLogger(__name__)

# Discord's upload limit for a bot message without boosts; keep a margin for the multipart envelope.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024 - 64 * 1024
MAX_FILES = 10  # Discord's attachment limit per message
# Edits never ping: a job that ran this long gets one short message mentioning the member once it is delivered
# (its result or what went wrong), since they have likely looked away; a quicker one was watched as it finished.
NOTIFY_AFTER = 30.0


@dataclass(frozen=True)
class JobContext:
    """Who asked, where, and what the server's rules decided for this job."""

    user_id: int
    guild_id: int | None
    channel_id: int
    channel_nsfw: bool
    spoiler_flagged: bool  # flagged outputs: spoiler (age-restricted channels) instead of withholding


class DiscordSink:
    """Renders one job into its reply. Edits are throttled by `LiveReply`; the ending goes out at once."""

    max_total_bytes = MAX_UPLOAD_BYTES

    def __init__(
        self,
        bot: FillBot,
        job_id: str,
        request: FillRequest | EditRequest,
        context: JobContext,
        reply: LiveReply,
        *,
        started_at: float,
        notices: tuple[str, ...] = (),
    ) -> None:
        self.bot = bot
        self.job_id = job_id
        self.request = request
        self.context = context
        self.reply = reply
        self.started_at = started_at
        self.notices = notices  # from preparing: shown with every status

    def show(self, progress: Progress) -> None:
        if progress.state.terminal:
            return  # the ending is delivered by `deliver`
        embed = rendering.status_embed(self.request, progress, started_at=self.started_at, notices=self.notices)
        self.reply.update(Edit(embed=embed, view=buttons.working_view(self.job_id)))
        if self.reply.gone:
            self.bot.lifecycle.runner.cancel(self.job_id)  # the member deleted the reply: stop paying for it

    async def deliver(self, ending: Ending) -> Receipt:
        state, message = ending.state, ending.message
        notices = ending.notices
        if ending.finished is not None:
            uploads, metas, more = self._uploads(ending.finished)
            if uploads:
                before = self._before(uploads, ending.finished.before)
                embed = rendering.result_embed(
                    self.request, job_id=self.job_id, user_id=self.context.user_id, elapsed=ending.elapsed,
                    notices=notices + ending.finished.notices + tuple(more),
                )
                if before is not None:
                    embed.set_thumbnail(url=f"attachment://{BEFORE_NAME}")
                view = buttons.finished_view(self.job_id, len(uploads), shareable=self.context.guild_id is not None)
                shown = await self._final(Edit(embed=embed, view=view, files=uploads + ([before] if before else [])),
                                          ending, "is done")
                return Receipt(shown is not Shown.RETRY, outputs=metas)
            state, message = State.MODERATED, "Every image was flagged by the provider's safety checker."
        embed = rendering.failure_embed(self.request, state, message, job_id=self.job_id)
        verb = "was canceled" if state is State.CANCELED else "did not finish"
        shown = await self._final(Edit(embed=embed, view=buttons.failed_view(self.job_id), files=[]), ending, verb)
        return Receipt(shown is not Shown.RETRY, note=message if state is not ending.state else None)

    async def _final(self, edit: Edit, ending: Ending, verb: str) -> Shown:
        """The final edit, then the mention a long job's member gets (never for a cancel they pressed themselves,
        nor when the reply had to be posted anew, which mentions them already)."""
        message_id = self.reply.target.message_id
        shown = await self.reply.final(edit)
        moved = self.reply.target.message_id != message_id and self.reply.target.token is None
        if (shown is Shown.SHOWN and ending.elapsed >= NOTIFY_AFTER and not moved
                and ending.state is not State.CANCELED):
            await self._notify(verb)
        return shown

    async def _notify(self, verb: str) -> None:
        target = self.reply.target
        where = self.context.guild_id if self.context.guild_id is not None else "@me"
        link = f"https://discord.com/channels/{where}/{target.channel_id}/{target.message_id}"
        text = f"<@{self.context.user_id}> your /{self.request.spec.operation} job {verb}: {link}"
        mention = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(self.context.user_id)])
        try:
            if target.token is not None and self.reply.token_usable():
                webhook = discord.Webhook.partial(target.application_id, target.token, client=self.bot)
                await webhook.send(text, allowed_mentions=mention)
            else:
                await self.bot.get_partial_messageable(target.channel_id).send(text, allowed_mentions=mention)
        except discord.HTTPException as exc:  # the result is delivered: a missing ping is not worth a retry
            log.info("job %s: could not mention its member (%s)", self.job_id, exc.status)

    @staticmethod
    def _before(uploads: list[Upload], before: bytes | None) -> Upload | None:
        """The "before" picture as the last file, when it fits Discord's file count and upload budget."""
        room = MAX_UPLOAD_BYTES - sum(len(u.data) for u in uploads)
        if before is None or len(uploads) >= MAX_FILES or len(before) > room:
            return None
        return Upload(BEFORE_NAME, before)

    def _uploads(self, finished: Finished) -> tuple[list[Upload], tuple[OutputMeta, ...], list[str]]:
        uploads: list[Upload] = []
        metas: list[OutputMeta] = []
        withheld = 0
        for image in finished.images:
            if image.flagged and not self.context.spoiler_flagged:
                withheld += 1
                continue
            uploads.append(Upload(image.filename, image.data, spoiler=image.flagged))
            metas.append(OutputMeta(image.filename, image.size[0], image.size[1], image.flagged, len(image.data)))
        notes = [f"{withheld} image(s) flagged by the provider were withheld (server setting)."] if withheld else []
        return uploads, tuple(metas), notes


async def sink_for_record(bot: FillBot, record: JobRecord) -> DiscordSink:
    """The sink of a job this process takes over: its reply is found again from what was recorded."""
    context = JobContext(
        record.user_id, record.guild_id, record.channel_id, record.channel_nsfw,
        await bot.spoiler_flagged(record.guild_id, record.channel_nsfw),
    )
    target = ReplyTarget(
        record.application_id, record.interaction_token, record.token_expires_at or 0.0, record.channel_id,
        record.reply_message_id or 0, record.user_id,
    )
    reply = LiveReply(bot, target, min_interval=bot.edit_interval)
    return DiscordSink(bot, record.id, request_from_json(record.request), context, reply,
                       started_at=record.created_at, notices=record.notices)


def new_target(application_id: int, token: str, created_at: float, context: JobContext) -> ReplyTarget:
    """The reply of a fresh interaction: its token lives 15 minutes from the interaction's creation."""
    return ReplyTarget(application_id, token, created_at + TOKEN_LIFETIME, context.channel_id, 0, context.user_id)
