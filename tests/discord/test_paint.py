"""Painting the area to fill, end to end: the real bot against the fake Discord API with its web side on a real
port, real provider clients against a fake provider. /fill without a mask → a private link → the page sends a
mask → the job runs under the server's rules and its reply is delivered in the channel; the 🖌 Paint button on
results (the requester only), and its modal with a file upload when there is no web side."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bot.app import FillBot
from bot.imaging.masks import NO_MASK
from tests.discord.conftest import TESTDATA, decode, final_reply, is_final, job_id_of, mask_for, photo, running
from tests.fakes.discord_api import FakeMessage, walk_components
from tests.fakes.discord_harness import MEMBER, MEMBER_PERMISSIONS, DiscordHarness, Dispatched, FakeUser
from tests.fakes.replicate_server import FakeReplicate

OTHER = FakeUser(1004, "other", MEMBER_PERMISSIONS.value)


def web_env(**env: str) -> dict[str, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return {"PUBLIC_URL": f"http://127.0.0.1:{port}", "WEB_PORT": str(port), **env}


def replicate_env(fake: FakeReplicate) -> dict[str, str]:
    return {"REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url}


@asynccontextmanager
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def painter_link(h: DiscordHarness, sent: Dispatched) -> str:
    """The URL of the link button the bot answered `sent` with, privately."""

    def found() -> str | None:
        for message in [m for m in (h.original(sent), *h.followups(sent)) if m is not None]:
            for component in walk_components(message.components):
                if component.get("url"):
                    assert message.ephemeral, "a painter link must be private"
                    assert component["label"] == "Paint the area"
                    return str(component["url"])
        return None

    return await h.wait_for(found, message="painter link")


async def send_mask(session: aiohttp.ClientSession, url: str, mask: bytes, prompt: str) -> tuple[int, str]:
    form = aiohttp.FormData()
    form.add_field("prompt", prompt)
    form.add_field("mask", mask, filename="mask.png", content_type="image/png")
    async with session.post(url, data=form) as answer:
        return answer.status, await answer.text()


async def channel_reply(h: DiscordHarness, after: int = 0) -> FakeMessage:
    """The final job reply the bot posted in the channel itself (no interaction), mentioning the member."""

    def found() -> FakeMessage | None:
        return next((m for m in h.fake.messages_in(h.general_channel_id)
                     if m.id > after and f"<@{MEMBER.id}>" in m.content and is_final(m)), None)

    return await h.wait_for(found, timeout=15, message="the job's reply in the channel")


async def test_fill_without_a_mask_links_the_painter_and_the_page_starts_the_job(make_bot, fake_replicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate), **web_env())
    async with running(bot) as h, browser() as session:
        sent = await h.dispatch(h.slash("fill", {"prompt": "a boat", "provider": "replicate"},
                                        attachments={"image": ("photo.png", photo(), "image/png")}))
        url = await painter_link(h, sent)
        assert NO_MASK not in h.ephemeral_text(sent) and "expires in 15 minutes" in h.ephemeral_text(sent)
        assert url.startswith(bot.settings.web.public_url + "/paint/")
        assert not h.fake.messages_in(h.general_channel_id)  # nothing public before the mask is sent
        async with session.get(url) as page:
            assert page.status == 200 and "a boat" in await page.text()
        async with session.get(url + "/image") as image:
            assert await image.read() == photo()

        status, text = await send_mask(session, url, mask_for(), "a sailing boat")
        assert status == 200 and "Your job has started" in text, text
        reply = await channel_reply(h)
        assert reply.embeds[0]["title"].startswith("✅"), reply.text
        assert reply.embeds[0]["description"] == "a sailing boat"
        assert f"fill:paint:{job_id_of(reply)}:0" in reply.custom_ids()
        assert decode(reply.attachments[0].data).size == (640, 480)
        (prediction,) = fake_replicate.predictions.values()
        assert prediction.input["prompt"] == "a sailing boat"
        record = await bot.storage.get_job(job_id_of(reply))
        assert record is not None and record.user_id == MEMBER.id and record.reply_message_id == reply.id

        assert (await send_mask(session, url, mask_for(), "again"))[0] == 410  # single use
        assert len(fake_replicate.predictions) == 1
        assert not h.errors


async def test_the_page_goes_through_the_rules_and_a_refusal_keeps_the_link(make_bot, tmp_path: Path) -> None:
    terms = tmp_path / "terms.txt"
    terms.write_text("forbidden\n", encoding="utf-8")
    bot: FillBot = make_bot(**web_env(BLOCKED_TERMS_FILE=str(terms)))
    async with running(bot) as h, browser() as session:
        sent = await h.dispatch(h.slash("fill", {"prompt": "x"},
                                        attachments={"image": ("photo.png", photo(), "image/png")}))
        url = await painter_link(h, sent)
        status, text = await send_mask(session, url, mask_for(), "something forbidden")
        assert status == 400 and "does not allow" in text
        status, text = await send_mask(session, url, b"GIF89a broken", "a cat")
        assert status == 400 and "mask" in text.lower(), text  # validated like any mask
        assert not h.fake.messages_in(h.general_channel_id)
        assert await bot.storage.count_jobs(since=0) == 0
        status, _ = await send_mask(session, url, mask_for(), "a cat")
        assert status == 200
        reply = await channel_reply(h)
        assert reply.embeds[0]["title"].startswith("✅"), reply.text

        early = await h.dispatch(h.slash("fill", {"prompt": "forbidden fruit"},
                                         attachments={"image": ("photo.png", photo(), "image/png")}))
        refusal = await h.wait_for(lambda: h.ephemeral_text(early), message="refusal")
        assert "does not allow" in refusal and "Paint" not in refusal  # no link for a job that cannot run
        assert not any(c.get("url") for m in h.followups(early) for c in walk_components(m.components))


async def test_a_picture_with_holes_starts_at_once_in_the_channel(make_bot) -> None:
    bot: FillBot = make_bot(**web_env())
    async with running(bot) as h:
        holes = (TESTDATA / "rgba_coffee_ellipse_hole.png").read_bytes()
        sent = await h.dispatch(h.slash("fill", {"prompt": "a cup"},
                                        attachments={"image": ("holes.png", holes, "image/png")}))
        reply = await channel_reply(h)
        assert reply.embeds[0]["title"].startswith("✅"), reply.text
        assert "Your job has started" in h.ephemeral_text(sent)
        assert not h.errors


async def test_paint_on_a_result_is_for_its_requester_and_refills_the_result(make_bot) -> None:
    bot: FillBot = make_bot(**web_env())
    async with running(bot) as h, browser() as session:
        first = await final_reply(h, await h.dispatch(h.slash(
            "fill", {"prompt": "a vase"},
            attachments={"image": ("photo.png", photo(), "image/png"), "mask": ("mask.png", mask_for(), "image/png")},
        )))
        custom_id = f"fill:paint:{job_id_of(first)}:0"
        refused = await h.dispatch(h.component(custom_id, first.id, user=OTHER))
        assert "only the person who started this job" in h.ephemeral_text(refused)
        pressed = await h.dispatch(h.component(custom_id, first.id))
        url = await painter_link(h, pressed)
        async with session.get(url + "/image") as image:
            assert await image.read() == first.attachments[0].data  # the result, not the original
        status, _ = await send_mask(session, url, mask_for(), "a lily")
        assert status == 200
        second = await channel_reply(h, after=first.id)
        assert second.embeds[0]["description"] == "a lily"
        assert not h.errors


async def test_without_the_web_side_paint_opens_a_modal_with_a_file_upload(make_bot) -> None:
    bot: FillBot = make_bot()
    async with running(bot) as h:
        first = await final_reply(h, await h.dispatch(h.slash(
            "fill", {"prompt": "a vase"},
            attachments={"image": ("photo.png", photo(), "image/png"), "mask": ("mask.png", mask_for(), "image/png")},
        )))

        async def open_modal() -> dict[str, Any]:  # a modal is answered once: each try opens a new one
            opened = await h.dispatch(h.component(f"fill:paint:{job_id_of(first)}:0", first.id))
            modal = h.fake.interaction(opened.token).modal
            assert modal is not None
            return modal

        modal = await open_modal()
        kinds = {top["label"]: top["component"]["type"] for top in modal["components"]}
        assert kinds["Mask, or this picture with holes"] == 19  # Discord's file upload component
        nothing = await h.dispatch(h.modal_submit(modal["custom_id"], {"paint:prompt": "a lily"},
                                                  message_id=first.id))
        assert "Attach a mask" in await h.wait_for(lambda: h.ephemeral_text(nothing), message="refusal")
        modal = await open_modal()
        submitted = await h.dispatch(h.modal_submit(
            modal["custom_id"], {"paint:prompt": "a lily", "paint:region": "10%,10%,30%,30%"}, message_id=first.id,
        ))
        second = await final_reply(h, submitted)
        assert second.embeds[0]["title"].startswith("✅") and second.embeds[0]["description"] == "a lily"

        modal = await open_modal()
        masked = await h.dispatch(h.modal_submit(
            modal["custom_id"], {"paint:prompt": "a rose"}, message_id=first.id,
            files={"paint:file": ("mask.png", mask_for(), "image/png")},
        ))
        third = await final_reply(h, masked)
        assert third.embeds[0]["description"] == "a rose"
        stored = await bot.storage.load_inputs(job_id_of(third))
        assert stored is not None and stored[0] == first.attachments[0].data  # the result, with the uploaded mask
        assert decode(stored[1]).getbbox() == decode(mask_for()).getbbox()

        holes = (TESTDATA / "rgba_coffee_ellipse_hole.png").read_bytes()
        modal = await open_modal()
        with_holes = await h.dispatch(h.modal_submit(
            modal["custom_id"], {"paint:prompt": "a cup"}, message_id=first.id,
            files={"paint:file": ("holes.png", holes, "image/png")},
        ))
        fourth = await final_reply(h, with_holes)
        stored = await bot.storage.load_inputs(job_id_of(fourth))
        assert stored is not None and stored[0] == holes  # the uploaded picture itself, filled where transparent
        assert not h.errors
