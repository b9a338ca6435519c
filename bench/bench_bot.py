"""The whole bot under load: real discord.py, real cogs and providers, fake Discord and Replicate on 127.0.0.1.

Run: .venv/bin/python bench/bench_bot.py [--loads 50,200] [--rate 20] [--json] [--profile DIR]

The bot is built with `create_bot` (REPLICATE_MAX_CONCURRENCY=200, edit_interval=1.5 as in production) and
driven by `DiscordHarness` with real INTERACTION_CREATE payloads for `/fill`, each carrying the 1440x1440 RGBA
PNG of bench_preprocess (3.5 MB, transparent hole = fill area) as an attachment on the fake CDN. FakeDiscord
and FakeReplicate (honouring `Prefer: wait` like api.replicate.com, fixed job duration) each run in their own
child process, so the bot's event loop, CPU time and memory are not charged for the fakes' work.

Each scenario runs in a fresh process (VmHWM is per process):
- single: one job at a time (2 s jobs, then 10 s jobs, then 2 s jobs of a 1440x1440 JPEG with a mask). Ack
  latency with 1 job in flight, overhead (interaction dispatched -> final edit at Discord, minus the job's
  duration), provider completion -> final edit, provider requests per job (API + CDN, from the fake's log).
- load N: N /fill interactions at `--rate` per second (10 s provider jobs), then probe interactions while they
  are all in flight. The default rate, 20/s, is what keeps 200 jobs of 10 s in flight (Little's law). Ack
  latency over every interaction of the wave, event-loop lag (a task sleeping 10 ms records its oversleep, from
  the first dispatch to the last delivery), peak memory (VmHWM minus the RSS just before the wave; VmHWM is
  reset there through /proc/self/clear_refs), completion -> final edit under load, CPU seconds of the bot
  process and of the fakes.

Every job gets its own user (the default per-user limit is 2 concurrent jobs). Timestamps crossing processes
are wall-clock; the fakes stamp a request when its headers arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import json
import logging
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from _bot_rig import EDIT_INTERVAL, BotRig  # noqa: E402
from _common import cpu_seconds, machine_lines, median, percentile, proc_status_kib, reset_peak_rss  # noqa: E402

TICK = 0.010
PROBE_GAP = 0.1

TARGET_ACK_P99_MS = 150.0
TARGET_LAG_P99_MS = 50.0
TARGET_OVERHEAD_MS = 300.0  # issue 11: a 1440x1440 RGBA PNG job
TARGET_OVERHEAD_JPEG_MS = 120.0  # issue 11: a 1440x1440 JPEG job
TARGET_EDIT_DELAY_MS = 300.0
TARGET_EDIT_DELAY_LOAD_MS = 2000.0  # issue 11: completion -> final edit with 200 jobs in flight
TARGET_REQUESTS_LONG = 8  # create + polls (every 2 s at most while running) + download: issue 9
TARGET_MEMORY_MIB = 500.0  # issue 11


class LagTicker:
    """Measures event-loop lag: how much later than asked a 10 ms sleep wakes up."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            self.samples.append(max(0.0, time.perf_counter() - before - TICK))

    async def stop(self) -> list[float]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return list(self.samples)


async def _warm_up(rig: BotRig) -> None:
    """One short job first: imports, connection pools, SQLite pages, Pillow plugins."""
    rig.duration(0.2)
    wave = rig.build(1, "warmup")
    await rig.dispatch(wave, wave.payloads, rate=None)
    await rig.settle(wave, limit=60)


async def scenario_single(plan: list[tuple[float, int]]) -> dict[str, Any]:
    """Jobs one at a time, `count` jobs of each `duration`: the RGBA PNG, then for the short duration the JPEG
    photo with a mask, then both again with webhooks (keys "<duration>", "<duration>:jpeg", "<duration>:webhooks",
    "<duration>:jpeg:webhooks")."""
    short, count = plan[0]
    out: dict[str, Any] = {}
    for webhooks in (False, True):
        runs = [(duration, n, "png") for duration, n in plan] if not webhooks else [(short, count, "png")]
        runs.append((short, count, "jpeg"))
        with tempfile.TemporaryDirectory() as tmp:
            async with BotRig(Path(tmp), duration=short, webhooks=webhooks) as rig:
                await _warm_up(rig)
                for duration, n, kind in runs:
                    key = ":".join([f"{duration:g}"] + (["jpeg"] if kind == "jpeg" else [])
                                   + (["webhooks"] if webhooks else []))
                    out[key] = await _one_at_a_time(rig, duration, n, kind)
    return out


