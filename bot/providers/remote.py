"""What every provider behind an HTTP API shares, written once: the key check, the transport, credential-free
downloads, reading a poll answer (a 404 there means the job is gone) and the "may have been submitted" reply.

Subclasses say where a job is polled (`_poll_target`) and what an answer means (`_read_poll`); everything
else about talking HTTP lives in `bot.providers.http`.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import httpx

from bot.config import ProviderSettings
from bot.errors import ConfigError, ProviderError
from bot.lifecycle.states import State
from bot.providers.base import Handle, Output, Provider, Status
from bot.providers.http import Downloader, ProviderHTTP, RetryPolicy, maybe_submitted

log = logging.getLogger(__name__)

DETAIL_CAP = 500  # provider text kept in `Status.detail` for the logs
MSG_GONE = "The provider no longer knows this job (it expired or never existed)."


def as_int(value: Any) -> int | None:
    """An integer from a JSON int, integral float or digit string (never a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


class HTTPProvider(Provider):
    """A provider reached over HTTP with one API key. Output files are fetched by the shared credential-free
    `Downloader`, so no file host ever sees the key."""

    label: str  # the service's name in users' messages (never a host name)

    def __init__(
        self,
        settings: ProviderSettings,
        downloader: Downloader,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if settings.api_key is None:
            from bot.providers.registry import PROVIDERS  # the registry builds these clients: import it late

            variable = PROVIDERS[self.name].env.key
            raise ConfigError(f"{variable} is not set, so the {self.name} provider cannot be used.")
        self._downloader = downloader
        self._http = ProviderHTTP(
            label=self.label,
            base_url=settings.base_url,
            auth_headers=self._auth_headers(settings.api_key.reveal()),
            trusted=self._trusted(settings.base_url),
            timeout=timeout,
            retry=retry or RetryPolicy(),
            transport=transport,
        )

    @staticmethod
    def _auth_headers(key: str) -> dict[str, str]:
        """The headers that carry the key (sent only to trusted hosts)."""
        return {"Authorization": f"Bearer {key}"}

    @staticmethod
    def _trusted(base_url: str) -> Callable[[httpx.URL], bool] | None:
        """Which URLs may carry the key; None = the base URL's origin only."""
        return None

    @abstractmethod
    def _poll_target(self, handle: Handle) -> str | httpx.URL:
        """Where to look at the job (a path under the base URL, or a trusted absolute URL)."""

    @abstractmethod
    def _read_poll(self, handle: Handle, data: Any) -> Status:
        """What one poll answer (parsed JSON) says about the job."""

    async def poll(self, handle: Handle) -> Status:
        """GET the job once. A 404 means the provider no longer knows it (expired or never existed): that ends
        the job as expired rather than as an error worth retrying."""
        target = self._poll_target(handle)
        try:
            return self._read_poll(handle, await self._http.get_json(target))
        except ProviderError as exc:
            if exc.kind != "not_found":
                raise
            log.info("%s job %s: not found at the provider", self.label, handle.job_id)
            return Status(State.EXPIRED, message=MSG_GONE, detail=exc.message, raw_status="not found")

    async def download(self, output: Output) -> bytes:
        """Fetch an output (URL, data: URI or naked base64), size-capped and without the key. Provider URLs
        expire (BFL's after 10 minutes), so call this as soon as the job succeeds."""
        return await self._downloader.fetch(output.ref)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _untrackable(self, data: Any) -> ProviderError:
        """A create that was accepted but whose reply names no job we could follow: it may exist and bill."""
        log.warning("%s: create answered without a usable job id: %.300r", self.label, data)
        return maybe_submitted(self.label, "accepted the job but sent a reply the bot cannot track")

    def _unreadable(self, handle: Handle, data: Any) -> ProviderError:
        log.warning("%s job %s: unreadable poll answer %.300r", self.label, handle.job_id, data)
        return ProviderError("bad_response", f"{self.label} sent a job status the bot could not read.")
