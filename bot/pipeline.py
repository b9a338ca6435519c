"""Pictures in, pictures out: turns attachments + a validated request into a `ProviderJob`, and provider
outputs back into finished files.

Everything here is CPU work on images; callers run it in a worker thread (`asyncio.to_thread`) so the event
loop never stalls. Only bytes are kept between the two halves (not decoded pictures), so hundreds of waiting
jobs cost little memory and a job can be finished after a restart from stored bytes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from bot.imaging import (
    AUTO,
    PROVIDER_MIME,
    Filled,
    Limits,
    LoadedImage,
    Pictures,
    SizingRule,
    auto_format,
    build_mask,
    encode,
    encode_for_provider,
    encode_mask,
    fit_result,
    fit_under,
    load_image,
    mask_preview,
    require_kept_area,
    resize_for,
    sniff_format,
    soften,
    target_size,
)
from bot.imaging.loading import decode
from bot.imaging.png import FixedRows
from bot.imaging.preview import BEFORE_SIDE, before_preview
from bot.imaging.spool import PixelSpool
from bot.params import EditRequest, FillRequest, ModelSpec
from bot.providers.base import InputImage, ProviderJob
from bot.providers.registry import PROVIDERS

log = logging.getLogger(__name__)

JPEG_RESULT_QUALITY = 95


@dataclass(frozen=True)
class JobInputs:
    """What finishing a job needs, as bytes: stored with the job so it can be finished after a restart.

    The original is kept as uploaded rather than re-encoded for speed: a JPEG decodes fastest as it is (and
    re-encoding would lose quality), and re-encoding a 1440x1440 PNG as a fast-decoding PNG costs more at
    preparation (66 ms) than it saves at the finish (about 22 ms of a 65 ms decode). Its kind also picks
    the "auto" delivery format.
    """

    original: bytes  # the user's validated upload; decoded again only by our own loader, never forwarded
    mask: bytes | None  # PNG hard mask at the original's size (None for edits)


class Once:
    """Work that runs once and then lets go of what it holds (full-size pictures): a `Prepared` outlives its
    `afterwards` by as long as the first Discord edit takes, which under load kept every decoded upload alive."""

    def __init__(self, work: Callable[[], bytes]) -> None:
        self._work: Callable[[], bytes] | None = work

    def __call__(self) -> bytes:
        work, self._work = self._work, None
        if work is None:
            raise RuntimeError("this work has already run")
        return work()


@dataclass(frozen=True)
class Prepared:
    """A job ready to submit, plus what finishing needs later.

    `afterwards` is the preparation the job need not wait for, run once it is on its way (`FillService.
    afterwards`): it keeps the decoded upload for the finish and returns the small picture for the status
    message. Drawn before the create, that picture held every job up by its 8-25 ms.
    """

    job: ProviderJob
    inputs: JobInputs
    afterwards: Callable[[], bytes]
    preview_name: str
    original_size: tuple[int, int]
    coverage: float | None
    notices: tuple[str, ...]


@dataclass(frozen=True)
class FinishedImage:
    data: bytes
    filename: str
    size: tuple[int, int]
    flagged: bool = False


@dataclass(frozen=True)
class Finished:
    images: tuple[FinishedImage, ...]
    notices: tuple[str, ...]
    before: bytes | None = None  # a small "before" picture (None if it could not be drawn)


def sizing_rule(spec: ModelSpec) -> SizingRule:
    return PROVIDERS[spec.provider].sizing_rule(spec.operation)


def _to_provider(image: Image.Image, spec: ModelSpec) -> tuple[Image.Image, InputImage]:
    size = target_size(sizing_rule(spec), image.size)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    sized = rgb if size == rgb.size else rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)
    return sized, InputImage(encode_for_provider(sized), PROVIDER_MIME, sized.size)


def prepare_fill(
    image_data: bytes, mask_data: bytes | None, request: FillRequest, limits: Limits, pixels: PixelSpool | None = None
) -> Prepared:
    """Validate and load the pictures, work out the mask, size both for the provider and encode them; the decoded
    upload goes to `pixels` for the finish (afterwards)."""
    loaded = upload_image(image_data, limits, pixels)
    result = build_mask(loaded, mask_data, request.mask.region, limits, invert=request.mask.invert)
    mask = soften(result.mask, grow=request.mask.grow) if request.mask.grow else result.mask
    # The provider sees the picture without transparency (resize_for drops it): the mask says what to repaint.
    rule = sizing_rule(request.spec)
    sized, sized_mask = resize_for(rule, loaded.image, mask)
    if rule.needs_kept_pixels:
        require_kept_area(sized_mask, request.spec.provider)
    image_input = InputImage(encode_for_provider(sized), PROVIDER_MIME, sized.size)
    stored_mask = encode_mask(mask)
    # Pictures within the provider's size are sent as they are: the stored mask is then the one to send.
    sent_mask = stored_mask if sized_mask is mask else encode_mask(sized_mask)
    mask_input = InputImage(sent_mask, "image/png", sized_mask.size)
    job = ProviderJob(request.spec, request.prompt, request.params, image_input, mask_input,
                      jpeg_result(request, image_data))

    def afterwards() -> bytes:
        keep_upload(pixels, image_data, loaded)
        return mask_preview(loaded.image, mask)

    return Prepared(
        job=job,
        inputs=JobInputs(image_data, stored_mask),
        afterwards=Once(afterwards),
        preview_name="mask-preview.jpg",
        original_size=loaded.image.size,
        coverage=result.coverage,
        notices=loaded.notices + result.notices,
    )


def prepare_edit(
    image_data: bytes, request: EditRequest, limits: Limits, pixels: PixelSpool | None = None
) -> Prepared:
    """Validate and load the picture and size it for the Kontext model."""
    loaded = upload_image(image_data, limits, pixels)
    sized, image_input = _to_provider(loaded.image, request.spec)

    def afterwards() -> bytes:
        keep_upload(pixels, image_data, loaded)
        return encode(_thumbnail(sized), "jpeg", quality=80)

    return Prepared(
        job=ProviderJob(request.spec, request.prompt, request.params, image_input,
                        jpeg_result=jpeg_result(request, image_data)),
        inputs=JobInputs(image_data, None),
        afterwards=Once(afterwards),
        preview_name="input.jpg",
        original_size=loaded.image.size,
        coverage=None,
        notices=loaded.notices,
    )


def upload_image(data: bytes, limits: Limits, pixels: PixelSpool | None, *, what: str = "image") -> LoadedImage:
    """The decoded upload: as an earlier step kept it in `pixels`, else decoded (and checked) now."""
    kept = pixels.peek(data) if pixels is not None else None
    return kept if kept is not None else load_image(data, limits, what=what)


def keep_upload(pixels: PixelSpool | None, data: bytes, loaded: LoadedImage) -> None:
    """Keep the decoded upload for later steps where decoding it again costs more than reading it back."""
    if pixels is not None:
        pixels.keep(data, loaded)


def _upload_pixels(data: bytes, limits: Limits, pixels: PixelSpool | None) -> Image.Image:
    """The upright upload as prepared, for the finish (its last use): taken from `pixels`, else decoded again."""
    kept = pixels.take(data) if pixels is not None else None
    return (kept if kept is not None else load_image(data, limits, what="image")).image


def job_from_sent(
    request: FillRequest | EditRequest, image: bytes, mask: bytes | None, original_head: bytes
) -> ProviderJob:
    """The provider job again from the pictures `prepare_*` made for it (kept with the job): only their sizes
    are read, from the headers, and the upload's kind from the first bytes of the original."""
    mask_input = None if mask is None else InputImage(mask, "image/png", _header_size(mask))
    return ProviderJob(request.spec, request.prompt, request.params,
                       InputImage(image, PROVIDER_MIME, _header_size(image)), mask_input,
                       jpeg_result(request, original_head))


