"""WaveSpeedProvider against a real local fake of WaveSpeed's v3 API (tests/fakes/wavespeed_server.py)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from PIL import Image

from bot.config import ProviderSettings
from bot.errors import ConfigError, ProviderError
from bot.lifecycle.states import State
from bot.params import WAVESPEED_FILL, Value
from bot.providers.base import Handle, InputImage, ProviderJob, Status
from bot.providers.http import Downloader, RetryPolicy
from bot.providers.wavespeed import WaveSpeedProvider
from tests.fakes.common import Fault, inverted_png, make_mask, make_png
from tests.fakes.wavespeed_server import FAIL_ERRORS, FakeWaveSpeed

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
SIZE = (320, 256)


def image(size: tuple[int, int] = SIZE) -> InputImage:
    return InputImage(make_png(size), "image/png", size)


def mask(size: tuple[int, int] = SIZE) -> InputImage:
    return InputImage(make_mask(size), "image/png", size)


def fill_job(*, size: tuple[int, int] = SIZE, params: Mapping[str, Value] | None = None, **opts: Value) -> ProviderJob:
    resolved = dict(params) if params is not None else WAVESPEED_FILL.resolve({"seed": 11, **opts})
    return ProviderJob(WAVESPEED_FILL, "a red balloon", resolved, image(size), mask(size))


async def finish(provider: WaveSpeedProvider, handle: Handle, *, limit: float = 5.0) -> tuple[Status, list[Status]]:
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
async def fake() -> AsyncIterator[FakeWaveSpeed]:
    async with FakeWaveSpeed(duration=0.15) as server:
        yield server


@pytest.fixture
async def downloader() -> AsyncIterator[Downloader]:
    dl = Downloader(max_bytes=2_000_000, allow_private=True, retry=FAST_RETRY, timeout=httpx.Timeout(2.0))
    yield dl
    await dl.aclose()


def make_provider(
    fake: FakeWaveSpeed, downloader: Downloader, *, timeout: float = 2.0, key: str | None = None
) -> WaveSpeedProvider:
    return WaveSpeedProvider(fake.provider_settings(key), downloader, retry=FAST_RETRY, timeout=httpx.Timeout(timeout))


@pytest.fixture
async def provider(fake: FakeWaveSpeed, downloader: Downloader) -> AsyncIterator[WaveSpeedProvider]:
    p = make_provider(fake, downloader)
    yield p
    await p.aclose()


def assert_key_only_on_api(fake: FakeWaveSpeed) -> None:
    for req in fake.requests:
        if req.server == "api":
            assert req.headers.get("authorization") == f"Bearer {fake.key}", req
        else:
            assert "authorization" not in req.headers, req


# --- happy paths ------------------------------------------------------------------------------------------


async def test_fill_happy_path(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    job = fill_job(steps=20, guidance=31.5)
    handle, first = await provider.submit(job)
    assert first.state is State.STARTING and first.raw_status == "created"
    assert handle.provider == "wavespeed" and handle.job_id in fake.jobs and handle.poll_url is None

    status, seen = await finish(provider, handle)
    assert status.state is State.SUCCEEDED
    assert {s.raw_status for s in seen[:-1]} <= {"created", "processing"}
    assert "processing" in {s.raw_status for s in seen}
    assert all(s.progress is None for s in seen)
    assert len(status.outputs) == 1 and not status.outputs[0].flagged

    data = await provider.download(status.outputs[0])
    assert data == inverted_png(job.image.data, SIZE)
    with Image.open(io.BytesIO(data)) as out:
        assert out.size == SIZE

    submit = next(r for r in fake.requests if r.method == "POST")
    assert submit.path == "/api/v3/wavespeed-ai/flux-fill-dev"
    body = submit.body
    assert body["image"] == base64.b64encode(job.image.data).decode()
    assert job.mask is not None and body["mask_image"] == base64.b64encode(job.mask.data).decode()
    assert not body["image"].startswith("data:") and not body["mask_image"].startswith("data:")
    assert body["size"] == "320*256"
    assert body["prompt"] == "a red balloon"
    assert body["seed"] == 11 and body["num_inference_steps"] == 20 and body["guidance_scale"] == 31.5
    assert body["num_images"] == 1
    assert not {"loras", "lora", "lora_scale", "outputs", "steps", "guidance"} & set(body)

    polls = [r for r in fake.requests_to("api") if r.method == "GET"]
    assert len(polls) == len(seen)
    assert all(r.path == f"/api/v3/predictions/{handle.job_id}/result" for r in polls)
    assert [r.path for r in fake.requests_to("delivery")] == [f"/outputs/{handle.job_id}/0.png"]
    assert_key_only_on_api(fake)


@pytest.mark.parametrize("size", [(256, 256), (1536, 256), (256, 1536), (1024, 768)])
async def test_size_follows_the_image(fake: FakeWaveSpeed, provider: WaveSpeedProvider, size: tuple[int, int]) -> None:
    handle, _ = await provider.submit(fill_job(size=size))
    assert fake.requests_to("api")[0].body["size"] == f"{size[0]}*{size[1]}"
    status, _ = await finish(provider, handle)
    with Image.open(io.BytesIO(await provider.download(status.outputs[0]))) as out:
        assert out.size == size


@pytest.mark.parametrize("size", [(255, 300), (300, 255), (1537, 800), (800, 2000)])
async def test_size_out_of_range_is_refused_before_sending(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, size: tuple[int, int]
) -> None:
    with pytest.raises(ProviderError, match="256–1536") as info:
        await provider.submit(fill_job(size=size))
    assert info.value.kind == "invalid_input"
    assert fake.requests == []


async def test_fake_rejects_sizes_like_the_real_api(fake: FakeWaveSpeed) -> None:
    """The fake's own validation (so passing tests mean the provider really sent valid sizes)."""
    b64 = base64.b64encode(make_png((300, 300))).decode()
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{fake.base_url}/wavespeed-ai/flux-fill-dev",
            json={"image": b64, "mask_image": b64, "prompt": "x", "size": "2000*300"},
            headers={"Authorization": f"Bearer {fake.key}"},
        )
    assert response.status_code == 400 and "out of range" in response.json()["message"]


