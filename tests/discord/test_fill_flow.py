"""/fill and /edit end to end: real discord.py against the fake Discord API, real provider clients against
fake provider servers. Happy paths per provider, the live status, context menus, result buttons, restarts,
an expired interaction token and a deleted reply."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bot import pipeline
from bot.app import FillBot
from cogs import delivery
from tests.discord.conftest import (
    TESTDATA,
    both_backends,
    decode,
    final_reply,
    is_final,
    job_id_of,
    mask_for,
    photo,
    running,
)
from tests.fakes.bfl_server import FakeBFL
from tests.fakes.discord_api import FakeMessage, RecordedRequest
from tests.fakes.discord_harness import MEMBER, MEMBER_PERMISSIONS, DiscordHarness, Dispatched, FakeUser
from tests.fakes.replicate_server import FakeReplicate, LogStyle
from tests.fakes.wavespeed_server import FakeWaveSpeed

OTHER = FakeUser(1004, "other", MEMBER_PERMISSIONS.value)
WORKING_MARKS = ("⏳", "📨", "🎨")
MASK_BOX = (160, 120, 320, 240)  # the white rectangle of mask_for(640, 480)


# ----------------------------------------------------------------------------------------------- helpers



def data_uri_image(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64"), header
    return decode(base64.b64decode(payload))





def field(message: FakeMessage, name: str) -> str:
    for f in message.embeds[0].get("fields", []):
        if f["name"] == name:
            return str(f["value"])
    raise AssertionError(f"no field {name!r} in {message.embeds[0]}")


def status_titles(h: DiscordHarness, message_id: int) -> list[str]:
    """Titles of every successful edit of one message, in order (webhook or channel route)."""
    return [
        str(r.embeds[0].get("title"))
        for r in h.fake.requests
        if r.ok and r.message_id == message_id and r.method == "PATCH" and r.embeds
    ]


def outside_mask(size: tuple[int, int], box: tuple[int, int, int, int], margin: int = 40) -> np.ndarray:
    """Pixels far from the fill area (beyond any feathering)."""
    keep = Image.new("L", size, 255)
    left, top, right, bottom = box
    ImageDraw.Draw(keep).rectangle((left - margin, top - margin, right + margin, bottom + margin), fill=0)
    return np.asarray(keep) > 0


def assert_composited(
    result: Image.Image, original: Image.Image, box: tuple[int, int, int, int], *, lossy: bool = False
) -> None:
    """Outside the mask the result is the user's picture pixel for pixel (up to re-encoding noise when `lossy`);
    inside, the provider's work."""
    assert result.size == original.size
    got = np.asarray(result.convert("RGB")).astype(int)
    want = np.asarray(original.convert("RGB")).astype(int)
    far = outside_mask(original.size, box)
    if lossy:
        assert np.abs(got[far] - want[far]).mean() < 2
    else:
        assert np.array_equal(got[far], want[far])
    left, top, right, bottom = box
    inner = (slice(top + 10, bottom - 10), slice(left + 10, right - 10))
    assert np.abs(got[inner] - want[inner]).mean() > 30  # the fakes invert the picture: clearly repainted


def assert_result_buttons(message: FakeMessage) -> None:
    job = job_id_of(message)
    ids = set(message.custom_ids())
    for action in ("rerun", "info", "delete", "share"):
        assert f"fill:{action}:{job}" in ids, (action, ids)
    assert f"fill:reuse:{job}:0" in ids
    assert not any(i.startswith("fill:cancel:") for i in ids)


def fill_images(png: bytes | None = None, mask: bytes | None = None) -> dict[str, tuple[str, bytes, str]]:
    return {
        "image": ("photo.png", png if png is not None else photo(), "image/png"),
        "mask": ("mask.png", mask if mask is not None else mask_for(), "image/png"),
    }


async def start_fill(h: DiscordHarness, prompt: str = "x", provider: str = "replicate") -> Dispatched:
    return await h.dispatch(h.slash("fill", {"prompt": prompt, "provider": provider}, attachments=fill_images()))


async def wait_running(h: DiscordHarness, sent: Dispatched) -> FakeMessage:
    """Wait until the reply shows the provider running the job; returns the reply."""

    def shown() -> FakeMessage | None:
        reply = h.original(sent)
        if reply is not None and any(t.startswith("🎨 Running") for t in status_titles(h, reply.id)):
            return reply
        return None

    return await h.wait_for(shown, message="running status")


