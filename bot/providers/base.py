"""The interface every provider implements, and the values that cross it.

A provider turns a `ProviderJob` (already validated and re-encoded) into a `Handle` and then into `Status`
snapshots. The job engine owns timing (poll cadence, deadlines, queueing); providers own protocol details.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bot.lifecycle.states import State
from bot.params import ModelSpec, Value

if TYPE_CHECKING:
    from bot.web.hooks import Delivery, WebhookHub


@dataclass(frozen=True)
class InputImage:
    """A picture re-encoded by us (never the user's original bytes), ready to send."""

    data: bytes
    mime: str
    size: tuple[int, int]


@dataclass(frozen=True)
class ProviderJob:
    """Everything a provider needs to submit one job; `mask` is None for instruction edits."""

    spec: ModelSpec
    prompt: str
    params: Mapping[str, Value]
    image: InputImage
    mask: InputImage | None = None
    # The delivery will be a JPEG: a provider that can may return a JPEG of this quality instead of a PNG.
    jpeg_result: int | None = None


@dataclass(frozen=True)
class Callback:
    """The per-job webhook credentials: the unguessable path token, and the signing secret for providers that
    take one per job (BFL). Kept in the handle so a resumed job still accepts its provider's call."""

    token: str
    secret: str | None = None


@dataclass(frozen=True)
class Handle:
    """A submitted job at a provider; JSON-serialisable so polling can resume after a restart."""

    provider: str
    job_id: str
    poll_url: str | None = None
    callback: Callback | None = None

    def to_json(self) -> str:
        data: dict[str, object] = {"provider": self.provider, "job_id": self.job_id, "poll_url": self.poll_url}
        if self.callback is not None:
            data["callback"] = {"token": self.callback.token, "secret": self.callback.secret}
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Handle:
        data = json.loads(text)
        hook = data.get("callback")
        callback = Callback(str(hook["token"]), hook.get("secret")) if isinstance(hook, dict) else None
        return cls(provider=str(data["provider"]), job_id=str(data["job_id"]), poll_url=data.get("poll_url"),
                   callback=callback)


@dataclass(frozen=True)
class Output:
    """One output file reference: an http(s) URL, a data: URI or naked base64. `flagged` = provider NSFW flag."""

    ref: str
    flagged: bool = False


@dataclass(frozen=True)
class Window:
    """When a job ends, counted from the moment it was looked at: after `soonest`, by `latest` seconds. A
    provider counting steps at a known pace knows the steps left but not how much of the one under way is done,
    so its window is one step wide."""

    soonest: float
    latest: float


@dataclass(frozen=True)
class Status:
    """One look at a job. `message` is safe to show users; `detail` is for logs only."""

    state: State
    progress: float | None = None  # 0..1, only where the provider really reports it
    ends_in: Window | None = None  # where the provider's own report tells
    outputs: tuple[Output, ...] = ()
    dropped: int = 0  # outputs the provider silently withheld (e.g. NSFW drops on flux-fill-dev)
    message: str | None = None
    detail: str = ""
    raw_status: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


class Provider(ABC):
    """One provider's protocol. Implementations keep one long-lived HTTP client and must be closed."""

    name: str
    supports_cancel: bool = False
    # Set by the web server when PUBLIC_URL is on: create requests then ask the provider to call back.
    webhooks: WebhookHub | None = None

    @abstractmethod
    async def submit(self, job: ProviderJob) -> tuple[Handle, Status]:
        """Create the job. Never retried automatically once the request may have reached the provider."""

    @abstractmethod
    async def poll(self, handle: Handle) -> Status:
        """Look at the job once (GETs may retry transient faults internally)."""

    async def settle(self, handle: Handle) -> None:
        """Return when there may be news of the job; the caller bounds the wait with its poll delay. A job
        submitted with a callback returns when its provider's verified webhook arrives; otherwise remote
        providers have no signal (this waits until cancelled) and the local provider overrides it."""
        if self.webhooks is not None and handle.callback is not None:
            await self.webhooks.news(self.name, handle.callback)
            return
        await asyncio.Event().wait()

    def fallback_poll(self, handle: Handle) -> float | None:
        """Seconds between status checks when the provider will call back (webhooks are the fast path then);
        None: poll at the engine's own pace."""
        if self.webhooks is not None and handle.callback is not None:
            return self.webhooks.fallback_poll
        return None

    async def verify_webhook(self, callback: Callback, body: bytes, headers: Mapping[str, str]) -> Delivery | None:
        """Check one delivery's signature; None if it is not from the provider. Providers without webhooks
        accept none."""
        return None

    async def cancel(self, handle: Handle) -> None:
        """Best-effort cancel; providers without a cancel endpoint do nothing."""
        return None

    @abstractmethod
    async def download(self, output: Output) -> bytes:
        """Fetch one output's bytes, size-capped, without sending credentials to the file host."""

    async def aclose(self) -> None:
        return None
