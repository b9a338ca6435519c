"""Hostile and odd uploads through /fill: each is refused with a clear ephemeral message before any provider
request (the public "thinking" reply removed when the refusal came after the defer), or accepted with a notice.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from bot.app import FillBot
from tests.discord.conftest import is_final, mask_for, photo, running
from tests.fakes.bfl_server import FakeBFL
from tests.fakes.discord_api import FakeMessage
from tests.fakes.discord_harness import MEMBER, DiscordHarness, Dispatched
from tests.fakes.replicate_server import FakeReplicate

MiB = 1024 * 1024
Attachment = tuple[str, bytes, str]


# ----------------------------------------------------------------------------------------- file makers


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`x`height` (a decompression bomb's calling card)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


def png_text_bomb() -> bytes:
    """A valid 64x64 PNG with a zTXt chunk that inflates to 16 MB (Pillow refuses text chunks over 1 MB)."""
    raw = encode(Image.new("RGB", (64, 64), (10, 20, 30)))
    bomb = _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (16 * MiB), 9))
    return raw[:33] + bomb + raw[33:]  # right after IHDR


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (320, 240), colour) for colour in ((220, 20, 20), (20, 20, 220), (20, 220, 20))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="480"><rect width="640" height="480"/></svg>'
ZIP_SECRET = b"TOP-SECRET-PAYLOAD-0123456789"


def png_with_zip() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("secret.txt", ZIP_SECRET * 20)
    return photo() + archive.getvalue()


# ----------------------------------------------------------------------------------------------- helpers


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def image(data: bytes, name: str = "photo.png", ctype: str = "image/png") -> dict[str, Attachment]:
    return {"image": (name, data, ctype)}


def with_mask(data: bytes, mask: bytes, ctype: str = "image/png") -> dict[str, Attachment]:
    return {"image": ("photo.png", data, "image/png"), "mask": ("mask.png", mask, ctype)}


def bot_messages(h: DiscordHarness) -> list[FakeMessage]:
    """What everyone in the channel sees from the bot."""
    return [m for m in h.fake.messages_in(h.general_channel_id) if m.author.get("id") == h.fake.bot_user["id"]]


async def refused(h: DiscordHarness, sent: Dispatched) -> str:
    """The ephemeral refusal; asserts nothing public is left behind (no thinking reply, no message)."""
    text = await h.wait_for(lambda: h.ephemeral_text(sent), timeout=10, message="an ephemeral refusal")
    original = h.original(sent)
    assert original is None or original.ephemeral or original.deleted
    assert not bot_messages(h), [m.text for m in bot_messages(h)]
    return text


def deferred_then_removed(h: DiscordHarness, sent: Dispatched) -> bool:
    """True when the bot deferred publicly ("thinking") and then deleted that reply."""
    responses = h.responses(sent)
    deferred = responses[0].callback_type == 5 and not responses[0].ephemeral
    deleted = any(r.method == "DELETE" and r.path.endswith("/messages/@original") and r.ok for r in responses)
    original = h.original(sent)
    return deferred and deleted and original is not None and original.deleted


async def delivered(h: DiscordHarness, sent: Dispatched) -> FakeMessage:
    await h.wait_for(lambda: is_final(h.original(sent)), timeout=15, message="final reply")
    message = h.original(sent)
    assert message is not None and message.embeds[0]["title"].startswith("✅"), message and message.text
    return message


def notes(message: FakeMessage) -> str:
    return next((f["value"] for f in message.embeds[0].get("fields", []) if f["name"] == "Notes"), "")


def sent_image(fake: FakeReplicate, key: str = "image") -> Image.Image:
    (prediction,) = fake.predictions.values()
    _, _, payload = prediction.input[key].partition(",")
    return decode(base64.b64decode(payload))


async def no_job_left(bot: FillBot) -> bool:
    return await bot.storage.recent_jobs(MEMBER.id) == []


# ------------------------------------------------------------------------------------------ refusals


@dataclass(frozen=True)
class Case:
    attachments: Callable[[], dict[str, Attachment]]
    phrases: tuple[str, ...]
    after_defer: bool  # False: refused from the attachment's metadata, before acknowledging
    options: tuple[tuple[str, str], ...] = ()


CASES: dict[str, Case] = {
    "text-named-png": Case(lambda: image(b"this is not a picture, just text\n" * 4),
                           ("not a PNG, JPEG, WebP or GIF", "looks like text"), True),
    "text-content-type": Case(lambda: image(b"hello", "notes.txt", "text/plain"),
                              ("`text/plain`", "PNG, JPEG, WebP or GIF"), False),
    "empty": Case(lambda: image(b""), ("empty", "0 bytes"), True),
    "truncated-png": Case(lambda: image(encode(noise(640, 480))[:4000]), ("damaged or incomplete",), True),
    "truncated-jpeg": Case(lambda: image(encode(noise(640, 480), "JPEG")[:20000], "p.jpg", "image/jpeg"),
                           ("damaged or incomplete",), True),
    "decompression-bomb": Case(lambda: image(png_claiming(40000, 40000)),
                               ("1,600 megapixels", "limit is 40 megapixels"), True),
    "text-chunk-bomb": Case(lambda: image(png_text_bomb()), ("oversized embedded text", "refused"), True),
    "1x1": Case(lambda: image(encode(Image.new("RGB", (1, 1)))), ("1x1", "at least 32 pixels"), True),
    "10000x100": Case(lambda: image(encode(Image.new("RGB", (10000, 100)))),
                      ("10000x100", "aspect ratio", "8 times"), True),
    "svg-named-png": Case(lambda: image(SVG), ("looks like an SVG drawing",), True),
    "svg-content-type": Case(lambda: image(SVG, "drawing.svg", "image/svg+xml"),
                             ("`image/svg+xml`", "not a picture this bot accepts"), False),
    "mask-selects-nothing": Case(lambda: with_mask(photo(), encode(Image.new("L", (640, 480), 0))),
                                 ("selects nothing", "invert"), True),
    "opaque-without-mask": Case(lambda: image(photo()),
                                ("mask", "transparent holes", "`region`", "x,y,w,h"), True),
    "mask-not-an-image": Case(lambda: with_mask(photo(), b"%PDF-1.7\n...not a mask", "image/png"),
                              ("The mask", "not a PNG, JPEG, WebP or GIF", "PDF"), True),
    "bad-region": Case(lambda: image(photo()), ("is not a region", "x,y,w,h"), True,
                       (("region", "left half"),)),
}


@pytest.mark.parametrize("strict_followups", [False, True], ids=["followups-outlive", "followups-need-original"])
@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_upload_is_refused_before_any_provider_request(
    make_bot, fake_replicate: FakeReplicate, name: str, strict_followups: bool
) -> None:
    """Whichever way Discord treats follow-ups once the public reply is deleted, the refusal arrives."""
    case = CASES[name]
    bot: FillBot = make_bot(REPLICATE_API_TOKEN=fake_replicate.token, REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        h.fake.followups_need_original = strict_followups
        options = {"prompt": "a cat", "provider": "replicate", **dict(case.options)}
        sent = await h.dispatch(h.slash("fill", options, attachments=case.attachments()), timeout=15)
        text = await refused(h, sent)
        for phrase in case.phrases:
            assert phrase in text, (phrase, text)
        assert fake_replicate.requests == []
        if case.after_defer:
            assert deferred_then_removed(h, sent), [(r.method, r.path, r.callback_type) for r in h.responses(sent)]
        else:
            (answer,) = h.responses(sent)
            assert answer.callback_type == 4 and answer.ephemeral
        assert await no_job_left(bot)
        assert not h.errors


async def test_file_over_the_size_cap_is_refused_without_downloading_it(make_bot, fake_replicate) -> None:
    bot: FillBot = make_bot(REPLICATE_API_TOKEN=fake_replicate.token, REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        big = photo() + b"\0" * (20 * MiB)
        sent = await h.dispatch(h.slash("fill", {"prompt": "x", "provider": "replicate"}, attachments=with_mask(
            big, mask_for())))
        text = await refused(h, sent)
        assert "the limit is 20 MB" in text, text
        shown = re.search(r"`photo\.png` is ([\d.]+) MB", text)
        assert shown is not None and float(shown.group(1)) > 20, text  # over the limit never reads as equal
        (answer,) = h.responses(sent)
        assert answer.callback_type == 4 and answer.ephemeral  # refused before acknowledging: nothing public
        assert h.fake.requests_to("GET", "*attachments/*") == []  # never downloaded
        assert fake_replicate.requests == []
        assert await no_job_left(bot)


async def test_oversized_mask_is_refused_from_metadata(make_bot, fake_replicate) -> None:
    bot: FillBot = make_bot(MAX_ATTACHMENT_BYTES=str(256 * 1024), REPLICATE_API_TOKEN=fake_replicate.token,
                            REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        mask = encode(noise(640, 480).convert("L"))
        assert len(mask) > 256 * 1024
        sent = await h.dispatch(h.slash("fill", {"prompt": "x", "provider": "replicate"},
                                        attachments=with_mask(photo(), mask)))
        text = await refused(h, sent)
        found = re.search(r"The mask `mask\.png` is (\d+) KB; the limit is 256 KB", text)
        assert found is not None and int(found.group(1)) > 256, text
        assert h.fake.requests_to("GET", "*attachments/*") == []
        assert fake_replicate.requests == []


# -------------------------------------------------------------------------------- accepted with notices


async def test_animated_gif_uses_its_first_frame_with_a_notice(make_bot, fake_replicate: FakeReplicate) -> None:
    bot: FillBot = make_bot(REPLICATE_API_TOKEN=fake_replicate.token, REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        sent = await h.dispatch(h.slash("fill", {"prompt": "a hat", "provider": "replicate"}, attachments={
            "image": ("clip.gif", animated_gif(), "image/gif"), "mask": ("mask.png", mask_for(320, 240), "image/png"),
        }))
        message = await delivered(h, sent)
        assert "Animated GIF: only the first frame is used." in notes(message)
        r, g, b = (float(v) for v in np.asarray(sent_image(fake_replicate).convert("RGB")).mean(axis=(0, 1)))
        assert r > 150 and g < 80 and b < 80  # the red first frame, not the blue or green ones
        assert decode(message.attachments[0].data).size == (320, 240)
        assert not h.errors


async def test_mask_selecting_everything_is_accepted_with_a_notice(make_bot, fake_replicate) -> None:
    bot: FillBot = make_bot(REPLICATE_API_TOKEN=fake_replicate.token, REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        white = encode(Image.new("L", (640, 480), 255))
        sent = await h.dispatch(h.slash("fill", {"prompt": "a beach", "provider": "replicate"},
                                        attachments=with_mask(photo(), white)))
        message = await delivered(h, sent)
        assert "covers the whole picture" in notes(message)
        assert sent_image(fake_replicate, "mask").convert("L").getextrema() == (255, 255)


async def test_fully_transparent_picture_without_mask_is_accepted_with_a_notice(make_bot, fake_replicate) -> None:
    bot: FillBot = make_bot(REPLICATE_API_TOKEN=fake_replicate.token, REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        clear = encode(Image.new("RGBA", (640, 480), (0, 0, 0, 0)))
        sent = await h.dispatch(h.slash("fill", {"prompt": "a forest", "provider": "replicate"},
                                        attachments=image(clear)))
        message = await delivered(h, sent)
        assert "covers the whole picture" in notes(message)
        assert sent_image(fake_replicate, "mask").convert("L").getextrema() == (255, 255)
        assert decode(message.attachments[0].data).size == (640, 480)


async def test_png_with_a_zip_appended_is_accepted_but_the_zip_never_leaves(make_bot) -> None:
    async with FakeBFL(duration=0.1) as fake:
        bot: FillBot = make_bot(BFL_API_KEY=fake.key, BFL_BASE_URL=fake.base_url)
        async with running(bot) as h:
            upload = png_with_zip()
            assert ZIP_SECRET in upload
            sent = await h.dispatch(h.slash("fill", {"prompt": "x", "provider": "bfl"},
                                            attachments=with_mask(upload, mask_for())))
            message = await delivered(h, sent)
            (submit,) = [r for r in fake.requests_to("api") if r.method == "POST"]
            body = submit.body
            assert isinstance(body, dict)
            wire = json.dumps(body).encode()
            sent_bytes = base64.b64decode(body["image"])
            for blob in (wire, sent_bytes, base64.b64decode(body["mask"])):
                assert ZIP_SECRET not in blob and b"PK\x03\x04" not in blob
            assert decode(sent_bytes).size == (640, 480)
            assert all(ZIP_SECRET not in a.data for a in message.attachments)
            assert not h.errors


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
async def test_non_finite_guidance_is_refused_naming_the_option(make_bot, fake_replicate, value: float) -> None:
    """discord.py's range check lets NaN through (it compares false with both ends); the spec check does not."""
    bot: FillBot = make_bot(REPLICATE_API_TOKEN=fake_replicate.token, REPLICATE_BASE_URL=fake_replicate.base_url)
    async with running(bot) as h:
        sent = await h.dispatch(h.slash("fill", {"prompt": "a vase", "provider": "replicate", "guidance": value},
                                        attachments=with_mask(photo(), mask_for())))
        text = await refused(h, sent)
        assert "`guidance`" in text and "0 to 100" in text, text
        assert fake_replicate.count("POST", "create") == 0
        assert not h.errors