async def test_mask_mismatch_and_missing_mask(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    params = fill_job().params
    for job in (
        ProviderJob(WAVESPEED_FILL, "x", params, image(), mask((256, 256))),
        ProviderJob(WAVESPEED_FILL, "x", params, image(), None),
    ):
        with pytest.raises(ProviderError) as info:
            await provider.submit(job)
        assert info.value.kind == "invalid_input"
    assert fake.requests == []


async def test_lora_mapping(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    await provider.submit(fill_job(lora="https://huggingface.co/x/y/resolve/main/style.safetensors", lora_scale=0.8))
    body = fake.requests_to("api")[0].body
    assert body["loras"] == [{"path": "https://huggingface.co/x/y/resolve/main/style.safetensors", "scale": 0.8}]
    assert "lora" not in body and "lora_scale" not in body


async def test_several_outputs_with_nsfw_flags(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    fake.nsfw = [False, True, False]
    handle, _ = await provider.submit(fill_job(outputs=3))
    assert fake.requests_to("api")[0].body["num_images"] == 3
    status, _ = await finish(provider, handle)
    assert [o.flagged for o in status.outputs] == [False, True, False]
    assert status.extra["inference_ms"] == "150"
    for output in status.outputs:
        assert (await provider.download(output)).startswith(b"\x89PNG")
    assert len(fake.requests_to("delivery")) == 3
    assert_key_only_on_api(fake)


async def test_base64_outputs(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    fake.base64_outputs = True
    job = fill_job()
    handle, _ = await provider.submit(job)
    status, _ = await finish(provider, handle)
    [output] = status.outputs
    assert not output.ref.startswith(("http", "data:"))
    assert await provider.download(output) == inverted_png(job.image.data, SIZE)
    assert fake.requests_to("delivery") == []


async def test_handle_survives_a_restart(fake: FakeWaveSpeed, downloader: Downloader) -> None:
    first = make_provider(fake, downloader)
    handle, _ = await first.submit(fill_job())
    await first.aclose()
    second = make_provider(fake, downloader)
    try:
        status, _ = await finish(second, Handle.from_json(handle.to_json()))
    finally:
        await second.aclose()
    assert status.state is State.SUCCEEDED


# --- statuses ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "state", "words"),
    [
        (1200, State.MODERATED, "moderation"),
        (1400, State.FAILED, "rejected a parameter"),
        (1401, State.FAILED, "rejected a parameter"),
        (1402, State.FAILED, "could not download"),
        (1403, State.FAILED, "task failed"),
        (1405, State.FAILED, "task failed"),
        (5000, State.FAILED, "internal error"),
        (5003, State.FAILED, "unavailable"),
        (5004, State.TIMED_OUT, "timed out"),
    ],
)
async def test_failure_codes(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, code: int, state: State, words: str
) -> None:
    fake.outcome = "failed"
    fake.fail_code = code
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    assert status.state is state
    assert status.message is not None and words in status.message
    raw = FAIL_ERRORS[code]
    assert raw not in status.message and raw in status.detail
    assert fake.requests_to("delivery") == []


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [
        (None, None, "The provider could not make the image: Model error"),  # the official SDK's fixture
        (None, "Error message here", "The provider could not make the image: Error message here"),  # the docs
        (None, "NSFW check failed for https://cdn.example/x.png", "The provider could not make the image: NSFW "
         "check failed for [link]"),
        (None, "", "The provider could not make the image."),
        (4242, "quota of gpu-17 exhausted", "The provider could not make the image: quota of gpu-17 exhausted"),
    ],
)
async def test_failure_without_a_known_code_shows_the_providers_error(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, code: int | None, error: str | None, message: str
) -> None:
    fake.outcome = "failed"
    fake.fail_code = code
    fake.fail_error = error
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    assert status.state is State.FAILED and status.message == message
    assert f"code={code}" in status.detail


async def test_bare_submit_reply_is_tracked(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    """The official SDK's fixtures answer a submit with only `{"data": {"id": ...}}`: the job exists, track it."""
    fake.bare_submit = True
    handle, first = await provider.submit(fill_job())
    assert first.state is State.STARTING and handle.job_id in fake.jobs
    assert (await finish(provider, handle))[0].state is State.SUCCEEDED


async def test_pending_is_queued_not_running(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    """The official SDK's fixtures answer `pending` for a queued task: that is STARTING, not RUNNING."""
    fake.queued_status = "pending"
    fake.duration = 60.0  # queued for the first 18 s (`created_for`)
    handle, first = await provider.submit(fill_job())
    assert first.state is State.STARTING and first.raw_status == "pending"
    status = await provider.poll(handle)
    assert status.state is State.STARTING and status.raw_status == "pending"
    fake.duration = 0.0
    handle, _ = await provider.submit(fill_job())
    assert (await finish(provider, handle))[0].state is State.SUCCEEDED


@pytest.mark.parametrize(("outcome", "state"), [("cancelled", State.CANCELED), ("timeout", State.TIMED_OUT)])
async def test_undocumented_terminal_statuses(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, outcome: Any, state: State
) -> None:
    fake.outcome = outcome
    handle, _ = await provider.submit(fill_job())
    assert (await finish(provider, handle))[0].state is state


async def test_never_finishing_stays_running(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    fake.outcome = "never"
    fake.duration = 0.01
    handle, _ = await provider.submit(fill_job())
    for _ in range(3):
        await asyncio.sleep(0.02)
        status = await provider.poll(handle)
        assert status.state is State.RUNNING and status.raw_status == "processing"


async def test_unknown_job_is_expired(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    status = await provider.poll(Handle("wavespeed", "a/b?c"))
    assert status.state is State.EXPIRED
    [poll] = fake.requests
    assert poll.raw_path == "/api/v3/predictions/a%2Fb%3Fc/result"


async def test_poll_never_follows_urls_get(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    """The fake's data.urls.get points at the delivery host; the key must not go there."""
    handle, _ = await provider.submit(fill_job())
    await finish(provider, handle)
    assert all(r.path.startswith("/outputs/") for r in fake.requests_to("delivery"))
    assert_key_only_on_api(fake)


# --- envelope and HTTP errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (400, "invalid_input"),
        (401, "auth"),
        (402, "billing"),
        (429, "rate_limited"),
        (500, "maybe_submitted"),
    ],
)
async def test_error_inside_a_200_envelope(
    fake: FakeWaveSpeed, provider: WaveSpeedProvider, code: int, kind: str
) -> None:
    fake.submit_envelope = (code, "guidance_scale must be >= 28, see https://wavespeed.ai/docs/x?token=abc")
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job())
    assert info.value.kind == kind
    assert "https://" not in info.value.message and "token=abc" not in info.value.message
    if kind == "invalid_input":
        assert "guidance_scale must be >= 28" in info.value.message
    assert len(fake.requests_to("api")) == 1


async def test_wrong_key_is_an_auth_error(fake: FakeWaveSpeed, downloader: Downloader) -> None:
    provider = make_provider(fake, downloader, key="wrong")
    try:
        with pytest.raises(ProviderError) as info:
            await provider.submit(fill_job())
    finally:
        await provider.aclose()
    assert info.value.kind == "auth" and "wrong" not in info.value.message


def test_missing_key_fails_fast(downloader: Downloader) -> None:
    settings = ProviderSettings(
        name="wavespeed", base_url="https://api.wavespeed.ai/api/v3", api_key=None, max_concurrency=2
    )
    with pytest.raises(ConfigError, match="WAVESPEED_API_KEY"):
        WaveSpeedProvider(settings, downloader)


async def test_fake_rejects_invalid_params(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    params = {**fill_job().params, "guidance": 20.0}  # skipped validation on purpose
    with pytest.raises(ProviderError, match="guidance_scale") as info:
        await provider.submit(fill_job(params=params))
    assert info.value.kind == "invalid_input"


@pytest.mark.parametrize(
    "fault",
    [Fault.error(500), Fault.html(502), Fault.reset(), Fault.truncated()],
    ids=["500", "html", "reset", "truncated"],
)
async def test_submit_faults_are_never_retried(fake: FakeWaveSpeed, provider: WaveSpeedProvider, fault: Fault) -> None:
    fake.faults.submit.append(fault)
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job())
    assert info.value.kind == "maybe_submitted"
    assert len(fake.requests_to("api")) == 1


@pytest.mark.parametrize("retry_after", ["0", None])
async def test_submit_429_is_retried(fake: FakeWaveSpeed, provider: WaveSpeedProvider, retry_after: str | None) -> None:
    fake.faults.submit.append(Fault.rate_limited(retry_after, {"code": 429, "message": "rate limited", "data": None}))
    handle, _ = await provider.submit(fill_job())
    assert len(fake.requests_to("api")) == 2 and list(fake.jobs) == [handle.job_id]


async def test_submit_429_persistent(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    fake.faults.submit.extend([Fault.rate_limited("0")] * FAST_RETRY.attempts)
    with pytest.raises(ProviderError) as info:
        await provider.submit(fill_job())
    assert info.value.kind == "rate_limited"
    assert len(fake.requests_to("api")) == FAST_RETRY.attempts and fake.jobs == {}


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
async def test_poll_recovers_from_transient_faults(
    fake: FakeWaveSpeed, downloader: Downloader, faults: list[Fault]
) -> None:
    provider = make_provider(fake, downloader, timeout=0.3)
    try:
        handle, _ = await provider.submit(fill_job())
        await asyncio.sleep(0.17)
        fake.faults.poll.extend(faults)
        status = await provider.poll(handle)
    finally:
        await provider.aclose()
    assert status.state is State.SUCCEEDED
    assert len([r for r in fake.requests_to("api") if r.method == "GET"]) == len(faults) + 1


@pytest.mark.parametrize("fault", [Fault.truncated(), Fault.html(200)], ids=["truncated", "html-200"])
async def test_poll_unreadable_body(fake: FakeWaveSpeed, provider: WaveSpeedProvider, fault: Fault) -> None:
    handle, _ = await provider.submit(fill_job())
    fake.faults.poll.append(fault)
    with pytest.raises(ProviderError) as info:
        await provider.poll(handle)
    assert info.value.kind == "bad_response"
    assert (await finish(provider, handle))[0].state is State.SUCCEEDED


async def test_poll_envelope_error(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    handle, _ = await provider.submit(fill_job())
    fake.faults.poll.append(Fault.error(200, {"code": 401, "message": "Unauthorized", "data": None}))
    with pytest.raises(ProviderError) as info:
        await provider.poll(handle)
    assert info.value.kind == "auth"


async def test_download_gone(fake: FakeWaveSpeed, provider: WaveSpeedProvider) -> None:
    handle, _ = await provider.submit(fill_job())
    status, _ = await finish(provider, handle)
    fake.download_status = 404
    with pytest.raises(ProviderError) as info:
        await provider.download(status.outputs[0])
    assert info.value.kind == "expired"
    assert_key_only_on_api(fake)
