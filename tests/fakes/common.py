"""Building blocks for the fake provider servers: request log, fault injection, aiohttp plumbing, PNG helpers.

Faults are queued per endpoint (`submit`, `poll`, `download`) and consumed one per request, so a test says
"the next two polls fail with 500" and the third succeeds on its own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from PIL import Image, ImageOps

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FaultKind = Literal["status", "html", "truncated", "reset", "slow"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a fake server saw it. `server` names which fake host got it (api, poll, delivery...)."""

    server: str
    method: str
    path: str  # decoded
    raw_path: str  # as sent, percent-encoding intact
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: Any = None  # parsed JSON body, when there was one


@dataclass(frozen=True)
class Fault:
    """One injected failure. Build with the class methods."""

    kind: FaultKind
    status: int = 500
    body: Any = None
    retry_after: str | None = None
    delay: float = 0.0

    @classmethod
    def error(cls, status: int = 500, body: Any = None, *, retry_after: str | None = None) -> Fault:
        """A JSON error response (`body` defaults to a FastAPI-style detail)."""
        return cls("status", status=status, body=body, retry_after=retry_after)

    @classmethod
    def rate_limited(cls, retry_after: str | None = None, body: Any = None) -> Fault:
        return cls("status", status=429, body=body, retry_after=retry_after)

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """A gateway's HTML error page (Cloudflare style)."""
        return cls("html", status=status)

    @classmethod
    def truncated(cls) -> Fault:
        """200 with application/json whose body is cut off mid-way."""
        return cls("truncated", status=200)

    @classmethod
    def reset(cls) -> Fault:
        """Abort the TCP connection (RST) without any response."""
        return cls("reset")

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Answer normally, but only after `delay` seconds (use to trigger client timeouts)."""
        return cls("slow", delay=delay)


@dataclass
class Faults:
    """FIFO queues of faults, one queue per endpoint kind."""

    submit: list[Fault] = field(default_factory=list)
    poll: list[Fault] = field(default_factory=list)
    download: list[Fault] = field(default_factory=list)

    def take(self, endpoint: str) -> Fault | None:
        queue: list[Fault] = getattr(self, endpoint)
        return queue.pop(0) if queue else None


HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>"
)


async def apply_fault(request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
    """Turn a fault into a response (None: carry on normally, possibly after a delay)."""
    if fault is None:
        return None
    if fault.kind == "slow":
        await asyncio.sleep(fault.delay)
        return None
    if fault.kind == "reset":
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)  # never reaches the client
    if fault.kind == "html":
        return web.Response(status=fault.status, text=HTML_ERROR_PAGE, content_type="text/html")
    if fault.kind == "truncated":
        return web.Response(status=200, text='{"id": "abc", "status": "Pen', content_type="application/json")
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    body = fault.body if fault.body is not None else {"detail": _default_detail(fault.status)}
    return web.json_response(body, status=fault.status, headers=headers)


def _default_detail(status: int) -> str:
    return {
        402: "Insufficient credits",
        403: "Not authenticated - Invalid Authentication",
        429: "You have exceeded the number of active tasks",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }.get(status, "Error")


class Site:
    """One aiohttp application listening on 127.0.0.1:<free port>, logging every request."""

    def __init__(self, name: str, log: list[RecordedRequest], host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        self._log = log
        self._runner: web.AppRunner | None = None
        self.port = 0

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        self._log.append(
            RecordedRequest(
                server=self.name,
                method=request.method,
                path=request.path,
                raw_path=request.raw_path.split("?", 1)[0],
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        return await handler(request)

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def is_raw_base64(value: object) -> bool:
    """True for naked base64 (no data: prefix) that decodes."""
    if not isinstance(value, str) or not value or value.startswith("data:"):
        return False
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None


def make_png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 80, 20)) -> bytes:
    """A small solid-colour PNG (with a diagonal stripe so inversion is visible)."""
    img = Image.new("RGB", size, color)
    for i in range(min(size)):
        img.putpixel((i, i), (255, 255, 255))
    return encode_png(img)


def make_mask(size: tuple[int, int] = (64, 48)) -> bytes:
    """A black mask with a white rectangle in the middle (white = fill)."""
    img = Image.new("L", size, 0)
    w, h = size
    img.paste(255, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    return encode_png(img)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def inverted_png(data: bytes, size: tuple[int, int] | None = None) -> bytes:
    """The "generated" image: the input with its colours inverted, optionally resized."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    out = ImageOps.invert(rgb)
    if size is not None and out.size != size:
        out = out.resize(size)
    return encode_png(out)


WebhookMode = Literal["send", "lost", "forged"]


async def deliver_webhook(
    url: str, body: bytes, headers: Mapping[str, str], log: list[int], *, retries: tuple[float, ...] = (0.5, 1, 2, 4)
) -> None:
    """POST one signed delivery to the bot as a provider does (the answer's status is appended to `log`); like the
    providers, a delivery nobody answered (connection refused, 5xx) is tried again after each of `retries` s."""
    import aiohttp

    for pause in (*retries, None):
        try:
            async with aiohttp.ClientSession() as session, session.post(
                url, data=body, headers={"Content-Type": "application/json", **headers}
            ) as response:
                log.append(response.status)
                if response.status < 500:
                    return
        except aiohttp.ClientConnectionError:
            pass
        if pause is None:
            return
        await asyncio.sleep(pause)
