"""Black Forest Labs' own API: FLUX.1 Fill [pro] and FLUX.1 Kontext [pro] (docs/providers.md §3).

BFL answers a submit with a `polling_url` on a *different* host than the one we posted to (api.bfl.ai hands out
api.us1.bfl.ai and the like), so the key may follow that URL only while it stays on BFL's own https hosts.
Finished images live on `delivery.*.bfl.ai` behind signed URLs that expire after 10 minutes; they are fetched
at once by the credential-free `Downloader`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from bot.config import ProviderSettings
from bot.errors import ConfigError, ProviderError
from bot.lifecycle.states import State
from bot.params import BFL_FILL, BFL_KONTEXT, Value
from bot.providers.base import Handle, Output, Provider, ProviderJob, Status
from bot.providers.http import Downloader, ProviderHTTP, RetryPolicy

log = logging.getLogger(__name__)

LABEL = "Black Forest Labs"
BFL_DOMAIN = "bfl.ai"
_DETAIL_CAP = 500
DEFAULT_RETRY = RetryPolicy()

_MSG_REQUEST_MODERATED = "Your request was flagged by the provider's moderation before it ran; nothing was charged."
_MSG_CONTENT_MODERATED = "The result was flagged by the provider's moderation and withheld; nothing was charged."
_MSG_ERROR = "The provider reported an error while making the image; try again, perhaps with other settings."
_MSG_NOT_FOUND = "The provider no longer knows this job (it expired or never existed)."
_MSG_NO_SAMPLE = "The provider reported the job as finished but sent no image."


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_bfl_host(host: str) -> bool:
    return host == BFL_DOMAIN or host.endswith("." + BFL_DOMAIN)


def trusted_hosts(base_url: str) -> Callable[[httpx.URL], bool]:
    """Which URLs may carry `x-key`: the configured base origin; with a *.bfl.ai base, any https *.bfl.ai host on
    the default port (polling URLs move between clusters); with a loopback base (tests, local proxies), the
    same host on any port. Everything else, including look-alikes such as `bfl.ai.example.com`, is refused."""
    base = httpx.URL(base_url)
    base_host = base.host.lower()
    base_port = base.port

    def trusted(url: httpx.URL) -> bool:
        host = url.host.lower()
        if url.scheme == base.scheme and host == base_host and url.port == base_port:
            return True
        if _is_bfl_host(base_host):
            return url.scheme == "https" and url.port in (None, 443) and _is_bfl_host(host)
        if _is_loopback(base_host):
            return url.scheme in ("http", "https") and host == base_host
        return False

    return trusted


def _b64(data: bytes) -> str:
    """Raw base64, no `data:` prefix: the only form BFL documents for image fields."""
    return base64.b64encode(data).decode("ascii")


def _progress(value: Any) -> float | None:
    """BFL's `progress` scale is unconfirmed: read (0, 1] as a fraction and (1, 100] as a percentage."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if 0 < value <= 1:
        return float(value)
    if 1 < value <= 100:
        return float(value) / 100
    return None


def _detail(data: Mapping[str, Any]) -> str:
    """Error/moderation details for logs only (never shown: they may name moderation reasons)."""
    parts = {k: data[k] for k in ("details", "error") if data.get(k) is not None}
    text = json.dumps(parts, default=str) if parts else ""
    return text[:_DETAIL_CAP]


