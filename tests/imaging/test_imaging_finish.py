"""Finishing a job: provider outputs back into the user's picture, in the upload's kind, at full resolution."""

from __future__ import annotations

import dataclasses
import io
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bot.imaging import Limits, encode_mask
from bot.params import Delivery, EditRequest, FillRequest, MaskOptions
from bot.pipeline import JobInputs, Once, finish, job_from_sent, lay_groundwork, prepare_edit, prepare_fill

DISCORD_CAP = 10 * 1024 * 1024 - 64 * 1024  # what the Discord front end passes as max_total_bytes


def save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def provider_output(picture: Image.Image, size: tuple[int, int], shift: int = 60) -> bytes:
    """What a provider sends back: the whole picture regenerated at its own size, as a PNG."""
    values = np.asarray(picture.convert("RGB").resize(size), dtype=np.int16)
    return save(Image.fromarray(np.clip(values + shift, 0, 255).astype(np.uint8)), "PNG", compress_level=1)


def fill_request(outputs: int = 1, delivery: Delivery | None = None, feather: int = 4) -> FillRequest:
    return FillRequest.build("replicate", "a red ball", {"outputs": outputs}, mask=MaskOptions(feather=feather),
                             delivery=delivery or Delivery())


def ellipse_mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    width, height = size
    ImageDraw.Draw(mask).ellipse((width // 3, height // 3, width // 2, height // 2), fill=255)
    return mask


def noisy_photo(size: tuple[int, int], sigma: float = 2.0, seed: int = 7) -> Image.Image:
    """A real test photo scaled up, with sensor-like noise so it compresses like a camera picture."""
    with Image.open(Path(__file__).resolve().parents[1] / "data" / "photo_coffee_1024x768.jpg") as source:
        scaled = source.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).standard_normal((size[1], size[0], 3), dtype=np.float32) * sigma
    return Image.fromarray(np.clip(np.asarray(scaled) + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("upload", "expected"),
    [("photo_coffee_1024x768.jpg", "jpeg"), ("photo_astronaut_512x512.png", "png"),
     ("photo_chelsea_900x600.webp", "webp")],
)
def test_auto_answers_in_the_uploads_kind(testdata: Path, limits: Limits, upload: str, expected: str) -> None:
    data = (testdata / upload).read_bytes()
    original = decode(data).convert("RGB")
    inputs = JobInputs(data, encode_mask(ellipse_mask(original.size)))
    done = finish([(provider_output(original, (512, 512)), False)], inputs=inputs, request=fill_request(),
                  limits=limits, job_id="j1")
    (image,) = done.images
    assert decode(image.data).format.lower() == expected and image.size == original.size
    assert image.filename == f"fill-j1-1.{'jpg' if expected == 'jpeg' else expected}"
    assert done.notices == ()


def test_fill_keeps_the_users_pixels_outside_the_mask(testdata: Path, limits: Limits) -> None:
    data = (testdata / "photo_astronaut_512x512.png").read_bytes()
    original = decode(data).convert("RGB")
    mask = Image.new("L", original.size, 0)
    mask.paste(255, (200, 200, 300, 300))
    done = finish([(provider_output(original, (1024, 1024)), True)], inputs=JobInputs(data, encode_mask(mask)),
                  request=fill_request(feather=4), limits=limits, job_id="j")
    got = np.asarray(decode(done.images[0].data))
    assert done.images[0].flagged
    assert np.array_equal(got[:180], np.asarray(original)[:180])  # PNG: the user's own pixels, exactly
    assert np.abs(got[220:280, 220:280].astype(int) - np.asarray(original)[220:280, 220:280]).mean() > 40


def test_transparent_picture_stays_png_with_its_transparency(testdata: Path, limits: Limits) -> None:
    data = (testdata / "rgba_coffee_ellipse_hole.png").read_bytes()
    original = decode(data)
    hole = original.getchannel("A").point([255] + [0] * 255)
    corner = Image.new("L", original.size, 0)
    corner.paste(255, (0, 0, 40, 40))  # a second transparent area that the mask leaves alone
    rgba = original.copy()
    rgba.putalpha(Image.composite(Image.new("L", original.size, 0), original.getchannel("A"), corner))
    for picture, transparent in ((original, False), (rgba, True)):
        inputs = JobInputs(save(picture, "PNG"), encode_mask(hole))
        done = finish([(provider_output(picture, (512, 352)), False)], inputs=inputs,
                      request=fill_request(), limits=limits, job_id="j")
        image = decode(done.images[0].data)
        assert image.format == "PNG" and image.mode == ("RGBA" if transparent else "RGB")


def test_explicit_format_is_honoured(testdata: Path, limits: Limits) -> None:
    data = (testdata / "photo_coffee_1024x768.jpg").read_bytes()
    inputs = JobInputs(data, encode_mask(ellipse_mask((1024, 768))))
    output = provider_output(decode(data), (1024, 768))
    for fmt, name in (("png", "PNG"), ("webp", "WEBP"), ("jpeg", "JPEG")):
        done = finish([(output, False)], inputs=inputs, request=fill_request(delivery=Delivery(fmt)),
                      limits=limits, job_id="j")
        assert decode(done.images[0].data).format == name


def test_four_12_megapixel_photos_fit_discord_at_full_resolution(limits: Limits) -> None:
    """The issue's case: a 4000x3000 camera JPEG with four outputs came back 1419x1065."""
    photo = noisy_photo((4000, 3000))
    upload = save(photo, "JPEG", quality=92)
    inputs = JobInputs(upload, encode_mask(ellipse_mask(photo.size)))
    outputs = [(provider_output(photo, (1184, 888), shift=10 * i), False) for i in range(4)]
    done = finish(outputs, inputs=inputs, request=fill_request(outputs=4), limits=limits, job_id="j",
                  max_total_bytes=DISCORD_CAP)
    assert sum(len(i.data) for i in done.images) <= DISCORD_CAP
    assert all(i.size == (4000, 3000) and decode(i.data).size == (4000, 3000) for i in done.images)
    assert all(i.filename.endswith(".jpg") for i in done.images)
    assert not any("downscaled" in n for n in done.notices)


def test_png_over_the_budget_becomes_jpeg_before_shrinking(limits: Limits) -> None:
    photo = noisy_photo((2000, 1500), sigma=4.0)
    inputs = JobInputs(save(photo, "PNG", compress_level=1), encode_mask(ellipse_mask(photo.size)))
    outputs = [(provider_output(photo, (1024, 768)), False)] * 2
    cap = 3 * 1024 * 1024  # two 2000x1500 noisy PNGs are about 15 MB
    done = finish(outputs, inputs=inputs, request=fill_request(outputs=2), limits=limits, job_id="j",
                  max_total_bytes=cap)
    assert [decode(i.data).format for i in done.images] == ["JPEG", "JPEG"]
    assert all(i.size == photo.size for i in done.images) and sum(len(i.data) for i in done.images) <= cap
    assert len(done.notices) == 1 and "saved as JPEG" in done.notices[0] and "full resolution" in done.notices[0]


def test_downscaling_is_the_last_resort_and_is_said(limits: Limits) -> None:
    photo = noisy_photo((1600, 1200), sigma=6.0)
    inputs = JobInputs(save(photo, "JPEG", quality=95), encode_mask(ellipse_mask(photo.size)))
    cap = 150 * 1024
    done = finish([(provider_output(photo, (800, 600)), False)], inputs=inputs, request=fill_request(),
                  limits=limits, job_id="j", max_total_bytes=cap)
    (image,) = done.images
    assert len(image.data) <= cap and image.size[0] < 1600 and decode(image.data).size == image.size
    assert done.notices == (
        "Images were saved at quality 60 to fit the 150 KiB upload limit.",
        f"Images were downscaled to {image.size[0]}x{image.size[1]} to fit the 150 KiB upload limit.",
    )


def test_without_composite_the_result_is_scaled_whole(testdata: Path, limits: Limits) -> None:
    data = (testdata / "photo_coffee_1024x768.jpg").read_bytes()
    inputs = JobInputs(data, encode_mask(ellipse_mask((1024, 768))))
    request = fill_request(delivery=Delivery(composite=False))
    output = provider_output(decode(data), (512, 384))
    done = finish([(output, False)], inputs=inputs, request=request, limits=limits, job_id="j")
    image = decode(done.images[0].data)
    expected = decode(output).resize((1024, 768), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert image.size == (1024, 768)
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(expected))[:100].mean() < 3  # JPEG noise only


def test_edit_answers_in_the_uploads_kind(testdata: Path, limits: Limits) -> None:
    data = (testdata / "photo_coffee_1024x768.jpg").read_bytes()
    request = EditRequest.build("replicate", "make it night", {})
    prepared = prepare_edit(data, request, limits)
    done = finish([(provider_output(decode(data), (1024, 768)), False)], inputs=prepared.inputs, request=request,
                  limits=limits, job_id="e")
    assert decode(done.images[0].data).format == "JPEG" and done.images[0].filename == "edit-e-1.jpg"


def test_prepare_then_finish_round_trip(testdata: Path, limits: Limits) -> None:
    """What the bot stores at prepare time is enough to finish, and upright: EXIF orientation applied once."""
    photo = decode((testdata / "photo_coffee_1024x768.jpg").read_bytes())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    upload = save(photo, "JPEG", quality=95, exif=exif.tobytes())
    request = FillRequest.build("replicate", "a red ball", {}, mask=MaskOptions(region="10%,10%,20%,20%"))
    prepared = prepare_fill(upload, None, request, limits)
    assert prepared.original_size == (768, 1024)
    output = provider_output(photo.rotate(-90, expand=True), prepared.job.image.size)
    done = finish([(output, False)], inputs=prepared.inputs, request=request, limits=limits, job_id="r")
    assert done.images[0].size == (768, 1024) and decode(done.images[0].data).size == (768, 1024)


@pytest.mark.parametrize(
    ("upload", "delivery", "expected"),
    [
        ("photo_coffee_1024x768.jpg", Delivery(), 95),
        ("photo_coffee_1024x768.jpg", Delivery("auto", 98), 98),  # never below the delivery's own quality
        ("photo_coffee_1024x768.jpg", Delivery("png"), None),
        ("photo_astronaut_512x512.png", Delivery("jpeg", 80), 95),
        ("photo_astronaut_512x512.png", Delivery(), None),
        ("photo_chelsea_900x600.webp", Delivery(), None),
    ],
)
def test_a_jpeg_result_is_asked_for_exactly_when_the_delivery_is_jpeg(
    testdata: Path, limits: Limits, upload: str, delivery: Delivery, expected: int | None
) -> None:
    """The job prepared for the provider and the one rebuilt from the stored pictures (a worker, a restart)
    ask for the same result, and the finish then delivers the format that was planned for."""
    data = (testdata / upload).read_bytes()
    request = fill_request(delivery=delivery)
    prepared = prepare_fill(data, encode_mask(ellipse_mask(decode(data).size)), request, limits)
    assert prepared.job.jpeg_result == expected
    assert prepared.job.mask is not None
    rebuilt = job_from_sent(request, prepared.job.image.data, prepared.job.mask.data, data[:16])
    assert rebuilt == prepared.job
    original = decode(data).convert("RGB")
    result = save(original.resize((512, 512)), "JPEG", quality=95) if expected else provider_output(original,
                                                                                                     (512, 512))
    done = finish([(result, False)], inputs=prepared.inputs, request=request, limits=limits, job_id="q")
    assert (decode(done.images[0].data).format == "JPEG") == (expected is not None)


@pytest.mark.parametrize(
    ("upload", "request_"),
    [
        ("photo_coffee_1024x768.jpg", fill_request(outputs=2)),
        ("photo_astronaut_512x512.png", fill_request(delivery=Delivery(composite=False))),
        ("photo_chelsea_900x600.webp", EditRequest.build("replicate", "make it night", {})),
    ],
    ids=["composite", "no-composite", "edit"],
)
def test_groundwork_laid_ahead_finishes_exactly_as_the_finish_alone(
    testdata: Path, limits: Limits, upload: str, request_: FillRequest | EditRequest
) -> None:
    """Laid while the provider works, the groundwork leaves the finish only the results' work: same files,
    same "before" picture."""
    data = (testdata / upload).read_bytes()
    original = decode(data).convert("RGB")
    mask = encode_mask(ellipse_mask(original.size)) if isinstance(request_, FillRequest) else None
    inputs = JobInputs(data, mask)
    count = int(request_.params.get("outputs") or 1)
    outputs = [(provider_output(original, (512, 384), shift=40 * (n + 1)), False) for n in range(count)]
    alone = finish(outputs, inputs=inputs, request=request_, limits=limits, job_id="g")
    ground = lay_groundwork(inputs, request_, limits, "g")
    assert (ground.filled is not None) == (isinstance(request_, FillRequest) and request_.delivery.composite)
    ahead = finish(outputs, inputs=inputs, request=request_, limits=limits, job_id="g", groundwork=ground)
    assert [i.data for i in ahead.images] == [i.data for i in alone.images] and len(ahead.images) == len(outputs)
    assert ahead.before == alone.before and ahead.before is not None


def test_a_png_fill_writes_the_rows_outside_the_fill_area_once(testdata: Path, limits: Limits) -> None:
    """A lossless delivery of a composited fill: the groundwork writes the rows the results share, and every
    result comes back exactly as the finish composited it (the same pixels as written without that help)."""
    data = (testdata / "photo_astronaut_512x512.png").read_bytes()
    original = decode(data).convert("RGB")
    inputs = JobInputs(data, encode_mask(ellipse_mask(original.size)))
    request = fill_request(outputs=2)
    outputs = [(provider_output(original, (512, 512), shift=30 * (n + 1)), False) for n in range(2)]
    ground = lay_groundwork(inputs, request, limits, "p")
    assert ground.png is not None and (ground.png.top, ground.png.bottom) == (156, 271)  # rows 170-256, feathered
    helped = finish(outputs, inputs=inputs, request=request, limits=limits, job_id="p", groundwork=ground)
    plain = lay_groundwork(inputs, request, limits, "p")
    unhelped = finish(outputs, inputs=inputs, request=request, limits=limits, job_id="p",
                      groundwork=dataclasses.replace(plain, png=None))
    for with_rows, without in zip(helped.images, unhelped.images, strict=True):
        assert with_rows.data != without.data and with_rows.data.count(b"IDAT") == 4  # head, box, tail, end
        assert np.array_equal(np.asarray(decode(with_rows.data)), np.asarray(decode(without.data)))
    assert not np.array_equal(np.asarray(decode(helped.images[0].data)), np.asarray(decode(helped.images[1].data)))
    jpeg = lay_groundwork(JobInputs((testdata / "photo_coffee_1024x768.jpg").read_bytes(), inputs.mask),
                          request, limits, "j")
    assert jpeg.png is None  # a JPEG delivery needs no PNG rows


def test_what_preparing_leaves_for_afterwards_runs_once_and_lets_go_of_its_pictures(
    testdata: Path, limits: Limits
) -> None:
    """The preview is drawn after the job is sent, from the decoded pictures: once drawn, they are let go even
    while the prepared job is still held (a full-size upload per job in flight, under load)."""
    data = (testdata / "photo_coffee_1024x768.jpg").read_bytes()
    prepared = prepare_fill(data, encode_mask(ellipse_mask((1024, 768))), fill_request(), limits)
    preview = decode(prepared.afterwards())
    assert preview.format == "JPEG" and preview.size == (640, 480)
    with pytest.raises(RuntimeError, match="already run"):
        prepared.afterwards()

    class Picture:
        pass

    def preview_of(picture: Picture) -> Callable[[], bytes]:
        return lambda: type(picture).__name__.encode()

    picture = Picture()
    alive = weakref.ref(picture)
    once = Once(preview_of(picture))
    del picture
    assert alive() is not None
    assert once() == b"Picture" and alive() is None
