"""Webhooks against polling, in one run: the whole bot (real discord.py, cogs, lifecycle and provider clients,
fake Discord) running /fill jobs on the Replicate, BFL and WaveSpeed fakes, once with the web side on (the
fakes call back) and once without it (the bot polls at its default interval).

Run: .venv/bin/python bench/bench_webhooks.py [--duration 10] [--jobs 3] [--json]

Per provider and mode it reports:
- status polls per job: the provider's status GETs that no webhook asked for (target 0 with webhooks);
- confirming GETs per job (webhooks only): the one authenticated GET the bot makes per wake, before believing
  anything (Replicate calls back at `start` and `completed`, so up to 2; BFL and WaveSpeed once);
- completion → final Discord edit, median: from the moment the fake's job ends to the fake Discord receiving
  the final edit of the reply (target ≤ 300 ms with webhooks), which includes the download and the finish.

Settings are the production defaults (POLL_INTERVAL 1 s, edit interval 1.5 s, fallback poll 30 s). Jobs of one
mode start 1.1 s apart so their ends do not pile up on the CPU; the fakes share this process. The picture is the
1024x768 JPEG photo with its mask from tests/data (under Replicate's 1 MB data-URI limit, which the fake enforces).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import TESTDATA, free_port  # noqa: E402
from bot.app import create_bot  # noqa: E402
from bot.config import load_settings  # noqa: E402
from tests.fakes.bfl_server import FakeBFL  # noqa: E402
from tests.fakes.discord_harness import MEMBER_PERMISSIONS, DiscordHarness, FakeUser  # noqa: E402
from tests.fakes.replicate_server import FakeReplicate  # noqa: E402
from tests.fakes.wavespeed_server import FakeWaveSpeed  # noqa: E402

PROVIDERS = ("replicate", "bfl", "wavespeed")
MODES = ("webhooks", "polling")
EDIT_TARGET_MS = 300.0
Fakes = dict[str, Any]


@asynccontextmanager
async def fakes(duration: float) -> AsyncIterator[Fakes]:
    async with FakeReplicate(duration=duration, honour_wait=False) as rep, FakeBFL(duration=duration) as bfl, \
            FakeWaveSpeed(duration=duration) as ws:
        yield {"replicate": rep, "bfl": bfl, "wavespeed": ws}


def provider_env(f: Fakes) -> dict[str, str]:
    return {"REPLICATE_API_TOKEN": f["replicate"].token, "REPLICATE_BASE_URL": f["replicate"].base_url,
            "BFL_API_KEY": f["bfl"].key, "BFL_BASE_URL": f["bfl"].base_url,
            "WAVESPEED_API_KEY": f["wavespeed"].key, "WAVESPEED_BASE_URL": f["wavespeed"].base_url}


def status_gets(f: Fakes, provider: str) -> int:
    if provider == "replicate":
        return int(f["replicate"].count("GET", "get"))
    if provider == "bfl":
        return len(f["bfl"].requests_to("poll"))
    return sum(1 for r in f["wavespeed"].requests_to("api") if r.method == "GET" and r.path.endswith("/result"))


def completions(f: Fakes, provider: str) -> list[float]:
    """When each of the fake's jobs ended, on the wall clock (the fake Discord stamps requests with it)."""
    offset = time.time() - time.monotonic()
    if provider == "replicate":
        return [p.created + p.duration + offset for p in f["replicate"].predictions.values()]
    return [j.created + j.duration + offset for j in f[provider].jobs.values()]


def woken(scrape: str, provider: str) -> int:
    found = re.search(rf'fillbot_webhooks_total\{{outcome="woke",provider="{provider}"\}} ([\d.]+)', scrape)
    return int(float(found.group(1))) if found else 0


