"""BFLProvider against a real local fake of BFL's API (tests/fakes/bfl_server.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from PIL import Image

from bot.config import ProviderSettings
from bot.errors import ConfigError, ProviderError
from bot.lifecycle.states import State
from bot.params import BFL_FILL, BFL_KONTEXT, Value
from bot.providers.base import Handle, InputImage, ProviderJob, Status
from bot.providers.bfl import BFLProvider, _progress, trusted_hosts
from bot.providers.http import Downloader, RetryPolicy
from tests.fakes.bfl_server import CONTENT_POLICY, VALIDATION_ERROR, FakeBFL
from tests.fakes.common import Fault, inverted_png, make_mask, make_png

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
SIZE = (64, 48)


def image(size: tuple[int, int] = SIZE) -> InputImage:
    return InputImage(make_png(size), "image/png", size)


def mask(size: tuple[int, int] = SIZE) -> InputImage:
    return InputImage(make_mask(size), "image/png", size)


def fill_job(prompt: str = "a red balloon", *, params: Mapping[str, Value] | None = None, **opts: Value) -> ProviderJob:
    resolved = dict(params) if params is not None else BFL_FILL.resolve({"seed": 7, **opts}, {"safety_tolerance": 2})
    return ProviderJob(spec=BFL_FILL, prompt=prompt, params=resolved, image=image(), mask=mask())


def kontext_job(**opts: Value) -> ProviderJob:
    params = BFL_KONTEXT.resolve({"seed": 7, **opts}, {"safety_tolerance": 2})
    return ProviderJob(spec=BFL_KONTEXT, prompt="make it night", params=params, image=image())


async def finish(provider: BFLProvider, handle: Handle, *, limit: float = 5.0) -> tuple[Status, list[Status]]:
    """Poll until terminal (the job engine's job in production), returning the last status and all seen."""
    seen: list[Status] = []
    async with asyncio.timeout(limit):
        while True:
            status = await provider.poll(handle)
            seen.append(status)
            if status.state.terminal:
                return status, seen
            await asyncio.sleep(0.02)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBFL]:
    async with FakeBFL(duration=0.1) as server:
        yield server


@pytest.fixture
async def downloader() -> AsyncIterator[Downloader]:
    dl = Downloader(max_bytes=1_000_000, allow_private=True, retry=FAST_RETRY, timeout=httpx.Timeout(2.0))
    yield dl
    await dl.aclose()


def make_provider(
    fake: FakeBFL, downloader: Downloader, *, timeout: float = 2.0, key: str | None = None
) -> BFLProvider:
    return BFLProvider(fake.provider_settings(key), downloader, retry=FAST_RETRY, timeout=httpx.Timeout(timeout))


@pytest.fixture
async def provider(fake: FakeBFL, downloader: Downloader) -> AsyncIterator[BFLProvider]:
    p = make_provider(fake, downloader)
    yield p
    await p.aclose()


def assert_key_only_on_bfl_hosts(fake: FakeBFL) -> None:
    for req in fake.requests:
        if req.server in ("api", "poll"):
            assert req.headers.get("x-key") == fake.key, req
        else:
            assert "x-key" not in req.headers, req
            assert "authorization" not in req.headers, req


# --- happy paths ------------------------------------------------------------------------------------------


async def test_fill_happy_path(fake: FakeBFL, provider: BFLProvider) -> None:
    job = fill_job(steps=30, guidance=42.5, prompt_upsampling=True)
    handle, first = await provider.submit(job)
    assert first.state is State.STARTING
    assert first.extra["cost"] == "2.5"
    assert handle.provider == "bfl" and handle.job_id in fake.jobs
    assert handle.poll_url is not None and f":{fake.poll.port}/" in handle.poll_url

    status, seen = await finish(provider, handle)
    assert status.state is State.SUCCEEDED
    assert all(s.state is State.RUNNING for s in seen[:-1])
    assert len(status.outputs) == 1 and not status.outputs[0].flagged
    assert status.extra["seed"] == "7"

    data = await provider.download(status.outputs[0])
    assert data == inverted_png(job.image.data)
    with Image.open(io.BytesIO(data)) as out:
        assert out.size == SIZE

    [submit] = fake.requests_to("api")
    assert submit.method == "POST" and submit.path == "/v1/flux-pro-1.0-fill"
    body = submit.body
    assert body["image"] == base64.b64encode(job.image.data).decode()
    assert job.mask is not None and body["mask"] == base64.b64encode(job.mask.data).decode()
    assert not body["image"].startswith("data:") and not body["mask"].startswith("data:")
    assert body["prompt"] == "a red balloon"
    assert body["steps"] == 30 and body["guidance"] == 42.5 and body["seed"] == 7
    assert body["prompt_upsampling"] is True and body["safety_tolerance"] == 2
    assert body["output_format"] == "png"
    assert "outputs" not in body
    assert submit.headers["user-agent"].startswith("fillbot/")
    assert len(fake.requests_to("poll")) == len(seen)
    assert len(fake.requests_to("delivery")) == 1
    assert fake.requests_to("foreign") == []
    assert_key_only_on_bfl_hosts(fake)


