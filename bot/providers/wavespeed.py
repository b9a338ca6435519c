"""WaveSpeedAI v3: FLUX.1 Fill [dev] (`wavespeed-ai/flux-fill-dev`, docs/providers.md §4).

Every answer is a `{code, message, data}` envelope, and `code` can report an error inside an HTTP 200, so both
layers are checked. Results are polled at `{base}/predictions/{id}/result`, built from the configured base and
never taken from `data.urls`, so the key only ever goes to the configured host. The output size is exactly the
`size` we send, so we send the input's own size (the pipeline has already scaled it into 256–1536 per side).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from bot.errors import ProviderError
from bot.lifecycle.states import State
from bot.params import WAVESPEED_FILL, Value
from bot.providers.base import Callback, Handle, Output, ProviderJob, Status
from bot.providers.http import clean_text, error_for_response, maybe_submitted
from bot.providers.remote import DETAIL_CAP, HTTPProvider, as_int
from bot.web.hooks import Delivery, verify_wavespeed

log = logging.getLogger(__name__)

LABEL = "WaveSpeedAI"
MIN_SIDE = 256
MAX_SIDE = 1536

# data.code on failed tasks → (state, message for users). With a known code the raw `data.error` goes to the
# logs only; without one (the docs' and the official SDK's examples carry none) it is the only reason given.
_FAILURES: dict[int, tuple[State, str]] = {
    1200: (State.MODERATED, "Your request or its result was flagged by the provider's moderation."),
    1400: (State.FAILED, "The provider rejected a parameter."),
    1401: (State.FAILED, "The provider rejected a parameter."),
    1402: (State.FAILED, "The provider could not download the input image."),
    1403: (State.FAILED, "The provider's task failed; try again."),
    1405: (State.FAILED, "The provider's task failed; try again."),
    5000: (State.FAILED, "The provider had an internal error; try again later."),
    5003: (State.FAILED, "The provider is unavailable right now; try again later."),
    5004: (State.TIMED_OUT, "The provider timed out while making the image."),
}
_GENERIC_FAILURE = "The provider could not make the image."
# `created` in the docs, `pending` in the official SDK's fixtures: queued at WaveSpeed, not running yet.
_QUEUED = frozenset({"created", "pending"})


def _b64(data: bytes) -> str:
    """Raw base64 without a `data:` prefix, the form third-party integrations send (docs/providers.md §4)."""
    return base64.b64encode(data).decode("ascii")


class WaveSpeedProvider(HTTPProvider):
    """WaveSpeed's async API: POST a task, poll `predictions/{id}/result`, download outputs without the key."""

    name = "wavespeed"
    label = LABEL
    supports_cancel = False  # no cancel endpoint is documented
    _signing_secret: str | None = None  # the account's webhook secret, fetched on the first delivery
    # The default trust (the base origin only) keeps `data.urls` and output hosts from ever seeing the key.

    def _body(self, job: ProviderJob) -> dict[str, Value | list[dict[str, Value]]]:
        """The JSON body; checks size rules first so an invalid request is never sent (and never billed)."""
        if job.spec.model != WAVESPEED_FILL.model:
            raise ValueError(f"WaveSpeedProvider cannot run {job.spec.provider}/{job.spec.model}")
        if job.mask is None:
            raise ProviderError("invalid_input", "FLUX.1 Fill needs a mask marking the area to fill.")
        width, height = job.image.size
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise ProviderError(
                "invalid_input",
                f"The image is {width}×{height}; {LABEL} accepts {MIN_SIDE}–{MAX_SIDE} pixels per side.",
            )
        if job.mask.size != job.image.size:
            raise ProviderError(
                "invalid_input",
                f"The mask is {job.mask.size[0]}×{job.mask.size[1]} but the image is {width}×{height}; "
                "they must be the same size.",
            )
        body: dict[str, Value | list[dict[str, Value]]] = dict(job.spec.wire_input(job.params))
        body.update(
            prompt=job.prompt,
            image=_b64(job.image.data),
            mask_image=_b64(job.mask.data),
            size=f"{width}*{height}",
        )
        lora = job.params.get("lora")
        if isinstance(lora, str) and lora:
            scale = job.params.get("lora_scale", 1.0)
            body["loras"] = [{"path": lora, "scale": float(scale) if isinstance(scale, int | float) else 1.0}]
        return body

    def _unwrap(self, envelope: Any, handle: Handle | None) -> Mapping[str, Any]:
        """`data` from a `{code, message, data}` envelope (`handle` is None for the create's reply). An error code
        inside an HTTP 200 becomes the same ProviderError an HTTP error with that code would."""
        if not isinstance(envelope, Mapping):
            raise self._untrackable(envelope) if handle is None else self._unreadable(handle, envelope)
        code = as_int(envelope.get("code"))
        if code is not None and code != 200:
            log.info("%s envelope error %s: %.300r", LABEL, code, envelope.get("message"))
            if handle is None and code >= 500:
                raise maybe_submitted(LABEL, f"had a server error (code {code})")
            status = code if 400 <= code <= 599 else 502
            raise error_for_response(LABEL, httpx.Response(status, json=dict(envelope)))
        data = envelope.get("data")
        if not isinstance(data, Mapping):
            raise self._untrackable(envelope) if handle is None else self._unreadable(handle, envelope)
        return data

    async def submit(self, job: ProviderJob) -> tuple[Handle, Status]:
        body = self._body(job)
        path = WAVESPEED_FILL.model
        callback = self.webhooks.issue(self.name) if self.webhooks is not None else None
        if callback is not None:
            assert self.webhooks is not None
            path += "?webhook=" + quote(self.webhooks.url(self.name, callback), safe="")
        _, envelope = await self._http.post_json(path, body)
        data = self._unwrap(envelope, None)
        job_id = data.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise self._untrackable(envelope)
        log.info("%s job %s submitted", LABEL, job_id)
        handle = Handle(provider=self.name, job_id=job_id, callback=callback)
        if not isinstance(data.get("status"), str):  # the SDK's fixtures answer a bare `{"data": {"id": ...}}`
            return handle, Status(State.STARTING, raw_status="submitted")
        return handle, self._status(handle, data)

    async def verify_webhook(self, callback: Callback, body: bytes, headers: Mapping[str, str]) -> Delivery | None:
        """WaveSpeed's HMAC-hex scheme with the account's webhook secret (fetched once, with the key)."""
        if self._signing_secret is None:
            envelope = await self._http.get_json("webhook/secret")
            data = envelope.get("data", envelope) if isinstance(envelope, Mapping) else None
            secret = data.get("secret") or data.get("key") if isinstance(data, Mapping) else None
            if not isinstance(secret, str) or not secret:
                raise ProviderError("bad_response", f"{LABEL} sent no webhook signing secret.")
            self._signing_secret = secret
        verified = verify_wavespeed(self._signing_secret, body, headers)
        if verified is None:
            return None
        final = verified.get("status") in ("completed", "failed", "cancelled", "timeout")
        return Delivery(id=headers.get("webhook-id", ""), final=final)

    def _poll_target(self, handle: Handle) -> str:
        """Built from the configured base, never taken from `data.urls`, so the key only goes to that host."""
        return f"predictions/{quote(handle.job_id, safe='')}/result"

    def _read_poll(self, handle: Handle, data: Any) -> Status:
        return self._status(handle, self._unwrap(data, handle))

    def _status(self, handle: Handle, data: Mapping[str, Any]) -> Status:
        raw = data.get("status")
        if not isinstance(raw, str):
            raise self._unreadable(handle, data)
        if raw in _QUEUED:
            return Status(State.STARTING, raw_status=raw)
        if raw == "completed":
            return self._completed(handle.job_id, data)
        if raw == "failed":
            return self._failed(handle.job_id, data)
        if raw in ("cancelled", "canceled"):
            return Status(State.CANCELED, message="The job was cancelled at the provider.", raw_status=raw)
        if raw == "timeout":
            return Status(State.TIMED_OUT, message=_FAILURES[5004][1], raw_status=raw)
        # "processing" and anything undocumented: still working; the engine's deadline bounds the wait.
        return Status(State.RUNNING, raw_status=raw)

    @staticmethod
    def _failed(job_id: str, data: Mapping[str, Any]) -> Status:
        """A known `data.code` picks the message; otherwise the provider's own `error` text is the reason."""
        code = as_int(data.get("code"))
        error = data.get("error") if isinstance(data.get("error"), str) else ""
        detail = f"code={code} error={error!r}"[:DETAIL_CAP]
        log.info("%s job %s failed: %s", LABEL, job_id, detail)
        if code in _FAILURES:
            state, message = _FAILURES[code]
            return Status(state, message=message, detail=detail, raw_status="failed")
        reason = clean_text(error, 200) if error else ""
        message = f"{_GENERIC_FAILURE[:-1]}: {reason}" if reason else _GENERIC_FAILURE
        return Status(State.FAILED, message=message, detail=detail, raw_status="failed")

    @staticmethod
    def _completed(job_id: str, data: Mapping[str, Any]) -> Status:
        outputs = data.get("outputs")
        flags = data.get("has_nsfw_contents")
        refs = [o for o in outputs if isinstance(o, str) and o] if isinstance(outputs, list) else []
        if not refs:
            log.warning("%s job %s completed without outputs: %.300r", LABEL, job_id, outputs)
            return Status(
                State.FAILED,
                message="The provider reported the job as finished but sent no image.",
                detail=f"outputs={outputs!r}"[:DETAIL_CAP],
                raw_status="completed",
            )
        flag_list = flags if isinstance(flags, list) else []
        result = tuple(Output(ref, flagged=i < len(flag_list) and flag_list[i] is True) for i, ref in enumerate(refs))
        extra: dict[str, str] = {}
        timings = data.get("timings")
        if isinstance(timings, Mapping) and as_int(timings.get("inference")) is not None:
            extra["inference_ms"] = str(timings["inference"])
        return Status(State.SUCCEEDED, outputs=result, raw_status="completed", extra=extra)
