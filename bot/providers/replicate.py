"""Replicate's prediction API (docs/providers.md §1), official or through an aggregator serving it elsewhere (§2).

Every request is built from the configured base URL: the `urls.get`/`urls.cancel` links in a prediction point at
api.replicate.com even behind an aggregator, where following them would hand the aggregator's token to Replicate.
Output files are fetched by the credential-free `Downloader` (replicate-python leaks the token there, §5.1).

The create answers at once by default (no `Prefer: wait`): the job engine needs the prediction id straight away
to show progress and to cancel. Sync mode stays available through `wait_seconds`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from bot.config import ProviderSettings
from bot.errors import ProviderError
from bot.lifecycle.states import State
from bot.providers.base import Callback, Handle, InputImage, Output, ProviderJob, Status, Window
from bot.providers.http import Downloader, RetryPolicy, clean_text
from bot.providers.remote import HTTPProvider, as_int
from bot.web.hooks import Delivery, verify_standard

log = logging.getLogger(__name__)

OFFICIAL_HOST = "api.replicate.com"
MAX_WAIT = 60  # `Prefer: wait=n` accepts 1..60; 0 and larger values are undocumented (§1)
_READ_MARGIN = 5.0  # the read timeout of a held create: `wait_seconds` plus this
_DETAIL_CAP = 2000
_REMEMBERED_JOBS = 1024
_LARGE_DATA_URI = 1024 * 1024  # Replicate recommends data URIs only up to 256 KB–1 MB (§1)
WEBHOOK_EVENTS = ["start", "output", "logs", "completed"]  # logs carry the progress bar

# replicate-python's Prediction.Progress pattern, and cog-flux's length-less tqdm ("28it [00:05, 5.2it/s]").
_TQDM_PERCENT = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)")
_TQDM_COUNT = re.compile(r"(\d+)it \[")
_TQDM_SPEED = re.compile(r"(\d+(?:\.\d+)?)(it/s|s/it)\]\s*$")  # "5.20it/s]", or "1.52s/it]" when slow
_SEED = re.compile(r"Using seed:\s*(-?\d+)")
_MODERATION = re.compile(r"nsfw|flagged as sensitive|\bE005\b|content moderation|safety filter", re.IGNORECASE)

_STATES = {
    "starting": State.STARTING,
    "processing": State.RUNNING,
    "succeeded": State.SUCCEEDED,
    "failed": State.FAILED,
    "canceled": State.CANCELED,
    "aborted": State.TIMED_OUT,
}

_MSG_MODERATED = "The provider's safety checker blocked this result; try a different prompt or picture."
_MSG_CANCELED = "The job was canceled at the provider."
_MSG_ABORTED = "The provider gave up before starting the job (its deadline passed); nothing was charged."
_MSG_EXPIRED = "The provider already deleted this result (Replicate keeps results for one hour)."


@dataclass(frozen=True)
class _Asked:
    """What we asked for, remembered between submit and poll for drop counts and step-based progress."""

    outputs: int
    steps: int | None


@dataclass(frozen=True)
class LogProgress:
    """What a prediction's logs say about its sampling: the fraction done and, where tqdm shows its speed, when
    sampling ends at that speed."""

    fraction: float
    ends_in: Window | None = None


def parse_progress(logs: str | None, steps: int | None = None) -> LogProgress | None:
    """Progress from prediction logs, or None when the logs carry no usable progress.

    A tqdm bar wins (replicate-python's rule, last matching line), read as its exact "n/total"; cog-flux's
    bare "Nit [" counter only means something against the requested step count, and is kept below 1 because
    decoding follows. Sampling done leaves no remaining time to tell: what follows it is not in the logs.
    """
    if not logs:
        return None
    for line in reversed(re.split(r"[\r\n]+", logs)):
        match = _TQDM_PERCENT.match(line)
        if match is not None:
            done, total = int(match.group(2)), int(match.group(3))
            fraction = done / total if total > 0 else int(match.group(1)) / 100
            return LogProgress(min(1.0, max(0.0, fraction)), _sampling_left(line, total - done))
        counted = _TQDM_COUNT.search(line)
        if counted is not None:
            if not steps or steps <= 0:
                return None
            done = int(counted.group(1))
            return LogProgress(min(0.99, done / steps), _sampling_left(line, steps - done))
    return None


def _reading(data: Mapping[str, Any], asked: _Asked | None) -> LogProgress | None:
    """A prediction's progress from its logs, counted against the steps we asked for (else the echoed input's)."""
    echoed = data.get("input")
    steps = asked.steps if asked and asked.steps else None
    if steps is None and isinstance(echoed, Mapping):
        steps = as_int(echoed.get("num_inference_steps"))
    logs = data.get("logs")
    return parse_progress(logs, steps) if isinstance(logs, str) else None


def _sampling_left(line: str, steps_left: int) -> Window | None:
    """When `steps_left` steps end at the speed tqdm shows at the end of `line` (None if it shows none): the
    first of them is under way, so the window is one step wide."""
    speed = _TQDM_SPEED.search(line)
    if speed is None or steps_left <= 0:
        return None
    value = float(speed.group(1))
    per_step = value if speed.group(2) == "s/it" else 1 / value if value > 0 else None
    return None if per_step is None else Window((steps_left - 1) * per_step, steps_left * per_step)


def output_refs(output: Any) -> list[str]:
    """File references from any output shape seen: a list (fill-dev), a string (kontext, pro), a {"url"}
    object, or the aggregator doc's OpenAI-like {"created", "data": [{"url"}]}."""
    if output is None:
        return []
    if isinstance(output, str):
        return [output] if output.strip() else []
    if isinstance(output, list):
        return [ref for item in output for ref in output_refs(item)]
    if isinstance(output, Mapping):
        if isinstance(output.get("data"), list):
            return output_refs(output["data"])
        for key in ("url", "uri", "b64_json"):
            value = output.get(key)
            if isinstance(value, str) and value.strip():
                return [value]
    return []


