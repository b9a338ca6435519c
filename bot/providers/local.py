"""The key-free provider: classical inpainting with OpenCV, so a fresh install does something real.

It is not generative (the prompt is not used, and results say so), but it removes objects and repairs holes
well for small areas. Work runs in a thread so the event loop stays responsive; results live in memory, so
a job caught by a restart cannot be resumed (the engine then reports it as lost).
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid

import cv2
import numpy as np
from PIL import Image

from bot.errors import ProviderError
from bot.lifecycle.states import State
from bot.providers.base import Handle, Output, Provider, ProviderJob, Status

log = logging.getLogger(__name__)

_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


def inpaint(image_png: bytes, mask_png: bytes, *, method: str, radius: int) -> bytes:
    """Fill the white area of `mask_png` in `image_png` from its surroundings; returns a PNG."""
    with Image.open(io.BytesIO(image_png)) as img:
        rgb = np.asarray(img.convert("RGB"))
    with Image.open(io.BytesIO(mask_png)) as msk:
        mask = np.asarray(msk.convert("L"))
    if mask.shape != rgb.shape[:2]:
        raise ProviderError("invalid_input", "The mask and the picture differ in size.")
    hard = np.where(mask >= 128, 255, 0).astype(np.uint8)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    filled = cv2.inpaint(bgr, hard, float(radius), _METHODS[method])
    out = Image.fromarray(cv2.cvtColor(filled, cv2.COLOR_BGR2RGB))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class LocalProvider(Provider):
    name = "local"
    supports_cancel = True

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[bytes]] = {}
        self._results: dict[str, bytes] = {}

    async def submit(self, job: ProviderJob) -> tuple[Handle, Status]:
        if job.mask is None:
            raise ProviderError("invalid_input", "The local provider can only fill masked areas.")
        job_id = uuid.uuid4().hex
        method = str(job.params.get("method", "telea"))
        radius = int(job.params.get("radius", 5))
        self._tasks[job_id] = asyncio.create_task(
            asyncio.to_thread(inpaint, job.image.data, job.mask.data, method=method, radius=radius)
        )
        return Handle(self.name, job_id), Status(State.RUNNING, raw_status="running")

    async def poll(self, handle: Handle) -> Status:
        task = self._tasks.get(handle.job_id)
        if task is None:
            if handle.job_id in self._results:
                return self._succeeded(handle)
            return Status(
                State.FAILED,
                message="The bot restarted while this local job was running; press Rerun to run it again.",
                raw_status="lost",
            )
        if not task.done():
            return Status(State.RUNNING, raw_status="running")
        del self._tasks[handle.job_id]
        if task.cancelled():
            return Status(State.CANCELED, message="Canceled.", raw_status="canceled")
        error = task.exception()
        if error is not None:
            log.error("local inpainting failed", exc_info=error)
            message = error.message if isinstance(error, ProviderError) else "Local inpainting failed."
            return Status(State.FAILED, message=message, detail=repr(error), raw_status="error")
        self._results[handle.job_id] = task.result()
        return self._succeeded(handle)

    def _succeeded(self, handle: Handle) -> Status:
        return Status(
            State.SUCCEEDED,
            outputs=(Output(f"local:{handle.job_id}"),),
            message="Made by local OpenCV inpainting: the prompt was not used.",
            raw_status="succeeded",
        )

    async def settle(self, handle: Handle) -> None:
        """The job is a task in this process: its end is news at once (no polling delay)."""
        task = self._tasks.get(handle.job_id)
        if task is not None:
            await asyncio.wait({task})

    async def cancel(self, handle: Handle) -> None:
        task = self._tasks.pop(handle.job_id, None)
        if task is not None:
            task.cancel()

    async def download(self, output: Output) -> bytes:
        job_id = output.ref.removeprefix("local:")
        try:
            return self._results.pop(job_id)
        except KeyError:
            raise ProviderError("expired", "This local result is no longer in memory.") from None

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        self._results.clear()
