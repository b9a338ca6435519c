"""A local fake of the Discord REST API and CDN, for driving real discord.py against 127.0.0.1.

`FakeDiscord` records every request, keeps messages in their current state (attachments with their
bytes) and enforces the Discord rules a bot most often trips over: one acknowledgement per interaction
within 3 s, 15-minute interaction tokens, message/embed/component limits, upload size, deleted
messages, rate limits. Errors use Discord's real statuses and JSON shapes so discord.py raises the same
exceptions it would in production.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import fnmatch
import io
import json
import math
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
MiB = 1024 * 1024

DEFAULT_APP_ID = 4000
DEFAULT_OWNER_ID = 1003

# Interaction types (incoming) and callback types (outgoing).
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE = 1, 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9

# Message flags.
SUPPRESS_EMBEDS, EPHEMERAL, LOADING, IS_COMPONENTS_V2 = 1 << 2, 1 << 6, 1 << 7, 1 << 15

_ALLOWED_CALLBACKS: dict[int, frozenset[int]] = {
    PING: frozenset({PONG}),
    APPLICATION_COMMAND: frozenset({CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL, 10, 12}),
    MESSAGE_COMPONENT: frozenset(
        {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE, MODAL, 10, 12}
    ),
    AUTOCOMPLETE: frozenset({AUTOCOMPLETE_RESULT}),
    MODAL_SUBMIT: frozenset({CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE, 10}),
}


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with Discord's exact `Content-Type: application/json` (discord.py compares it verbatim)."""
    return web.Response(body=json.dumps(body).encode(), status=status, headers=headers, content_type="application/json")


def iso(ts: float) -> str:
    """Discord's ISO-8601 timestamp format for a unix time."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


class DiscordAPIError(Exception):
    """An error the fake answers with, in Discord's `{"message", "code"[, "errors"]}` shape."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code, **self.extra}
        if self.errors:
            body["errors"] = self.errors
        return body


def unknown_message() -> DiscordAPIError:
    return DiscordAPIError(404, 10008, "Unknown Message")


def unknown_webhook() -> DiscordAPIError:
    return DiscordAPIError(404, 10015, "Unknown Webhook")


def unknown_channel() -> DiscordAPIError:
    return DiscordAPIError(404, 10003, "Unknown Channel")


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request, as received."""

    field: str
    filename: str
    content_type: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class RecordedRequest:
    """One request the fake received, with what it answered."""

    method: str
    path: str
    query: dict[str, str]
    route: str
    json: Any
    files: list[UploadedFile]
    at: float
    status: int = 0
    response: Any = None
    interaction_id: int | None = None
    token: str | None = None
    message_id: int | None = None
    message_flags: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def callback_type(self) -> int | None:
        """The interaction callback type (1/4/5/6/7/8/9) for callback requests, else None."""
        if self.route == "interaction_callback" and isinstance(self.json, dict):
            return int(self.json.get("type", 0))
        return None

    @property
    def data(self) -> dict[str, Any]:
        """The message-like body: callback `data`, or the JSON body of a message request."""
        if not isinstance(self.json, dict):
            return {}
        if self.route == "interaction_callback":
            inner = self.json.get("data")
            return inner if isinstance(inner, dict) else {}
        return self.json

    @property
    def flags(self) -> int:
        """Flags of the message this request produced or touched (falls back to the sent flags)."""
        return self.message_flags or int(self.data.get("flags") or 0)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def content(self) -> str | None:
        return self.data.get("content")

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return list(self.data.get("embeds") or [])

    @property
    def components(self) -> list[dict[str, Any]] | None:
        return self.data.get("components")

    @property
    def choices(self) -> list[dict[str, Any]]:
        return list(self.data.get("choices") or [])


@dataclass
class StoredAttachment:
    """An attachment with its real bytes, served by the fake CDN."""

    id: int
    filename: str
    content_type: str
    data: bytes
    url: str
    proxy_url: str
    description: str | None = None
    width: int | None = None
    height: int | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.proxy_url,
            "content_type": self.content_type,
        }
        if self.width is not None and self.height is not None:
            payload["width"] = self.width
            payload["height"] = self.height
        if self.description is not None:
            payload["description"] = self.description
        if self.ephemeral:
            payload["ephemeral"] = True
        return payload


@dataclass
class FakeMessage:
    """A message in its current state."""

    id: int
    channel_id: int
    author: dict[str, Any]
    created_at: float
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    edited_at: float | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None
    deleted: bool = False
    edits: int = 0

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    @property
    def text(self) -> str:
        """Content plus embed titles/descriptions/fields/footers, for simple text assertions."""
        parts = [self.content] if self.content else []
        for embed in self.embeds:
            parts.extend(str(embed[k]) for k in ("title", "description") if embed.get(k))
            parts.extend(f"{f.get('name', '')}: {f.get('value', '')}" for f in embed.get("fields", []))
            if (embed.get("footer") or {}).get("text"):
                parts.append(embed["footer"]["text"])
        return "\n".join(parts)

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "channel_id": str(self.channel_id),
            "author": dict(self.author),
            "content": self.content,
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at) if self.edited_at is not None else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.to_payload() for a in self.attachments],
            "embeds": [dict(e) for e in self.embeds],
            "pinned": False,
            "flags": self.flags,
            "components": json.loads(json.dumps(self.components)),
        }
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = dict(self.interaction_metadata)
        if self.message_reference is not None:
            payload["message_reference"] = dict(self.message_reference)
        return payload


@dataclass
class FakeChannel:
    """A channel the fake knows; `type` 0 is a guild text channel, 1 a DM."""

    id: int
    name: str = "general"
    type: int = 0
    guild_id: int | None = None
    nsfw: bool = False
    parent_id: int | None = None
    position: int = 0
    topic: str | None = None
    recipients: list[dict[str, Any]] = field(default_factory=list)
    last_message_id: int | None = None

    def to_payload(self) -> dict[str, Any]:
        if self.type == 1:
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": str(self.last_message_id) if self.last_message_id else None,
                "recipients": [dict(r) for r in self.recipients],
                "flags": 0,
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id) if self.guild_id is not None else None,
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "parent_id": str(self.parent_id) if self.parent_id is not None else None,
            "topic": self.topic,
            "nsfw": self.nsfw,
            "last_message_id": str(self.last_message_id) if self.last_message_id else None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }


@dataclass
class FakeInteraction:
    """What the fake knows about one interaction it was told about (see `register_interaction`)."""

    id: int
    token: str
    type: int
    application_id: int
    channel_id: int
    guild_id: int | None
    user: dict[str, Any]
    created_at: float
    source_message_id: int | None = None
    command_type: int | None = None
    name: str | None = None
    acked_type: int | None = None
    acked_at: float | None = None
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None


@dataclass
class _Fault:
    method: str
    path: str
    status: int
    remaining: int
    retry_after: float
    is_global: bool
    body: Any


@dataclass
class _Limit:
    method: str
    path: str
    limit: int
    per: float
    bucket: str
    hits: dict[str, collections.deque[float]] = field(default_factory=dict)


def walk_components(components: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every component, depth-first, including those nested in rows, sections, containers and labels."""
    for comp in components:
        yield comp
        if isinstance(comp.get("components"), list):
            yield from walk_components(comp["components"])
        if isinstance(comp.get("component"), dict):
            yield from walk_components([comp["component"]])
        if isinstance(comp.get("accessory"), dict):
            yield from walk_components([comp["accessory"]])


