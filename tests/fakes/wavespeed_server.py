"""A fake WaveSpeedAI v3 API (docs/providers.md §4) for wavespeed-ai/flux-fill-dev, on two real local HTTP servers.

`api` takes submits and result polls (always `{code, message, data}` envelopes); `delivery` serves output files
and must never see the key. Jobs go created → processing → completed/failed over `duration` seconds.

    async with FakeWaveSpeed(duration=0.2) as fake:
        fake.base_url                       # "http://127.0.0.1:<port>/api/v3"
        fake.nsfw = [False, True]           # has_nsfw_contents per output
        fake.fail_code = 1200               # the job fails with this data.code
        fake.base64_outputs = True          # outputs come back as naked base64

Bodies are validated like the real API (400 envelope for a size out of range, bad guidance, ...).

Webhooks (docs/providers.md §4): a submit with `?webhook=<url>` gets one signed POST of the task's `data`
object when the task ends: headers `webhook-id`, `webhook-timestamp`, `webhook-signature: v3,<hex HMAC-SHA256 of
"id.timestamp.body">`, keyed with the account secret minus `whsec_` (not base64-decoded), which
`GET /api/v3/webhook/secret` hands out with the API key. `fake.webhook` is "send", "lost" (never sent), "forged"
(another secret) or "stale" (a timestamp past the 300 s limit); `fake.webhook_answers` holds the bot's statuses.
Like the real API, a webhook with base64 outputs is refused with a 400.

`fail_code = None` fails jobs the way WaveSpeed's docs and official SDK fixtures show, with only `data.error`
and no `data.code`; `queued_status = "pending"` and `bare_submit = True` reproduce the SDK fixtures' queued
status and bare submit reply (docs/provider-fakes.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
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
    apply_fault,
    deliver_webhook,
    image_size,
    inverted_png,
    is_raw_base64,
)

MODEL = "wavespeed-ai/flux-fill-dev"
FIELDS = frozenset(
    {
        "image",
        "mask_image",
        "prompt",
        "size",
        "num_inference_steps",
        "seed",
        "guidance_scale",
        "num_images",
        "loras",
        "enable_safety_checker",
        "enable_sync_mode",
        "enable_base64_output",
    }
)
FAIL_ERRORS = {
    1200: "Content flagged by moderation: sexual content detected in prompt",
    1400: "missing parameter: prompt",
    1401: "invalid parameter: size",
    1402: "failed to download media from https://example.invalid/img.png",
    1403: "task failed: worker crashed (exit code 137)",
    1405: "task failed after 3 retries on node gpu-17",
    5000: "internal server error",
    5003: "service unavailable",
    5004: "task timed out",
}
SDK_FAILED_ERROR = "Model error"  # wavespeed-python tests/test_api.py: {"data": {"status": "failed", "error": ...}}
Outcome = Literal["completed", "failed", "cancelled", "timeout", "never"]
WebhookMode = Literal["send", "lost", "forged", "stale"]
MAX_AGE = 300  # seconds a delivery's timestamp may be old (WaveSpeed's documented limit)
BASE64_WEBHOOK_ERROR = ("webhook callback does not support base64 output, please use the normal API to use base64 "
                        "output")

__all__ = ["FakeWaveSpeed", "Fault", "WaveSpeedJob"]


@dataclass
class WaveSpeedJob:
    id: str
    body: dict[str, Any]
    created: float
    duration: float
    outcome: Outcome
    fail_code: int | None
    fail_error: str
    outputs: list[bytes]
    nsfw: list[bool]
    base64_outputs: bool
    polls: int = 0


def envelope(code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "data": data}


class FakeWaveSpeed:
    """Local servers speaking WaveSpeed's async protocol; tweak the public attributes between calls."""

    def __init__(
        self,
        *,
        key: str = "ws-test-key",
        duration: float = 0.2,
        created_for: float = 0.3,
        outcome: Outcome = "completed",
        strict: bool = True,
    ) -> None:
        self.key = key
        self.duration = duration
        self.created_for = created_for  # fraction of `duration` spent in "created"
        self.outcome: Outcome = outcome
        self.fail_code: int | None = 1403  # None: no data.code, only data.error (docs and SDK examples)
        self.fail_error: str | None = None  # data.error of failed jobs; None: FAIL_ERRORS[fail_code]
        self.queued_status = "created"  # the docs say "created"; the official SDK's fixtures say "pending"
        self.bare_submit = False  # answer a submit with only `{"data": {"id": ...}}`, as the SDK's fixtures do
        self.nsfw: list[bool] = []  # has_nsfw_contents, per output (missing entries = False)
        self.base64_outputs = False
        self.strict = strict
        self.submit_envelope: tuple[int, str] | None = None  # HTTP 200 with this (code, message) instead of a job
        self.download_status: int | None = None
        self.webhook: WebhookMode = "send"
        self.webhook_secret = "whsec_" + secrets.token_hex(16)  # the account's; signed with as is, minus the prefix
        self.webhook_answers: list[int] = []
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self.jobs: dict[str, WaveSpeedJob] = {}
        self.api = Site("api", self.requests)
        self.delivery = Site("delivery", self.requests)
        self.api.app.router.add_post(f"/api/v3/{MODEL}", self._submit)
        self.api.app.router.add_get("/api/v3/predictions/{id}/result", self._result)
        self.api.app.router.add_get("/api/v3/predictions/{id}", self._result)
        self.api.app.router.add_get("/api/v3/webhook/secret", self._secret)
        self.delivery.app.router.add_get("/outputs/{id}/{index}.png", self._file)

    async def __aenter__(self) -> FakeWaveSpeed:
        await self.api.start()
        await self.delivery.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._webhook_tasks):
            task.cancel()
        await asyncio.gather(*self._webhook_tasks, return_exceptions=True)
        await self.api.stop()
        await self.delivery.stop()

    @property
    def base_url(self) -> str:
        return f"{self.api.origin}/api/v3"

    def requests_to(self, server: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.server == server]

    def provider_settings(self, key: str | None = None) -> ProviderSettings:
        """Settings pointing WaveSpeedProvider at this fake (`key` overrides the accepted key)."""
        return ProviderSettings(
            name="wavespeed", base_url=self.base_url, api_key=Secret(key or self.key), max_concurrency=2
        )

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return web.json_response(envelope(401, "Unauthorized: invalid or missing API key"), status=401)
        return None

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        fault = await apply_fault(request, self.faults.take("submit"))
        if fault is not None:
            return fault
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return web.json_response(envelope(400, "invalid JSON body"), status=400)
        if not isinstance(body, dict):
            return web.json_response(envelope(400, "body must be an object"), status=400)
        problem = self._validate(body)
        if problem is not None:
            return web.json_response(envelope(400, problem), status=400)
        if self.submit_envelope is not None:
            code, message = self.submit_envelope
            return web.json_response(envelope(code, message))
        webhook = request.query.get("webhook")
        if webhook is not None and body.get("enable_base64_output"):
            return web.json_response({"error": BASE64_WEBHOOK_ERROR}, status=400)
        w, h = (int(v) for v in str(body.get("size", "1024*1024")).split("*"))
        source = base64.b64decode(body["image"])
        count = int(body.get("num_images", 1))
        job = WaveSpeedJob(
            id=uuid.uuid4().hex,
            body=body,
            created=time.monotonic(),
            duration=self.duration,
            outcome=self.outcome,
            fail_code=self.fail_code,
            fail_error=self._fail_error(),
            outputs=[inverted_png(source, (w, h)) for _ in range(count)],
            nsfw=[self.nsfw[i] if i < len(self.nsfw) else False for i in range(count)],
            base64_outputs=self.base64_outputs or bool(body.get("enable_base64_output")),
        )
        self.jobs[job.id] = job
        if webhook and self.webhook != "lost" and job.outcome != "never":
            task = asyncio.create_task(self._call_back(job, webhook))
            self._webhook_tasks.add(task)
            task.add_done_callback(self._webhook_tasks.discard)
        if self.bare_submit:
            return web.json_response({"data": {"id": job.id}})
        return web.json_response(envelope(200, "success", self._data(job, self.queued_status)))

    def _fail_error(self) -> str:
        if self.fail_error is not None:
            return self.fail_error
        return FAIL_ERRORS.get(self.fail_code, SDK_FAILED_ERROR) if self.fail_code is not None else SDK_FAILED_ERROR

    def _validate(self, body: dict[str, Any]) -> str | None:
        if self.strict:
            extra = sorted(set(body) - FIELDS)
            if extra:
                return f"unknown parameter: {extra[0]}"
        for name in ("image", "mask_image", "prompt"):
            if not isinstance(body.get(name), str) or not body[name]:
                return f"missing required parameter: {name}"
        dims = {}
        for name in ("image", "mask_image"):
            if not is_raw_base64(body[name]):
                return f"{name}: expected a public URL or raw base64 (no data: prefix)"
            size = image_size(base64.b64decode(body[name]))
            if size is None:
                return f"{name}: could not decode image"
            dims[name] = size
        size_text = body.get("size", "1024*1024")
        match = re.fullmatch(r"(\d+)\*(\d+)", size_text) if isinstance(size_text, str) else None
        if match is None:
            return "size must look like 1024*1024"
        w, h = int(match[1]), int(match[2])
        if not (256 <= w <= 1536 and 256 <= h <= 1536):
            return f"size {w}*{h} is out of range: each dimension must be between 256 and 1536"

        def number(name: str, lo: float, hi: float, integer: bool) -> str | None:
            if name not in body:
                return None
            value = body[name]
            ok_type = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, ok_type):
                return f"{name} must be a {'integer' if integer else 'number'}"
            if not lo <= value <= hi:
                return f"{name} must be between {lo} and {hi}"
            return None

        for check in (
            number("num_inference_steps", 1, 50, True),
            number("seed", -1, 2_147_483_647, True),
            number("guidance_scale", 28, 35, False),
            number("num_images", 1, 4, True),
        ):
            if check is not None:
                return check
        loras = body.get("loras", [])
        if not isinstance(loras, list) or len(loras) > 3:
            return "loras must be a list of at most 3 items"
        for lora in loras:
            if not isinstance(lora, dict) or set(lora) != {"path", "scale"} or not isinstance(lora["path"], str):
                return "each lora needs exactly path and scale"
            scale = lora["scale"]
            if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale <= 4:
                return "lora scale must be between 0.0 and 4.0"
        return None

    def _data(self, job: WaveSpeedJob, status: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": job.id,
            "model": MODEL,
            "outputs": [],
            # Points at a host we must never send the key to: the client must build the URL itself.
            "urls": {"get": f"{self.delivery.origin}/api/v3/predictions/{job.id}/result"},
            "has_nsfw_contents": [],
            "status": status,
            "created_at": "2026-11-21T12:34:56.789Z",
            "error": "",
            "timings": {"inference": 0},
        }
        if status == "completed":
            if job.base64_outputs:
                data["outputs"] = [base64.b64encode(o).decode() for o in job.outputs]
            else:
                data["outputs"] = [f"{self.delivery.origin}/outputs/{job.id}/{i}.png" for i in range(len(job.outputs))]
            data["has_nsfw_contents"] = list(job.nsfw)
            data["timings"] = {"inference": int(job.duration * 1000)}
        elif status == "failed":
            data["error"] = job.fail_error
            if job.fail_code is not None:
                data["code"] = job.fail_code
        return data

    async def _secret(self, request: web.Request) -> web.StreamResponse:
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        return web.json_response(envelope(200, "success", {"secret": self.webhook_secret}))

    def sign(self, body: bytes, *, msg_id: str, stamp: int, secret: str | None = None) -> dict[str, str]:
        """WaveSpeed's delivery headers for `body` (the account secret unless another is given)."""
        key = (secret or self.webhook_secret).removeprefix("whsec_").encode()
        digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).hexdigest()
        return {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": f"v3,{digest}"}

    async def _call_back(self, job: WaveSpeedJob, url: str) -> None:
        """One delivery of the task's `data` when the fake's clock says it ended."""
        await asyncio.sleep(max(0.0, job.created + job.duration - time.monotonic()))
        body = json.dumps(self._data(job, job.outcome)).encode()
        stamp = int(time.time()) - (MAX_AGE + 5 if self.webhook == "stale" else 0)
        secret = "whsec_" + secrets.token_hex(16) if self.webhook == "forged" else None
        headers = self.sign(body, msg_id="msg_" + secrets.token_hex(8), stamp=stamp, secret=secret)
        await deliver_webhook(url, body, headers, self.webhook_answers)

    async def _result(self, request: web.Request) -> web.StreamResponse:
        fault = await apply_fault(request, self.faults.take("poll"))
        if fault is not None:
            return fault
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return web.json_response(envelope(404, "prediction not found"), status=404)
        job.polls += 1
        fraction = (time.monotonic() - job.created) / job.duration if job.duration > 0 else 1.0
        if fraction < self.created_for and job.duration > 0:
            status = self.queued_status
        elif fraction < 1 or job.outcome == "never":
            status = "processing"
        else:
            status = job.outcome
        return web.json_response(envelope(200, "success", self._data(job, status)))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        fault = await apply_fault(request, self.faults.take("download"))
        if fault is not None:
            return fault
        if self.download_status is not None:
            return web.Response(status=self.download_status, text="Not Found")
        job = self.jobs.get(request.match_info["id"])
        index = int(request.match_info["index"]) if request.match_info["index"].isdigit() else -1
        if job is None or not 0 <= index < len(job.outputs):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=job.outputs[index], content_type="image/png")