async def test_fill_defaults_are_valid_for_the_real_api(fake: FakeBFL, provider: BFLProvider) -> None:
    handle, _ = await provider.submit(fill_job(prompt=""))
    body = fake.requests_to("api")[0].body
    assert body["steps"] == 50 and body["guidance"] == 60 and body["prompt"] == ""
    assert (await finish(provider, handle))[0].state is State.SUCCEEDED


@pytest.mark.parametrize(("ratio", "sent"), [("match_input_image", None), ("16:9", "16:9"), ("9:21", "9:21")])
async def test_kontext_aspect_ratio(fake: FakeBFL, provider: BFLProvider, ratio: str, sent: str | None) -> None:
    job = kontext_job(aspect_ratio=ratio)
    handle, _ = await provider.submit(job)
    [submit] = fake.requests_to("api")
    assert submit.path == "/v1/flux-kontext-pro"
    assert submit.body.get("aspect_ratio") == sent
    assert ("aspect_ratio" in submit.body) is (sent is not None)
    assert submit.body["input_image"] == base64.b64encode(job.image.data).decode()
    assert "image" not in submit.body and "mask" not in submit.body
    status, _ = await finish(provider, handle)
    assert status.state is State.SUCCEEDED
    assert await provider.download(status.outputs[0]) == inverted_png(job.image.data)
    assert_key_only_on_bfl_hosts(fake)


async def test_handle_survives_a_restart(fake: FakeBFL, downloader: Downloader) -> None:
    first = make_provider(fake, downloader)
    handle, _ = await first.submit(fill_job())
    await first.aclose()
    second = make_provider(fake, downloader)
    try:
        status, _ = await finish(second, Handle.from_json(handle.to_json()))
    finally:
        await second.aclose()
    assert status.state is State.SUCCEEDED


async def test_missing_polling_url_falls_back_to_get_result(fake: FakeBFL, provider: BFLProvider) -> None:
    fake.omit_polling_url = True
    handle, _ = await provider.submit(fill_job())
    assert handle.poll_url is not None and f":{fake.api.port}/v1/get_result?id=" in handle.poll_url
    status, _ = await finish(provider, handle)
    assert status.state is State.SUCCEEDED
    assert fake.requests_to("poll") == [] and len(fake.requests_to("api")) > 1
    assert_key_only_on_bfl_hosts(fake)


# --- statuses and progress --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "check"),
    [
        ("fraction", lambda p: p is not None and 0 < p < 1),
        ("percent", lambda p: p is not None and 0 < p < 1),
        ("none", lambda p: p is None),
    ],
)
async def test_progress_scales(fake: FakeBFL, provider: BFLProvider, scale: Any, check: Any) -> None:
    fake.progress = scale
    fake.duration = 0.4
    handle, _ = await provider.submit(fill_job())
    await asyncio.sleep(0.1)
    status = await provider.poll(handle)
    assert status.state is State.RUNNING and status.raw_status == "Pending"
    assert check(status.progress), status.progress


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        (0, None),
        (0.25, 0.25),
        (1, 1.0),
        (37.5, 0.375),
        (100, 1.0),
        (101, None),
        (-3, None),
        (True, None),
        ("50", None),
        (float("nan"), None),
    ],
)
def test_progress_parsing(raw: Any, expected: float | None) -> None:
    assert _progress(raw) == expected


