"""Drive a real discord.py client end to end against `FakeDiscord`, with real INTERACTION_CREATE payloads.

    async with DiscordHarness(bot) as h:
        payload = h.slash("fill", {"prompt": "a cat"}, attachments={"image": ("in.png", png, "image/png")})
        sent = await h.dispatch(payload)
        assert h.responses(sent)[0].callback_type == 5
        assert h.original(sent).attachments[0].data.startswith(b"\\x89PNG")

The bot is logged in with a fake token (so `setup_hook` runs) but never connects to the gateway;
interactions are fed through discord.py's own INTERACTION_CREATE parser, so the command tree, views,
dynamic items and modals run exactly as in production.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import discord
from discord import app_commands
from discord.http import Route

from tests.fakes.discord_api import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    DEFAULT_APP_ID,
    DEFAULT_OWNER_ID,
    MESSAGE_COMPONENT,
    MODAL_SUBMIT,
    FakeChannel,
    FakeDiscord,
    FakeMessage,
    RecordedRequest,
    walk_components,
)

T = TypeVar("T")

APP_ID = DEFAULT_APP_ID
GUILD_ID = 2000
GENERAL_CHANNEL_ID = 3001
NSFW_CHANNEL_ID = 3002
BOT_ROLE_ID = 2001
MODERATOR_ROLE_ID = 2002
DM_CHANNEL_BASE = 9_000_000
JOINED_AT = "2024-01-01T00:00:00+00:00"

MEMBER_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    embed_links=True,
    attach_files=True,
    read_message_history=True,
    add_reactions=True,
    use_external_emojis=True,
    use_application_commands=True,
    create_instant_invite=True,
    change_nickname=True,
)
MODERATOR_PERMISSIONS = MEMBER_PERMISSIONS | discord.Permissions(
    manage_guild=True, manage_messages=True, moderate_members=True
)
BOT_PERMISSIONS = MEMBER_PERMISSIONS


@dataclass(frozen=True)
class FakeUser:
    """A user who can invoke interactions; `permissions` are their resolved permissions in the channel."""

    id: int
    username: str
    permissions: int
    roles: tuple[int, ...] = ()
    global_name: str | None = None

    def user_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name or self.username.title(),
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "avatar_decoration_data": None,
            "collectibles": None,
            "primary_guild": None,
        }

    def member_payload(self, permissions: int | None = None) -> dict[str, Any]:
        return {
            "user": self.user_payload(),
            "roles": [str(r) for r in self.roles],
            "nick": None,
            "avatar": None,
            "banner": None,
            "joined_at": JOINED_AT,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
            "unusual_dm_activity_until": None,
            "permissions": str(self.permissions if permissions is None else permissions),
        }


MEMBER = FakeUser(1001, "member", MEMBER_PERMISSIONS.value)
MODERATOR = FakeUser(1002, "moderator", MODERATOR_PERMISSIONS.value, roles=(MODERATOR_ROLE_ID,))
# Guild owner and application owner (so `commands.Bot.is_owner` is true for them).
OWNER = FakeUser(DEFAULT_OWNER_ID, "owner", discord.Permissions.all().value)


@dataclass
class Dispatched:
    """An interaction fed to the bot; `tasks` are the handler tasks discord.py spawned for it."""

    id: int
    token: str
    payload: dict[str, Any]
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def wait(self, within: float = 5.0) -> None:
        """Wait for the handlers discord.py started for this interaction (not tasks they spawn)."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(self.tasks, timeout=within)
        if pending:
            names = ", ".join(t.get_name() for t in pending)
            raise AssertionError(f"interaction handlers still running after {within}s: {names}")

    @property
    def done(self) -> bool:
        return all(t.done() for t in self.tasks)


TokenLike = str | Dispatched | Mapping[str, Any]


def _token(value: TokenLike) -> str:
    if isinstance(value, Dispatched):
        return value.token
    if isinstance(value, str):
        return value
    return str(value["token"])


