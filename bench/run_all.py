"""Every benchmark in one command: preprocessing, provider clients, webhooks, the bot and its job workers under
load, repeated, medians.

Run: .venv/bin/python bench/run_all.py [--quick] [--runs N] [--out PATH]

- default: 3 runs of each benchmark at full size (about 20 minutes on 2 cores, plus about 3.5 minutes a run for
  the job workers);
- --quick: one run of each, small loads and short jobs (about a minute), to check the benchmarks work;
- --smoke: the smallest run that still produces every row, benchmarks in parallel (the test suite uses it).

Each benchmark runs as its own process, one after the other (except --smoke), so they do not steal CPU from
each other. The table (figure, median over runs, range, target, result) is printed and written to
bench/results/latest.md (gitignored), with the raw figures in latest.json next to it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import RESULTS, machine_lines  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "full": {
        "runs": 3,
        "preprocess": ["--runs", "15"],
        "providers": ["--reps", "5", "--durations", "2,10"],
        "bot": [],
        "webhooks": [],
        "workers": [],
    },
    "quick": {
        "runs": 1,
        "preprocess": ["--runs", "3"],
        "providers": ["--reps", "1", "--durations", "1,2"],
        "bot": ["--loads", "20", "--reps", "2", "--long-reps", "1", "--single-duration", "1", "--long-duration", "2",
                "--load-duration", "2", "--probes", "5"],
        "webhooks": ["--duration", "2", "--jobs", "1"],
        "workers": ["--jobs", "20"],
    },
    "smoke": {
        "runs": 1,
        "parallel": True,
        "preprocess": ["--runs", "2"],
        "providers": ["--reps", "1", "--durations", "0.5,1"],
        "bot": ["--loads", "4", "--reps", "1", "--long-reps", "1", "--single-duration", "0.5", "--long-duration", "1",
                "--load-duration", "1", "--probes", "1", "--parallel"],
        "webhooks": ["--duration", "0.5", "--jobs", "1"],
        "workers": ["--jobs", "4", "--workers", "1", "--warmup", "1"],
    },
}

# Rows every mode produces; a run missing one is a broken benchmark.
REQUIRED_KEYS = (
    "preprocess.1440.ms",
    "preprocess.1440.rss",
    "preprocess.4000.ms",
    "preprocess.4000.rss",
    "providers.ratio_wait.short",
    "providers.ratio_wait.long",
    "providers.ratio_run.long",
    "providers.requests.long",
    "providers.ready.short",
    "providers.ready.long",
    "bot.ack_p99.1",
    "bot.ack_p99.max",
    "bot.lag_p99.max",
    "bot.overhead",
    "bot.overhead_jpeg",
    "bot.edit_delay.1",
    "bot.edit_delay.max",
    "bot.requests.short",
    "bot.requests.long",
    "bot.memory.max",
    "bot.memory_per_job.max",
    "bot.failed",
    *(f"{figure}.{provider}" for provider in ("replicate", "bfl", "wavespeed")
      for figure in ("webhooks.polls", "webhooks.confirm", "webhooks.edit", "polling.polls", "polling.edit")),
    "workers.jobs_per_s.1",
    "workers.edit_p50.1",
    "workers.edit_p90.1",
    "workers.cpus",
    "workers.failed",
)

# A row of bench_preprocess's main table: case | upload (MB) | median ms | p90 ms | target ms | peak extra RSS MiB
_PREPROCESS_ROW = re.compile(r"^\| (?P<case>(?P<size>\d+)x\d+ [^|]+?) \| [\d.]+ MB \| (?P<median>[\d.]+) \| [\d.]+ "
                             r"\| (?P<target>[\d.]+) \| (?P<rss>[\d.]+) \|")
_PREPROCESS_MEMORY = re.compile(r"Memory target: <= ([\d.]+) MiB")


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(BENCH / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):  # bench_preprocess exits 1 when a target is missed
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"{' '.join(command)} failed with exit code {done.returncode}")
    return done


def preprocess(args: list[str]) -> list[dict[str, Any]]:
    out = _run("bench_preprocess.py", args).stdout
    memory = _PREPROCESS_MEMORY.search(out)
    limit = float(memory.group(1)) if memory else None
    figures = []
    for line in out.splitlines():
        row = _PREPROCESS_ROW.match(line)
        if row is None:
            continue
        size, case = row["size"], row["case"]
        figures.append({"key": f"preprocess.{size}.ms", "name": f"preprocess: {case}, median", "unit": "ms",
                        "value": float(row["median"]), "limit": float(row["target"])})
        figures.append({"key": f"preprocess.{size}.rss", "name": f"preprocess: {case}, peak extra RSS", "unit": "MiB",
                        "value": float(row["rss"]), "limit": limit})
    return figures


def json_bench(script: str, args: list[str]) -> list[dict[str, Any]]:
    out = _run(script, [*args, "--json"]).stdout
    return list(json.loads(out.strip().splitlines()[-1])["figures"])


def one_run(mode: dict[str, Any]) -> list[dict[str, Any]]:
    jobs: list[Callable[[], list[dict[str, Any]]]] = [
        lambda: preprocess(mode["preprocess"]),
        lambda: json_bench("bench_providers.py", mode["providers"]),
        lambda: json_bench("bench_bot.py", mode["bot"]),
        lambda: json_bench("bench_webhooks.py", mode["webhooks"]),
        lambda: json_bench("bench_workers.py", mode["workers"]),
    ]
    workers = len(jobs) if mode.get("parallel") else 1
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [figure for future in futures for figure in future.result()]


def aggregate(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Median of each figure over the runs, in first-seen order."""
    rows: dict[str, dict[str, Any]] = {}
    for figures in runs:
        keys = [f["key"] for f in figures]
        if len(keys) != len(set(keys)):
            raise RuntimeError(f"a benchmark reported a figure twice: {sorted(k for k in keys if keys.count(k) > 1)}")
        for f in figures:
            row = rows.setdefault(f["key"], {**f, "values": []})
            row["values"].append(float(f["value"]))
    for row in rows.values():
        row["value"] = statistics.median(row["values"])
    return list(rows.values())