def modal_ids(h: DiscordHarness, sent: Dispatched) -> tuple[str, dict[str, str]]:
    """The custom id of the modal the bot answered `sent` with, and its text inputs' ids by label."""
    modal = h.fake.interaction(sent.token).modal
    assert modal is not None, "the bot did not open a modal"
    ids: dict[str, str] = {}
    for top in modal["components"]:
        if top.get("type") == 1:
            for comp in top.get("components", []):
                ids[comp["label"]] = comp["custom_id"]
        elif top.get("type") == 18:
            ids[top["label"]] = top["component"]["custom_id"]
    return modal["custom_id"], ids


def replicate_env(fake: FakeReplicate) -> dict[str, str]:
    return {"REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url}


# ------------------------------------------------------------------------------------- happy paths


@both_backends
async def test_fill_with_local_provider_delivers_composited_result(make_bot) -> None:
    bot: FillBot = make_bot()
    async with running(bot) as h:
        image = photo()
        sent = await h.dispatch(h.slash("fill", {"prompt": "remove it"}, attachments=fill_images(image)))
        message = await final_reply(h, sent)
        assert message.embeds[0]["title"].startswith("✅")
        assert "remove it" in message.embeds[0]["description"]
        assert "local" in field(message, "Model").lower()
        result = decode(message.attachments[0].data)
        assert result.size == (640, 480)
        far = outside_mask((640, 480), MASK_BOX)
        assert np.array_equal(np.asarray(result.convert("RGB"))[far], np.asarray(decode(image).convert("RGB"))[far])
        assert_result_buttons(message)
        assert not h.errors


@pytest.mark.parametrize(
    ("prefix", "logs"),
    [("/v1", "it"), ("/replicate/v1", "percent"), ("/v1", "none")],
    ids=["official", "aggregator", "no-progress-logs"],
)
async def test_fill_with_replicate_shows_live_status_and_delivers(make_bot, prefix: str, logs: LogStyle) -> None:
    """Without `Prefer: wait` the bot polls: queued → submitted → running (with a percentage only when the
    logs carry tqdm progress) → done."""
    async with FakeReplicate(duration=0.5, start_delay=0.1, honour_wait=False, prefix=prefix, logs=logs) as fake:
        bot: FillBot = make_bot(**replicate_env(fake))
        async with running(bot) as h:
            image = photo()
            sent = await h.dispatch(
                h.slash("fill", {"prompt": "a red vase", "provider": "replicate"}, attachments=fill_images(image))
            )
            message = await final_reply(h, sent)
            assert message.embeds[0]["title"].startswith("✅"), message.text
            assert message.embeds[0]["description"] == "a red vase"
            assert field(message, "Model") == "FLUX.1 Fill [dev] on Replicate"
            (prediction,) = fake.predictions.values()
            assert field(message, "Seed") == str(prediction.input["seed"])
            assert prediction.input["prompt"] == "a red vase"
            assert all(r.path.startswith(prefix + "/") for r in fake.api_requests())
            assert fake.count("POST", "create") == 1

            assert [a.filename for a in message.attachments][1:] == ["before.jpg"]  # one result, then its "before"
            assert message.attachments[0].filename.endswith(".png")
            assert_composited(decode(message.attachments[0].data), decode(image), MASK_BOX)
            assert_result_buttons(message)

            titles = status_titles(h, message.id)
            assert titles[0].startswith("⏳ Queued")
            # "Submitted" may be superseded by "Running" before its edit is due (the reply shows the newest state
            # at most once per edit interval); the states shown never go backwards.
            order = ["⏳", "📨", "🎨", "✅"]
            assert [order.index(t[0]) for t in titles] == sorted(order.index(t[0]) for t in titles), titles
            running_titles = [t for t in titles if t.startswith("🎨 Running")]
            assert running_titles, titles
            if logs == "none":
                assert not any("%" in t for t in titles), titles
            else:
                assert any(re.fullmatch(r"🎨 Running — \d+%", t) for t in running_titles), titles
            assert titles[-1].startswith("✅")
            assert not h.errors


async def test_fill_with_bfl_delivers_and_reports_its_progress(make_bot) -> None:
    async with FakeBFL(duration=3.0) as fake:  # long enough to be polled while it reports progress
        bot: FillBot = make_bot(BFL_API_KEY=fake.key, BFL_BASE_URL=fake.base_url)
        async with running(bot) as h:
            original = (TESTDATA / "photo_coffee_1024x768.jpg").read_bytes()
            mask = (TESTDATA / "mask_coffee_1024x768_ellipse.png").read_bytes()
            sent = await h.dispatch(h.slash("fill", {"prompt": "a croissant", "provider": "bfl"}, attachments={
                "image": ("coffee.jpg", original, "image/jpeg"), "mask": ("mask.png", mask, "image/png"),
            }))
            message = await final_reply(h, sent)
            assert message.embeds[0]["title"].startswith("✅"), message.text
            assert field(message, "Model") == "FLUX.1 Fill [pro] (Black Forest Labs)"
            (job,) = fake.jobs.values()
            assert field(message, "Seed") == str(job.body["seed"])
            assert job.body["prompt"] == "a croissant"
            result = decode(message.attachments[0].data)
            assert result.size == (1024, 768)
            box = decode(mask).convert("L").getbbox()
            assert box is not None
            assert_composited(result, decode(original), box, lossy=True)  # a JPEG upload comes back as JPEG
            assert_result_buttons(message)
            titles = status_titles(h, message.id)
            assert any(re.fullmatch(r"🎨 Running — \d+%", t) for t in titles), titles
            assert all("authorization" not in r.headers and "x-key" not in r.headers
                       for r in fake.requests_to("delivery"))
            assert not h.errors


async def test_fill_with_wavespeed_shows_no_percentage_it_does_not_report(make_bot) -> None:
    async with FakeWaveSpeed(duration=0.5) as fake:
        bot: FillBot = make_bot(WAVESPEED_API_KEY=fake.key, WAVESPEED_BASE_URL=fake.base_url)
        async with running(bot) as h:
            image = photo()
            sent = await h.dispatch(
                h.slash("fill", {"prompt": "a lamp", "provider": "wavespeed"}, attachments=fill_images(image))
            )
            message = await final_reply(h, sent)
            assert message.embeds[0]["title"].startswith("✅"), message.text
            assert field(message, "Model") == "FLUX.1 Fill [dev] on WaveSpeedAI"
            (job,) = fake.jobs.values()
            assert field(message, "Seed") == str(job.body["seed"])
            assert_composited(decode(message.attachments[0].data), decode(image), MASK_BOX)
            assert_result_buttons(message)
            titles = status_titles(h, message.id)
            assert any(t.startswith("🎨 Running") for t in titles), titles
            assert not any("%" in t for t in titles), titles
            assert not h.errors


async def test_edit_with_replicate_kontext(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        sent = await h.dispatch(h.slash("edit", {"prompt": "make it night", "provider": "replicate"}, attachments={
            "image": ("astro.png", (TESTDATA / "photo_astronaut_512x512.png").read_bytes(), "image/png"),
        }))
        message = await final_reply(h, sent)
        assert message.embeds[0]["title"].startswith("✅"), message.text
        assert message.embeds[0]["description"] == "make it night"
        assert field(message, "Model") == "FLUX.1 Kontext [dev] on Replicate"
        (prediction,) = fake_replicate.predictions.values()
        assert prediction.model.endswith("flux-kontext-dev")
        assert field(message, "Seed") == str(prediction.input["seed"])
        assert "mask" not in prediction.input
        result = decode(message.attachments[0].data)
        assert result.width > 0 and result.format == "PNG"
        assert_result_buttons(message)
        assert not h.errors


@pytest.mark.parametrize(
    ("upload", "options", "asked"),
    [
        ("coffee.jpg", {}, ("jpg", 95)),  # a JPEG photo comes back as a JPEG anyway: ask for one
        ("coffee.jpg", {"output_format": "png"}, ("png", None)),  # a lossless delivery needs a lossless result
        ("coffee.png", {}, ("png", None)),  # a PNG comes back as PNG
    ],
    ids=["jpeg", "jpeg-as-png", "png"],
)
async def test_replicate_is_asked_for_the_result_format_the_delivery_needs(
    make_bot, fake_replicate: FakeReplicate, upload: str, options: dict[str, object], asked: tuple[str, int | None]
) -> None:
    """The provider returns a JPEG exactly when the member gets a JPEG: a fifth of a PNG's download and a sixth
    of its decode, with no loss a lossless delivery would show."""
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    photo_jpeg = (TESTDATA / "photo_coffee_1024x768.jpg").read_bytes()
    if upload.endswith(".png"):
        original = decode(photo_jpeg)
        original.save(buffer := io.BytesIO(), "PNG")
        data, mime = buffer.getvalue(), "image/png"
    else:
        data, mime = photo_jpeg, "image/jpeg"
    mask = (TESTDATA / "mask_coffee_1024x768_ellipse.png").read_bytes()
    async with running(bot) as h:
        sent = await h.dispatch(h.slash("fill", {"prompt": "a croissant", "provider": "replicate", **options},
                                        attachments={"image": (upload, data, mime), "mask": ("mask.png", mask,
                                                                                             "image/png")}))
        message = await final_reply(h, sent)
        assert message.embeds[0]["title"].startswith("✅"), message.text
        (prediction,) = fake_replicate.predictions.values()
        assert (prediction.input["output_format"], prediction.input.get("output_quality")) == asked
        [result_file] = prediction.files
        assert result_file.endswith("." + asked[0])  # the fake saved what was asked
        result = decode(message.attachments[0].data)
        assert result.size == (1024, 768)  # full resolution either way
        assert result.format == ("JPEG" if asked[0] == "jpg" else "PNG")
        box = decode(mask).convert("L").getbbox()
        assert box is not None
        assert_composited(result, decode(data), box, lossy=result.format == "JPEG")
        assert not h.errors


async def croissant_on_the_coffee_photo(h: DiscordHarness) -> Dispatched:
    """/fill on the coffee photo with its ellipse mask, on Replicate, until a successful final reply."""
    sent = await h.dispatch(h.slash("fill", {"prompt": "a croissant", "provider": "replicate"}, attachments={
        "image": ("photo.jpg", (TESTDATA / "photo_coffee_1024x768.jpg").read_bytes(), "image/jpeg"),
        "mask": ("mask.png", (TESTDATA / "mask_coffee_1024x768_ellipse.png").read_bytes(), "image/png"),
    }))
    message = await final_reply(h, sent)
    assert message.embeds[0]["title"].startswith("✅"), message.text
    return sent


async def test_the_job_is_sent_without_waiting_for_its_preview(
    make_bot, fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status message's preview is drawn while the job is being sent: here drawing it waits for the provider
    to have the job, which only works if the create does not wait for it. The reply still shows it."""
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    loop = asyncio.get_running_loop()
    draw = pipeline.mask_preview

    def after_the_create(image: Image.Image, mask: Image.Image) -> bytes:
        asyncio.run_coroutine_threadsafe(fake_replicate.created.wait(), loop).result(timeout=20)
        return draw(image, mask)

    monkeypatch.setattr(pipeline, "mask_preview", after_the_create)
    async with running(bot) as h:
        sent = await croissant_on_the_coffee_photo(h)
        previews = [file.filename for request in h.responses(sent) for file in request.files]
        assert "mask-preview.jpg" in previews
        assert not h.errors


async def test_a_preview_that_cannot_be_drawn_leaves_only_the_picture_out(
    make_bot, fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The preview is a nicety drawn after the job is sent: if drawing it fails, the job still runs and is
    delivered, the first reply has no picture, and the failure is logged."""
    bot: FillBot = make_bot(**replicate_env(fake_replicate))

    def broken(image: Image.Image, mask: Image.Image) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "mask_preview", broken)
    async with running(bot) as h:
        sent = await croissant_on_the_coffee_photo(h)
        previews = [file.filename for request in h.responses(sent) for file in request.files]
        assert fake_replicate.count("POST", "create") == 1
        assert "mask-preview.jpg" not in previews
        logged = [r for r in caplog.records if r.name == "bot.service" and r.levelno == logging.ERROR]
        assert [r.getMessage() for r in logged] == ["could not draw a job's preview"]
        assert logged[0].exc_info is not None and isinstance(logged[0].exc_info[1], OSError)
        assert not h.errors


async def test_edit_with_bfl_kontext(make_bot) -> None:
    async with FakeBFL(duration=0.2) as fake:
        bot: FillBot = make_bot(BFL_API_KEY=fake.key, BFL_BASE_URL=fake.base_url)
        async with running(bot) as h:
            source = (TESTDATA / "photo_chelsea_900x600.webp").read_bytes()
            sent = await h.dispatch(h.slash("edit", {"prompt": "give the cat a hat", "provider": "bfl"}, attachments={
                "image": ("cat.webp", source, "image/webp"),
            }))
            message = await final_reply(h, sent)
            assert message.embeds[0]["title"].startswith("✅"), message.text
            assert field(message, "Model") == "FLUX.1 Kontext [pro] (Black Forest Labs)"
            (job,) = fake.jobs.values()
            assert job.model == "flux-kontext-pro"
            assert field(message, "Seed") == str(job.body["seed"])
            result = decode(message.attachments[0].data)
            assert result.size == (900, 600)  # the fake answers at the size it was sent
            assert_result_buttons(message)
            assert not h.errors


async def test_transparent_hole_without_mask_is_filled(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        rgba = (TESTDATA / "rgba_coffee_ellipse_hole.png").read_bytes()
        sent = await h.dispatch(h.slash("fill", {"prompt": "a cookie", "provider": "replicate"}, attachments={
            "image": ("hole.png", rgba, "image/png"),
        }))
        message = await final_reply(h, sent)
        assert message.embeds[0]["title"].startswith("✅"), message.text
        source = decode(rgba)
        result = decode(message.attachments[0].data)
        assert result.size == source.size == (600, 400)
        (prediction,) = fake_replicate.predictions.values()
        sent_mask = np.asarray(data_uri_image(prediction.input["mask"]).convert("L").resize(source.size)) > 127
        hole = np.asarray(source.getchannel("A")) < 255
        assert (sent_mask == hole).mean() > 0.99  # the mask the provider got is the transparent hole
        assert not h.errors


async def test_region_option_builds_the_mask(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        image = photo()
        sent = await h.dispatch(h.slash(
            "fill", {"prompt": "a window", "provider": "replicate", "region": "50%,50%,25%,25%"},
            attachments={"image": ("photo.png", image, "image/png")},
        ))
        message = await final_reply(h, sent)
        assert message.embeds[0]["title"].startswith("✅"), message.text
        (prediction,) = fake_replicate.predictions.values()
        sent_mask = data_uri_image(prediction.input["mask"]).convert("L")
        assert sent_mask.size == (640, 480)
        assert sent_mask.getbbox() == (320, 240, 480, 360)
        assert_composited(decode(message.attachments[0].data), decode(image), (320, 240, 480, 360))


async def test_context_menu_fill_with_modal(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(DEFAULT_PROVIDER="replicate", **replicate_env(fake_replicate))
    async with running(bot) as h:
        image = (TESTDATA / "photo_coffee_1024x768.jpg").read_bytes()
        mask = (TESTDATA / "mask_coffee_1024x768_ellipse.png").read_bytes()
        post = h.post_message("fix this", files=[("coffee.jpg", image, "image/jpeg"),
                                                  ("coffee_mask.png", mask, "image/png")])
        opened = await h.dispatch(h.message_command("Fill with…", post))
        assert h.responses(opened)[0].callback_type == 9
        modal_id, inputs = modal_ids(h, opened)
        assert "Prompt" in inputs
        assert not any(label.startswith("Region") for label in inputs)  # the message has a mask
        submitted = await h.dispatch(h.modal_submit(modal_id, {inputs["Prompt"]: "a croissant"}))
        message = await final_reply(h, submitted)
        assert message.embeds[0]["title"].startswith("✅"), message.text
        assert message.embeds[0]["description"] == "a croissant"
        result = decode(message.attachments[0].data)
        assert result.size == (1024, 768) and result.format == "JPEG"  # the default answers in the upload's kind
        box = decode(mask).convert("L").getbbox()
        assert box is not None
        assert_composited(result, decode(image), box, lossy=True)
        assert not h.errors


# ------------------------------------------------------------------------------------------ buttons


async def test_cancel_while_running(make_bot) -> None:
    async with FakeReplicate(duration=30, honour_wait=False) as fake:
        bot: FillBot = make_bot(**replicate_env(fake))
        async with running(bot) as h:
            sent = await start_fill(h)
            reply = await wait_running(h, sent)
            job = job_id_of(reply)
            assert f"fill:cancel:{job}" in reply.custom_ids()
            click = await h.dispatch(h.component(f"fill:cancel:{job}", reply.id))
            assert h.responses(click)[0].callback_type == 6
            message = await final_reply(h, sent)
            assert message.embeds[0]["title"] == "⏹️ Canceled"
            assert not message.attachments
            assert fake.count("POST", "cancel") == 1
            (prediction,) = fake.predictions.values()
            assert prediction.canceled_at is not None
            assert (await h.bot.storage.get_job(job)).status == "canceled"  # type: ignore[attr-defined, union-attr]
            assert not h.errors


async def test_cancel_by_another_member_is_refused(make_bot) -> None:
    async with FakeReplicate(duration=30, honour_wait=False) as fake:
        bot: FillBot = make_bot(**replicate_env(fake))
        async with running(bot) as h:
            sent = await start_fill(h)
            reply = await wait_running(h, sent)
            click = await h.dispatch(h.component(f"fill:cancel:{job_id_of(reply)}", reply.id, user=OTHER))
            assert "only the person who started this job" in h.ephemeral_text(click)
            assert fake.count("POST", "cancel") == 0
            assert not is_final(h.original(sent))


async def test_rerun_makes_a_new_reply_with_a_new_seed(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        sent = await start_fill(h, "a vase")
        first = await final_reply(h, sent)
        rerun = await h.dispatch(h.component(f"fill:rerun:{job_id_of(first)}", first.id))
        second = await final_reply(h, rerun)
        assert second.id != first.id
        assert second.embeds[0]["title"].startswith("✅"), second.text
        assert job_id_of(second) != job_id_of(first)
        assert field(second, "Seed") != field(first, "Seed")
        notes = field(second, "Notes")  # the seed changed on purpose, and the reply says so
        assert f"new seed, {field(second, 'Seed')}" in notes and field(first, "Seed") in notes, notes
        assert "Edit & rerun" in notes
        assert second.embeds[0]["description"] == "a vase"
        assert fake_replicate.count("POST", "create") == 2
        assert decode(second.attachments[0].data).size == (640, 480)
        assert h.fake.message(first.id).attachments  # the first result is untouched
        assert not h.errors


async def test_edit_and_rerun_keeps_the_seed_and_changes_the_prompt(
    make_bot, fake_replicate: FakeReplicate
) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        first = await final_reply(h, await start_fill(h, "a vase"))
        opened = await h.dispatch(h.component(f"fill:change:{job_id_of(first)}", first.id))
        modal = h.fake.interaction(opened.token).modal
        assert modal is not None
        defaults = {c["custom_id"]: c.get("value") for top in modal["components"]
                    for c in ([top["component"]] if top.get("type") == 18 else top.get("components", []))}
        modal_id, inputs = modal_ids(h, opened)
        seed_label = next(label for label in inputs if label.startswith("Seed"))
        assert defaults[inputs["Prompt"]] == "a vase" and defaults[inputs[seed_label]] == field(first, "Seed")

        submitted = await h.dispatch(h.modal_submit(
            modal_id, {inputs["Prompt"]: "a red vase", inputs[seed_label]: field(first, "Seed")}, message_id=first.id,
        ))
        second = await final_reply(h, submitted)
        assert second.embeds[0]["title"].startswith("✅"), second.text
        assert second.embeds[0]["description"] == "a red vase"
        assert field(second, "Seed") == field(first, "Seed")
        first_job, second_job = sorted(fake_replicate.predictions.values(), key=lambda p: p.created)
        assert second_job.input["seed"] == first_job.input["seed"] and second_job.input["prompt"] == "a red vase"

        opened = await h.dispatch(h.component(f"fill:change:{job_id_of(first)}", first.id))
        modal_id, inputs = modal_ids(h, opened)
        bad = await h.dispatch(h.modal_submit(modal_id, {inputs["Prompt"]: "x", inputs[seed_label]: "12a"},
                                              message_id=first.id))
        assert "not a seed" in await h.wait_for(lambda: h.ephemeral_text(bad), message="seed refusal")
        assert fake_replicate.count("POST", "create") == 2
        assert not h.errors


@both_backends
async def test_rerun_still_works_after_a_restart(make_bot, fake_replicate: FakeReplicate) -> None:
    env = replicate_env(fake_replicate)
    async with running(make_bot(**env)) as h:
        sent = await start_fill(h, "a vase")
        first = await final_reply(h, sent)
        await h.restart(make_bot(**env))  # same database file
        rerun = await h.dispatch(h.component(f"fill:rerun:{job_id_of(first)}", first.id))
        second = await final_reply(h, rerun)
        assert second.embeds[0]["title"].startswith("✅"), second.text
        assert second.id != first.id
        assert fake_replicate.count("POST", "create") == 2
        assert not h.errors


async def test_info_shows_the_parameters_ephemerally_to_anyone(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        sent = await h.dispatch(h.slash(
            "fill", {"prompt": "a teapot", "provider": "replicate", "seed": 4242, "steps": 20},
            attachments=fill_images(),
        ))
        message = await final_reply(h, sent)
        click = await h.dispatch(h.component(f"fill:info:{job_id_of(message)}", message.id, user=OTHER))
        (answer,) = h.responses(click)
        assert answer.callback_type == 4 and answer.ephemeral
        text = h.ephemeral_text(click)
        assert "a teapot" in text and "4242" in text and "flux-fill-dev" in text
        assert re.search(r"steps:\*\* `20`", text), text
        assert job_id_of(message) in text
        assert len(h.fake.message(message.id).attachments) == 2  # the result and its "before", unchanged


async def test_delete_by_requester_and_refusal_for_others(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        sent = await start_fill(h)
        message = await final_reply(h, sent)
        custom_id = f"fill:delete:{job_id_of(message)}"

        refused = await h.dispatch(h.component(custom_id, message.id, user=OTHER))
        assert "Sorry, only the person who started this job or a moderator" in h.ephemeral_text(refused)
        assert h.responses(refused)[0].ephemeral
        assert not h.fake.message(message.id).deleted

        deleted = await h.dispatch(h.component(custom_id, message.id, user=MEMBER))
        await h.wait_for(lambda: h.fake.message(message.id).deleted)
        assert h.ephemeral_text(deleted) == ""
        record = await bot.storage.get_job(job_id_of(message))
        assert record is not None and record.reply_message_id is None
        assert not h.errors


async def test_use_as_input_starts_a_job_on_the_output(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        sent = await start_fill(h, "a vase")
        first = await final_reply(h, sent)
        output = decode(first.attachments[0].data).convert("RGB")

        opened = await h.dispatch(h.component(f"fill:reuse:{job_id_of(first)}:0", first.id))
        modal_id, inputs = modal_ids(h, opened)
        submitted = await h.dispatch(
            h.modal_submit(modal_id, {inputs["Prompt"]: "a lily"}, message_id=first.id)
        )
        second = await final_reply(h, submitted)
        assert second.id != first.id
        assert second.embeds[0]["title"].startswith("✅"), second.text
        assert second.embeds[0]["description"] == "a lily"
        first_job, second_job = sorted(fake_replicate.predictions.values(), key=lambda p: p.created)
        sent_image = data_uri_image(second_job.input["image"]).convert("RGB")
        assert sent_image.size == output.size
        diff = np.abs(np.asarray(sent_image).astype(int) - np.asarray(output).astype(int)).mean()
        assert diff < 3, diff  # the new job's input is the first job's output (JPEG q95 on the wire)
        masks = [data_uri_image(p.input["mask"]).tobytes() for p in (first_job, second_job)]
        assert masks[0] == masks[1]  # no region given: the same mask is reused
        assert not h.errors


# ------------------------------------------------------------------------------ Discord-side trouble


async def test_job_outliving_its_token_is_delivered_through_the_channel(make_bot) -> None:
    async with FakeReplicate(duration=0.8, honour_wait=False) as fake:
        bot: FillBot = make_bot(**replicate_env(fake))
        async with running(bot) as h:
            sent = await start_fill(h)
            reply_id = (await wait_running(h, sent)).id
            h.fake.expire_token(sent.token)
            message = await final_reply(h, sent)
            assert message.id == reply_id
            assert message.embeds[0]["title"].startswith("✅"), message.text
            assert message.attachments and message.attachments[0].filename.startswith("fill-")
            refused = [r for r in h.fake.requests_to("PATCH", "/api/v10/webhooks/*") if r.status == 401]
            assert refused, "the webhook route should have been tried and refused"
            via_channel = h.fake.requests_to("PATCH", f"/api/v10/channels/*/messages/{reply_id}")
            assert any(r.ok and r.files for r in via_channel)
            assert not h.errors


async def test_deleted_reply_stops_updates_quietly(make_bot, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with FakeReplicate(duration=30, honour_wait=False) as fake:
        bot: FillBot = make_bot(**replicate_env(fake))
        async with running(bot) as h:
            sent = await start_fill(h)
            reply = await wait_running(h, sent)
            job = job_id_of(reply)
            h.fake.delete_message(reply.id)
            mark = len(h.fake.requests)

            async def finished() -> bool:
                record = await bot.storage.get_job(job)
                return record is not None and record.finished_at is not None

            await h.wait_for(finished, timeout=10)
            later = [r for r in h.fake.requests[mark:] if r.message_id == reply.id or r.path.endswith("@original")]
            assert len(later) <= 1 and all(r.status == 404 for r in later), [(r.path, r.status) for r in later]
            assert fake.count("POST", "cancel") == 1  # nobody will see the result: stop paying for it
            assert not h.errors and not h.exceptions
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("cogs")]



# ------------------------------------------------------------------------------------- finishing touches


def mention_posts(h: DiscordHarness, user_id: int) -> list[RecordedRequest]:
    """Successful webhook follow-ups or channel messages that mention `user_id` with a ping allowed."""
    return [
        r for r in h.fake.requests
        if r.ok and r.method == "POST" and isinstance(r.json, dict) and f"<@{user_id}>" in (r.json.get("content") or "")
        and user_id in [int(u) for u in r.json.get("allowed_mentions", {}).get("users", [])]
    ]


async def test_a_long_job_mentions_its_member_once_with_a_link(
    make_bot, fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "NOTIFY_AFTER", 0.0)  # every job counts as long
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        sent = await start_fill(h, "a vase")
        message = await final_reply(h, sent)
        await h.wait_for(lambda: mention_posts(h, MEMBER.id), message="the mention")
        (ping,) = mention_posts(h, MEMBER.id)
        assert f"/{message.channel_id}/{message.id}" in ping.json["content"] and "is done" in ping.json["content"]
        assert ping.at >= max(r.at for r in h.fake.requests if r.message_id == message.id and r.method == "PATCH")
        assert not h.errors


async def test_a_quick_job_does_not_ping(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        await final_reply(h, await start_fill(h, "a vase"))
        await h.dispatch(h.slash("fill", {"prompt": "x", "provider": "replicate"}, attachments=fill_images()))
        await h.wait_for(lambda: len([m for m in h.fake.messages.values() if is_final(m)]) == 2)
        assert mention_posts(h, MEMBER.id) == []


async def test_a_canceled_job_does_not_ping(make_bot, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "NOTIFY_AFTER", 0.0)
    async with FakeReplicate(duration=30, honour_wait=False) as fake:
        bot: FillBot = make_bot(**replicate_env(fake))
        async with running(bot) as h:
            sent = await start_fill(h)
            reply = await wait_running(h, sent)
            await h.dispatch(h.component(f"fill:cancel:{job_id_of(reply)}", reply.id))
            final = await final_reply(h, sent)
            assert final.embeds[0]["title"].startswith("⏹"), final.text
            assert mention_posts(h, MEMBER.id) == []


async def test_the_result_keeps_a_before_picture_as_its_last_file(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(**replicate_env(fake_replicate))
    async with running(bot) as h:
        sent = await h.dispatch(h.slash("fill", {"prompt": "x", "provider": "replicate", "outputs": 2},
                                        attachments=fill_images()))
        message = await final_reply(h, sent)
        names = [a.filename for a in message.attachments]
        assert len(names) == 3 and names[-1] == "before.jpg", names
        before = decode(message.attachments[-1].data).convert("RGB")
        assert before.format is None and max(before.size) <= 320 and before.size[0] / before.size[1] == 640 / 480
        tinted = before.getpixel((before.width * 3 // 8, before.height * 3 // 8))  # inside MASK_BOX
        plain = before.getpixel((before.width - 5, 5))
        assert tinted[0] > tinted[1] + 40 and tinted[2] > tinted[1] + 40, (tinted, plain)
        assert "before.jpg" in str(message.embeds[0].get("thumbnail")), message.embeds[0]
        assert not any(i.endswith(":2") for i in message.custom_ids() if i.startswith("fill:reuse:"))
        assert not h.errors


async def test_the_job_reaches_its_provider_while_discord_is_slow_to_show_the_first_state(make_bot) -> None:
    """Discord takes its time answering the reply's first edit (the mask preview): the job is already at the
    provider meanwhile, and its own status edits come only after that first one is shown."""
    async with FakeReplicate(duration=0.2, honour_wait=False) as fake:
        bot: FillBot = make_bot(**replicate_env(fake))
        async with running(bot) as h:
            first_edit = h.fake.hold_next("PATCH", "/api/v10/webhooks/*/messages/@original")
            sent = await h.dispatch(
                h.slash("fill", {"prompt": "a red vase", "provider": "replicate"}, attachments=fill_images()),
                wait=False,
            )
            await h.wait_for(lambda: fake.count("POST", "create") == 1, message="the job reached the provider")
            original = h.original(sent)
            assert original is None or not original.embeds  # still "thinking": the first edit is held
            first_edit.set()
            message = await final_reply(h, sent)
            titles = status_titles(h, message.id)
            assert titles[0].startswith("⏳ Queued") and titles[-1].startswith("✅"), titles
            assert not h.errors
