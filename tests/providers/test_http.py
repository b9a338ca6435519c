"""The shared transport against a real local HTTP server: retries, error mapping, credential scoping, downloads."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from bot import __version__
from bot.errors import ProviderError
from bot.providers.http import (
    USER_AGENT,
    Downloader,
    ProviderHTTP,
    RetryPolicy,
    error_for_response,
    retry_after,
    wait_text,
)

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
KEY = "sk-secret-123"


@dataclass
class Step:
    """What the scripted server does for one request."""

    status: int = 200
    body: Any = None
    text: str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: str = "respond"  # respond | reset | cut | chunked


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class ScriptServer:
    """Answers each request with the next scripted Step (the last one repeats); records what it saw."""

    def __init__(self) -> None:
        self.script: list[Step] = [Step(body={"ok": True})]
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self.origin = ""

    def will(self, *steps: Step) -> None:
        self.script = list(steps)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self.origin = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}))
        await request.read()
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.action == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        payload = (step.text if step.text is not None else json.dumps(step.body)).encode()
        if step.action in ("cut", "chunked"):
            stream = web.StreamResponse(status=step.status, headers={"Content-Type": step.content_type})
            if step.action == "cut":
                stream.content_length = len(payload) + 100
            else:
                stream.enable_chunked_encoding()
            await stream.prepare(request)
            await stream.write(payload)
            if step.action == "cut":
                assert request.transport is not None
                request.transport.close()
            else:
                await stream.write_eof()
            return stream
        return web.Response(
            status=step.status, body=payload, headers={"Content-Type": step.content_type, **step.headers}
        )


@pytest.fixture
async def server() -> AsyncIterator[ScriptServer]:
    srv = ScriptServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def other() -> AsyncIterator[ScriptServer]:
    """A second host that must never see credentials."""
    srv = ScriptServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: ScriptServer) -> AsyncIterator[ProviderHTTP]:
    http = ProviderHTTP(
        label="Acme",
        base_url=server.origin + "/api/v1",
        auth_headers={"Authorization": f"Bearer {KEY}"},
        timeout=httpx.Timeout(0.5),
        retry=FAST,
    )
    yield http
    await http.aclose()


async def _raises(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await awaitable
    return info.value


def _safe(message: str) -> None:
    assert "://" not in message and "www." not in message
    assert KEY not in message and "Traceback" not in message


# ---- basics -------------------------------------------------------------------------------------------------


def test_user_agent_names_version() -> None:
    assert USER_AGENT == f"fillbot/{__version__} (+https://github.com/fillbot/fillbot)"


def test_url_joins_base_and_path() -> None:
    http = ProviderHTTP(label="A", base_url="https://host.example/replicate/v1/", auth_headers={})
    assert str(http.url("predictions/abc")) == "https://host.example/replicate/v1/predictions/abc"
    assert str(http.url("/models/a/b")) == "https://host.example/replicate/v1/models/a/b"


def test_default_trust_is_same_origin() -> None:
    http = ProviderHTTP(label="A", base_url="https://api.example.com/v1", auth_headers={})
    assert http.is_trusted("https://api.example.com/v1/predictions/x")
    assert http.is_trusted("https://api.example.com:443/other")
    assert not http.is_trusted("http://api.example.com/v1/x")  # scheme downgrade
    assert not http.is_trusted("https://api.example.com:8443/v1/x")
    assert not http.is_trusted("https://api.example.com.evil.net/v1/x")
    assert not http.is_trusted("https://api.replicate.com/v1/predictions/x")
    assert not http.is_trusted("ftp://api.example.com/x")


async def test_get_json_sends_auth_and_user_agent(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(body={"id": "abc"}))
    assert await client.get_json("predictions/abc") == {"id": "abc"}
    seen = server.seen[0]
    assert seen.path == "/api/v1/predictions/abc"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["user-agent"] == USER_AGENT


async def test_absolute_trusted_url_is_used(server: ScriptServer, client: ProviderHTTP) -> None:
    assert await client.get_json(server.origin + "/elsewhere/x") == {"ok": True}
    assert server.seen[0].path == "/elsewhere/x"


async def test_untrusted_url_is_refused_without_a_request(
    server: ScriptServer, other: ScriptServer, client: ProviderHTTP
) -> None:
    error = await _raises(client.get_json(other.origin + "/v1/predictions/abc"))
    assert error.kind == "bad_response"
    error = await _raises(client.request_json("POST", other.origin + "/cancel", retry=True))
    assert error.kind == "bad_response"
    assert other.seen == [] and server.seen == []


async def test_custom_trust_callback(server: ScriptServer, other: ScriptServer) -> None:
    other_port = httpx.URL(other.origin).port
    http = ProviderHTTP(
        label="A",
        base_url=server.origin,
        auth_headers={"x-key": KEY},
        retry=FAST,
        trusted=lambda url: url.port == other_port,
    )
    try:
        assert await http.get_json(other.origin + "/poll") == {"ok": True}
        assert other.seen[0].headers["x-key"] == KEY
        assert (await _raises(http.get_json("status"))).kind == "bad_response"  # base itself not trusted now
    finally:
        await http.aclose()


async def test_redirects_are_not_followed_with_credentials(
    server: ScriptServer, other: ScriptServer, client: ProviderHTTP
) -> None:
    server.will(Step(status=302, text="", headers={"Location": other.origin + "/steal"}))
    error = await _raises(client.get_json("x"))
    assert error.kind == "failed"
    assert other.seen == []


# ---- GET retries --------------------------------------------------------------------------------------------


async def test_get_retries_transient_statuses_then_succeeds(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(
        Step(status=500, body={"detail": "boom"}),
        Step(status=502, text="<html>bad gateway</html>", content_type="text/html"),
        Step(status=503, body={"detail": "busy"}),
        Step(body={"done": 1}),
    )
    assert await client.get_json("x") == {"done": 1}
    assert len(server.seen) == 4


async def test_get_gives_up_after_policy_attempts(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(status=504, text="<html>timeout</html>", content_type="text/html"))
    error = await _raises(client.get_json("x"))
    assert error.kind == "unavailable"
    assert "504" in error.message
    assert len(server.seen) == FAST.attempts


async def test_get_honours_retry_after_header(server: ScriptServer) -> None:
    http = ProviderHTTP(
        label="A", base_url=server.origin, auth_headers={}, retry=RetryPolicy(attempts=3, base_delay=0.0, max_delay=2.0)
    )
    server.will(Step(status=429, body={"detail": "slow down"}, headers={"Retry-After": "0.3"}), Step(body=[1]))
    try:
        started = time.monotonic()
        assert await http.get_json("x") == [1]
        assert time.monotonic() - started >= 0.28
    finally:
        await http.aclose()


async def test_get_hint_beyond_the_policy_gives_up_at_once(server: ScriptServer, client: ProviderHTTP) -> None:
    """Retrying before the server's 30 s are up is pointless: one request, and the wait is reported."""
    server.will(Step(status=429, body={"detail": "Request was throttled. Your rate limit resets in ~30s."}))
    error = await _raises(client.get_json("x"))
    assert error.kind == "rate_limited" and error.retry_after == 30
    assert "try again in about 30 s" in error.message
    assert len(server.seen) == 1
    _safe(error.message)