async def test_unknown_statuses_mean_running(fake: FakeBFL, provider: BFLProvider) -> None:
    fake.pending_statuses = ("Pending", "Reasoning", "Generating")
    fake.duration = 0.3
    handle, _ = await provider.submit(fill_job())
    status, seen = await finish(provider, handle)
    assert status.state is State.SUCCEEDED
    running = {s.raw_status for s in seen if s.state is State.RUNNING}
    assert {"Reasoning", "Generating"} <= running


@pytest.mark.parametrize(
    ("outcome", "state", "words", "hidden"),
    [
        ("request_moderated", State.MODERATED, "before it ran; nothing was charged", "Derivative"),
        ("content_moderated", State.MODERATED, "withheld; nothing was charged", "NSFW"),
        ("error", State.FAILED, "Black Forest Labs could not make the image: Error description", ""),
        ("not_found", State.EXPIRED, "no longer knows this job", ""),
    ],
)
async def test_terminal_failures(
    fake: FakeBFL, provider: BFLProvider, outcome: Any, state: State, words: str, hidden: str
) -> None:
    fake.outcome = outcome
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    assert status.state is state
    assert status.outputs == ()
    assert status.message is not None and words in status.message
    if hidden:
        assert hidden not in status.message
        assert hidden in status.detail  # kept for the logs
    assert fake.requests_to("delivery") == []


async def test_error_with_content_policy_is_moderated(fake: FakeBFL, provider: BFLProvider) -> None:
    fake.outcome = "error"
    fake.error_fields = dict(CONTENT_POLICY)
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    assert status.state is State.MODERATED and status.raw_status == "Error"
    assert status.message == (
        "Black Forest Labs refused this request under its content policy, so nothing was charged; "
        "try a different prompt or picture."
    )
    assert "content_policy_violation" in status.detail


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        (
            {"error": "internal_error", "message": "Worker crashed; see https://status.bfl.ai"},
            "Worker crashed; see [link]",
        ),
        ({"error": "generation_timeout"}, "generation timeout"),
        ({"error": "Task failed: x-key abc123 was refused"}, "Task failed: [redacted] was refused"),
    ],
)
async def test_error_shows_the_providers_words(
    fake: FakeBFL, provider: BFLProvider, fields: dict[str, str], shown: str
) -> None:
    fake.outcome = "error"
    fake.error_fields = fields
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    assert status.state is State.FAILED
    assert status.message == f"Black Forest Labs could not make the image: {shown}"


async def test_error_without_words_has_a_generic_message(fake: FakeBFL, provider: BFLProvider) -> None:
    fake.outcome = "error"
    fake.error_fields = {}
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    assert status.state is State.FAILED and status.message is not None and "reported an error" in status.message


async def test_documented_minimal_answers(downloader: Downloader) -> None:
    """BFL's examples carry no `progress`/`details`/`preview` keys at all (`{"status": "Pending"}`)."""
    async with FakeBFL(duration=0.0, outcome="never", progress="none", null_fields=False) as fake:
        provider = make_provider(fake, downloader)
        try:
            handle, _ = await provider.submit(fill_job())  # stays Pending
            async with httpx.AsyncClient() as raw:
                pending = (await raw.get(str(handle.poll_url), headers={"x-key": fake.key})).json()
            assert pending == {"id": handle.job_id, "status": "Pending"}
            status = await provider.poll(handle)
            assert status.state is State.RUNNING and status.progress is None and status.raw_status == "Pending"
            fake.outcome = "ready"
            handle, _ = await provider.submit(fill_job())
            status, _ = await finish(provider, handle)
            assert status.state is State.SUCCEEDED and len(status.outputs) == 1
            fake.outcome = "error"
            fake.error_fields = dict(CONTENT_POLICY)
            handle, _ = await provider.submit(fill_job())
            status, _ = await finish(provider, handle)
            assert status.state is State.MODERATED
        finally:
            await provider.aclose()


async def test_never_finishing_stays_running(fake: FakeBFL, provider: BFLProvider) -> None:
    fake.outcome = "never"
    fake.duration = 0.01
    handle, _ = await provider.submit(fill_job())
    for _ in range(3):
        await asyncio.sleep(0.02)
        assert (await provider.poll(handle)).state is State.RUNNING