class BFLProvider(Provider):
    """BFL's async API: POST a job, poll its `polling_url`, download `result.sample` right away."""

    name = "bfl"
    supports_cancel = False  # no cancel endpoint is documented

    def __init__(
        self,
        settings: ProviderSettings,
        downloader: Downloader,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if settings.api_key is None:
            raise ConfigError("BFL_API_KEY is not set; the bfl provider cannot be used without it.")
        self.base_url = settings.base_url.rstrip("/")
        self._downloader = downloader
        self._http = ProviderHTTP(
            label=LABEL,
            base_url=self.base_url,
            auth_headers={"x-key": settings.api_key.reveal()},
            trusted=trusted_hosts(self.base_url),
            timeout=timeout,
            retry=retry,
            transport=transport,
        )

    def _body(self, job: ProviderJob) -> tuple[str, dict[str, Value]]:
        """The endpoint path and JSON body for a job; checks what BFL would reject so no request is wasted."""
        spec = job.spec
        body: dict[str, Value] = spec.wire_input(job.params)
        if spec.model == BFL_FILL.model:
            if job.mask is None:
                raise ProviderError("invalid_input", "FLUX.1 Fill needs a mask marking the area to fill.")
            if job.mask.size != job.image.size:
                raise ProviderError(
                    "invalid_input",
                    f"The mask is {job.mask.size[0]}×{job.mask.size[1]} but the image is "
                    f"{job.image.size[0]}×{job.image.size[1]}; they must be the same size.",
                )
            body.update(prompt=job.prompt, image=_b64(job.image.data), mask=_b64(job.mask.data))
        elif spec.model == BFL_KONTEXT.model:
            ratio = job.params.get("aspect_ratio")
            if isinstance(ratio, str) and ratio != "match_input_image":
                body["aspect_ratio"] = ratio  # omitted = keep the input's shape
            body.update(prompt=job.prompt, input_image=_b64(job.image.data))
        else:
            raise ValueError(f"BFLProvider cannot run {spec.provider}/{spec.model}")
        return spec.model, body

    async def submit(self, job: ProviderJob) -> tuple[Handle, Status]:
        path, body = self._body(job)
        _, data = await self._http.post_json(path, body)
        job_id = data.get("id") if isinstance(data, Mapping) else None
        if not isinstance(job_id, str) or not job_id:
            log.warning("BFL submit answered without a job id: %.300r", data)
            raise ProviderError(
                "maybe_submitted",
                f"{LABEL} accepted the request but returned no job id, so the job may exist; check before retrying.",
            )
        polling_url = data.get("polling_url")
        if not isinstance(polling_url, str) or not polling_url:
            polling_url = str(self._http.url("get_result").copy_merge_params({"id": job_id}))
        elif not self._http.is_trusted(polling_url):
            # Kept in the handle; poll() refuses it so the key never leaves BFL's hosts.
            log.warning("BFL job %s: polling_url is on an untrusted host (%s)", job_id, httpx.URL(polling_url).host)
        extra: dict[str, str] = {}
        if isinstance(data.get("cost"), int | float) and not isinstance(data.get("cost"), bool):
            extra["cost"] = str(data["cost"])
        log.info("BFL job %s submitted (%s)", job_id, path)
        handle = Handle(provider=self.name, job_id=job_id, poll_url=polling_url)
        return handle, Status(State.STARTING, raw_status="submitted", extra=extra)

    async def poll(self, handle: Handle) -> Status:
        url = handle.poll_url or str(self._http.url("get_result").copy_merge_params({"id": handle.job_id}))
        if not self._http.is_trusted(url):
            log.warning("BFL job %s: refusing to poll untrusted polling_url host %r", handle.job_id, _host(url))
            raise ProviderError(
                "bad_response",
                f"{LABEL} gave a job address outside its own servers; the bot stopped the job rather than "
                "send its API key there.",
            )
        try:
            data = await self._http.get_json(url)
        except ProviderError as exc:
            if exc.kind == "not_found":
                return Status(State.EXPIRED, message=_MSG_NOT_FOUND, detail=str(exc), raw_status="HTTP 404")
            raise
        return self._status(handle, data)

    def _status(self, handle: Handle, data: Any) -> Status:
        if not isinstance(data, Mapping) or not isinstance(data.get("status"), str):
            log.warning("BFL job %s: unreadable poll answer %.300r", handle.job_id, data)
            raise ProviderError("bad_response", f"{LABEL} sent a job status the bot could not read.")
        raw = data["status"]
        if raw == "Ready":
            result = data.get("result")
            sample = result.get("sample") if isinstance(result, Mapping) else None
            if not isinstance(sample, str) or not sample:
                return Status(State.FAILED, message=_MSG_NO_SAMPLE, detail=f"result={result!r}"[:_DETAIL_CAP],
                              raw_status=raw)
            extra = {"seed": str(result["seed"])} if isinstance(result, Mapping) and "seed" in result else {}
            return Status(State.SUCCEEDED, outputs=(Output(sample),), raw_status=raw, extra=extra)
        if raw == "Request Moderated":
            return Status(State.MODERATED, message=_MSG_REQUEST_MODERATED, detail=_detail(data), raw_status=raw)
        if raw == "Content Moderated":
            return Status(State.MODERATED, message=_MSG_CONTENT_MODERATED, detail=_detail(data), raw_status=raw)
        if raw == "Error":
            log.info("BFL job %s failed: %s", handle.job_id, _detail(data))
            return Status(State.FAILED, message=_MSG_ERROR, detail=_detail(data), raw_status=raw)
        if raw == "Task not found":
            return Status(State.EXPIRED, message=_MSG_NOT_FOUND, raw_status=raw)
        # "Pending" and anything newer ("Reasoning", "Generating", ...): still working; the engine's
        # deadline bounds the wait.
        return Status(State.RUNNING, progress=_progress(data.get("progress")), raw_status=raw)

    async def download(self, output: Output) -> bytes:
        """Fetch `result.sample` without the key. Its signed URL expires 10 minutes after the job finishes, so
        call this as soon as the job succeeds."""
        return await self._downloader.fetch(output.ref)

    async def aclose(self) -> None:
        await self._http.aclose()


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return "?"