async def test_get_retries_timeouts(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(delay=1.0, body={"late": True}), Step(body={"fast": True}))
    assert await client.get_json("x") == {"fast": True}
    assert len(server.seen) == 2


async def test_get_retries_connection_reset_and_cut_body(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(action="reset"), Step(action="cut", body={"id": "abc", "status": "x"}), Step(body={"n": 3}))
    assert await client.get_json("x") == {"n": 3}
    assert len(server.seen) == 3


async def test_get_persistent_timeout_becomes_unavailable(server: ScriptServer) -> None:
    http = ProviderHTTP(label="A", base_url=server.origin, auth_headers={}, timeout=httpx.Timeout(0.3), retry=FAST)
    server.will(Step(delay=1.0))
    try:
        error = await _raises(http.get_json("x"))
    finally:
        await http.aclose()
    assert error.kind == "unavailable" and "in time" in error.message
    # Every attempt was made; on a loaded machine one may time out before it even reaches the server.
    assert FAST.attempts - 1 <= len(server.seen) <= FAST.attempts


@pytest.mark.parametrize(
    "step",
    [
        Step(text='{"id": "abc", "status": "proc', content_type="application/json"),
        Step(text="<html><body>Just a moment...</body></html>", content_type="text/html"),
        Step(text="", content_type="application/json"),
    ],
    ids=["truncated", "html", "empty"],
)
async def test_get_2xx_that_is_not_json_is_bad_response(server: ScriptServer, client: ProviderHTTP, step: Step) -> None:
    server.will(step)
    error = await _raises(client.get_json("x"))
    assert error.kind == "bad_response" and "not valid JSON" in error.message
    assert len(server.seen) == 1


