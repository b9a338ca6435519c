"""Server safety settings, moderation, persistence and restart recovery, end to end.

The real bot runs against the fake Discord API and the fake provider servers: moderators change settings with
`/fill-settings`, members run `/fill`, and the tests look at what Discord and the providers received.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import discord
import pytest

from bot.app import FillBot
from bot.storage import Storage
from tests.discord.conftest import both_backends, mask_for, photo, running
from tests.fakes.bfl_server import FakeBFL
from tests.fakes.discord_api import FakeChannel, FakeMessage
from tests.fakes.discord_harness import (
    GENERAL_CHANNEL_ID,
    GUILD_ID,
    MEMBER,
    MEMBER_PERMISSIONS,
    MODERATOR,
    NSFW_CHANNEL_ID,
    OWNER,
    DiscordHarness,
    Dispatched,
    FakeUser,
)
from tests.fakes.replicate_server import FakeReplicate, Fault
from tests.fakes.wavespeed_server import FakeWaveSpeed

# Settings name channels by real snowflakes (15–21 digits), so the channels moderators pick get such ids.
ART_ID = 1_200_000_000_000_000_001
GALLERY_ID = 1_200_000_000_000_000_002
LOG_ID = 1_200_000_000_000_000_003
NSFW_GALLERY_ID = 1_200_000_000_000_000_004
OTHER = FakeUser(1004, "other", MEMBER_PERMISSIONS.value)  # a second member without Manage Server

IMAGE = photo()
MASK = mask_for()
TERMINAL = ("✅", "❌", "🛡️", "⏹️", "⌛")
RELATIVE_TIME = re.compile(r"<t:(\d+):R>")


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
async def fake_bfl() -> AsyncIterator[FakeBFL]:
    async with FakeBFL(duration=0.05) as fake:
        yield fake


@pytest.fixture
async def fake_wavespeed() -> AsyncIterator[FakeWaveSpeed]:
    async with FakeWaveSpeed(duration=0.05) as fake:
        yield fake


def env(
    replicate: FakeReplicate | None = None, bfl: FakeBFL | None = None, wavespeed: FakeWaveSpeed | None = None
) -> dict[str, str]:
    """Bot environment pointing the given providers at their fakes (local is always there)."""
    values: dict[str, str] = {}
    if replicate is not None:
        values.update(REPLICATE_API_TOKEN=replicate.token, REPLICATE_BASE_URL=replicate.base_url)
    if bfl is not None:
        values.update(BFL_API_KEY=bfl.key, BFL_BASE_URL=bfl.base_url)
    if wavespeed is not None:
        values.update(WAVESPEED_API_KEY=wavespeed.key, WAVESPEED_BASE_URL=wavespeed.base_url)
    return values


def serve(bot: FillBot) -> AbstractAsyncContextManager[DiscordHarness]:
    """The test server: #general, an age-restricted channel, and #art, #gallery and #mod-log."""
    channels = [
        FakeChannel(GENERAL_CHANNEL_ID, "general", guild_id=GUILD_ID, position=0),
        FakeChannel(NSFW_CHANNEL_ID, "nsfw-art", guild_id=GUILD_ID, nsfw=True, position=1),
        FakeChannel(ART_ID, "art", guild_id=GUILD_ID, position=2),
        FakeChannel(GALLERY_ID, "gallery", guild_id=GUILD_ID, position=3),
        FakeChannel(LOG_ID, "mod-log", guild_id=GUILD_ID, position=4),
        FakeChannel(NSFW_GALLERY_ID, "nsfw-gallery", guild_id=GUILD_ID, nsfw=True, position=5),
    ]
    return running(bot, channels=channels, users=(MEMBER, MODERATOR, OWNER, OTHER))