def delivery_format(request: FillRequest | EditRequest, original: bytes, *, transparent: bool = False) -> str:
    """The format the finished pictures are encoded in: the one asked for, else the upload's kind
    (`auto_format`; `original` may be just the upload's first bytes)."""
    fmt = request.delivery.output_format
    return auto_format(sniff_format(original), transparent=transparent) if fmt == AUTO else fmt


def jpeg_result(request: FillRequest | EditRequest, original: bytes) -> int | None:
    """The JPEG quality to ask the provider's result in when the delivery is a JPEG anyway (None: lossless).

    At least q95, so the result's one extra JPEG generation stays far below what the model changes; a JPEG
    upload can never be transparent, so `delivery_format` without transparency is the finish's answer too.
    """
    if delivery_format(request, original) != "jpeg":
        return None
    return max(request.delivery.output_quality, JPEG_RESULT_QUALITY)


def _header_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as opened:
        return opened.size


def _thumbnail(image: Image.Image, max_side: int = 640) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return copy


@dataclass(frozen=True)
class Groundwork:
    """The part of a finish that needs no result: the "before" picture and, for a composited fill, the original
    with its fill area made ready (`Filled`). Laid while the provider still works, it leaves the finish only
    the results' own work; it holds a full-size picture, so it is laid only shortly before the result."""

    before: bytes | None
    filled: Filled | None
    png: FixedRows | None = None  # for a PNG delivery of `filled`: the rows outside its box written already


