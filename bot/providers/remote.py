"""What every provider behind an HTTP API shares, written once: the key check, the transport, credential-free
downloads, reading a poll answer (a 404 there means the job is gone) and the "may have been submitted" reply.

Subclasses say where a job is polled (`_poll_target`) and what an answer means (`_read_poll`); everything
else about talking HTTP lives in `bot.providers.http`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import weakref
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bot.config import ProviderSettings
from bot.errors import ConfigError, ProviderError, UserError
from bot.lifecycle.states import State
from bot.params import SPECS
from bot.providers.base import Handle, Output, Provider, ProviderJob, Status
from bot.providers.http import ByteBudget, Downloader, ProviderHTTP, RetryPolicy, maybe_submitted, watch_create

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
    if isinstance(value, str) and value.strip().lstrip("-").isdecimal():
        try:
            return int(value)
        except ValueError:  # more digits than Python converts
            return None
    return None


def _guard_submit(
    method: Callable[[HTTPProvider, ProviderJob], Awaitable[tuple[Handle, Status]]],
) -> Callable[[HTTPProvider, ProviderJob], Awaitable[tuple[Handle, Status]]]:
    @functools.wraps(method)
    async def submit(self: HTTPProvider, job: ProviderJob) -> tuple[Handle, Status]:
        with watch_create() as attempt:
            try:
                handle, status = await method(self, job)
            except UserError:
                raise
            except Exception as exc:
                log.exception("%s: submit failed unexpectedly", self.label)
                if attempt.sent:
                    raise maybe_submitted(self.label, "sent a reply the bot could not read") from exc
                raise ProviderError(
                    "failed",
                    f"The bot could not prepare the request for {self.label}; nothing was sent, so nothing was "
                    "charged.",
                ) from exc
        return handle, self._bounded(handle, status)

    return submit


def _guard_poll(
    method: Callable[[HTTPProvider, Handle], Awaitable[Status]],
) -> Callable[[HTTPProvider, Handle], Awaitable[Status]]:
    @functools.wraps(method)
    async def poll(self: HTTPProvider, handle: Handle) -> Status:
        try:
            status = await method(self, handle)
        except UserError:
            raise
        except Exception as exc:
            log.exception("%s job %s: poll failed unexpectedly", self.label, handle.job_id)
            raise ProviderError(
                "bad_response",
                f"{self.label} sent a job status the bot could not read; the job may still finish there and be "
                "charged.",
            ) from exc
        return self._bounded(handle, status)

    return poll


def _guard_download(
    method: Callable[[HTTPProvider, Output], Awaitable[bytes]],
) -> Callable[[HTTPProvider, Output], Awaitable[bytes]]:
    @functools.wraps(method)
    async def download(self: HTTPProvider, output: Output) -> bytes:
        try:
            return await method(self, output)
        except UserError:
            raise
        except Exception as exc:
            log.exception("%s: download failed unexpectedly", self.label)
            raise ProviderError(
                "bad_response",
                "The result file could not be read. The job finished at the provider, so it may be charged.",
            ) from exc

    return download


def _guard_cancel(
    method: Callable[[HTTPProvider, Handle], Awaitable[None]],
) -> Callable[[HTTPProvider, Handle], Awaitable[None]]:
    @functools.wraps(method)
    async def cancel(self: HTTPProvider, handle: Handle) -> None:
        try:
            await method(self, handle)
        except Exception:  # best effort: the job ends on our side either way
            log.exception("%s job %s: cancel failed unexpectedly", self.label, handle.job_id)

    return cancel


_GUARDS: dict[str, Callable[[Any], Any]] = {
    "submit": _guard_submit,
    "poll": _guard_poll,
    "download": _guard_download,
    "cancel": _guard_cancel,
}


def _guard(cls: type) -> None:
    """Wrap the provider methods `cls` defines itself, so no exception leaves the provider layer untyped."""
    for name, guard in _GUARDS.items():
        method = cls.__dict__.get(name)
        if method is not None:
            setattr(cls, name, guard(method))


def _max_outputs(provider: str) -> int:
    """The most outputs any of the provider's models may return (the specs' `outputs` maximum, else 1)."""
    most = 1
    for spec in SPECS:
        field = spec.field("outputs") if spec.provider == provider else None
        if field is not None and isinstance(field.maximum, int | float):
            most = max(most, int(field.maximum))
    return most


class HTTPProvider(Provider):
    """A provider reached over HTTP with one API key. Output files are fetched by the shared credential-free
    `Downloader`, so no file host ever sees the key.

    Every subclass's `submit`, `poll`, `download` and `cancel` are wrapped once here: any failure becomes a
    ProviderError that says truthfully whether the job may be charged, answers are capped at the models' most
    outputs, and one job's downloads share a byte budget."""

    label: str  # the service's name in users' messages (never a host name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _guard(cls)

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
        self._max_outputs = _max_outputs(self.name)
        self._budgets: weakref.WeakKeyDictionary[Output, ByteBudget] = weakref.WeakKeyDictionary()
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
        return await self._downloader.fetch(output.ref, self._budgets.get(output))

    def _bounded(self, handle: Handle, status: Status) -> Status:
        """At most the models' most outputs (the rest are never downloaded), sharing one job's byte budget."""
        if not status.outputs:
            return status
        outputs = status.outputs
        if len(outputs) > self._max_outputs:
            log.warning(
                "%s job %s: %d outputs, more than its models make; keeping %d",
                self.label,
                handle.job_id,
                len(outputs),
                self._max_outputs,
            )
            outputs = outputs[: self._max_outputs]
            status = dataclasses.replace(status, outputs=outputs)
        budget = self._downloader.new_budget()
        for output in outputs:
            self._budgets[output] = budget
        return status

    async def aclose(self) -> None:
        await self._http.aclose()

    def _untrackable(self, data: Any) -> ProviderError:
        """A create that was accepted but whose reply names no job we could follow: it may exist and bill."""
        log.warning("%s: create answered without a usable job id: %.300r", self.label, data)
        return maybe_submitted(self.label, "accepted the job but sent a reply the bot cannot track")

    def _unreadable(self, handle: Handle, data: Any) -> ProviderError:
        log.warning("%s job %s: unreadable poll answer %.300r", self.label, handle.job_id, data)
        return ProviderError("bad_response", f"{self.label} sent a job status the bot could not read.")


_guard(HTTPProvider)
