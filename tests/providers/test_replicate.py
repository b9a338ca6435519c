"""ReplicateProvider against the fake Replicate server (real HTTP on 127.0.0.1), official and aggregator layouts."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from PIL import Image
from standardwebhooks.webhooks import Webhook

from bot.config import ProviderSettings, Secret
from bot.errors import ConfigError, ProviderError
from bot.lifecycle.states import State
from bot.params import REPLICATE_FILL, REPLICATE_KONTEXT, ModelSpec, Value
from bot.providers import replicate
from bot.providers.base import Callback, Handle, InputImage, Output, ProviderJob, Status, Window
from bot.providers.http import Downloader, RetryPolicy
from bot.providers.replicate import LogProgress, ReplicateProvider, output_refs, parse_progress
from tests.fakes.replicate_server import FILL_DEV, KONTEXT_DEV, FakeReplicate, Fault, fill_dev_size

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
SOURCE_SIZE = (96, 64)
SOURCE_COLOR = (10, 200, 40)


def _png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


IMAGE = InputImage(_png(SOURCE_SIZE, SOURCE_COLOR), "image/png", SOURCE_SIZE)
MASK = InputImage(_png(SOURCE_SIZE, (255, 255, 255)), "image/png", SOURCE_SIZE)


def fill_job(**options: Value) -> ProviderJob:
    params = REPLICATE_FILL.resolve(options)
    return ProviderJob(REPLICATE_FILL, "a red balloon", params, IMAGE, MASK)


def edit_job(**options: Value) -> ProviderJob:
    return ProviderJob(REPLICATE_KONTEXT, "make it night", REPLICATE_KONTEXT.resolve(options), IMAGE)


def raw_job(spec: ModelSpec, params: Mapping[str, Value]) -> ProviderJob:
    """A job with unvalidated params, to reach the provider's own validation."""
    return ProviderJob(spec, "x", params, IMAGE, MASK if spec.operation == "fill" else None)


@pytest.fixture
async def downloader() -> AsyncIterator[Downloader]:
    dl = Downloader(max_bytes=20 * 1024 * 1024, allow_private=True, timeout=httpx.Timeout(2.0), retry=FAST)
    yield dl
    await dl.aclose()


class Rig:
    """A fake server plus a provider pointed at it."""

    def __init__(self, fake: FakeReplicate, provider: ReplicateProvider) -> None:
        self.fake = fake
        self.provider = provider

    async def run(self, job: ProviderJob, *, limit: float = 10.0) -> tuple[Handle, Status]:
        """Submit and poll to a terminal status (the fake's jobs are short)."""
        handle, status = await self.provider.submit(job)
        async with asyncio.timeout(limit):
            while not status.state.terminal:
                status = await self.provider.poll(handle)
        return handle, status

    async def direct_create(self, model: str, inputs: dict[str, Any]) -> Handle:
        """Create a prediction without `Prefer: wait` (test setup, not the code under test)."""
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{self.fake.base_url}/models/{model}/predictions",
                json={"input": inputs},
                headers={"Authorization": f"Bearer {self.fake.token}"},
            )
        assert response.status_code == 201, response.text
        return Handle("replicate", response.json()["id"])


async def _rig(downloader: Downloader, *, wait: int | None = None, read_s: float = 2.0, **fake_options: Any) -> Rig:
    """`wait=None`: the production default (no `Prefer` header); a number turns sync mode on."""
    fake = FakeReplicate(**fake_options)
    await fake.start()
    held = {} if wait is None else {"wait_seconds": wait}
    provider = ReplicateProvider(
        fake.provider_settings(), downloader, retry=FAST, timeout=httpx.Timeout(read_s), **held
    )
    return Rig(fake, provider)


@pytest.fixture
async def make(downloader: Downloader) -> AsyncIterator[Any]:
    rigs: list[Rig] = []

    async def factory(**options: Any) -> Rig:
        rig = await _rig(downloader, **options)
        rigs.append(rig)
        return rig

    yield factory
    for rig in rigs:
        await rig.provider.aclose()
        await rig.fake.close()


def _no_credentials_left_the_api(fake: FakeReplicate) -> None:
    for request in fake.cdn_requests + fake.foreign_requests:
        assert "authorization" not in request.headers, request


def _safe(message: str | None) -> None:
    assert message
    assert "://" not in message and "www." not in message and "r8_" not in message