def lay_groundwork(
    inputs: JobInputs, request: FillRequest | EditRequest, limits: Limits, job_id: str,
    pixels: PixelSpool | None = None,
) -> Groundwork:
    """Decode the upload (or take it from `pixels`) and the mask, draw the "before" picture from them and set up
    the composite; single use (the finish changes the original in place)."""
    if isinstance(request, FillRequest) and inputs.mask is not None and request.delivery.composite:
        original = _upload_pixels(inputs.original, limits, pixels)
        mask, _, _ = decode(inputs.mask, limits, what="mask", grey_ok=True)
        # From the pictures already decoded (Filled changes the original): decoding the upload again for a
        # thumbnail cost as much as the rest of the finish's decoding of it.
        before = _before(lambda: mask_preview(original, mask, max_side=BEFORE_SIDE), job_id)
        filled = Filled(original, mask, feather=request.mask.feather)
        lossless = delivery_format(request, inputs.original, transparent=filled.mode == "RGBA") == "png"
        return Groundwork(before, filled, filled.png_writer() if lossless else None)
    return Groundwork(_before(lambda: before_preview(inputs.original, inputs.mask), job_id), None)


def finish(
    outputs: Sequence[tuple[bytes, bool]],
    *,
    inputs: JobInputs,
    request: FillRequest | EditRequest,
    limits: Limits,
    job_id: str,
    max_total_bytes: int | None = None,
    pixels: PixelSpool | None = None,
    groundwork: Groundwork | None = None,
) -> Finished:
    """Decode provider outputs safely, put them back into the original picture and encode them as asked.

    Fill results are scaled to the original's size and, with `composite`, pasted through the feathered mask
    so every pixel outside it is the user's own at full resolution. The "auto" format answers in the upload's
    kind (`auto_format`); over `max_total_bytes` the encoding gives way before the resolution (`fit_under`).
    `groundwork` is this job's, laid ahead (`lay_groundwork`); without it, it is laid here.
    """
    pictures: Pictures
    # The provider's outputs decode in a second thread meanwhile (Pillow's decoders release the GIL): the
    # largest decodes of the finish overlap instead of adding up, and one result is decoded ahead at most (a
    # 12 MP one is 36 MB).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fillbot-results") as side:
        pending = [data for data, _flagged in outputs]
        ahead = side.submit(_result, pending.pop(0), limits) if pending else None
        ground = groundwork if groundwork is not None else lay_groundwork(inputs, request, limits, job_id, pixels)
        results: list[Image.Image] = []
        size = _original_size(inputs, limits) if ground.filled is None and isinstance(request, FillRequest) else None
        while ahead is not None:
            result = ahead.result()
            ahead = side.submit(_result, pending.pop(0), limits) if pending else None
            if ground.filled is not None:
                ground.filled.add(result)  # only its patch is kept
            else:
                results.append(result if size is None else fit_result(size, result))
            del result
        pictures = ground.filled if ground.filled is not None else results
    # The pictures' modes without taking them: each item of a `Filled` pastes its result into the picture.
    modes = {ground.filled.mode} if ground.filled is not None else {result.mode for result in results}
    fmt = delivery_format(request, inputs.original, transparent="RGBA" in modes)
    encoded, notices = fit_under(pictures, fmt, request.delivery.output_quality, max_total_bytes, png=ground.png)
    kind = request.spec.operation
    images = tuple(
        FinishedImage(file.data, f"{kind}-{job_id}-{i}.{file.extension}", file.size, flagged)
        for i, (file, (_, flagged)) in enumerate(zip(encoded, outputs, strict=True), start=1)
    )
    return Finished(images, tuple(notices), ground.before)


def _before(draw: Callable[[], bytes], job_id: str) -> bytes | None:
    """The "before" picture, drawn with the finish from the inputs it already has; a nicety, so a failure only
    leaves it out."""
    try:
        return draw()
    except Exception:
        log.exception("job %s: could not draw its before picture", job_id)
        return None


def _result(data: bytes, limits: Limits) -> Image.Image:
    """A provider output, decoded by our own loader (RGB, or RGBA if it really has transparency)."""
    return load_image(data, limits, what="result").image


def _original_size(inputs: JobInputs, limits: Limits) -> tuple[int, int]:
    """The upright original's size: from the small stored mask (made at that size) when there is one."""
    if inputs.mask is not None:
        return decode(inputs.mask, limits, what="mask", grey_ok=True)[0].size
    return load_image(inputs.original, limits, what="image").image.size
