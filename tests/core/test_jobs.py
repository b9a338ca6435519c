"""The job engine against a real provider client and a fake Replicate server: queueing with positions,
polling, cancellation, deadlines, transient poll faults, and the order of published updates."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from bot.jobs import JobEngine, JobUpdate
from bot.lifecycle.states import State
from bot.params import FillRequest
from bot.providers.base import InputImage, ProviderJob
from bot.providers.http import Downloader, RetryPolicy
from bot.providers.replicate import ReplicateProvider
from tests.fakes.replicate_server import FakeReplicate, Fault


def _png(size: tuple[int, int], colour: int | tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB" if isinstance(colour, tuple) else "L", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _job() -> ProviderJob:
    request = FillRequest.build("replicate", "a red vase", {"steps": 4})
    image = InputImage(_png((256, 256), (10, 120, 200)), "image/png", (256, 256))
    mask = InputImage(_png((256, 256), 255), "image/png", (256, 256))
    return ProviderJob(request.spec, request.prompt, request.params, image, mask)


class Recorder:
    def __init__(self) -> None:
        self.updates: list[JobUpdate] = []

    async def __call__(self, update: JobUpdate) -> None:
        self.updates.append(update)

    def states(self) -> list[State]:
        return [u.state for u in self.updates]


@pytest.fixture
async def engine_and_fake():
    async with FakeReplicate(duration=0.3, honour_wait=False) as fake:
        downloader = Downloader(max_bytes=10_000_000)
        provider = ReplicateProvider(
            fake.provider_settings(), downloader, retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
        )
        engine = JobEngine({"replicate": provider}, concurrency={"replicate": 1}, poll_interval=0.02, deadline=5)
        yield engine, fake
        await provider.aclose()
        await downloader.aclose()


async def test_job_runs_to_success_with_ordered_updates(engine_and_fake) -> None:
    engine, fake = engine_and_fake
    recorder = Recorder()
    outcome = await engine.run("job1", "replicate", recorder, job=_job())
    assert outcome.state is State.SUCCEEDED
    assert len(outcome.files) == 1 and outcome.files[0].data.startswith(b"\x89PNG")
    states = recorder.states()
    assert states[0] in (State.STARTING, State.RUNNING)
    assert State.RUNNING in states
    assert outcome.handle is not None and outcome.handle.provider == "replicate"
    assert fake.count("POST", "create") == 1


async def test_second_job_queues_with_position_then_runs(engine_and_fake) -> None:
    engine, _fake = engine_and_fake
    first, second = Recorder(), Recorder()
    a = asyncio.create_task(engine.run("a", "replicate", first, job=_job()))
    await asyncio.sleep(0.05)
    b = asyncio.create_task(engine.run("b", "replicate", second, job=_job()))
    results = await asyncio.gather(a, b)
    assert [r.state for r in results] == [State.SUCCEEDED, State.SUCCEEDED]
    assert second.updates[0].state is State.QUEUED and second.updates[0].position == 1
    assert State.QUEUED not in first.states()


async def test_cancel_while_queued_sends_nothing(engine_and_fake) -> None:
    engine, fake = engine_and_fake
    a = asyncio.create_task(engine.run("a", "replicate", Recorder(), job=_job()))
    await asyncio.sleep(0.05)
    b = asyncio.create_task(engine.run("b", "replicate", Recorder(), job=_job()))
    await asyncio.sleep(0.02)
    assert engine.cancel("b")
    outcome_b = await b
    assert outcome_b.state is State.CANCELED and "nothing was sent" in (outcome_b.message or "")
    await a
    assert fake.count("POST", "create") == 1


async def test_cancel_while_running_cancels_at_provider(engine_and_fake) -> None:
    engine, fake = engine_and_fake
    fake.duration = 5
    task = asyncio.create_task(engine.run("a", "replicate", Recorder(), job=_job()))
    await asyncio.sleep(0.2)
    engine.cancel("a")
    outcome = await task
    assert outcome.state is State.CANCELED
    assert fake.count("POST", "cancel") == 1


async def test_deadline_stops_a_never_finishing_job_and_cancels_it(engine_and_fake) -> None:
    engine, fake = engine_and_fake
    fake.outcome = "never"
    engine.deadline = 0.5
    outcome = await engine.run("a", "replicate", Recorder(), job=_job())
    assert outcome.state is State.TIMED_OUT and "did not finish" in (outcome.message or "")
    assert fake.count("POST", "cancel") == 1


async def test_transient_poll_faults_are_waited_out(engine_and_fake) -> None:
    engine, fake = engine_and_fake
    fake.faults.get.extend([Fault.error(500)] * 4 + [Fault.html(502)] * 2)
    outcome = await engine.run("a", "replicate", Recorder(), job=_job())
    assert outcome.state is State.SUCCEEDED


async def test_before_submit_runs_before_the_create_request(engine_and_fake) -> None:
    engine, fake = engine_and_fake
    seen: list[int] = []

    async def before() -> None:
        seen.append(fake.count("POST", "create"))

    await engine.run("a", "replicate", Recorder(), job=_job(), before_submit=before)
    assert seen == [0]


async def test_resume_polls_an_existing_handle_without_submitting(engine_and_fake) -> None:
    engine, fake = engine_and_fake
    fake.duration = 0.5
    first = await engine.run("a", "replicate", Recorder(), job=_job())
    assert first.handle is not None
    resumed = await engine.run("a2", "replicate", Recorder(), handle=first.handle)
    assert resumed.state is State.SUCCEEDED
    assert fake.count("POST", "create") == 1


async def test_failed_update_handler_does_not_break_the_job(engine_and_fake) -> None:
    engine, _ = engine_and_fake

    async def broken(update: JobUpdate) -> None:
        raise RuntimeError("front end down")

    outcome = await engine.run("a", "replicate", broken, job=_job())
    assert outcome.state is State.SUCCEEDED