# ---- happy paths --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/replicate/v1"], ids=["official", "aggregator"])
async def test_fill_dev_by_default_answers_at_once_then_polls(make: Any, prefix: str) -> None:
    """No `Prefer` header: the create comes back `starting` with the prediction id, then polls show the tqdm
    logs growing, then the outputs, downloaded from the CDN without the token."""
    rig = await make(prefix=prefix, duration=0.5, logs="percent", outcome="never")
    handle, status = await rig.provider.submit(fill_job(steps=20))
    assert status.state is State.STARTING and status.raw_status == "starting" and status.progress is None
    assert handle.job_id in rig.fake.predictions
    create = rig.fake.api_requests("create")[0]
    assert create.path == f"{prefix}/models/black-forest-labs/flux-fill-dev/predictions"
    assert "prefer" not in create.headers
    assert create.headers["authorization"] == f"Bearer {rig.fake.token}"
    assert "cancel-after" not in create.headers
    progress: list[float] = []
    async with asyncio.timeout(10):
        while len(set(progress)) < 3:  # this job never ends; its bar grows over half a second
            status = await rig.provider.poll(handle)
            assert status.state is State.RUNNING and status.raw_status == "processing"
            if status.progress is not None:
                progress.append(status.progress)
    assert progress == sorted(progress) and all(0 <= p <= 1 for p in progress)

    rig.fake.outcome = "succeeded"
    handle, status = await rig.run(fill_job(outputs=2, steps=20))
    assert status.state is State.SUCCEEDED and status.progress == 1.0
    assert len(status.outputs) == 2 and status.dropped == 0
    assert status.extra["seed"] == "1234"
    assert all(o.ref.startswith(rig.fake.cdn_url) for o in status.outputs)
    assert rig.fake.count("POST", "create") == 2
    data = await rig.provider.download(status.outputs[0])
    picture = Image.open(io.BytesIO(data))
    assert picture.size == fill_dev_size(*SOURCE_SIZE)
    assert picture.convert("RGB").getpixel((5, 5)) == tuple(255 - c for c in SOURCE_COLOR)
    assert len(rig.fake.cdn_requests) == 1
    _no_credentials_left_the_api(rig.fake)


async def test_held_create_answering_processing_with_inline_output_is_done(make: Any) -> None:
    """Sync mode as recorded: the held create says `processing` but its output is already there as data: URIs.
    Like replicate-python's `run()`, that is the finished job: no poll, no download from the CDN."""
    rig = await make(duration=0.1, wait=5)
    handle, status = await rig.provider.submit(fill_job(outputs=2, steps=20))
    assert rig.fake.api_requests("create")[0].headers["prefer"] == "wait=5"
    assert status.state is State.SUCCEEDED and status.raw_status == "processing" and status.progress == 1.0
    assert len(status.outputs) == 2 and status.dropped == 0
    assert all(o.ref.startswith("data:image/png;base64,") for o in status.outputs)
    data = await rig.provider.download(status.outputs[0])
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((5, 5)) == tuple(255 - c for c in SOURCE_COLOR)
    assert rig.fake.count("GET", "get") == 0 and rig.fake.cdn_requests == []
    assert handle.job_id in rig.fake.predictions


async def test_held_create_answering_succeeded_is_done_too(make: Any) -> None:
    rig = await make(duration=0.05, wait=5, sync_reply="succeeded")
    _, status = await rig.provider.submit(fill_job())
    assert status.state is State.SUCCEEDED and status.raw_status == "succeeded"
    assert status.outputs[0].ref.startswith(rig.fake.cdn_url)
    assert (await rig.provider.download(status.outputs[0])).startswith(b"\x89PNG")
    assert rig.fake.count("GET", "get") == 0 and len(rig.fake.cdn_requests) == 1


async def test_no_wait_keeps_the_normal_read_timeout(make: Any) -> None:
    """Without sync mode the create gets the client's own read timeout, not `wait + margin`."""
    rig = await make(duration=0.02, read_s=0.3)
    rig.fake.faults.create.append(Fault.slow(1.0))
    error = await _raises(rig.provider.submit(fill_job()))
    assert error.kind == "maybe_submitted"
    held = await make(duration=0.02, read_s=0.3, wait=1)
    held.fake.faults.create.append(Fault.slow(1.0))  # within the held create's 1 s + margin
    _, status = await held.provider.submit(fill_job())
    assert status.state is State.SUCCEEDED


async def test_kontext_single_url_output(make: Any) -> None:
    rig = await make(duration=0.05)
    handle, status = await rig.run(edit_job(aspect_ratio="1:1"))
    assert status.state is State.SUCCEEDED and len(status.outputs) == 1 and status.dropped == 0
    sent = rig.fake.predictions[handle.job_id].input
    assert sent["input_image"].startswith("data:image/png;base64,")
    assert "image" not in sent and "mask" not in sent and sent["go_fast"] is True
    assert rig.fake.api_requests("create")[0].path == "/v1/models/black-forest-labs/flux-kontext-dev/predictions"
    picture = Image.open(io.BytesIO(await rig.provider.download(status.outputs[0])))
    assert picture.size[0] == picture.size[1]