async def test_unknown_job_is_expired(fake: FakeBFL, provider: BFLProvider) -> None:
    handle = Handle("bfl", "nope", f"{fake.poll.origin}/v1/get_result?id=nope")
    status = await provider.poll(handle)
    assert status.state is State.EXPIRED and status.raw_status == "Task not found"


async def test_poll_http_404_is_expired(fake: FakeBFL, provider: BFLProvider) -> None:
    fake.faults.poll.append(Fault.error(404, {"detail": "Not Found"}))
    status = await provider.poll(Handle("bfl", "x", f"{fake.poll.origin}/v1/get_result?id=x"))
    assert status.state is State.EXPIRED


# --- submit: validation and faults ------------------------------------------------------------------------


async def test_mask_size_mismatch_is_refused_before_sending(fake: FakeBFL, provider: BFLProvider) -> None:
    job = ProviderJob(BFL_FILL, "x", fill_job().params, image(), mask((32, 32)))
    with pytest.raises(ProviderError) as info:
        await provider.submit(job)
    assert info.value.kind == "invalid_input" and "same size" in info.value.message
    assert fake.requests == []


async def test_fill_without_mask_is_refused(fake: FakeBFL, provider: BFLProvider) -> None:
    job = ProviderJob(BFL_FILL, "x", fill_job().params, image(), None)
    with pytest.raises(ProviderError, match="mask") as info:
        await provider.submit(job)
    assert info.value.kind == "invalid_input"
    assert fake.requests == []


async def test_fake_rejects_what_the_real_api_rejects(fake: FakeBFL, provider: BFLProvider) -> None:
    """Params that skipped validation: the fake answers FastAPI's 422 and we surface the field name."""
    params = {**fill_job().params, "steps": 10}
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job(params=params))
    assert info.value.kind == "invalid_input" and "steps" in info.value.message
    assert len(fake.requests_to("api")) == 1  # a 422 is never retried


async def test_wrong_key_is_an_auth_error(fake: FakeBFL, downloader: Downloader) -> None:
    provider = make_provider(fake, downloader, key="wrong")
    try:
        with pytest.raises(ProviderError) as info:
            await provider.submit(fill_job())
    finally:
        await provider.aclose()
    assert info.value.kind == "auth" and "wrong" not in info.value.message


def test_missing_key_fails_fast(downloader: Downloader) -> None:
    settings = ProviderSettings(name="bfl", base_url="https://api.bfl.ai/v1", api_key=None, max_concurrency=24)
    with pytest.raises(ConfigError, match="BFL_API_KEY"):
        BFLProvider(settings, downloader)


@pytest.mark.parametrize(
    "fault",
    [Fault.error(500), Fault.html(502), Fault.reset(), Fault.truncated()],
    ids=["500", "html", "reset", "truncated"],
)
async def test_submit_faults_are_never_retried(fake: FakeBFL, provider: BFLProvider, fault: Fault) -> None:
    fake.faults.submit.append(fault)
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job())
    assert info.value.kind == "maybe_submitted"
    assert len(fake.requests_to("api")) == 1


async def test_submit_timeout_is_maybe_submitted(fake: FakeBFL, downloader: Downloader) -> None:
    provider = make_provider(fake, downloader, timeout=0.2)
    fake.faults.submit.append(Fault.slow(0.6))
    try:
        with pytest.raises(ProviderError) as info:
            await provider.submit(fill_job())
    finally:
        await provider.aclose()
    assert info.value.kind == "maybe_submitted"
    assert len(fake.requests_to("api")) == 1


@pytest.mark.parametrize("retry_after", ["0", None])
async def test_submit_429_is_retried(fake: FakeBFL, provider: BFLProvider, retry_after: str | None) -> None:
    fake.faults.submit.append(Fault.rate_limited(retry_after))
    handle, _ = await provider.submit(fill_job())
    assert len(fake.requests_to("api")) == 2
    assert len(fake.jobs) == 1 and handle.job_id in fake.jobs


async def test_submit_over_concurrency_limit_says_when_to_retry(fake: FakeBFL, provider: BFLProvider) -> None:
    """BFL's 429 body says `retry_after: 5`: longer than this policy waits, so it is reported at once."""
    fake.max_active = 0
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job())
    assert info.value.kind == "rate_limited" and info.value.retry_after == 5
    assert info.value.message == "Black Forest Labs is rate-limiting the bot; try again in about 5 s."
    assert len(fake.requests_to("api")) == 1
    assert fake.jobs == {}


