"""Scaled out: two shard processes and two job workers on one PostgreSQL database, all real processes, against
the fake Discord API and the fake Replicate.

A burst spread over both shards must respect the limits exactly although two processes admit at once: a member
acting in a server on each shard gets the one job at a time both servers allow, no more; a server's daily quota
holds. One
worker is killed (SIGKILL) while it runs jobs; the other takes them over once their leases lapse, and every
admitted job is delivered exactly once, each with one create.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bot.app import create_bot
from bot.storage import Storage
from tests.discord.conftest import is_final, mask_for, photo, running, settings_for
from tests.discord.test_crash import Child, child_bot, creates_per_prompt, job_env
from tests.fakes.discord_api import FakeChannel, FakeMessage
from tests.fakes.discord_harness import GUILD_ID, MEMBER, MEMBER_PERMISSIONS, OWNER, DiscordHarness, FakeUser
from tests.fakes.replicate_server import FakeReplicate

SHARDS = 2
GUILD_B = (1 << 22) + 2000  # (id >> 22) % 2 == 1: shard 1; the harness's own server (2000) is on shard 0
CHANNEL_B = 4001
QUOTA_A = 5
MEMBER_TRIES = 4  # per server: both shards admit the member's jobs at the same moment


def shard_of(guild_id: int) -> int:
    return (guild_id >> 22) % SHARDS  # Discord's rule


def fill(h: DiscordHarness, prompt: str, user: FakeUser, channel_id: int) -> dict[str, Any]:
    return h.slash("fill", {"prompt": prompt, "provider": "replicate"}, user=user, channel_id=channel_id,
                   attachments={"image": ("photo.png", photo(), "image/png"),
                                "mask": ("mask.png", mask_for(), "image/png")})


@contextlib.asynccontextmanager
async def processes(
    h: DiscordHarness, env: dict[str, str], tmp_path: Path, bursts: dict[int, list[dict[str, Any]]]
) -> AsyncIterator[list[Child]]:
    """Two workers and one bot process per shard; once all are up, every shard gets its share of the burst at
    the same moment, and each admission check takes a while, so the shards' checks overlap."""
    async with contextlib.AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(child_bot(h, env, [], tmp_path, name=f"worker{n}", mode="worker"))
                   for n in range(2)]
        shards = {}
        for shard in bursts:
            guild = h._guild_payload(GUILD_ID if shard == shard_of(GUILD_ID) else GUILD_B)
            shards[shard] = await stack.enter_async_context(child_bot(
                h, env, None, tmp_path, name=f"shard{shard}", shards=[shard], shard_count=SHARDS, guilds=[guild],
                slow_admission=0.2))
        await asyncio.gather(*(shards[shard].feed(h, payloads) for shard, payloads in bursts.items()))
        yield workers


def answered(h: DiscordHarness, payload: dict[str, Any]) -> bool:
    """Admitted (its reply shows the job's buttons) or refused (privately)."""
    reply = h.original(payload["token"])
    return (reply is not None and not reply.ephemeral and bool(reply.custom_ids())) or bool(
        h.ephemeral_text(payload["token"]))


def owner_of(child: Child) -> str:
    return f"{socket.gethostname()[:32]}:{child.proc.pid}:"