# -------------------------------------------------------------------------------------------------- helpers
def fill(
    h: DiscordHarness, prompt: str = "a red vase", *, user: FakeUser = MEMBER, channel_id: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    return h.slash(
        "fill", {"prompt": prompt, **options},
        attachments={"image": ("photo.png", IMAGE, "image/png"), "mask": ("mask.png", MASK, "image/png")},
        user=user, channel_id=channel_id,
    )


async def finished(h: DiscordHarness, sent: Dispatched, timeout: float = 15.0) -> FakeMessage:  # noqa: ASYNC109
    """The job's public reply once it shows a final state (fails at once if the job was refused)."""

    def done() -> FakeMessage | None:
        message = h.original(sent)
        if message is None or message.ephemeral or message.deleted:
            refusal = h.ephemeral_text(sent)
            if refusal:
                raise AssertionError(f"the job was refused: {refusal}")
            return None
        title = str(message.embeds[0].get("title", "")) if message.embeds else ""
        return message if title.startswith(TERMINAL) else None

    return await h.wait_for(done, timeout, message="the job's reply shows a final state")


async def run_fill(h: DiscordHarness, prompt: str = "a red vase", **kwargs: Any) -> FakeMessage:
    return await finished(h, await h.dispatch(fill(h, prompt, **kwargs)))


async def refused(h: DiscordHarness, payload: dict[str, Any]) -> str:
    """Dispatch `payload`, expect only an ephemeral answer, return its text."""
    sent = await h.dispatch(payload)
    text = await h.wait_for(lambda: h.ephemeral_text(sent), message="an ephemeral answer")
    original = h.original(sent)
    assert original is None or original.ephemeral or original.deleted, "something was posted publicly"
    return text


async def settings_command(
    h: DiscordHarness, sub: str, options: dict[str, Any] | None = None, *, user: FakeUser = MODERATOR
) -> str:
    sent = await h.dispatch(h.slash("fill-settings", options or {}, subcommand=sub, user=user))
    return await h.wait_for(lambda: h.ephemeral_text(sent), message=f"/fill-settings {sub} answered")


async def configure(h: DiscordHarness, *, user: FakeUser = MODERATOR, **values: int | str) -> None:
    """`/fill-settings set` each key in turn, as a moderator; every change must be accepted."""
    for key, value in values.items():
        text = await settings_command(h, "set", {"setting": key, "value": str(value)}, user=user)
        assert text.startswith("Updated"), text


async def channel_safety(h: DiscordHarness, channel_id: int, level: int | None) -> None:
    options: dict[str, Any] = {"channel": channel_id}
    if level is not None:
        options["level"] = level
    text = await settings_command(h, "channel-safety", options)
    assert text.startswith("Updated"), text


async def block_term(h: DiscordHarness, term: str, action: str = "block") -> None:
    text = await settings_command(h, "block-term", {"term": term, "action": action})
    assert text.startswith("Updated"), text


def store(h: DiscordHarness) -> Storage:
    """The running bot's database (read to check what was recorded)."""
    assert isinstance(h.bot, FillBot)
    return h.bot.storage


def job_id(message: FakeMessage) -> str:
    return str(message.embeds[0]["footer"]["text"]).removeprefix("job ")


def result_files(message: FakeMessage) -> list[str]:
    return [a.filename for a in message.attachments if "fill-" in a.filename]


def log_lines(h: DiscordHarness) -> list[str]:
    return [m.content for m in h.fake.messages_in(LOG_ID)]


# ------------------------------------------------------------------------------- who may change settings
async def test_settings_commands_are_hidden_from_members_and_guild_only(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        await h.sync_commands()
        synced = {c["name"]: c for c in h.fake.commands[None]}
        settings = synced["fill-settings"]
        assert int(settings["default_member_permissions"]) == discord.Permissions(manage_guild=True).value
        assert settings["contexts"] == [0]  # guild only
        assert settings["dm_permission"] is False
        # Subcommands cannot loosen the group's permissions (Discord only reads them on the top level).
        assert all("default_member_permissions" not in o for o in settings["options"])
        assert synced["fill"]["default_member_permissions"] is None  # members keep /fill
        assert synced["fill-history"]["default_member_permissions"] is None


async def test_member_who_sends_settings_commands_anyway_is_refused_and_nothing_changes(
    make_bot: Callable[..., FillBot],
) -> None:
    async with serve(make_bot()) as h:
        storage = store(h)
        before = await storage.guild_settings(GUILD_ID)
        attempts: list[tuple[str, dict[str, Any]]] = [
            ("set", {"setting": "safety", "value": "6"}),
            ("set", {"setting": "max_outputs", "value": "1"}),
            ("channel-safety", {"channel": GENERAL_CHANNEL_ID, "level": 0}),
            ("block-term", {"term": "dragon"}),
            ("show", {}),
            ("blocked-terms", {}),
            ("audit", {}),
        ]
        for sub, options in attempts:
            text = await refused(h, h.slash("fill-settings", options, subcommand=sub, user=MEMBER))
            assert "Manage Server" in text, (sub, text)
        # Outside a server nobody may change a server's settings, moderator or not.
        dm = await refused(h, h.slash("fill-settings", {"setting": "safety", "value": "6"}, subcommand="set",
                                      user=MODERATOR, dm=True))
        assert "inside a server" in dm
        assert await storage.guild_settings(GUILD_ID) == before
        assert await storage.blocked_terms(GUILD_ID) == ()
        assert await storage.channel_overrides(GUILD_ID) == {}
        assert await storage.audit_log(GUILD_ID) == []
        assert not h.errors


# ------------------------------------------------------------------------------------ safety → providers
async def test_safety_levels_reach_bfl_per_channel(make_bot: Callable[..., FillBot], fake_bfl: FakeBFL) -> None:
    def tolerances() -> list[int]:
        return [r.body["safety_tolerance"] for r in fake_bfl.requests_to("api") if r.method == "POST"]

    async with serve(make_bot(**env(bfl=fake_bfl))) as h:
        expected: list[int] = []

        async def both(general: int, nsfw: int) -> None:
            for channel in (GENERAL_CHANNEL_ID, NSFW_CHANNEL_ID):
                message = await run_fill(h, channel_id=channel)
                assert message.embeds[0]["title"].startswith("✅"), message.text
            expected.extend((general, nsfw))
            assert tolerances() == expected

        await both(2, 4)  # defaults: safety 2, nsfw_safety 4
        await configure(h, safety=1, nsfw_safety=5)
        await both(1, 5)
        await channel_safety(h, GENERAL_CHANNEL_ID, 0)  # a channel may be stricter…
        await both(0, 5)
        await channel_safety(h, GENERAL_CHANNEL_ID, 6)  # …but never looser than `safety` outside NSFW channels
        await channel_safety(h, NSFW_CHANNEL_ID, 3)
        await both(1, 3)
        await channel_safety(h, GENERAL_CHANNEL_ID, None)
        await channel_safety(h, NSFW_CHANNEL_ID, None)
        await both(1, 5)
        await configure(h, safety=4, nsfw_safety=6)  # the loosest levels only where the channel is age-restricted
        await channel_safety(h, GENERAL_CHANNEL_ID, 6)
        await both(4, 6)
        await channel_safety(h, GENERAL_CHANNEL_ID, None)
        await configure(h, safety=1, nsfw_safety=5)
        # A stricter NSFW level than the normal one is refused, naming both keys; nothing changes.
        text = await settings_command(h, "set", {"setting": "nsfw_safety", "value": "0"})
        assert "nsfw_safety" in text and "safety" in text and not text.startswith("Updated")
        assert (await store(h).guild_settings(GUILD_ID)).nsfw_safety == 5


async def test_replicate_safety_checker_is_off_only_in_nsfw_channel_at_level_6(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.duration = 0.05

    def checker_off() -> list[bool]:
        return [bool(p.input.get("disable_safety_checker")) for p in fake_replicate.predictions.values()]

    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        expected: list[bool] = []

        async def both(general: bool, nsfw: bool) -> None:
            for channel in (GENERAL_CHANNEL_ID, NSFW_CHANNEL_ID):
                message = await run_fill(h, channel_id=channel)
                assert message.embeds[0]["title"].startswith("✅"), message.text
            expected.extend((general, nsfw))
            assert checker_off() == expected

        await both(False, False)  # nsfw_safety 4
        await configure(h, nsfw_safety=6)
        await both(False, True)
        text = await settings_command(h, "set", {"setting": "safety", "value": "6"})  # NSFW channels only
        assert "`safety` = 6" in text and "from 0 to 4" in text and not text.startswith("Updated"), text
        await both(False, True)
        await configure(h, nsfw_safety=5)
        await both(False, False)
        await channel_safety(h, NSFW_CHANNEL_ID, 6)
        await channel_safety(h, GENERAL_CHANNEL_ID, 6)
        await both(False, True)


async def test_flagged_outputs_are_withheld_unless_spoilered_in_nsfw_channels(
    make_bot: Callable[..., FillBot], fake_wavespeed: FakeWaveSpeed
) -> None:
    fake_wavespeed.nsfw = [True]
    async with serve(make_bot(**env(wavespeed=fake_wavespeed))) as h:
        withheld = await run_fill(h, channel_id=NSFW_CHANNEL_ID)  # default: withhold
        assert withheld.embeds[0]["title"].startswith("🛡️")
        assert withheld.attachments == [] or not result_files(withheld)

        await configure(h, flagged_outputs="spoiler")
        shown = await run_fill(h, channel_id=NSFW_CHANNEL_ID)
        assert shown.embeds[0]["title"].startswith("✅")
        files = result_files(shown)
        assert len(files) == 1 and files[0].startswith("SPOILER_")

        general = await run_fill(h)  # spoilers are for age-restricted channels only
        assert general.embeds[0]["title"].startswith("🛡️")
        assert not result_files(general)

        fake_wavespeed.nsfw = [False, True]  # one of two flagged: the other is delivered, with a notice
        mixed = await run_fill(h, outputs=2)
        files = result_files(mixed)
        assert len(files) == 1 and not files[0].startswith("SPOILER_")
        assert "1 image(s) flagged by the provider were withheld" in mixed.text
        assert not h.errors


async def test_replicate_nsfw_drops_are_reported_as_withheld(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.duration = 0.05
    fake_replicate.nsfw_drops = 1
    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        message = await run_fill(h, outputs=2)
        assert message.embeds[0]["title"].startswith("✅")
        assert len(result_files(message)) == 1
        assert "1 image(s) were withheld by the provider's safety checker" in message.text


# ----------------------------------------------------------------------------- providers and job limits
async def test_allowed_providers_and_default_provider(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate, fake_bfl: FakeBFL
) -> None:
    fake_replicate.duration = 0.05

    def bfl_submits() -> int:
        return sum(1 for r in fake_bfl.requests_to("api") if r.method == "POST")

    async with serve(make_bot(**env(replicate=fake_replicate, bfl=fake_bfl))) as h:
        await run_fill(h)  # nothing set: the bot's default (the first configured provider)
        assert (fake_replicate.count("POST", "create"), bfl_submits()) == (1, 0)

        await configure(h, allowed_providers="bfl, local")
        text = await refused(h, fill(h, provider="replicate"))
        assert "`replicate` is not available" in text and "use one of: bfl, local" in text
        assert fake_replicate.count("POST", "create") == 1
        choices = h.autocomplete("fill", {"provider": ""}, "provider")
        sent = await h.dispatch(choices)
        offered = [c["value"] for c in h.responses(sent)[0].choices]
        assert offered == ["bfl", "local"]

        await run_fill(h)  # the bot's default is not allowed here: the first allowed provider
        assert (fake_replicate.count("POST", "create"), bfl_submits()) == (1, 1)

        await configure(h, default_provider="local")
        local = await run_fill(h)
        assert (fake_replicate.count("POST", "create"), bfl_submits()) == (1, 1)
        record = await store(h).get_job(job_id(local))
        assert record is not None and record.provider == "local"

        text = await settings_command(h, "set", {"setting": "default_provider", "value": "replicate"})
        assert "allowed_providers" in text and not text.startswith("Updated")
        assert (await store(h).guild_settings(GUILD_ID)).default_provider == "local"


async def test_max_outputs(make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate) -> None:
    fake_replicate.duration = 0.05
    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        await configure(h, max_outputs=2)
        text = await refused(h, fill(h, outputs=3))
        assert "at most 2" in text
        assert fake_replicate.count("POST", "create") == 0
        message = await run_fill(h, outputs=2)
        assert len(result_files(message)) == 2
        assert [p.input["num_outputs"] for p in fake_replicate.predictions.values()] == [2]


async def test_cooldown_refuses_with_relative_time(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        await configure(h, cooldown_seconds=600)
        first = await run_fill(h)
        text = await refused(h, fill(h))
        assert "cooldown" in text
        match = RELATIVE_TIME.search(text)
        assert match is not None, text
        record = await store(h).get_job(job_id(first))
        assert record is not None and abs(int(match[1]) - (record.created_at + 600)) <= 1
        assert len(await store(h).recent_jobs(MEMBER.id)) == 1
        await run_fill(h, user=OTHER)  # the cooldown is per person


async def test_guild_daily_quota(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        await configure(h, daily_quota_per_guild=2)
        await run_fill(h, user=MEMBER)
        await run_fill(h, user=OTHER)
        text = await refused(h, fill(h, user=MODERATOR))
        assert "This server has used its 2 jobs" in text and RELATIVE_TIME.search(text), text


@pytest.mark.parametrize(
    ("limits", "refusal"),
    [
        ({"max_concurrent_per_user": 3}, "running; this server allows 3 at a time"),
        ({"max_concurrent_per_user": 20, "daily_quota_per_user": 3}, "You have used your 3 jobs"),
    ],
    ids=["concurrency", "daily-quota"],
)
@both_backends
async def test_limits_hold_under_a_burst_of_50(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate, limits: dict[str, int], refusal: str
) -> None:
    fake_replicate.duration = 30.0  # still running when the burst is over
    fake_replicate.honour_wait = False
    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        for key, value in limits.items():
            text = await settings_command(h, "set", {"setting": key, "value": str(value)})
            assert text.startswith("Updated"), text
        payloads = [fill(h, f"burst {i}") for i in range(50)]
        sent = await asyncio.gather(*(h.dispatch(p, timeout=20) for p in payloads))
        await h.wait_for(lambda: fake_replicate.count("POST", "create") >= 3, timeout=10)
        await h.wait_for(lambda: all(h.original(s) is not None for s in sent), timeout=10)

        # Refused jobs: the public "thinking" reply is gone and the reason went only to the member.
        accepted = [s for s in sent if not h.original(s).deleted]  # type: ignore[union-attr]
        refusals = [h.ephemeral_text(s) for s in sent if h.original(s).deleted]  # type: ignore[union-attr]
        assert len(accepted) == 3
        assert len(refusals) == 47 and all(refusal in t for t in refusals), set(refusals)
        if "daily_quota_per_user" in limits:
            assert all(RELATIVE_TIME.search(t) for t in refusals)
        # Every interaction was answered in time, exactly once.
        for s in sent:
            assert h.fake.interaction(s.token).acked_type is not None
        callbacks = h.fake.requests_to("POST", "*/interactions/*/callback")
        assert len(callbacks) >= 50 and all(r.ok for r in callbacks), [r.response for r in callbacks if not r.ok]
        assert len(await store(h).recent_jobs(MEMBER.id, limit=100)) == 3
        await asyncio.sleep(0.2)
        assert fake_replicate.count("POST", "create") == 3
        assert not h.errors


# ------------------------------------------------------------------------------------- channels and log
async def test_channel_list_mode(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        text = await settings_command(h, "set", {"setting": "channel_mode", "value": "list"})
        assert "channels" in text and not text.startswith("Updated")  # would work nowhere
        await configure(h, channels=f"<#{ART_ID}>", channel_mode="list")
        text = await refused(h, fill(h))
        assert "not enabled in this channel" in text and f"<#{ART_ID}>" in text
        text = await refused(h, fill(h, channel_id=NSFW_CHANNEL_ID))
        assert f"<#{ART_ID}>" in text
        assert await store(h).recent_jobs(MEMBER.id) == []
        message = await run_fill(h, channel_id=ART_ID)
        assert message.embeds[0]["title"].startswith("✅")


async def test_share_posts_to_the_gallery_channel(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        message = await run_fill(h)
        share = f"fill:share:{job_id(message)}"
        text = await refused(h, h.component(share, message.id, user=MEMBER))
        assert "no gallery channel" in text
        assert h.fake.messages_in(GALLERY_ID) == []

        await configure(h, gallery_channel_id=f"<#{GALLERY_ID}>")
        text = await refused(h, h.component(share, message.id, user=OTHER))  # only the requester shares
        assert "only the person who started this job" in text
        sent = await h.dispatch(h.component(share, message.id, user=MEMBER))
        posted = await h.wait_for(lambda: h.fake.messages_in(GALLERY_ID), message="gallery post")
        assert len(posted) == 1
        results = [a.data for a in message.attachments if a.filename != "before.jpg"]
        assert any(a.filename == "before.jpg" for a in message.attachments)  # the reply shows before and after
        assert [a.data for a in posted[0].attachments] == results  # the gallery gets the results only
        assert f"<@{MEMBER.id}>" in posted[0].text
        assert "Shared to the gallery" in await h.wait_for(lambda: h.ephemeral_text(sent))
        assert not h.errors


async def test_share_keeps_age_restricted_and_flagged_results_out_of_a_normal_gallery(
    make_bot: Callable[..., FillBot], fake_wavespeed: FakeWaveSpeed
) -> None:
    fake_wavespeed.nsfw = [True]
    async with serve(make_bot(**env(wavespeed=fake_wavespeed))) as h:
        await configure(h, flagged_outputs="spoiler", gallery_channel_id=f"<#{GALLERY_ID}>")
        nsfw = await run_fill(h, channel_id=NSFW_CHANNEL_ID, provider="local")
        flagged = await run_fill(h, channel_id=NSFW_CHANNEL_ID, provider="wavespeed")
        assert result_files(flagged)[0].startswith("SPOILER_")
        for message, why in ((nsfw, "made in an age-restricted channel"), (flagged, "age-restricted channel")):
            text = await refused(h, h.component(f"fill:share:{job_id(message)}", message.id, user=MEMBER))
            assert why in text and "Nothing was shared" in text, text
        assert h.fake.messages_in(GALLERY_ID) == []

        # An ordinary result still goes to the ordinary gallery, and both others to an age-restricted one.
        general = await run_fill(h, provider="local")
        await h.dispatch(h.component(f"fill:share:{job_id(general)}", general.id, user=MEMBER))
        await h.wait_for(lambda: h.fake.messages_in(GALLERY_ID), message="the ordinary gallery post")
        await configure(h, gallery_channel_id=f"<#{NSFW_GALLERY_ID}>")
        for message in (nsfw, flagged):
            await h.dispatch(h.component(f"fill:share:{job_id(message)}", message.id, user=MEMBER))
        posted = await h.wait_for(lambda: len(h.fake.messages_in(NSFW_GALLERY_ID)) == 2 and
                                  h.fake.messages_in(NSFW_GALLERY_ID), message="both age-restricted gallery posts")
        assert posted[1].attachments[0].filename.startswith("SPOILER_")  # the spoiler stays on
        assert len(h.fake.messages_in(GALLERY_ID)) == 1
        assert not h.errors


async def test_log_channel_gets_settings_changes_and_moderator_deletions(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        await configure(h, log_channel_id=f"<#{LOG_ID}>")
        await configure(h, safety=3)
        await block_term(h, "dragon")
        lines = log_lines(h)
        assert any(f"<@{MODERATOR.id}>" in line and "safety: 2 → 3" in line for line in lines), lines
        assert any("dragon" in line for line in lines), lines

        # A moderator deletes a member's result: done, and told to the log channel.
        first = await run_fill(h)
        await h.dispatch(h.component(f"fill:delete:{job_id(first)}", first.id, user=MODERATOR))
        await h.wait_for(lambda: h.fake.message(first.id).deleted, message="the moderator's delete")
        deletion = await h.wait_for(lambda: [line for line in log_lines(h) if "deleted result" in line],
                                    message="the deletion is logged")
        assert len(deletion) == 1
        assert job_id(first) in deletion[0] and f"<@{MEMBER.id}>" in deletion[0] and f"<@{MODERATOR.id}>" in deletion[0]
        assert any(e.key == "deleted result" for e in await store(h).audit_log(GUILD_ID))

        # Another member may not delete it; its owner may (and that is no moderation event).
        second = await run_fill(h)
        text = await refused(h, h.component(f"fill:delete:{job_id(second)}", second.id, user=OTHER))
        assert "only the person who started this job or a moderator" in text
        assert not h.fake.message(second.id).deleted
        logged = len(log_lines(h))
        await h.dispatch(h.component(f"fill:delete:{job_id(second)}", second.id, user=MEMBER))  # waits for it
        await h.wait_for(lambda: h.fake.message(second.id).deleted, message="the owner's delete")
        assert len(log_lines(h)) == logged
        assert not h.errors


# ------------------------------------------------------------------------------------------ blocked terms
async def test_blocked_term_refuses_before_anything_reaches_the_provider(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.duration = 0.05
    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        await block_term(h, "dragon")
        # upper case, fullwidth letters, a Cyrillic а, s.p.a.c.e.d letters, a plural and a compound
        for prompt in ("a red DRAGON", "a red ｄｒａｇｏｎ", "a red drаgon", "a red d.r.a.g.o.n", "two dragons",
                       "a dragonfly"):
            text = await refused(h, fill(h, prompt))
            assert "“dragon”" in text, (prompt, text)
        assert fake_replicate.count("POST", "create") == 0
        assert await store(h).recent_jobs(MEMBER.id) == []

        await block_term(h, "ass")
        await run_fill(h, "a class photo of a snapdragon")  # terms match at the start of words only
        assert [p.input["prompt"] for p in fake_replicate.predictions.values()] == ["a class photo of a snapdragon"]


async def test_strip_term_is_removed_from_the_prompt_and_told_privately(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.duration = 0.05
    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        await block_term(h, "watermark", action="strip")
        sent = await h.dispatch(fill(h, "a red Wаtermark vase"))  # Cyrillic а
        message = await finished(h, sent)
        assert [p.input["prompt"] for p in fake_replicate.predictions.values()] == ["a red vase"]
        assert "removed “watermark”" in await h.wait_for(lambda: h.ephemeral_text(sent), message="private notice")
        public = h.original(sent)
        assert public is not None and not public.ephemeral
        assert "atermark" not in public.text.replace("а", "a") and "removed" not in public.text
        assert message.embeds[0]["title"].startswith("✅")


# ------------------------------------------------------------------------------------------------- audit
@both_backends
async def test_audit_log_records_who_changed_what(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        await configure(h, safety=3)
        await configure(h, user=OWNER, max_outputs=2)
        await block_term(h, "dragon", action="strip")
        await channel_safety(h, NSFW_CHANNEL_ID, 6)
        entries = await store(h).audit_log(GUILD_ID)
        described = {(e.actor_id, e.describe()) for e in entries}
        assert (MODERATOR.id, "safety: 2 → 3") in described
        assert (OWNER.id, "max_outputs: 4 → 2") in described
        assert any(actor == MODERATOR.id and "dragon" in text for actor, text in described)
        assert len(entries) == 4

        text = await settings_command(h, "audit")
        assert f"<@{MODERATOR.id}> safety: 2 → 3" in text
        assert f"<@{OWNER.id}> max_outputs: 4 → 2" in text
        assert "dragon" in text and RELATIVE_TIME.search(text)


# ------------------------------------------------------------------------------------------------ history
@both_backends
async def test_history_show_and_erase(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        jobs = [job_id(await run_fill(h, "first")), job_id(await run_fill(h, "second"))]
        sent = await h.dispatch(h.slash("fill-history", {}, subcommand="show", user=MEMBER))
        assert h.responses(sent)[0].ephemeral
        text = h.ephemeral_text(sent)
        assert all(j in text for j in jobs) and "succeeded" in text and "second" in text
        assert "no stored jobs" in await refused(h, h.slash("fill-history", {}, subcommand="show", user=OTHER))

        text = await refused(h, h.slash("fill-history", {}, subcommand="erase", user=MEMBER))
        assert "Nothing was erased" in text
        assert len(await store(h).recent_jobs(MEMBER.id)) == 2
        text = await refused(h, h.slash("fill-history", {"confirm": True}, subcommand="erase", user=MEMBER))
        assert "Erased 2" in text
        assert await store(h).recent_jobs(MEMBER.id) == []
        text = await refused(h, h.slash("fill-history", {}, subcommand="show", user=MEMBER))
        assert "no stored jobs" in text


# ------------------------------------------------------------------------------------------------ restarts
@both_backends
async def test_job_running_at_restart_is_delivered_once(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.duration = 1.5
    fake_replicate.honour_wait = False  # the create answers at once, so the job has a provider handle
    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        sent = await h.dispatch(fill(h, "survive a restart"))

        async def submitted() -> bool:
            jobs = await store(h).recent_jobs(MEMBER.id)
            return bool(jobs) and jobs[0].handle is not None

        await h.wait_for(submitted, timeout=10, message="the job reached the provider")
        await h.restart(make_bot(**env(replicate=fake_replicate)))

        message = await finished(h, sent, timeout=20)
        assert message.embeds[0]["title"].startswith("✅"), message.text
        assert len(result_files(message)) == 1
        deliveries = [r for r in h.fake.requests if any("fill-" in f.filename for f in r.files)]
        assert len(deliveries) == 1 and deliveries[0].ok
        assert [m.id for m in h.fake.messages_in(GENERAL_CHANNEL_ID)] == [message.id]  # no second message
        assert fake_replicate.count("POST", "create") == 1  # resumed, not submitted again
        record = await store(h).get_job(job_id(message))
        assert record is not None and record.status == "succeeded"
        await asyncio.sleep(0.3)
        assert len([r for r in h.fake.requests if any("fill-" in f.filename for f in r.files)]) == 1
        assert not h.errors


async def test_job_submitting_at_restart_ends_with_rerun_message(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.faults.create.append(Fault.slow(30))  # the create request is in flight until the bot stops
    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        sent = await h.dispatch(fill(h, "lost in submission"))

        async def submitting() -> bool:
            jobs = await store(h).recent_jobs(MEMBER.id)
            return bool(jobs) and jobs[0].status == "submitting" and fake_replicate.count("POST", "create") == 1

        await h.wait_for(submitting, timeout=10, message="the create request is in flight")
        assert (await store(h).recent_jobs(MEMBER.id))[0].handle is None
        await h.restart(make_bot(**env(replicate=fake_replicate)))

        message = await finished(h, sent)
        assert message.embeds[0]["title"].startswith("❌")
        assert "restarted while this job was being sent" in message.text
        assert "you may be charged once" in message.text and "Press Rerun" in message.text
        assert any(i.startswith("fill:rerun:") for i in message.custom_ids())
        assert fake_replicate.count("POST", "create") == 1  # not sent again: it may exist and bill
        record = await store(h).get_job(job_id(message))
        assert record is not None and record.status == "failed"


@both_backends
async def test_settings_and_blocked_terms_survive_a_restart(
    make_bot: Callable[..., FillBot], fake_bfl: FakeBFL
) -> None:
    async with serve(make_bot(**env(bfl=fake_bfl))) as h:
        await configure(h, safety=1, nsfw_safety=5, max_outputs=1, log_channel_id=f"<#{LOG_ID}>")
        await block_term(h, "dragon")
        await channel_safety(h, NSFW_CHANNEL_ID, 3)
        await h.restart(make_bot(**env(bfl=fake_bfl)))

        shown = await settings_command(h, "show")
        for line in ("safety = 1", "nsfw_safety = 5", "max_outputs = 1", f"log_channel_id = <#{LOG_ID}>"):
            assert line in shown, shown
        assert "dragon" in await settings_command(h, "blocked-terms")
        assert "“dragon”" in await refused(h, fill(h, "a dragon"))
        await run_fill(h)
        await run_fill(h, channel_id=NSFW_CHANNEL_ID)
        assert [r.body["safety_tolerance"] for r in fake_bfl.requests_to("api") if r.method == "POST"] == [1, 3]
        assert len(await store(h).audit_log(GUILD_ID)) == 6


async def test_settings_show_says_an_empty_allowed_providers_means_all(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot()) as h:
        sent = await h.dispatch(h.slash("fill-settings", {}, subcommand="show", user=MODERATOR))
        await h.wait_for(lambda: h.responses(sent), message="/fill-settings show answered")
        names = [f["name"] for f in h.responses(sent)[0].embeds[0]["fields"]]
        assert "allowed_providers = all configured providers" in names, names
        assert "channels = none" in names, names  # an empty channel list still means none
        await configure(h, allowed_providers="local")
        sent = await h.dispatch(h.slash("fill-settings", {}, subcommand="show", user=MODERATOR))
        await h.wait_for(lambda: h.responses(sent), message="/fill-settings show answered")
        assert "allowed_providers = local" in [f["name"] for f in h.responses(sent)[0].embeds[0]["fields"]]
