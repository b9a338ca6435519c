"""A fake Black Forest Labs API (docs/providers.md §3) on three real local HTTP servers.

Like the real service, submit (`api`, e.g. api.bfl.ai) hands back a `polling_url` on another host (`poll`, e.g.
api.us1.bfl.ai) and finished jobs point at a third, credential-free host (`delivery`, e.g. delivery-eu1.bfl.ai).
A fourth server (`foreign`, reached as `localhost` rather than 127.0.0.1) stands in for a host that must never
see the key.

    async with FakeBFL(duration=0.2) as fake:
        fake.base_url                       # "http://127.0.0.1:<port>/v1"
        fake.faults.poll.append(Fault.error(500))
        fake.outcome = "content_moderated"
        fake.requests_to("delivery")        # what reached which host, with headers

Bodies are validated like the real API (FastAPI 422 detail lists), so tests prove we never send invalid requests.

Answers follow BFL's published shapes (docs/provider-fakes.md says where each comes from): with
`null_fields=False` a poll answer carries only the keys that hold something, as BFL's own examples do
(`{"status": "Pending"}`, no `progress`/`details`/`preview`); errors carry a top-level `error` code and
`message` (`CONTENT_POLICY`, `RATE_LIMITED`, `VALIDATION_ERROR`), and a 429 tells when to retry in its body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from bot.config import ProviderSettings, Secret
from tests.fakes.common import (
    Fault,
    Faults,
    RecordedRequest,
    Site,
    WebhookMode,
    apply_fault,
    deliver_webhook,
    image_size,
    inverted_png,
    is_raw_base64,
)

Outcome = Literal["ready", "request_moderated", "content_moderated", "error", "not_found", "never"]
ProgressScale = Literal["fraction", "percent", "none"]

FILL_FIELDS = frozenset(
    {
        "image",
        "mask",
        "prompt",
        "steps",
        "prompt_upsampling",
        "seed",
        "guidance",
        "output_format",
        "safety_tolerance",
        "webhook_url",
        "webhook_secret",
    }
)
KONTEXT_FIELDS = frozenset(
    {
        "prompt",
        "input_image",
        "input_image_2",
        "input_image_3",
        "input_image_4",
        "seed",
        "aspect_ratio",
        "output_format",
        "prompt_upsampling",
        "safety_tolerance",
        "webhook_url",
        "webhook_secret",
    }
)

# Bodies quoted from BFL's skills repo (skills/bfl-api/references/error-handling.md, endpoints.md).
CONTENT_POLICY = {"error": "content_policy_violation", "message": "The prompt violated content policy"}
ERROR_DESCRIBED = {"error": "Error description"}
RATE_LIMITED = {"error": "rate_limit_exceeded", "message": "Too many concurrent requests", "retry_after": 5}
VALIDATION_ERROR = {
    "error": "validation_error",
    "message": "Invalid request parameters",
    "details": {"width": "Must be a multiple of 16", "prompt": "Cannot be empty"},
}

__all__ = ["CONTENT_POLICY", "ERROR_DESCRIBED", "RATE_LIMITED", "VALIDATION_ERROR", "BFLJob", "FakeBFL", "Fault"]


@dataclass
class BFLJob:
    id: str
    model: str
    body: dict[str, Any]
    created: float
    duration: float
    outcome: Outcome
    output: bytes
    polls: int = 0


def _err(loc: str, msg: str, typ: str, value: Any = None) -> dict[str, Any]:
    return {"loc": ["body", loc], "msg": msg, "type": typ, "input": value}


class FakeBFL:
    """Three (four) local servers speaking BFL's async protocol; tweak the public attributes between calls."""

    def __init__(
        self,
        *,
        key: str = "bfl-test-key",
        duration: float = 0.2,
        outcome: Outcome = "ready",
        progress: ProgressScale = "fraction",
        pending_statuses: tuple[str, ...] = ("Pending",),
        sample_ttl: float = 600.0,
        cost: float | None = 2.5,
        strict: bool = True,
        null_fields: bool = True,
    ) -> None:
        self.key = key
        self.duration = duration
        self.outcome: Outcome = outcome
        self.progress: ProgressScale = progress
        self.pending_statuses = pending_statuses
        self.sample_ttl = sample_ttl
        self.cost = cost
        self.strict = strict  # reject unknown body fields (the real API ignores them; we want to notice)
        # True: every ResultResponse field, nulls included (the OpenAPI schema); False: only keys with a value.
        self.null_fields = null_fields
        self.error_fields: dict[str, Any] = dict(ERROR_DESCRIBED)  # what an "Error" poll answer adds
        self.retry_after: float = RATE_LIMITED["retry_after"]  # the 429 body's wait once `max_active` is reached
        self.foreign_polling = False  # hand out polling URLs on the foreign host
        self.omit_polling_url = False  # submit answers without polling_url (old API shape)
        self.sample_status: int | None = None  # e.g. 404: the delivery host answers this instead of the file
        self.sample_padding = 0  # extra bytes appended to the PNG (oversized output)
        self.max_active: int | None = None  # 429 once this many jobs are unfinished (real: 24)
        # Jobs created with `webhook_url` get one signed POST when they end: "lost" never sends it, "forged"
        # signs it with the wrong secret. `webhook_answers` holds the bot's HTTP statuses.
        self.webhook: WebhookMode = "send"
        self.webhook_answers: list[int] = []
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[str, BFLJob] = {}
        self.api = Site("api", self.requests)
        self.poll = Site("poll", self.requests)
        self.delivery = Site("delivery", self.requests)
        self.foreign = Site("foreign", self.requests, host="localhost")
        self.api.app.router.add_post("/v1/{model}", self._submit)
        for site in (self.api, self.poll, self.foreign):
            site.app.router.add_get("/v1/get_result", self._get_result)
        self.delivery.app.router.add_get("/results/{id}/sample.png", self._sample)

    async def __aenter__(self) -> FakeBFL:
        for site in (self.api, self.poll, self.delivery, self.foreign):
            await site.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for site in (self.api, self.poll, self.delivery, self.foreign):
            await site.stop()

    @property
    def base_url(self) -> str:
        return f"{self.api.origin}/v1"

    def requests_to(self, server: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.server == server]

    def provider_settings(self, key: str | None = None) -> ProviderSettings:
        """Settings pointing BFLProvider at this fake (`key` overrides the accepted key)."""
        return ProviderSettings(name="bfl", base_url=self.base_url, api_key=Secret(key or self.key), max_concurrency=24)

    # --- handlers -------------------------------------------------------------------------------------------

    def _auth_error(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-key")
        if key is None:
            return web.json_response({"detail": "Not authenticated"}, status=403)
        if key != self.key:
            return web.json_response({"detail": "Not authenticated - Invalid Authentication"}, status=403)
        return None

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        fault = await apply_fault(request, self.faults.take("submit"))
        if fault is not None:
            return fault
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        model = request.match_info["model"]
        if model not in ("flux-pro-1.0-fill", "flux-kontext-pro"):
            return web.json_response({"detail": "Not Found"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(
                {"detail": [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]}, status=422
            )
        if not isinstance(body, dict):
            return web.json_response({"detail": [_err("", "Input should be an object", "model_type")]}, status=422)
        errors = self._validate(model, body)
        if errors:
            return web.json_response({"detail": errors}, status=422)
        if self.max_active is not None:
            active = sum(1 for j in self.jobs.values() if time.monotonic() - j.created < j.duration)
            if active >= self.max_active:
                return web.json_response({**RATE_LIMITED, "retry_after": self.retry_after}, status=429)
        source = body["image"] if model == "flux-pro-1.0-fill" else body["input_image"]
        job = BFLJob(
            id=str(uuid.uuid4()),
            model=model,
            body=body,
            created=time.monotonic(),
            duration=self.duration,
            outcome=self.outcome,
            output=inverted_png(base64.b64decode(source)),
        )
        self.jobs[job.id] = job
        if isinstance(body.get("webhook_url"), str) and self.webhook != "lost":
            task = asyncio.create_task(self._call_back(job))
            self._webhook_tasks.add(task)
            task.add_done_callback(self._webhook_tasks.discard)
        poll_origin = self.foreign.origin if self.foreign_polling else self.poll.origin
        answer: dict[str, Any] = {"id": job.id, "input_mp": 0.5, "output_mp": 0.5}
        if not self.omit_polling_url:
            answer["polling_url"] = f"{poll_origin}/v1/get_result?id={job.id}"
        if self.cost is not None:
            answer["cost"] = self.cost
        return web.json_response(answer)

    async def _call_back(self, job: BFLJob) -> None:
        """BFL's webhook (its own examples): the result JSON, `X-BFL-Signature: sha256=<hex HMAC(body)>`."""
        # BFL calls back once the result is ready: never before this fake's own status reads "Ready".
        while self._elapsed(job) < 1.0:  # noqa: ASYNC110 - the fake's clock is the condition, no event to wait on
            await asyncio.sleep(max(0.001, job.created + job.duration - time.monotonic()))
        payload = json.dumps({"id": job.id, "status": "Ready", "result": {"sample": "ignored"}}).encode()
        secret = str(job.body.get("webhook_secret") or "")
        if self.webhook == "forged":
            secret = "not-" + secret
        signature = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
        await deliver_webhook(job.body["webhook_url"], payload, {"X-BFL-Signature": signature}, self.webhook_answers)

    def _validate(self, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        allowed = FILL_FIELDS if model == "flux-pro-1.0-fill" else KONTEXT_FIELDS
        if self.strict:
            for name in body:
                if name not in allowed:
                    errors.append(_err(name, "Extra inputs are not permitted", "extra_forbidden", body[name]))

        def integer(name: str, lo: int, hi: int) -> None:
            if name not in body or body[name] is None:
                return
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(_err(name, "Input should be a valid integer", "int_type", value))
            elif value < lo:
                errors.append(_err(name, f"Input should be greater than or equal to {lo}", "greater_than_equal", value))
            elif value > hi:
                errors.append(_err(name, f"Input should be less than or equal to {hi}", "less_than_equal", value))

        integer("seed", 0, 2**63 - 1)
        integer("safety_tolerance", 0, 6)
        if body.get("output_format") not in (None, "jpeg", "png"):
            errors.append(_err("output_format", "Input should be 'jpeg' or 'png'", "enum", body["output_format"]))
        if "prompt_upsampling" in body and not isinstance(body["prompt_upsampling"], bool | None):
            errors.append(_err("prompt_upsampling", "Input should be a valid boolean", "bool_type"))
        if "prompt" in body and not isinstance(body["prompt"], str | None):
            errors.append(_err("prompt", "Input should be a valid string", "string_type"))

        if model == "flux-pro-1.0-fill":
            integer("steps", 15, 50)
            guidance = body.get("guidance")
            if guidance is not None:
                if isinstance(guidance, bool) or not isinstance(guidance, int | float):
                    errors.append(_err("guidance", "Input should be a valid number", "float_type", guidance))
                elif not 1.5 <= guidance <= 100:
                    errors.append(_err("guidance", "Input should be between 1.5 and 100", "range", guidance))
            image_dims = self._image_field(body, "image", errors, required=True)
            mask_dims = self._image_field(body, "mask", errors, required=False)
            if image_dims and mask_dims and image_dims != mask_dims:
                errors.append(
                    _err(
                        "mask",
                        f"Mask dimensions {mask_dims} do not match image dimensions {image_dims}",
                        "value_error",
                    )
                )
        else:
            if not isinstance(body.get("prompt"), str) or not body["prompt"]:
                errors.append(_err("prompt", "Field required", "missing"))
            self._image_field(body, "input_image", errors, required=True)
            ratio = body.get("aspect_ratio")
            if ratio is not None and not _valid_ratio(ratio):
                errors.append(_err("aspect_ratio", "Aspect ratio must be between 21:9 and 9:21", "value_error", ratio))
        return errors

    @staticmethod
    def _image_field(
        body: dict[str, Any], name: str, errors: list[dict[str, Any]], *, required: bool
    ) -> tuple[int, int] | None:
        value = body.get(name)
        if value is None:
            if required:
                errors.append(_err(name, "Field required", "missing"))
            return None
        if not is_raw_base64(value):
            errors.append(_err(name, "Invalid base64 image (send raw base64 without a data: prefix)", "value_error"))
            return None
        dims = image_size(base64.b64decode(value))
        if dims is None:
            errors.append(_err(name, "Could not decode image", "value_error"))
        return dims

    async def _get_result(self, request: web.Request) -> web.StreamResponse:
        fault = await apply_fault(request, self.faults.take("poll"))
        if fault is not None:
            return fault
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        job_id = request.query.get("id", "")
        job = self.jobs.get(job_id)
        answer: dict[str, Any] = {"id": job_id, "result": None, "progress": None, "details": None, "preview": None}
        if job is None or (job.outcome == "not_found" and self._elapsed(job) >= 1):
            answer["status"] = "Task not found"
            return self._answer(answer)
        job.polls += 1
        fraction = self._elapsed(job)
        if fraction < 1 or job.outcome == "never":
            index = min(int(fraction * len(self.pending_statuses)), len(self.pending_statuses) - 1)
            answer["status"] = self.pending_statuses[index]
            if self.progress == "fraction":
                answer["progress"] = round(min(fraction, 0.99), 3)
            elif self.progress == "percent":
                answer["progress"] = round(min(fraction, 0.99) * 100, 1)
            return self._answer(answer)
        if job.outcome == "ready":
            expires = int(time.time() + self.sample_ttl)
            answer["status"] = "Ready"
            answer["result"] = {
                "sample": f"{self.delivery.origin}/results/{job.id}/sample.png?se={expires}&sig=fake",
                "prompt": job.body.get("prompt", ""),
                "seed": job.body.get("seed", 42),
                "start_time": time.time() - job.duration,
                "end_time": time.time(),
                "duration": job.duration,
            }
        elif job.outcome == "request_moderated":
            answer["status"] = "Request Moderated"
            answer["details"] = {"Moderation Reasons": ["Derivative Works"]}
        elif job.outcome == "content_moderated":
            answer["status"] = "Content Moderated"
            answer["details"] = {"Moderation Reasons": ["NSFW"]}
        elif job.outcome == "error":
            answer["status"] = "Error"
            answer.update(self.error_fields)
        return self._answer(answer)

    def _answer(self, answer: dict[str, Any]) -> web.Response:
        if not self.null_fields:
            answer = {k: v for k, v in answer.items() if v is not None}
        return web.json_response(answer)

    def _elapsed(self, job: BFLJob) -> float:
        if job.duration <= 0:
            return 1.0
        return (time.monotonic() - job.created) / job.duration

    async def _sample(self, request: web.Request) -> web.StreamResponse:
        fault = await apply_fault(request, self.faults.take("download"))
        if fault is not None:
            return fault
        if self.sample_status is not None:
            return web.Response(status=self.sample_status, text="BlobNotFound")
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.Response(status=404, text="BlobNotFound")
        try:
            expires = float(request.query.get("se", "0"))
        except ValueError:
            expires = 0
        if time.time() > expires:
            return web.Response(
                status=403, text="AuthenticationFailed: Signed expiry time has passed", content_type="text/plain"
            )
        return web.Response(body=job.output + b"\0" * self.sample_padding, content_type="image/png")


def _valid_ratio(value: object) -> bool:
    if not isinstance(value, str) or value.count(":") != 1:
        return False
    left, right = value.split(":")
    if not (left.isdigit() and right.isdigit()) or int(left) == 0 or int(right) == 0:
        return False
    ratio = int(left) / int(right)
    return 9 / 21 - 1e-9 <= ratio <= 21 / 9 + 1e-9
