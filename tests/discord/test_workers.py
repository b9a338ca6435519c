"""Job workers: the bot process admits and queues, `fillbot worker` processes claim and run the jobs.

Here the front bot and two workers share one event loop and one database file (the multi-process test with
PostgreSQL, shards and a killed worker is `test_scale_out.py`): every job is delivered once by a worker, each
provider account's limit holds across the workers, and a cancel pressed before any worker claimed the job
stops it without sending it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from PIL import Image

from bot.app import FillBot, create_bot
from bot.lifecycle.jobs import Mode
from tests.discord.conftest import both_backends, final_reply, job_id_of, mask_for, photo, running, settings_for
from tests.discord.test_crash import (
    assert_delivered_once,
    child_bot,
    creates_per_prompt,
    fill,
    job_env,
    slots_free,
)
from tests.fakes.discord_harness import MEMBER, MEMBER_PERMISSIONS, DiscordHarness, FakeUser
from tests.fakes.replicate_server import FakeReplicate


def peak_at_provider(fake: FakeReplicate) -> int:
    """The most predictions the provider was running at one moment (from creation to their end)."""
    edges: list[tuple[float, int]] = []
    for p in fake.predictions.values():
        end = p.created + p.start_delay + p.duration if p.canceled_at is None else p.canceled_at
        edges += [(p.created, 1), (end, -1)]
    peak = level = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    return peak


@contextlib.asynccontextmanager
async def workers(h: DiscordHarness, env: dict[str, str], tmp_path: Path, count: int) -> AsyncIterator[list[FillBot]]:
    bots = [create_bot(settings_for(tmp_path, **env), edit_interval=0.05, mode=Mode.WORKER) for _ in range(count)]
    try:
        for bot in bots:
            await bot.login(h.token)  # REST only, as `fillbot worker` runs: no gateway
        yield bots
    finally:
        for bot in bots:
            await bot.close()


@both_backends
async def test_workers_run_every_job_once_within_the_provider_limit(
    tmp_path: Path, bot_database: dict[str, str]
) -> None:
    async with FakeReplicate(duration=0.3, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, EXTERNAL_WORKERS="true", REPLICATE_MAX_CONCURRENCY="2", **bot_database)
        front = create_bot(settings_for(tmp_path, **env), edit_interval=0.05)
        assert front.mode is Mode.FRONT
        async with running(front) as h, workers(h, env, tmp_path, 2) as (one, two):
            users = [h.add_user(FakeUser(7000 + n, f"user{n}", MEMBER_PERMISSIONS.value)) for n in range(4)]
            sent = [await h.dispatch(fill(h, f"worker job {n}", users[n % 4])) for n in range(8)]
            messages = [await final_reply(h, s, within=60) for s in sent]
            for message in messages:
                assert_delivered_once(h, message)
            assert creates_per_prompt(fake) == {f"worker job {n}": 1 for n in range(8)}
            assert peak_at_provider(fake) == 2  # the account's limit, shared by both workers, and reached
            owners = {(await front.storage.get_job(job_id_of(m))).owner for m in messages}  # type: ignore[union-attr]
            assert owners <= {one.lifecycle.owner, two.lifecycle.owner}  # the front bot ran none of them
            assert front.lifecycle.runner.live == {}
            for user in users:
                await slots_free(h, user.id)
            assert not h.errors


async def test_cancel_before_a_worker_claims_the_job_sends_nothing(tmp_path: Path) -> None:
    async with FakeReplicate(duration=0.3, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, EXTERNAL_WORKERS="true")
        async with running(create_bot(settings_for(tmp_path, **env), edit_interval=0.05)) as h:
            sent = await h.dispatch(fill(h, "canceled while queued"))
            await h.wait_for(lambda: (m := h.original(sent)) is not None and bool(m.custom_ids()), timeout=15,
                             message="the queued reply with its buttons")
            message = h.original(sent)
            assert message is not None
            await h.dispatch(h.component(f"fill:cancel:{job_id_of(message)}", message.id))
            async with workers(h, env, tmp_path, 1):
                final = await final_reply(h, sent)
            assert final.embeds[0]["title"].startswith("⏹"), final.text
            assert "nothing was charged" in final.text
            assert fake.count("POST", "create") == 0
            assert not h.errors


async def test_jobs_waiting_for_a_worker_count_toward_the_member_limits(tmp_path: Path) -> None:
    async with FakeReplicate(duration=0.3, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, EXTERNAL_WORKERS="true", MAX_QUEUED_PER_MEMBER="0")
        async with running(create_bot(settings_for(tmp_path, **env), edit_interval=0.05)) as h:
            for n in range(2):  # no worker runs yet: both wait in the database
                sent = await h.dispatch(fill(h, f"waiting {n}"))
                await h.wait_for(lambda s=sent: (m := h.original(s)) is not None and bool(m.custom_ids()),
                                 timeout=15, message="the queued reply")
            third = await h.dispatch(fill(h, "one too many"))
            text = await h.wait_for(lambda: h.ephemeral_text(third), timeout=10, message="the refusal")
            assert "You already have 2 jobs running" in text, text  # the server's default: 2 at a time
            assert fake.count("POST", "create") == 0


async def test_a_worker_stopped_with_sigterm_hands_its_jobs_over_at_once(tmp_path: Path) -> None:
    async with FakeReplicate(duration=1.0, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, EXTERNAL_WORKERS="true", JOB_LEASE_SECONDS="600")  # only a handover helps
        async with running(create_bot(settings_for(tmp_path, **env), edit_interval=0.05)) as h:
            async with child_bot(h, env, [], tmp_path, name="worker", mode="worker") as worker:
                sent = await h.dispatch(fill(h, "handed over"))
                await h.wait_for(lambda: fake.count("GET", "get") >= 1, timeout=30, message="the worker polls")
                worker.proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    assert await worker.proc.wait() == 0, worker.log.read_text()
            async with workers(h, env, tmp_path, 1):
                message = await final_reply(h, sent, within=30)
            assert_delivered_once(h, message)
            assert fake.count("POST", "create") == 1  # carried on by polling, not sent again
            assert not h.errors


async def test_a_job_handed_back_after_its_claim_failed_runs_later(tmp_path: Path) -> None:
    """A worker that claimed a job but could not build its front end (here the database was briefly locked) hands
    it back: it must stop renewing that job's lease, or the job would stay held, and keep its provider slot,
    for as long as the worker lives, with nobody running it."""
    async with FakeReplicate(duration=0.2, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, EXTERNAL_WORKERS="true")
        async with running(create_bot(settings_for(tmp_path, **env), edit_interval=0.05)) as h, \
                workers(h, env, tmp_path, 1) as (worker,):
            failed: list[int] = []
            spoiler_flagged = worker.spoiler_flagged  # read by the worker's sink_for, right after the claim

            async def locked_once(guild_id: int | None, channel_nsfw: bool) -> bool:
                if not failed:
                    failed.append(1)
                    raise sqlite3.OperationalError("database is locked")
                return await spoiler_flagged(guild_id, channel_nsfw)

            worker.spoiler_flagged = locked_once  # type: ignore[method-assign]
            sent = await h.dispatch(fill(h, "handed back once"))
            message = await final_reply(h, sent, within=15)
            assert failed == [1]
            assert_delivered_once(h, message)
            assert creates_per_prompt(fake) == {"handed back once": 1}
            await slots_free(h, MEMBER.id)
            assert worker.lifecycle.store.held == set()


async def test_a_lease_renewal_during_a_hand_off_reports_no_takeover(tmp_path: Path) -> None:
    """The front bot's keeper renews the leases of the jobs it holds while it hands others to the workers. A round
    that read the held jobs just before a hand-off committed must not report that job as taken over by another
    process: the front would log a takeover that never happened (seen once in 300 jobs by bench_workers)."""
    async with FakeReplicate(duration=0.2, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, EXTERNAL_WORKERS="true")
        front = create_bot(settings_for(tmp_path, **env), edit_interval=0.05)
        async with running(front) as h:
            store = front.lifecycle.store
            hand_off = store.queue
            reported: list[set[str]] = []

            async def queue_during_a_renewal(*args: Any, **kwargs: Any) -> None:
                async with store.storage._lock:  # the database is busy: both wait for it, the hand-off first
                    queued = asyncio.create_task(hand_off(*args, **kwargs))
                    await asyncio.sleep(0)
                    renewal = asyncio.create_task(store.renew())  # the keeper's round, its held jobs read now
                    await asyncio.sleep(0)
                await queued
                reported.append(await renewal)

            store.queue = queue_during_a_renewal  # type: ignore[method-assign]
            await h.dispatch(fill(h, "handed to the workers"))
            await h.wait_for(lambda: bool(reported), timeout=15, message="the hand-off")
            assert reported == [set()]


async def test_a_worker_sends_the_pictures_prepared_at_admission_without_preparing_them_again(tmp_path: Path) -> None:
    async with FakeReplicate(duration=0.2, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, EXTERNAL_WORKERS="true")
        front = create_bot(settings_for(tmp_path, **env), edit_interval=0.05)
        async with running(front) as h:
            jpeg = io.BytesIO()
            Image.open(io.BytesIO(photo())).convert("RGB").save(jpeg, "JPEG", quality=90)
            sent = await h.dispatch(h.slash("fill", {"prompt": "prepared once", "provider": "replicate"}, attachments={
                "image": ("photo.jpg", jpeg.getvalue(), "image/jpeg"), "mask": ("mask.png", mask_for(), "image/png"),
            }))
            await h.wait_for(lambda: (m := h.original(sent)) is not None and bool(m.custom_ids()), timeout=15,
                             message="queued for the workers")
            job_id = job_id_of(h.original(sent))  # type: ignore[arg-type]
            stored = await front.storage.load_sent(job_id)
            assert stored is not None
            async with workers(h, env, tmp_path, 1) as (worker,):
                async def no_picture_work(*args: object, **kwargs: object) -> None:
                    raise AssertionError("the worker prepared the pictures again")

                worker.service.prepare = no_picture_work  # type: ignore[method-assign, assignment]
                message = await final_reply(h, sent)

                async def delivered() -> bool:
                    job = await front.storage.get_job(job_id)
                    return job is not None and job.delivered_at is not None

                await h.wait_for(delivered, timeout=10, message="recorded as delivered")
            assert_delivered_once(h, message)
            [prediction] = fake.predictions.values()
            assert prediction.input["image"].endswith(base64.b64encode(stored[0]).decode())  # the same bytes
            assert prediction.input["output_format"] == "jpg"  # a JPEG upload's result, asked for as a JPEG
            assert await front.storage.load_sent(job_id) is None  # dropped once delivered