async def test_get_non_retryable_status_is_mapped_at_once(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(status=404, body={"detail": "Not found.", "status": 404}))
    assert (await _raises(client.get_json("x"))).kind == "not_found"
    assert len(server.seen) == 1


async def test_request_json_without_retry_tries_once(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(status=500, body={"detail": "x"}))
    error = await _raises(client.request_json("POST", "predictions/a/cancel", json={"a": 1}, retry=False))
    assert error.kind == "unavailable"
    assert [s.method for s in server.seen] == ["POST"]


# ---- create POST --------------------------------------------------------------------------------------------


async def test_post_returns_status_and_body_with_extra_headers(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(status=201, body={"id": "p1"}))
    status, body = await client.post_json("models/a/b/predictions", {"input": {"x": 1}}, headers={"Prefer": "wait=5"})
    assert (status, body) == (201, {"id": "p1"})
    assert server.seen[0].headers["prefer"] == "wait=5"
    assert server.seen[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    "step",
    [
        Step(status=500, body={"detail": "internal"}),
        Step(status=502, text="<html>502 Bad Gateway</html>", content_type="text/html"),
        Step(status=503, body={"detail": "unavailable"}),
        Step(action="reset"),
        Step(action="cut", body={"id": "p1"}),
        Step(status=201, text='{"id": "p1", "sta'),
        Step(status=200, text="<html>ok?</html>", content_type="text/html"),
    ],
    ids=["500", "html502", "503", "reset", "cut", "truncated201", "html200"],
)
async def test_post_is_never_retried_once_it_may_have_arrived(
    server: ScriptServer, client: ProviderHTTP, step: Step
) -> None:
    server.will(step, Step(status=201, body={"id": "second"}))
    error = await _raises(client.post_json("models/a/b/predictions", {"input": {}}))
    assert error.kind == "maybe_submitted"
    assert "may have been submitted" in error.message and "check before retrying" in error.message
    assert len(server.seen) == 1
    _safe(error.message)


async def test_post_timeout_is_maybe_submitted(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(delay=1.0, status=201, body={"id": "late"}))
    error = await _raises(client.post_json("p", {"input": {}}, read_timeout=0.2))
    assert error.kind == "maybe_submitted"
    assert len(server.seen) == 1


async def test_post_read_timeout_overrides_default(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(delay=0.7, status=201, body={"id": "held"}))  # longer than the client's 0.5 s default
    assert await client.post_json("p", {"input": {}}, read_timeout=3) == (201, {"id": "held"})


async def test_post_connect_error_is_unavailable() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    http = ProviderHTTP(label="Acme", base_url=f"http://127.0.0.1:{port}", auth_headers={}, retry=FAST)
    try:
        error = await _raises(http.post_json("p", {"input": {}}))
        assert error.kind == "unavailable"
    finally:
        await http.aclose()


