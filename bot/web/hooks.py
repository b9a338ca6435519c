"""Provider webhooks: per-job callback tokens, the signature schemes, and the wake-up registry.

A verified delivery only wakes the job's poll loop (`Provider.settle`); the runner then fetches the job with the
API key, so nothing in a webhook body is believed. Repeats are dropped by delivery id, and while a job runs,
progress deliveries wake it at most once per `wake_gap` (Replicate sends logs twice a second), except the first one
that tells when the job will end.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bot.config import WebSettings
from bot.providers.base import Callback, Provider

log = logging.getLogger(__name__)

WAVESPEED_MAX_AGE = 300.0  # seconds; WaveSpeed's documented limit (docs/providers.md §4)
_REMEMBERED = 10_000  # registrations kept at most; the oldest go first
_SEEN_PER_JOB = 64


@dataclass(frozen=True)
class Delivery:
    """One verified webhook: its id (to drop repeats), whether its signed body says the job ended, and whether it
    shows progress that tells when the job will end (a reading worth taking at once)."""

    id: str
    final: bool
    timed: bool = False


@dataclass
class _Watch:
    provider: str
    callback: Callback
    expires: float
    event: asyncio.Event = field(default_factory=asyncio.Event)
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last_wake: float = float("-inf")
    timed: bool = False  # a delivery showing when the job will end has woken it


class WebhookHub:
    """Issues callback URLs and wakes the jobs whose provider called; one per process."""

    def __init__(
        self,
        public_url: str,
        *,
        fallback_poll: float,
        ttl: float = 7200.0,
        wake_gap: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.public_url = public_url.rstrip("/")
        self.fallback_poll = fallback_poll
        self.ttl = ttl
        self.wake_gap = wake_gap
        self.clock = clock
        self._watches: OrderedDict[str, _Watch] = OrderedDict()

    @classmethod
    def attach(cls, settings: WebSettings, providers: Iterable[Provider]) -> WebhookHub:
        """This process's hub, made the callback target of every provider's create requests."""
        hub = cls(settings.public_url, fallback_poll=settings.fallback_poll)
        for provider in providers:
            provider.webhooks = hub
        return hub

    def issue(self, provider: str, *, with_secret: bool = False) -> Callback:
        """A fresh callback for a job about to be created (registered now: a provider may call before the
        create answers)."""
        callback = Callback(secrets.token_urlsafe(24), secrets.token_urlsafe(32) if with_secret else None)
        self._watch(provider, callback)
        return callback

    def url(self, provider: str, callback: Callback) -> str:
        return f"{self.public_url}/hooks/{quote(provider, safe='')}/{callback.token}"

    def find(self, provider: str, token: str) -> Callback | None:
        """The callback behind a delivery's path, if this process expects it."""
        self._expire()
        watch = self._watches.get(token)
        if watch is None or watch.provider != provider:
            return None
        return watch.callback

    def deliver(self, provider: str, callback: Callback, delivery: Delivery) -> bool:
        """Wake the job for a verified delivery; False for a repeat or a progress note too soon after the last."""
        watch = self._watch(provider, callback)
        if delivery.id in watch.seen:
            return False
        watch.seen[delivery.id] = None
        while len(watch.seen) > _SEEN_PER_JOB:
            watch.seen.popitem(last=False)
        now = self.clock()
        # The first delivery that tells when the job will end wakes it at once, whatever the gap: the reading
        # it takes times the job's last poll and the finish's groundwork (runner.py).
        first_timed = delivery.timed and not watch.timed
        if not delivery.final and not first_timed and now - watch.last_wake < self.wake_gap:
            return False
        watch.timed = watch.timed or delivery.timed
        watch.last_wake = now
        watch.event.set()
        return True

    def expect(self, provider: str, callback: Callback) -> None:
        """Accept deliveries for a job this process will resume (after a restart) before it polls again: a call
        that arrives meanwhile then wakes it at once, instead of being refused as unknown."""
        self._watch(provider, callback)

    async def news(self, provider: str, callback: Callback) -> None:
        """Until the job's provider calls (also re-arms the callback of a job resumed after a restart)."""
        watch = self._watch(provider, callback)
        await watch.event.wait()
        watch.event.clear()

    def _watch(self, provider: str, callback: Callback) -> _Watch:
        watch = self._watches.get(callback.token)
        if watch is None or watch.provider != provider:
            watch = _Watch(provider, callback, self.clock() + self.ttl)
            self._watches[callback.token] = watch
            while len(self._watches) > _REMEMBERED:
                self._watches.popitem(last=False)
        else:
            watch.expires = self.clock() + self.ttl
            self._watches.move_to_end(callback.token)
        return watch

    def _expire(self) -> None:
        now = self.clock()
        while self._watches:
            token, watch = next(iter(self._watches.items()))
            if watch.expires > now:
                break
            del self._watches[token]


def _json(body: bytes) -> Mapping[str, Any] | None:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, Mapping) else None


def verify_standard(secret: str, body: bytes, headers: Mapping[str, str]) -> Mapping[str, Any] | None:
    """Replicate's scheme (Standard Webhooks: base64 key, `v1,<base64>` signatures, 5-minute tolerance)."""
    try:
        data = Webhook(secret).verify(body, dict(headers))
    except (WebhookVerificationError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return data if isinstance(data, Mapping) else None


def verify_wavespeed(
    secret: str, body: bytes, headers: Mapping[str, str], *, now: float | None = None
) -> Mapping[str, Any] | None:
    """WaveSpeed's variant: the key is the secret without `whsec_` (not base64-decoded), `v3,<hex>` signatures
    over `id.timestamp.body`, at most 300 s old."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signature = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not (msg_id and stamp and signature) or not stamp.isdigit():
        return None
    if abs((time.time() if now is None else now) - int(stamp)) > WAVESPEED_MAX_AGE:
        return None
    key = secret.removeprefix("whsec_").encode()
    expected = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    for candidate in signature.split():
        version, _, value = candidate.partition(",")
        if version == "v3" and hmac.compare_digest(value.lower(), expected):
            return _json(body)
    return None


def verify_bfl(secret: str, body: bytes, headers: Mapping[str, str]) -> Mapping[str, Any] | None:
    """BFL's `X-BFL-Signature: sha256=<hex HMAC(body)>` with the job's own secret (only in BFL's examples, so
    the path token is checked too, before this)."""
    lower = {k.lower(): v for k, v in headers.items()}
    signature = lower.get("x-bfl-signature", "")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.strip().lower(), expected):
        return None
    return _json(body)


def body_id(body: bytes) -> str:
    """A delivery id for schemes that send none: the body's digest (an identical repeat is a repeat)."""
    return hashlib.sha256(body).hexdigest()
