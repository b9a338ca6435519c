"""The web server inside the bot process: provider webhooks, the mask painter, `/healthz` and `/metrics`.

It listens on WEB_HOST:WEB_PORT behind whatever makes PUBLIC_URL reach it (a reverse proxy or a tunnel). Every
webhook must name a callback this process issued (else 404) and carry the provider's signature (else 401); a
verified one only wakes the job, whose state the runner then fetches from the provider with its key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, MutableMapping

from aiohttp import web

from bot.config import WebSettings
from bot.errors import ProviderError
from bot.lifecycle.runner import Runner
from bot.providers.base import Handle, Provider
from bot.storage import Storage
from bot.web.hooks import WebhookHub
from bot.web.metrics import CONTENT_TYPE, Metrics
from bot.web.painter import Painter
from bot.web.relay import relay

log = logging.getLogger(__name__)

# Replicate's webhook body is the whole prediction, inputs and inline outputs included (data URIs of pictures
# up to the attachment cap); nothing larger is read. Unknown tokens are refused before any of the body is read.
MAX_WEBHOOK_BYTES = 64 * 1024 * 1024
HEALTH_TIMEOUT = 2.0  # seconds the database may take to answer a health check


class WebServer:
    """Owns the aiohttp application and the webhook hub; started and stopped with the bot."""

    def __init__(
        self,
        settings: WebSettings,
        *,
        storage: Storage,
        runner: Runner,
        providers: MutableMapping[str, Provider],
        gateway_ok: Callable[[], bool],
        max_webhook_bytes: int = MAX_WEBHOOK_BYTES,
        relay_unknown: bool = False,
    ) -> None:
        self.settings = settings
        self.relay_unknown = relay_unknown  # job workers run the jobs: pass deliveries on to them (relay.py)
        self.storage = storage
        self.providers = providers
        self.gateway_ok = gateway_ok
        self.max_webhook_bytes = max_webhook_bytes
        self.hub = WebhookHub.attach(settings, providers.values())  # create requests now ask for callbacks
        self.metrics = Metrics(storage, runner)
        self.metrics.instrument(providers)
        self.app = web.Application(client_max_size=max_webhook_bytes)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_post("/hooks/{provider}/{token}", self._webhook)
        self.painter = Painter()  # the Discord side sets its starter when it loads
        self.painter.add_routes(self.app)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if not self.relay_unknown:  # this process runs the jobs: re-arm the callbacks of those it will resume
            for text in await self.storage.handles_in_flight():
                handle = Handle.from_json(text)
                if handle.callback is not None and handle.provider in self.providers:
                    self.hub.expect(handle.provider, handle.callback)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.host, self.settings.port).start()
        log.info("web side listening on %s:%d for %s", self.settings.host, self.settings.port,
                 self.settings.public_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        problems: list[str] = []
        try:
            await asyncio.wait_for(self.storage.count_jobs(since=time.time()), HEALTH_TIMEOUT)
        except Exception as exc:  # any failure means "not healthy"; the reason is the type, never data
            problems.append(f"database unreachable ({type(exc).__name__})")
        if not self.gateway_ok():
            problems.append("Discord gateway not connected")
        return web.json_response({"ok": not problems, "problems": problems}, status=503 if problems else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=await self.metrics.scrape(), headers={"Content-Type": CONTENT_TYPE})

    async def _webhook(self, request: web.Request) -> web.Response:
        name, token = request.match_info["provider"], request.match_info["token"]
        provider = self.providers.get(name)
        callback = self.hub.find(name, token) if provider is not None else None
        if provider is None or (callback is None and not self.relay_unknown):
            self.metrics.webhooks.labels(name if provider else "unknown", "unknown").inc()
            return web.json_response({"error": "unknown callback"}, status=404)
        if request.content_length is not None and request.content_length > self.max_webhook_bytes:
            self.metrics.webhooks.labels(name, "too_large").inc()
            return web.json_response({"error": "body too large"}, status=413)
        body = await request.read()  # aiohttp refuses bodies over client_max_size with 413
        try:
            if callback is None:  # a job worker's job
                relayed = await relay(self.storage, provider, token, body, request.headers)
                self.metrics.webhooks.labels(name, "relayed" if relayed else "refused").inc()
                if not relayed:
                    return web.json_response({"error": "bad signature"}, status=401)
                return web.json_response({"ok": True}, status=202)
            delivery = await provider.verify_webhook(callback, body, request.headers)
        except ProviderError as exc:  # the signing secret could not be fetched: ask the provider to retry
            log.warning("%s webhook: signing secret unavailable (%s)", name, exc.kind)
            return web.json_response({"error": "try again"}, status=503)
        if delivery is None:
            self.metrics.webhooks.labels(name, "refused").inc()
            return web.json_response({"error": "bad signature"}, status=401)
        woke = self.hub.deliver(name, callback, delivery)
        self.metrics.webhooks.labels(name, "woke" if woke else "repeat").inc()
        return web.json_response({"ok": True})
