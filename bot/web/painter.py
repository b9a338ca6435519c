"""The mask painter: a page on PUBLIC_URL where a member paints the area to repaint, because Discord cannot.

A link is a random token kept in memory with what the Discord side needs to start the job (member, channel,
picture, options). It is made only for the member who asked (privately), used once, and dies after
`TOKEN_TTL`; the posted mask is capped here and validated like any mask when the job is prepared. The page is
one HTML file plus a script and a stylesheet served from this package, under a strict Content-Security-Policy.
"""

from __future__ import annotations

import html
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from importlib import resources

from aiohttp import BodyPartReader, web

from bot.errors import UserError
from bot.params import MAX_PROMPT_CHARS

log = logging.getLogger(__name__)

TOKEN_TTL = 15 * 60  # seconds a painter link works
MAX_MASK_BYTES = 10 * 1024 * 1024  # the whole POST body: the mask PNG and the prompt
MAX_TICKETS = 500  # live links at once
MAX_HELD_BYTES = 512 * 1024 * 1024  # pictures held for live links, together
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer"}  # the token is in the URL: never send it on as a referrer
_STATIC = {"painter.js": "text/javascript", "painter.css": "text/css"}


@dataclass(frozen=True)
class PaintTicket:
    """What one painter link was made for; `plan` is the Discord side's own description of the job."""

    user_id: int
    guild_id: int | None
    channel_id: int
    picture: bytes
    content_type: str
    prompt: str
    plan: object
    expires_at: float
    used: bool = False


Starter = Callable[[PaintTicket, bytes, str], Awaitable[str]]


class PaintStore:
    """Tokens in memory: a restart forgets them, which only costs the member a new link."""

    def __init__(
        self, *, ttl: float = TOKEN_TTL, clock: Callable[[], float] = time.time, max_bytes: int = MAX_HELD_BYTES
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self.max_bytes = max_bytes
        self._tickets: dict[str, PaintTicket] = {}

    def issue(self, *, user_id: int, guild_id: int | None, channel_id: int, picture: bytes, content_type: str,
              prompt: str, plan: object) -> str:
        self._purge()
        held = sum(len(ticket.picture) for ticket in self._tickets.values())
        if len(self._tickets) >= MAX_TICKETS or held + len(picture) > self.max_bytes:
            raise UserError("Too many painter links are open right now; please try again in a few minutes.")
        token = secrets.token_urlsafe(24)
        self._tickets[token] = PaintTicket(user_id, guild_id, channel_id, picture, content_type, prompt, plan,
                                           self.clock() + self.ttl)
        return token

    def look(self, token: str) -> PaintTicket | int:
        """The live ticket, or the HTTP status that explains why not (404 unknown, 410 used or expired)."""
        ticket = self._tickets.get(token)
        if ticket is None:
            return 404
        if ticket.used or self.clock() >= ticket.expires_at:
            return 410
        return ticket

    def take(self, token: str) -> PaintTicket | int:
        """Claim a ticket for one POST, so two sends of the same link cannot start two jobs."""
        found = self.look(token)
        if isinstance(found, PaintTicket):
            self._tickets[token] = replace(found, used=True, picture=b"")
        return found

    def give_back(self, token: str, ticket: PaintTicket) -> None:
        """A refused job (limits, blocked terms, a bad mask) leaves the link usable for another try."""
        if token in self._tickets:
            self._tickets[token] = ticket

    def _purge(self) -> None:
        # Used and expired tokens are kept one more TTL, so they answer "expired" rather than "unknown".
        now = self.clock()
        for token, ticket in list(self._tickets.items()):
            if now >= ticket.expires_at + self.ttl:
                del self._tickets[token]
            elif now >= ticket.expires_at and ticket.picture:
                self._tickets[token] = replace(ticket, picture=b"")  # an expired link needs no picture


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f'<link rel="stylesheet" href="/paint-static/painter.css"></head><body>{body}</body></html>')
    return web.Response(text=text, status=status, content_type="text/html", headers=_HEADERS)


def message_page(title: str, message: str, status: int) -> web.Response:
    """A plain page with one message (errors and the "started" answer); the painter script shows its text."""
    return _page(title, f'<main class="message"><h1>{html.escape(title)}</h1>'
                        f'<p id="message">{html.escape(message)}</p></main>', status)


_REFUSED = {404: ("Unknown link", "This painter link does not exist. Ask the bot for a new one."),
            410: ("Link expired", "This painter link was already used or has expired (links last 15 minutes and "
                                  "work once). Ask the bot for a new one.")}


def _refused(status: int) -> web.Response:
    title, message = _REFUSED[status]
    return message_page(title, message, status)


