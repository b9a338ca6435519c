"""The rig of the bot benchmarks: the real bot (`create_bot`), `DiscordHarness`, and FakeDiscord and FakeReplicate
each in its own child process (`_fake_servers`); waves of /fill interactions with the 1440x1440 RGBA PNG, and the
per-job figures read from the fakes' logs afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import cpu_seconds, free_port, jpeg_1440, photo_1440, tagged
from _fake_servers import FakeProcess, RemoteDiscord

from bot.app import FillBot, create_bot
from bot.config import load_settings
from tests.fakes.discord_harness import MEMBER_PERMISSIONS, DiscordHarness, Dispatched, FakeUser

EDIT_INTERVAL = 1.5  # seconds between a job's progress edits, as in production


@dataclass
class Wave:
    """Interactions of one measured wave and what the bench saw of them."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    dispatched_at: dict[str, float] = field(default_factory=dict)  # token -> wall time
    prompts: dict[str, str] = field(default_factory=dict)  # token -> unique prompt
    sent: list[Dispatched] = field(default_factory=list)


class BotRig:
    """The real bot, the harness and both fakes (in child processes).

    `env` adds or overrides settings (`self.env` holds them all, for other processes sharing the database);
    `webhooks` turns the bot's web side on, so the fake calls back when a job ends.
    """

    def __init__(
        self, tmp: Path, duration: float, env: Mapping[str, str] | None = None, *, webhooks: bool = False
    ) -> None:
        self.picture = photo_1440()
        self.jpeg, self.mask = jpeg_1440()
        self.discord_proc = FakeProcess("discord")
        self.replicate_proc = FakeProcess("replicate", duration=duration, honour_wait=True)
        self.remote = RemoteDiscord(self.discord_proc)
        self.env: dict[str, str] = {
            "DATABASE_PATH": str(tmp / "bench.db"),
            "REPLICATE_API_TOKEN": str(self.replicate_proc.info["token"]),
            "REPLICATE_BASE_URL": str(self.replicate_proc.info["base_url"]),
            "REPLICATE_MAX_CONCURRENCY": "200",
            "DEFAULT_PROVIDER": "replicate",
            "ALLOW_PRIVATE_DOWNLOADS": "true",  # the fake serves results from 127.0.0.1
            # The load waves put 200 jobs of one server in flight at once: the operator's queue cap (100
            # waiting by default) would refuse some, and this benchmark measures capacity, not that rule.
            "MAX_QUEUED_PER_SERVER": "0",
            **(env or {}),
        }
        self.webhooks = webhooks
        if webhooks:  # the web side on: FakeReplicate calls back instead of being polled
            port = free_port()
            self.env |= {"PUBLIC_URL": f"http://127.0.0.1:{port}", "WEB_PORT": str(port)}
        settings = load_settings(self.env)
        self.bot: FillBot = create_bot(settings, edit_interval=EDIT_INTERVAL)
        self.harness = DiscordHarness(self.bot, fake=self.remote)
        self._users = 0

    async def __aenter__(self) -> BotRig:
        await self.harness.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.harness.__aexit__(*exc)
        finally:
            self.discord_proc.close()
            self.replicate_proc.close()

    def fakes_cpu(self) -> float:
        return cpu_seconds(self.discord_proc.pid) + cpu_seconds(self.replicate_proc.pid)

    def duration(self, seconds: float) -> None:
        self.replicate_proc.call("configure", duration=seconds)

    def reset_logs(self) -> None:
        self.discord_proc.call("reset")
        self.replicate_proc.call("reset")

    def build(self, count: int, label: str, kind: str = "png") -> Wave:
        """`count` /fill payloads, each from a new user with a file of its own (payload building is not measured):
        `kind` "png" attaches the RGBA PNG with its transparent hole (and, with the web side on, its mask too: without
        one that answer is private and the job starts in the channel, a reply this rig does not follow), "jpeg" the
        JPEG photo and a mask."""
        wave = Wave()
        for _ in range(count):
            self._users += 1
            user = FakeUser(100_000 + self._users, f"bench{self._users}", MEMBER_PERMISSIONS.value)
            prompt = f"bench {label} job {self._users}"
            if kind == "jpeg":
                attachments = {"image": ("photo.jpg", tagged(self.jpeg, prompt), "image/jpeg"),
                               "mask": ("mask.png", self.mask, "image/png")}
            else:
                attachments = {"image": ("photo.png", tagged(self.picture, prompt), "image/png")}
                if self.webhooks:
                    attachments["mask"] = ("mask.png", self.mask, "image/png")
            payload = self.harness.slash(
                "fill", {"prompt": prompt, "provider": "replicate"}, attachments=attachments, user=user
            )
            wave.payloads.append(payload)
            wave.prompts[payload["token"]] = prompt
        return wave

    async def dispatch(self, wave: Wave, payloads: list[dict[str, Any]], rate: float | None) -> None:
        """Dispatch at `rate` per second (None: all at once). The fake Discord learns of each interaction first,
        with its planned dispatch time as creation time (its 3-second acknowledgement window starts there)."""
        lead = 0.05  # room for the registration round trip before the first dispatch
        first = time.time() + lead
        self.remote.preregister(payloads, [first + (i / rate if rate else 0.0) for i in range(len(payloads))])
        await asyncio.sleep(max(0.0, first - time.time()))
        start = time.perf_counter()
        for index, payload in enumerate(payloads):
            if rate:
                delay = start + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            wave.dispatched_at[payload["token"]] = time.time()
            wave.sent.append(await self.harness.dispatch(payload, wait=False))

    async def settle(self, wave: Wave, limit: float) -> None:
        """Until every handler has run and every job task the bot spawned has delivered."""
        deadline = time.monotonic() + limit
        handlers = [t for sent in wave.sent for t in sent.tasks]
        if handlers:
            await asyncio.wait(handlers, timeout=max(1.0, deadline - time.monotonic()))
        runner = self.bot.lifecycle.runner
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await runner.wait_until(lambda: not runner.live)
        except TimeoutError:
            raise TimeoutError(f"{len(runner.live)} jobs still running after {limit:.0f} s") from None

    def results(self, wave: Wave, duration: float) -> dict[str, Any]:
        """Per-job figures from the fakes' logs (read after the wave, outside any measurement)."""
        discord_log = self.remote.log()
        replicate_log = self.replicate_proc.call("replicate_log")
        completed = {p["prompt"]: p["completed_wall"] for p in replicate_log["predictions"]}
        first_seen: dict[str, float] = {}
        final_seen: dict[str, dict[str, Any]] = {}
        for r in discord_log:
            token = r["token"]
            if token not in wave.dispatched_at:
                continue
            if r["route"] == "interaction_callback" and token not in first_seen:
                first_seen[token] = r["at"]
            if r["final"] and 200 <= r["status"] < 300 and token not in final_seen:
                final_seen[token] = r
        acks: dict[str, float] = {}
        e2e: list[float] = []
        finished_at: list[float] = []  # wall time of each successful final edit
        delays: list[float] = []
        failed = 0
        for token, sent_at in wave.dispatched_at.items():
            if token in first_seen:
                acks[token] = first_seen[token] - sent_at
            final = final_seen.get(token)
            if final is None or not final["title"].startswith("✅"):
                failed += 1
                continue
            e2e.append(final["at"] - sent_at)
            finished_at.append(final["at"])
            done = completed.get(wave.prompts[token])
            if done is not None:
                delays.append(final["at"] - done)
        # The provider's time runs from the create's arrival to the job's end: what the fake spends reading the
        # create (a 1 MB body) before its clock starts is the provider's, not the bot's.
        creates = [r["at_wall"] for r in replicate_log["requests"] if r["kind"] == "create"]
        if len(creates) == 1 and len(e2e) == 1 and len(replicate_log["predictions"]) == 1:
            provider_time = replicate_log["predictions"][0]["completed_wall"] - creates[0]
        else:
            provider_time = duration
        api = sum(1 for r in replicate_log["requests"] if r["server"] == "api")
        cdn = sum(1 for r in replicate_log["requests"] if r["server"] == "cdn")
        jobs = len(wave.dispatched_at)
        return {
            "jobs": jobs,
            "failed": failed,
            "unacked": jobs - len(acks),
            "acks": list(acks.values()),
            "ack_by_token": acks,
            "e2e": e2e,
            "finished_at": finished_at,
            "overhead": [t - provider_time for t in e2e],
            "edit_delay": delays,
            "requests_per_job": (api + cdn) / jobs,
            "api_per_job": api / jobs,
            "cdn_per_job": cdn / jobs,
        }