def verdict(row: dict[str, Any]) -> str:
    if row["limit"] is None:
        return "info"
    return "pass" if row["value"] <= row["limit"] else "FAIL"


def _number(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def render(rows: list[dict[str, Any]], mode_name: str, runs: int) -> str:
    lines = [f"# fillbot benchmarks ({mode_name})", ""]
    lines += machine_lines()
    lines += [
        f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"- {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {runs} run(s) of each benchmark, medians (range over runs)",
        "- bot and provider benchmarks: fake Discord and FakeReplicate (honouring `Prefer: wait`) on 127.0.0.1 in "
        "their own processes; 1440x1440 RGBA PNG uploads (3.5 MB), a file of its own per job; single jobs also of a "
        "1440x1440 JPEG (0.4 MB) with a mask",
        "",
        "| figure | median | range | target | result |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        unit = f" {row['unit']}" if row["unit"] else ""
        spread = f"{_number(min(row['values']))}–{_number(max(row['values']))}" if len(row["values"]) > 1 else "-"
        target = "info" if row["limit"] is None else f"<= {row['limit']:g}{unit}"
        lines.append(f"| {row['name']} | {_number(row['value'])}{unit} | {spread} | {target} | {verdict(row)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one small run of each benchmark (about a minute)")
    size.add_argument("--smoke", action="store_true", help="the smallest complete run, benchmarks in parallel")
    parser.add_argument("--runs", type=int, help="runs of each benchmark (default 3; 1 with --quick/--smoke)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.md", help="where to write the table")
    args = parser.parse_args()
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    runs = args.runs or mode["runs"]

    results = []
    for index in range(runs):
        print(f"run {index + 1}/{runs} ({mode_name})...", file=sys.stderr, flush=True)
        results.append(one_run(mode))
    rows = aggregate(results)
    table = render(rows, mode_name, runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(table)
    missing = [key for key in REQUIRED_KEYS if key not in {row["key"] for row in rows}]
    if missing:
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