@pytest.mark.parametrize("shape", ["created_data", "url_dict", "string"])
@pytest.mark.parametrize("wait", [None, 5], ids=["polled", "held"])
async def test_other_output_shapes(make: Any, shape: str, wait: int | None) -> None:
    rig = await make(duration=0.05, output_shape=shape, wait=wait)
    _, status = await rig.run(edit_job())
    assert status.state is State.SUCCEEDED and len(status.outputs) == 1
    assert (await rig.provider.download(status.outputs[0])).startswith(b"\x89PNG")


async def test_bare_created_data_reply_from_aggregator(make: Any) -> None:
    rig = await make(duration=0.05, bare_created_data=True, prefix="/replicate/v1")
    handle, status = await rig.provider.submit(edit_job())
    assert status.state is State.SUCCEEDED and len(status.outputs) == 1
    assert handle.job_id.startswith("sync-")
    assert (await rig.provider.download(status.outputs[0])).startswith(b"\x89PNG")
    assert (await _raises(rig.provider.poll(handle))).kind == "expired"
    await rig.provider.cancel(handle)  # nothing to cancel, no request
    assert rig.fake.count("POST", "cancel") == 0


async def test_unfinished_201_then_polling(make: Any) -> None:
    rig = await make(duration=1.4, wait=1, read_s=0.3)  # the create's read timeout must outlast the 1 s hold
    handle, status = await rig.provider.submit(fill_job())
    assert status.state is State.STARTING  # the 1 s hold ran out first; Replicate then answers `starting`
    assert rig.fake.api_requests("create")[0].headers["prefer"] == "wait=1"
    seen = [status]
    while not status.state.terminal:
        status = await rig.provider.poll(handle)
        seen.append(status)
    assert status.state is State.SUCCEEDED and len(status.outputs) == 1
    assert rig.fake.count("GET", "get") >= 1
    assert all(r.path == f"/v1/predictions/{handle.job_id}" for r in rig.fake.api_requests("get"))
    progress = [s.progress for s in seen if s.state is State.RUNNING and s.progress is not None]
    assert progress and all(0 < p < 1 for p in progress) and progress == sorted(progress)


@pytest.mark.parametrize(
    ("asked", "expected"), [(None, None), (0, None), (-5, None), (1, "wait=1"), (60, "wait=60"), (600, "wait=60")]
)
async def test_prefer_wait_is_absent_or_1_to_60(make: Any, asked: int | None, expected: str | None) -> None:
    rig = await make(duration=0.0, wait=asked)
    _, status = await rig.provider.submit(edit_job())
    assert status.state is (State.STARTING if expected is None else State.SUCCEEDED)
    assert rig.fake.api_requests("create")[0].headers.get("prefer") == expected


@pytest.mark.parametrize("wait", [None, 5], ids=["polled", "held"])
async def test_nsfw_drops_are_counted(make: Any, wait: int | None) -> None:
    rig = await make(duration=0.05, nsfw_drops=1, wait=wait)
    _, status = await rig.run(fill_job(outputs=3))
    assert status.state is State.SUCCEEDED and len(status.outputs) == 2 and status.dropped == 1


async def test_every_output_dropped_is_reported_as_dropped(make: Any) -> None:
    rig = await make(duration=0.05, nsfw_drops=2)
    _, status = await rig.run(fill_job(outputs=2))
    assert status.state is State.SUCCEEDED and status.outputs == () and status.dropped == 2


# ---- webhooks -----------------------------------------------------------------------------------------------


async def test_a_signed_delivery_says_whether_it_ended_and_whether_it_tells_when(make: Any) -> None:
    """`timed`: the logs show tqdm's speed, so a reading now predicts the end (the hub lets the first one wake
    the job at once); an unsigned body is nothing."""
    rig = await make()
    signer = Webhook(rig.fake.webhook_secret)

    async def delivered(body: dict[str, Any], secret: Webhook = signer) -> Any:
        raw = json.dumps(body)
        now = datetime.now(tz=UTC)
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": secret.sign("msg_1", now, raw)}
        return await rig.provider.verify_webhook(Callback("t"), raw.encode(), headers)

    steps = {"num_inference_steps": 28}
    start = await delivered({"id": "p", "status": "starting", "logs": "", "input": steps})
    assert start is not None and (start.final, start.timed) == (False, False)
    counting = await delivered({"id": "p", "status": "processing", "input": steps,
                                "logs": "Using seed: 1\n0it [00:00, ?it/s]\n7it [00:01,  5.20it/s]\n"})
    assert counting is not None and (counting.final, counting.timed) == (False, True)
    unsized = await delivered({"id": "p", "status": "processing", "logs": "0it [00:00, ?it/s]\n", "input": steps})
    assert unsized is not None and not unsized.timed
    done = await delivered({"id": "p", "status": "succeeded", "logs": "28it [00:05,  5.20it/s]\n", "input": steps})
    assert done is not None and (done.final, done.timed) == (True, False)
    forged = Webhook("whsec_" + base64.b64encode(b"someone-else-signing-key-32bytes").decode())
    assert await delivered({"id": "p", "status": "succeeded"}, forged) is None