async def test_submit_429_body_retry_after_is_honoured(fake: FakeBFL, downloader: Downloader) -> None:
    fake.max_active = 0
    fake.retry_after = 0.2
    provider = BFLProvider(
        fake.provider_settings(), downloader, retry=RetryPolicy(attempts=3, base_delay=0.0, max_delay=1.0)
    )
    try:
        started = time.monotonic()
        with pytest.raises(ProviderError) as info:
            await provider.submit(fill_job())
        elapsed = time.monotonic() - started
    finally:
        await provider.aclose()
    assert info.value.kind == "rate_limited" and info.value.retry_after == 0.2
    assert "try again in about 1 s" in info.value.message
    assert len(fake.requests_to("api")) == 3 and fake.jobs == {}
    assert elapsed >= 0.38  # waited the body's 0.2 s before each retry, not the policy's 0 s backoff


async def test_submit_validation_error_names_fields(fake: FakeBFL, provider: BFLProvider) -> None:
    fake.faults.submit.append(Fault.error(400, VALIDATION_ERROR))
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job())
    assert info.value.kind == "invalid_input"
    assert info.value.message == (
        "Black Forest Labs refused the request: width: Must be a multiple of 16; prompt: Cannot be empty"
    )
    assert len(fake.requests_to("api")) == 1


@pytest.mark.parametrize("status", [400, 422])
async def test_submit_content_policy_is_moderated(fake: FakeBFL, provider: BFLProvider, status: int) -> None:
    fake.faults.submit.append(Fault.error(status, CONTENT_POLICY))
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job())
    assert info.value.kind == "moderated"
    assert "content policy" in info.value.message and "nothing was charged" in info.value.message
    assert len(fake.requests_to("api")) == 1 and fake.jobs == {}


async def test_submit_error_message_is_shown_cleaned(fake: FakeBFL, provider: BFLProvider) -> None:
    body = {"error": "invalid_image", "message": "Input image could not be decoded, see https://docs.bfl.ai/x"}
    fake.faults.submit.append(Fault.error(400, body))
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job())
    assert info.value.message == "Black Forest Labs refused the request: Input image could not be decoded, see [link]"


# --- poll faults ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        [Fault.error(500), Fault.error(500)],
        [Fault.rate_limited("0")],
        [Fault.rate_limited(None)],
        [Fault.html(502)],
        [Fault.reset()],
        [Fault.slow(0.6)],
    ],
    ids=["500x2", "429-retry-after", "429-bare", "html-502", "reset", "slow"],
)
async def test_poll_recovers_from_transient_faults(fake: FakeBFL, downloader: Downloader, faults: list[Fault]) -> None:
    provider = make_provider(fake, downloader, timeout=0.3)
    try:
        handle, _ = await provider.submit(fill_job())
        await asyncio.sleep(0.12)  # finished: one successful poll suffices
        fake.faults.poll.extend(faults)
        status = await provider.poll(handle)
    finally:
        await provider.aclose()
    assert status.state is State.SUCCEEDED
    assert len(fake.requests_to("poll")) == len(faults) + 1


async def test_poll_gives_up_after_persistent_500(fake: FakeBFL, provider: BFLProvider) -> None:
    handle, _ = await provider.submit(fill_job())
    fake.faults.poll.extend([Fault.error(500)] * FAST_RETRY.attempts)
    with pytest.raises(ProviderError) as info:
        await provider.poll(handle)
    assert info.value.kind == "unavailable"
    assert len(fake.requests_to("poll")) == FAST_RETRY.attempts
    assert (await finish(provider, handle))[0].state is State.SUCCEEDED  # the next look recovers


@pytest.mark.parametrize("fault", [Fault.truncated(), Fault.html(200)], ids=["truncated", "html-200"])
async def test_poll_unreadable_body(fake: FakeBFL, provider: BFLProvider, fault: Fault) -> None:
    handle, _ = await provider.submit(fill_job())
    fake.faults.poll.append(fault)
    with pytest.raises(ProviderError) as info:
        await provider.poll(handle)
    assert info.value.kind == "bad_response"
    assert (await finish(provider, handle))[0].state is State.SUCCEEDED


