"""One fault per test, end to end through the real bot: provider errors, Discord errors, restarts.

Every job must end either delivered or with a clear failure embed; no reply may be left "thinking", and no
raw provider body (HTML, JSON, stack traces, URLs) may reach the user.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bot.app import FillBot, create_bot
from bot.providers.bfl import BFLProvider
from bot.providers.http import Downloader, RetryPolicy
from bot.providers.local import LocalProvider
from bot.service import MAX_OUTPUT_BYTES, FillService
from tests.discord.conftest import (
    decode,
    final_reply,
    is_final,
    job_id_of,
    mask_for,
    photo,
    running,
    settings_for,
)
from tests.fakes import common
from tests.fakes.bfl_server import FakeBFL
from tests.fakes.discord_api import FakeMessage
from tests.fakes.discord_harness import DiscordHarness, Dispatched
from tests.fakes.replicate_server import FakeReplicate, Fault

RAW_MARKERS = (
    "<html", "<!doctype", "cloudflare", "{", "traceback", "http://", "https://", "127.0.0.1", '"detail"',
    "problem+json",
)
MiB = 1024 * 1024


# ----------------------------------------------------------------------------------------------- helpers






def titles(h: DiscordHarness, message_id: int) -> list[str]:
    return [
        str(r.embeds[0].get("title"))
        for r in h.fake.requests
        if r.ok and r.message_id == message_id and r.method == "PATCH" and r.embeds
    ]


def assert_failed_clearly(message: FakeMessage, title: str, *phrases: str) -> None:
    """A final failure embed with the expected state and wording, and nothing raw from the provider."""
    assert is_final(message)
    embed = message.embeds[0]
    assert embed["title"] == title, message.text
    text = embed["description"]
    for phrase in phrases:
        assert phrase.lower() in text.lower(), (phrase, text)
    lowered = text.lower()
    assert not any(marker in lowered for marker in RAW_MARKERS), text
    assert len(text) < 400, text
    assert not message.attachments  # the mask preview is gone: nothing looks like a result
    ids = message.custom_ids()
    assert any(i.startswith("fill:rerun:") for i in ids) and not any(i.startswith("fill:cancel:") for i in ids)


def assert_delivered(message: FakeMessage, size: tuple[int, int] = (640, 480)) -> None:
    assert is_final(message)
    assert message.embeds[0]["title"].startswith("✅"), message.text
    assert [a.filename for a in message.attachments][1:] == ["before.jpg"]  # one result, then its "before"
    assert decode(message.attachments[0].data).size == size


def replicate_env(fake: FakeReplicate) -> dict[str, str]:
    return {"REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url}


def fill(h: DiscordHarness, provider: str = "replicate", prompt: str = "a vase") -> dict[str, object]:
    return h.slash("fill", {"prompt": prompt, "provider": provider}, attachments={
        "image": ("photo.png", photo(), "image/png"), "mask": ("mask.png", mask_for(), "image/png"),
    })


async def start_fill(h: DiscordHarness, provider: str = "replicate") -> Dispatched:
    return await h.dispatch(fill(h, provider))  # type: ignore[arg-type]


@pytest.fixture
async def polling_replicate() -> AsyncIterator[FakeReplicate]:
    """Replicate answering the create at once (no `Prefer: wait`), so the bot polls."""
    async with FakeReplicate(duration=0.3, honour_wait=False) as fake:
        yield fake


@pytest.fixture
async def fake_bfl() -> AsyncIterator[FakeBFL]:
    async with FakeBFL(duration=0.2) as fake:
        yield fake


BotWith = Callable[..., FillBot]


@pytest.fixture
async def bfl_bot_with_timeout(tmp_path: Path) -> AsyncIterator[BotWith]:
    """A bot whose BFL client has a short read timeout (the production default is 30 s)."""
    downloaders: list[Downloader] = []

    def build(fake: FakeBFL, read_timeout: float) -> FillBot:
        settings = settings_for(tmp_path, BFL_API_KEY=fake.key, BFL_BASE_URL=fake.base_url)
        downloader = Downloader(max_bytes=MAX_OUTPUT_BYTES, allow_private=True)
        downloaders.append(downloader)
        bfl = BFLProvider(
            settings.providers["bfl"], downloader, timeout=httpx.Timeout(read_timeout, connect=2.0),
            retry=RetryPolicy(base_delay=0.05),
        )
        service = FillService(settings, providers={"local": LocalProvider(), "bfl": bfl})
        return create_bot(settings, service=service, edit_interval=0.05)

    yield build
    for downloader in downloaders:
        await downloader.aclose()


# ------------------------------------------------------------------------------------ provider faults


async def test_500_on_create_says_the_job_may_have_been_submitted(make_bot, fake_replicate: FakeReplicate) -> None:
    fake_replicate.faults.create.append(Fault.error(500, detail="panic: nil pointer dereference at 0xdeadbeef"))
    async with running(make_bot(**replicate_env(fake_replicate))) as h:
        sent = await start_fill(h)
        message = await final_reply(h, sent)
        assert_failed_clearly(message, "❌ Failed", "may have been submitted", "HTTP 500", "paying twice")
        assert "panic" not in message.text and "0xdeadbeef" not in message.text
        assert fake_replicate.count("POST", "create") == 1  # a create POST is never retried after a 5xx
        assert not h.errors


async def test_500_on_poll_recovers_and_delivers(make_bot, polling_replicate: FakeReplicate) -> None:
    polling_replicate.faults.get.append(Fault.error(500))
    async with running(make_bot(**replicate_env(polling_replicate))) as h:
        message = await final_reply(h, await start_fill(h))
        assert_delivered(message)
        assert polling_replicate.count("GET", "get") >= 2
        assert polling_replicate.count("POST", "create") == 1
        assert not h.errors


@pytest.mark.parametrize("retry_after", ["1", None], ids=["retry-after", "no-hint"])
async def test_429_on_create_is_retried_and_delivered(
    make_bot, fake_replicate: FakeReplicate, retry_after: str | None
) -> None:
    fake_replicate.faults.create.append(Fault.rate_limited(retry_after=retry_after))
    async with running(make_bot(**replicate_env(fake_replicate))) as h:
        began = time.monotonic()
        message = await final_reply(h, await start_fill(h))
        took = time.monotonic() - began
        assert_delivered(message)
        creates = [r for r in fake_replicate.api_requests("create")]
        assert len(creates) == 2  # the 429 created nothing, so retrying it is safe
        assert len(fake_replicate.predictions) == 1
        if retry_after is not None:
            assert took >= 1.0, took  # Retry-After: 1 was honoured
        assert not h.errors


@pytest.mark.parametrize(
    ("fault", "phrase"),
    [
        (Fault.reset(), "dropped the connection"),
        (Fault.html(502), "HTTP 502"),
        (Fault.truncated(), "unreadable reply"),
    ],
    ids=["reset", "html", "truncated"],
)
async def test_broken_create_reply_fails_clearly_without_resubmitting(
    make_bot, fake_replicate: FakeReplicate, fault: Fault, phrase: str
) -> None:
    fake_replicate.faults.create.append(fault)
    async with running(make_bot(**replicate_env(fake_replicate))) as h:
        message = await final_reply(h, await start_fill(h))
        assert_failed_clearly(message, "❌ Failed", phrase, "may have been submitted")
        assert fake_replicate.count("POST", "create") == 1
        assert len(fake_replicate.predictions) == 1  # it exists at the provider; we said so, and did not resend
        assert not h.errors


@pytest.mark.parametrize("fault", [Fault.reset(), Fault.html(502), Fault.truncated(), Fault.cut()],
                         ids=["reset", "html", "truncated", "cut"])
async def test_broken_poll_reply_is_waited_out(make_bot, polling_replicate: FakeReplicate, fault: Fault) -> None:
    polling_replicate.faults.get.append(fault)
    async with running(make_bot(**replicate_env(polling_replicate))) as h:
        message = await final_reply(h, await start_fill(h))
        assert_delivered(message)
        assert polling_replicate.count("POST", "create") == 1
        assert not h.errors


async def test_read_timeout_on_submit_says_the_job_may_have_been_submitted(bfl_bot_with_timeout, fake_bfl) -> None:
    fake_bfl.faults.submit.append(common.Fault.slow(1.5))
    async with running(bfl_bot_with_timeout(fake_bfl, 0.3)) as h:
        message = await final_reply(h, await start_fill(h, "bfl"))
        assert_failed_clearly(message, "❌ Failed", "did not answer in time", "may have been submitted")
        assert len(fake_bfl.requests_to("api")) == 1
        assert not h.errors


async def test_read_timeout_on_poll_is_retried(bfl_bot_with_timeout, fake_bfl) -> None:
    fake_bfl.faults.poll.append(common.Fault.slow(1.5))
    async with running(bfl_bot_with_timeout(fake_bfl, 0.3)) as h:
        message = await final_reply(h, await start_fill(h, "bfl"))
        assert_delivered(message)
        assert len(fake_bfl.requests_to("poll")) >= 2
        assert not h.errors


async def test_model_failure_is_reported_without_its_links(make_bot, fake_replicate: FakeReplicate) -> None:
    fake_replicate.outcome = "failed"
    async with running(make_bot(**replicate_env(fake_replicate))) as h:
        message = await final_reply(h, await start_fill(h))
        assert_failed_clearly(message, "❌ Failed", "The model failed", "CUDA out of memory")
        assert "pytorch.org" not in message.text
        assert not h.errors


async def test_input_moderated_by_bfl(make_bot, fake_bfl: FakeBFL) -> None:
    fake_bfl.outcome = "request_moderated"
    async with running(make_bot(BFL_API_KEY=fake_bfl.key, BFL_BASE_URL=fake_bfl.base_url)) as h:
        message = await final_reply(h, await start_fill(h, "bfl"))
        assert_failed_clearly(message, "🛡️ Blocked by the provider's safety checks", "flagged", "before it ran",
                              "nothing was charged")
        assert "Derivative" not in message.text  # moderation reasons stay in the logs
        assert not fake_bfl.requests_to("delivery")


@pytest.mark.parametrize("provider", ["bfl", "replicate"])
async def test_output_moderated(make_bot, fake_bfl: FakeBFL, fake_replicate: FakeReplicate, provider: str) -> None:
    fake_bfl.outcome = "content_moderated"
    fake_replicate.outcome = "nsfw"
    env = {**replicate_env(fake_replicate), "BFL_API_KEY": fake_bfl.key, "BFL_BASE_URL": fake_bfl.base_url}
    async with running(make_bot(**env)) as h:
        message = await final_reply(h, await start_fill(h, provider))
        assert_failed_clearly(message, "🛡️ Blocked by the provider's safety checks", "safety" if provider ==
                              "replicate" else "moderation")
        assert "NSFW" not in message.text


async def test_job_that_never_finishes_times_out(make_bot) -> None:
    async with FakeReplicate(outcome="never", honour_wait=False) as fake:
        async with running(make_bot(JOB_DEADLINE="5", POLL_INTERVAL="0.2", **replicate_env(fake))) as h:
            message = await final_reply(h, await start_fill(h), within=15)
            assert_failed_clearly(message, "⌛ Timed out", "did not finish within 5 seconds", "stopped")
            assert fake.count("POST", "cancel") == 1  # stop paying for it
            assert not h.errors


async def test_expired_output_url(make_bot, fake_replicate: FakeReplicate) -> None:
    fake_replicate.faults.missing_files = True
    async with running(make_bot(**replicate_env(fake_replicate))) as h:
        message = await final_reply(h, await start_fill(h))
        assert_failed_clearly(message, "⌛ Result expired", "no longer available")
        assert fake_replicate.cdn_requests  # it was tried
        assert not h.errors


async def test_output_too_large_for_discord_keeps_full_resolution_with_a_notice(make_bot, fake_bfl: FakeBFL) -> None:
    rng = np.random.default_rng(7)
    noise = Image.fromarray(rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=1)
    mask = Image.new("L", (2048, 2048), 0)
    mask.paste(255, (512, 512, 1536, 1536))
    mask_buf = io.BytesIO()
    mask.save(mask_buf, "PNG")
    fake_bfl.sample_padding = 4 * MiB  # and the provider's file itself is bloated
    async with running(make_bot(BFL_API_KEY=fake_bfl.key, BFL_BASE_URL=fake_bfl.base_url)) as h:
        sent = await h.dispatch(h.slash("fill", {"prompt": "static", "provider": "bfl"}, attachments={
            "image": ("noise.png", buf.getvalue(), "image/png"), "mask": ("mask.png", mask_buf.getvalue(), "image/png"),
        }))
        message = await final_reply(h, sent, within=40)
        assert message.embeds[0]["title"].startswith("✅"), message.text
        total = sum(a.size for a in message.attachments)
        assert 0 < total <= 10 * MiB
        result = decode(message.attachments[0].data)
        assert result.size == (2048, 2048) and result.format == "JPEG"  # lossy before smaller
        notes = next(f["value"] for f in message.embeds[0]["fields"] if f["name"] == "Notes")
        assert "saved as JPEG" in notes and "upload limit" in notes
        assert not h.errors


# ------------------------------------------------------------------------------------- Discord faults


async def test_reply_deleted_before_delivery_ends_quietly(
    make_bot, fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    fake_replicate.duration = 0.5  # create holds (Prefer: wait) until the result is ready
    async with running(make_bot(**replicate_env(fake_replicate))) as h:
        sent = await start_fill(h)
        await h.wait_for(lambda: h.original(sent) is not None and h.original(sent).embeds)  # type: ignore[union-attr]
        reply = h.original(sent)
        assert reply is not None and reply.embeds[0]["title"].startswith("⏳")
        job = job_id_of(reply)
        h.fake.delete_message(reply.id)
        mark = len(h.fake.requests)

        async def finished() -> bool:
            record = await h.bot.storage.get_job(job)  # type: ignore[attr-defined]
            return record is not None and record.finished_at is not None

        await h.wait_for(finished, timeout=10)
        await asyncio.sleep(0.2)
        tries = [r for r in h.fake.requests[mark:] if r.method == "PATCH"]
        assert len(tries) == 1 and tries[0].status == 404  # one attempt, no retries, no new message
        assert not [m for m in h.fake.messages_in(h.general_channel_id) if m.id > reply.id]
        assert not h.errors and not h.exceptions
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_rate_limited_edit_is_retried_after_the_wait(make_bot, fake_replicate: FakeReplicate) -> None:
    async with running(make_bot(**replicate_env(fake_replicate))) as h:
        h.fake.rate_limit_next("PATCH", "/api/v10/webhooks/*/messages/*", times=2, retry_after=0.3)
        message = await final_reply(h, await start_fill(h))
        assert_delivered(message)
        edits = h.fake.requests_to("PATCH", "/api/v10/webhooks/*/messages/*")
        limited = [i for i, r in enumerate(edits) if r.status == 429]
        assert len(limited) == 2
        for i in limited:
            retry = edits[i + 1]
            assert retry.at - edits[i].at >= 0.28, (retry.at - edits[i].at)
        assert not h.errors


async def test_expired_token_and_refused_channel_edit_posts_a_new_message(
    make_bot, polling_replicate: FakeReplicate
) -> None:
    polling_replicate.duration = 0.8
    async with running(make_bot(**replicate_env(polling_replicate))) as h:
        sent = await start_fill(h)
        await h.wait_for(lambda: any(t.startswith("🎨") for t in titles(h, h.original(sent).id)))  # type: ignore[union-attr]
        reply = h.original(sent)
        assert reply is not None
        h.fake.expire_token(sent.token)
        h.fake.fail_next("PATCH", f"/api/v10/channels/*/messages/{reply.id}", status=403,
                         body={"message": "Missing Access", "code": 50001}, times=5)

        def delivered() -> FakeMessage | None:
            return next((m for m in h.fake.messages_in(h.general_channel_id) if m.id > reply.id and m.attachments),
                        None)

        posted = await h.wait_for(delivered, timeout=10)
        assert posted.content.startswith(f"<@{h.member.id}>")
        assert posted.embeds[0]["title"].startswith("✅")
        assert posted.attachments[0].filename.startswith("fill-")
        assert any(i.startswith("fill:rerun:") for i in posted.custom_ids())
        assert not h.fake.message(reply.id).loading
        assert not h.errors


async def test_restart_mid_job_delivers_to_the_original_reply_once(make_bot, polling_replicate) -> None:
    polling_replicate.duration = 1.2
    env = replicate_env(polling_replicate)
    async with running(make_bot(**env)) as h:
        sent = await start_fill(h)
        await h.wait_for(lambda: any(t.startswith("🎨") for t in titles(h, h.original(sent).id)))  # type: ignore[union-attr]
        reply = h.original(sent)
        assert reply is not None
        await h.restart(make_bot(**env))
        message = await final_reply(h, sent)
        assert message.id == reply.id
        assert_delivered(message)
        await asyncio.sleep(0.3)  # nothing more arrives
        finals = [r for r in h.fake.requests if r.message_id == reply.id and r.method == "PATCH" and r.files
                  and r.embeds and r.embeds[0].get("title", "").startswith("✅")]
        assert len(finals) == 1
        assert polling_replicate.count("POST", "create") == 1  # resumed by polling, never resubmitted
        assert not [m for m in h.fake.messages_in(h.general_channel_id) if m.id > reply.id]
        assert not h.errors


async def test_restart_during_submit_is_not_resubmitted(make_bot) -> None:
    async with FakeReplicate(duration=0.2, honour_wait=False) as fake:
        fake.faults.create.append(Fault.slow(3))
        env = replicate_env(fake)
        async with running(make_bot(**env)) as h:
            sent = await start_fill(h)
            await h.wait_for(lambda: fake.count("POST", "create") == 1)
            await h.restart(make_bot(**env))
            message = await final_reply(h, sent)
            assert_failed_clearly(message, "❌ Failed", "restarted", "not sent again", "Rerun")
            assert fake.count("POST", "create") == 1