# ---- statuses -----------------------------------------------------------------------------------------------


async def test_starting_then_running_with_progress_then_succeeded(make: Any) -> None:
    rig = await make(duration=0.6, start_delay=0.2)
    handle = await rig.direct_create(
        FILL_DEV,
        {"prompt": "p", "image": f"data:image/png;base64,{_b64(IMAGE)}", "num_inference_steps": 10, "num_outputs": 2},
    )
    first = await rig.provider.poll(handle)
    assert first.state is State.STARTING and first.progress is None and first.raw_status == "starting"
    states = []
    timed = 0
    status = first
    ends = rig.fake.predictions[handle.job_id].created + 0.6  # the fake's own clock (time.monotonic)
    while not status.state.terminal:
        sent = time.monotonic()
        status = await rig.provider.poll(handle)
        received = time.monotonic()
        states.append(status.state)
        if status.state is State.RUNNING and status.ends_in is not None:
            timed += 1
            # 10 steps over the 0.4 s after the start delay: tqdm shows 25 it/s, so the steps left take 40 ms
            # each, the one under way partly done; the job really ends within that one-step window.
            assert status.progress is not None
            assert status.ends_in.latest == pytest.approx((1 - status.progress) * 0.4)
            assert status.ends_in.latest - status.ends_in.soonest == pytest.approx(0.04)
            assert sent + status.ends_in.soonest <= ends <= received + status.ends_in.latest
    assert State.RUNNING in states and status.state is State.SUCCEEDED and timed > 0
    # No submit in this process: the drop count and steps come from the echoed input.
    assert len(status.outputs) == 2 and status.dropped == 0
    assert "predict_time" in status.extra


@pytest.mark.parametrize(
    ("outcome", "state", "words"),
    [
        ("failed", State.FAILED, "The model failed: CUDA out of memory"),
        ("nsfw", State.MODERATED, "safety checker"),
        ("nsfw_kontext", State.MODERATED, "safety checker"),
        ("e005", State.MODERATED, "safety checker"),
        ("canceled", State.CANCELED, "canceled"),
        ("aborted", State.TIMED_OUT, "gave up before starting"),
        ("data_removed", State.EXPIRED, "deleted"),
        ("null_output", State.EXPIRED, "deleted"),
    ],
)
async def test_terminal_statuses(make: Any, outcome: str, state: State, words: str) -> None:
    rig = await make(duration=0.02, outcome=outcome)
    _, status = await rig.run(fill_job())
    assert status.state is state
    assert status.message is not None and words in status.message
    _safe(status.message)
    assert status.outputs == ()
    assert rig.fake.count("POST", "create") == 1


async def test_failed_error_keeps_full_text_in_detail_only(make: Any) -> None:
    rig = await make(duration=0.02, outcome="failed")
    _, status = await rig.run(fill_job())
    assert "https://pytorch.org" in status.detail
    assert status.message is not None and "pytorch.org" not in status.message and len(status.message) <= 230


async def test_unknown_status_is_running_until_done(make: Any) -> None:
    rig = await make(duration=0.3, outcome="unknown")
    inputs = {"prompt": "p", "input_image": f"data:image/png;base64,{_b64(IMAGE)}"}
    handle = await rig.direct_create(KONTEXT_DEV, inputs)
    status = await rig.provider.poll(handle)
    assert status.state is State.RUNNING and status.raw_status == "warming_up"
    while not status.state.terminal:
        status = await rig.provider.poll(handle)
    assert status.state is State.SUCCEEDED


async def test_never_finishing_job_can_be_canceled(make: Any) -> None:
    rig = await make(duration=0.05, outcome="never", logs="percent")
    handle = await rig.direct_create(
        FILL_DEV, {"prompt": "p", "image": f"data:image/png;base64,{_b64(IMAGE)}", "num_inference_steps": 4}
    )
    await asyncio.sleep(0.1)  # past `duration`: the bar is full, yet the job stays "processing"
    for _ in range(3):
        status = await rig.provider.poll(handle)
        assert status.state is State.RUNNING
    assert status.progress == 1.0  # the percentage bar reached 100% but the job never ends
    await rig.provider.cancel(handle)
    cancel = rig.fake.api_requests("cancel")[0]
    assert cancel.method == "POST" and cancel.path == f"/v1/predictions/{handle.job_id}/cancel"
    assert cancel.headers["authorization"] == f"Bearer {rig.fake.token}"
    assert (await rig.provider.poll(handle)).state is State.CANCELED


