"""How fast the mask painter page is ready to paint on a 1440x1440 picture, in the system's headless Chromium.

Run: .venv/bin/python bench/bench_painter.py [--runs N] [--json]

Each run opens the painter link in a fresh browser context (no cache) and times navigation start → the mask
canvas set to the picture's size (the page's script has run and the picture is decoded: the member can paint).
The painter's routes run on a real aiohttp server on 127.0.0.1, as in the bot. Target: median under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from bench._common import median, percentile, photo_1440  # noqa: E402
from bot.web.painter import Painter  # noqa: E402
from tests.web.browser import chromium, missing  # noqa: E402

TARGET_MS = 1000.0
SIDE = 1440


async def measure(runs: int) -> list[float]:
    painter = Painter()
    app = web.Application()
    painter.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    picture = photo_1440()
    times: list[float] = []
    try:
        async with chromium() as browser:
            for _ in range(runs):
                token = painter.store.issue(user_id=1, guild_id=1, channel_id=1, picture=picture,
                                            content_type="image/png", prompt="a boat", plan=None)
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                started = time.perf_counter()
                await page.goto(f"http://127.0.0.1:{port}/paint/{token}", wait_until="commit")
                await page.wait_for_function(f"() => document.getElementById('mask')?.width === {SIDE}")
                times.append((time.perf_counter() - started) * 1000)
                await context.close()
    finally:
        await runner.cleanup()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    reason = missing()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    times = asyncio.run(measure(args.runs))
    middle = median(times)
    print(f"painter page ready to paint, {SIDE}x{SIDE} PNG ({len(photo_1440()) / 1e6:.1f} MB), {args.runs} loads:")
    print(f"median {middle:.0f} ms, p90 {percentile(times, 90):.0f} ms, min {min(times):.0f} ms "
          f"(target < {TARGET_MS:.0f} ms: {'pass' if middle < TARGET_MS else 'FAIL'})")
    if args.json:
        print(json.dumps({"figures": [{"key": "painter.load", "name": f"painter: page ready, {SIDE}x{SIDE} picture",
                                       "unit": "ms", "value": middle, "limit": TARGET_MS}]}))
    return 0 if middle < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
