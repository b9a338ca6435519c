"""Webhooks with job workers: the bot process's web side receives every delivery and relays the ones for jobs
a worker runs over PostgreSQL's notifications; the worker verifies (or, for a large body, trusts the bot
process's check with the account secret) and wakes its job. With the fallback poll at 120 s, only a relayed
webhook can deliver the job within the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.app import create_bot
from bot.lifecycle.jobs import Mode
from tests.discord.conftest import final_reply, mask_for, photo, running, settings_for
from tests.discord.test_crash import assert_delivered_once
from tests.discord.test_workers import workers
from tests.web.test_webhook_restart import creates, fake_provider
from tests.web.test_webhooks import _free_port


@pytest.mark.parametrize("provider", ["replicate", "bfl", "wavespeed"])
async def test_a_workers_job_is_woken_by_its_webhook_through_the_bot_process(
    tmp_path: Path, postgres_url: str, provider: str
) -> None:
    async with fake_provider(provider) as (fake, provider_env):
        port = _free_port()
        env = {**provider_env, "DATABASE_URL": postgres_url, "EXTERNAL_WORKERS": "true", "POLL_INTERVAL": "0.05",
               "PUBLIC_URL": f"http://127.0.0.1:{port}", "WEB_PORT": str(port), "WEBHOOK_FALLBACK_POLL": "120",
               "ALLOW_PRIVATE_DOWNLOADS": "true"}
        front = create_bot(settings_for(tmp_path, **env), edit_interval=0.05)
        async with running(front) as h, workers(h, env, tmp_path, 1) as (worker,):
            assert worker.mode is Mode.WORKER and worker.web is None  # no web server of its own
            sent = await h.dispatch(h.slash("fill", {"prompt": "relayed", "provider": provider}, attachments={
                "image": ("photo.png", photo(), "image/png"), "mask": ("mask.png", mask_for(), "image/png")}))
            message = await final_reply(h, sent, within=30)
            assert_delivered_once(h, message)
            assert creates(fake) == 1
            assert front.web is not None
            scraped = (await front.web.metrics.scrape()).decode()
            assert f'fillbot_webhooks_total{{outcome="relayed",provider="{provider}"}}' in scraped, scraped
