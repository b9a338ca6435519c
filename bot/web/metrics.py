"""Prometheus metrics: what the lifecycle does, read at scrape time, plus provider call timings and failures.

Job counts come from the database and the runner (`Runner.live`), so they cannot drift from the truth. Provider
latency and failures are measured by wrapping each provider client once (`Instrumented`), not by the lifecycle.
Each server has its own registry, so several bots in one process (tests) never share counters.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bot.errors import ProviderError
from bot.lifecycle.runner import Runner
from bot.lifecycle.states import State
from bot.providers.base import Callback, Handle, Output, Provider, ProviderJob, Status
from bot.storage import Storage
from bot.web.hooks import Delivery

T = TypeVar("T")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The bot's metrics in their own registry."""

    def __init__(self, storage: Storage, runner: Runner) -> None:
        self.storage = storage
        self.runner = runner
        self.registry = CollectorRegistry()
        self.jobs = Gauge("fillbot_jobs", "Jobs on record, by state", ["state"], registry=self.registry)
        self.live = Gauge("fillbot_live_jobs", "Jobs this process runs now, by provider and state",
                          ["provider", "state"], registry=self.registry)
        self.queue = Gauge("fillbot_queue_length", "Jobs waiting for a provider slot in this process",
                           ["provider"], registry=self.registry)
        self.latency = Histogram("fillbot_provider_seconds", "Provider API call duration", ["provider", "call"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.failures = Counter("fillbot_provider_failures", "Provider API call failures, by kind",
                                ["provider", "kind"], registry=self.registry)
        self.webhooks = Counter("fillbot_webhooks", "Webhook deliveries, by provider and outcome",
                                ["provider", "outcome"], registry=self.registry)

    def instrument(self, providers: MutableMapping[str, Provider]) -> None:
        """Wrap every provider client in place (once) so its calls are timed and its failures counted."""
        for name, provider in providers.items():
            if not isinstance(provider, Instrumented):
                providers[name] = Instrumented(provider, self)

    async def scrape(self) -> bytes:
        """Refresh the read-at-scrape gauges, then render everything in Prometheus' text format."""
        for state in State:
            self.jobs.labels(state.value).set(await self.storage.count_jobs(since=0.0, statuses=(state.value,)))
        live = Tally((job.record.provider, job.state.value) for job in self.runner.live.values())
        self.live.clear()
        for (provider, status), count in live.items():
            self.live.labels(provider, status).set(count)
        for provider in self.runner.service.providers:
            self.queue.labels(provider).set(live.get((provider, State.QUEUED.value), 0))
        return generate_latest(self.registry)


class Instrumented(Provider):
    """A provider client with its calls timed and its failures counted; behaves exactly like the one it wraps."""

    def __init__(self, inner: Provider, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.name = inner.name
        self.supports_cancel = inner.supports_cancel

    async def _timed(self, call: str, work: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await work()
        except ProviderError as exc:
            self.metrics.failures.labels(self.name, exc.kind).inc()
            raise
        finally:
            self.metrics.latency.labels(self.name, call).observe(time.perf_counter() - started)

    async def submit(self, job: ProviderJob) -> tuple[Handle, Status]:
        return await self._timed("submit", lambda: self.inner.submit(job))

    async def poll(self, handle: Handle) -> Status:
        return await self._timed("poll", lambda: self.inner.poll(handle))

    async def download(self, output: Output) -> bytes:
        return await self._timed("download", lambda: self.inner.download(output))

    async def cancel(self, handle: Handle) -> None:
        await self._timed("cancel", lambda: self.inner.cancel(handle))

    async def settle(self, handle: Handle) -> None:
        await self.inner.settle(handle)

    def fallback_poll(self, handle: Handle) -> float | None:
        return self.inner.fallback_poll(handle)

    async def verify_webhook(self, callback: Callback, body: bytes, headers: Mapping[str, str]) -> Delivery | None:
        return await self.inner.verify_webhook(callback, body, headers)

    async def aclose(self) -> None:
        await self.inner.aclose()
