"""Our Replicate client against the official `replicate` Python client, on the same local FakeReplicate.

Run: .venv/bin/python bench/bench_providers.py [--reps 5] [--durations 2,10] [--json]

One prepared 1440x1440 fill job (the bench_preprocess picture) is run repeatedly against a FakeReplicate in a
child process that honours `Prefer: wait` (like api.replicate.com), with a fixed job duration:

- ours: the job lifecycle (`bot/lifecycle`: record, create without `Prefer: wait` so the job can be cancelled and
  its progress shown, poll — every 2 s at most while it runs — download, store, composite and encode, deliver to
  a command-line sink). "ours" times stop when the output bytes are downloaded (the point the official client's
  flow also ends); `+finish` adds our storing, composite, encode and delivery.
- official `create+wait`: `models.predictions.async_create` + `Prediction.async_wait()` (polls every 0.5 s)
  + `FileOutput.aread()` of each output.
- official `run`: `async_run()` (sends `Prefer: wait`) + `FileOutput.aread()`.

Every client downloads the output. The fake knows when a prediction completes (creation + duration on the
system-wide monotonic clock); "ready delay" is output downloaded minus that instant. Requests per job count
API (create/get/cancel) and CDN (file) requests in the fake's log. Clients run interleaved, repetition by
repetition, so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from _common import machine_lines, median, photo_1440  # noqa: E402
from _fake_servers import FakeProcess  # noqa: E402
from replicate.client import Client  # noqa: E402
from replicate.helpers import FileOutput  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.lifecycle.jobs import Lifecycle  # noqa: E402
from bot.lifecycle.sink import Ending, Progress, Receipt  # noqa: E402
from bot.lifecycle.states import State  # noqa: E402
from bot.params import (  # noqa: E402
    FillRequest,
    MaskOptions,
    request_to_json,
)
from bot.pipeline import Prepared  # noqa: E402
from bot.providers.base import Output  # noqa: E402
from bot.providers.replicate import ReplicateProvider  # noqa: E402
from bot.service import FillService  # noqa: E402
from bot.storage import JobRecord, Storage  # noqa: E402

MODEL = "black-forest-labs/flux-fill-dev"
CLIENTS = ("ours", "official create+wait", "official run")
TARGET_RATIO = 1.1
TARGET_REQUESTS_10S = 8  # create + polls (every 2 s at most while running) + download: issue 9
TARGET_READY_MS = 300.0


class _Sink:
    """Takes the ending as the command line does, noting when it arrived."""

    max_total_bytes = None

    def __init__(self) -> None:
        self.ending: Ending | None = None
        self.at = 0.0

    def show(self, progress: Progress) -> None:
        return None

    async def deliver(self, ending: Ending) -> Receipt:
        self.ending, self.at = ending, time.monotonic()
        return Receipt(True)


class Bench:
    def __init__(
        self, fake: FakeProcess, service: FillService, lifecycle: Lifecycle, prepared: Prepared, request: FillRequest
    ) -> None:
        self.fake = fake
        self.service = service
        self.lifecycle = lifecycle
        self.prepared = prepared
        self.request = request
        provider = service.providers["replicate"]
        assert isinstance(provider, ReplicateProvider)
        self.inputs = provider._input(prepared.job)  # the exact body our client sends, for the official one
        self.official = Client(api_token=str(fake.info["token"]), base_url=str(fake.info["origin"]))
        self._downloaded = 0.0
        original = provider.download

        async def timed_download(output: Output) -> bytes:
            data = await original(output)
            self._downloaded = time.monotonic()
            return data

        provider.download = timed_download  # type: ignore[method-assign]

    async def ours(self) -> dict[str, float]:
        start = time.monotonic()
        record = await self.lifecycle.record(JobRecord(
            id=self.service.new_job_id(), kind="fill", front="cli", user_id=0, guild_id=None, channel_id=0,
            provider="replicate", model=self.request.spec.model, request=request_to_json(self.request),
            prompt=self.request.prompt, application_id=0,
        ))
        sink = _Sink()
        await self.lifecycle.queue(record, self.prepared, sink)
        await self.lifecycle.wait(record.id)
        if sink.ending is None or sink.ending.state is not State.SUCCEEDED or sink.ending.finished is None:
            state = sink.ending.state if sink.ending else "undelivered"
            raise RuntimeError(f"our job ended {state}: {sink.ending.message if sink.ending else ''}")
        return {"start": start, "ready": self._downloaded, "finished": sink.at}

    async def official_wait(self) -> dict[str, float]:
        start = time.monotonic()
        prediction = await self.official.models.predictions.async_create(model=MODEL, input=self.inputs)
        await prediction.async_wait()
        if prediction.status != "succeeded":
            raise RuntimeError(f"official prediction ended {prediction.status}: {prediction.error}")
        urls = prediction.output if isinstance(prediction.output, list) else [prediction.output]
        for url in urls:
            await FileOutput(str(url), self.official).aread()
        return {"start": start, "ready": time.monotonic()}

    async def official_run(self) -> dict[str, float]:
        start = time.monotonic()
        outputs: Any = await self.official.async_run(MODEL, input=self.inputs)
        for output in outputs if isinstance(outputs, list) else [outputs]:
            # transform_output only wraps https: URLs in FileOutput; the fake CDN is plain http.
            await (FileOutput(output, self.official) if isinstance(output, str) else output).aread()
        return {"start": start, "ready": time.monotonic()}

    async def one(self, client: str) -> dict[str, float]:
        run: Callable[[], Awaitable[dict[str, float]]] = {
            "ours": self.ours,
            "official create+wait": self.official_wait,
            "official run": self.official_run,
        }[client]
        self.fake.call("reset")
        times = await run()
        log = self.fake.call("replicate_log")
        predictions = log["predictions"]
        if len(predictions) != 1:
            raise RuntimeError(f"{client}: expected one prediction, the fake saw {len(predictions)}")
        api = sum(1 for r in log["requests"] if r["server"] == "api")
        cdn = sum(1 for r in log["requests"] if r["server"] == "cdn")
        row = {
            "e2e": times["ready"] - times["start"],
            "ready_delay": times["ready"] - predictions[0]["completed"],
            "api": float(api),
            "cdn": float(cdn),
            "requests": float(api + cdn),
        }
        if "finished" in times:
            row["e2e_finish"] = times["finished"] - times["start"]
            row["finish_delay"] = times["finished"] - predictions[0]["completed"]
        return row


async def measure(durations: list[float], reps: int) -> dict[str, Any]:
    picture = photo_1440()
    results: dict[str, Any] = {}
    with FakeProcess("replicate", duration=durations[0], honour_wait=True) as fake, \
            tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            {
                "REPLICATE_API_TOKEN": str(fake.info["token"]),
                "REPLICATE_BASE_URL": str(fake.info["base_url"]),
                "DATABASE_PATH": str(Path(tmp) / "bench.db"),
                "ALLOW_PRIVATE_DOWNLOADS": "true",  # the fake serves results from 127.0.0.1
            }
        )
        async with FillService(settings) as service, await Storage.open(settings.database_target) as storage:
            lifecycle = Lifecycle(settings, storage, service)
            request = FillRequest.build("replicate", "a bench of flowers", {}, mask=MaskOptions())
            prepared = await service.prepare_fill(picture, None, request)
            bench = Bench(fake, service, lifecycle, prepared, request)
            try:
                fake.call("configure", duration=0.3)
                for client in CLIENTS:  # warm-up: connections, imports, first-call costs
                    await bench.one(client)
                for duration in durations:
                    fake.call("configure", duration=duration)
                    rows: dict[str, list[dict[str, float]]] = {c: [] for c in CLIENTS}
                    for _ in range(reps):
                        for client in CLIENTS:
                            rows[client].append(await bench.one(client))
                    results[f"{duration:g}"] = {
                        client: {key: median([r[key] for r in runs]) for key in runs[0]}
                        for client, runs in rows.items()
                    }
            finally:
                await bench.official._async_client.aclose()
    return results


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Figures as run_all reports them: key, name, value, unit and limit (value <= limit passes; None = info)."""
    figures: list[dict[str, Any]] = []

    def add(key: str, name: str, value: float, unit: str, limit: float | None) -> None:
        figures.append(
            {"key": f"providers.{key}", "name": f"providers: {name}", "value": value, "unit": unit, "limit": limit}
        )

    durations = sorted(results, key=float)
    for index, duration in enumerate(durations):
        role = "long" if index == len(durations) - 1 and len(durations) > 1 else "short"
        clients = results[duration]
        ours = clients["ours"]
        add(f"ratio_wait.{role}", f"time ours/official create+wait(), {duration} s job",
            ours["e2e"] / clients["official create+wait"]["e2e"], "x", TARGET_RATIO)
        add(f"ratio_run.{role}", f"time ours/official run(), {duration} s job",
            ours["e2e"] / clients["official run"]["e2e"], "x", TARGET_RATIO)
        add(f"requests.{role}", f"our requests per job (API + CDN), {duration} s job", ours["requests"], "",
            TARGET_REQUESTS_10S if role == "long" else None)
        add(f"official_requests.{role}", f"official create+wait() requests per job, {duration} s job",
            clients["official create+wait"]["requests"], "", None)
        add(f"ready.{role}", f"completion -> our output downloaded, {duration} s job", ours["ready_delay"] * 1000,
            "ms", TARGET_READY_MS)
        add(f"finish.{role}", f"completion -> our finished picture (+composite, encode), {duration} s job",
            ours["finish_delay"] * 1000, "ms", None)
    return figures


