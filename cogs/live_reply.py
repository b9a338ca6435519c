"""The one reply a job edits as it moves, robust to Discord's rules.

- Edits are throttled (Discord rate-limits message edits): at most one every `min_interval` seconds, and
  only the newest pending state is sent.
- Interaction tokens die after 15 minutes: before that we edit through the interaction webhook, after it
  through the channel (the bot authored the message), and if that is impossible we post a new message that
  mentions the requester.
- A reply the user deleted (404) ends the updates quietly: `gone` becomes True and nothing is retried.
- The final edit says whether it was shown (`Shown`): a Discord outage (5xx, no connection) is worth retrying
  later; anything Discord refuses for good is not.
- A reply whose message id is not known yet (the bot stopped before recording it) is the interaction's
  "@original" while its token lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp
import discord

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 15 * 60
_TOKEN_MARGIN = 30  # stop using a token this long before Discord expires it
_UNKNOWN_MESSAGE = 10008
_UNKNOWN_WEBHOOK = 10015
_INVALID_WEBHOOK_TOKEN = 50027


class Shown(Enum):
    SHOWN = "shown"
    GONE = "gone"  # deleted, or Discord refuses it for good: nothing more can be shown there
    RETRY = "retry"  # Discord could not be reached or had an outage: try again later


@dataclass(frozen=True)
class ReplyTarget:
    """Where a job's reply lives; stored with the job so a restarted bot can find it again."""

    application_id: int
    token: str | None
    token_expires_at: float
    channel_id: int
    message_id: int
    user_id: int


@dataclass(frozen=True)
class Upload:
    """File bytes to attach; a fresh `discord.File` is made for every attempt (Files are single-use)."""

    filename: str
    data: bytes
    spoiler: bool = False

    def to_file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename, spoiler=self.spoiler)


@dataclass
class Edit:
    embed: discord.Embed
    view: discord.ui.View | None = None
    files: Sequence[Upload] | None = None  # None keeps the current attachments
    content: str | None = None


class LiveReply:
    def __init__(
        self, client: discord.Client, target: ReplyTarget, *, min_interval: float = 1.5, last_edit: float = 0.0
    ) -> None:
        self.client = client
        self.target = target
        self.min_interval = min_interval
        self.gone = False
        self._last = last_edit  # monotonic time of the caller's own last edit of this message
        self._pending: Edit | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._redirected = False

    @contextlib.asynccontextmanager
    async def putting_up(self) -> AsyncIterator[None]:
        """Held while the reply's first content is put up by its caller: the job may start meanwhile (its provider
        need not wait for Discord), but its own edits wait until that content is shown."""
        async with self._lock:
            yield

    def update(self, edit: Edit) -> None:
        """Show `edit` soon; older pending states are dropped."""
        if self.gone:
            return
        self._pending = edit
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())

    async def final(self, edit: Edit) -> Shown:
        """Show the final state now (after any edit in flight), replacing pending states.

        The throttle is for status chatter; the one final edit goes out at once (discord.py still honours a
        429's retry-after if Discord objects).
        """
        self._pending = None
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        return await self._send(edit)

    async def _flush_later(self) -> None:
        delay = self._last + self.min_interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        edit, self._pending = self._pending, None
        if edit is not None:
            await self._send(edit)

    async def _send(self, edit: Edit) -> Shown:
        async with self._lock:
            if self.gone:
                return Shown.GONE
            try:
                return _shown(await self._edit(edit))
            except discord.NotFound as exc:
                if exc.code in (_UNKNOWN_WEBHOOK, _INVALID_WEBHOOK_TOKEN) and not self._redirected:
                    self._redirected = True  # the token died early: fall back to the channel
                    return _shown(await self._edit_via_channel(edit))
                log.info("reply %s was deleted; stopping its updates", self.target.message_id)
                self.gone = True
                return Shown.GONE
            except discord.HTTPException as exc:
                if exc.code == _INVALID_WEBHOOK_TOKEN and not self._redirected:
                    self._redirected = True
                    return _shown(await self._edit_via_channel(edit))
                log.warning("could not edit reply %s: %s %s", self.target.message_id, exc.status, exc.text)
                return Shown.RETRY if exc.status >= 500 else Shown.GONE
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("could not reach Discord to edit reply %s: %s", self.target.message_id,
                            type(exc).__name__)
                return Shown.RETRY
            finally:
                self._last = time.monotonic()

    def token_usable(self) -> bool:
        return (
            self.target.token is not None
            and not self._redirected
            and time.time() < self.target.token_expires_at - _TOKEN_MARGIN
        )

    async def _edit(self, edit: Edit) -> discord.Message | None:
        if self.token_usable():
            assert self.target.token is not None
            webhook = discord.Webhook.partial(self.target.application_id, self.target.token, client=self.client)
            # "@original" is the interaction's own reply, for a job whose message id was never recorded.
            message_id: Any = self.target.message_id or "@original"
            return await webhook.edit_message(message_id, **_kwargs(edit))
        if not self.target.message_id:
            return await self._post_new(edit)  # no token and no known message: a new message it is
        return await self._edit_via_channel_raw(edit)

    async def _edit_via_channel_raw(self, edit: Edit) -> discord.Message:
        channel = self.client.get_partial_messageable(self.target.channel_id)
        return await channel.get_partial_message(self.target.message_id).edit(**_kwargs(edit))

    async def _edit_via_channel(self, edit: Edit) -> discord.Message | None:
        try:
            return await self._edit_via_channel_raw(edit)
        except discord.NotFound:
            self.gone = True
            return None
        except discord.HTTPException as exc:
            # Not allowed to edit in that channel (e.g. the bot is not a member): post a new message instead.
            log.info("channel edit of %s refused (%s); posting a new message", self.target.message_id, exc.status)
            return await self._post_new(edit)

    async def _post_new(self, edit: Edit) -> discord.Message | None:
        channel = self.client.get_partial_messageable(self.target.channel_id)
        kwargs = _kwargs(edit)
        files = kwargs.pop("attachments", None)
        content = f"<@{self.target.user_id}> {edit.content or ''}".strip()
        try:
            message = await channel.send(
                content=content,
                embed=edit.embed,
                files=list(files) if files else discord.utils.MISSING,
                view=edit.view or discord.utils.MISSING,
                allowed_mentions=discord.AllowedMentions(users=True),
            )
        except discord.HTTPException as exc:
            log.warning("could not deliver to channel %s: %s", self.target.channel_id, exc.status)
            self.gone = True
            return None
        self.target = ReplyTarget(
            self.target.application_id, None, 0.0, self.target.channel_id, message.id, self.target.user_id
        )
        return message


def _shown(message: discord.Message | None) -> Shown:
    return Shown.SHOWN if message is not None else Shown.GONE


def _kwargs(edit: Edit) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"embed": edit.embed, "view": edit.view}
    if edit.content is not None:
        kwargs["content"] = edit.content
    if edit.files is not None:
        kwargs["attachments"] = [upload.to_file() for upload in edit.files]
    return kwargs