async def one_mode(mode: str, duration: float, jobs: int, workdir: Path) -> dict[str, dict[str, Any]]:
    async with fakes(duration) as f:
        env = {"DATABASE_PATH": str(workdir / f"{mode}.db"), "ALLOW_PRIVATE_DOWNLOADS": "true", **provider_env(f)}
        if mode == "webhooks":
            port = free_port()
            env |= {"PUBLIC_URL": f"http://127.0.0.1:{port}", "WEB_PORT": str(port)}
        bot = create_bot(load_settings(env), edit_interval=1.5)
        picture = (TESTDATA / "photo_coffee_1024x768.jpg").read_bytes()
        mask = (TESTDATA / "mask_coffee_1024x768_ellipse.png").read_bytes()
        async with AsyncExitStack() as stack:
            h = await stack.enter_async_context(DiscordHarness(bot))
            sent: dict[str, list[Any]] = {p: [] for p in PROVIDERS}
            order = [(p, n) for n in range(jobs) for p in PROVIDERS]
            for index, (provider, n) in enumerate(order):
                if index:
                    await asyncio.sleep(1.1)  # spread the jobs' ends
                user = FakeUser(5000 + index, f"bench{index}", MEMBER_PERMISSIONS.value)
                sent[provider].append(await h.dispatch(h.slash(
                    "fill", {"prompt": f"a boat {n}", "provider": provider}, user=user,
                    attachments={"image": ("coffee.jpg", picture, "image/jpeg"),
                                 "mask": ("mask.png", mask, "image/png")})))

            def final_at(dispatched: Any) -> float | None:
                message = h.original(dispatched)
                if message is None:
                    return None
                for r in h.fake.requests:
                    if (r.ok and r.method == "PATCH" and r.message_id == message.id and r.embeds
                            and str(r.embeds[0].get("title", "")).startswith("✅")):
                        return float(r.at)
                return None

            for provider in PROVIDERS:
                for dispatched in sent[provider]:
                    await h.wait_for(lambda d=dispatched: final_at(d), timeout=duration + 60, message="final edit")
            scrape = (await bot.web.metrics.scrape()).decode() if bot.web is not None else ""
            results: dict[str, dict[str, Any]] = {}
            for provider in PROVIDERS:
                ends = sorted(completions(f, provider))
                finals = sorted(t for t in (final_at(d) for d in sent[provider]) if t is not None)
                wakes = woken(scrape, provider)
                gets = status_gets(f, provider)
                results[provider] = {
                    "polls": (gets - wakes) / jobs,
                    "confirm": wakes / jobs,
                    "edit_ms": statistics.median((b - a) * 1000 for a, b in zip(ends, finals, strict=True)),
                }
            return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="each provider job's length, seconds")
    parser.add_argument("--jobs", type=int, default=3, help="jobs per provider and mode")
    parser.add_argument("--json", action="store_true", help="end with the figures as one JSON line (run_all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: asyncio.run(one_mode(mode, args.duration, args.jobs, Path(tmp))) for mode in MODES}

    print(f"webhooks vs polling: {args.jobs} job(s) of {args.duration:g} s per provider and mode")
    print("| provider | status polls/job, webhooks | confirming GETs/job | status polls/job, polling "
          "| completion -> final edit, webhooks | same, polling |")
    print("|---|---|---|---|---|---|")
    figures: list[dict[str, Any]] = []
    for provider in PROVIDERS:
        hook, poll = results["webhooks"][provider], results["polling"][provider]
        print(f"| {provider} | {hook['polls']:.2f} | {hook['confirm']:.2f} | {poll['polls']:.2f} "
              f"| {hook['edit_ms']:.0f} ms | {poll['edit_ms']:.0f} ms |")
        label = f"{args.duration:g} s job, {provider}"
        figures += [
            {"key": f"webhooks.polls.{provider}", "name": f"webhooks: status polls per job, {label}",
             "unit": "", "value": hook["polls"], "limit": 0},
            {"key": f"webhooks.confirm.{provider}", "name": f"webhooks: confirming GETs per job, {label}",
             "unit": "", "value": hook["confirm"], "limit": None},
            {"key": f"webhooks.edit.{provider}", "name": f"webhooks: completion -> final edit, median, {label}",
             "unit": "ms", "value": hook["edit_ms"], "limit": EDIT_TARGET_MS},
            {"key": f"polling.polls.{provider}", "name": f"polling: status polls per job, {label}",
             "unit": "", "value": poll["polls"], "limit": None},
            {"key": f"polling.edit.{provider}", "name": f"polling: completion -> final edit, median, {label}",
             "unit": "ms", "value": poll["edit_ms"], "limit": None},
        ]
    if args.json:
        print(json.dumps({"figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