async def test_post_clean_429_is_retried(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(
        Step(status=429, body={"detail": "Request was throttled. Your rate limit resets in ~0.02s."}),
        Step(status=201, body={"id": "p2"}),
    )
    assert await client.post_json("p", {"input": {}}) == (201, {"id": "p2"})
    assert len(server.seen) == 2


async def test_post_persistent_429_is_rate_limited(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(status=429, body={"detail": "throttled"}, headers={"Retry-After": "0.01"}))
    error = await _raises(client.post_json("p", {"input": {}}))
    assert error.kind == "rate_limited" and error.retry_after == 0.01
    assert len(server.seen) == FAST.attempts


async def test_post_429_longer_than_the_policy_is_reported_not_retried(
    server: ScriptServer, client: ProviderHTTP
) -> None:
    server.will(Step(status=429, body={"detail": "throttled"}, headers={"Retry-After": "7"}))
    error = await _raises(client.post_json("p", {"input": {}}))
    assert error.kind == "rate_limited" and error.retry_after == 7
    assert "try again in about 7 s" in error.message
    assert len(server.seen) == 1


async def test_post_429_body_retry_after_is_honoured(server: ScriptServer) -> None:
    """BFL puts the wait in the JSON body: every retry waits that long, and the final message repeats it."""
    http = ProviderHTTP(
        label="BFL", base_url=server.origin, auth_headers={}, retry=RetryPolicy(attempts=3, base_delay=0.0, max_delay=5)
    )
    body = {"error": "rate_limit_exceeded", "message": "Too many concurrent requests", "retry_after": 0.2}
    server.will(Step(status=429, body=body))
    try:
        started = time.monotonic()
        error = await _raises(http.post_json("p", {"input": {}}))
        elapsed = time.monotonic() - started
    finally:
        await http.aclose()
    assert error.kind == "rate_limited" and error.retry_after == 0.2
    assert error.message == "BFL is rate-limiting the bot; try again in about 1 s."
    assert len(server.seen) == 3
    assert elapsed >= 0.38  # two waits of 0.2 s, not the 0.0 s backoff


async def test_post_422_is_invalid_input_without_retry(server: ScriptServer, client: ProviderHTTP) -> None:
    server.will(Step(status=422, body={"detail": [{"loc": ["body", "steps"], "msg": "too big", "type": "x"}]}))
    error = await _raises(client.post_json("p", {"input": {}}))
    assert error.kind == "invalid_input" and "steps: too big" in error.message
    assert len(server.seen) == 1


# ---- error mapping ------------------------------------------------------------------------------------------


def _response(
    status: int,
    body: Any = None,
    *,
    text: str | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = text if text is not None else json.dumps(body)
    return httpx.Response(
        status,
        content=content.encode(),
        headers={"Content-Type": content_type, **(headers or {})},
        request=httpx.Request("GET", "https://api.example.com/x"),
    )


REPLICATE_422 = {
    "detail": "- input: prompt is required\n- input.num_inference_steps: Must be less than or equal to 4\n",
    "status": 422,
    "title": "Input validation failed",
    "invalid_fields": [
        {"type": "required", "field": "input", "description": "prompt is required"},
        {"type": "number_lte", "field": "input.num_inference_steps", "description": "Must be less than or equal to 4"},
    ],
}


def test_replicate_invalid_fields_are_readable() -> None:
    error = error_for_response("Replicate", _response(422, REPLICATE_422, content_type="application/problem+json"))
    assert error.kind == "invalid_input"
    assert "prompt is required" in error.message
    assert "num_inference_steps: Must be less than or equal to 4" in error.message
    assert "input." not in error.message and "invalid_fields" not in error.message


def test_replicate_enum_and_additional_property() -> None:
    body = {
        "status": 422,
        "invalid_fields": [
            {
                "type": "enum",
                "field": "input.output_format",
                "description": 'output_format must be one of the following: "jpg", "png"',
            },
            {
                "type": "additional_property_not_allowed",
                "field": "",
                "description": "Additional property foo is not allowed",
            },
        ],
    }
    message = error_for_response("Replicate", _response(422, body)).message
    assert 'output_format: output_format must be one of the following: "jpg", "png"' in message
    assert "Additional property foo is not allowed" in message


def test_replicate_422_detail_only() -> None:
    body = {"detail": "- input.guidance: Must be greater than or equal to 0\n", "status": 422}
    assert "guidance: Must be greater than or equal to 0" in error_for_response("R", _response(422, body)).message


def test_fastapi_detail_list_and_string() -> None:
    body = {
        "detail": [
            {"loc": ["body", "steps"], "msg": "Input should be less than or equal to 50", "type": "less_than_equal"}
        ]
    }
    error = error_for_response("BFL", _response(422, body))
    assert error.kind == "invalid_input" and "steps: Input should be less than or equal to 50" in error.message
    error = error_for_response("BFL", _response(400, {"detail": "Mask dimensions do not match image"}))
    assert "Mask dimensions do not match image" in error.message


def test_wavespeed_shapes() -> None:
    error = error_for_response("WaveSpeed", _response(400, {"code": 400, "message": "size is invalid", "data": None}))
    assert error.kind == "invalid_input" and "size is invalid" in error.message
    error = error_for_response("WaveSpeed", _response(400, {"error": "webhook callback does not support base64"}))
    assert "does not support base64" in error.message
    error = error_for_response("Gateway", _response(400, {"error": {"message": "bad model", "type": "x"}}))
    assert "bad model" in error.message


def test_bfl_validation_details_name_the_fields() -> None:
    body = {
        "error": "validation_error",
        "message": "Invalid request parameters",
        "details": {"width": "Must be a multiple of 16", "prompt": "Cannot be empty"},
    }
    for status in (400, 422):
        error = error_for_response("Black Forest Labs", _response(status, body))
        assert error.kind == "invalid_input"
        assert error.message == (
            "Black Forest Labs refused the request: width: Must be a multiple of 16; prompt: Cannot be empty"
        )
    listed = {"message": "Invalid", "details": {"steps": ["too small", "not even"], "seed": "see https://x.example"}}
    message = error_for_response("B", _response(422, listed)).message
    assert "steps: too small; not even" in message and "seed: see [link]" in message


@pytest.mark.parametrize("status", [400, 403, 422])
def test_content_policy_errors_are_moderated(status: int) -> None:
    body = {"error": "content_policy_violation", "message": "The prompt violated content policy"}
    error = error_for_response("Black Forest Labs", _response(status, body))
    assert error.kind == "moderated"
    assert "content policy" in error.message and "nothing was charged" in error.message
    nested = {"error": {"code": "content_policy_violation", "message": "flagged", "type": "invalid_request_error"}}
    assert error_for_response("Gateway", _response(status, nested)).kind == "moderated"
    assert error_for_response("B", _response(status, {"error": "validation_error"})).kind != "moderated"


def test_bfl_error_and_message_are_shown() -> None:
    body = {"error": "invalid_image", "message": "Input image could not be decoded; see https://docs.bfl.ai"}
    error = error_for_response("Black Forest Labs", _response(400, body))
    assert error.message == "Black Forest Labs refused the request: Input image could not be decoded; see [link]"


def test_wait_text() -> None:
    assert wait_text(0.2) == "about 1 s" and wait_text(30) == "about 30 s" and wait_text(150) == "about 2 minutes"


def test_auth_billing_and_not_found_messages_are_fixed_and_url_free() -> None:
    auth = error_for_response(
        "Replicate",
        _response(401, {"title": "Unauthenticated", "detail": "You did not pass a valid authentication token"}),
    )
    assert auth.kind == "auth"
    assert auth.message == "Replicate rejected the bot's API key — the bot's operator must check it."
    assert error_for_response("BFL", _response(403, {"detail": "Not authenticated"})).kind == "auth"
    billing = error_for_response(
        "Replicate",
        _response(
            402,
            {
                "title": "Insufficient credit",
                "detail": "You have insufficient credit to run this model. "
                "Go to https://replicate.com/account/billing#billing to purchase credit.",
                "status": 402,
            },
        ),
    )
    assert billing.kind == "billing"
    assert "replicate.com" not in billing.message and "billing#" not in billing.message
    _safe(billing.message)
    assert error_for_response("R", _response(404, {"detail": "Not found."})).kind == "not_found"


def test_status_kinds() -> None:
    assert error_for_response("R", _response(429, {"detail": "resets in ~12s"})).retry_after == 12
    assert error_for_response("R", _response(500, {"detail": "x"})).kind == "unavailable"
    html = error_for_response(
        "R", _response(502, text="<html><h1>502</h1>https://cf.example</html>", content_type="text/html")
    )
    assert html.kind == "unavailable" and "<html" not in html.message
    assert error_for_response("R", _response(418, {"detail": "teapot"})).kind == "failed"
    truncated = error_for_response("R", _response(400, text='{"detail": "Failed to pa'))
    assert truncated.kind == "invalid_input" and '{"detail' not in truncated.message


def test_messages_strip_urls_and_secrets() -> None:
    body = {"detail": "Token r8_abcdef123 is bad; see https://replicate.com/docs and Bearer sk-xyz for help"}
    error = error_for_response("R", _response(400, body))
    assert "r8_abcdef123" not in error.message and "sk-xyz" not in error.message
    assert "https://" not in error.message
    huge = {"detail": "x" * 5000}
    assert len(error_for_response("R", _response(422, huge)).message) < 400


def test_retry_after_parsing() -> None:
    assert retry_after(_response(429, {}, headers={"Retry-After": "12"})) == 12
    future = email.utils.formatdate(time.time() + 20, usegmt=True)
    value = retry_after(_response(429, {}, headers={"Retry-After": future}))
    assert value is not None and 15 <= value <= 21
    past = email.utils.formatdate(time.time() - 20, usegmt=True)
    assert retry_after(_response(429, {}, headers={"Retry-After": past})) == 0
    assert retry_after(_response(429, {"detail": "Request was throttled. Your rate limit resets in ~30s."})) == 30
    assert retry_after(_response(429, {"detail": "resets in 2 minutes"})) == 120
    assert retry_after(_response(429, {"detail": "slow down"})) is None
    assert retry_after(_response(429, {}, headers={"Retry-After": "soon"})) is None
    bfl = {"error": "rate_limit_exceeded", "message": "Too many concurrent requests", "retry_after": 5}
    assert retry_after(_response(429, bfl)) == 5
    assert retry_after(_response(429, {**bfl, "retry_after": "2.5"})) == 2.5
    assert retry_after(_response(429, {**bfl, "retry_after": -1})) is None
    assert retry_after(_response(429, {**bfl, "retry_after": True})) is None
    assert retry_after(_response(429, bfl, headers={"Retry-After": "9"})) == 9  # the header wins


def test_backoff_is_exponential_jittered_and_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    for retry, (low, high) in enumerate([(0.8, 1.2), (1.6, 2.4), (3.2, 4.8), (5.0, 5.0)]):
        for _ in range(20):
            assert low <= policy.backoff(retry) <= high
    assert policy.delay(0, 0.3) == 0.3 and policy.delay(0, 5.0) == 5.0
    assert policy.delay(0, 5.1) is None  # longer than the policy waits: give up and report it


# ---- downloads ----------------------------------------------------------------------------------------------


@pytest.fixture
async def downloader() -> AsyncIterator[Downloader]:
    dl = Downloader(max_bytes=1000, allow_private=True, timeout=httpx.Timeout(0.5), retry=FAST)
    yield dl
    await dl.aclose()


async def test_download_sends_no_credentials(server: ScriptServer, downloader: Downloader) -> None:
    server.will(Step(text="PNGDATA", content_type="image/png"))
    assert await downloader.fetch(server.origin + "/files/a.png") == b"PNGDATA"
    headers = server.seen[0].headers
    assert "authorization" not in headers and "x-key" not in headers
    assert headers["user-agent"] == USER_AGENT


async def test_download_follows_redirects_without_credentials(
    server: ScriptServer, other: ScriptServer, downloader: Downloader
) -> None:
    server.will(Step(status=302, text="", headers={"Location": other.origin + "/real.png"}))
    other.will(Step(text="IMG", content_type="image/png"))
    assert await downloader.fetch(server.origin + "/a.png") == b"IMG"
    assert "authorization" not in other.seen[0].headers


@pytest.mark.parametrize("status", [401, 403, 404, 410])
async def test_download_gone_is_expired(server: ScriptServer, downloader: Downloader, status: int) -> None:
    server.will(Step(status=status, text="AccessDenied", content_type="text/plain"))
    error = await _raises(downloader.fetch(server.origin + "/a.png"))
    assert error.kind == "expired" and "no longer available" in error.message
    assert len(server.seen) == 1


async def test_download_retries_transient_faults(server: ScriptServer, downloader: Downloader) -> None:
    server.will(
        Step(status=503, text="busy"),
        Step(action="reset"),
        Step(delay=1.0, text="late"),
        Step(text="OK", content_type="image/png"),
    )
    assert await downloader.fetch(server.origin + "/a.png") == b"OK"
    server.will(Step(status=429, text="resets in ~0s", headers={"Retry-After": "0"}), Step(text="OK2"))
    assert await downloader.fetch(server.origin + "/b.png") == b"OK2"
    assert len(server.seen) == 6


async def test_download_gives_up_after_attempts(server: ScriptServer, downloader: Downloader) -> None:
    server.will(Step(status=500, text="nope"))
    assert (await _raises(downloader.fetch(server.origin + "/a.png"))).kind == "unavailable"
    assert len(server.seen) == FAST.attempts


async def test_download_size_cap_by_length_and_by_stream(server: ScriptServer, downloader: Downloader) -> None:
    server.will(Step(text="x" * 1001, content_type="image/png"))
    error = await _raises(downloader.fetch(server.origin + "/big.png"))
    assert error.kind == "bad_response" and "larger than" in error.message and "MB limit" in error.message
    server.will(Step(text="y" * 5000, content_type="image/png", action="chunked"))  # no Content-Length
    assert (await _raises(downloader.fetch(server.origin + "/big2.png"))).kind == "bad_response"
    server.will(Step(text="z" * 1000, content_type="image/png", action="chunked"))
    assert await downloader.fetch(server.origin + "/ok.png") == b"z" * 1000


async def test_download_empty_file_is_bad_response(server: ScriptServer, downloader: Downloader) -> None:
    server.will(Step(text="", content_type="image/png"))
    assert (await _raises(downloader.fetch(server.origin + "/empty.png"))).kind == "bad_response"


async def test_download_data_uri_and_naked_base64(downloader: Downloader) -> None:
    payload = b"\x89PNG\r\n\x1a\nfake"
    encoded = base64.b64encode(payload).decode()
    assert await downloader.fetch(f"data:image/png;base64,{encoded}") == payload
    assert await downloader.fetch(encoded) == payload
    assert await downloader.fetch(encoded.rstrip("=") + "\n") == payload
    assert await downloader.fetch("data:text/plain,hello%20world") == b"hello world"


async def test_download_inline_size_cap_and_garbage(downloader: Downloader) -> None:
    big = base64.b64encode(b"\0" * 1001).decode()
    for ref in (big, f"data:image/png;base64,{big}"):
        error = await _raises(downloader.fetch(ref))
        assert error.kind == "bad_response" and "larger than" in error.message
    for ref in ("not base64 at all!", "data:image/png;base64", "ftp://files.example/a.png", ""):
        assert (await _raises(downloader.fetch(ref))).kind == "bad_response"
