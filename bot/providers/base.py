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

from bot.lifecycle.states import State
from bot.params import ModelSpec, Value


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


@dataclass(frozen=True)
class Handle:
    """A submitted job at a provider; JSON-serialisable so polling can resume after a restart."""

    provider: str
    job_id: str
    poll_url: str | None = None

    def to_json(self) -> str:
        return json.dumps({"provider": self.provider, "job_id": self.job_id, "poll_url": self.poll_url})

    @classmethod
    def from_json(cls, text: str) -> Handle:
        data = json.loads(text)
        return cls(provider=str(data["provider"]), job_id=str(data["job_id"]), poll_url=data.get("poll_url"))


@dataclass(frozen=True)
class Output:
    """One output file reference: an http(s) URL, a data: URI or naked base64. `flagged` = provider NSFW flag."""

    ref: str
    flagged: bool = False


@dataclass(frozen=True)
class Status:
    """One look at a job. `message` is safe to show users; `detail` is for logs only."""

    state: State
    progress: float | None = None  # 0..1, only where the provider really reports it
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

    @abstractmethod
    async def submit(self, job: ProviderJob) -> tuple[Handle, Status]:
        """Create the job. Never retried automatically once the request may have reached the provider."""

    @abstractmethod
    async def poll(self, handle: Handle) -> Status:
        """Look at the job once (GETs may retry transient faults internally)."""

    async def settle(self, handle: Handle) -> None:
        """Return when there may be news of the job; the caller bounds the wait with its poll delay. Remote
        providers have no signal of their own (this waits until cancelled); one that can tell sooner (the local
        provider) overrides it."""
        await asyncio.Event().wait()

    async def cancel(self, handle: Handle) -> None:
        """Best-effort cancel; providers without a cancel endpoint do nothing."""
        return None

    @abstractmethod
    async def download(self, output: Output) -> bytes:
        """Fetch one output's bytes, size-capped, without sending credentials to the file host."""

    async def aclose(self) -> None:
        return None
