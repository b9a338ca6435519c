"""The painter page in a real headless Chromium (the system browser, see tests/web/browser.py), against the real
bot with its web side on a real port and the fake Discord API: strokes drawn with mouse events become the mask
the page sends (white where the brush went, black elsewhere, at the picture's size), undo/invert/clear do what
they say, refused links show a clear page, and the job the page starts completes in the channel."""

from __future__ import annotations

import io
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.async_api import Page, expect

from bot.app import FillBot, create_bot
from bot.web.painter import PaintTicket
from tests.discord.conftest import decode, job_id_of, photo, running, settings_for
from tests.discord.test_paint import OTHER, channel_reply, painter_link, web_env
from tests.fakes.discord_harness import DiscordHarness
from tests.web.browser import chromium, require_browser

pytestmark = pytest.mark.timeout(90)

WIDTH, HEIGHT = 960, 720  # not square, so a mix-up of the axes shows
BRUSH = 40  # the page's default brush size, in CSS pixels
Point = tuple[float, float]


@pytest.fixture
def make_bot(tmp_path: Path) -> Callable[..., FillBot]:
    require_browser()
    return lambda **env: create_bot(settings_for(tmp_path, **web_env(**env)), edit_interval=0.05)


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        tab = await context.new_page()
        yield tab
        await context.close()


async def link_for(h: DiscordHarness, prompt: str = "a boat") -> str:
    sent = await h.dispatch(h.slash("fill", {"prompt": prompt},
                                    attachments={"image": ("photo.png", photo(WIDTH, HEIGHT), "image/png")}))
    return await painter_link(h, sent)


class Canvas:
    """Where the mask canvas sits on the page, to turn page points into picture pixels."""

    def __init__(self, x: float, y: float, width: float, height: float) -> None:
        self.x, self.y, self.width, self.height = x, y, width, height

    @property
    def scale(self) -> float:
        return WIDTH / self.width

    def at(self, fx: float, fy: float) -> Point:
        """The page point at a fraction of the canvas, rounded to whole CSS pixels as a mouse would be."""
        return round(self.x + fx * self.width), round(self.y + fy * self.height)

    def picture(self, point: Point) -> Point:
        return (point[0] - self.x) * WIDTH / self.width, (point[1] - self.y) * HEIGHT / self.height


async def open_painter(page: Page, url: str) -> Canvas:
    answer = await page.goto(url)
    assert answer is not None and answer.status == 200
    await page.wait_for_function(f"() => document.getElementById('mask').width === {WIDTH}")
    box = await page.locator("#mask").bounding_box()
    assert box is not None
    return Canvas(box["x"], box["y"], box["width"], box["height"])


async def stroke(page: Page, *points: Point) -> None:
    await page.mouse.move(*points[0])
    await page.mouse.down()
    for point in points[1:]:
        await page.mouse.move(*point, steps=8)
    await page.mouse.up()