async def test_cancel_errors_are_logged_not_raised(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig = await make()
    await rig.provider.cancel(Handle("replicate", "doesnotexist"))
    rig.fake.faults.cancel.extend([Fault.reset()] * FAST.attempts)
    await rig.provider.cancel(Handle("replicate", "whatever"))
    assert rig.fake.count("POST", "cancel") == 1 + FAST.attempts
    assert "cancel of doesnotexist failed" in caplog.text


async def test_poll_unknown_id_is_expired(make: Any) -> None:
    rig = await make()
    status = await rig.provider.poll(Handle("replicate", "nope"))
    assert status.state is State.EXPIRED and status.message is not None and "no longer knows" in status.message
    assert rig.fake.count("GET", "get") == 1


async def test_ids_are_quoted_in_paths(make: Any) -> None:
    rig = await make()
    assert (await rig.provider.poll(Handle("replicate", "../../models/x?y=1"))).state is State.EXPIRED
    (seen,) = rig.fake.api_requests("get")
    assert seen.raw_path == "/v1/predictions/..%2F..%2Fmodels%2Fx%3Fy%3D1"  # one opaque segment


async def test_handle_survives_a_restart(make: Any, downloader: Downloader) -> None:
    rig = await make(duration=0.3, nsfw_drops=1)
    handle, status = await rig.run(fill_job(outputs=3))
    assert status.state is State.SUCCEEDED and status.dropped == 1
    fresh = ReplicateProvider(rig.fake.provider_settings(), downloader, retry=FAST)
    try:
        again = await fresh.poll(Handle.from_json(handle.to_json()))
    finally:
        await fresh.aclose()
    assert again.state is State.SUCCEEDED and len(again.outputs) == 2 and again.dropped == 1


# ---- credentials --------------------------------------------------------------------------------------------


async def test_no_credentials_reach_foreign_urls_or_the_cdn(make: Any) -> None:
    # Every prediction's urls.get / urls.cancel point at another host, as an aggregator's do (api.replicate.com).
    rig = await make(duration=0.3, foreign_urls=True, prefix="/replicate/v1", honour_wait=False, wait=5)
    handle, status = await rig.provider.submit(fill_job())
    assert status.state is State.STARTING  # this aggregator ignores `Prefer: wait`
    assert rig.fake.api_requests("create")[0].headers["prefer"] == "wait=5"
    while not status.state.terminal:
        status = await rig.provider.poll(handle)
    assert status.state is State.SUCCEEDED
    await rig.provider.download(status.outputs[0])
    rig.fake.outcome = "never"
    handle, _ = await rig.provider.submit(fill_job())
    await rig.provider.cancel(handle)
    assert (await rig.provider.poll(handle)).state is State.CANCELED

    assert rig.fake.foreign_requests == []
    assert len(rig.fake.cdn_requests) == 1
    _no_credentials_left_the_api(rig.fake)
    api = {r.path for r in rig.fake.requests if "authorization" in r.headers}
    assert all(path.startswith("/replicate/v1/") for path in api)
    assert rig.fake.count("POST", "cancel") == 1 and rig.fake.count("GET", "get") >= 2


async def test_cdn_on_the_same_host_still_gets_no_credentials(make: Any) -> None:
    rig = await make(duration=0.02, separate_cdn=False)
    _, status = await rig.run(fill_job())
    await rig.provider.download(status.outputs[0])
    files = rig.fake.cdn_requests
    assert len(files) == 1 and "authorization" not in files[0].headers


async def test_wrong_token_is_auth_error_without_urls(make: Any, downloader: Downloader) -> None:
    rig = await make()
    provider = ReplicateProvider(rig.fake.provider_settings(token="r8_wrong"), downloader, retry=FAST)
    try:
        error = await _raises(provider.submit(fill_job()))
    finally:
        await provider.aclose()
    assert error.kind == "auth" and "operator" in error.message
    _safe(error.message)


async def test_billing_error_has_no_billing_url(make: Any) -> None:
    rig = await make(billing_exhausted=True)
    error = await _raises(rig.provider.submit(fill_job()))
    assert error.kind == "billing" and "credit" in error.message
    _safe(error.message)


async def test_missing_token_is_a_config_error(downloader: Downloader) -> None:
    settings = ProviderSettings("replicate", "https://api.replicate.com/v1", None, 1)
    with pytest.raises(ConfigError):
        ReplicateProvider(settings, downloader)


async def test_labels_name_the_service(downloader: Downloader) -> None:
    official = ReplicateProvider(
        ProviderSettings("replicate", "https://api.replicate.com/v1", Secret("r8_x"), 1), downloader
    )
    proxy = ReplicateProvider(
        ProviderSettings("replicate", "https://www.kkiai.com/replicate/v1", Secret("k"), 1), downloader
    )
    assert official.label == "Replicate" and proxy.label == "The Replicate-compatible service"
    await official.aclose()
    await proxy.aclose()


# ---- validation errors --------------------------------------------------------------------------------------


async def test_invalid_fields_become_a_readable_message(make: Any) -> None:
    rig = await make()
    error = await _raises(rig.provider.submit(raw_job(REPLICATE_FILL, {"steps": 51, "guidance": 30.0})))
    assert error.kind == "invalid_input"
    assert "num_inference_steps: Must be less than or equal to 50" in error.message
    assert "invalid_fields" not in error.message and "{" not in error.message
    assert rig.fake.predictions == {}


async def test_kontext_step_floor_is_checked_by_the_server(make: Any) -> None:
    rig = await make()
    error = await _raises(rig.provider.submit(raw_job(REPLICATE_KONTEXT, {"steps": 2})))
    assert "num_inference_steps: Must be greater than or equal to 4" in error.message


async def test_oversized_body_gets_a_helpful_message(make: Any) -> None:
    rig = await make()
    rig.fake.faults.create.append(Fault.error(400, detail="Failed to parse request body as JSON: EOF"))
    error = await _raises(rig.provider.submit(fill_job()))
    assert error.kind == "invalid_input" and "too large" in error.message


async def test_fill_without_mask_is_refused_before_sending(make: Any) -> None:
    rig = await make()
    job = ProviderJob(REPLICATE_FILL, "x", REPLICATE_FILL.resolve({}), IMAGE, None)
    with pytest.raises(ProviderError) as info:  # a bug on our side, typed and truthful: nothing was sent
        await rig.provider.submit(job)
    assert info.value.kind == "failed" and "nothing was charged" in info.value.message
    assert isinstance(info.value.__cause__, ValueError)
    assert rig.fake.requests == []


# ---- faults -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault.error(500), Fault.reset(), Fault.html(502), Fault.truncated(201), Fault.cut()],
    ids=["500", "reset", "html502", "truncated", "cut"],
)
async def test_create_fault_after_creation_is_maybe_submitted(make: Any, fault: Fault) -> None:
    rig = await make(duration=0.02)
    rig.fake.faults.create.append(fault)
    error = await _raises(rig.provider.submit(fill_job()))
    assert error.kind == "maybe_submitted" and "may have been submitted" in error.message
    assert rig.fake.count("POST", "create") == 1  # never retried ...
    assert len(rig.fake.predictions) == 1  # ... because the job really exists


