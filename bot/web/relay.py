"""Webhooks for jobs that job workers run: the bot process that receives a delivery relays it over the
database's notifications, and the worker holding the job's callback wakes it.

Workers have no web server of their own (providers call the one `PUBLIC_URL`), so a delivery for a token the
receiving process does not know is relayed. One small enough to travel (BFL's and WaveSpeed's are a few hundred
bytes) goes whole, and the worker verifies it with the job's callback (BFL signs with a per-job secret). A larger
one (Replicate sends the whole prediction) is verified where it arrived, with the account's signing secret, and
relayed as a verified wake-up. Either way a wake-up only makes the worker fetch the job with its key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Mapping
from typing import Any

from bot.errors import ProviderError
from bot.providers.base import Callback, Provider
from bot.storage import Storage
from bot.web.hooks import Delivery, WebhookHub

log = logging.getLogger(__name__)

CHANNEL = "fillbot_webhooks"
RELAY_BODY_MAX = 4000  # bytes relayed whole (base64 grows them by a third; a notification stops at 8000)
_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature", "x-bfl-signature")


async def relay(storage: Storage, provider: Provider, token: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Pass a delivery on to whichever process runs the job; False if it was checked here and is forged."""
    message: dict[str, Any] = {"p": provider.name, "t": token}
    if len(body) <= RELAY_BODY_MAX:
        lower = {k.lower(): v for k, v in headers.items()}
        message["b"] = base64.b64encode(body).decode("ascii")
        message["h"] = {k: lower[k] for k in _HEADERS if k in lower}
    else:
        delivery = await provider.verify_webhook(Callback(token), body, headers)
        if delivery is None:
            return False
        message["id"], message["final"], message["timed"] = delivery.id, delivery.final, delivery.timed
    await storage.notify(CHANNEL, json.dumps(message))
    return True


class RelayListener:
    """In a job worker: wakes its jobs for the deliveries the bot processes relay."""

    def __init__(self, hub: WebhookHub, providers: Mapping[str, Provider]) -> None:
        self.hub = hub
        self.providers = providers
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, payload: str) -> None:
        if not payload:
            return  # notifications may have been missed: the jobs' fallback polls cover that
        task = asyncio.ensure_future(self._handle(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            name, token = str(message["p"]), str(message["t"])
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable webhook relay message")
            return
        provider = self.providers.get(name)
        callback = self.hub.find(name, token) if provider is not None else None
        if provider is None or callback is None:
            return  # another worker's job (or none at all)
        delivery: Delivery | None
        if "b" in message:
            try:
                body = base64.b64decode(message["b"], validate=True)
            except (binascii.Error, ValueError):
                return
            headers = {str(k): str(v) for k, v in dict(message.get("h") or {}).items()}
            try:
                delivery = await provider.verify_webhook(callback, body, headers)
            except ProviderError as exc:  # the signing secret could not be fetched; the fallback poll remains
                log.warning("%s webhook relayed: signing secret unavailable (%s)", name, exc.kind)
                return
            if delivery is None:
                log.warning("%s webhook relayed for one of this worker's jobs failed verification", name)
                return
        else:
            delivery = Delivery(str(message.get("id", "")), bool(message.get("final")), bool(message.get("timed")))
        self.hub.deliver(name, callback, delivery)