async def test_two_shards_and_two_workers_keep_every_limit_and_survive_a_killed_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    # Jobs outlast the whole burst of admissions (each held 0.2 s), so the first admitted is still running at
    # the last check: a finished job would rightly free the member's slot.
    async with FakeReplicate(duration=5.0, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, DATABASE_URL=postgres_url, EXTERNAL_WORKERS="true", JOB_LEASE_SECONDS="1",
                      REPLICATE_MAX_CONCURRENCY="6")
        idle = create_bot(settings_for(tmp_path, **env), edit_interval=0.05, recover=False)
        async with running(idle, users=(MEMBER, OWNER)) as h:
            h.add_guild(GUILD_B, "Server B", [FakeChannel(CHANNEL_B, "general", guild_id=GUILD_B, position=0)])
            storage: Storage = idle.storage
            await storage.update_guild_settings(GUILD_ID, OWNER.id, {"daily_quota_per_guild": QUOTA_A,
                                                                     "max_concurrent_per_user": 1})
            await storage.update_guild_settings(GUILD_B, OWNER.id, {"max_concurrent_per_user": 1})
            others = [h.add_user(FakeUser(8000 + n, f"user{n}", MEMBER_PERMISSIONS.value)) for n in range(10)]
            # The member acts in both servers at once (1 may run); six others in A (quota 5), four in B.
            a = [fill(h, f"member A{n}", MEMBER, h.general_channel_id) for n in range(MEMBER_TRIES)]
            a += [fill(h, f"other A{n}", others[n], h.general_channel_id) for n in range(6)]
            b = [fill(h, f"member B{n}", MEMBER, CHANNEL_B) for n in range(MEMBER_TRIES)]
            b += [fill(h, f"other B{n}", others[6 + n], CHANNEL_B) for n in range(4)]
            payloads = a + b
            async with processes(h, env, tmp_path, {shard_of(GUILD_ID): a, shard_of(GUILD_B): b}) as pair:
                async def a_busy_worker() -> Child | None:
                    for job in [await storage.get_job(j) for j in await job_ids(storage)]:
                        for worker in pair:
                            if job and job.status == "running" and (job.owner or "").startswith(owner_of(worker)):
                                return worker
                    return None

                # Every command answered first (queued or refused): a dead worker's jobs would stop counting
                # toward their member's limit once their lease lapses, until another worker takes them over.
                await h.wait_for(lambda: all(answered(h, p) for p in payloads), timeout=60,
                                 message="every command answered")
                victim = await h.wait_for(a_busy_worker, timeout=60, message="a worker runs a job")
                await victim.kill()
                outcomes = await settle(h, payloads)

            admitted = {p["data"]["options"][0]["value"]: m for p, m in zip(payloads, outcomes, strict=True)
                        if m is not None}
            member_jobs = [k for k in admitted if k.startswith("member")]
            assert len(member_jobs) == 1, sorted(admitted)  # across both shards: their one job at a time
            in_a = [k for k in admitted if k.split()[1].startswith("A")]
            assert len(in_a) == QUOTA_A, sorted(admitted)
            assert all(k in admitted for k in (f"other B{n}" for n in range(4)))
            for prompt, message in admitted.items():
                title = message.embeds[0]["title"]
                # Delivered once; a job caught with its create in flight in the killed worker says so instead.
                assert title.startswith("✅") or "you may be charged once" in message.text, (prompt, message.text)
                footer = message.embeds[0]["footer"]["text"]
                copies = [m for m in h.fake.messages_in(message.channel_id) if not m.deleted
                          and any(e.get("footer", {}).get("text") == footer for e in m.embeds)]
                assert len(copies) == 1, prompt
            creates = creates_per_prompt(fake)
            assert set(creates.values()) == {1}  # never a second create, even for the jobs taken over
            assert set(creates) <= set(admitted)  # a refused job was never sent
            assert all(k in creates for k, m in admitted.items() if m.embeds[0]["title"].startswith("✅"))
            for job in [await storage.get_job(j) for j in await job_ids(storage)]:
                assert job is not None and job.delivered_at is not None, job


async def job_ids(storage: Storage) -> list[str]:
    rows = await storage._rows("SELECT id FROM jobs")
    return [str(r["id"]) for r in rows]


async def settle(h: DiscordHarness, payloads: list[dict[str, Any]]) -> list[FakeMessage | None]:
    """Each interaction's outcome once all have one: its final public reply, or None for a private refusal."""
    def outcome(p: dict[str, Any]) -> FakeMessage | bool | None:
        message = h.original(p["token"])
        if is_final(message):
            return message
        if h.ephemeral_text(p["token"]):
            return None
        return False

    await h.wait_for(lambda: all(outcome(p) is not False for p in payloads), timeout=120,
                     message="every interaction refused or delivered")
    return [o if isinstance(o, FakeMessage) else None for o in map(outcome, payloads)]