async def test_held_create_timeout_is_maybe_submitted(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replicate, "_READ_MARGIN", 0.2)  # read timeout = wait (1 s) + 0.2 s, to keep this fast
    rig = await make(duration=0.02, wait=1)
    rig.fake.faults.create.append(Fault.slow(2.0))
    error = await _raises(rig.provider.submit(fill_job()))
    assert error.kind == "maybe_submitted"
    assert rig.fake.count("POST", "create") == 1


async def test_create_429_is_retried_then_succeeds(make: Any) -> None:
    rig = await make(duration=0.02)
    rig.fake.faults.create.extend([Fault.rate_limited(resets_in=0.01), Fault.rate_limited(retry_after="0")])
    handle, status = await rig.provider.submit(fill_job())
    assert status.state is State.STARTING and list(rig.fake.predictions) == [handle.job_id]
    assert rig.fake.count("POST", "create") == 3


async def test_create_429_exhausted_is_rate_limited(make: Any) -> None:
    rig = await make()
    rig.fake.faults.create.extend([Fault.rate_limited(resets_in=0.01)] * FAST.attempts)
    error = await _raises(rig.provider.submit(fill_job()))
    assert error.kind == "rate_limited" and error.retry_after == 0.01
    assert rig.fake.count("POST", "create") == FAST.attempts and rig.fake.predictions == {}


async def test_create_429_with_a_long_reset_says_when_to_retry(make: Any) -> None:
    rig = await make()
    rig.fake.faults.create.append(Fault.rate_limited(resets_in=30))
    error = await _raises(rig.provider.submit(fill_job()))
    assert error.kind == "rate_limited" and error.retry_after == 30
    assert error.message == f"{rig.provider.label} is rate-limiting the bot; try again in about 30 s."
    assert rig.fake.count("POST", "create") == 1 and rig.fake.predictions == {}


async def test_create_persistent_status(make: Any) -> None:
    rig = await make()
    rig.fake.faults.create_status = 503
    assert (await _raises(rig.provider.submit(fill_job()))).kind == "maybe_submitted"
    rig.fake.faults.create_status = 404
    assert (await _raises(rig.provider.submit(fill_job()))).kind == "not_found"


