"""The operator's rules from `.env` hold in every server and in DMs, whatever a server's moderators choose.

A hostile server owner loosens every setting they can; a member works from DMs, where no server's rules apply.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.app import FillBot
from tests.discord.test_moderation_flow import (
    IMAGE,
    LOG_ID,
    MASK,
    block_term,
    configure,
    env,
    fill,
    finished,
    log_lines,
    refused,
    run_fill,
    serve,
    store,
)
from tests.fakes.discord_harness import MEMBER, DiscordHarness, FakeUser
from tests.fakes.replicate_server import FakeReplicate


def dm_fill(
    h: DiscordHarness, prompt: str = "a red vase", *, user: FakeUser = MEMBER, **options: Any
) -> dict[str, Any]:
    return h.slash(
        "fill", {"prompt": prompt, **options},
        attachments={"image": ("photo.png", IMAGE, "image/png"), "mask": ("mask.png", MASK, "image/png")},
        user=user, dm=True,
    )


def terms_file(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "blocked.txt"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return str(path)


async def test_dms_use_only_the_dm_providers_and_can_be_turned_off(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.duration = 0.05
    async with serve(make_bot(**env(replicate=fake_replicate))) as h:
        message = await finished(h, await h.dispatch(dm_fill(h)))  # the bot's default is replicate: not in DMs
        assert message.embeds[0]["title"].startswith("✅")
        text = await refused(h, dm_fill(h, provider="replicate"))
        assert "`replicate` is not available" in text and "local" in text, text
        assert fake_replicate.count("POST", "create") == 0
        assert [j.provider for j in await store(h).recent_jobs(MEMBER.id)] == ["local"]
        await run_fill(h)  # in a server, the paid default still works
        assert fake_replicate.count("POST", "create") == 1

    async with serve(make_bot(**env(replicate=fake_replicate), DM_PROVIDERS="replicate,local")) as h:
        await finished(h, await h.dispatch(dm_fill(h, provider="replicate")))
        assert fake_replicate.count("POST", "create") == 2

    async with serve(make_bot(DM_ENABLED="false")) as h:
        text = await refused(h, dm_fill(h))
        assert "does not take jobs in direct messages" in text, text
        assert await store(h).recent_jobs(MEMBER.id, limit=100) != []  # only the earlier jobs
        assert len(await store(h).recent_jobs(MEMBER.id, limit=100)) == 3
        assert not h.errors


async def test_operator_blocked_terms_apply_in_every_server_and_dm_before_the_servers_own(
    make_bot: Callable[..., FillBot], tmp_path: Path
) -> None:
    blocked = terms_file(tmp_path, "# the operator's list", "dragon", "strip: watermark")
    async with serve(make_bot(BLOCKED_TERMS_FILE=blocked)) as h:
        await configure(h, log_channel_id=f"<#{LOG_ID}>")
        for payload in (fill(h, "a red d r a g o n"), dm_fill(h, "dragons everywhere")):
            text = await refused(h, payload)
            assert "“dragon”, which this bot does not allow" in text, text
        assert await store(h).recent_jobs(MEMBER.id) == []
        assert not any("dragon" in line for line in log_lines(h))  # the operator's list is not the server's

        # The server's own terms still apply after the operator's; stripping by both is told privately.
        await block_term(h, "vase", "strip")
        sent = await h.dispatch(fill(h, "a watermark on a red vase, blue"))
        message = await finished(h, sent)
        assert message.embeds[0]["title"].startswith("✅")
        notes = await h.wait_for(lambda: h.ephemeral_text(sent), message="the private notices")
        assert "This bot removed “watermark”" in notes and "This server removed “vase”" in notes, notes
        prompt = (await store(h).recent_jobs(MEMBER.id))[0].prompt
        assert "watermark" not in prompt and "vase" not in prompt and "blue" in prompt, prompt
        sent = await h.dispatch(dm_fill(h, "a watermark, blue"))
        await finished(h, sent)
        assert "watermark" not in (await store(h).recent_jobs(MEMBER.id))[0].prompt
        assert not h.errors


async def test_a_hostile_server_cannot_lift_the_queue_cap(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.duration = 30.0  # the first job holds the only slot: later ones wait in the queue
    fake_replicate.honour_wait = False
    bot = make_bot(**env(replicate=fake_replicate), DM_PROVIDERS="replicate", REPLICATE_MAX_CONCURRENCY="1",
                   MAX_QUEUED_PER_MEMBER="1")
    async with serve(bot) as h:
        await configure(h, max_concurrent_per_user=20)  # the server allows as much as it can
        first = await h.dispatch(fill(h, "one"))
        await h.wait_for(lambda: fake_replicate.count("POST", "create") == 1, message="the first job runs")
        second = await h.dispatch(dm_fill(h, "two"))  # waits for the slot: the member's one waiting job
        await h.wait_for(lambda: h.original(second) is not None and h.original(second).embeds, message="queued")
        text = await refused(h, fill(h, "three"))
        assert "You already have 1 job waiting to start; the bot holds at most 1" in text, text
        assert len(await store(h).recent_jobs(MEMBER.id)) == 2
        assert h.original(first) is not None



async def test_the_member_quota_counts_every_server_and_dm_together(make_bot: Callable[..., FillBot]) -> None:
    async with serve(make_bot(MEMBER_DAILY_QUOTA="2")) as h:
        await run_fill(h, "one")  # no quota in this server
        await finished(h, await h.dispatch(dm_fill(h, "two")))
        for payload in (fill(h, "three"), dm_fill(h, "three")):
            text = await refused(h, payload)
            assert "You have used your 2 jobs for the last 24 hours" in text and "every server and DM" in text, text
        assert len(await store(h).recent_jobs(MEMBER.id)) == 2
        assert not h.errors


async def test_a_dm_runs_under_the_declared_default_limits(
    make_bot: Callable[..., FillBot], fake_replicate: FakeReplicate
) -> None:
    fake_replicate.duration = 30.0
    fake_replicate.honour_wait = False
    async with serve(make_bot(**env(replicate=fake_replicate), DM_PROVIDERS="replicate")) as h:
        for prompt in ("one", "two"):
            await h.dispatch(dm_fill(h, prompt))
        await h.wait_for(lambda: fake_replicate.count("POST", "create") == 2, message="two DM jobs run")
        text = await refused(h, dm_fill(h, "three"))  # GuildSettings' default: 2 at a time
        assert "You already have 2 jobs running; direct messages allow 2 at a time" in text, text
        text = await refused(h, dm_fill(h, "four", outputs=4 + 1))
        assert "at most 4" in text, text
