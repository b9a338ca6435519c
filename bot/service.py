"""The core, assembled: provider clients and the picture pipeline behind one object.

Front ends (the Discord cogs, the command line, benchmarks) construct one `FillService` from `Settings`, prepare
pictures with `prepare_*`, hand jobs to the lifecycle (`bot/lifecycle`), and close it with `async with`.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from bot.config import Settings
from bot.errors import UserError
from bot.imaging import Limits
from bot.imaging.spool import PixelSpool
from bot.params import EditRequest, FillRequest, MaskOptions
from bot.picture_pool import PicturePool, Work, usable_cpus
from bot.pipeline import (
    Finished,
    Groundwork,
    JobInputs,
    Prepared,
    finish,
    lay_groundwork,
    prepare_edit,
    prepare_fill,
)
from bot.providers.base import Provider
from bot.providers.http import Downloader
from bot.providers.registry import PROVIDERS

log = logging.getLogger(__name__)

# Provider outputs are pictures of a few MB at most; anything far larger is refused while streaming.
MAX_OUTPUT_BYTES = 50 * 1024 * 1024
MAX_DOWNLOAD_SECONDS = 120.0  # one result file's whole download, within JOB_DEADLINE

T = TypeVar("T")


def build_providers(
    settings: Settings, downloader: Downloader, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, Provider]:
    """One client per provider that has credentials or needs none, made by its registry entry."""
    return {
        name: PROVIDERS[name].client(settings.providers[name], downloader, transport)
        for name in settings.available_providers
    }


class FillService:
    """Owns the long-lived clients; everything heavy on pictures runs in worker threads."""

    def __init__(self, settings: Settings, providers: Mapping[str, Provider] | None = None) -> None:
        self.settings = settings
        # Picture work gets its own pool, one thread per CPU, not the loop's default executor: under a burst the
        # default pool (CPUs + 4 threads) filled with image jobs and starved the event loop and the SQLite thread
        # of CPU and the GIL until acknowledgements missed Discord's 3-second window (bench/bench_bot.py); it
        # also queued the DNS lookups aiohttp and httpx run in that pool behind seconds of image work. Finishing
        # goes before preparing (picture_pool.py).
        self._pictures = PicturePool(usable_cpus())
        self.pixels = PixelSpool(settings.pixel_cache_bytes) if settings.pixel_cache_bytes else None
        self.limits = Limits(max_bytes=settings.max_attachment_bytes, max_pixels=settings.max_image_pixels)
        self.downloader = Downloader(
            max_bytes=MAX_OUTPUT_BYTES,
            deadline=min(settings.job_deadline, MAX_DOWNLOAD_SECONDS),
            allow_private=settings.allow_private_downloads,
        )
        self.providers = dict(providers) if providers is not None else build_providers(settings, self.downloader)

    async def __aenter__(self) -> FillService:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.downloader.aclose()
        await self._pictures.aclose()  # before the spool closes: work under way may still write to it
        if self.pixels is not None:
            self.pixels.close()

    async def in_pool(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Picture work for a new job (checks, preparing), behind any finishing."""
        return await self._pictures.run(Work.PREPARE, fn, *args, **kwargs)

    def check_provider(self, name: str) -> None:
        """Refuse a provider without a client, saying which variable the operator sets to enable it."""
        if name not in self.providers:
            configured = ", ".join(self.providers) or "none"
            entry = PROVIDERS.get(name)
            key = entry.env.key if entry is not None else None
            fix = f"set {key} (in the .env file or the environment) to use it" if key else "it is unknown"
            raise UserError(f"The provider `{name}` is not configured on this bot: {fix}. Available: {configured}.")

    async def prepare_fill(self, image: bytes, mask: bytes | None, request: FillRequest) -> Prepared:
        self.check_provider(request.spec.provider)
        return await self.in_pool(prepare_fill, image, mask, request, self.limits, self.pixels)

    async def prepare_edit(self, image: bytes, request: EditRequest) -> Prepared:
        self.check_provider(request.spec.provider)
        return await self.in_pool(prepare_edit, image, request, self.limits, self.pixels)

    async def afterwards(self, prepared: Prepared) -> bytes | None:
        """Run the preparation a job need not wait for (`Prepared.afterwards`) once it is on its way, and return
        the preview it draws; a failure is logged and only leaves the preview out."""
        try:
            return await self._pictures.run(Work.AFTERWARDS, prepared.afterwards)
        except Exception:
            log.exception("could not draw a job's preview")
            return None

    async def prepare(self, request: FillRequest | EditRequest, inputs: JobInputs) -> Prepared:
        """Prepare stored pictures again (a resumed queued job, Rerun): the stored mask is already final."""
        if isinstance(request, FillRequest):
            again = dataclasses.replace(request, mask=MaskOptions(feather=request.mask.feather))
            return await self.prepare_fill(inputs.original, inputs.mask, again)
        return await self.prepare_edit(inputs.original, request)

    async def finish(
        self,
        request: FillRequest | EditRequest,
        inputs: JobInputs,
        files: Sequence[tuple[bytes, bool]],
        *,
        job_id: str,
        max_total_bytes: int | None = None,
        groundwork: Groundwork | None = None,
    ) -> Finished:
        """Decode the provider's outputs, put them back into the original and encode them, in the pool."""
        return await self._pictures.run(
            Work.FINISH, finish, files, inputs=inputs, request=request, limits=self.limits, job_id=job_id,
            max_total_bytes=max_total_bytes, pixels=self.pixels, groundwork=groundwork,
        )

    async def lay_groundwork(self, request: FillRequest | EditRequest, inputs: JobInputs, *, job_id: str) -> Groundwork:
        """What the finish can do before the results come (`lay_groundwork`), with the finishing work: it is
        laid only for a result expected soon, so it must not wait behind new jobs' preparation."""
        return await self._pictures.run(Work.FINISH, lay_groundwork, inputs, request, self.limits, job_id, self.pixels)

    @staticmethod
    def new_job_id() -> str:
        return uuid.uuid4().hex[:12]
