"""The bot killed at each step of a job (SIGKILL: no clean shutdown), then a new bot started on what is left on
disk. Every job must end delivered exactly once, or with a plain message saying what happened and whether the
member may be charged; no create is ever sent twice; nothing is left "thinking" or "Running"; the member's
slots are free again.

The first bot is a real separate process (`crash_child.py`) talking to this test's fake Discord API and fake
provider over loopback; the second is the usual in-process bot, started on the same database file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import FillBot, create_bot
from tests.discord.conftest import is_final, mask_for, photo, running, settings_for
from tests.fakes.discord_api import FakeMessage
from tests.fakes.discord_harness import MEMBER, MEMBER_PERMISSIONS, DiscordHarness, FakeUser
from tests.fakes.replicate_server import FakeReplicate, Fault

ROOT = Path(__file__).resolve().parents[2]
LEASE = "0.5"  # seconds before the dead process's jobs are taken over


def job_env(fake: FakeReplicate, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_PATH": str(tmp_path / "fillbot.db"), "POLL_INTERVAL": "0.05", "JOB_DEADLINE": "60",
        "JOB_LEASE_SECONDS": LEASE, "REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url,
        "ALLOW_PRIVATE_DOWNLOADS": "true", **extra,
    }


def fill(h: DiscordHarness, prompt: str, user: FakeUser | None = None) -> dict[str, Any]:
    return h.slash("fill", {"prompt": prompt, "provider": "replicate"}, attachments={
        "image": ("photo.png", photo(), "image/png"), "mask": ("mask.png", mask_for(), "image/png"),
    }, **({"user": user} if user else {}))


class Child:
    """The first bot, in its own process."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    async def feed(self, h: DiscordHarness, payloads: list[dict[str, Any]]) -> None:
        """Hand the bot its INTERACTION_CREATE payloads (created now: it answers within Discord's 3 seconds)."""
        assert self.proc.stdin is not None
        for payload in payloads:
            h.fake.register_interaction(payload, created_at=h.fake.now())
        self.proc.stdin.write(json.dumps(payloads).encode() + b"\n")
        await self.proc.stdin.drain()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def crashed(self) -> None:
        """Wait for the process to kill itself at its crash point."""
        async with asyncio.timeout(30):
            code = await self.proc.wait()
        assert code == -9, f"exit {code}; log:\n{self.log.read_text()}"


@contextlib.asynccontextmanager
async def child_bot(
    h: DiscordHarness, env: dict[str, str], payloads: list[dict[str, Any]] | None, tmp_path: Path,
    crash_at: str | None = None, *, name: str = "child", **extra: Any,
) -> AsyncIterator[Child]:
    """A bot in its own process (`extra`: more of crash_child's settings, e.g. mode="worker"), fed `payloads`
    once it is ready (None: the test feeds it later)."""
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({
        "api_base": h.fake.api_base, "token": h.token, "guild": h._guild_payload(), "crash_at": crash_at,
        "env": env, **extra,
    }))
    log = config.with_suffix(".log")
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.discord.crash_child", str(config), cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )
    child = Child(proc, log)
    assert proc.stdin is not None and proc.stdout is not None
    async with asyncio.timeout(60):
        line = await proc.stdout.readline()
    assert line.strip() == b"ready", f"child did not start: {log.read_text()}"
    if payloads is not None:
        await child.feed(h, payloads)
    try:
        yield child
    finally:
        await child.kill()