async def _one_at_a_time(rig: BotRig, duration: float, count: int, kind: str) -> dict[str, Any]:
    rig.duration(duration)
    rows = []
    for _ in range(count):
        rig.reset_logs()
        wave = rig.build(1, f"single{duration:g}{kind}", kind)
        await rig.dispatch(wave, wave.payloads, rate=None)
        await rig.settle(wave, limit=duration + 120)
        row = rig.results(wave, duration)
        row.pop("ack_by_token")
        rows.append(row)
    return {
        "failed": sum(r["failed"] + r["unacked"] for r in rows),
        "acks": [a for r in rows for a in r["acks"]],
        "overhead": [o for r in rows for o in r["overhead"]],
        "edit_delay": [d for r in rows for d in r["edit_delay"]],
        "requests_per_job": median([r["requests_per_job"] for r in rows]),
        "api_per_job": median([r["api_per_job"] for r in rows]),
        "cdn_per_job": median([r["cdn_per_job"] for r in rows]),
    }


async def scenario_load(jobs: int, rate: float, duration: float, probes: int, profile: Path | None) -> dict[str, Any]:
    """`jobs` /fill jobs in flight, then `probes` more; lag, memory, CPU and delays over the whole wave."""
    with tempfile.TemporaryDirectory() as tmp:
        async with BotRig(Path(tmp), duration=duration) as rig:
            await _warm_up(rig)
            rig.duration(duration)
            rig.reset_logs()
            wave = rig.build(jobs, f"load{jobs}")
            extra = rig.build(probes, f"probe{jobs}")
            wave.payloads += extra.payloads
            wave.prompts.update(extra.prompts)
            ticker = LagTicker()
            baseline_kib = proc_status_kib("VmRSS")
            hwm_reset = reset_peak_rss()
            baseline_hwm_kib = proc_status_kib("VmHWM") if hwm_reset else baseline_kib
            profiler = cProfile.Profile() if profile else None
            cpu_before, fakes_before = cpu_seconds(), rig.fakes_cpu()
            started = time.monotonic()
            ticker.start()
            if profiler:
                profiler.enable()
            await rig.dispatch(wave, wave.payloads[:jobs], rate=rate)
            await rig.dispatch(wave, wave.payloads[jobs:], rate=1 / PROBE_GAP)
            await rig.settle(wave, limit=900)
            if profiler:
                profiler.disable()
            lag = await ticker.stop()
            wall = time.monotonic() - started
            peak_kib = proc_status_kib("VmHWM")
            cpu, fakes_cpu = cpu_seconds() - cpu_before, rig.fakes_cpu() - fakes_before
            if profile and profiler:
                target = profile / f"load{jobs}.prof"
                profiler.dump_stats(target)
                pstats.Stats(str(target), stream=sys.stderr).sort_stats("tottime").print_stats(30)
            result = rig.results(wave, duration)
            by_token = result.pop("ack_by_token")
            result.update(
                lag=lag,
                wall=wall,
                bot_cpu_s=cpu,
                fakes_cpu_s=fakes_cpu,
                baseline_mib=baseline_kib / 1024,
                peak_extra_mib=(peak_kib - baseline_hwm_kib) / 1024,
                hwm_reset=hwm_reset,
                probe_acks=[by_token[p["token"]] for p in extra.payloads if p["token"] in by_token],
                errors=len(rig.harness.errors),
            )
            return result


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("discord.client").setLevel(logging.ERROR)  # "PyNaCl is not installed"
    # One warning per job about the ~1 MB body would drown the output; it is reported in the bench notes.
    logging.getLogger("bot.providers.replicate").setLevel(logging.ERROR)
    if args.child == "single":
        plan = [(args.single_duration, args.reps), (args.long_duration, args.long_reps)]
        return asyncio.run(scenario_single(plan))
    jobs = int(args.child.removeprefix("load"))
    profile = Path(args.profile) if args.profile else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    return asyncio.run(scenario_load(jobs, args.rate, args.load_duration, args.probes, profile))