def render(results: dict[str, Any], reps: int) -> str:
    lines = ["# Provider client benchmark: ours vs the official replicate client", ""]
    lines += machine_lines()
    lines += [
        f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"- {reps} repetitions per client and duration, interleaved; medians. FakeReplicate in a child process, "
        "honour_wait=True; 1440x1440 fill job (JPEG image + PNG mask data URIs, ~1 MB body)",
        "",
        "| job | client | end-to-end s | ready delay ms | +finish s | API requests | CDN requests |",
        "|---|---|---|---|---|---|---|",
    ]
    for duration, clients in results.items():
        for client, row in clients.items():
            finish = f"{row['e2e_finish']:.3f}" if "e2e_finish" in row else "-"
            lines.append(
                f"| {duration} s | {client} | {row['e2e']:.3f} | {row['ready_delay'] * 1000:.0f} | {finish} "
                f"| {row['api']:.0f} | {row['cdn']:.0f} |"
            )
    lines += ["", "| figure | value | target | |", "|---|---|---|---|"]
    for f in summarize(results):
        target = "info" if f["limit"] is None else f"<= {f['limit']:g}"
        mark = "info" if f["limit"] is None else ("ok" if f["value"] <= f["limit"] else "MISSED")
        lines.append(f"| {f['name']} | {f['value']:.2f} {f['unit']} | {target} | {mark} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--durations", default="2,10", help="job durations in seconds, comma-separated")
    parser.add_argument("--json", action="store_true", help="print the raw medians as JSON instead of tables")
    args = parser.parse_args()
    # One warning per job about the ~1 MB body would drown the output; it is reported in the bench notes.
    logging.getLogger("bot.providers.replicate").setLevel(logging.ERROR)
    durations = [float(d) for d in args.durations.split(",") if d.strip()]
    results = asyncio.run(measure(durations, args.reps))
    if args.json:
        print(json.dumps({"results": results, "figures": summarize(results)}))
    else:
        print(render(results, args.reps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
