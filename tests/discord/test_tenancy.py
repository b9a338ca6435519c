"""One server cannot make the bot post into another, and blocked prompts reach the server's own log channel.

The bot is in two servers of the fake Discord API: the test server and a hostile one. A moderator of either can
only name channels of their own server, and channel ids stored before that check (or written straight into the
database here) are refused again before every post.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from bot.app import FillBot
from tests.discord.conftest import running
from tests.discord.test_moderation_flow import (
    ART_ID,
    GALLERY_ID,
    LOG_ID,
    OTHER,
    block_term,
    configure,
    fill,
    job_id,
    refused,
    run_fill,
    settings_command,
    store,
)
from tests.fakes.discord_api import FakeChannel
from tests.fakes.discord_harness import (
    GENERAL_CHANNEL_ID,
    GUILD_ID,
    MEMBER,
    MODERATOR,
    NSFW_CHANNEL_ID,
    OWNER,
    DiscordHarness,
)

OTHER_GUILD_ID = 1_300_000_000_000_000_000
OTHER_GENERAL_ID = 1_300_000_000_000_000_001
OTHER_LOG_ID = 1_300_000_000_000_000_002
CATEGORY_ID = 1_200_000_000_000_000_009  # a category of the test server: not a channel one can post in
UNKNOWN_ID = 1_400_000_000_000_000_000  # a channel no server of the bot has (deleted, or made up)


@asynccontextmanager
async def two_servers(bot: FillBot) -> AsyncIterator[DiscordHarness]:
    """The test server of test_moderation_flow (plus a category) and a second server with its own channels."""
    channels = [
        FakeChannel(GENERAL_CHANNEL_ID, "general", guild_id=GUILD_ID, position=0),
        FakeChannel(NSFW_CHANNEL_ID, "nsfw-art", guild_id=GUILD_ID, nsfw=True, position=1),
        FakeChannel(ART_ID, "art", guild_id=GUILD_ID, position=2),
        FakeChannel(GALLERY_ID, "gallery", guild_id=GUILD_ID, position=3),
        FakeChannel(LOG_ID, "mod-log", guild_id=GUILD_ID, position=4),
        FakeChannel(CATEGORY_ID, "Text Channels", type=4, guild_id=GUILD_ID, position=5),
    ]
    async with running(bot, channels=channels, users=(MEMBER, MODERATOR, OWNER, OTHER)) as h:
        h.add_guild(OTHER_GUILD_ID, "Other server", [
            FakeChannel(OTHER_GENERAL_ID, "general", guild_id=OTHER_GUILD_ID, position=0),
            FakeChannel(OTHER_LOG_ID, "mod-log", guild_id=OTHER_GUILD_ID, position=1),
        ])
        yield h


def posts_to(h: DiscordHarness, *channel_ids: int) -> list[str]:
    """Every message request the bot sent to these channels (accepted or not)."""
    return [r.path for c in channel_ids for r in h.fake.requests_to("POST", f"*/channels/{c}/messages")]


async def test_a_moderator_can_only_pick_channels_of_their_own_server(make_bot: Callable[..., FillBot]) -> None:
    async with two_servers(make_bot()) as h:
        for key in ("gallery_channel_id", "log_channel_id"):
            for foreign in (OTHER_GENERAL_ID, OTHER_LOG_ID, UNKNOWN_ID, CATEGORY_ID):
                text = await settings_command(h, "set", {"setting": key, "value": f"<#{foreign}>"})
                assert "not a text channel of this server" in text and not text.startswith("Updated"), text
        settings = await store(h).guild_settings(GUILD_ID)
        assert (settings.gallery_channel_id, settings.log_channel_id) == (None, None)
        assert await store(h).audit_log(GUILD_ID) == []

        # Each server's moderators name their own channels, and settings stay per server.
        await configure(h, gallery_channel_id=f"<#{GALLERY_ID}>", log_channel_id=str(LOG_ID))
        sent = await h.dispatch(h.slash("fill-settings", {"setting": "log_channel_id", "value": f"<#{OTHER_LOG_ID}>"},
                                        subcommand="set", user=MODERATOR, channel_id=OTHER_GENERAL_ID))
        assert (await h.wait_for(lambda: h.ephemeral_text(sent))).startswith("Updated")
        assert (await store(h).guild_settings(OTHER_GUILD_ID)).log_channel_id == OTHER_LOG_ID
        assert (await store(h).guild_settings(GUILD_ID)).log_channel_id == LOG_ID
        text = await settings_command(h, "set", {"setting": "log_channel_id", "value": f"<#{OTHER_LOG_ID}>"})
        assert "not a text channel of this server" in text
        # The other server's own change was announced in its own log channel, and nothing of ours went there.
        other_log = [m.content for m in h.fake.messages_in(OTHER_LOG_ID)]
        assert len(other_log) == 1 and f"log_channel_id: not set → {OTHER_LOG_ID}" in other_log[0]
        assert posts_to(h, OTHER_GENERAL_ID) == []
        assert not h.errors


async def test_share_and_notices_refuse_a_foreign_channel_stored_in_the_database(
    make_bot: Callable[..., FillBot], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.app")

    def notices_dropped() -> int:
        return sum("notice not posted" in r.getMessage() for r in caplog.records)

    async with two_servers(make_bot()) as h:
        await block_term(h, "dragon")
        message = await run_fill(h)
        for gallery, log_channel in ((OTHER_GENERAL_ID, OTHER_LOG_ID), (UNKNOWN_ID, CATEGORY_ID)):
            # Rows written before the check existed: straight into storage, as a stale database would hold them.
            await store(h).update_guild_settings(GUILD_ID, MODERATOR.id, {"gallery_channel_id": gallery,
                                                                          "log_channel_id": log_channel})
            text = await refused(h, h.component(f"fill:share:{job_id(message)}", message.id, user=MEMBER))
            assert "not one of its text channels" in text and "nothing was shared" in text, text
            assert "“dragon”" in await refused(h, fill(h, "a red dragon"))  # a notice would follow a refusal
            await configure(h, safety=3 if log_channel == OTHER_LOG_ID else 2)  # and one follows every change
            shown = await settings_command(h, "show")
            assert shown.count("(not a text channel of this server: ignored)") == 2, shown
        # Each of the four notices (two blocked prompts, two changes) was refused, none posted anywhere.
        await h.wait_for(lambda: notices_dropped() == 4, message="every notice was checked and dropped")
        assert posts_to(h, OTHER_GENERAL_ID, OTHER_LOG_ID, UNKNOWN_ID, CATEGORY_ID) == []

        # The same steps with this server's own channels do post: the refusals above were the check at work.
        await configure(h, gallery_channel_id=f"<#{GALLERY_ID}>", log_channel_id=f"<#{LOG_ID}>")
        await h.dispatch(h.component(f"fill:share:{job_id(message)}", message.id, user=MEMBER))
        await h.wait_for(lambda: h.fake.messages_in(GALLERY_ID), message="the gallery post")
        assert posts_to(h, LOG_ID)
        assert not h.errors


async def test_a_blocked_prompt_is_reported_to_the_log_channel_without_the_prompt(
    make_bot: Callable[..., FillBot],
) -> None:
    async with two_servers(make_bot()) as h:
        await configure(h, log_channel_id=f"<#{LOG_ID}>")
        await block_term(h, "dragon")
        before = len(h.fake.messages_in(LOG_ID))
        prompt = "a red d.r.a.g.o.n eating <@1002> for breakfast"
        assert "“dragon”" in await refused(h, fill(h, prompt))

        notices = await h.wait_for(lambda: h.fake.messages_in(LOG_ID)[before:], message="the blocked-prompt notice")
        assert len(notices) == 1
        notice = notices[0].content
        assert f"<@{MEMBER.id}>" in notice and f"<#{GENERAL_CHANNEL_ID}>" in notice and "“dragon”" in notice
        assert "breakfast" not in notice and "d.r.a.g.o.n" not in notice
        request = h.fake.requests_to("POST", f"*/channels/{LOG_ID}/messages")[-1]
        assert request.json["allowed_mentions"]["parse"] == []  # names the member without pinging anyone

        await run_fill(h, "a red vase")  # an accepted prompt is not reported
        assert len(h.fake.messages_in(LOG_ID)) == before + 1
        assert not h.errors
