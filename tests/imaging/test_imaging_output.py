"""Encoding (metadata stripped, formats, size caps), the mask preview and compositing results back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from bot.imaging import (
    Filled,
    auto_format,
    composite,
    encode,
    encode_for_provider,
    encode_mask,
    fit_result,
    fit_under,
    mask_preview,
    sniff_format,
    soften,
)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / max(float(np.mean(diff**2)), 1e-12)))


def tagged(image: Image.Image) -> Image.Image:
    """A copy carrying EXIF (with GPS), an ICC profile and a comment, as a phone photo would."""
    out = image.copy()
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {2: (48.0, 51.0, 30.0)}
    out.info.update(
        exif=exif.tobytes(),
        icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(),
        comment=b"private note",
    )
    return out


# --- encode --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "jpg", "webp"])
def test_encode_strips_metadata(coffee: Image.Image, fmt: str) -> None:
    data = encode(tagged(coffee), fmt)
    image = decode(data)
    assert not image.getexif()
    assert "icc_profile" not in image.info and "comment" not in image.info
    assert b"PhoneMaker" not in data and b"private note" not in data
    assert image.size == coffee.size


def test_encode_jpeg_drops_alpha(coffee: Image.Image) -> None:
    image = decode(encode(coffee.convert("RGBA"), "jpeg"))
    assert image.format == "JPEG" and image.mode == "RGB"


def test_encode_png_keeps_alpha_and_pixels(coffee: Image.Image) -> None:
    rgba = coffee.convert("RGBA")
    rgba.putpixel((3, 3), (1, 2, 3, 0))
    assert np.array_equal(np.asarray(decode(encode(rgba, "png"))), np.asarray(rgba))


def test_encode_unknown_format(coffee: Image.Image) -> None:
    with pytest.raises(ValueError):
        encode(coffee, "gif")


def test_encode_for_provider_is_rgb_and_faithful(coffee: Image.Image) -> None:
    rgba = tagged(coffee.convert("RGBA"))
    image = decode(encode_for_provider(rgba))
    assert image.mode == "RGB" and image.size == coffee.size and not image.getexif()
    assert psnr(image, coffee) > 40


def test_encode_mask_is_lossless_png() -> None:
    mask = Image.new("L", (300, 200), 0)
    mask.paste(255, (50, 50, 170, 120))
    image = decode(encode_mask(mask.convert("1")))
    assert image.format == "PNG" and image.mode == "L"
    assert np.array_equal(np.asarray(image), np.asarray(mask))


# --- fit_under -----------------------------------------------------------------------------------------


def test_fit_under_leaves_small_files(coffee: Image.Image) -> None:
    files, notices = fit_under([coffee, coffee], "jpeg", 90, 10 * 1024 * 1024)
    assert notices == [] and len(files) == 2
    assert decode(files[0].data).size == coffee.size and files[0].format == "jpeg" and files[0].extension == "jpg"


def test_fit_under_without_cap_encodes_as_asked(coffee: Image.Image) -> None:
    files, notices = fit_under([coffee], "png", 90, None)
    assert notices == [] and files[0].format == "png" and files[0].size == coffee.size


def test_fit_under_png_turns_lossy_before_downscaling(coffee: Image.Image) -> None:
    png = len(encode(coffee, "png"))
    cap = png * 2 - 1  # two PNGs do not fit; two high-quality JPEGs do
    files, notices = fit_under([coffee, coffee], "png", 90, cap)
    assert [f.format for f in files] == ["jpeg", "jpeg"] and sum(len(f.data) for f in files) <= cap
    assert decode(files[0].data).size == coffee.size  # full resolution kept
    assert len(notices) == 1 and notices[0].startswith("As PNG the images would exceed the ")
    assert notices[0].endswith(" upload limit, so they were saved as JPEG at quality 90 to keep their full resolution.")


def test_fit_under_transparent_png_turns_webp_and_keeps_alpha(coffee: Image.Image) -> None:
    rgba = coffee.convert("RGBA")
    rgba.putpixel((5, 5), (0, 0, 0, 0))
    files, notices = fit_under([rgba], "png", 90, len(encode(rgba, "png")) // 2)
    image = decode(files[0].data)
    assert files[0].format == "webp" and image.mode == "RGBA" and image.size == coffee.size
    assert image.getpixel((5, 5))[3] == 0 and "saved as WebP" in notices[0]


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_fit_under_picks_the_best_quality_that_fits(coffee: Image.Image, fmt: str) -> None:
    sizes = {q: len(encode(coffee, fmt, quality=q)) for q in (95, 80, 75)}
    cap = (sizes[80] + sizes[75]) // 2  # between the 80 and 75 files: 75 is the best that fits
    assert sizes[80] > cap >= sizes[75]
    files, notices = fit_under([coffee], fmt, 95, cap)
    assert len(files[0].data) == sizes[75] and files[0].size == coffee.size
    assert notices == [f"Images were saved at quality 75 to fit the {cap // 1024 + 1} KiB upload limit."]


def test_fit_under_downscales_only_as_the_last_resort(coffee: Image.Image) -> None:
    cap = len(encode(coffee, "jpeg", quality=60)) // 2
    files, notices = fit_under([coffee], "png", 90, cap)
    size = decode(files[0].data).size
    assert files[0].format == "jpeg" and sum(len(f.data) for f in files) <= cap
    assert size[0] < coffee.width and size[0] / size[1] == pytest.approx(4 / 3, rel=0.01)
    assert notices == [
        f"As PNG the images would exceed the {cap // 1024 + 1} KiB upload limit, so they were saved as JPEG "
        "at quality 60.",
        f"Images were downscaled to {size[0]}x{size[1]} to fit the {cap // 1024 + 1} KiB upload limit.",
    ]


def test_fit_under_tiny_cap_shrinks_a_lot(coffee: Image.Image) -> None:
    files, notices = fit_under([coffee, coffee.rotate(90, expand=True)], "webp", 90, 20 * 1024)
    assert sum(len(f.data) for f in files) <= 20 * 1024
    assert "quality 60" in notices[0] and "downscaled to" in notices[1] and "% of their size" in notices[1]


def test_fit_under_impossible_cap(coffee: Image.Image) -> None:
    with pytest.raises(ValueError):
        fit_under([coffee], "png", 90, 100)


# --- preview -------------------------------------------------------------------------------------------


def test_preview_is_small_and_tinted(coffee: Image.Image) -> None:
    big = coffee.resize((2048, 1536))
    mask = Image.new("L", big.size, 0)
    mask.paste(255, (1024, 768, 2048, 1536))
    data = mask_preview(big, mask)
    preview = decode(data)
    assert preview.format == "JPEG" and preview.size == (640, 480)
    assert len(data) < 150 * 1024
    plain = np.asarray(coffee.resize((640, 480)), dtype=np.float64)
    shown = np.asarray(preview, dtype=np.float64)
    inside, outside = (slice(260, 470), slice(340, 630)), (slice(10, 220), slice(10, 300))
    # Magenta tint: red and blue up, green down inside; outside untouched apart from JPEG noise.
    assert shown[inside][..., 0].mean() > plain[inside][..., 0].mean() + 20
    assert shown[inside][..., 1].mean() < plain[inside][..., 1].mean() - 20
    assert abs(shown[outside] - plain[outside]).mean() < 6
    outline = shown[300, 318:321]  # a solid magenta ring around the area, across its left edge at x=320
    assert outline[:, 0].min() > 200 and outline[:, 1].max() < 40 and outline[:, 2].min() > 150
    assert shown[300, 315, 0] < 150


def test_preview_of_transparent_picture(coffee: Image.Image) -> None:
    rgba = coffee.convert("RGBA")
    rgba.putalpha(Image.new("L", coffee.size, 0))
    preview = decode(mask_preview(rgba, Image.new("L", (512, 384), 255), max_side=300))
    assert preview.size == (300, 225) and preview.mode == "RGB"


# --- compositing ---------------------------------------------------------------------------------------


def test_composite_keeps_original_outside_and_result_inside(coffee: Image.Image, astronaut: Image.Image) -> None:
    mask = Image.new("L", coffee.size, 0)
    mask.paste(255, (300, 200, 700, 500))
    result = astronaut.resize((1152, 864))  # a provider's size, not the original's
    out = composite(coffee, result, mask, feather=4)
    assert out.size == coffee.size and out.mode == "RGB"
    got, original = np.asarray(out), np.asarray(coffee)
    reach = 3 * 4 + 2
    outside = np.ones(original.shape[:2], dtype=bool)
    outside[200 - reach : 500 + reach, 300 - reach : 700 + reach] = False
    assert np.array_equal(got[outside], original[outside])
    scaled = np.asarray(result.resize(coffee.size, Image.Resampling.LANCZOS))
    assert np.array_equal(got[200:500, 300:700], scaled[200:500, 300:700])
    ring = got[195:200, 400].astype(int) - original[195:200, 400].astype(int)
    assert np.abs(ring).sum() > 0  # the feather blends just outside the mask


def test_composite_without_feather_is_a_hard_paste(coffee: Image.Image, astronaut: Image.Image) -> None:
    mask = Image.new("L", coffee.size, 0)
    mask.paste(255, (0, 0, 100, 100))
    out = np.asarray(composite(coffee, astronaut.resize(coffee.size), mask, feather=0))
    assert np.array_equal(out[100:, :], np.asarray(coffee)[100:, :])
    assert np.array_equal(out[:100, :100], np.asarray(astronaut.resize(coffee.size))[:100, :100])


def test_composite_fills_transparent_hole(coffee: Image.Image, astronaut: Image.Image) -> None:
    original = coffee.convert("RGBA")
    hole = Image.new("L", coffee.size, 255)
    hole.paste(0, (100, 100, 300, 300))
    original.putalpha(hole)
    mask = Image.new("L", coffee.size, 0)
    mask.paste(255, (100, 100, 300, 300))
    out = composite(original, astronaut, mask)
    assert out.mode == "RGB"  # nothing transparent is left
    assert np.array_equal(np.asarray(out)[400:, 400:], np.asarray(coffee)[400:, 400:])

    other = original.copy()
    other.putpixel((1000, 700), (0, 0, 0, 0))  # transparency outside the fill area stays
    out = composite(other, astronaut, mask)
    assert out.mode == "RGBA"
    assert out.getpixel((1000, 700)) == (0, 0, 0, 0) and out.getchannel("A").getpixel((200, 200)) == 255


def test_fit_result(astronaut: Image.Image) -> None:
    assert fit_result((1024, 768), astronaut).size == (1024, 768)
    assert fit_result((512, 512), astronaut) is astronaut
    assert fit_result((64, 48), astronaut.convert("L")).mode == "RGB"


def naive_composite(original: Image.Image, result: Image.Image, mask: Image.Image, feather: int) -> np.ndarray:
    """The whole-picture way: scale the whole result, blur the whole mask, blend every pixel."""
    hard = mask.point([0] * 128 + [255] * 128)
    weight = np.maximum(np.asarray(soften(hard, feather=feather)), np.asarray(hard)).astype(np.float64)[..., None]
    scaled = np.asarray(fit_result(original.size, result.convert("RGB")), dtype=np.float64)
    return scaled * weight / 255 + np.asarray(original, dtype=np.float64) * (1 - weight / 255)


@pytest.mark.parametrize("result_size", [(1024, 768), (700, 525), (1440, 1080)])
def test_filled_matches_whole_picture_compositing(coffee: Image.Image, astronaut: Image.Image,
                                                 result_size: tuple[int, int]) -> None:
    mask = Image.new("L", coffee.size, 0)
    mask.paste(255, (610, 90, 900, 400))
    results = [astronaut.resize(result_size), astronaut.rotate(90).resize(result_size)]
    filled = Filled(coffee.copy(), mask, feather=6)
    for result in results:
        filled.add(result)
    assert len(filled) == 2 and filled.size == coffee.size and filled.mode == "RGB"
    for index, result in enumerate(results):
        got = np.asarray(filled[index], dtype=np.float64)
        expected = naive_composite(coffee, result, mask, 6)
        assert np.abs(got - expected).max() <= 2  # the same picture, up to rounding
        assert np.array_equal(got[:, :560], np.asarray(coffee)[:, :560])  # beyond the feather: the original's own


def test_filled_makes_filled_holes_opaque(coffee: Image.Image, astronaut: Image.Image) -> None:
    original = coffee.convert("RGBA")
    alpha = Image.new("L", coffee.size, 255)
    alpha.paste(0, (100, 100, 300, 300))
    original.putalpha(alpha)
    mask = Image.new("L", coffee.size, 0)
    mask.paste(255, (100, 100, 300, 300))
    whole = Filled(original.copy(), mask)
    whole.add(astronaut)
    assert whole.mode == "RGB" and whole[0].mode == "RGB"
    original.putpixel((1000, 700), (1, 2, 3, 0))
    partial = Filled(original.copy(), mask)
    partial.add(astronaut)
    partial.add(astronaut.rotate(180))
    assert partial.mode == "RGBA"
    for index in range(2):
        picture = partial[index]
        assert picture.getpixel((1000, 700)) == (1, 2, 3, 0) and picture.getchannel("A").getextrema() == (0, 255)
        assert picture.getchannel("A").crop((100, 100, 300, 300)).getextrema() == (255, 255)


def test_filled_with_an_empty_mask_is_the_original(coffee: Image.Image, astronaut: Image.Image) -> None:
    filled = Filled(coffee.copy(), Image.new("L", coffee.size, 0))
    filled.add(astronaut)
    assert np.array_equal(np.asarray(filled[0]), np.asarray(coffee))
    with pytest.raises(IndexError):
        filled[1]


def test_composite_leaves_the_original_alone(coffee: Image.Image, astronaut: Image.Image) -> None:
    before = np.asarray(coffee).copy()
    mask = Image.new("L", coffee.size, 0)
    mask.paste(255, (0, 0, 500, 500))
    composite(coffee, astronaut, mask)
    assert np.array_equal(np.asarray(coffee), before)


# --- formats -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1"])
def test_encode_png_is_lossless_in_every_mode(coffee: Image.Image, mode: str) -> None:
    image = coffee.convert(mode)
    decoded = decode(encode(image, "png"))
    expected = image if mode in ("RGB", "RGBA", "L") else image.convert("RGBA" if mode == "LA" else "RGB")
    assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded.convert(expected.mode)), np.asarray(expected))


@pytest.mark.parametrize(
    ("source", "transparent", "expected"),
    [
        ("JPEG", False, "jpeg"),
        ("JPEG", True, "png"),
        ("WEBP", False, "webp"),
        ("WEBP", True, "webp"),
        ("PNG", False, "png"),
        ("GIF", False, "png"),
        (None, False, "png"),
    ],
)
def test_auto_format_follows_the_upload(source: str | None, transparent: bool, expected: str) -> None:
    assert auto_format(source, transparent=transparent) == expected


def test_sniff_format(testdata: Path, coffee: Image.Image) -> None:
    assert sniff_format((testdata / "photo_coffee_1024x768.jpg").read_bytes()) == "JPEG"
    assert sniff_format((testdata / "photo_astronaut_512x512.png").read_bytes()) == "PNG"
    assert sniff_format((testdata / "photo_chelsea_900x600.webp").read_bytes()) == "WEBP"
    gif = io.BytesIO()
    coffee.save(gif, "GIF")
    assert sniff_format(gif.getvalue()) == "GIF"
    assert sniff_format(b"RIFF\0\0\0\0WAVEfmt ") is None and sniff_format(b"") is None