def brush_area(canvas: Canvas, points: list[Point]) -> np.ndarray:
    """Distance of every picture pixel's centre to the stroke's path, in picture pixels."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + 0.5
    nearest = np.full((HEIGHT, WIDTH), np.inf)
    path = [canvas.picture(p) for p in points]
    for (ax, ay), (bx, by) in zip(path, path[1:] or path, strict=False):
        dx, dy = bx - ax, by - ay
        length = dx * dx + dy * dy
        t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / length, 0, 1) if length else np.zeros_like(xs)
        nearest = np.minimum(nearest, np.hypot(xs - (ax + t * dx), ys - (ay + t * dy)))
    return nearest


def assert_mask(mask: Image.Image, canvas: Canvas, path: list[Point], *, inverted: bool = False) -> None:
    """White within the brush's reach, black beyond it; a band of a few pixels at the edge (two CSS pixels of
    rounding, antialiasing) may be either."""
    assert mask.size == (WIDTH, HEIGHT)
    pixels = np.asarray(mask.convert("L"))
    assert set(np.unique(pixels)) <= {0, 255}, "the page sends a pure black-and-white mask"
    distance, radius = brush_area(canvas, path), BRUSH * canvas.scale / 2
    tolerance = max(3.0, 2 * canvas.scale)
    inside, outside = distance < radius - tolerance, distance > radius + tolerance
    painted, kept = (0, 255) if inverted else (255, 0)
    assert inside.sum() > 1000 and (pixels[inside] == painted).all(), "a pixel under the stroke is not painted"
    assert (pixels[outside] == kept).all(), "a pixel away from the stroke is painted"


def masks_sent(bot: FillBot) -> list[bytes]:
    """Every mask the page's POSTs delivered to the Discord side, recorded on the way through (the browser's
    view of a FormData body holding a Blob is empty, so it is read where the server hands it on)."""
    assert bot.web is not None and bot.web.painter.starter is not None
    painter, start = bot.web.painter, bot.web.painter.starter
    seen: list[bytes] = []

    async def recording(ticket: PaintTicket, mask: bytes, prompt: str) -> str:
        seen.append(mask)
        return await start(ticket, mask, prompt)

    painter.starter = recording
    return seen


async def send(page: Page) -> str:
    """Press Fill; what the page then says."""
    await page.click("#fill")
    await expect(page.locator("#status")).not_to_have_text(re.compile("Sending|Paint over"), timeout=15_000)
    return await page.locator("#status").inner_text()


def image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


async def test_strokes_become_the_mask_undo_works_and_the_job_completes(make_bot, page: Page) -> None:
    bot: FillBot = make_bot()
    async with running(bot) as h:
        sent = masks_sent(bot)
        url = await link_for(h)
        canvas = await open_painter(page, url)
        first = [canvas.at(0.2, 0.3), canvas.at(0.6, 0.35), canvas.at(0.5, 0.7)]
        await stroke(page, *first)
        await stroke(page, canvas.at(0.85, 0.1), canvas.at(0.9, 0.9))
        await page.click("#undo")  # the second stroke goes
        await page.fill("#prompt", "a sailing boat")

        said = await send(page)
        (mask,) = sent
        assert_mask(image(mask), canvas, first)
        assert said.startswith("Your job has started"), said
        await expect(page.locator("#fill")).to_be_disabled()

        reply = await channel_reply(h)
        assert reply.embeds[0]["title"].startswith("✅"), reply.text
        assert reply.embeds[0]["description"] == "a sailing boat"
        assert decode(reply.attachments[0].data).size == (WIDTH, HEIGHT)
        record = await bot.storage.get_job(job_id_of(reply))
        assert record is not None and record.reply_message_id == reply.id
        assert not h.errors


async def test_invert_and_clear_and_an_empty_mask_is_refused_on_the_page(make_bot, page: Page) -> None:
    bot: FillBot = make_bot()
    async with running(bot) as h:
        sent = masks_sent(bot)
        url = await link_for(h, "a lake")
        canvas = await open_painter(page, url)
        path = [canvas.at(0.3, 0.5), canvas.at(0.7, 0.5)]
        await stroke(page, *path)
        await page.click("#invert")
        await page.click("#clear")
        said = await send(page)
        assert np.asarray(image(sent[0]).convert("L")).max() == 0  # clear leaves nothing painted
        assert "Your job has started" not in said and "mask" in said.lower(), said
        await expect(page.locator("#fill")).to_be_enabled()  # a refusal keeps the link usable

        await page.click("#undo")  # back to the inverted stroke
        said = await send(page)
        assert_mask(image(sent[1]), canvas, path, inverted=True)
        assert said.startswith("Your job has started"), said
        reply = await channel_reply(h)
        assert reply.embeds[0]["title"].startswith("✅"), reply.text


async def test_reused_expired_and_foreign_links_get_a_clear_page(make_bot, page: Page) -> None:
    bot: FillBot = make_bot()
    async with running(bot) as h:
        assert bot.web is not None
        store = bot.web.painter.store
        url = await link_for(h)
        canvas = await open_painter(page, url)
        second_tab = await page.context.new_page()
        await open_painter(second_tab, url)  # the same link open twice: only one send may start a job
        await stroke(page, canvas.at(0.4, 0.4), canvas.at(0.6, 0.6))
        said = await send(page)
        assert said.startswith("Your job has started"), said
        await stroke(second_tab, canvas.at(0.4, 0.4), canvas.at(0.6, 0.6))
        said = await send(second_tab)
        assert "already used or has expired" in said
        reused = await page.goto(url)
        assert reused is not None and reused.status == 410
        await expect(page.locator("h1")).to_have_text("Link expired")
        await expect(page.locator("#message")).to_contain_text("Ask the bot for a new one")
        first = await channel_reply(h)

        late = await link_for(h)
        await open_painter(page, late)
        await stroke(page, canvas.at(0.4, 0.4), canvas.at(0.6, 0.6))
        store.clock = lambda: time.time() + store.ttl  # the link's 15 minutes pass while the page is open
        said = await send(page)
        assert "already used or has expired" in said
        expired = await page.goto(late)
        assert expired is not None and expired.status == 410
        await expect(page.locator("#message")).to_contain_text("links last 15 minutes")

        # Links are sent privately and are the member's own: another member gets none for this member's
        # result, and a made-up or altered token is no link at all.
        refused = await h.dispatch(h.component(f"fill:paint:{job_id_of(first)}:0", first.id, user=OTHER))
        assert "only the person who started this job" in await h.wait_for(lambda: h.ephemeral_text(refused))
        forged = await page.goto(url[:-4] + "AAAA")
        assert forged is not None and forged.status == 404
        await expect(page.locator("h1")).to_have_text("Unknown link")
        jobs = await bot.storage.count_jobs(since=0)
        assert jobs == 1
        assert not h.errors