@pytest.mark.parametrize(
    "faults",
    [
        [Fault.error(500), Fault.error(500)],
        [Fault.html(502)],
        [Fault.error(503), Fault.error(504)],
        [Fault.reset()],
        [Fault.cut()],
        [Fault.slow(1.0)],
        [Fault.rate_limited(retry_after="0")],
        [Fault.rate_limited(resets_in=0.01)],
    ],
    ids=["500x2", "html502", "503-504", "reset", "cut", "slow", "429-retry-after", "429-resets-in"],
)
async def test_poll_retries_transient_faults(make: Any, faults: list[Fault]) -> None:
    rig = await make(duration=0.0, read_s=0.3)
    handle, _ = await rig.provider.submit(fill_job())
    rig.fake.faults.get.extend(faults)
    status = await rig.provider.poll(handle)
    assert status.state is State.SUCCEEDED
    assert rig.fake.count("GET", "get") == len(faults) + 1


async def test_poll_gives_up_after_attempts(make: Any) -> None:
    rig = await make(duration=0.0)
    handle, _ = await rig.provider.submit(fill_job())
    rig.fake.faults.get_status = 500
    assert (await _raises(rig.provider.poll(handle))).kind == "unavailable"
    assert rig.fake.count("GET", "get") == FAST.attempts


async def test_poll_truncated_json_is_bad_response(make: Any) -> None:
    rig = await make(duration=0.0)
    handle, _ = await rig.provider.submit(fill_job())
    rig.fake.faults.get.append(Fault.truncated())
    error = await _raises(rig.provider.poll(handle))
    assert error.kind == "bad_response" and "not valid JSON" in error.message
    assert (await rig.provider.poll(handle)).state is State.SUCCEEDED  # the next look works


async def test_expired_output_file(make: Any) -> None:
    rig = await make(duration=0.02)
    _, status = await rig.run(fill_job())
    rig.fake.faults.missing_files = True
    error = await _raises(rig.provider.download(status.outputs[0]))
    assert error.kind == "expired" and "no longer available" in error.message


async def test_download_retries_cdn_faults_and_respects_size_cap(make: Any) -> None:
    rig = await make(duration=0.02)
    _, status = await rig.run(fill_job())
    rig.fake.faults.files.extend([Fault.error(503), Fault.reset()])
    assert (await rig.provider.download(status.outputs[0])).startswith(b"\x89PNG")
    assert len(rig.fake.cdn_requests) == 3
    small = Downloader(max_bytes=100, allow_private=True, retry=FAST)
    provider = ReplicateProvider(rig.fake.provider_settings(), small, retry=FAST)
    try:
        error = await _raises(provider.download(status.outputs[0]))
    finally:
        await provider.aclose()
        await small.aclose()
    assert error.kind == "bad_response" and "larger than" in error.message