def _max_len(limit: int) -> dict[str, Any]:
    return {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {limit} or fewer in length."}]}


def _set_error(errors: dict[str, Any], path: list[str | int], error: dict[str, Any]) -> None:
    node = errors
    for key in path[:-1]:
        node = node.setdefault(str(key), {})
    node[str(path[-1])] = error


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None


_REC = web.RequestKey("rec", RecordedRequest)


class FakeDiscord:
    """An aiohttp server on 127.0.0.1 speaking enough of Discord's API v10 for interaction-driven bots.

    Use as `async with FakeDiscord() as fake:`; point discord.py at `fake.api_base` (the harness does).
    The fake's clock (`now()`) can be moved with `advance()`; it only affects the fake's own rules
    (3-second acknowledgement window, 15-minute tokens), not discord.py's.
    """

    def __init__(
        self,
        *,
        application_id: int = DEFAULT_APP_ID,
        bot_name: str = "fillbot",
        owner: dict[str, Any] | None = None,
        bot_token: str | None = None,
        max_upload_bytes: int = 10 * MiB,
        ack_window: float = 3.0,
        token_lifetime: float = 15 * 60.0,
    ) -> None:
        self.application_id = application_id
        self.bot_user: dict[str, Any] = {
            "id": str(application_id),
            "username": bot_name,
            "discriminator": "0001",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "public_flags": 0,
            "flags": 0,
        }
        self.owner: dict[str, Any] = owner or {
            "id": str(DEFAULT_OWNER_ID),
            "username": "owner",
            "discriminator": "0",
            "global_name": "Owner",
            "avatar": None,
            "public_flags": 0,
        }
        self.bot_token = bot_token
        self.followups_need_original = False  # True: follow-ups fail once the original response is deleted
        self.max_upload_bytes = max_upload_bytes
        self.ack_window = ack_window
        self.token_lifetime = token_lifetime
        self.clock_offset = 0.0

        self.requests: list[RecordedRequest] = []
        self.unhandled: list[RecordedRequest] = []
        self.channels: dict[int, FakeChannel] = {}
        self.forbidden_channels: set[int] = set()
        self.interactions: dict[int, FakeInteraction] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.attachments: dict[int, StoredAttachment] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}

        self._tokens: dict[str, int] = {}
        self._faults: list[_Fault] = []
        self._holds: list[tuple[str, str, asyncio.Event]] = []
        self._limits: list[_Limit] = []
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._changed = asyncio.Event()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * MiB)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """Base URL of the server (CDN routes live here)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_base(self) -> str:
        """What `discord.http.Route.BASE` must be set to."""
        return self.url + API_PREFIX

    # ----------------------------------------------------------------- clock and ids

    def now(self) -> float:
        """The fake's clock: wall time plus `clock_offset`."""
        return time.time() + self.clock_offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (e.g. 901 to expire every interaction token)."""
        self.clock_offset += seconds

    def snowflake(self, at: float | None = None) -> int:
        """A unique snowflake whose timestamp is `at` (default: now)."""
        ms = int((self.now() if at is None else at) * 1000) - DISCORD_EPOCH_MS
        self._seq = (self._seq + 1) % 4096
        return (ms << 22) | (1 << 17) | self._seq

    # ----------------------------------------------------------------- setup / test controls

    def add_channel(self, channel: FakeChannel) -> FakeChannel:
        self.channels[channel.id] = channel
        return channel

    def register_interaction(self, payload: dict[str, Any], *, created_at: float | None = None) -> FakeInteraction:
        """Tell the fake an interaction was created (the gateway would have). Idempotent per id."""
        iid = int(payload["id"])
        existing = self.interactions.get(iid)
        if existing is not None:
            return existing
        user = (payload.get("member") or {}).get("user") or payload.get("user") or {}
        channel = payload.get("channel") or {}
        data = payload.get("data") or {}
        message = payload.get("message")
        inter = FakeInteraction(
            id=iid,
            token=payload["token"],
            type=int(payload["type"]),
            application_id=int(payload["application_id"]),
            channel_id=int(channel.get("id") or payload.get("channel_id") or 0),
            guild_id=int(payload["guild_id"]) if payload.get("guild_id") else None,
            user=user,
            created_at=self.now() if created_at is None else created_at,
            source_message_id=int(message["id"]) if message else None,
            command_type=data.get("type"),
            name=data.get("name"),
        )
        self.interactions[iid] = inter
        self._tokens[inter.token] = iid
        return inter

    def interaction(self, token_or_id: str | int) -> FakeInteraction:
        iid = self._tokens[token_or_id] if isinstance(token_or_id, str) else token_or_id
        return self.interactions[iid]

    def expire_token(self, token: str) -> None:
        """Make this interaction's token older than 15 minutes (webhook routes answer 401/50027)."""
        inter = self.interaction(token)
        inter.created_at = min(inter.created_at, self.now() - self.token_lifetime - 1)

    def expire_ack_window(self, token: str) -> None:
        """Make this interaction older than the 3-second window (callbacks answer 404/10062)."""
        inter = self.interaction(token)
        inter.created_at = min(inter.created_at, self.now() - self.ack_window - 0.001)

    def delete_message(self, message_id: int) -> None:
        """Simulate someone deleting a message: later GET/PATCH/DELETE answer 404/10008."""
        self.messages[message_id].deleted = True
        self._touch()

    def fail_next(
        self,
        method: str,
        path: str,
        *,
        status: int = 500,
        times: int = 1,
        retry_after: float = 0.05,
        is_global: bool = False,
        body: Any = None,
    ) -> None:
        """Answer the next `times` requests matching METHOD and an fnmatch `path` (e.g.
        "/api/v10/webhooks/*/messages/@original") with `status`. 429s carry Discord's body and headers."""
        self._faults.append(_Fault(method.upper(), path, status, times, retry_after, is_global, body))

    def hold_next(self, method: str, path: str) -> asyncio.Event:
        """The next request matching METHOD and an fnmatch `path` is answered only once the returned event is set
        (Discord being slow to answer it); it is recorded when it arrives."""
        released = asyncio.Event()
        self._holds.append((method.upper(), path, released))
        return released

    def rate_limit_next(
        self, method: str, path: str, *, times: int = 1, retry_after: float = 0.05, is_global: bool = False
    ) -> None:
        self.fail_next(method, path, status=429, times=times, retry_after=retry_after, is_global=is_global)

    def limit(self, method: str, path: str, *, limit: int, per: float) -> None:
        """Emulate a real bucket: at most `limit` requests per `per` seconds for each concrete path matching
        the fnmatch `path`; successes carry X-RateLimit-* headers, excess requests get 429."""
        self._limits.append(_Limit(method.upper(), path, limit, per, secrets.token_hex(8)))

    def host_file(self, filename: str, data: bytes, content_type: str = "application/octet-stream") -> tuple[str, int]:
        """Serve bytes from the fake CDN; returns (url, size)."""
        att = self._store_attachment(filename, data, content_type, ephemeral=True)
        return att.url, att.size

    def attachment_payload(
        self, filename: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Host bytes and return the resolved-attachment object Discord puts in an interaction's data."""
        return self._store_attachment(filename, data, content_type, ephemeral=True).to_payload()

    def put_message(
        self,
        channel_id: int,
        content: str = "",
        *,
        author: dict[str, Any] | None = None,
        files: Iterable[tuple[str, bytes, str]] = (),
        embeds: list[dict[str, Any]] | None = None,
        components: list[dict[str, Any]] | None = None,
    ) -> FakeMessage:
        """Seed a message (e.g. a user's post carrying an image) without going through the API."""
        msg = FakeMessage(
            id=self.snowflake(),
            channel_id=channel_id,
            author=author or dict(self.bot_user),
            created_at=self.now(),
            content=content,
            embeds=list(embeds or []),
            components=list(components or []),
            attachments=[self._store_attachment(n, d, t, channel_id=channel_id) for n, d, t in files],
        )
        self.messages[msg.id] = msg
        self._touch()
        return msg

    # ----------------------------------------------------------------- queries for tests

    def message(self, message_id: int) -> FakeMessage:
        return self.messages[message_id]

    def original(self, token: str) -> FakeMessage | None:
        """The interaction's original response (or the component's message after a type 6/7 ack)."""
        inter = self.interaction(token)
        return self.messages.get(inter.original_id) if inter.original_id is not None else None

    def followups(self, token: str) -> list[FakeMessage]:
        return [self.messages[m] for m in self.interaction(token).followup_ids]

    def messages_in(
        self, channel_id: int, *, include_ephemeral: bool = False, include_deleted: bool = False
    ) -> list[FakeMessage]:
        """Messages in a channel, oldest first; what other users would see unless told otherwise."""
        return [
            m
            for m in sorted(self.messages.values(), key=lambda m: m.id)
            if m.channel_id == channel_id
            and (include_ephemeral or not m.ephemeral)
            and (include_deleted or not m.deleted)
        ]

    def requests_to(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests filtered by method and fnmatch path."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path is None or fnmatch.fnmatchcase(r.path, path))
        ]

    def interaction_requests(self, token: str) -> list[RecordedRequest]:
        """Every callback/webhook request made for this interaction, in order."""
        return [r for r in self.requests if r.token == token]

    async def changed(self, within: float) -> None:
        """Wait up to `within` seconds for a request to be handled or state to change (for polling)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)

    def _touch(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ----------------------------------------------------------------- server plumbing

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        p = API_PREFIX
        r.add_post(p + "/interactions/{interaction_id}/{token}/callback", self._interaction_callback)
        r.add_post(p + "/webhooks/{app_id}/{token}", self._webhook_execute)
        r.add_get(p + "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_message)
        r.add_patch(p + "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_message)
        r.add_delete(p + "/webhooks/{app_id}/{token}/messages/{message_id}", self._webhook_message)
        r.add_get(p + "/channels/{channel_id}", self._channel_get)
        r.add_post(p + "/channels/{channel_id}/messages", self._channel_message_create)
        r.add_post(p + "/channels/{channel_id}/typing", self._channel_typing)
        r.add_get(p + "/channels/{channel_id}/messages/{message_id}", self._channel_message)
        r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self._channel_message)
        r.add_delete(p + "/channels/{channel_id}/messages/{message_id}", self._channel_message)
        r.add_get(p + "/users/@me", self._users_me)
        r.add_get(p + "/applications/@me", self._application_me)
        r.add_get(p + "/oauth2/applications/@me", self._application_me)
        r.add_get(p + "/gateway/bot", self._gateway_bot)
        r.add_get(p + "/gateway", self._gateway_bot)
        r.add_route("*", p + "/applications/{app_id}/commands", self._commands)
        r.add_route("*", p + "/applications/{app_id}/guilds/{guild_id}/commands", self._commands)
        for prefix in ("/attachments", "/ephemeral-attachments", "/media/attachments", "/media/ephemeral-attachments"):
            r.add_get(prefix + "/{owner_id}/{attachment_id}/{filename}", self._cdn)
        r.add_route("*", "/{tail:.*}", self._unhandled)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.name or getattr(request.match_info.handler, "__name__", "?").lstrip("_")
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            route=route,
            json=None,
            files=[],
            at=self.now(),
        )
        request[_REC] = rec
        self.requests.append(rec)
        if "token" in request.match_info:
            rec.token = request.match_info["token"]
            rec.interaction_id = self._tokens.get(rec.token)
        try:
            rec.json, rec.files = await self._read_body(request)
            for hold in self._holds:
                if hold[0] == request.method and fnmatch.fnmatchcase(request.path, hold[1]):
                    self._holds.remove(hold)
                    self._touch()
                    await hold[2].wait()
                    break
            fault = self._take_fault(request)
            if fault is not None:
                raise fault
            limit_headers = self._apply_limits(request)
            response: web.StreamResponse = await handler(request)
            response.headers.update(limit_headers)
        except DiscordAPIError as err:
            response = _json(err.body(), status=err.status, headers=err.headers)
            rec.response = err.body()
        except _RawFault as raw:
            response = web.Response(status=raw.status, text=raw.text, content_type="text/plain")
            rec.response = raw.text
        rec.status = response.status
        self._touch()
        return response

    async def _read_body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        if not request.can_read_body:
            return None, []
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            payload: Any = None
            files: list[UploadedFile] = []
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):  # nested multipart: not used by Discord
                    continue
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.filename is not None:
                    data = bytes(await part.read(decode=False))
                    ctype = part.headers.get("Content-Type", "application/octet-stream")
                    files.append(UploadedFile(part.name or "", part.filename, ctype, data))
            return payload, files
        raw = await request.read()
        if not raw:
            return None, []
        try:
            return json.loads(raw), []
        except ValueError:
            raise DiscordAPIError(400, 50109, "The request body contains invalid JSON.") from None

    def _take_fault(self, request: web.Request) -> DiscordAPIError | _RawFault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.method in (request.method, "*"):
                if fnmatch.fnmatchcase(request.path, fault.path):
                    fault.remaining -= 1
                    return self._fault_error(fault)
        return None

    def _fault_error(self, fault: _Fault) -> DiscordAPIError | _RawFault:
        if fault.status == 429:
            return self._rate_limited(fault.retry_after, bucket="injected", limit=1, is_global=fault.is_global)
        if fault.status == 503 and fault.body is None:
            return _RawFault(503, "upstream connect error or disconnect/reset before headers. reset reason: overflow")
        if isinstance(fault.body, str):
            return _RawFault(fault.status, fault.body)
        body = fault.body or {"message": f"{fault.status}: {_REASONS.get(fault.status, 'Error')}", "code": 0}
        return DiscordAPIError(fault.status, int(body.get("code", 0)), str(body.get("message", "")))

    def _rate_limited(self, retry_after: float, *, bucket: str, limit: int, is_global: bool) -> DiscordAPIError:
        err = DiscordAPIError(
            429,
            0,
            "You are being rate limited.",
            extra={"retry_after": retry_after, "global": is_global},
            headers={
                "Retry-After": str(max(1, math.ceil(retry_after))),
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": bucket,
                "X-RateLimit-Scope": "global" if is_global else "user",
                # discord.py treats a 429 without Via as a Cloudflare ban and does not retry.
                "Via": "1.1 google",
            },
        )
        if is_global:
            err.headers["X-RateLimit-Global"] = "true"
        return err

    def _apply_limits(self, request: web.Request) -> dict[str, str]:
        headers: dict[str, str] = {}
        for lim in self._limits:
            if lim.method not in (request.method, "*") or not fnmatch.fnmatchcase(request.path, lim.path):
                continue
            now = time.monotonic()
            hits = lim.hits.setdefault(request.path, collections.deque())
            while hits and now - hits[0] >= lim.per:
                hits.popleft()
            if len(hits) >= lim.limit:
                raise self._rate_limited(lim.per - (now - hits[0]), bucket=lim.bucket, limit=lim.limit, is_global=False)
            hits.append(now)
            reset_after = lim.per - (now - hits[0])
            headers = {
                "X-RateLimit-Limit": str(lim.limit),
                "X-RateLimit-Remaining": str(lim.limit - len(hits)),
                "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Bucket": lim.bucket,
            }
        return headers

    def _require_bot_auth(self, request: web.Request) -> None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bot ") or (self.bot_token is not None and auth != f"Bot {self.bot_token}"):
            raise DiscordAPIError(401, 0, "401: Unauthorized")

    # ----------------------------------------------------------------- message building and validation

    def _store_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str,
        *,
        channel_id: int | None = None,
        description: str | None = None,
        ephemeral: bool = False,
    ) -> StoredAttachment:
        aid = self.snowflake()
        owner = self.application_id if channel_id is None else channel_id
        kind = "ephemeral-attachments" if ephemeral else "attachments"
        now = int(time.time())
        signature = f"?ex={now + 86400:x}&is={now:x}&hm={secrets.token_hex(32)}&"
        path = f"/{kind}/{owner}/{aid}/{filename}"
        if content_type == "application/octet-stream":
            content_type = _guess_type(filename)
        size = _image_size(data) if content_type.startswith("image/") else None
        att = StoredAttachment(
            id=aid,
            filename=filename,
            content_type=content_type,
            data=data,
            url=self.url + path + signature,
            proxy_url=self.url + "/media" + path + signature,
            description=description,
            width=size[0] if size else None,
            height=size[1] if size else None,
            ephemeral=ephemeral,
        )
        self.attachments[aid] = att
        return att

    def _check_upload_size(self, files: list[UploadedFile]) -> None:
        if sum(f.size for f in files) > self.max_upload_bytes:
            raise DiscordAPIError(413, 40005, "Request entity too large")

    def _validate(self, payload: dict[str, Any], final_attachments: int) -> None:
        """Discord's limits on a message body; all violations reported together, as Discord does."""
        errors: dict[str, Any] = {}
        content = payload.get("content")
        if isinstance(content, str) and len(content) > 2000:
            errors["content"] = _max_len(2000)
        embeds = payload.get("embeds") or []
        if len(embeds) > 10:
            errors["embeds"] = _max_len(10)
        else:
            self._validate_embeds(embeds, errors)
        components = payload.get("components") or []
        flags = int(payload.get("flags") or 0)
        self._validate_components(components, errors, v2=bool(flags & IS_COMPONENTS_V2))
        if flags & IS_COMPONENTS_V2 and (content or embeds):
            errors.setdefault("content", {"_errors": []})
            errors["content"].setdefault("_errors", []).append(
                {"code": "MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2", "message": "Legacy fields not allowed"}
            )
        if final_attachments > 10:
            errors["attachments"] = _max_len(10)
        if errors:
            raise DiscordAPIError(400, 50035, "Invalid Form Body", errors=errors)

    @staticmethod
    def _validate_embeds(embeds: list[dict[str, Any]], errors: dict[str, Any]) -> None:
        total = 0
        for i, embed in enumerate(embeds):
            checks: list[tuple[list[str | int], Any, int]] = [
                (["title"], embed.get("title"), 256),
                (["description"], embed.get("description"), 4096),
                (["footer", "text"], (embed.get("footer") or {}).get("text"), 2048),
                (["author", "name"], (embed.get("author") or {}).get("name"), 256),
            ]
            fields = embed.get("fields") or []
            if len(fields) > 25:
                _set_error(errors, ["embeds", i, "fields"], _max_len(25))
            for j, f in enumerate(fields[:25]):
                checks.append((["fields", j, "name"], f.get("name"), 256))
                checks.append((["fields", j, "value"], f.get("value"), 1024))
            for path, value, limit in checks:
                if value is None:
                    continue
                total += len(str(value))
                if len(str(value)) > limit:
                    _set_error(errors, ["embeds", i, *path], _max_len(limit))
        if total > 6000:
            errors.setdefault("embeds", {})["_errors"] = [
                {"code": "MAX_EMBED_SIZE_EXCEEDED", "message": "Embed size exceeds maximum size of 6000"}
            ]

    @staticmethod
    def _validate_components(components: list[dict[str, Any]], errors: dict[str, Any], *, v2: bool) -> None:
        if v2:
            if sum(1 for _ in walk_components(components)) > 40:
                errors["components"] = _max_len(40)
        elif len(components) > 5:
            errors["components"] = _max_len(5)
            return
        seen: set[str] = set()
        for i, row in enumerate(components):
            children = row.get("components") or []
            if row.get("type") == 1 and len(children) > 5:
                _set_error(errors, ["components", i, "components"], _max_len(5))
            for j, comp in enumerate(children):
                custom_id = comp.get("custom_id")
                if custom_id is None:
                    continue
                if len(custom_id) > 100:
                    _set_error(errors, ["components", i, "components", j, "custom_id"], _max_len(100))
                elif custom_id in seen:
                    _set_error(
                        errors,
                        ["components", i, "components", j, "custom_id"],
                        {
                            "_errors": [
                                {
                                    "code": "COMPONENT_CUSTOM_ID_DUPLICATED",
                                    "message": "Component custom id cannot be duplicated",
                                }
                            ]
                        },
                    )
                seen.add(custom_id)
                if len(str(comp.get("label") or "")) > 80:
                    _set_error(errors, ["components", i, "components", j, "label"], _max_len(80))
                if len(comp.get("options") or []) > 25:
                    _set_error(errors, ["components", i, "components", j, "options"], _max_len(25))

    def _resolve_attachments(
        self,
        payload: dict[str, Any],
        files: list[UploadedFile],
        channel_id: int,
        existing: list[StoredAttachment],
    ) -> list[StoredAttachment]:
        """The attachment list after a create/edit: `attachments` entries keep existing ids or point at
        files[n]; without an `attachments` key, new files are appended to the existing ones."""
        by_index: dict[int, UploadedFile] = {}
        for pos, f in enumerate(files):
            m = re.fullmatch(r"files\[(\d+)\]", f.field)
            by_index[int(m.group(1)) if m else pos] = f
        if "attachments" not in payload or payload["attachments"] is None:
            new = [self._store_attachment(f.filename, f.data, f.content_type, channel_id=channel_id) for f in files]
            return [*existing, *new]
        kept = {a.id: a for a in existing}
        result: list[StoredAttachment] = []
        errors: dict[str, Any] = {}
        for i, entry in enumerate(payload["attachments"]):
            ref = int(entry.get("id", -1))
            if ref in kept:
                result.append(kept[ref])
            elif ref in by_index:
                f = by_index[ref]
                result.append(
                    self._store_attachment(
                        entry.get("filename") or f.filename,
                        f.data,
                        f.content_type,
                        channel_id=channel_id,
                        description=entry.get("description"),
                    )
                )
            else:
                _set_error(
                    errors,
                    ["attachments", i, "id"],
                    {"_errors": [{"code": "ATTACHMENT_NOT_FOUND", "message": "Attachment not found"}]},
                )
        if errors:
            raise DiscordAPIError(400, 50035, "Invalid Form Body", errors=errors)
        return result

    def _resolve_embed_media(
        self, embeds: list[dict[str, Any]], attachments: list[StoredAttachment]
    ) -> list[dict[str, Any]]:
        """Replace attachment://name references with the CDN URL, as Discord does."""
        by_name = {a.filename: a for a in attachments}
        out = []
        for embed in embeds:
            embed = json.loads(json.dumps(embed))
            embed.setdefault("type", "rich")
            for key in ("image", "thumbnail"):
                media = embed.get(key)
                if isinstance(media, dict) and str(media.get("url", "")).startswith("attachment://"):
                    att = by_name.get(media["url"].removeprefix("attachment://"))
                    if att is not None:
                        media.update({"url": att.url, "proxy_url": att.proxy_url})
                        if att.width is not None:
                            media.update({"width": att.width, "height": att.height})
            out.append(embed)
        return out

    def _new_message(
        self,
        channel_id: int,
        payload: dict[str, Any],
        files: list[UploadedFile],
        *,
        flags_mask: int,
        msg_type: int,
        webhook: FakeInteraction | None = None,
        extra_flags: int = 0,
    ) -> FakeMessage:
        self._check_upload_size(files)
        attachments_count = len(payload.get("attachments") or files)
        self._validate(payload, attachments_count)
        attachments = self._resolve_attachments(payload, files, channel_id, [])
        embeds = payload.get("embeds") or []
        components = payload.get("components") or []
        if not (payload.get("content") or embeds or attachments or components or payload.get("sticker_ids")):
            raise DiscordAPIError(400, 50006, "Cannot send an empty message")
        msg = FakeMessage(
            id=self.snowflake(),
            channel_id=channel_id,
            author=dict(self.bot_user),
            created_at=self.now(),
            content=payload.get("content") or "",
            embeds=self._resolve_embed_media(embeds, attachments),
            attachments=attachments,
            components=_number_components(components),
            flags=(int(payload.get("flags") or 0) & flags_mask) | extra_flags,
            type=msg_type,
        )
        if webhook is not None:
            msg.webhook_id = webhook.application_id
            msg.application_id = webhook.application_id
            msg.interaction_metadata = {
                "id": str(webhook.id),
                "type": webhook.type,
                "user": dict(webhook.user),
                "authorizing_integration_owners": {"0": str(webhook.guild_id or 0)},
            }
        self.messages[msg.id] = msg
        channel = self.channels.get(channel_id)
        if channel is not None and not msg.ephemeral:
            channel.last_message_id = msg.id
        return msg

    def _edit_message(self, msg: FakeMessage, payload: dict[str, Any], files: list[UploadedFile]) -> FakeMessage:
        self._check_upload_size(files)
        if "attachments" in payload and payload["attachments"] is not None:
            final_count = len(payload["attachments"])
        else:
            final_count = len(msg.attachments) + len(files)
        merged_flags = int(payload["flags"]) if payload.get("flags") is not None else msg.flags
        self._validate({**payload, "flags": merged_flags}, final_count)
        attachments = self._resolve_attachments(payload, files, msg.channel_id, msg.attachments)
        content = payload["content"] if "content" in payload else msg.content
        embeds = payload["embeds"] if "embeds" in payload else msg.embeds
        components = payload["components"] if "components" in payload else msg.components
        if not (content or embeds or attachments or components):
            raise DiscordAPIError(400, 50006, "Cannot send an empty message")
        msg.content = content or ""
        msg.embeds = self._resolve_embed_media(embeds or [], attachments)
        msg.attachments = attachments
        msg.components = _number_components(components or [])
        kept = msg.flags & EPHEMERAL
        if payload.get("flags") is not None:
            msg.flags = kept | (int(payload["flags"]) & (SUPPRESS_EMBEDS | IS_COMPONENTS_V2))
        else:
            msg.flags &= ~LOADING
        msg.edited_at = self.now()
        msg.edits += 1
        return msg

    # ----------------------------------------------------------------- interaction routes

    def _lookup_interaction(self, request: web.Request) -> FakeInteraction | None:
        token = request.match_info["token"]
        iid = self._tokens.get(token)
        inter = self.interactions.get(iid) if iid is not None else None
        rec: RecordedRequest = request[_REC]
        rec.token = token
        if inter is not None:
            rec.interaction_id = inter.id
        return inter

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        rec: RecordedRequest = request[_REC]
        inter = self._lookup_interaction(request)
        if inter is None or str(inter.id) != request.match_info["interaction_id"]:
            raise DiscordAPIError(404, 10062, "Unknown interaction")
        if inter.acked_type is not None:
            raise DiscordAPIError(400, 40060, "Interaction has already been acknowledged.")
        if self.now() - inter.created_at > self.ack_window:
            raise DiscordAPIError(404, 10062, "Unknown interaction")
        body = rec.json if isinstance(rec.json, dict) else {}
        cb_type = int(body.get("type", 0))
        data: dict[str, Any] = body.get("data") or {}
        allowed = _ALLOWED_CALLBACKS.get(inter.type, frozenset())
        if inter.type == MODAL_SUBMIT and inter.source_message_id is None:
            allowed = allowed - {DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE}
        if cb_type not in allowed:
            raise DiscordAPIError(
                400,
                50035,
                "Invalid Form Body",
                errors={
                    "type": {
                        "_errors": [
                            {
                                "code": "INTERACTION_RESPONSE_TYPE_INVALID",
                                "message": "Interaction response type is invalid for this interaction.",
                            }
                        ]
                    }
                },
            )

        message: FakeMessage | None = None
        if cb_type == CHANNEL_MESSAGE:
            message = self._new_message(
                inter.channel_id,
                data,
                rec.files,
                flags_mask=EPHEMERAL | SUPPRESS_EMBEDS | IS_COMPONENTS_V2,
                msg_type=self._response_message_type(inter),
                webhook=inter,
            )
            inter.original_id = message.id
        elif cb_type == DEFERRED_CHANNEL_MESSAGE:
            message = FakeMessage(
                id=self.snowflake(),
                channel_id=inter.channel_id,
                author=dict(self.bot_user),
                created_at=self.now(),
                flags=LOADING | (int(data.get("flags") or 0) & EPHEMERAL),
                type=self._response_message_type(inter),
                webhook_id=inter.application_id,
                application_id=inter.application_id,
                interaction_metadata={"id": str(inter.id), "type": inter.type, "user": dict(inter.user)},
            )
            self.messages[message.id] = message
            inter.original_id = message.id
        elif cb_type in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE):
            inter.original_id = inter.source_message_id
            if inter.source_message_id is not None:
                source = self.messages.get(inter.source_message_id)
                if cb_type == UPDATE_MESSAGE:
                    if source is None or source.deleted:
                        raise unknown_message()
                    message = self._edit_message(source, data, rec.files)
        elif cb_type == AUTOCOMPLETE_RESULT:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise DiscordAPIError(400, 50035, "Invalid Form Body", errors={"data": {"choices": _max_len(25)}})
        elif cb_type == MODAL:
            errors: dict[str, Any] = {}
            if len(str(data.get("title", ""))) > 45:
                _set_error(errors, ["data", "title"], _max_len(45))
            if len(str(data.get("custom_id", ""))) > 100:
                _set_error(errors, ["data", "custom_id"], _max_len(100))
            if not 1 <= len(data.get("components") or []) <= 5:
                _set_error(errors, ["data", "components"], _max_len(5))
            if errors:
                raise DiscordAPIError(400, 50035, "Invalid Form Body", errors=errors)
            inter.modal = data

        inter.acked_type = cb_type
        inter.acked_at = self.now()
        if message is not None:
            rec.message_id = message.id
            rec.message_flags = message.flags
        if request.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        body_out: dict[str, Any] = {"interaction": {"id": str(inter.id), "type": inter.type}}
        if inter.original_id is not None:
            body_out["interaction"]["response_message_id"] = str(inter.original_id)
            body_out["interaction"]["response_message_loading"] = cb_type == DEFERRED_CHANNEL_MESSAGE
            body_out["interaction"]["response_message_ephemeral"] = bool(message and message.ephemeral)
        if message is not None:
            body_out["resource"] = {"type": cb_type, "message": message.to_payload()}
        rec.response = body_out
        return _json(body_out)

    @staticmethod
    def _response_message_type(inter: FakeInteraction) -> int:
        if inter.type == APPLICATION_COMMAND:
            return 20 if inter.command_type in (None, 1) else 23
        return 0

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction:
        inter = self._lookup_interaction(request)
        if inter is None or str(inter.application_id) != request.match_info["app_id"]:
            raise unknown_webhook()
        if self.now() - inter.created_at > self.token_lifetime:
            raise DiscordAPIError(401, 50027, "Invalid Webhook Token")
        if inter.acked_type is None:
            raise unknown_webhook()
        return inter

    async def _webhook_execute(self, request: web.Request) -> web.Response:
        rec: RecordedRequest = request[_REC]
        inter = self._webhook_interaction(request)
        payload = rec.json if isinstance(rec.json, dict) else {}
        original = self.messages.get(inter.original_id) if inter.original_id is not None else None
        if self.followups_need_original and original is not None and original.deleted:
            raise unknown_message()  # seen from Discord: follow-ups to a deleted original answer 404 10008
        if original is not None and original.loading and not original.deleted:
            # The first follow-up after a "thinking" defer replaces the loading message (keeping its
            # ephemerality), as Discord does.
            msg = self._edit_message(original, {k: v for k, v in payload.items() if k != "flags"}, rec.files)
        else:
            msg = self._new_message(
                inter.channel_id,
                payload,
                rec.files,
                flags_mask=EPHEMERAL | SUPPRESS_EMBEDS | IS_COMPONENTS_V2,
                msg_type=0,
                webhook=inter,
            )
            inter.followup_ids.append(msg.id)
        rec.message_id = msg.id
        rec.message_flags = msg.flags
        if request.query.get("wait", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        rec.response = msg.to_payload()
        return _json(rec.response)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        rec: RecordedRequest = request[_REC]
        inter = self._webhook_interaction(request)
        raw_id = request.match_info["message_id"]
        if raw_id == "@original":
            mid = inter.original_id
        else:
            mid = int(raw_id) if raw_id.isdigit() else None
            if mid not in (inter.original_id, *inter.followup_ids):
                mid = None
        msg = self.messages.get(mid) if mid is not None else None
        if msg is None or msg.deleted:
            raise unknown_message()
        rec.message_id = msg.id
        if request.method == "DELETE":
            msg.deleted = True
            rec.message_flags = msg.flags
            return web.Response(status=204)
        if request.method == "PATCH":
            payload = rec.json if isinstance(rec.json, dict) else {}
            self._edit_message(msg, payload, rec.files)
        rec.message_flags = msg.flags
        rec.response = msg.to_payload()
        return _json(rec.response)

    # ----------------------------------------------------------------- bot-authenticated routes

    def _channel(self, request: web.Request) -> FakeChannel:
        self._require_bot_auth(request)
        cid = int(request.match_info["channel_id"]) if request.match_info["channel_id"].isdigit() else -1
        channel = self.channels.get(cid)
        if channel is None:
            raise unknown_channel()
        if cid in self.forbidden_channels:
            raise DiscordAPIError(403, 50001, "Missing Access")
        return channel

    async def _channel_get(self, request: web.Request) -> web.Response:
        return _json(self._channel(request).to_payload())

    async def _channel_typing(self, request: web.Request) -> web.Response:
        self._channel(request)
        return web.Response(status=204)

    async def _channel_message_create(self, request: web.Request) -> web.Response:
        rec: RecordedRequest = request[_REC]
        channel = self._channel(request)
        payload = rec.json if isinstance(rec.json, dict) else {}
        ref = payload.get("message_reference")
        if ref and ref.get("message_id") is not None:
            target = self.messages.get(int(ref["message_id"]))
            if (target is None or target.deleted) and ref.get("fail_if_not_exists", True):
                raise DiscordAPIError(
                    400,
                    50035,
                    "Invalid Form Body",
                    errors={
                        "message_reference": {
                            "_errors": [{"code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "message": "Unknown message"}]
                        }
                    },
                )
        msg = self._new_message(
            channel.id, payload, rec.files, flags_mask=SUPPRESS_EMBEDS | IS_COMPONENTS_V2, msg_type=19 if ref else 0
        )
        if ref and ref.get("message_id") is not None:
            msg.message_reference = {"type": 0, "channel_id": str(channel.id), "message_id": str(ref["message_id"])}
        rec.message_id = msg.id
        rec.response = msg.to_payload()
        return _json(rec.response)

    async def _channel_message(self, request: web.Request) -> web.Response:
        rec: RecordedRequest = request[_REC]
        channel = self._channel(request)
        raw_id = request.match_info["message_id"]
        msg = self.messages.get(int(raw_id)) if raw_id.isdigit() else None
        # Ephemeral messages are invisible to the channel endpoints.
        if msg is None or msg.deleted or msg.channel_id != channel.id or msg.ephemeral:
            raise unknown_message()
        rec.message_id = msg.id
        if request.method == "DELETE":
            msg.deleted = True
            return web.Response(status=204)
        if request.method == "PATCH":
            if str(msg.author.get("id")) != self.bot_user["id"]:
                raise DiscordAPIError(403, 50005, "Cannot edit a message authored by another user")
            self._edit_message(msg, rec.json if isinstance(rec.json, dict) else {}, rec.files)
        rec.response = msg.to_payload()
        return _json(rec.response)

    async def _users_me(self, request: web.Request) -> web.Response:
        self._require_bot_auth(request)
        return _json({**self.bot_user, "verified": True, "mfa_enabled": False, "email": None})

    async def _application_me(self, request: web.Request) -> web.Response:
        self._require_bot_auth(request)
        return _json(
            {
                "id": str(self.application_id),
                "name": self.bot_user["username"],
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot": dict(self.bot_user),
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "flags": 0,
                "owner": dict(self.owner),
                "team": None,
                "hook": True,
                "interactions_endpoint_url": None,
                "redirect_uris": [],
                "approximate_guild_count": 1,
                "integration_types_config": {"0": {}, "1": {}},
            }
        )

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        return _json(
            {
                "url": "ws://127.0.0.1:9",
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1},
            }
        )

    async def _commands(self, request: web.Request) -> web.Response:
        rec: RecordedRequest = request[_REC]
        self._require_bot_auth(request)
        if request.match_info["app_id"] != str(self.application_id):
            raise DiscordAPIError(403, 50001, "Missing Access")
        guild_id = int(request.match_info["guild_id"]) if "guild_id" in request.match_info else None
        if request.method == "GET":
            return _json(self.commands.get(guild_id, []))
        if request.method != "PUT":
            raise DiscordAPIError(405, 0, "405: Method Not Allowed")
        old = {(c["name"], c.get("type", 1)): c["id"] for c in self.commands.get(guild_id, [])}
        stored = []
        for cmd in rec.json or []:
            key = (cmd["name"], cmd.get("type", 1))
            entry = {
                "description": "",
                "type": 1,
                **cmd,
                "id": old.get(key) or str(self.snowflake()),
                "application_id": str(self.application_id),
                "version": str(self.snowflake()),
            }
            if guild_id is not None:
                entry["guild_id"] = str(guild_id)
            stored.append(entry)
        self.commands[guild_id] = stored
        rec.response = stored
        return _json(stored)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["attachment_id"]
        att = self.attachments.get(int(raw)) if raw.isdigit() else None
        if att is None or att.filename != request.match_info["filename"]:
            return web.Response(status=404, text="This content is no longer available.", content_type="text/plain")
        return web.Response(body=att.data, content_type=att.content_type)

    async def _unhandled(self, request: web.Request) -> web.Response:
        self.unhandled.append(request[_REC])
        raise DiscordAPIError(404, 0, "404: Not Found")


class _RawFault(Exception):
    """A non-JSON error body (e.g. a proxy's 503 page)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


_REASONS = {400: "Bad Request", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _guess_type(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return {
        "png": "image/png",
        "jpg": "image/jpeg",
        "jpeg": "image/jpeg",
        "webp": "image/webp",
        "gif": "image/gif",
        "txt": "text/plain; charset=utf-8",
        "json": "application/json",
    }.get(ext, "application/octet-stream")


def _number_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy components, giving each a numeric `id` as Discord does in its responses."""
    out: list[dict[str, Any]] = json.loads(json.dumps(components))
    for n, comp in enumerate(walk_components(out), start=1):
        comp.setdefault("id", n)
    return out
