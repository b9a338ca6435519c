"""A job waiting on its provider's webhook survives a crash: a real bot process (`webhook_child`) submits it and
is killed with SIGKILL, a new bot starts on the same database and address, takes the job over when the dead
one's lease runs out, re-arms its callback, and is woken by the provider's webhook (the fallback poll is set far
beyond the test's deadline, so nothing else could end it in time). The result is delivered exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.lifecycle.states import State
from bot.storage import JobRecord
from tests.core.test_lifecycle import RecordingSink, replicate_env, until
from tests.fakes.bfl_server import FakeBFL
from tests.fakes.replicate_server import FakeReplicate
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.web.test_webhooks import _free_port, wavespeed_env, web_process

ROOT = Path(__file__).resolve().parents[2]
DURATION = 5.0  # the provider's job: long enough for the child to die and the new bot to take it over
FALLBACK = 120.0  # the slow safety poll, far beyond every deadline below

Fake = FakeReplicate | FakeBFL | FakeWaveSpeed


@asynccontextmanager
async def fake_provider(name: str) -> AsyncIterator[tuple[Fake, dict[str, str]]]:
    if name == "replicate":
        # No progress in the logs, so no `logs` events: the deliveries are the start and the end.
        async with FakeReplicate(duration=DURATION, honour_wait=False, logs="none") as rep:
            yield rep, replicate_env(rep)
    elif name == "bfl":
        async with FakeBFL(duration=DURATION) as bfl:
            yield bfl, {"BFL_API_KEY": bfl.key, "BFL_BASE_URL": bfl.base_url}
    else:
        async with FakeWaveSpeed(duration=DURATION) as ws:
            yield ws, wavespeed_env(ws)


def creates(fake: Fake) -> int:
    if isinstance(fake, FakeReplicate):
        return fake.count("POST", "create")
    return sum(1 for r in fake.requests if r.server == "api" and r.method == "POST")


async def killed_child(tmp_path: Path, provider: str, port: int, env: dict[str, str], fake: Fake) -> str:
    """Run a bot process until the provider has its job (and the child has answered Replicate's `start` event,
    which would otherwise be retried into the next bot), then SIGKILL it; the job's id."""
    config = tmp_path / "child.json"
    config.write_text(json.dumps({"db": str(tmp_path / "bot.db"), "port": port, "fallback": FALLBACK,
                                  "provider": provider, "env": {**env, "JOB_LEASE_SECONDS": "1.0"}}))
    with (tmp_path / "child.log").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.web.webhook_child", str(config), cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=err,
        )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if isinstance(fake, FakeReplicate):
            await until(lambda: bool(fake.webhook_answers), within=10, what="the start event answered")
    finally:
        proc.kill()  # SIGKILL: no clean shutdown, whatever state it is in
        await proc.wait()
    assert line, (tmp_path / "child.log").read_text()[-3000:]
    return line.decode().strip()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("provider", ["replicate", "bfl", "wavespeed"])
async def test_a_job_waiting_on_a_webhook_is_woken_after_a_restart(tmp_path: Path, provider: str) -> None:
    port = _free_port()
    async with fake_provider(provider) as (fake, env):
        job_id = await killed_child(tmp_path, provider, port, env, fake)
        answers_before = list(fake.webhook_answers)
        assert 200 not in answers_before[1:]  # nothing final reached the dead process
        async with web_process(tmp_path / "bot.db", port=port, fallback=FALLBACK,
                               **{**env, "JOB_LEASE_SECONDS": "1.0"}) as (p, server):

            async def sink_for(record: JobRecord) -> RecordingSink:
                sink = p.sinks[record.id] = RecordingSink()
                return sink

            p.lifecycle.serve("cli", sink_for)
            await until(lambda: job_id in p.sinks, within=15, what="taken over")
            ending = await p.ending(job_id, within=30)  # exactly one ending (Process.ending checks)
            assert ending.state is State.SUCCEEDED and ending.finished is not None
            # The final delivery woke the new bot, even one that came before the job was taken over: the web side
            # expects the callbacks of the jobs in flight from its start.
            assert fake.webhook_answers[len(answers_before):] == [200]
            scraped = (await server.metrics.scrape()).decode()
            assert f'fillbot_webhooks_total{{outcome="woke",provider="{provider}"}} 1.0' in scraped
            record = await p.storage.get_job(job_id)
            assert record is not None and record.delivered_at is not None
            assert creates(fake) == 1  # resumed, never created again
            assert await p.storage.count_jobs(since=0) == 1