def spawn(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", scenario]
    for name in ("reps", "long_reps", "rate", "single_duration", "long_duration", "load_duration", "probes"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.profile:
        command += ["--profile", args.profile]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"bench_bot scenario {scenario} failed with exit code {done.returncode}")
    if args.profile:
        sys.stderr.write(done.stderr)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


def summarize(
    single: dict[str, Any], loads: dict[int, dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Figures as run_all reports them: key, name, value, unit and limit (value <= limit passes; None = info).
    Targets apply to the largest load."""
    figures: list[dict[str, Any]] = []
    short, long = f"{args.single_duration:g}", f"{args.long_duration:g}"
    top = max(loads) if loads else 0

    def add(key: str, name: str, value: float, unit: str, limit: float | None) -> None:
        figures.append({"key": f"bot.{key}", "name": f"bot: {name}", "value": value, "unit": unit, "limit": limit})

    ones = ms(single[short]["acks"] + single[long]["acks"])
    add("ack_p50.1", "ack p50, 1 job in flight", percentile(ones, 50), "ms", None)
    add("ack_p99.1", "ack p99, 1 job in flight", percentile(ones, 99), "ms", None)
    for jobs, load in sorted(loads.items()):
        role = "max" if jobs == top else str(jobs)
        acks = ms(load["acks"])
        add(f"ack_p50.{role}", f"ack p50, {jobs} jobs in flight", percentile(acks, 50), "ms", None)
        add(f"ack_p99.{role}", f"ack p99, {jobs} jobs in flight", percentile(acks, 99), "ms",
            TARGET_ACK_P99_MS if jobs == top else None)
    for jobs, load in sorted(loads.items()):
        role = "max" if jobs == top else str(jobs)
        add(f"lag_p99.{role}", f"event-loop lag p99, {jobs} jobs", percentile(ms(load["lag"]), 99), "ms",
            TARGET_LAG_P99_MS if jobs == top else None)
    jpeg = single[f"{short}:jpeg"]
    add("overhead", "overhead (e2e - provider time), 1440x1440 RGBA PNG, median", median(ms(single[short]["overhead"])),
        "ms", TARGET_OVERHEAD_MS)
    add("overhead_jpeg", "overhead (e2e - provider time), 1440x1440 JPEG + mask, median", median(ms(jpeg["overhead"])),
        "ms", TARGET_OVERHEAD_JPEG_MS)
    add("edit_delay.1", "completion -> final Discord edit, median, 1 job", median(ms(single[short]["edit_delay"])),
        "ms", TARGET_EDIT_DELAY_MS)
    add("edit_delay_jpeg.1", "completion -> final Discord edit, median, 1 JPEG job", median(ms(jpeg["edit_delay"])),
        "ms", None)
    for kind, label in (("", "1440x1440 RGBA PNG"), (":jpeg", "1440x1440 JPEG + mask")):
        hooked, suffix = single[f"{short}{kind}:webhooks"], kind.replace(":", "_")
        add(f"overhead{suffix}_webhooks", f"overhead with webhooks, {label}, median",
            median(ms(hooked["overhead"])), "ms", None)
        add(f"edit_delay{suffix}_webhooks.1", f"completion -> final edit with webhooks, {label}, median",
            median(ms(hooked["edit_delay"])), "ms", None)
    for jobs, load in sorted(loads.items()):
        role = "max" if jobs == top else str(jobs)
        add(f"edit_delay.{role}", f"completion -> final Discord edit, median, {jobs} jobs",
            median(ms(load["edit_delay"])), "ms", TARGET_EDIT_DELAY_LOAD_MS if jobs == top else None)
    add("requests.short", f"provider requests per job, {short} s job", single[short]["requests_per_job"], "", None)
    add("requests.long", f"provider requests per job, {long} s job", single[long]["requests_per_job"], "",
        TARGET_REQUESTS_LONG)
    for jobs, load in sorted(loads.items()):
        role = "max" if jobs == top else str(jobs)
        peak = load["peak_extra_mib"]
        add(f"memory.{role}", f"peak memory over baseline, {jobs} concurrent jobs", peak, "MiB",
            TARGET_MEMORY_MIB if jobs == top else None)
        add(f"memory_per_job.{role}", f"peak memory per job, {jobs} concurrent jobs (+ probes)",
            peak / load["jobs"], "MiB", None)
    failed = sum(s["failed"] for s in single.values()) + sum(
        load["failed"] + load["unacked"] for load in loads.values()
    )
    add("failed", "jobs failed or unacknowledged", float(failed), "", 0.0)
    return figures


def verdict(figure: dict[str, Any]) -> str:
    if figure["limit"] is None:
        return "info"
    return "ok" if figure["value"] <= figure["limit"] else "MISSED"


def render(single: dict[str, Any], loads: dict[int, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["# Bot under load: fake Discord + FakeReplicate on 127.0.0.1", ""]
    lines += machine_lines()
    lines += [
        f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"- single: {args.reps} x {args.single_duration:g} s and {args.long_reps} x {args.long_duration:g} s jobs one "
        f"at a time, then {args.reps} x {args.single_duration:g} s jobs of a 1440x1440 JPEG (0.4 MB) with a mask; "
        f"load: N x {args.load_duration:g} s jobs at {args.rate:g}/s plus {args.probes} probes "
        f"{PROBE_GAP:g} s apart; edit_interval {EDIT_INTERVAL} s; 1440x1440 RGBA PNG upload (3.5 MB); fakes in "
        "child processes",
        "",
        "| load | wall s | ack p50 / p99 ms | probe ack p50 / p99 ms | loop lag p50 / p99 / max ms "
        "| completion->edit p50 / p99 s | e2e p50 s | CPU s bot / fakes | peak MiB (per job) | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for jobs, load in sorted(loads.items()):
        acks, probes, lag = ms(load["acks"]), ms(load["probe_acks"]), ms(load["lag"])
        delays, failed = load["edit_delay"], load["failed"] + load["unacked"]
        lines.append(
            f"| {jobs} | {load['wall']:.1f} | {percentile(acks, 50):.0f} / {percentile(acks, 99):.0f} "
            f"| {percentile(probes, 50):.0f} / {percentile(probes, 99):.0f} "
            f"| {percentile(lag, 50):.1f} / {percentile(lag, 99):.1f} / {max(lag, default=0):.0f} "
            f"| {percentile(delays, 50):.1f} / {percentile(delays, 99):.1f} | {median(load['e2e']):.1f} "
            f"| {load['bot_cpu_s']:.0f} / {load['fakes_cpu_s']:.0f} "
            f"| {load['peak_extra_mib']:.0f} ({load['peak_extra_mib'] / load['jobs']:.1f}) | {failed} |"
        )
    lines += ["", "| figure | value | target | |", "|---|---|---|---|"]
    for f in summarize(single, loads, args):
        target = "info" if f["limit"] is None else f"<= {f['limit']:g}"
        lines.append(f"| {f['name']} | {f['value']:.1f} {f['unit']} | {target} | {verdict(f)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", default="50,200", help="concurrent job counts, comma-separated")
    parser.add_argument("--rate", type=float, default=20.0, help="interactions per second while loading")
    parser.add_argument("--reps", type=int, default=5, help="single jobs of --single-duration")
    parser.add_argument("--long-reps", type=int, default=2, help="single jobs of --long-duration")
    parser.add_argument("--single-duration", type=float, default=2.0)
    parser.add_argument("--long-duration", type=float, default=10.0)
    parser.add_argument("--load-duration", type=float, default=10.0, help="provider job time under load")
    parser.add_argument("--probes", type=int, default=20, help="interactions sent once the load is in flight")
    parser.add_argument("--parallel", action="store_true", help="run scenarios at once (smoke tests only)")
    parser.add_argument("--json", action="store_true", help="print raw results and figures as JSON")
    parser.add_argument("--profile", help="cProfile the bot's event loop during load runs; stats go to DIR")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    scenarios = ["single"] + [f"load{int(n)}" for n in args.loads.split(",") if n.strip()]
    with concurrent.futures.ThreadPoolExecutor(len(scenarios) if args.parallel else 1) as pool:
        done = dict(zip(scenarios, pool.map(lambda s: spawn(s, args), scenarios), strict=True))
    single = done.pop("single")
    loads = {int(name.removeprefix("load")): result for name, result in done.items()}
    if args.json:
        print(json.dumps({"figures": summarize(single, loads, args)}))
    else:
        print(render(single, loads, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
