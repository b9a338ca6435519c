"""Black Forest Labs' own API: FLUX.1 Fill [pro] and FLUX.1 Kontext [pro] (docs/providers.md §3).

BFL answers a submit with a `polling_url` on a *different* host than the one we posted to (api.bfl.ai hands out
api.us1.bfl.ai and the like), so the key may follow that URL only while it stays on BFL's own https hosts.
Finished images live on `delivery.*.bfl.ai` behind signed URLs that expire after 10 minutes; they are fetched
at once by the credential-free `Downloader`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from bot.config import is_loopback_host
from bot.errors import ProviderError
from bot.lifecycle.states import State
from bot.params import BFL_FILL, BFL_KONTEXT, Value
from bot.providers.base import Callback, Handle, Output, ProviderJob, Status
from bot.providers.http import clean_text, content_policy_message, is_content_policy
from bot.providers.remote import DETAIL_CAP, MSG_GONE, HTTPProvider
from bot.web.hooks import Delivery, body_id, verify_bfl

log = logging.getLogger(__name__)

_CODE = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)+")  # a snake_case error code, e.g. generation_timeout

LABEL = "Black Forest Labs"
BFL_DOMAIN = "bfl.ai"

_MSG_REQUEST_MODERATED = "Your request was flagged by the provider's moderation before it ran; nothing was charged."
_MSG_CONTENT_MODERATED = "The result was flagged by the provider's moderation and withheld; nothing was charged."
_MSG_ERROR = "The provider reported an error while making the image; try again, perhaps with other settings."
_MSG_NO_SAMPLE = "The provider reported the job as finished but sent no image."


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
        if is_loopback_host(base_host):
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
    parts = {k: data[k] for k in ("details", "error", "message") if data.get(k) is not None}
    text = json.dumps(parts, default=str) if parts else ""
    return text[:DETAIL_CAP]


def _error_reason(data: Mapping[str, Any]) -> str:
    """The provider's own words for an `Error` status: its `message`, else its `error` (a bare code such as
    `generation_timeout` is spelled out), made safe to show; "" when it gave none."""
    for key in ("message", "error"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            return clean_text(text.replace("_", " ") if _CODE.fullmatch(text) else text, 200)
    return ""


class BFLProvider(HTTPProvider):
    """BFL's async API: POST a job, poll its `polling_url`, download `result.sample` right away."""

    name = "bfl"
    label = LABEL
    supports_cancel = False  # no cancel endpoint is documented

    @staticmethod
    def _auth_headers(key: str) -> dict[str, str]:
        return {"x-key": key}

    @staticmethod
    def _trusted(base_url: str) -> Callable[[httpx.URL], bool]:
        return trusted_hosts(base_url)

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
        callback = self.webhooks.issue(self.name, with_secret=True) if self.webhooks is not None else None
        if callback is not None:
            assert self.webhooks is not None and callback.secret is not None
            body.update(webhook_url=self.webhooks.url(self.name, callback), webhook_secret=callback.secret)
        _, data = await self._http.post_json(path, body)
        job_id = data.get("id") if isinstance(data, Mapping) else None
        if not isinstance(job_id, str) or not job_id:
            raise self._untrackable(data)
        polling_url = data.get("polling_url")
        if not isinstance(polling_url, str) or not polling_url:
            polling_url = str(self._http.url("get_result").copy_merge_params({"id": job_id}))
        elif not self._http.is_trusted(polling_url):
            # Kept in the handle; poll() refuses it so the key never leaves BFL's hosts.
            log.warning("BFL job %s: polling_url is on an untrusted host (%s)", job_id, _host(polling_url))
        extra: dict[str, str] = {}
        if isinstance(data.get("cost"), int | float) and not isinstance(data.get("cost"), bool):
            extra["cost"] = str(data["cost"])
        log.info("BFL job %s submitted (%s)", job_id, path)
        handle = Handle(provider=self.name, job_id=job_id, poll_url=polling_url, callback=callback)
        return handle, Status(State.STARTING, raw_status="submitted", extra=extra)

    async def verify_webhook(self, callback: Callback, body: bytes, headers: Mapping[str, str]) -> Delivery | None:
        """`X-BFL-Signature` with the job's own secret; BFL calls once the job has ended."""
        if callback.secret is None or verify_bfl(callback.secret, body, headers) is None:
            return None
        return Delivery(id=body_id(body), final=True)

    def _poll_target(self, handle: Handle) -> str:
        """The job's own `polling_url` (BFL moves jobs between clusters), only while it is on a trusted host."""
        url = handle.poll_url or str(self._http.url("get_result").copy_merge_params({"id": handle.job_id}))
        if not self._http.is_trusted(url):
            log.warning("BFL job %s: refusing to poll untrusted polling_url host %r", handle.job_id, _host(url))
            raise ProviderError(
                "bad_response",
                f"{LABEL} gave a job address outside its own servers; the bot stopped the job rather than "
                "send its API key there.",
            )
        return url

    def _read_poll(self, handle: Handle, data: Any) -> Status:
        if not isinstance(data, Mapping) or not isinstance(data.get("status"), str):
            raise self._unreadable(handle, data)
        raw = data["status"]
        if raw == "Ready":
            result = data.get("result")
            sample = result.get("sample") if isinstance(result, Mapping) else None
            if not isinstance(sample, str) or not sample:
                return Status(
                    State.FAILED, message=_MSG_NO_SAMPLE, detail=f"result={result!r}"[:DETAIL_CAP], raw_status=raw
                )
            extra = {"seed": str(result["seed"])} if isinstance(result, Mapping) and "seed" in result else {}
            return Status(State.SUCCEEDED, outputs=(Output(sample),), raw_status=raw, extra=extra)
        if raw == "Request Moderated":
            return Status(State.MODERATED, message=_MSG_REQUEST_MODERATED, detail=_detail(data), raw_status=raw)
        if raw == "Content Moderated":
            return Status(State.MODERATED, message=_MSG_CONTENT_MODERATED, detail=_detail(data), raw_status=raw)
        if raw == "Error":
            log.info("BFL job %s failed: %s", handle.job_id, _detail(data))
            if is_content_policy(data):
                return Status(
                    State.MODERATED, message=content_policy_message(LABEL), detail=_detail(data), raw_status=raw
                )
            reason = _error_reason(data)
            message = f"{LABEL} could not make the image: {reason}" if reason else _MSG_ERROR
            return Status(State.FAILED, message=message, detail=_detail(data), raw_status=raw)
        if raw == "Task not found":
            return Status(State.EXPIRED, message=MSG_GONE, raw_status=raw)
        # "Pending" and anything newer ("Reasoning", "Generating", ...): still working; the engine's
        # deadline bounds the wait. `progress` is often absent altogether (BFL's own examples omit it).
        return Status(State.RUNNING, progress=_progress(data.get("progress")), raw_status=raw)


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return "?"