async def test_fake_answers_in_the_recorded_shapes(make: Any) -> None:
    """The fake's replies have the shapes replicate-python's cassettes recorded (docs/provider-fakes.md)."""
    rig = await make(duration=0.3, logs="percent", outcome="never")
    inputs = {"prompt": "p", "image": f"data:image/png;base64,{_b64(IMAGE)}", "num_inference_steps": 10}
    url = f"{rig.fake.base_url}/models/{FILL_DEV}/predictions"
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {rig.fake.token}"}) as client:
        created = await client.post(url, json={"input": inputs})
        body = created.json()
        assert created.status_code == 201  # run.yaml: a create without `Prefer` answers at once, `starting`
        assert set(body) == {"id", "model", "version", "input", "logs", "error", "status", "created_at", "urls"}
        assert body["status"] == "starting" and body["logs"] == ""
        async with asyncio.timeout(10):
            while True:  # run.yaml: the logs then grow one tqdm line per update while `processing`
                view = (await client.get(f"{rig.fake.base_url}/predictions/{body['id']}")).json()
                if view["logs"].count("\n") >= 4:
                    break
        assert view["status"] == "processing" and "output" not in view
        first, *bars = view["logs"].splitlines()
        assert first == "Using seed: 1234" and bars[0] == "  0%|          | 0/10 [00:00<?, ?it/s]"
        assert all(re.match(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+) \[", line) for line in bars)
        rig.fake.outcome = "succeeded"
        held = await client.post(url, json={"input": inputs}, headers={"Prefer": "wait=5"})
        body = held.json()  # test_predictions_create_blocking[True-10].yaml
        assert held.status_code == 201 and held.headers["Preference-Applied"] == "wait=5"
        assert body["status"] == "processing" and body["logs"] == "" and "metrics" not in body
        assert body["output"][0].startswith("data:image/png;base64,")


# ---- pure parsing -------------------------------------------------------------------------------------------


def progress_of(logs: str | None, steps: int | None = None) -> LogProgress:
    progress = parse_progress(logs, steps)
    assert progress is not None
    return progress


def fraction(logs: str | None, steps: int | None = None) -> float:
    return progress_of(logs, steps).fraction


def test_progress_from_tqdm_percentage_bars() -> None:
    logs = "Using seed: 1\n  0%|          | 0/28 [00:00<?, ?it/s]\r 50%|█████     | 14/28 [00:02<00:02, 5.2it/s]"
    assert fraction(logs) == 0.5
    assert fraction(logs + "\r100%|██████████| 28/28 [00:05<00:00, 5.2it/s]\nsaving\n") == 1.0


def test_progress_from_fill_dev_iteration_counter() -> None:
    logs = "Using seed: 42\r\n0it [00:00, ?it/s]\r7it [00:01, 5.2it/s]\r14it [00:02, 5.2it/s]"
    assert fraction(logs, 28) == 0.5
    assert parse_progress(logs, None) is None
    assert fraction("28it [00:05, 5.2it/s]\nTotal safe images: 1 out of 1\n", 28) == 0.99


def test_progress_from_recorded_logs() -> None:
    """Logs as replicate-python's run.yaml cassette recorded them (stability-ai/sdxl): one tqdm line per update."""
    logs = (
        "Using seed: 42069\nPrompt: a studio photo of a rainbow colored corgi\ntxt2img mode\n"
        "  0%|          | 0/50 [00:00<?, ?it/s]\n"
        "  2%|\u258f         | 1/50 [00:00<00:31,  1.57it/s]\n"
        " 18%|\u2588\u258a        | 9/50 [00:01<00:03, 11.76it/s]\n"
    )
    assert fraction(logs) == 0.18
    assert parse_progress("Using seed: 42069\nPrompt: x\ntxt2img mode\n") is None
    length_less = "Using seed: 24280\nGlobal seed set to 24280\n\n0it [00:00, ?it/s]\n2it [00:00, 12.18it/s]\n"
    assert fraction(length_less, 50) == 0.04  # cjwbw/waifu-diffusion's recorded example


def test_progress_absent() -> None:
    assert parse_progress(None, 28) is None
    assert parse_progress("", 28) is None
    assert parse_progress("Running prediction...\nGenerating image...\nGenerated image in 3.1sec", 28) is None


def test_sampling_end_window_from_tqdm_speed() -> None:
    """tqdm's speed gives when sampling ends, free of the reading's rounding to whole steps: within one step, since
    the step under way is partly done."""
    recorded = "  0%|          | 0/50 [00:00<?, ?it/s]\n 18%|\u2588\u258a        | 9/50 [00:01<00:03, 11.76it/s]\n"
    assert progress_of(recorded).ends_in == Window(pytest.approx(40 / 11.76), pytest.approx(41 / 11.76))
    assert progress_of("Using seed: 1\n0it [00:00, ?it/s]\n14it [00:02,  5.20it/s]\n", 28).ends_in == Window(
        pytest.approx(13 / 5.2), pytest.approx(14 / 5.2))
    slow = " 10%|\u2588         | 3/30 [00:04<00:41,  1.52s/it]"
    assert progress_of(slow).ends_in == Window(pytest.approx(26 * 1.52), pytest.approx(27 * 1.52))
    assert progress_of("0it [00:00, ?it/s]\n", 28).ends_in is None  # no speed yet
    assert progress_of("28it [00:05,  5.20it/s]\n", 28).ends_in is None  # sampling done: decoding is not timed
    assert progress_of("100%|\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588| 28/28 [00:05<00:00, "
                       "5.20it/s]").ends_in is None


def test_output_shapes() -> None:
    assert output_refs(["https://a/1.png", "https://a/2.png"]) == ["https://a/1.png", "https://a/2.png"]
    assert output_refs("https://a/1.png") == ["https://a/1.png"]
    assert output_refs({"created": 1, "data": [{"url": "u1"}, {"url": "u2"}]}) == ["u1", "u2"]
    assert output_refs({"url": "u"}) == ["u"]
    assert output_refs({"data": [{"b64_json": "QUJD"}]}) == ["QUJD"]
    assert output_refs(None) == [] and output_refs([]) == [] and output_refs({"weird": 1}) == []


async def test_download_uses_the_downloader_for_inline_outputs(downloader: Downloader) -> None:
    provider = ReplicateProvider(
        ProviderSettings("replicate", "https://api.replicate.com/v1", Secret("r8_x"), 1), downloader
    )
    try:
        assert await provider.download(Output("data:image/png;base64,QUJD")) == b"ABC"
    finally:
        await provider.aclose()


# ---- helpers ------------------------------------------------------------------------------------------------


def _b64(image: InputImage) -> str:
    return base64.b64encode(image.data).decode()


async def _raises(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await awaitable
    return info.value


async def test_shared_fixture_serves_a_working_fake(fake_replicate: FakeReplicate, downloader: Downloader) -> None:
    provider = ReplicateProvider(fake_replicate.provider_settings(), downloader, wait_seconds=2, retry=FAST)
    try:
        _, status = await provider.submit(fill_job())
    finally:
        await provider.aclose()
    assert status.state is State.SUCCEEDED and fake_replicate.base_url.endswith("/v1")
