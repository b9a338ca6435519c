"""/fill and /edit end to end: real discord.py against the fake Discord API, real provider clients against
fake provider servers."""

from __future__ import annotations

import io

from PIL import Image

from bot.app import FillBot
from tests.discord.conftest import mask_for, photo, running
from tests.fakes.discord_harness import MEMBER
from tests.fakes.replicate_server import FakeReplicate


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


async def test_fill_with_local_provider_delivers_composited_result(make_bot) -> None:
    bot: FillBot = make_bot()
    async with running(bot) as h:
        p = h.slash("fill", {"prompt": "remove it"}, attachments={
            "image": ("photo.png", photo(), "image/png"), "mask": ("mask.png", mask_for(), "image/png"),
        })
        sent = await h.dispatch(p)
        await h.wait_for(lambda: any(a.filename.startswith("fill-") for a in h.original(sent).attachments), timeout=15)
        message = h.original(sent)
        assert message.embeds[0]["title"].startswith("✅")
        result = _decode(message.attachments[0].data)
        assert result.size == (640, 480)
        ids = message.custom_ids()
        assert any(i.startswith("fill:rerun:") for i in ids)
        assert not h.errors


async def test_fill_with_replicate_runs_against_fake_replicate(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(REPLICATE_API_TOKEN=fake_replicate.token, REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        p = h.slash("fill", {"prompt": "a red vase", "provider": "replicate"}, attachments={
            "image": ("photo.png", photo(), "image/png"), "mask": ("mask.png", mask_for(), "image/png"),
        })
        sent = await h.dispatch(p)
        await h.wait_for(lambda: any(a.filename.startswith("fill-") for a in h.original(sent).attachments), timeout=15)
        message = h.original(sent)
        assert "a red vase" in message.embeds[0]["description"]
        assert _decode(message.attachments[0].data).size == (640, 480)
        assert not h.errors


async def test_bad_image_is_refused_ephemerally_without_provider_request(
    make_bot, fake_replicate: FakeReplicate
) -> None:
    bot: FillBot = make_bot(REPLICATE_API_TOKEN=fake_replicate.token, REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        p = h.slash("fill", {"prompt": "x", "provider": "replicate"}, attachments={
            "image": ("photo.png", b"this is not a picture", "image/png"),
            "mask": ("mask.png", mask_for(), "image/png"),
        }, user=MEMBER)
        sent = await h.dispatch(p)
        await h.wait_for(lambda: h.ephemeral_text(sent), timeout=10)
        assert "PNG, JPEG, WebP or GIF" in h.ephemeral_text(sent)
        assert fake_replicate.api_requests() == []