@contextlib.asynccontextmanager
async def first_bot_idle(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[DiscordHarness]:
    """The harness with an in-process bot that serves nothing (recovery off): it only builds payloads until the
    test 'restarts' it as the second bot."""
    settings = settings_for(tmp_path, **{k: v for k, v in env.items() if k != "DATABASE_PATH"})
    async with running(create_bot(settings, edit_interval=0.05, recover=False)) as h:
        yield h


def second_bot(tmp_path: Path, env: dict[str, str]) -> FillBot:
    return create_bot(settings_for(tmp_path, **{k: v for k, v in env.items() if k != "DATABASE_PATH"}),
                      edit_interval=0.05)


def final_edits(h: DiscordHarness, message_id: int) -> list[Any]:
    return [r for r in h.fake.requests if r.ok and r.message_id == message_id and r.method == "PATCH" and r.files
            and r.embeds and str(r.embeds[0].get("title", "")).startswith("✅")]


async def settled(h: DiscordHarness, sent: list[dict[str, Any]], within: float = 30) -> list[FakeMessage]:
    def all_final() -> bool:
        return all(is_final(h.original(p["token"])) for p in sent)

    def describe() -> str:
        return "; ".join(
            f"{m.embeds[0].get('title') if m and m.embeds else (m.text if m else None)!r}"
            f"{' loading' if m and m.loading else ''}" for m in (h.original(p["token"]) for p in sent)
            if not is_final(m)
        )

    try:
        await h.wait_for(all_final, timeout=within, message="every reply final")
    except AssertionError:
        raise AssertionError(f"replies not final: {describe()}") from None
    return [h.original(p["token"]) for p in sent]  # type: ignore[misc]


async def slots_free(h: DiscordHarness, user_id: int) -> None:
    bot: FillBot = h.bot  # type: ignore[assignment]

    async def free() -> bool:
        jobs = await bot.storage.recent_jobs(user_id, limit=100)
        return await bot.storage.active_jobs(user_id) == 0 and all(j.delivered_at for j in jobs)

    await h.wait_for(free, timeout=10, message="the member's slots free, every job delivered")


def downloads(fake: FakeReplicate) -> int:
    return sum(1 for r in fake.requests if r.kind == "files")


def creates_per_prompt(fake: FakeReplicate) -> dict[str, int]:
    counts: dict[str, int] = {}
    for prediction in fake.predictions.values():
        prompt = str(prediction.input.get("prompt"))
        counts[prompt] = counts.get(prompt, 0) + 1
    return counts


def assert_delivered_once(h: DiscordHarness, message: FakeMessage, *, edits: int = 1) -> None:
    """One reply shows the result, and no other message does. `edits`: how many final edits of that reply may
    be seen (a bot killed while its final edit was in flight shows the same result again, in place)."""
    assert message.embeds[0]["title"].startswith("✅"), message.text
    assert [a.filename for a in message.attachments][1:] == ["before.jpg"] and not message.loading
    assert 1 <= len(final_edits(h, message.id)) <= edits
    footer = message.embeds[0].get("footer", {}).get("text")
    assert footer and footer.startswith("job ")
    others = [m for m in h.fake.messages_in(h.general_channel_id) if m.id != message.id and not m.deleted
              and any(e.get("footer", {}).get("text") == footer for e in m.embeds)]
    assert not others, "a second message for the same job"


# ------------------------------------------------------------------------------------------- one job each
Observe = Callable[[FakeReplicate, DiscordHarness], bool]

EXTERNAL: dict[str, tuple[Observe, Callable[[FakeReplicate], None]]] = {
    # killed while the create request is in flight (the fake holds its answer)
    "create-in-flight": (lambda f, h: f.count("POST", "create") == 1, lambda f: f.faults.create.append(Fault.slow(5))),
    # killed after the create returned: the provider runs it, the bot polls it
    "after-create": (lambda f, h: f.count("GET", "get") >= 1, lambda f: None),
    # killed while the output downloads (the fake's file server holds it)
    "downloading": (lambda f, h: downloads(f) >= 1, lambda f: f.faults.files.append(Fault.slow(5))),
}


@pytest.mark.parametrize("point", [*EXTERNAL, "preparing", "finishing", "after-final-edit"])
async def test_killed_at_each_step_then_restarted(tmp_path: Path, point: str) -> None:
    async with FakeReplicate(duration=0.6, honour_wait=False) as fake:
        env = job_env(fake, tmp_path)
        async with first_bot_idle(tmp_path, env) as h:
            observe, prepare = EXTERNAL.get(point, (None, None))
            if prepare is not None:
                prepare(fake)
            payload = fill(h, f"killed {point}")
            async with child_bot(h, env, [payload], tmp_path, crash_at=None if observe else point) as child:
                if observe is not None:
                    await h.wait_for(lambda: observe(fake, h), timeout=30, message=point)
                    await child.kill()
                else:
                    await child.crashed()
            fake.faults.files.clear()
            await h.restart(second_bot(tmp_path, env))
            [message] = await settled(h, [payload])
            text = message.text
            if point == "preparing":
                assert message.embeds[0]["title"].startswith("❌") and "nothing was charged" in text, text
                assert fake.count("POST", "create") == 0
            elif point == "create-in-flight":
                assert message.embeds[0]["title"].startswith("❌"), text
                assert "not sent again" in text and "you may be charged once" in text, text
                assert fake.count("POST", "create") == 1
            elif point == "after-final-edit":  # shown before the kill: shown again in place, still one reply
                assert_delivered_once(h, message, edits=2)
                assert fake.count("POST", "create") == 1
            else:
                assert_delivered_once(h, message)
                assert fake.count("POST", "create") == 1  # resumed by polling, never sent again
            if point == "finishing":
                assert downloads(fake) == 1  # the stored outputs were finished again, not fetched again
            await slots_free(h, MEMBER.id)
            assert not h.errors


async def test_killed_under_a_burst_of_30_queued_behind_a_small_limit(tmp_path: Path) -> None:
    async with FakeReplicate(duration=0.5, honour_wait=False) as fake:
        env = job_env(fake, tmp_path, REPLICATE_MAX_CONCURRENCY="3")
        async with first_bot_idle(tmp_path, env) as h:
            users = [h.add_user(FakeUser(5000 + n, f"user{n}", MEMBER_PERMISSIONS.value)) for n in range(30)]
            payloads = [fill(h, f"burst {n}", users[n]) for n in range(30)]
            async with child_bot(h, env, payloads, tmp_path) as child:
                await h.wait_for(lambda: fake.count("POST", "create") >= 10, timeout=60, message="10 creates")
                await child.kill()
            sent_before = fake.count("POST", "create")
            await h.restart(second_bot(tmp_path, env))
            messages = await settled(h, payloads, within=90)
            for message in messages:
                title = message.embeds[0]["title"]
                if title.startswith("✅"):
                    assert_delivered_once(h, message, edits=2)  # one may have been killed mid-edit
                else:  # only a job caught with its create in flight may end like this, and it says so
                    assert title.startswith("❌") and "you may be charged once" in message.text, message.text
            assert max(creates_per_prompt(fake).values()) == 1  # no create was ever sent twice
            assert fake.count("POST", "create") >= sent_before
            assert sum(m.embeds[0]["title"].startswith("✅") for m in messages) >= 27
            for user in users:
                await slots_free(h, user.id)
            assert not h.errors
