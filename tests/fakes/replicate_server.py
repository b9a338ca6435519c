"""A real HTTP server on 127.0.0.1 that speaks Replicate's prediction protocol, with fault injection.

Tests talk to it over real sockets with the production clients, so nothing under test is mocked::

    async with FakeReplicate(duration=0.2) as fake:
        provider = ReplicateProvider(fake.provider_settings(), downloader)
        fake.faults.get.append(Fault.error(500))      # one-shot: the next GET answers 500
        fake.faults.create_status = 402                # persistent: every create answers 402
        ...
        assert fake.count("GET", "get") == 3
        assert all("authorization" not in r.headers for r in fake.cdn_requests)

Three servers: the API (under `prefix`, "/v1" like api.replicate.com or "/replicate/v1" like an aggregator),
a "CDN" serving outputs at /files/<name>.png (or the API server itself with `separate_cdn=False`), and an
optional "foreign" host that `urls.get`/`urls.cancel` point at (`foreign_urls=True`) to catch credential leaks.

Job timing is computed from the creation time: `starting` for `start_delay` s, then `processing` (logs with
tqdm lines) until `duration` s, then the `outcome`. Outputs are real PNGs: the input image inverted, at
flux-fill-dev's output size.

The shapes follow real recorded traffic (replicate-python's VCR cassettes; docs/provider-fakes.md says which):
a create without `Prefer: wait` answers `starting` with empty logs and no output; polls then show `processing`
with tqdm lines growing one per line; a held create (`Prefer: wait`) whose job finished in time answers
`processing` with the output already inline as data: URIs (`sync_reply="succeeded"` answers the finished
prediction instead), and one that ran out of time answers `starting`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from PIL import Image, ImageOps
from standardwebhooks.webhooks import Webhook

from tests.fakes.common import WebhookMode, deliver_webhook

Outcome = Literal[
    "succeeded",
    "failed",
    "nsfw",
    "nsfw_kontext",
    "e005",
    "data_removed",
    "null_output",
    "aborted",
    "canceled",
    "never",
    "unknown",
]
OutputShape = Literal["auto", "list", "string", "created_data", "url_dict"]
LogStyle = Literal["it", "percent", "none"]
SyncReply = Literal["processing", "succeeded"]
Kind = Literal["create", "get", "cancel", "files", "other"]
Reply = Literal["view", "created", "held"]  # what a response shows: the live state, a fresh create, a sync hold

FILL_DEV = "black-forest-labs/flux-fill-dev"
FILL_PRO = "black-forest-labs/flux-fill-pro"
KONTEXT_DEV = "black-forest-labs/flux-kontext-dev"
MODELS = (FILL_DEV, FILL_PRO, KONTEXT_DEV)
KONTEXT_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")

NSFW_FILL = "All generated images contained NSFW content. Try running it again with a different prompt."
NSFW_KONTEXT = "Generated image contained NSFW content. Try running it again with a different prompt."
E005 = "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
FAILED_ERROR = (
    "CUDA out of memory. Tried to allocate 2.00 GiB; see https://pytorch.org/docs/stable/notes/cuda.html for details"
)
BILLING_DETAIL = (
    "You have insufficient credit to run this model. Go to https://replicate.com/account/billing#billing to "
    "purchase credit. Once you purchase credit, please wait a few minutes before trying again."
)
HTML_502 = (
    "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
    "</h1></center><hr><center>cloudflare</center></body></html>"
)


@dataclass
class Fault:
    """One injected misbehaviour. Build with the class methods; queue in `Faults.create/get/cancel/files`."""

    kind: Literal["status", "html", "truncated", "cut", "reset", "slow"]
    status: int = 500
    delay: float = 0.0
    retry_after: str | None = None
    resets_in: float | None = None
    detail: str | None = None

    @classmethod
    def error(cls, status: int = 500, detail: str | None = None) -> Fault:
        """A problem+json error response with this status (and `detail` text, if given)."""
        return cls("status", status=status, detail=detail)

    @classmethod
    def rate_limited(cls, *, retry_after: str | None = None, resets_in: float | None = None) -> Fault:
        """429; optional `Retry-After` header and/or Replicate's "resets in ~Ns" body text."""
        return cls("status", status=429, retry_after=retry_after, resets_in=resets_in)

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """A Cloudflare-style HTML error page."""
        return cls("html", status=status)

    @classmethod
    def truncated(cls, status: int = 200) -> Fault:
        """A complete HTTP response whose JSON body is cut off half-way."""
        return cls("truncated", status=status)

    @classmethod
    def cut(cls) -> Fault:
        """Headers promise more body than is sent, then the connection closes."""
        return cls("cut")

    @classmethod
    def reset(cls) -> Fault:
        """The connection closes without any response."""
        return cls("reset")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally, but only after `seconds` (for client timeouts)."""
        return cls("slow", delay=seconds)


@dataclass
class Faults:
    """Persistent `*_status` answers every matching request; the lists are one-shot, consumed in order.

    Create faults that model a lost reply (5xx, reset, cut, slow, html, truncated) happen after the prediction
    was created, as in real life; 429 and other 4xx happen before anything is created.
    """

    create_status: int | None = None
    get_status: int | None = None
    create: list[Fault] = field(default_factory=list)
    get: list[Fault] = field(default_factory=list)
    cancel: list[Fault] = field(default_factory=list)
    files: list[Fault] = field(default_factory=list)
    missing_files: bool = False  # output files answer 404 (expired delivery URLs)


@dataclass(frozen=True)
class Recorded:
    """One request as a server saw it. `headers` keys are lower-case."""

    server: Literal["api", "cdn", "foreign"]
    kind: Kind
    method: str
    path: str  # decoded
    headers: dict[str, str]
    raw_path: str = ""  # as sent, with percent-escapes and query
    at: float = 0.0  # when its headers arrived (monotonic clock)


@dataclass
class Prediction:
    id: str
    model: str
    input: dict[str, Any]
    created: float
    created_at: str
    outcome: Outcome
    duration: float
    start_delay: float
    files: list[str]
    steps: int
    canceled_at: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.created


LOGS_EVENT_GAP = 0.5  # Replicate sends `output` and `logs` webhook events at most this often (docs/providers.md §1)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    body = {"title": title, "detail": detail, "status": status, **extra}
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json")


def _invalid(problems: list[tuple[str, str, str]]) -> web.Response:
    detail = "".join(f"- {f or '(root)'}: {d}\n" for _, f, d in problems)
    fields = [{"type": t, "field": f, "description": d} for t, f, d in problems]
    return _problem(422, "Input validation failed", detail, invalid_fields=fields)


def _decode_image(value: Any) -> Image.Image | None:
    if not isinstance(value, str) or not value.startswith("data:"):
        return None
    header, _, payload = value.partition(",")
    if not header.endswith(";base64"):
        return None
    try:
        return Image.open(io.BytesIO(base64.b64decode(payload, validate=True))).convert("RGB")
    except (binascii.Error, ValueError, OSError):
        return None


def _data_uri(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}"


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def tqdm_bar_line(n: int, total: int, rate: float = 4.1) -> str:
    """One tqdm progress line as tqdm draws it (`  45%|████▋     | 13/28 [00:03<00:03,  4.10it/s]`): the bar is
    10 cells of eighths, the rate `5.2f`, as in the recorded sdxl logs."""
    fraction = n / total if total else 1.0
    cells, eighths = divmod(int(fraction * 10 * 8), 8)
    bar = "█" * cells + (" ▏▎▍▌▋▊▉"[eighths] if cells < 10 else "")
    timing = "00:00<?, ?it/s" if n == 0 else f"{_clock(n / rate)}<{_clock((total - n) / rate)}, {_speed(rate)}"
    return f"{fraction * 100:3.0f}%|{bar:<10}| {n}/{total} [{timing}]"


def tqdm_count_line(n: int, rate: float = 5.2) -> str:
    """tqdm over an iterable without a length (cog-flux's sampler): `13it [00:03,  4.10it/s]`."""
    return f"{n}it [00:00, ?it/s]" if n == 0 else f"{n}it [{_clock(n / rate)}, {_speed(rate)}]"


def _speed(rate: float) -> str:
    """tqdm's speed: iterations per second, or seconds per iteration below one a second."""
    return f"{rate:5.2f}it/s" if rate >= 1 else f"{1 / rate:5.2f}s/it"


def fill_dev_size(width: int, height: int, megapixels: str = "1") -> tuple[int, int]:
    """flux-fill-dev's output size (cog-flux `size_maybe_match_input`): ~N MP or the input capped at 1440,
    each side floored to a multiple of 32."""
    if megapixels == "match_input":
        scale = min(1.0, 1440 / max(width, height))
    else:
        scale = math.sqrt(float(megapixels) * 1024 * 1024 / (width * height))
    return max(32, int(width * scale) // 32 * 32), max(32, int(height * scale) // 32 * 32)


# output_format -> (Pillow format, file extension, Content-Type); the CDN serves each file with its own type.
OUTPUT_FORMATS = {
    "png": ("PNG", "png", "image/png"),
    "jpg": ("JPEG", "jpg", "image/jpeg"),
    "webp": ("WEBP", "webp", "image/webp"),
}
_TYPES_BY_EXTENSION = {extension: mime for _, extension, mime in OUTPUT_FORMATS.values()}


def _saved(image: Image.Image, output_format: str, quality: int) -> bytes:
    """The picture as cog-flux saves it: `output_quality` applies to the lossy formats only."""
    pillow_format = OUTPUT_FORMATS[output_format][0]
    out = io.BytesIO()
    if pillow_format == "PNG":
        image.save(out, format="PNG")
    else:
        image.save(out, format=pillow_format, quality=quality)
    return out.getvalue()


def output_format(model: str, inputs: dict[str, Any]) -> tuple[str, int]:
    """The format and quality a prediction's files are saved in: the input's, else the model's default (webp
    for the dev models, jpg for fill-pro) at quality 80."""
    default = "jpg" if model not in (FILL_DEV, KONTEXT_DEV) else "webp"
    return str(inputs.get("output_format", default)), int(inputs.get("output_quality", 80))


class FakeReplicate:
    """Replicate's API on localhost. Use as `async with FakeReplicate(...) as fake:`; all knobs are attributes
    and may be changed between requests."""

    def __init__(
        self,
        *,
        duration: float = 0.2,
        start_delay: float = 0.0,
        outcome: Outcome = "succeeded",
        output_shape: OutputShape = "auto",
        logs: LogStyle = "it",
        nsfw_drops: int = 0,
        token: str = "r8_fake_token_0123456789",
        prefix: str = "/v1",
        separate_cdn: bool = True,
        foreign_urls: bool = False,
        bare_created_data: bool = False,
        billing_exhausted: bool = False,
        honour_wait: bool = True,
        sync_reply: SyncReply = "processing",
    ) -> None:
        self.duration = duration
        self.start_delay = start_delay
        self.outcome: Outcome = outcome
        self.output_shape: OutputShape = output_shape
        self.logs: LogStyle = logs
        self.nsfw_drops = nsfw_drops
        self.token = token
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.separate_cdn = separate_cdn
        self.foreign_urls = foreign_urls
        self.bare_created_data = bare_created_data  # create answers {created, data:[{url}]} (aggregator doc)
        self.billing_exhausted = billing_exhausted
        self.honour_wait = honour_wait  # False: ignore `Prefer: wait` (aggregator support is unconfirmed)
        # A held create that finished: "processing" + data: URI output (as recorded), or the finished prediction.
        self.sync_reply: SyncReply = sync_reply
        self.faults = Faults()
        self.requests: list[Recorded] = []
        self.predictions: dict[str, Prediction] = {}
        self.created = asyncio.Event()  # set once a prediction was made: tests wait for it
        self.files: dict[str, bytes] = {}
        self._runners: list[web.AppRunner] = []
        self._urls: dict[str, str] = {}
        # Predictions created with `webhook` get signed deliveries (Standard Webhooks) at `start` and `completed`:
        # "lost" sends none, "forged" signs with another secret. `webhook_answers`: the bot's HTTP statuses.
        self.webhook: WebhookMode = "send"
        self.webhook_secret = "whsec_" + base64.b64encode(b"fake-replicate-signing-key-32byt").decode()
        self.webhook_answers: list[int] = []
        self._webhook_tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeReplicate:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        api = web.Application(middlewares=[self._recorder("api")])
        api.router.add_post(self.prefix + "/models/{owner}/{name}/predictions", self._create_model)
        api.router.add_post(self.prefix + "/predictions", self._create_version)
        api.router.add_get(self.prefix + "/predictions/{id}", self._get)
        api.router.add_post(self.prefix + "/predictions/{id}/cancel", self._cancel)
        api.router.add_get(self.prefix + "/webhooks/default/secret", self._secret)
        if not self.separate_cdn:
            api.router.add_get("/files/{name}", self._file)
        self._urls["api"] = await self._serve(api)
        if self.separate_cdn:
            cdn = web.Application(middlewares=[self._recorder("cdn")])
            cdn.router.add_get("/files/{name}", self._file)
            self._urls["cdn"] = await self._serve(cdn)
        else:
            self._urls["cdn"] = self._urls["api"]
        if self.foreign_urls:
            foreign = web.Application(middlewares=[self._recorder("foreign")])
            foreign.router.add_route("*", "/{tail:.*}", self._foreign)
            self._urls["foreign"] = await self._serve(foreign)

    async def _serve(self, app: web.Application) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def close(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    # ---- what tests look at -----------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The API server's scheme://host:port."""
        return self._urls["api"]

    @property
    def base_url(self) -> str:
        """What the bot is configured with, e.g. http://127.0.0.1:PORT/v1 (or /replicate/v1)."""
        return self._urls["api"] + self.prefix

    @property
    def cdn_url(self) -> str:
        return self._urls["cdn"]

    @property
    def foreign_url(self) -> str:
        return self._urls["foreign"]

    def provider_settings(self, *, token: str | None = None, max_concurrency: int = 4) -> Any:
        """`bot.config.ProviderSettings` pointing at this fake (imported lazily to keep the fake standalone)."""
        from bot.config import ProviderSettings, Secret

        return ProviderSettings("replicate", self.base_url, Secret(token or self.token), max_concurrency)

    def api_requests(self, kind: Kind | None = None) -> list[Recorded]:
        return [r for r in self.requests if r.server == "api" and (kind is None or r.kind == kind)]

    @property
    def cdn_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.server == "cdn" or (r.server == "api" and r.kind == "files")]

    @property
    def foreign_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.server == "foreign"]

    def count(self, method: str, kind: Kind) -> int:
        """Requests the API server received, e.g. `count("POST", "create")`."""
        return sum(1 for r in self.api_requests(kind) if r.method == method)

    def add_file(self, name: str, data: bytes) -> str:
        """Serve arbitrary bytes from the CDN; returns the URL."""
        self.files[name] = data
        return f"{self.cdn_url}/files/{name}"

    # ---- plumbing ---------------------------------------------------------------------------------------

    def _kind(self, request: web.Request) -> Kind:
        path = request.path
        if path.startswith("/files/"):
            return "files"
        if request.method == "POST" and path.endswith("/cancel"):
            return "cancel"
        if request.method == "POST" and path.endswith("/predictions"):
            return "create"
        if request.method == "GET" and "/predictions/" in path:
            return "get"
        return "other"

    def _recorder(self, server: Literal["api", "cdn", "foreign"]) -> Middleware:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            kind = self._kind(request)
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(
                Recorded(server, kind, request.method, request.path, headers, request.raw_path, time.monotonic())
            )
            return await handler(request)

        return record

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _apply(self, request: web.Request, fault: Fault, good: dict[str, Any] | None) -> web.StreamResponse:
        """Answer with `fault` ("slow" faults are handled by the caller, which then answers normally)."""
        if fault.kind == "status":
            if fault.status == 429:
                detail = "Request was throttled."
                if fault.resets_in is not None:
                    detail += f" Your rate limit resets in ~{fault.resets_in:g}s."
                response = _problem(429, "Request was throttled", detail)
                if fault.retry_after is not None:
                    response.headers["Retry-After"] = fault.retry_after
                return response
            default = "Something went wrong" if fault.status >= 500 else "Request refused"
            return _problem(
                fault.status, "Internal Server Error" if fault.status >= 500 else "Error", fault.detail or default
            )
        if fault.kind == "html":
            return web.Response(status=fault.status, text=HTML_502, content_type="text/html")
        text = json.dumps(good or {"id": "x" * 26, "status": "processing", "logs": "", "output": None})
        if fault.kind == "truncated":
            return web.Response(status=fault.status, text=text[: len(text) // 2], content_type="application/json")
        if fault.kind == "cut":
            stream = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            stream.content_length = len(text)
            await stream.prepare(request)
            await stream.write(text[: len(text) // 2].encode())
            if request.transport is not None:
                request.transport.close()
            return stream
        if request.transport is not None:  # reset
            request.transport.close()
        return web.Response(status=500)

    @staticmethod
    def _pop(queue: list[Fault]) -> Fault | None:
        return queue.pop(0) if queue else None

    # ---- handlers ---------------------------------------------------------------------------------------

    async def _create_model(self, request: web.Request) -> web.StreamResponse:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        return await self._create(request, model)

    async def _create_version(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "Bad request", "Failed to parse request body as JSON: EOF")
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, str):
            return _invalid([("required", "version", "version is required")])
        return await self._create(request, version.split(":")[0])

    async def _create(self, request: web.Request, model: str) -> web.StreamResponse:
        if not self._authorized(request):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        if self.billing_exhausted:
            return _problem(402, "Insufficient credit", BILLING_DETAIL)
        if self.faults.create_status is not None:
            return await self._apply(request, Fault.error(self.faults.create_status), None)
        fault = self._pop(self.faults.create)
        if fault is not None and fault.kind == "status" and fault.status < 500:
            return await self._apply(request, fault, None)
        wait = self._prefer_wait(request.headers.get("Prefer"))
        if isinstance(wait, web.Response):
            return wait
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "Bad request", "Failed to parse request body as JSON: EOF")
        if not isinstance(body, dict):
            return _problem(400, "Bad request", "Failed to parse request body as JSON: not an object")
        if model not in MODELS:
            return _problem(404, "Not found", "The requested resource could not be found.")
        extra = [k for k in body if k not in ("input", "webhook", "webhook_events_filter", "version")]
        if extra:
            return _invalid(
                [("additional_property_not_allowed", "", f"Additional property {k} is not allowed") for k in extra]
            )
        inputs = body.get("input")
        if not isinstance(inputs, dict):
            return _invalid([("required", "input", "input is required")])
        problems = self._validate(model, inputs)
        if problems:
            return _invalid(problems)

        prediction = self._make_prediction(model, inputs)
        self.predictions[prediction.id] = prediction
        self.created.set()
        if isinstance(body.get("webhook"), str) and self.webhook != "lost":
            events = body.get("webhook_events_filter")
            wanted = set(events) if isinstance(events, list) else {"start", "output", "logs", "completed"}
            task = asyncio.create_task(self._call_back(prediction, body["webhook"], wanted))
            self._webhook_tasks.add(task)
            task.add_done_callback(self._webhook_tasks.discard)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        elif fault is not None:
            return await self._apply(request, fault, self._view(prediction))
        if self.bare_created_data:
            await self._hold(prediction, None)
            urls = [{"url": self._file_url(name)} for name in self._visible_files(prediction)]
            return web.json_response({"created": int(time.time()), "data": urls}, status=201)
        if wait is None or not self.honour_wait:
            return web.json_response(self._view(prediction, reply="created"), status=201)
        await self._hold(prediction, wait)
        reply: Reply = "held" if self._status(prediction) == "succeeded" and self.sync_reply == "processing" else "view"
        if not self._terminal(prediction):
            reply = "created"  # replicate-python's run.py: a hold that runs out answers "starting"
        return web.json_response(
            self._view(prediction, reply=reply), status=201, headers={"Preference-Applied": f"wait={wait}"}
        )

    async def _hold(self, prediction: Prediction, limit: float | None) -> None:
        """Sleep until the prediction is terminal or `limit` seconds pass (None: up to 60 s)."""
        deadline = time.monotonic() + (60.0 if limit is None else limit)
        for _ in range(int((deadline - time.monotonic()) / 0.01) + 2):
            remaining = deadline - time.monotonic()
            if self._terminal(prediction) or remaining <= 0:
                return
            await asyncio.sleep(min(0.01, remaining))

    @staticmethod
    def _prefer_wait(header: str | None) -> int | web.Response | None:
        """Seconds to hold the create (`Prefer: wait[=n]`, n in 1..60), None for async, or a 400 for bad n."""
        if not header:
            return None
        for part in header.split(","):
            token = part.strip()
            if token == "wait":
                return 60
            if token.startswith("wait="):
                raw = token.removeprefix("wait=")
                if not raw.isdigit() or not 1 <= int(raw) <= 60:
                    return _problem(400, "Bad request", f"Invalid Prefer header: wait must be 1 to 60, got {raw!r}")
                return int(raw)
        return None

    def _validate(self, model: str, inputs: dict[str, Any]) -> list[tuple[str, str, str]]:
        problems: list[tuple[str, str, str]] = []

        def number(name: str, low: float, high: float, integer: bool) -> None:
            if name not in inputs:
                return
            value = inputs[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (integer and not isinstance(value, int))
            ):
                expected = "integer" if integer else "number"
                problems.append(
                    (
                        "invalid_type",
                        f"input.{name}",
                        f"Invalid type. Expected: {expected}, given: {type(value).__name__}",
                    )
                )
            elif value > high:
                problems.append(("number_lte", f"input.{name}", f"Must be less than or equal to {high:g}"))
            elif value < low:
                problems.append(("number_gte", f"input.{name}", f"Must be greater than or equal to {low:g}"))

        def enum(name: str, choices: tuple[str, ...]) -> None:
            if name in inputs and inputs[name] not in choices:
                listed = ", ".join(f'"{c}"' for c in choices)
                problems.append(("enum", f"input.{name}", f"{name} must be one of the following: {listed}"))

        if not isinstance(inputs.get("prompt"), str) and model != FILL_PRO:
            problems.append(("required", "input", "prompt is required"))
        image_field = "input_image" if model == KONTEXT_DEV else "image"
        if image_field not in inputs:
            problems.append(("required", "input", f"{image_field} is required"))
        elif _decode_image(inputs[image_field]) is None and not str(inputs[image_field]).startswith("http"):
            problems.append(("format", f"input.{image_field}", "Does not match format 'uri'"))
        if model == FILL_DEV:
            number("num_inference_steps", 1, 50, True)
            number("num_outputs", 1, 4, True)
            number("guidance", 0, 100, False)
            number("lora_scale", -1, 3, False)
            enum("megapixels", ("1", "0.25", "match_input"))
            enum("output_format", ("webp", "jpg", "png"))
            number("output_quality", 0, 100, True)
        elif model == KONTEXT_DEV:
            number("num_inference_steps", 4, 50, True)
            number("guidance", 0, 10, False)
            enum("aspect_ratio", ("match_input_image", *KONTEXT_RATIOS))
            enum("output_format", ("webp", "jpg", "png"))
            number("output_quality", 0, 100, True)
        else:
            number("steps", 1, 50, True)
            number("guidance", 2, 5, False)
            number("safety_tolerance", 1, 6, True)
            enum("output_format", ("jpg", "png"))
        return problems

    def _make_prediction(self, model: str, inputs: dict[str, Any]) -> Prediction:
        pid = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(26))
        source = _decode_image(inputs.get("input_image" if model == KONTEXT_DEV else "image"))
        if source is None:
            source = Image.new("RGB", (64, 48), (40, 90, 160))
        if model == KONTEXT_DEV:
            ratio = str(inputs.get("aspect_ratio", "match_input_image"))
            if ratio in KONTEXT_RATIOS:
                a, b = (int(x) for x in ratio.split(":"))
                size = fill_dev_size(a * 64, b * 64)
            else:
                size = fill_dev_size(*source.size)
            count = 1
        elif model == FILL_DEV:
            size = fill_dev_size(*source.size, str(inputs.get("megapixels", "1")))
            count = int(inputs.get("num_outputs", 1))
        else:
            size, count = source.size, 1
        fmt, quality = output_format(model, inputs)
        picture = _saved(ImageOps.invert(source).resize(size), fmt, quality)
        names = []
        for i in range(count):
            name = f"{pid}-{i}.{OUTPUT_FORMATS[fmt][1]}"
            self.files[name] = picture
            names.append(name)
        steps = int(inputs.get("num_inference_steps", inputs.get("steps", 28)))
        return Prediction(
            pid,
            model,
            dict(inputs),
            time.monotonic(),
            _now_iso(),
            self.outcome,
            self.duration,
            self.start_delay,
            names,
            steps,
        )

    def _file_url(self, name: str) -> str:
        return f"{self.cdn_url}/files/{name}"

    def _visible_files(self, p: Prediction) -> list[str]:
        keep = max(0, len(p.files) - self.nsfw_drops) if p.model == FILL_DEV else len(p.files)
        return p.files[:keep]

    def _status(self, p: Prediction) -> str:
        if p.canceled_at is not None:
            return "canceled"
        elapsed = p.elapsed()
        if p.outcome == "aborted":
            return "aborted" if elapsed >= p.start_delay else "starting"
        if elapsed < p.start_delay:
            return "starting"
        if p.outcome == "never" or elapsed < p.duration:
            return "warming_up" if p.outcome == "unknown" else "processing"
        return {
            "failed": "failed",
            "nsfw": "failed",
            "nsfw_kontext": "failed",
            "e005": "failed",
            "canceled": "canceled",
        }.get(p.outcome, "succeeded")

    def _terminal(self, p: Prediction) -> bool:
        return self._status(p) in ("succeeded", "failed", "canceled", "aborted")

    def _logs(self, p: Prediction, status: str) -> str:
        """What the model has printed so far: tqdm writes one line per update (the recordings show each
        carriage-return redraw as its own line), in cog-flux's length-less form or as a percentage bar."""
        if status == "starting" or self.logs == "none" or p.model == KONTEXT_DEV:
            return ""
        lines = ["Using seed: 1234"]
        span = max(1e-9, p.duration - p.start_delay)
        fraction = 1.0 if status in ("succeeded", "failed") else min(1.0, (p.elapsed() - p.start_delay) / span)
        done = min(p.steps, int(fraction * p.steps))
        speed = p.steps / span  # what tqdm shows: the steps' real pace
        if self.logs == "it":
            lines.extend(tqdm_count_line(n, speed) for n in range(done + 1))
        else:
            lines.extend(tqdm_bar_line(n, p.steps, speed) for n in range(done + 1))
        if status == "succeeded" and p.model == FILL_DEV:
            shown = len(self._visible_files(p))
            lines.extend(f"NSFW content detected in image {i}" for i in range(shown, len(p.files)))
            lines.append(f"Total safe images: {shown} out of {len(p.files)}")
        return "\n".join(lines) + "\n"

    def _output(self, p: Prediction, status: str, *, inline: bool = False) -> Any:
        """The output in the configured shape; `inline`: data: URIs (a sync-mode reply) instead of CDN URLs."""
        if status != "succeeded" or p.outcome in ("data_removed", "null_output"):
            return None
        names = self._visible_files(p)
        urls = [_data_uri(self.files[n]) if inline else self._file_url(n) for n in names]
        shape = self.output_shape
        if shape == "auto":
            shape = "list" if p.model == FILL_DEV else "string"
        if shape == "list":
            return urls
        if shape == "string":
            return urls[0] if urls else None
        if shape == "url_dict":
            return {"url": urls[0]} if urls else None
        return {"created": int(time.time()), "data": [{"url": u} for u in urls]}

    def _view(self, p: Prediction, reply: Reply = "view") -> dict[str, Any]:
        """The prediction as the API shows it. `created`: the answer to a create that did not hold (always
        `starting`, empty logs, no output key); `held`: a sync-mode answer for a finished job (`processing`,
        output inline as data: URIs, empty logs, no metrics)."""
        status = self._status(p)
        error: str | None = (
            {
                "failed": FAILED_ERROR,
                "nsfw": NSFW_FILL,
                "nsfw_kontext": NSFW_KONTEXT,
                "e005": E005,
            }.get(p.outcome)
            if status == "failed"
            else None
        )
        links = self._urls.get("foreign", self._urls["api"]) if self.foreign_urls else self.base_url
        if self.foreign_urls:
            links += "/v1"
        urls = {
            "cancel": f"{links}/predictions/{p.id}/cancel",
            "get": f"{links}/predictions/{p.id}",
            "web": f"https://replicate.com/p/{p.id}",
        }
        base = {"id": p.id, "model": p.model, "version": "hidden", "input": p.input}
        if reply == "created":
            return {**base, "logs": "", "error": None, "status": "starting", "created_at": p.created_at, "urls": urls}
        if reply == "held":
            output = self._output(p, "succeeded", inline=True)
            return {
                **base, "logs": "", "output": output, "data_removed": False, "error": None, "status": "processing",
                "created_at": p.created_at, "urls": urls,
            }
        terminal = status in ("succeeded", "failed", "canceled", "aborted")
        removed = p.outcome == "data_removed" and status == "succeeded"
        view: dict[str, Any] = {
            **base,
            "input": {} if removed else p.input,
            "logs": None if removed else self._logs(p, status),
            "data_removed": removed,
            "error": error,
            "status": status,
            "created_at": p.created_at,
            "urls": urls,
        }
        if terminal:
            view["output"] = self._output(p, status)
        if status not in ("starting", "aborted"):
            view["started_at"] = p.created_at
        if terminal:
            view["completed_at"] = _now_iso()
            if status == "succeeded":
                view["metrics"] = {"predict_time": round(p.duration, 3), "total_time": round(p.elapsed(), 3)}
        return view

    async def _get(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        prediction = self.predictions.get(request.match_info["id"])
        good = self._view(prediction) if prediction is not None else None
        if self.faults.get_status is not None:
            return await self._apply(request, Fault.error(self.faults.get_status), good)
        fault = self._pop(self.faults.get)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        elif fault is not None:
            return await self._apply(request, fault, good)
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return web.json_response(self._view(prediction))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        fault = self._pop(self.faults.cancel)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        elif fault is not None:
            return await self._apply(request, fault, None)
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        if not self._terminal(prediction):
            prediction.canceled_at = time.monotonic()
        return web.json_response(self._view(prediction))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        fault = self._pop(self.faults.files)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        elif fault is not None:
            return await self._apply(request, fault, None)
        data = self.files.get(request.match_info["name"])
        if data is None or self.faults.missing_files:
            return web.Response(status=404, text="Not Found")
        extension = request.match_info["name"].rpartition(".")[2]
        return web.Response(body=data, content_type=_TYPES_BY_EXTENSION.get(extension, "image/png"))

    async def _secret(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return web.json_response({"key": self.webhook_secret})

    async def _call_back(self, p: Prediction, url: str, events: set[str]) -> None:
        """The events asked for (all when no filter): `start` at once, `logs` while the model prints progress,
        at most one per `LOGS_EVENT_GAP` as Replicate throttles them, and `completed` when the fake's clock says
        the prediction ended."""
        secret = self.webhook_secret
        if self.webhook == "forged":
            secret = "whsec_" + base64.b64encode(b"someone-else-signing-key-32bytes").decode()
        signer = Webhook(secret)
        await asyncio.sleep(0)
        sends = [0.0] if "start" in events else []
        if "logs" in events and self.logs != "none" and p.model != KONTEXT_DEV:
            first = p.start_delay + LOGS_EVENT_GAP
            sends += [first + i * LOGS_EVENT_GAP for i in range(int((p.duration - first) / LOGS_EVENT_GAP) + 1)
                      if first + i * LOGS_EVENT_GAP < p.duration]
        if "completed" in events:
            sends.append(p.duration)
        for at in sends:
            await asyncio.sleep(max(0.0, at - p.elapsed()))
            body = json.dumps(self._view(p))
            msg_id = "msg_" + secrets.token_hex(8)
            now = datetime.now(tz=UTC)
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": signer.sign(msg_id, now, body)}
            await deliver_webhook(url, body.encode(), headers, self.webhook_answers)

    async def _foreign(self, request: web.Request) -> web.StreamResponse:
        return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