def _openai_like(data: Mapping[str, Any]) -> bool:
    """The aggregator doc's `{"created", "data": [{"url"}]}` reply, which has no status of its own (§2)."""
    return "status" not in data and isinstance(data.get("data"), list) and bool(output_refs(data["data"]))


def _finished_while_held(data: Mapping[str, Any]) -> bool:
    """A sync-mode create answered `processing` with its output already inline as data: URIs.

    Replicate returns a held create as soon as the model's output exists, before the status turns `succeeded`
    (replicate-python's cassettes record exactly that); its `run()` treats any held answer that is no longer
    `starting` as done. We take the same answer as finished only when every output is a data: URI, i.e. the
    files themselves are in hand, so there is nothing to poll or download again.
    """
    if data.get("status") != "processing":
        return False
    refs = output_refs(data.get("output"))
    return bool(refs) and all(ref.strip()[:5].lower() == "data:" for ref in refs)


def _error_text(error: Any) -> str:
    if error is None:
        return ""
    if isinstance(error, str):
        return error
    try:
        return json.dumps(error, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(error)


def _short_reason(text: str) -> str:
    """One safe line from a model error: the last line of a traceback, else the first line; no URLs, capped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if any(line.startswith("Traceback") for line in lines) else lines[0]
    return clean_text(line, 200)


def _data_uri(image: InputImage) -> str:
    return f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"


class ReplicateProvider(HTTPProvider):
    """flux-fill-dev / flux-kontext-dev through Replicate's `models/{owner}/{name}/predictions` endpoint."""

    name = "replicate"
    supports_cancel = True

    def __init__(
        self,
        settings: ProviderSettings,
        downloader: Downloader,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        wait_seconds: int = 0,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        host = httpx.URL(settings.base_url).host
        # Users see this label; the aggregator's host name stays in the operator's logs.
        self.label = "Replicate" if host == OFFICIAL_HOST else "The Replicate-compatible service"
        super().__init__(settings, downloader, transport=transport, timeout=timeout, retry=retry)
        if host != OFFICIAL_HOST:
            log.info("Replicate provider uses a Replicate-compatible service at %s", host)
        # 0 (or less): no `Prefer` header at all; 1..60: sync mode, capped at Replicate's documented maximum.
        self.wait_seconds = max(0, min(MAX_WAIT, int(wait_seconds)))
        self._asked: OrderedDict[str, _Asked] = OrderedDict()
        self._signing_secret: str | None = None

    # ---- Provider API -----------------------------------------------------------------------------------

    async def submit(self, job: ProviderJob) -> tuple[Handle, Status]:
        """Create the prediction. With `wait_seconds`, Replicate holds the request up to that long (sync mode)
        and often answers with the finished output."""
        owner, _, model = job.spec.model.partition("/")
        path = f"models/{quote(owner, safe='')}/{quote(model, safe='')}/predictions"
        body: dict[str, Any] = {"input": self._input(job)}
        callback = self.webhooks.issue(self.name) if self.webhooks is not None else None
        if callback is not None:
            assert self.webhooks is not None
            body.update(webhook=self.webhooks.url(self.name, callback), webhook_events_filter=WEBHOOK_EVENTS)
        held = self.wait_seconds > 0
        try:
            status_code, data = await self._http.post_json(
                path,
                body,
                headers={"Prefer": f"wait={self.wait_seconds}"} if held else None,
                read_timeout=self.wait_seconds + _READ_MARGIN if held else None,
            )
        except ProviderError as exc:
            if exc.kind == "invalid_input" and "parse request body" in exc.message.lower():
                # Replicate's answer to an oversized data URI (§1, replicate-go#24).
                raise ProviderError(
                    "invalid_input",
                    f"{self.label} could not read the request; the picture is probably too large to send. "
                    "Try a smaller image.",
                ) from exc
            raise
        asked = _Asked(outputs=as_int(job.params.get("outputs")) or 1, steps=as_int(job.params.get("steps")))
        if not isinstance(data, Mapping):
            raise self._untrackable(data)
        job_id = data.get("id")
        if not isinstance(job_id, str) or not job_id:
            if _openai_like(data):  # a finished reply without a prediction id
                handle = Handle(provider=self.name, job_id=f"sync-{data.get('created', 'unknown')}")
                return handle, self._status(data, asked)
            raise self._untrackable(data)
        self._remember(job_id, asked)
        log.info("%s: created prediction %s (HTTP %d, status %s)", self.label, job_id, status_code, data.get("status"))
        status = self._status(data, asked, held=held)
        if status.state.terminal:
            self._asked.pop(job_id, None)
        return Handle(provider=self.name, job_id=job_id, callback=callback), status

    async def verify_webhook(self, callback: Callback, body: bytes, headers: Mapping[str, str]) -> Delivery | None:
        """Standard Webhooks with the account's signing secret (fetched once, with the key)."""
        if self._signing_secret is None:
            data = await self._http.get_json("webhooks/default/secret")
            key = data.get("key") if isinstance(data, Mapping) else None
            if not isinstance(key, str) or not key:
                raise ProviderError("bad_response", f"{self.label} sent no webhook signing secret.")
            self._signing_secret = key
        verified = verify_standard(self._signing_secret, body, headers)
        if verified is None:
            return None
        final = _STATES.get(str(verified.get("status")), State.RUNNING).terminal
        reading = _reading(verified, self._asked.get(str(verified.get("id"))))
        timed = reading is not None and reading.ends_in is not None
        return Delivery(id=headers.get("webhook-id", ""), final=final, timed=timed)

    def _poll_target(self, handle: Handle) -> str:
        """The prediction under the configured base (never `urls.get`, which may point at another host)."""
        if handle.job_id.startswith("sync-"):
            # An OpenAI-style reply finished at once and has no id to look up again.
            raise ProviderError("expired", f"{self.label} answered this job at once; it can't be looked up again.")
        return f"predictions/{quote(handle.job_id, safe='')}"

    def _read_poll(self, handle: Handle, data: Any) -> Status:
        if not isinstance(data, Mapping):
            raise self._unreadable(handle, data)
        status = self._status(data, self._asked.get(handle.job_id))
        if status.state.terminal:
            self._asked.pop(handle.job_id, None)
        return status

    async def cancel(self, handle: Handle) -> None:
        """Best effort: failures are logged, because the job ends on our side either way."""
        if handle.job_id.startswith("sync-"):
            return
        try:
            await self._http.request_json("POST", f"predictions/{quote(handle.job_id, safe='')}/cancel", retry=True)
        except ProviderError as exc:
            log.warning("%s: cancel of %s failed (%s): %s", self.label, handle.job_id, exc.kind, exc.message)
        finally:
            self._asked.pop(handle.job_id, None)

    # ---- helpers ----------------------------------------------------------------------------------------

    def _input(self, job: ProviderJob) -> dict[str, Any]:
        inputs: dict[str, Any] = dict(job.spec.wire_input(job.params))
        if job.spec.uses_prompt:
            inputs["prompt"] = job.prompt
        if job.spec.operation == "edit":
            inputs["input_image"] = _data_uri(job.image)
        else:
            if job.mask is None:
                # flux-fill-dev's alpha-mask path is missing in the public source (§1): always send a mask.
                raise ValueError("a fill job needs an explicit mask")
            inputs["image"] = _data_uri(job.image)
            inputs["mask"] = _data_uri(job.mask)
        if job.jpeg_result is not None:
            # A 1440x1440 result as JPEG is a fifth of the PNG to download and decodes 6x faster (5 vs 31 ms).
            inputs.update(output_format="jpg", output_quality=job.jpeg_result)
        size = sum(len(v) for v in inputs.values() if isinstance(v, str) and v.startswith("data:"))
        if size > _LARGE_DATA_URI:
            log.warning("%s: sending %d KB of data URIs; Replicate recommends at most 1 MB", self.label, size // 1024)
        return inputs

    def _remember(self, job_id: str, asked: _Asked) -> None:
        self._asked[job_id] = asked
        while len(self._asked) > _REMEMBERED_JOBS:
            self._asked.popitem(last=False)

    def _status(self, data: Mapping[str, Any], asked: _Asked | None, *, held: bool = False) -> Status:
        """Map one prediction object to a Status (messages safe for users, raw text in `detail`). `held`: the
        answer to a sync-mode create, which may say `processing` although its output is finished."""
        if _openai_like(data):
            data = {"status": "succeeded", "output": dict(data)}
        raw = str(data.get("status") or "")
        echoed_raw = data.get("input")
        echoed: Mapping[str, Any] = echoed_raw if isinstance(echoed_raw, Mapping) else {}
        wanted = asked.outputs if asked else as_int(echoed.get("num_outputs")) or 1
        logs = data.get("logs") if isinstance(data.get("logs"), str) else None
        extra = self._extra(data, logs)
        state = State.SUCCEEDED if held and _finished_while_held(data) else _STATES.get(raw)
        if state is None:
            log.info("%s: unknown prediction status %r, treating it as running", self.label, raw)
            state = State.RUNNING
        if state in (State.STARTING, State.RUNNING):
            progress = _reading(data, asked) if state is State.RUNNING else None
            if progress is None:
                return Status(state, raw_status=raw, extra=extra)
            return Status(state, progress=progress.fraction, ends_in=progress.ends_in, raw_status=raw,
                          extra=extra)
        if state is State.SUCCEEDED:
            refs = output_refs(data.get("output"))
            if data.get("data_removed") is True or data.get("output") is None:
                return Status(
                    State.EXPIRED,
                    message=_MSG_EXPIRED,
                    raw_status=raw,
                    extra=extra,
                    detail="data_removed" if data.get("data_removed") else "output is null",
                )
            outputs = tuple(Output(ref) for ref in refs)
            return Status(
                State.SUCCEEDED,
                progress=1.0,
                outputs=outputs,
                dropped=max(0, wanted - len(outputs)),
                raw_status=raw,
                extra=extra,
            )
        if state is State.FAILED:
            text = _error_text(data.get("error"))
            detail = text[:_DETAIL_CAP]
            if _MODERATION.search(text):
                return Status(State.MODERATED, message=_MSG_MODERATED, detail=detail, raw_status=raw, extra=extra)
            reason = _short_reason(text)
            message = f"The model failed: {reason}" if reason else "The model failed without giving a reason."
            return Status(State.FAILED, message=message, detail=detail, raw_status=raw, extra=extra)
        if state is State.CANCELED:
            return Status(State.CANCELED, message=_MSG_CANCELED, raw_status=raw, extra=extra)
        return Status(State.TIMED_OUT, message=_MSG_ABORTED, raw_status=raw, extra=extra)

    @staticmethod
    def _extra(data: Mapping[str, Any], logs: str | None) -> dict[str, str]:
        extra: dict[str, str] = {}
        metrics = data.get("metrics")
        if isinstance(metrics, Mapping):
            for key in ("predict_time", "total_time"):
                if isinstance(metrics.get(key), int | float):
                    extra[key] = f"{metrics[key]:.2f}"
        seed = _SEED.search(logs or "")
        if seed is not None:
            extra["seed"] = seed.group(1)
        return extra
