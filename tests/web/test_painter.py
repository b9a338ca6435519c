"""The painter page and its links on a real aiohttp server (aiohttp's test client): what the page serves and
under which policy, and the link rules (single use, expiry, bad and oversized masks leave the link usable)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.errors import UserError
from bot.web.painter import CSP, Painter, PaintStore, PaintTicket
from tests.discord.conftest import mask_for, photo


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Started:
    """The Discord side's starter as the page sees it: records what it was given, refuses when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[PaintTicket, bytes, str]] = []
        self.refuse: str | None = None

    async def __call__(self, ticket: PaintTicket, mask: bytes, prompt: str) -> str:
        if self.refuse is not None:
            raise UserError(self.refuse)
        self.calls.append((ticket, mask, prompt))
        return "Your job has started in the channel."


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(clock: Clock) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Painter]]:
    painter = Painter(PaintStore(clock=clock), max_body=1024 * 1024)
    app = web.Application()
    painter.add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, painter


def issue(painter: Painter, prompt: str = "a red <b>boat</b>") -> str:
    return painter.store.issue(user_id=42, guild_id=7, channel_id=9, picture=photo(), content_type="image/png",
                               prompt=prompt, plan=None)


def form(mask: bytes | None, prompt: str = "a boat") -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("prompt", prompt)
    if mask is not None:
        data.add_field("mask", mask, filename="mask.png", content_type="image/png")
    return data


async def test_page_image_and_assets_are_served_under_a_strict_policy(client: tuple[TestClient, Painter]) -> None:
    http, painter = client
    token = issue(painter)
    page = await http.get(f"/paint/{token}")
    text = await page.text()
    assert page.status == 200 and page.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "'unsafe-inline'" not in CSP
    assert '<script src="/paint-static/painter.js"></script>' in text and "<script>" not in text
    assert "a red &lt;b&gt;boat&lt;/b&gt;" in text  # the stored prompt is escaped, never markup
    for control in ("brush", "eraser", "size", "undo", "clear", "invert", "view", "prompt", "fill"):
        assert f'id="{control}"' in text
    assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["Cache-Control"] == "no-store"
    image = await http.get(f"/paint/{token}/image")
    assert image.status == 200 and await image.read() == photo() and image.content_type == "image/png"
    script = await http.get("/paint-static/painter.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert "pointerdown" in await script.text()
    assert (await http.get("/paint-static/painter.css")).status == 200
    assert (await http.get("/paint-static/other.js")).status == 404


async def test_a_link_works_once(client: tuple[TestClient, Painter]) -> None:
    http, painter = client
    started = Started()
    painter.starter = started
    token = issue(painter)
    answer = await http.post(f"/paint/{token}", data=form(mask_for(), "  a boat "))
    assert answer.status == 200 and "started in the channel" in await answer.text()
    (ticket, mask, prompt), = started.calls
    assert (ticket.user_id, ticket.channel_id, mask, prompt) == (42, 9, mask_for(), "a boat")
    again = await http.post(f"/paint/{token}", data=form(mask_for()))
    assert again.status == 410 and "already used or has expired" in await again.text()
    assert (await http.get(f"/paint/{token}")).status == 410
    assert (await http.get(f"/paint/{token}/image")).status == 410
    assert len(started.calls) == 1


async def test_links_expire_and_unknown_links_are_refused(client: tuple[TestClient, Painter], clock: Clock) -> None:
    http, painter = client
    painter.starter = Started()
    token = issue(painter)
    clock.now += painter.store.ttl
    assert (await http.get(f"/paint/{token}")).status == 410
    assert (await http.post(f"/paint/{token}", data=form(mask_for()))).status == 410
    unknown = await http.get("/paint/not-a-token")
    assert unknown.status == 404 and "does not exist" in await unknown.text()
    clock.now += painter.store.ttl
    issue(painter)  # issuing forgets links long dead
    assert (await http.get(f"/paint/{token}")).status == 404


async def test_missing_oversized_and_refused_masks_leave_the_link_usable(client: tuple[TestClient, Painter]) -> None:
    http, painter = client
    started = Started()
    painter.starter = started
    token = issue(painter)
    empty = await http.post(f"/paint/{token}", data=form(None))
    assert empty.status == 400 and "did not send a mask" in await empty.text()
    huge = await http.post(f"/paint/{token}", data=form(b"\0" * (painter.max_body + 1)))
    assert huge.status == 413 and "larger than 1 MB" in await huge.text()
    chunked = await http.post(f"/paint/{token}", data=_chunks(painter.max_body + 1),
                              headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert chunked.status == 413  # no Content-Length: the cap holds while reading
    started.refuse = "The mask is not a picture."
    refused = await http.post(f"/paint/{token}", data=form(b"not a png"))
    assert refused.status == 400 and "The mask is not a picture." in await refused.text()
    started.refuse = None
    assert (await http.post(f"/paint/{token}", data=form(mask_for()))).status == 200
    assert len(started.calls) == 1


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b'--x\r\nContent-Disposition: form-data; name="mask"; filename="m.png"\r\n\r\n'
    for _ in range(0, size, 64 * 1024):
        yield b"\0" * (64 * 1024)
    yield b"\r\n--x--\r\n"


async def test_too_many_open_links_are_refused_politely(clock: Clock) -> None:
    store = PaintStore(clock=clock)
    for n in range(500):
        store.issue(user_id=n, guild_id=None, channel_id=1, picture=b"", content_type="image/png", prompt="", plan=None)
    with pytest.raises(UserError, match="Too many painter links"):
        store.issue(user_id=1, guild_id=None, channel_id=1, picture=b"", content_type="image/png", prompt="",
                    plan=None)


async def test_pictures_held_for_links_are_capped_and_freed_when_links_expire(clock: Clock) -> None:
    store = PaintStore(clock=clock, max_bytes=1000)
    store.issue(user_id=1, guild_id=None, channel_id=1, picture=b"x" * 600, content_type="image/png", prompt="",
                plan=None)
    with pytest.raises(UserError, match="Too many painter links"):
        store.issue(user_id=2, guild_id=None, channel_id=1, picture=b"x" * 600, content_type="image/png",
                    prompt="", plan=None)
    clock.now += store.ttl
    store.issue(user_id=2, guild_id=None, channel_id=1, picture=b"x" * 600, content_type="image/png", prompt="",
                plan=None)