class _ErrorCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class DiscordHarness:
    """Runs `bot` against a `FakeDiscord` and builds/dispatches real interaction payloads.

    On enter: starts the fake (unless one was passed in), sets `discord.http.Route.BASE` to it (every
    REST and interaction-webhook route, including `Interaction.response`/`followup`, is built from
    it), logs the bot in (runs `setup_hook`), caches the guild as a GUILD_CREATE would, and marks
    the client ready. On exit: closes the bot and restores `Route.BASE`.
    """

    def __init__(
        self,
        bot: discord.Client,
        *,
        fake: FakeDiscord | None = None,
        token: str = "fake-token",
        guild_id: int = GUILD_ID,
        guild_name: str = "Test Guild",
        channels: Sequence[FakeChannel] | None = None,
        users: Iterable[FakeUser] = (MEMBER, MODERATOR, OWNER),
        app_permissions: int = BOT_PERMISSIONS.value,
        cache_guild: bool = True,
        ready: bool = True,
    ) -> None:
        self.bot = bot
        self.fake = fake if fake is not None else FakeDiscord(owner=OWNER.user_payload())
        self._owns_fake = fake is None
        self.token = token
        self.guild_id = guild_id
        self.guild_name = guild_name
        self.general_channel_id = GENERAL_CHANNEL_ID
        self.nsfw_channel_id = NSFW_CHANNEL_ID
        self._channels = list(
            channels
            if channels is not None
            else [
                FakeChannel(GENERAL_CHANNEL_ID, "general", guild_id=guild_id, position=0),
                FakeChannel(NSFW_CHANNEL_ID, "nsfw-art", guild_id=guild_id, nsfw=True, position=1),
            ]
        )
        self.users: dict[int, FakeUser] = {u.id: u for u in users}
        self.app_permissions = app_permissions
        self.cache_guild = cache_guild
        self.ready = ready
        self._saved_base: str | None = None
        self._capture = _ErrorCapture()
        self._command_ids: dict[tuple[str, int, int | None], int] = {}
        self._other_guilds: dict[int, str] = {}

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> DiscordHarness:
        if self._owns_fake:
            await self.fake.start()
        for channel in self._channels:
            self.fake.channels.setdefault(channel.id, channel)
        self._saved_base = Route.BASE
        Route.BASE = self.fake.api_base
        logging.getLogger("discord").addHandler(self._capture)
        try:
            await self._login(self.bot)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.bot.close()
        finally:
            if self._saved_base is not None:
                Route.BASE = self._saved_base
                self._saved_base = None
            logging.getLogger("discord").removeHandler(self._capture)
            if self._owns_fake:
                await self.fake.close()

    async def restart(self, bot: discord.Client) -> None:
        """Simulate a process restart: close the current bot, log `bot` in against the same fake
        (messages, buttons and interactions survive, as on Discord)."""
        await self.bot.close()
        self.bot = bot
        await self._login(bot)

    async def _login(self, bot: discord.Client) -> None:
        await bot.login(self.token)
        if self.cache_guild:
            bot._connection._add_guild_from_data(self._guild_payload())  # type: ignore[arg-type]
            for guild_id, name in self._other_guilds.items():
                bot._connection._add_guild_from_data(self._guild_payload(guild_id, name))  # type: ignore[arg-type]
        if self.ready:
            bot._ready.set()
            bot.dispatch("ready")

    def add_guild(self, guild_id: int, name: str, channels: Sequence[FakeChannel]) -> None:
        """Another server the bot is in, with its own channels, as a second GUILD_CREATE would add it (kept across
        `restart`). Interactions in its channels carry its id: the same users act there as its members."""
        for channel in channels:
            if channel.guild_id != guild_id:
                raise ValueError(f"channel {channel.id} belongs to guild {channel.guild_id}, not {guild_id}")
            self.fake.add_channel(channel)
        self._other_guilds[guild_id] = name
        if self.cache_guild:
            self.bot._connection._add_guild_from_data(self._guild_payload(guild_id, name))  # type: ignore[arg-type]

    def _guild_payload(self, guild_id: int | None = None, name: str | None = None) -> dict[str, Any]:
        """GUILD_CREATE data for the test guild, or for another one added with `add_guild`."""
        guild_id = self.guild_id if guild_id is None else guild_id
        everyone = MEMBER_PERMISSIONS.value
        role = {"color": 0, "colors": {"primary_color": 0}, "hoist": False, "icon": None, "flags": 0}
        return {
            "id": str(guild_id),
            "name": name or self.guild_name,
            "icon": None,
            "owner_id": str(OWNER.id),
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "features": [],
            "emojis": [],
            "stickers": [],
            "member_count": len(self.users) + 1,
            "large": False,
            "unavailable": False,
            "joined_at": JOINED_AT,
            "roles": [
                {
                    **role,
                    "id": str(guild_id),
                    "name": "@everyone",
                    "permissions": str(everyone),
                    "position": 0,
                    "managed": False,
                    "mentionable": False,
                },
                {
                    **role,
                    "id": str(BOT_ROLE_ID),
                    "name": self.fake.bot_user["username"],
                    "permissions": str(self.app_permissions),
                    "position": 2,
                    "managed": True,
                    "mentionable": False,
                    "tags": {"bot_id": str(self.fake.application_id)},
                },
                {
                    **role,
                    "id": str(MODERATOR_ROLE_ID),
                    "name": "Moderator",
                    "permissions": str(MODERATOR_PERMISSIONS.value),
                    "position": 1,
                    "managed": False,
                    "mentionable": True,
                },
            ],
            "channels": [c.to_payload() for c in self.fake.channels.values() if c.guild_id == guild_id],
            "members": [
                {
                    "user": dict(self.fake.bot_user),
                    "roles": [str(BOT_ROLE_ID)],
                    "joined_at": JOINED_AT,
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                    "nick": None,
                }
            ],
            "threads": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
        }

    # ----------------------------------------------------------------- users / channels / messages

    @property
    def member(self) -> FakeUser:
        return MEMBER

    @property
    def moderator(self) -> FakeUser:
        return MODERATOR

    @property
    def owner(self) -> FakeUser:
        return OWNER

    def add_user(self, user: FakeUser) -> FakeUser:
        self.users[user.id] = user
        return user

    def dm_channel(self, user: FakeUser) -> FakeChannel:
        """The DM channel between `user` and the bot (created on first use)."""
        cid = DM_CHANNEL_BASE + user.id
        if cid not in self.fake.channels:
            self.fake.add_channel(FakeChannel(cid, name="", type=1, recipients=[user.user_payload()]))
        return self.fake.channels[cid]

    def post_message(
        self,
        content: str = "",
        *,
        channel_id: int | None = None,
        author: FakeUser = MEMBER,
        files: Iterable[tuple[str, bytes, str]] = (),
    ) -> FakeMessage:
        """A message posted by a user (e.g. the target of a message context-menu command)."""
        return self.fake.put_message(
            channel_id or self.general_channel_id, content, author=author.user_payload(), files=files
        )

    # ----------------------------------------------------------------- payload builders

    def slash(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        subcommand: str | None = None,
        attachments: Mapping[str, tuple[str, bytes, str]] | None = None,
        user: FakeUser = MEMBER,
        channel_id: int | None = None,
        dm: bool = False,
        permissions: int | str | None = None,
        app_permissions: int | None = None,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        """A CHAT_INPUT APPLICATION_COMMAND payload. Option types come from the bot's command tree
        (falling back to the Python type); `attachments` maps option names to (filename, bytes,
        content type), hosted on the fake CDN and put in `data.resolved.attachments`.
        `subcommand` is "sub" or "group sub"."""
        data = self._command_data(name, options, subcommand, attachments, dm=dm, focused=None)
        return self._interaction(
            APPLICATION_COMMAND,
            data,
            user=user,
            channel_id=channel_id,
            dm=dm,
            permissions=permissions,
            app_permissions=app_permissions,
            locale=locale,
        )

    def autocomplete(
        self,
        name: str,
        options: Mapping[str, Any],
        focused: str,
        *,
        subcommand: str | None = None,
        user: FakeUser = MEMBER,
        channel_id: int | None = None,
        dm: bool = False,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        """An APPLICATION_COMMAND_AUTOCOMPLETE payload; `focused` names the option being typed."""
        data = self._command_data(name, options, subcommand, None, dm=dm, focused=focused)
        return self._interaction(AUTOCOMPLETE, data, user=user, channel_id=channel_id, dm=dm, locale=locale)

    def message_command(
        self,
        name: str,
        target: int | FakeMessage,
        *,
        user: FakeUser = MEMBER,
        permissions: int | str | None = None,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        """A message context-menu command (data.type 3) on a message the fake holds."""
        msg = target if isinstance(target, FakeMessage) else self.fake.message(target)
        channel = self.fake.channels.get(msg.channel_id)
        dm = channel is not None and channel.type == 1
        data: dict[str, Any] = {
            "id": str(self._command_id(name, 3, dm=dm)),
            "name": name,
            "type": 3,
            "target_id": str(msg.id),
            "resolved": {"messages": {str(msg.id): msg.to_payload()}},
        }
        self._add_command_guild(data, name, discord.AppCommandType.message, dm=dm)
        return self._interaction(
            APPLICATION_COMMAND,
            data,
            user=user,
            channel_id=msg.channel_id,
            dm=dm,
            permissions=permissions,
            locale=locale,
        )

    def user_command(
        self, name: str, target: FakeUser, *, user: FakeUser = MEMBER, channel_id: int | None = None
    ) -> dict[str, Any]:
        """A user context-menu command (data.type 2) targeting `target`."""
        resolved: dict[str, Any] = {"users": {str(target.id): target.user_payload()}}
        member = target.member_payload()
        member.pop("user")
        resolved["members"] = {str(target.id): member}
        data: dict[str, Any] = {
            "id": str(self._command_id(name, 2, dm=False)),
            "name": name,
            "type": 2,
            "target_id": str(target.id),
            "resolved": resolved,
        }
        self._add_command_guild(data, name, discord.AppCommandType.user, dm=False)
        return self._interaction(APPLICATION_COMMAND, data, user=user, channel_id=channel_id, dm=False)

    def component(
        self,
        custom_id: str,
        message_id: int,
        *,
        user: FakeUser = MEMBER,
        values: Sequence[str] | None = None,
        permissions: int | str | None = None,
        locale: str = "en-US",
    ) -> dict[str, Any]:
        """A MESSAGE_COMPONENT payload for a click on `custom_id` of a message the fake holds
        (its current state is embedded as `message`, as Discord does)."""
        msg = self.fake.message(message_id)
        comp = next((c for c in walk_components(msg.components) if c.get("custom_id") == custom_id), None)
        if comp is None:
            raise AssertionError(f"message {message_id} has no component {custom_id!r}: {msg.custom_ids()}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": comp["type"]}
        if comp["type"] != 2:
            data["values"] = list(values or [])
        channel = self.fake.channels.get(msg.channel_id)
        return self._interaction(
            MESSAGE_COMPONENT,
            data,
            user=user,
            channel_id=msg.channel_id,
            dm=channel is not None and channel.type == 1,
            permissions=permissions,
            locale=locale,
            message=msg,
        )

    def modal_submit(
        self,
        custom_id: str,
        fields: Mapping[str, str | Sequence[str]],
        *,
        user: FakeUser = MEMBER,
        channel_id: int | None = None,
        dm: bool = False,
        message_id: int | None = None,
        locale: str = "en-US",
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
    ) -> dict[str, Any]:
        """A MODAL_SUBMIT payload. The component layout mirrors the modal the bot last sent with this
        custom_id (action rows or labels); `fields` maps input custom_ids to values (lists for selects).
        `files` maps file-upload custom_ids to (filename, bytes, content type), hosted on the fake CDN and put
        in `data.resolved.attachments`. Pass `message_id` when the modal was opened from a button on that
        message."""
        shape = next(
            (
                i.modal
                for i in sorted(self.fake.interactions.values(), key=lambda i: -i.id)
                if i.modal and i.modal.get("custom_id") == custom_id
            ),
            None,
        )
        values: dict[str, str | Sequence[str]] = dict(fields)
        uploaded: dict[str, dict[str, Any]] = {}
        for cid, (filename, blob, ctype) in (files or {}).items():
            att = self.fake.attachment_payload(filename, blob, ctype)
            uploaded[att["id"]] = att
            values[cid] = [att["id"]]
        data: dict[str, Any] = {"custom_id": custom_id, "components": _modal_components(shape, values)}
        if uploaded:
            data["resolved"] = {"attachments": uploaded}
        msg = self.fake.message(message_id) if message_id is not None else None
        if msg is not None:
            channel = self.fake.channels.get(msg.channel_id)
            dm = channel is not None and channel.type == 1
            channel_id = msg.channel_id
        return self._interaction(
            MODAL_SUBMIT, data, user=user, channel_id=channel_id, dm=dm, locale=locale, message=msg
        )

    def _interaction(
        self,
        itype: int,
        data: dict[str, Any],
        *,
        user: FakeUser,
        channel_id: int | None,
        dm: bool,
        permissions: int | str | None = None,
        app_permissions: int | None = None,
        locale: str = "en-US",
        message: FakeMessage | None = None,
    ) -> dict[str, Any]:
        perms = int(permissions) if permissions is not None else user.permissions
        payload: dict[str, Any] = {
            "id": str(self.fake.snowflake()),
            "application_id": str(self.fake.application_id),
            "type": itype,
            "data": data,
            "token": "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48),
            "version": 1,
            "locale": locale,
            "app_permissions": str(self.app_permissions if app_permissions is None else app_permissions),
            "entitlements": [],
            "attachment_size_limit": self.fake.max_upload_bytes,
        }
        if dm:
            channel = self.dm_channel(user)
            payload.update(
                channel=channel.to_payload(),
                channel_id=str(channel.id),
                user=user.user_payload(),
                context=1,
                authorizing_integration_owners={"0": "0"},
            )
        else:
            channel = self.fake.channels[channel_id or self.general_channel_id]
            guild_id = channel.guild_id or self.guild_id
            payload.update(
                guild_id=str(guild_id),
                guild={"id": str(guild_id), "locale": "en-US", "features": []},
                guild_locale="en-US",
                channel={**channel.to_payload(), "permissions": str(perms)},
                channel_id=str(channel.id),
                member=user.member_payload(perms),
                context=0,
                authorizing_integration_owners={"0": str(guild_id)},
            )
        if message is not None:
            payload["message"] = message.to_payload()
        return payload

    def _find_command(
        self, name: str, kind: discord.AppCommandType, *, dm: bool
    ) -> tuple[app_commands.Command[Any, ..., Any] | app_commands.Group | app_commands.ContextMenu | None, int | None]:
        tree = getattr(self.bot, "tree", None) or self.bot._connection._command_tree
        if tree is None:
            return None, None
        if not dm:
            cmd = tree.get_command(name, guild=discord.Object(self.guild_id), type=kind)
            if cmd is not None:
                return cmd, self.guild_id
        return tree.get_command(name, type=kind), None

    def _add_command_guild(self, data: dict[str, Any], name: str, kind: discord.AppCommandType, *, dm: bool) -> None:
        _, scope = self._find_command(name, kind, dm=dm)
        if scope is not None:
            data["guild_id"] = str(scope)

    def _command_id(self, name: str, kind: int, *, dm: bool) -> int:
        _, scope = self._find_command(name, discord.AppCommandType(kind), dm=dm)
        for synced in self.fake.commands.get(scope, []):
            if synced["name"] == name and synced.get("type", 1) == kind:
                return int(synced["id"])
        key = (name, kind, scope)
        if key not in self._command_ids:
            self._command_ids[key] = self.fake.snowflake()
        return self._command_ids[key]

    def _command_data(
        self,
        name: str,
        options: Mapping[str, Any] | None,
        subcommand: str | None,
        attachments: Mapping[str, tuple[str, bytes, str]] | None,
        *,
        dm: bool,
        focused: str | None,
    ) -> dict[str, Any]:
        cmd, scope = self._find_command(name, discord.AppCommandType.chat_input, dm=dm)
        path = subcommand.split() if subcommand else []
        target: Any = cmd
        for part in path:
            target = target.get_command(part) if isinstance(target, app_commands.Group) else None
        params: dict[str, app_commands.Parameter] = {}
        if isinstance(target, app_commands.Command):
            for p in target.parameters:
                params[p.name] = p
                params[p.display_name] = p
        resolved: dict[str, dict[str, Any]] = {}
        values: dict[str, Any] = dict(options or {})
        values.update(attachments or {})
        opts = [
            self._option(key, value, params.get(key), resolved, focused=(focused == key))
            for key, value in values.items()
        ]
        for part in reversed(path):
            opts = [{"type": 1 if part == path[-1] else 2, "name": part, "options": opts}]
        data: dict[str, Any] = {"id": str(self._command_id(name, 1, dm=dm)), "name": name, "type": 1}
        if opts:
            data["options"] = opts
        if resolved:
            data["resolved"] = resolved
        if scope is not None:
            data["guild_id"] = str(scope)
        return data

    def _option(
        self,
        key: str,
        value: Any,
        param: app_commands.Parameter | None,
        resolved: dict[str, dict[str, Any]],
        *,
        focused: bool,
    ) -> dict[str, Any]:
        otype = param.type if param is not None else _infer_option_type(value)
        name = param.display_name if param is not None else key
        option: dict[str, Any] = {"name": name, "type": otype.value}
        if focused:
            option.update(value="" if value is None else str(value), focused=True)
            return option
        AOT = discord.AppCommandOptionType
        if otype is AOT.attachment:
            filename, blob, ctype = value
            att = self.fake.attachment_payload(filename, blob, ctype)
            resolved.setdefault("attachments", {})[att["id"]] = att
            option["value"] = att["id"]
        elif otype in (AOT.user, AOT.mentionable) and isinstance(value, FakeUser | int):
            user = value if isinstance(value, FakeUser) else self.users[value]
            resolved.setdefault("users", {})[str(user.id)] = user.user_payload()
            member = user.member_payload()
            member.pop("user")
            resolved.setdefault("members", {})[str(user.id)] = member
            option["value"] = str(user.id)
        elif otype is AOT.channel:
            channel = self.fake.channels[int(value)]
            resolved.setdefault("channels", {})[str(channel.id)] = {
                **channel.to_payload(),
                "permissions": str(MEMBER_PERMISSIONS.value),
            }
            option["value"] = str(channel.id)
        elif otype is AOT.role:
            resolved.setdefault("roles", {})[str(value)] = {
                "id": str(value),
                "name": f"role-{value}",
                "color": 0,
                "hoist": False,
                "position": 1,
                "permissions": "0",
                "managed": False,
                "mentionable": False,
                "flags": 0,
            }
            option["value"] = str(value)
        elif otype is AOT.integer:
            option["value"] = int(value)
        elif otype is AOT.number:
            option["value"] = float(value)
        elif otype is AOT.boolean:
            option["value"] = bool(value)
        else:
            option["value"] = str(value)
        return option

    # ----------------------------------------------------------------- dispatch and assertions

    async def dispatch(
        self,
        payload: dict[str, Any],
        *,
        age: float = 0.0,
        wait: bool = True,
        timeout: float = 5.0,  # noqa: ASYNC109 - bounds the wait for the bot's own handler tasks
    ) -> Dispatched:
        """Feed INTERACTION_CREATE through discord.py's gateway parser, after telling the fake about it.

        `age` pretends the interaction was created that many seconds ago (its snowflake id is
        re-minted to match, so `Interaction.created_at`/`is_expired()` agree with the fake).
        With `wait`, returns once the handler tasks discord.py started have finished."""
        if age:
            payload["id"] = str(self.fake.snowflake(self.fake.now() - age))
        self.fake.register_interaction(payload, created_at=self.fake.now() - age)
        before = asyncio.all_tasks()
        self.bot._connection.parsers["INTERACTION_CREATE"](payload)
        sent = Dispatched(int(payload["id"]), payload["token"], payload, list(asyncio.all_tasks() - before))
        if wait:
            await sent.wait(timeout)
        return sent

    async def wait_for(
        self,
        predicate: Callable[[], T | Awaitable[T]],
        timeout: float = 5.0,  # noqa: ASYNC109 - polling helper with an explicit deadline
        *,
        message: str = "",
    ) -> T:
        """Poll `predicate` (sync or async) until truthy, waking whenever the fake handles a request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout}s: {message or predicate}")
            await self.fake.changed(min(remaining, 0.05))

    def responses(self, sent: TokenLike) -> list[RecordedRequest]:
        """Everything Discord received for this interaction (callback and webhook requests), in order;
        see `RecordedRequest.callback_type/flags/ephemeral/content/embeds/files/status`."""
        return self.fake.interaction_requests(_token(sent))

    def original(self, sent: TokenLike) -> FakeMessage | None:
        return self.fake.original(_token(sent))

    def followups(self, sent: TokenLike) -> list[FakeMessage]:
        return self.fake.followups(_token(sent))

    def ephemeral_text(self, sent: TokenLike) -> str:
        """Current text of the interaction's ephemeral messages (original and follow-ups)."""
        token = _token(sent)
        msgs = [self.fake.original(token), *self.fake.followups(token)]
        return "\n".join(m.text for m in msgs if m is not None and m.ephemeral and not m.deleted)

    @property
    def errors(self) -> list[logging.LogRecord]:
        """ERROR records logged by discord.py (unhandled exceptions in commands, views, events)."""
        return list(self._capture.records)

    @property
    def exceptions(self) -> list[BaseException]:
        return [r.exc_info[1] for r in self._capture.records if r.exc_info and r.exc_info[1] is not None]

    async def sync_commands(self, *, guild: bool = False) -> list[app_commands.AppCommand]:
        """Sync the bot's tree to the fake (global, or the test guild), so payloads carry real ids."""
        tree: app_commands.CommandTree[Any] = self.bot.tree  # type: ignore[attr-defined]
        return await tree.sync(guild=discord.Object(self.guild_id) if guild else None)


def _infer_option_type(value: Any) -> discord.AppCommandOptionType:
    AOT = discord.AppCommandOptionType
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], bytes):
        return AOT.attachment
    if isinstance(value, bool):
        return AOT.boolean
    if isinstance(value, int):
        return AOT.integer
    if isinstance(value, float):
        return AOT.number
    if isinstance(value, FakeUser):
        return AOT.user
    return AOT.string


def _modal_components(shape: dict[str, Any] | None, fields: Mapping[str, str | Sequence[str]]) -> list[dict[str, Any]]:
    """Modal-submit components in the layout the modal was sent with."""
    counter = iter(range(1, 1000))

    def submitted(comp: dict[str, Any]) -> dict[str, Any]:
        cid = comp.get("custom_id")
        out: dict[str, Any] = {"type": comp["type"], "id": next(counter)}
        if cid is None:
            return out
        out["custom_id"] = cid
        value = fields.get(cid, "")
        if comp["type"] == 19:  # a file upload: attachment ids, none when nothing was attached
            out["values"] = [] if not value else [value] if isinstance(value, str) else list(value)
        elif comp["type"] == 4:
            out["value"] = value if isinstance(value, str) else " ".join(value)
        else:
            out["values"] = [value] if isinstance(value, str) else list(value)
        return out

    if shape is None:
        return [
            {"type": 1, "id": next(counter), "components": [submitted({"type": 4, "custom_id": cid})]} for cid in fields
        ]
    result: list[dict[str, Any]] = []
    for top in shape.get("components") or []:
        if top.get("type") == 1:
            row_id = next(counter)
            result.append({"type": 1, "id": row_id, "components": [submitted(c) for c in top.get("components", [])]})
        elif top.get("type") == 18 and isinstance(top.get("component"), dict):
            label_id = next(counter)
            result.append({"type": 18, "id": label_id, "component": submitted(top["component"])})
        else:
            result.append({"type": top.get("type", 10), "id": next(counter)})
    return result
