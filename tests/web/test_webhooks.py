"""The web side against real provider clients, a real lifecycle on SQLite and fake providers that call back:
verified webhooks wake jobs (no status polls while they arrive in time), bad ones are refused and change
nothing, a lost one still ends in a result through the slow fallback poll; /healthz and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.config import load_settings
from bot.errors import ConfigError
from bot.lifecycle.jobs import Lifecycle
from bot.lifecycle.states import State
from bot.providers.base import Callback, Handle
from bot.service import FillService
from bot.storage import Storage
from bot.web.hooks import Delivery, WebhookHub, verify_bfl, verify_wavespeed
from bot.web.server import WebServer
from tests.core.test_lifecycle import Process, replicate_env, settings_for, until
from tests.fakes.bfl_server import FakeBFL
from tests.fakes.replicate_server import FakeReplicate
from tests.fakes.wavespeed_server import FakeWaveSpeed, WebhookMode


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def web_process(
    db: Path, *, fallback: float = 30.0, port: int | None = None, **env: str
) -> AsyncIterator[tuple[Process, WebServer]]:
    port = port or _free_port()
    settings = settings_for(db, PUBLIC_URL=f"http://127.0.0.1:{port}", WEB_PORT=str(port),
                            WEBHOOK_FALLBACK_POLL=str(fallback), **env)
    async with FillService(settings) as service, await Storage.open(db) as storage:
        lifecycle = Lifecycle(settings, storage, service)
        assert settings.web is not None
        server = WebServer(settings.web, storage=storage, runner=lifecycle.runner, providers=service.providers,
                           gateway_ok=lambda: True)
        await server.start()
        try:
            yield Process(settings, storage, service, lifecycle), server
        finally:
            await lifecycle.aclose()
            await server.stop()


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("url", ["http://example.org", "ftp://127.0.0.1", "https://x.org/?a=1", "nonsense"])
def test_public_url_must_be_https_unless_loopback(url: str) -> None:
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        load_settings({"PUBLIC_URL": url})


def test_web_side_is_off_without_public_url_and_has_defaults_with_it() -> None:
    assert load_settings({}).web is None
    web = load_settings({"PUBLIC_URL": "https://bot.example.org/"}).web
    assert web is not None and (web.public_url, web.host, web.port) == ("https://bot.example.org", "127.0.0.1", 8080)
    assert load_settings({"PUBLIC_URL": "http://localhost:9000"}).web is not None


def test_handle_keeps_its_callback_across_a_restart() -> None:
    handle = Handle("bfl", "job-1", "https://api.bfl.ai/v1/get_result?id=job-1", Callback("tok", "sec"))
    assert Handle.from_json(handle.to_json()) == handle
    assert Handle.from_json(Handle("replicate", "p1").to_json()).callback is None


# ------------------------------------------------------------------------------------------ signature rules
def _wavespeed_headers(secret: str, body: bytes, stamp: int) -> dict[str, str]:
    digest = hmac.new(secret.removeprefix("whsec_").encode(), f"m1.{stamp}.".encode() + body, hashlib.sha256)
    return {"webhook-id": "m1", "webhook-timestamp": str(stamp), "webhook-signature": "v3," + digest.hexdigest()}


def test_wavespeed_scheme_takes_the_raw_key_and_refuses_stale_or_forged() -> None:
    body = b'{"id": "t1", "status": "completed"}'
    now = int(time.time())
    assert verify_wavespeed("whsec_abc", body, _wavespeed_headers("whsec_abc", body, now)) == {
        "id": "t1", "status": "completed"}
    assert verify_wavespeed("whsec_abc", body, _wavespeed_headers("whsec_abc", body, now - 301)) is None
    assert verify_wavespeed("whsec_abc", body, _wavespeed_headers("whsec_xyz", body, now)) is None
    assert verify_wavespeed("whsec_abc", body + b" ", _wavespeed_headers("whsec_abc", body, now)) is None


def test_bfl_scheme_is_an_hmac_of_the_body_with_the_job_secret() -> None:
    body = b'{"id": "j", "status": "Ready"}'
    good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert verify_bfl("s3cret", body, {"X-BFL-Signature": good}) is not None
    assert verify_bfl("other", body, {"X-BFL-Signature": good}) is None
    assert verify_bfl("s3cret", body, {}) is None


async def test_hub_drops_repeats_and_spaces_out_progress_wakes() -> None:
    now = [100.0]
    hub = WebhookHub("https://bot.example.org", fallback_poll=30, wake_gap=2.0, clock=lambda: now[0])
    callback = hub.issue("replicate")
    assert hub.url("replicate", callback).startswith("https://bot.example.org/hooks/replicate/")
    assert hub.find("replicate", callback.token) == callback and hub.find("bfl", callback.token) is None
    assert hub.deliver("replicate", callback, Delivery("a", final=False))
    assert not hub.deliver("replicate", callback, Delivery("a", final=False))  # repeat
    assert not hub.deliver("replicate", callback, Delivery("b", final=False))  # progress too soon
    # The first progress that tells when the job ends is read at once (it times the last poll); later ones wait.
    assert hub.deliver("replicate", callback, Delivery("t1", final=False, timed=True))
    assert not hub.deliver("replicate", callback, Delivery("t2", final=False, timed=True))
    now[0] += 2.5
    assert hub.deliver("replicate", callback, Delivery("t3", final=False, timed=True))  # after the gap
    assert hub.deliver("replicate", callback, Delivery("c", final=True))  # the end never waits
    await asyncio.wait_for(hub.news("replicate", callback), 1)
    now[0] += 7201
    assert hub.find("replicate", callback.token) is None  # expired


# -------------------------------------------------------------------------------------------- end to end
def _polls(fake: FakeReplicate) -> int:
    return fake.count("GET", "get")


async def test_replicate_webhooks_wake_the_job_and_no_timer_polls_run(tmp_path: Path) -> None:
    async with FakeReplicate(duration=1.0, honour_wait=False) as fake, \
            web_process(tmp_path / "bot.db", **replicate_env(fake)) as (p, _):
        job_id = await p.submit()
        ending = await p.ending(job_id)
        assert ending.state is State.SUCCEEDED and ending.finished is not None
        # `start`, one `logs` event half-way (Replicate sends them at most every 0.5 s) and `completed`.
        assert fake.webhook_answers == [200, 200, 200]
        # One GET per wake (a busy machine may merge them), the first progress read at once: its reading may
        # time one poll at the predicted end.
        assert 1 <= _polls(fake) <= 4


async def test_forged_or_lost_webhooks_change_nothing_and_the_fallback_poll_delivers(tmp_path: Path) -> None:
    async with FakeReplicate(duration=0.3, honour_wait=False) as fake, \
            web_process(tmp_path / "bot.db", fallback=1.0, **replicate_env(fake)) as (p, _):
        fake.webhook = "forged"
        job_id = await p.submit()
        assert (await p.ending(job_id)).state is State.SUCCEEDED
        assert fake.webhook_answers == [401, 401]
        fake.webhook = "lost"
        job_id = await p.submit()
        assert (await p.ending(job_id)).state is State.SUCCEEDED


async def test_bfl_webhook_with_a_per_job_secret(tmp_path: Path) -> None:
    async with FakeBFL(duration=0.5) as fake, \
            web_process(tmp_path / "bot.db", BFL_API_KEY=fake.key, BFL_BASE_URL=fake.base_url) as (p, _):
        job_id = await p.submit(provider="bfl")
        assert (await p.ending(job_id)).state is State.SUCCEEDED
        assert fake.webhook_answers == [200]
        assert len(fake.requests_to("poll")) == 1
        bodies = [r.body for r in fake.requests_to("api") if r.method == "POST"]
        assert bodies[0]["webhook_url"].split("/hooks/bfl/")[1] not in bodies[0]["webhook_secret"]


def wavespeed_env(fake: FakeWaveSpeed) -> dict[str, str]:
    return {"WAVESPEED_API_KEY": fake.key, "WAVESPEED_BASE_URL": fake.base_url}


def _wavespeed_polls(fake: FakeWaveSpeed) -> int:
    return sum(1 for r in fake.requests_to("api") if r.method == "GET" and r.path.endswith("/result"))


async def test_wavespeed_webhook_wakes_the_job_and_no_timer_polls_run(tmp_path: Path) -> None:
    async with FakeWaveSpeed(duration=1.0) as fake, \
            web_process(tmp_path / "bot.db", **wavespeed_env(fake)) as (p, _):
        job_id = await p.submit(provider="wavespeed")
        ending = await p.ending(job_id)
        assert ending.state is State.SUCCEEDED and ending.finished is not None
        assert fake.webhook_answers == [200]
        assert _wavespeed_polls(fake) == 1  # the one authenticated GET the wake asks for; no timed poll
        (submit,) = [r for r in fake.requests_to("api") if r.method == "POST"]
        assert p.settings.web is not None
        assert submit.query["webhook"].startswith(f"{p.settings.web.public_url}/hooks/wavespeed/")
        secrets_fetched = [r for r in fake.requests_to("api") if r.path.endswith("/webhook/secret")]
        assert len(secrets_fetched) == 1 and secrets_fetched[0].headers["authorization"] == f"Bearer {fake.key}"
        assert not fake.requests_to("delivery")[0].headers.get("authorization")  # outputs fetched without the key

        job_id = await p.submit(provider="wavespeed")  # the secret is fetched once per process
        assert (await p.ending(job_id)).state is State.SUCCEEDED
        assert len([r for r in fake.requests_to("api") if r.path.endswith("/webhook/secret")]) == 1


@pytest.mark.parametrize("mode", ["forged", "stale"])
async def test_wavespeed_forged_or_stale_webhooks_change_nothing_and_the_fallback_poll_delivers(
    tmp_path: Path, mode: WebhookMode
) -> None:
    async with FakeWaveSpeed(duration=0.3) as fake, \
            web_process(tmp_path / "bot.db", fallback=1.0, **wavespeed_env(fake)) as (p, _):
        fake.webhook = mode
        job_id = await p.submit(provider="wavespeed")
        assert (await p.ending(job_id)).state is State.SUCCEEDED
        assert fake.webhook_answers == [401]


async def test_unknown_foreign_unsigned_and_oversized_deliveries_are_refused(tmp_path: Path) -> None:
    async with FakeReplicate(duration=0.2, honour_wait=False) as fake, \
            web_process(tmp_path / "bot.db", **replicate_env(fake)) as (_, server):
        base = server.settings.public_url
        callback = server.hub.issue("replicate")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/hooks/replicate/not-a-token", data=b"{}") as r:
                assert r.status == 404
            async with session.post(f"{base}/hooks/bfl/{callback.token}", data=b"{}") as r:
                assert r.status == 404  # a token only works for the provider it was made for
            async with session.post(f"{base}/hooks/replicate/{callback.token}", data=b"{}") as r:
                assert r.status == 401
            too_big = b"x" * (server.max_webhook_bytes + 1)
            async with session.post(f"{base}/hooks/replicate/{callback.token}", data=too_big) as r:
                assert r.status == 413


async def test_healthz_and_metrics_while_a_job_runs(tmp_path: Path) -> None:
    async with FakeReplicate(duration=1.0, honour_wait=False) as fake, \
            web_process(tmp_path / "bot.db", **replicate_env(fake)) as (p, server):
        base = server.settings.public_url
        job_id = await p.submit()
        live = p.lifecycle.runner.live
        await until(lambda: job_id in live and live[job_id].state in (State.STARTING, State.RUNNING))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics") as r:
                text = await r.text()
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            assert 'fillbot_live_jobs{provider="replicate",state="' in text
            assert 'fillbot_queue_length{provider="replicate"} 0.0' in text
            assert 'fillbot_provider_seconds_count{call="submit",provider="replicate"} 1.0' in text
            await p.ending(job_id)
            async with session.get(f"{base}/metrics") as r:
                assert 'fillbot_jobs{state="succeeded"} 1.0' in await r.text()
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 200 and (await r.json())["ok"] is True
            server.gateway_ok = lambda: False
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 503 and (await r.json())["problems"] == ["Discord gateway not connected"]
            await p.storage.close()
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 503 and "database unreachable" in (await r.json())["problems"][0]


async def test_a_delivery_before_a_restarted_bot_resumes_its_job_wakes_it_instead_of_a_404(tmp_path: Path) -> None:
    """A restarted bot's web side expects the callbacks of the jobs in flight from its start: a provider calling
    before the job was taken over (its old lease still running) is answered 200 and the job wakes at once."""
    from tests.core.test_storage import job as stored_job

    callback = Callback("tok-" + "a" * 30, "per-job-secret")
    handle = Handle(provider="bfl", job_id="bfl-job-1", callback=callback)
    async with await Storage.open(tmp_path / "bot.db") as storage:
        await storage.create_job(dataclasses.replace(stored_job("j1", status="running"), handle=handle.to_json()))
    async with FakeBFL(duration=0.5) as fake, \
            web_process(tmp_path / "bot.db", BFL_API_KEY=fake.key, BFL_BASE_URL=fake.base_url) as (_, server):
        assert server.settings is not None
        body = b'{"id": "bfl-job-1", "status": "Ready"}'
        signature = "sha256=" + hmac.new(callback.secret.encode(), body, hashlib.sha256).hexdigest()  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            url = f"{server.settings.public_url}/hooks/bfl/{callback.token}"
            async with session.post(url, data=body, headers={"X-BFL-Signature": signature}) as answer:
                assert answer.status == 200
            async with session.post(f"{server.settings.public_url}/hooks/bfl/unknown-token", data=body,
                                    headers={"X-BFL-Signature": signature}) as answer:
                assert answer.status == 404  # a token of no job in flight is still unknown
        await asyncio.wait_for(server.hub.news("bfl", callback), 5)  # already woken: returns at once
