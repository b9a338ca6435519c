"""Masks a careful user would not mean: a photo given as the mask, a mask drawn the wrong way round, and a
whole-picture fill sent to a provider that can only spread the kept pixels inward."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFilter

from bot.errors import MaskError
from bot.imaging import Limits, LoadedImage, build_mask, load_image
from bot.params import FillRequest, MaskOptions
from bot.pipeline import prepare_fill


def to_bytes(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def coffee(testdata: Path, limits: Limits) -> LoadedImage:
    return load_image((testdata / "photo_coffee_1024x768.jpg").read_bytes(), limits)


# --- a photo as the mask -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "photo", ["photo_coffee_1024x768.jpg", "photo_astronaut_512x512.png", "photo_chelsea_900x600.webp"]
)
def test_a_colour_photo_is_refused_as_mask(testdata: Path, limits: Limits, photo: str) -> None:
    with pytest.raises(MaskError) as info:
        build_mask(coffee(testdata, limits), (testdata / photo).read_bytes(), None, limits)
    assert "looks like a colour photo" in info.value.message
    assert "white = repaint" in info.value.message and "black and white" in info.value.message


def test_the_picture_itself_is_refused_as_its_own_mask(testdata: Path, limits: Limits) -> None:
    data = (testdata / "photo_coffee_1024x768.jpg").read_bytes()
    with pytest.raises(MaskError, match="colour photo"):
        build_mask(coffee(testdata, limits), data, None, limits)


def real_mask(testdata: Path) -> Image.Image:
    with Image.open(testdata / "mask_coffee_1024x768_ellipse.png") as mask:
        return mask.convert("L")


@pytest.mark.parametrize(
    "variant",
    ["as is", "rgb", "jpeg q30", "blurred", "tinted", "green brush", "rgb jpeg"],
)
def test_real_masks_are_not_mistaken_for_photos(testdata: Path, limits: Limits, variant: str) -> None:
    mask = real_mask(testdata)
    pictures: dict[str, bytes] = {
        "as is": to_bytes(mask),
        "rgb": to_bytes(mask.convert("RGB")),
        "jpeg q30": to_bytes(mask, "JPEG", quality=30),
        "blurred": to_bytes(mask.filter(ImageFilter.GaussianBlur(20)).convert("RGB")),
        "tinted": to_bytes(Image.merge("RGB", (mask, mask.point(lambda v: v * 0.95), mask.point(lambda v: v * 0.9)))),
        "green brush": to_bytes(Image.merge("RGB", (Image.new("L", mask.size, 0), mask, Image.new("L", mask.size, 0)))),
        "rgb jpeg": to_bytes(mask.convert("RGB"), "JPEG", quality=60),
    }
    result = build_mask(coffee(testdata, limits), pictures[variant], None, limits)
    assert 0.05 < result.coverage < 0.5


def test_transparent_strokes_over_a_photo_are_still_a_mask(testdata: Path, limits: Limits) -> None:
    """With transparency the opaque strokes are the area, whatever their colours."""
    with Image.open(testdata / "photo_coffee_1024x768.jpg") as photo:
        strokes = photo.convert("RGBA")
    strokes.putalpha(real_mask(testdata))
    result = build_mask(coffee(testdata, limits), to_bytes(strokes), None, limits)
    assert result.source == "mask" and 0.05 < result.coverage < 0.5


# --- a mask covering most of the picture -----------------------------------------------------------------


def mostly(size: tuple[int, int], share: float, *, keep_share: bool = False) -> Image.Image:
    """A white mask covering about `share` of the picture (or, with `keep_share`, black over that share)."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, round(width * share) - 1, height - 1), fill=255)
    return mask.point(lambda v: 255 - v) if keep_share else mask


def test_a_mask_covering_most_of_the_picture_asks_about_invert(testdata: Path, limits: Limits) -> None:
    loaded = coffee(testdata, limits)
    result = build_mask(loaded, to_bytes(mostly((1024, 768), 0.83)), None, limits)
    assert "The mask covers 83% of the picture: did you mean `invert_mask`?" in result.notices


def test_an_inverted_mask_covering_most_of_the_picture_asks_about_invert(testdata: Path, limits: Limits) -> None:
    loaded = coffee(testdata, limits)
    result = build_mask(loaded, to_bytes(mostly((1024, 768), 0.17)), None, limits, invert=True)
    assert result.coverage == pytest.approx(0.83, abs=0.01)
    assert "The inverted area covers 83% of the picture: did you mean to leave `invert_mask` off?" in result.notices


@pytest.mark.parametrize("share", [0.5, 0.75])
def test_no_question_for_a_mask_covering_up_to_three_quarters(testdata: Path, limits: Limits, share: float) -> None:
    result = build_mask(coffee(testdata, limits), to_bytes(mostly((1024, 768), share)), None, limits)
    assert not any("invert_mask" in n for n in result.notices)


def test_a_typed_region_covering_most_is_taken_as_meant(testdata: Path, limits: Limits) -> None:
    result = build_mask(coffee(testdata, limits), None, "0%,0%,90%,100%", limits)
    assert result.coverage == pytest.approx(0.9, abs=0.01) and not any("invert" in n for n in result.notices)


# --- the local provider cannot repaint a whole picture -----------------------------------------------------


def whole_picture_cases(testdata: Path) -> dict[str, tuple[bytes, bytes | None, MaskOptions]]:
    photo = (testdata / "photo_coffee_1024x768.jpg").read_bytes()
    clear = Image.new("RGBA", (640, 480), (10, 20, 30, 0))
    return {
        "white mask": (photo, to_bytes(Image.new("L", (1024, 768), 255)), MaskOptions()),
        "transparent picture": (to_bytes(clear), None, MaskOptions()),
        "whole region": (photo, None, MaskOptions(region="0%,0%,100%,100%")),
        "grown over the rest": (photo, to_bytes(mostly((1024, 768), 0.97)), MaskOptions(grow=64)),
    }


@pytest.mark.parametrize("case", ["white mask", "transparent picture", "whole region", "grown over the rest"])
def test_local_refuses_a_whole_picture_fill(testdata: Path, limits: Limits, case: str) -> None:
    image, mask, options = whole_picture_cases(testdata)[case]
    request = FillRequest.build("local", "", {}, mask=options)
    with pytest.raises(MaskError) as info:
        prepare_fill(image, mask, request, limits)
    assert "covers the whole picture" in info.value.message and "`local`" in info.value.message
    assert "AI provider" in info.value.message


@pytest.mark.parametrize("case", ["white mask", "transparent picture"])
def test_ai_providers_may_regenerate_a_whole_picture(testdata: Path, limits: Limits, case: str) -> None:
    image, mask, options = whole_picture_cases(testdata)[case]
    prepared = prepare_fill(image, mask, FillRequest.build("replicate", "a lake", {}, mask=options), limits)
    assert prepared.coverage == 1.0 and any("whole picture" in n for n in prepared.notices)


def test_local_accepts_a_mask_that_keeps_something(testdata: Path, limits: Limits) -> None:
    photo = (testdata / "photo_coffee_1024x768.jpg").read_bytes()
    mask = to_bytes(mostly((1024, 768), 0.9))
    prepared = prepare_fill(photo, mask, FillRequest.build("local", "", {}), limits)
    assert prepared.coverage == pytest.approx(0.9, abs=0.01)
