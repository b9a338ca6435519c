"""Job workers under load (issue 12): one front bot and 1, then 2, `fillbot worker` processes.

Run: .venv/bin/python bench/bench_workers.py [--workers 1,2] [--jobs 150] [--duration 0.5] [--json]
                                              [--database-url postgresql://...]

For each worker count, from scratch (fresh fakes; a fresh SQLite file):
- FakeDiscord and FakeReplicate (honouring `Prefer: wait`) run in their own child processes, as in bench_bot;
  the front bot (`create_bot` with EXTERNAL_WORKERS=true, i.e. Mode.FRONT) runs in this process, driven by
  `DiscordHarness`; each worker is its own process: `tests/discord/crash_child.py` in worker mode, which runs
  `bot.app.run_worker` as `fillbot worker` does (REST only, no gateway; production's edit_interval of 1.5 s)
  against the fake Discord. They share a SQLite file in a temporary directory.
- Warm-up: each worker, started alone, runs `--warmup` jobs (imports, connection pools, Pillow plugins), then is
  paused (SIGSTOP, at a moment it holds no database lock) so that it claims nothing yet.
- The wave: `--jobs` /fill interactions (the 1440x1440 RGBA PNG of bench_preprocess, each from its own member)
  at `--rate` per second; the front admits, prepares and queues them. Once every job is queued, all workers are
  resumed at once (SIGCONT): the clock starts. Provider jobs are short (`--duration`) and the provider limit
  high, so what limits the workers is their CPU work per job: preparing the stored pictures again for the
  provider, finishing (compositing, encoding) and delivering.
- Figures: jobs finished per second = delivered jobs / (last final edit at Discord - release); provider
  completion -> final Discord edit (median, p90), from the fakes' timestamps (wall clock, as bench_bot); CPU
  seconds of the workers and of the fakes over the run, per job (steady whatever else runs on the machine) and per
  second (how many of the machine's CPUs the workers kept busy); jobs each worker claimed (from its log). The
  ratio 2 workers / 1 worker of jobs per second shows how that work scales over processes on this machine's CPUs;
  CPU seconds per job divided into the CPUs gives the ceiling.

`--database-url postgresql://...` is passed to the front and every worker as DATABASE_URL (settings and process
environment): every process then uses that PostgreSQL database instead of the SQLite file. Give an empty database;
the runs for each worker count share it (their jobs are told apart by creation time). The check that no worker
is paused inside a transaction only applies to SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from _bot_rig import EDIT_INTERVAL, BotRig, Wave  # noqa: E402
from _common import cpu_seconds, machine_lines, median, percentile  # noqa: E402

from bot.lifecycle.states import State  # noqa: E402

WORKER_MODULE = "tests.discord.crash_child"  # its worker mode is `fillbot worker` against the fake Discord
CLAIM_LINE = "claimed job"  # what bot.lifecycle.dispatch logs per claim


class WorkerProcess:
    """One job worker in its own process; its log (stderr) goes to a file next to its config. SIGTERM stops it the
    way an operator would (its jobs handed back at once)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.paused = False

    @classmethod
    async def start(cls, rig: BotRig, tmp: Path, index: int, extra_env: dict[str, str]) -> WorkerProcess:
        config = tmp / f"worker{index}.json"
        config.write_text(json.dumps({
            "mode": "worker", "api_base": rig.remote.api_base, "token": rig.harness.token, "env": rig.env,
        }))
        log = config.with_suffix(".log")
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", WORKER_MODULE, str(config), cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **extra_env}, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=err,
            )
        worker = cls(proc, log)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(120):
                line = await proc.stdout.readline()
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            await worker.stop()
            raise RuntimeError(f"worker {index} did not start:\n{log.read_text()[-4000:]}")
        return worker

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def claims(self) -> int:
        return self.log.read_text(errors="replace").count(CLAIM_LINE)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            if self.paused:
                self.resume()
            self.proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _sqlite_free(path: str) -> bool:
    """True if nobody holds the database's write lock (a paused worker inside a transaction would block all)."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=0.2, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return False
    return True


async def pause(workers: Sequence[WorkerProcess], database: str | None) -> None:
    """Stop the workers where they hold no lock: stopped inside a transaction, one would block every process."""
    for _ in range(100):
        for worker in workers:
            worker.pause()
        if database is None or _sqlite_free(database):
            return
        for worker in workers:
            worker.resume()
        await asyncio.sleep(0.05)
    raise RuntimeError("the workers never let go of the database lock")


async def delivered(rig: BotRig, wave: Wave, limit: float) -> None:
    """Until every reply of `wave` got its final edit at Discord and the database says delivered (a worker paused
    between the two would leave a job that another process may take over and show again)."""
    deadline = time.monotonic() + limit
    tokens = set(wave.dispatched_at)
    while not tokens <= rig.remote.final_tokens():
        if time.monotonic() > deadline:
            missing = len(tokens - rig.remote.final_tokens())
            raise TimeoutError(f"{missing} of {len(tokens)} jobs not delivered after {limit:.0f} s")
        await asyncio.sleep(0.2)
    users = {_user_id(p) for p in wave.payloads}
    while True:
        jobs = [j for user in users for j in await rig.bot.storage.recent_jobs(user, limit=10)]
        if all(j.delivered_at for j in jobs):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("final edits shown but not recorded as delivered")
        await asyncio.sleep(0.1)


async def queued(rig: BotRig, wave: Wave, since: float, limit: float) -> None:
    """Until the front has queued every job of `wave` (or ended it: a refusal is a final edit too)."""
    deadline = time.monotonic() + limit
    while True:
        waiting = await rig.bot.storage.count_jobs(since=since, statuses=(State.QUEUED.value,))
        ended = len(set(wave.dispatched_at) & rig.remote.final_tokens())
        if waiting + ended >= len(wave.dispatched_at):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {waiting} of {len(wave.dispatched_at)} jobs queued after {limit:.0f} s")
        await asyncio.sleep(0.1)


def _user_id(payload: dict[str, Any]) -> int:
    user = payload["member"]["user"] if payload.get("member") else payload["user"]
    return int(user["id"])


@contextlib.asynccontextmanager
async def worker_pool(
    rig: BotRig, tmp: Path, count: int, warmup: int, extra_env: dict[str, str], database: str | None
) -> AsyncIterator[list[WorkerProcess]]:
    """`count` warmed-up, paused workers."""
    workers: list[WorkerProcess] = []
    try:
        for index in range(count):
            worker = await WorkerProcess.start(rig, tmp, index, extra_env)
            workers.append(worker)
            wave = rig.build(warmup, f"warmup{index}")
            await rig.dispatch(wave, wave.payloads, rate=None)
            await delivered(rig, wave, limit=120)  # the others are paused: this worker ran every warm-up job
            await pause([worker], database)
        yield workers
    finally:
        for worker in workers:
            await worker.stop()


async def scenario(count: int, args: argparse.Namespace) -> dict[str, Any]:
    """One wave for `count` workers: figures over the run, from release to the last delivery."""
    extra_env = {"DATABASE_URL": args.database_url} if args.database_url else {}
    env = {
        "EXTERNAL_WORKERS": "true",
        "REPLICATE_MAX_CONCURRENCY": str(args.concurrency),
        "WORKER_MAX_JOBS": str(args.worker_max_jobs),
        **extra_env,
    }
    with tempfile.TemporaryDirectory() as tmp:
        async with BotRig(Path(tmp), duration=args.duration, env=env) as rig:
            database = None if args.database_url else rig.env["DATABASE_PATH"]
            async with worker_pool(rig, Path(tmp), count, args.warmup, extra_env, database) as workers:
                rig.reset_logs()
                wave = rig.build(args.jobs, f"workers{count}")
                since = time.time()
                await rig.dispatch(wave, wave.payloads, rate=args.rate)
                await queued(rig, wave, since, limit=300)
                admitted = time.time() - since
                claims_before = [w.claims() for w in workers]
                cpu_before, fakes_before = [w.cpu() for w in workers], rig.fakes_cpu()
                released = time.time()
                for worker in workers:
                    worker.resume()
                await delivered(rig, wave, limit=args.limit)
                cpu = sum(w.cpu() - before for w, before in zip(workers, cpu_before, strict=True))
                fakes_cpu = rig.fakes_cpu() - fakes_before
                claims = [w.claims() - before for w, before in zip(workers, claims_before, strict=True)]
            result = rig.results(wave, args.duration)
    finished = result["finished_at"]
    wall = max(finished) - released if finished else float("nan")
    return {
        "workers": count,
        "jobs": result["jobs"],
        "failed": result["failed"] + result["unacked"],
        "admitted_s": admitted,
        "wall_s": wall,
        "jobs_per_s": len(finished) / wall if finished else 0.0,
        "edit_delay": result["edit_delay"],
        "workers_cpu_s": cpu,
        "fakes_cpu_s": fakes_cpu,
        "claims": claims,
    }


def run(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("discord.client").setLevel(logging.ERROR)  # "PyNaCl is not installed"
    logging.getLogger("bot.providers.replicate").setLevel(logging.ERROR)  # the ~1 MB body warning, once per job
    return {count: asyncio.run(scenario(count, args)) for count in args.counts}


def summarize(runs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Figures as run_all reports them (value <= limit passes; None = info)."""
    figures: list[dict[str, Any]] = []

    def add(key: str, name: str, value: float, unit: str, limit: float | None = None) -> None:
        figures.append({"key": f"workers.{key}", "name": f"workers: {name}", "value": value, "unit": unit,
                        "limit": limit})

    for count, run in sorted(runs.items()):
        jobs = run["jobs"]
        add(f"jobs_per_s.{count}", f"jobs finished per second, {count} worker(s), {jobs} jobs", run["jobs_per_s"],
            "/s")
        add(f"edit_p50.{count}", f"completion -> final Discord edit, median, {count} worker(s)",
            median(run["edit_delay"]), "s")
        add(f"edit_p90.{count}", f"completion -> final Discord edit, p90, {count} worker(s)",
            percentile(run["edit_delay"], 90), "s")
        add(f"cpu_per_job.{count}", f"workers' CPU seconds per job, {count} worker(s)",
            run["workers_cpu_s"] / jobs if jobs else float("nan"), "s")
    if 1 in runs and 2 in runs and runs[1]["jobs_per_s"] > 0:
        add("ratio.2_1", "throughput ratio, 2 workers / 1 worker", runs[2]["jobs_per_s"] / runs[1]["jobs_per_s"], "")
    add("cpus", "CPUs usable", float(_usable_cpus()), "")
    add("failed", "jobs failed or unacknowledged", float(sum(r["failed"] for r in runs.values())), "", 0.0)
    return figures


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def render(runs: dict[int, dict[str, Any]], args: argparse.Namespace, load: tuple[float, float, float]) -> str:
    lines = ["# Job workers under load: front bot + N worker processes, fake Discord + FakeReplicate", ""]
    lines += machine_lines()
    lines += [
        f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"- load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({_usable_cpus()} CPUs usable)",
        f"- wave: {args.jobs} /fill jobs (1440x1440 RGBA PNG, 3.5 MB) admitted at {args.rate:g}/s and queued, then "
        f"every worker released at once; {args.duration:g} s provider jobs; REPLICATE_MAX_CONCURRENCY "
        f"{args.concurrency}, WORKER_MAX_JOBS {args.worker_max_jobs}, edit_interval {EDIT_INTERVAL} s; "
        f"database: {'DATABASE_URL given' if args.database_url else 'SQLite file'}",
        "",
        "| workers | jobs | jobs/s | wall s | completion->edit p50 / p90 s | CPU s workers / fakes "
        "| CPU s per job | workers' CPUs busy | jobs claimed per worker | queueing s (front) | failed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for count, run in sorted(runs.items()):
        delays = run["edit_delay"]
        lines.append(
            f"| {count} | {run['jobs']} | {run['jobs_per_s']:.2f} | {run['wall_s']:.1f} "
            f"| {median(delays):.2f} / {percentile(delays, 90):.2f} "
            f"| {run['workers_cpu_s']:.0f} / {run['fakes_cpu_s']:.0f} | {run['workers_cpu_s'] / run['jobs']:.2f} "
            f"| {run['workers_cpu_s'] / run['wall_s']:.2f} "
            f"| {' + '.join(map(str, run['claims']))} "
            f"| {run['admitted_s']:.1f} | {run['failed']} |"
        )
    lines += ["", "| figure | value |", "|---|---|"]
    for f in summarize(runs):
        lines.append(f"| {f['name']} | {f['value']:.2f} {f['unit']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker process counts, comma-separated (one run each)")
    parser.add_argument("--jobs", type=int, default=150, help="/fill jobs in the wave")
    parser.add_argument("--rate", type=float, default=20.0, help="interactions per second while admitting")
    parser.add_argument("--duration", type=float, default=0.5, help="provider job time, seconds")
    parser.add_argument("--warmup", type=int, default=2, help="jobs each worker runs before the wave")
    parser.add_argument("--concurrency", type=int, default=400, help="REPLICATE_MAX_CONCURRENCY")
    parser.add_argument("--worker-max-jobs", type=int, default=50, help="WORKER_MAX_JOBS (jobs one worker holds)")
    parser.add_argument("--limit", type=float, default=900.0, help="seconds the wave may take before failing")
    parser.add_argument("--database-url", help="DATABASE_URL for every process (PostgreSQL), instead of SQLite")
    parser.add_argument("--json", action="store_true", help="print raw results and figures as JSON")
    args = parser.parse_args()
    args.counts = [int(n) for n in args.workers.split(",") if n.strip()]
    load = os.getloadavg()
    runs = run(args)
    if args.json:
        print(json.dumps({"load_average": load, "runs": runs, "figures": summarize(runs)}))
    else:
        print(render(runs, args, load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
