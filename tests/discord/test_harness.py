"""Proves the Discord harness: a throwaway bot driven through real discord.py against FakeDiscord."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from discord.http import Route, handle_message_parameters
from PIL import Image

from tests.fakes.discord_api import DEFERRED_CHANNEL_MESSAGE, EPHEMERAL, FakeDiscord, MiB
from tests.fakes.discord_harness import (
    GENERAL_CHANNEL_ID,
    MEMBER,
    MODERATOR,
    NSFW_CHANNEL_ID,
    OWNER,
    DiscordHarness,
)

ORIGINAL_BASE = Route.BASE


def png(width: int = 8, height: int = 6) -> bytes:
    img = Image.new("RGB", (width, height), (255, 0, 0))
    img.putpixel((0, 0), (0, 0, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def mirrored(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out, "PNG")
        return out.getvalue()


# --------------------------------------------------------------------------- throwaway bot


class RerunButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"fill:rerun:(?P<job_id>[0-9]+)"):
    def __init__(self, job_id: int) -> None:
        super().__init__(discord.ui.Button(label="Re-run", custom_id=f"fill:rerun:{job_id}"))
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Button[Any], match: Any
    ) -> RerunButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        interaction.client.events.append(("rerun", self.job_id, interaction.user.id))
        await interaction.response.send_message(f"re-running job {self.job_id}", ephemeral=True)


class ResultView(discord.ui.View):
    """A persistent dynamic button plus an ordinary message-bound button."""

    def __init__(self, job_id: int) -> None:
        super().__init__(timeout=None)
        self.add_item(RerunButton(job_id))

    @discord.ui.button(label="Details", custom_id="fill:details")
    async def details(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        interaction.client.events.append(("details", interaction.message.id if interaction.message else None))
        await interaction.response.send_message("details", ephemeral=True)


class PromptModal(discord.ui.Modal, title="Edit prompt"):
    prompt: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Prompt", custom_id="prompt:text", max_length=200)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        interaction.client.events.append(("modal", self.prompt.value))
        await interaction.response.send_message(f"new prompt: {self.prompt.value}", ephemeral=True)


@app_commands.command(name="fill", description="Inpaint an image")
@app_commands.describe(image="Image to edit", prompt="What to paint")
async def fill_command(interaction: discord.Interaction[Any], image: discord.Attachment, prompt: str) -> None:
    bot: ThrowawayBot = interaction.client
    try:
        await interaction.response.defer(thinking=True)
        data = await image.read()
        if bot.gate is not None:
            await bot.gate.wait()
        result = bot.reply_bytes if bot.reply_bytes is not None else mirrored(data)
        embed = discord.Embed(title="Fill done", description=prompt).set_image(url="attachment://result.png")
        msg = await interaction.edit_original_response(
            content=bot.reply_content,
            embed=embed,
            attachments=[discord.File(io.BytesIO(result), "result.png")],
            view=ResultView(42),
        )
        bot.events.append(("edited", msg.id, image.filename, len(data)))
        if bot.second_gate is not None:
            await bot.second_gate.wait()
            await interaction.edit_original_response(content="second edit")
    except discord.HTTPException as exc:
        bot.errors.append(exc)


@app_commands.command(name="prompt", description="Edit the prompt")
async def prompt_command(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.send_modal(PromptModal(custom_id="prompt:modal"))


@app_commands.command(name="style", description="Pick a style")
@app_commands.describe(name="Style name")
async def style_command(interaction: discord.Interaction[Any], name: str) -> None:
    await interaction.response.send_message(name, ephemeral=True)


@style_command.autocomplete("name")
async def style_autocomplete(interaction: discord.Interaction[Any], current: str) -> list[app_commands.Choice[str]]:
    styles = ["watercolor", "oil", "pixel art"]
    return [app_commands.Choice(name=s, value=s) for s in styles if current in s]


@app_commands.command(name="where", description="Report the interaction context")
async def where_command(interaction: discord.Interaction[Any]) -> None:
    channel = interaction.channel
    interaction.client.events.append(
        (
            "where",
            interaction.guild.name if interaction.guild else None,
            getattr(channel, "is_nsfw", lambda: False)(),
            interaction.permissions.manage_guild,
            interaction.app_permissions.attach_files,
            interaction.user.id,
        )
    )
    await interaction.response.send_message("ok", ephemeral=True)


@app_commands.command(name="secret", description="Thinks ephemerally, then follows up")
async def secret_command(interaction: discord.Interaction[Any]) -> None:
    await interaction.response.defer(ephemeral=True, thinking=True)
    await interaction.followup.send("hidden result")


class EchoView(discord.ui.View):
    """Buttons answering with UPDATE_MESSAGE (7) and DEFERRED_UPDATE_MESSAGE (6) + edit of @original."""

    @discord.ui.button(label="Flip", custom_id="echo:flip")
    async def flip(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="flipped")

    @discord.ui.button(label="Later", custom_id="echo:later")
    async def later(self, interaction: discord.Interaction[Any], button: discord.ui.Button[Any]) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="edited later", view=None)


@app_commands.command(name="echo", description="Replies at once with the image and buttons")
@app_commands.describe(image="Image to echo")
async def echo_command(interaction: discord.Interaction[Any], image: discord.Attachment) -> None:
    file = await image.to_file()
    await interaction.response.send_message("echo", file=file, view=EchoView())


@app_commands.command(name="boom", description="Fails")
async def boom_command(interaction: discord.Interaction[Any]) -> None:
    raise RuntimeError("kaboom")


@app_commands.context_menu(name="Use as input")
async def use_as_input(interaction: discord.Interaction[Any], message: discord.Message) -> None:
    attachment = message.attachments[0]
    data = await attachment.read()
    interaction.client.events.append(("ctx", message.id, attachment.filename, len(data)))
    await interaction.response.send_message(f"using {attachment.filename} ({len(data)} bytes)", ephemeral=True)


@app_commands.context_menu(name="Who")
async def who_menu(interaction: discord.Interaction[Any], member: discord.Member) -> None:
    interaction.client.events.append(("who", member.id, member.guild_permissions.manage_guild))
    await interaction.response.send_message(member.name, ephemeral=True)


class ThrowawayBot(commands.Bot):
    def __init__(self) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
        self.events: list[tuple[Any, ...]] = []
        self.errors: list[discord.HTTPException] = []
        self.gate: asyncio.Event | None = None
        self.second_gate: asyncio.Event | None = None
        self.reply_content = "done"
        self.reply_bytes: bytes | None = None

    async def setup_hook(self) -> None:
        self.add_dynamic_items(RerunButton)
        cmds = (fill_command, prompt_command, style_command, where_command, secret_command, echo_command, boom_command)
        for cmd in cmds:
            self.tree.add_command(cmd)
        self.tree.add_command(use_as_input)
        self.tree.add_command(who_menu)


@pytest.fixture
async def h() -> AsyncIterator[DiscordHarness]:
    async with DiscordHarness(ThrowawayBot()) as harness:
        yield harness
        assert harness.fake.unhandled == [], "the bot called routes the fake does not implement"


def bot_of(h: DiscordHarness) -> ThrowawayBot:
    assert isinstance(h.bot, ThrowawayBot)
    return h.bot


def fill_payload(h: DiscordHarness, **kwargs: Any) -> dict[str, Any]:
    return h.slash("fill", {"prompt": "a red fox"}, attachments={"image": ("in.png", png(), "image/png")}, **kwargs)


# --------------------------------------------------------------------------- the happy path


async def test_slash_defer_then_edit_with_file_embed_and_view(h: DiscordHarness) -> None:
    src = png()
    sent = await h.dispatch(
        h.slash("fill", {"prompt": "a red fox"}, attachments={"image": ("in.png", src, "image/png")})
    )

    ack, edit = h.responses(sent)
    assert ack.callback_type == DEFERRED_CHANNEL_MESSAGE and ack.status == 200
    assert ack.query["with_response"] == "1"
    assert ack.response["interaction"]["response_message_loading"] is True
    assert edit.method == "PATCH" and edit.path.endswith("/messages/@original") and edit.ok
    assert [(f.filename, f.size) for f in edit.files] == [("result.png", len(mirrored(src)))]

    msg = h.original(sent)
    assert msg is not None and not msg.loading and not msg.ephemeral
    assert msg.content == "done" and msg.type == 20 and msg.webhook_id == h.fake.application_id
    assert msg.embeds[0]["title"] == "Fill done" and msg.embeds[0]["description"] == "a red fox"
    assert msg.embeds[0]["image"]["url"] == msg.attachments[0].url
    with Image.open(io.BytesIO(msg.attachments[0].data)) as out:
        assert out.size == (8, 6) and out.getpixel((7, 0)) == (0, 0, 255)
    assert sorted(msg.custom_ids()) == ["fill:details", "fill:rerun:42"]
    assert bot_of(h).events == [("edited", msg.id, "in.png", len(src))]
    # Attachment.read() downloads `url` (not proxy_url) from the fake CDN.
    assert [r.path.split("/")[1] for r in h.fake.requests_to("GET", "/*attachments/*")] == ["ephemeral-attachments"]
    assert h.fake.messages_in(GENERAL_CHANNEL_ID) == [msg]
    assert not h.errors and not bot_of(h).errors


async def test_message_bound_button_reaches_its_view(h: DiscordHarness) -> None:
    sent = await h.dispatch(fill_payload(h))
    msg = h.original(sent)
    assert msg is not None

    click = await h.dispatch(h.component("fill:details", msg.id))

    assert bot_of(h).events[-1] == ("details", msg.id)
    assert h.ephemeral_text(click) == "details"


async def test_immediate_response_with_file_then_update_and_deferred_update(h: DiscordHarness) -> None:
    image = png(3, 2)
    sent = await h.dispatch(h.slash("echo", attachments={"image": ("in.png", image, "image/png")}))
    (ack,) = h.responses(sent)
    assert ack.callback_type == 4 and [f.filename for f in ack.files] == ["in.png"]
    msg = h.original(sent)
    assert msg is not None and msg.attachments[0].data == image and msg.content == "echo"

    # The view was stored under response_message_id from the with_response body, so clicks reach it.
    flip = await h.dispatch(h.component("echo:flip", msg.id))
    assert h.responses(flip)[0].callback_type == 7 and h.fake.message(msg.id).content == "flipped"

    later = await h.dispatch(h.component("echo:later", msg.id))
    assert [(r.callback_type, r.method) for r in h.responses(later)] == [(6, "POST"), (None, "PATCH")]
    assert h.fake.message(msg.id).content == "edited later" and h.fake.message(msg.id).components == []
    assert h.fake.message(msg.id).attachments[0].data == image  # kept across edits


async def test_host_file_is_served_by_the_fake_cdn(h: DiscordHarness) -> None:
    url, size = h.fake.host_file("mask.png", b"\x89PNG fake", "image/png")
    assert url.startswith(h.fake.url) and size == len(b"\x89PNG fake")
    assert await h.bot.http.get_from_cdn(url) == b"\x89PNG fake"


# --------------------------------------------------------------------------- Discord's rules


async def test_second_acknowledgement_is_rejected_with_40060(h: DiscordHarness) -> None:
    payload = fill_payload(h)
    await h.dispatch(payload)
    await h.dispatch(payload)  # the same interaction delivered twice (e.g. two processes)

    (err,) = bot_of(h).errors
    assert (err.status, err.code) == (400, 40060)
    assert [r.status for r in h.responses(payload["token"]) if r.callback_type] == [200, 400]


async def test_acknowledgement_after_three_seconds_is_unknown_interaction(h: DiscordHarness) -> None:
    sent = await h.dispatch(fill_payload(h), age=3.5)

    (err,) = bot_of(h).errors
    assert isinstance(err, discord.NotFound) and err.code == 10062
    assert h.original(sent) is None


async def test_ack_window_can_be_closed_by_the_test_clock(h: DiscordHarness) -> None:
    payload = fill_payload(h)
    h.fake.register_interaction(payload)
    h.fake.expire_ack_window(payload["token"])
    await h.dispatch(payload)
    (err,) = bot_of(h).errors
    assert err.code == 10062


async def test_expired_token_gives_50027_on_edit(h: DiscordHarness) -> None:
    bot = bot_of(h)
    bot.gate = asyncio.Event()
    sent = await h.dispatch(fill_payload(h), wait=False)
    await h.wait_for(lambda: h.fake.interaction(sent.token).acked_type == DEFERRED_CHANNEL_MESSAGE)

    h.fake.expire_token(sent.token)
    bot.gate.set()
    await sent.wait()

    (err,) = bot.errors
    assert (err.status, err.code) == (401, 50027)
    assert h.original(sent) is not None and h.original(sent).loading  # type: ignore[union-attr]


async def test_deleted_reply_gives_not_found(h: DiscordHarness) -> None:
    bot = bot_of(h)
    bot.second_gate = asyncio.Event()
    sent = await h.dispatch(fill_payload(h), wait=False)
    await h.wait_for(lambda: bot.events)

    h.fake.delete_message(bot.events[0][1])  # the user deletes the reply
    bot.second_gate.set()
    await sent.wait()

    (err,) = bot.errors
    assert isinstance(err, discord.NotFound) and err.code == 10008
    assert h.fake.messages_in(GENERAL_CHANNEL_ID) == []


async def test_429_is_honoured_and_retried(h: DiscordHarness) -> None:
    h.fake.rate_limit_next("PATCH", "/api/v10/webhooks/*/messages/@original", times=2, retry_after=0.05)
    started = time.monotonic()
    sent = await h.dispatch(fill_payload(h))

    patches = [r for r in h.responses(sent) if r.method == "PATCH"]
    assert [r.status for r in patches] == [429, 429, 200]
    assert patches[0].response == {
        "message": "You are being rate limited.",
        "code": 0,
        "retry_after": 0.05,
        "global": False,
    }
    assert time.monotonic() - started >= 0.1
    assert not bot_of(h).errors and h.original(sent).content == "done"  # type: ignore[union-attr]

    h.fake.rate_limit_next("POST", "/api/v10/channels/*/messages")
    channel = h.bot.get_channel(GENERAL_CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    posted = await channel.send("after the limit")
    assert [r.status for r in h.fake.requests_to("POST", "/api/v10/channels/*/messages")] == [429, 200]
    assert h.fake.message(posted.id).content == "after the limit"


async def test_real_bucket_headers_make_discordpy_wait_instead_of_429(h: DiscordHarness) -> None:
    channel = h.bot.get_channel(GENERAL_CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel)
    msg = await channel.send("v0")
    h.fake.limit("PATCH", "/api/v10/channels/*/messages/*", limit=2, per=0.3)

    started = time.monotonic()
    for n in range(1, 4):
        await msg.edit(content=f"v{n}")

    assert [r.status for r in h.fake.requests_to("PATCH")] == [200, 200, 200]
    assert time.monotonic() - started >= 0.2
    assert h.fake.message(msg.id).content == "v3"


async def test_content_over_2000_is_rejected(h: DiscordHarness) -> None:
    bot_of(h).reply_content = "x" * 2001
    sent = await h.dispatch(fill_payload(h))

    (err,) = bot_of(h).errors
    assert (err.status, err.code) == (400, 50035)
    assert "In content: Must be 2000 or fewer in length." in err.text
    assert h.original(sent).loading  # type: ignore[union-attr]


async def test_upload_over_10_mib_is_rejected_with_413(h: DiscordHarness) -> None:
    bot_of(h).reply_bytes = b"\0" * (10 * MiB + 1)
    await h.dispatch(fill_payload(h))

    (err,) = bot_of(h).errors
    assert (err.status, err.code) == (413, 40005)


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        ({"content": "x" * 2001}, 50035, "In content"),
        ({"embeds": [{"title": "t"}] * 11}, 50035, "In embeds: Must be 10 or fewer"),
        ({"embeds": [{"title": "x" * 257}]}, 50035, "In embeds.0.title"),
        ({"embeds": [{"description": "x" * 4097}]}, 50035, "In embeds.0.description"),
        ({"embeds": [{"fields": [{"name": "n", "value": "v"}] * 26}]}, 50035, "In embeds.0.fields"),
        ({"embeds": [{"footer": {"text": "x" * 2049}}]}, 50035, "In embeds.0.footer.text"),
        ({"embeds": [{"description": "x" * 4000}, {"description": "x" * 2001}]}, 50035, "maximum size of 6000"),
        (
            {
                "content": "x",
                "components": [
                    {"type": 1, "components": [{"type": 2, "style": 1, "label": "a", "custom_id": f"b{i}"}]}
                    for i in range(6)
                ],
            },
            50035,
            "In components: Must be 5 or fewer",
        ),
        (
            {
                "content": "x",
                "components": [
                    {"type": 1, "components": [{"type": 2, "style": 1, "label": "a", "custom_id": "c" * 101}]}
                ],
            },
            50035,
            "In components.0.components.0.custom_id",
        ),
        ({}, 50006, "Cannot send an empty message"),
    ],
)
async def test_message_limits(h: DiscordHarness, payload: dict[str, Any], code: int, fragment: str) -> None:
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=GENERAL_CHANNEL_ID)
    with pytest.raises(discord.HTTPException) as info:
        await h.bot.http.request(route, json=payload)
    assert (info.value.status, info.value.code) == (400, code)
    assert fragment in info.value.text


async def test_more_than_ten_attachments_is_rejected(h: DiscordHarness) -> None:
    files = [discord.File(io.BytesIO(b"x"), f"f{i}.txt") for i in range(11)]
    with handle_message_parameters(content="many", files=files) as params, pytest.raises(discord.HTTPException) as info:
        await h.bot.http.send_message(GENERAL_CHANNEL_ID, params=params)
    assert info.value.code == 50035 and "In attachments" in info.value.text


async def test_server_errors_and_missing_resources(h: DiscordHarness) -> None:
    channel = await h.bot.fetch_channel(NSFW_CHANNEL_ID)
    assert isinstance(channel, discord.TextChannel) and channel.is_nsfw()

    h.fake.fail_next("POST", "/api/v10/channels/*/messages", status=503)
    with pytest.raises(discord.DiscordServerError):
        await channel.send("hello")

    h.fake.fail_next("POST", "/api/v10/channels/*/messages", status=500)
    msg = await channel.send("hello again")  # discord.py retries a 500 once after 1 s
    assert [r.status for r in h.fake.requests_to("POST", "/api/v10/channels/*/messages")] == [503, 500, 200]

    h.fake.delete_message(msg.id)
    with pytest.raises(discord.NotFound) as info:
        await channel.fetch_message(msg.id)
    assert info.value.code == 10008
    with pytest.raises(discord.NotFound) as info:
        await h.bot.fetch_channel(999)
    assert info.value.code == 10003


# --------------------------------------------------------------------------- components, modals, menus


async def test_dynamic_button_works_after_restart(h: DiscordHarness) -> None:
    sent = await h.dispatch(fill_payload(h))
    msg = h.original(sent)
    assert msg is not None
    first_bot = bot_of(h)

    await h.restart(ThrowawayBot())
    click = await h.dispatch(h.component("fill:rerun:42", msg.id, user=MODERATOR))

    assert bot_of(h) is not first_bot
    assert bot_of(h).events == [("rerun", 42, MODERATOR.id)]
    (ack,) = h.responses(click)
    assert ack.callback_type == 4 and ack.flags & EPHEMERAL
    assert h.ephemeral_text(click) == "re-running job 42"
    assert h.fake.messages_in(GENERAL_CHANNEL_ID) == [msg]  # the ephemeral reply is not public

    # A message-bound (non-persistent) view does not survive the restart: the click goes unanswered.
    lost = await h.dispatch(h.component("fill:details", msg.id))
    assert h.responses(lost) == []


async def test_modal_submit(h: DiscordHarness) -> None:
    opened = await h.dispatch(h.slash("prompt"))
    (ack,) = h.responses(opened)
    assert ack.callback_type == 9 and ack.data["custom_id"] == "prompt:modal"

    submitted = await h.dispatch(h.modal_submit("prompt:modal", {"prompt:text": "a blue sky"}))

    assert bot_of(h).events == [("modal", "a blue sky")]
    assert h.ephemeral_text(submitted) == "new prompt: a blue sky"


async def test_message_context_menu_reads_the_target_attachment(h: DiscordHarness) -> None:
    image = png(4, 4)
    target = h.post_message("look at this", files=[("cat.png", image, "image/png")])

    sent = await h.dispatch(h.message_command("Use as input", target))

    assert bot_of(h).events == [("ctx", target.id, "cat.png", len(image))]
    assert h.ephemeral_text(sent) == f"using cat.png ({len(image)} bytes)"


async def test_user_context_menu(h: DiscordHarness) -> None:
    sent = await h.dispatch(h.user_command("Who", MODERATOR, user=OWNER))

    assert bot_of(h).events == [("who", MODERATOR.id, True)]
    assert h.ephemeral_text(sent) == "moderator"


async def test_autocomplete(h: DiscordHarness) -> None:
    sent = await h.dispatch(h.autocomplete("style", {"name": "o"}, focused="name"))

    (ack,) = h.responses(sent)
    assert ack.callback_type == 8
    assert [c["value"] for c in ack.choices] == ["watercolor", "oil"]


# --------------------------------------------------------------------------- contexts and plumbing


async def test_guild_nsfw_and_dm_contexts(h: DiscordHarness) -> None:
    await h.dispatch(h.slash("where"))
    await h.dispatch(h.slash("where", user=MODERATOR, channel_id=NSFW_CHANNEL_ID))
    await h.dispatch(h.slash("where", user=OWNER, dm=True))

    assert bot_of(h).events == [
        ("where", "Test Guild", False, False, True, MEMBER.id),
        ("where", "Test Guild", True, True, True, MODERATOR.id),
        ("where", None, False, False, True, OWNER.id),
    ]


async def test_followup_after_ephemeral_defer_replaces_the_loading_message(h: DiscordHarness) -> None:
    sent = await h.dispatch(h.slash("secret"))

    msg = h.original(sent)
    assert msg is not None and msg.ephemeral and not msg.loading
    assert h.followups(sent) == []
    assert h.ephemeral_text(sent) == "hidden result"
    assert h.fake.messages_in(GENERAL_CHANNEL_ID) == []


async def test_unhandled_command_error_is_captured(h: DiscordHarness) -> None:
    await h.dispatch(h.slash("boom"))
    assert any(isinstance(getattr(e, "original", None), RuntimeError) for e in h.exceptions)


async def test_command_sync_is_recorded_and_ids_reused(h: DiscordHarness) -> None:
    synced = await h.sync_commands()
    names = sorted(c.name for c in synced)
    assert names == sorted(["fill", "prompt", "style", "where", "secret", "echo", "boom", "Use as input", "Who"])
    fill_id = next(c.id for c in synced if c.name == "fill")
    assert int(h.slash("fill", {"prompt": "x"})["data"]["id"]) == fill_id


async def test_route_base_is_restored_and_fake_can_outlive_bots() -> None:
    async with FakeDiscord() as fake:
        async with DiscordHarness(ThrowawayBot(), fake=fake) as h:
            assert Route.BASE == fake.api_base
            assert h.bot.user is not None and h.bot.user.id == fake.application_id
            assert h.bot.application_id == fake.application_id and h.bot.is_ready()
        assert Route.BASE == ORIGINAL_BASE
        assert [r.path for r in fake.requests[:2]] == ["/api/v10/users/@me", "/api/v10/oauth2/applications/@me"]