class Painter:
    """The painter's routes. `starter` is set by the Discord side; without it the page cannot start jobs."""

    def __init__(self, store: PaintStore | None = None, *, max_body: int = MAX_MASK_BYTES) -> None:
        self.store = store or PaintStore()
        self.max_body = max_body
        self.starter: Starter | None = None
        folder = resources.files("bot.web") / "static"
        self._static = {name: (folder / name).read_bytes() for name in _STATIC}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/paint-static/{name}", self._asset)
        app.router.add_get("/paint/{token}", self._page)
        app.router.add_get("/paint/{token}/image", self._image)
        app.router.add_post("/paint/{token}", self._post)

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=_STATIC[name], headers=_HEADERS)

    async def _page(self, request: web.Request) -> web.Response:
        found = self.store.look(request.match_info["token"])
        if not isinstance(found, PaintTicket):
            return _refused(found)
        prompt = html.escape(found.prompt)
        body = f"""<main id="painter">
<div class="tools">
 <button type="button" id="brush" class="on" aria-pressed="true">Brush</button>
 <button type="button" id="eraser" aria-pressed="false">Eraser</button>
 <label>Size <input type="range" id="size" min="4" max="200" value="40"></label>
 <button type="button" id="undo">Undo</button>
 <button type="button" id="clear">Clear</button>
 <button type="button" id="invert">Invert</button>
 <button type="button" id="view" aria-pressed="false">Mask view</button>
</div>
<div id="stage"><img id="picture" src="{html.escape(request.path)}/image" alt="Your picture">
<canvas id="mask"></canvas></div>
<form id="send" class="send">
 <input id="prompt" name="prompt" maxlength="{MAX_PROMPT_CHARS}" value="{prompt}"
  placeholder="What should appear in the painted area?">
 <button type="submit" id="fill">Fill</button>
</form>
<p id="status" role="status">Paint over what should change, then press Fill.</p>
</main><script src="/paint-static/painter.js"></script>"""
        return _page("Paint the area to fill", body)

    async def _image(self, request: web.Request) -> web.Response:
        found = self.store.look(request.match_info["token"])
        if not isinstance(found, PaintTicket):
            return _refused(found)
        return web.Response(body=found.picture, content_type=found.content_type, headers=_HEADERS)

    async def _post(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        found = self.store.look(token)
        if not isinstance(found, PaintTicket):
            return _refused(found)
        if request.content_length is not None and request.content_length > self.max_body:
            return self._too_large()
        try:
            fields = await self._read_form(request)
        except _TooLarge:
            return self._too_large()
        except ValueError:
            return message_page("Nothing received", "The page did not send a mask. Paint an area and press Fill.",
                                400)
        mask = fields.get("mask")
        prompt = fields.get("prompt", b"").decode("utf-8", "replace").strip()
        if not mask:
            return message_page("Nothing received", "The page did not send a mask. Paint an area and press Fill.",
                                400)
        if len(prompt) > MAX_PROMPT_CHARS:
            return message_page("Prompt too long", f"The prompt is limited to {MAX_PROMPT_CHARS} characters.", 400)
        if self.starter is None:
            return message_page("Not available", "The bot is not ready to start jobs; try again shortly.", 503)
        ticket = self.store.take(token)
        if not isinstance(ticket, PaintTicket):  # another send of this link won the race
            return _refused(ticket)
        try:
            answer = await self.starter(ticket, mask, prompt)
        except UserError as exc:
            self.store.give_back(token, ticket)
            return message_page("Not started", exc.message, 400)
        except Exception:
            self.store.give_back(token, ticket)
            log.exception("painter: starting a job for member %s failed", ticket.user_id)
            return message_page("Something went wrong", "The job could not be started; please try again.", 500)
        return message_page("Started", answer, 200)

    async def _read_form(self, request: web.Request) -> dict[str, bytes]:
        """The multipart fields, refusing as soon as the body passes the cap (a lying Content-Length too)."""
        if request.content_type != "multipart/form-data":
            raise ValueError("not a form with a file")
        reader = await request.multipart()
        fields: dict[str, bytes] = {}
        total = 0
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name not in ("mask", "prompt"):
                raise ValueError("unexpected field")
            chunks: list[bytes] = []
            while chunk := await part.read_chunk(64 * 1024):
                total += len(chunk)
                if total > self.max_body:
                    raise _TooLarge()
                chunks.append(chunk)
            fields[part.name] = b"".join(chunks)
        return fields

    def _too_large(self) -> web.Response:
        limit = self.max_body // (1024 * 1024)
        return message_page("Mask too large", f"The mask is larger than {limit} MB; it cannot be used.", 413)


class _TooLarge(Exception):
    """The POST body passed the cap while being read."""
