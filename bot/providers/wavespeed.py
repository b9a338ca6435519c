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

from bot.config import ProviderSettings
from bot.errors import ConfigError, ProviderError
from bot.lifecycle.states import State
from bot.params import WAVESPEED_FILL, Value
from bot.providers.base import Handle, Output, Provider, ProviderJob, Status
from bot.providers.http import Downloader, ProviderHTTP, RetryPolicy, error_for_response

log = logging.getLogger(__name__)

LABEL = "WaveSpeedAI"
MIN_SIDE = 256
MAX_SIDE = 1536
_DETAIL_CAP = 500
DEFAULT_RETRY = RetryPolicy()

# data.code on failed tasks → (state, message for users). Raw `data.error` goes to logs only.
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
_MSG_NOT_FOUND = "The provider no longer knows this job (it expired or never existed)."


def _b64(data: bytes) -> str:
    """Raw base64 without a `data:` prefix, the form third-party integrations send (docs/providers.md §4)."""
    return base64.b64encode(data).decode("ascii")


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


class WaveSpeedProvider(Provider):
    """WaveSpeed's async API: POST a task, poll `predictions/{id}/result`, download outputs without the key."""

    name = "wavespeed"
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
            raise ConfigError("WAVESPEED_API_KEY is not set; the wavespeed provider cannot be used without it.")
        self.base_url = settings.base_url.rstrip("/")
        self._downloader = downloader
        # Default trust = the base origin only: data.urls and output hosts never see the key.
        self._http = ProviderHTTP(
            label=LABEL,
            base_url=self.base_url,
            auth_headers={"Authorization": f"Bearer {settings.api_key.reveal()}"},
            timeout=timeout,
            retry=retry,
            transport=transport,
        )

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

    def _unwrap(self, envelope: Any, *, submitting: bool) -> Mapping[str, Any]:
        """`data` from a `{code, message, data}` envelope; an error code inside an HTTP 200 becomes the same
        ProviderError an HTTP error with that code would (short, sanitized reason)."""
        if not isinstance(envelope, Mapping):
            raise self._unreadable(envelope, submitting)
        code = _int(envelope.get("code"))
        if code is not None and code != 200:
            log.info("%s envelope error %s: %.300r", LABEL, code, envelope.get("message"))
            if submitting and code >= 500:
                raise ProviderError(
                    "maybe_submitted",
                    f"{LABEL} had a server error (code {code}), so the job may have been submitted; "
                    "check before retrying to avoid paying twice.",
                )
            status = code if 400 <= code <= 599 else 502
            raise error_for_response(LABEL, httpx.Response(status, json=dict(envelope)))
        data = envelope.get("data")
        if not isinstance(data, Mapping):
            raise self._unreadable(envelope, submitting)
        return data

    @staticmethod
    def _unreadable(envelope: Any, submitting: bool) -> ProviderError:
        log.warning("%s sent an unreadable envelope: %.300r", LABEL, envelope)
        if submitting:
            return ProviderError(
                "maybe_submitted",
                f"{LABEL} accepted the request but returned an unreadable reply, so the job may exist; "
                "check before retrying.",
            )
        return ProviderError("bad_response", f"{LABEL} sent a job status the bot could not read.")

    async def submit(self, job: ProviderJob) -> tuple[Handle, Status]:
        body = self._body(job)
        _, envelope = await self._http.post_json(WAVESPEED_FILL.model, body)
        data = self._unwrap(envelope, submitting=True)
        job_id = data.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise self._unreadable(envelope, True)
        log.info("%s job %s submitted", LABEL, job_id)
        handle = Handle(provider=self.name, job_id=job_id)
        return handle, self._status(job_id, data)

    async def poll(self, handle: Handle) -> Status:
        path = f"predictions/{quote(handle.job_id, safe='')}/result"
        try:
            data = self._unwrap(await self._http.get_json(path), submitting=False)
        except ProviderError as exc:
            if exc.kind == "not_found":
                return Status(State.EXPIRED, message=_MSG_NOT_FOUND, detail=str(exc), raw_status="not found")
            raise
        return self._status(handle.job_id, data)

    def _status(self, job_id: str, data: Mapping[str, Any]) -> Status:
        raw = data.get("status")
        if not isinstance(raw, str):
            raise self._unreadable({"data": data}, False)
        if raw == "created":
            return Status(State.STARTING, raw_status=raw)
        if raw == "completed":
            return self._completed(job_id, data)
        if raw == "failed":
            code = _int(data.get("code"))
            state, message = _FAILURES.get(code if code is not None else -1, (State.FAILED, _GENERIC_FAILURE))
            detail = f"code={code} error={data.get('error')!r}"[:_DETAIL_CAP]
            log.info("%s job %s failed: %s", LABEL, job_id, detail)
            return Status(state, message=message, detail=detail, raw_status=raw)
        if raw in ("cancelled", "canceled"):
            return Status(State.CANCELED, message="The job was cancelled at the provider.", raw_status=raw)
        if raw == "timeout":
            return Status(State.TIMED_OUT, message=_FAILURES[5004][1], raw_status=raw)
        # "processing" and anything undocumented: still working; the engine's deadline bounds the wait.
        return Status(State.RUNNING, raw_status=raw)

    def _completed(self, job_id: str, data: Mapping[str, Any]) -> Status:
        outputs = data.get("outputs")
        flags = data.get("has_nsfw_contents")
        refs = [o for o in outputs if isinstance(o, str) and o] if isinstance(outputs, list) else []
        if not refs:
            log.warning("%s job %s completed without outputs: %.300r", LABEL, job_id, outputs)
            return Status(State.FAILED, message="The provider reported the job as finished but sent no image.",
                          detail=f"outputs={outputs!r}"[:_DETAIL_CAP], raw_status="completed")
        flag_list = flags if isinstance(flags, list) else []
        result = tuple(
            Output(ref, flagged=i < len(flag_list) and flag_list[i] is True) for i, ref in enumerate(refs)
        )
        extra: dict[str, str] = {}
        timings = data.get("timings")
        if isinstance(timings, Mapping) and _int(timings.get("inference")) is not None:
            extra["inference_ms"] = str(timings["inference"])
        return Status(State.SUCCEEDED, outputs=result, raw_status="completed", extra=extra)

    async def download(self, output: Output) -> bytes:
        """Fetch an output URL (kept 7 days) or decode naked base64, never with the key."""
        return await self._downloader.fetch(output.ref)

    async def aclose(self) -> None:
        await self._http.aclose()