# --- downloads --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setup", ["404", "expired"])
async def test_sample_gone(fake: FakeBFL, provider: BFLProvider, setup: str) -> None:
    if setup == "404":
        fake.sample_status = 404
    else:
        fake.sample_ttl = -1  # the signed URL has already expired (403, like Azure blob storage)
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    with pytest.raises(ProviderError) as info:
        await provider.download(status.outputs[0])
    assert info.value.kind == "expired"
    assert len(fake.requests_to("delivery")) == 1
    assert_key_only_on_bfl_hosts(fake)


async def test_oversized_output_is_refused(fake: FakeBFL, provider: BFLProvider) -> None:
    fake.sample_padding = 2_000_000
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    with pytest.raises(ProviderError, match="larger") as info:
        await provider.download(status.outputs[0])
    assert info.value.kind == "bad_response"


async def test_download_retries_a_500(fake: FakeBFL, provider: BFLProvider) -> None:
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    fake.faults.download.append(Fault.error(500))
    assert (await provider.download(status.outputs[0])).startswith(b"\x89PNG")
    assert len(fake.requests_to("delivery")) == 2
    assert_key_only_on_bfl_hosts(fake)


# --- credential scoping -----------------------------------------------------------------------------------


async def test_foreign_polling_url_never_gets_the_key(
    fake: FakeBFL, provider: BFLProvider, caplog: pytest.LogCaptureFixture
) -> None:
    fake.foreign_polling = True
    with caplog.at_level(logging.WARNING, logger="bot.providers"):
        handle, _ = await provider.submit(fill_job())
        assert handle.poll_url is not None and handle.poll_url.startswith("http://localhost:")
        with pytest.raises(ProviderError) as info:
            await provider.poll(handle)
    assert info.value.kind == "bad_response"
    assert "API key" in info.value.message
    assert fake.requests_to("foreign") == []
    assert any("untrusted" in r.getMessage() for r in caplog.records)
    assert fake.key not in caplog.text


async def test_restored_handle_with_foreign_url_is_refused(fake: FakeBFL, provider: BFLProvider) -> None:
    handle = Handle("bfl", "abc", "https://api.bfl.ai.evil.example/v1/get_result?id=abc")
    with pytest.raises(ProviderError) as info:
        await provider.poll(handle)
    assert info.value.kind == "bad_response"


@pytest.mark.parametrize(
    ("base", "url", "ok"),
    [
        ("https://api.bfl.ai/v1", "https://api.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai/v1", "https://api.us1.bfl.ai/v1/get_result?id=1", True),
        ("https://api.bfl.ai/v1", "https://API.EU.BFL.AI/v1/get_result", True),
        ("https://api.bfl.ai/v1", "https://bfl.ai/x", True),
        ("https://api.bfl.ai/v1", "http://api.us1.bfl.ai/v1/get_result", False),
        ("https://api.bfl.ai/v1", "https://api.us1.bfl.ai:8443/v1/get_result", False),
        ("https://api.bfl.ai/v1", "https://api.bfl.ai.evil.example/v1", False),
        ("https://api.bfl.ai/v1", "https://evilbfl.ai/v1", False),
        ("https://api.bfl.ai/v1", "https://api.bfl.ai@evil.example/v1", False),
        ("https://api.bfl.ai/v1", "https://bfldeliveryprod.blob.core.windows.net/x", False),
        ("https://api.eu.bfl.ai/v1", "https://api.eu1.bfl.ai/v1/get_result", True),
        ("http://127.0.0.1:5000/v1", "http://127.0.0.1:6000/v1/get_result", True),
        ("http://127.0.0.1:5000/v1", "http://localhost:6000/v1/get_result", False),
        ("http://127.0.0.1:5000/v1", "http://10.0.0.1:5000/v1/get_result", False),
        ("https://bfl-proxy.example.com/v1", "https://bfl-proxy.example.com/v1/get_result", True),
        ("https://bfl-proxy.example.com/v1", "https://api.us1.bfl.ai/v1/get_result", False),
        ("https://bfl-proxy.example.com/v1", "https://bfl-proxy.example.com:444/v1/get_result", False),
    ],
)
def test_trusted_hosts(base: str, url: str, ok: bool) -> None:
    assert trusted_hosts(base)(httpx.URL(url)) is ok
