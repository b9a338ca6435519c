"""Masks from attachments of every mode, from transparency and from typed regions; coverage and softening."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from bot.errors import ImageError, MaskError
from bot.imaging import (
    Limits,
    LoadedImage,
    Region,
    build_mask,
    load_image,
    mask_from_alpha,
    mask_from_attachment,
    mask_from_region,
    parse_region,
    soften,
)

SIZE = (200, 100)
BOX = (40, 20, 120, 70)  # 80x50 = 4000 px of 20000


def to_bytes(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def expected(size: tuple[int, int] = SIZE, box: tuple[int, int, int, int] = BOX) -> np.ndarray:
    out = np.zeros((size[1], size[0]), dtype=np.uint8)
    out[box[1] : box[3], box[0] : box[2]] = 255
    return out


def loaded_rgb(size: tuple[int, int] = SIZE) -> LoadedImage:
    return LoadedImage(image=Image.new("RGB", size, (90, 120, 150)), format="PNG", notices=())


def with_hole(size: tuple[int, int] = SIZE, box: tuple[int, int, int, int] = BOX, under: Any = "black") -> Image.Image:
    image = Image.new("RGBA", size, (90, 120, 150, 255))
    image.paste(Image.new("RGBA", (box[2] - box[0], box[3] - box[1]), under), box[:2])
    image.putalpha(Image.fromarray(255 - expected(size, box)))
    return image


# --- attachments ---------------------------------------------------------------------------------------


def grey_mask(mode: str) -> bytes:
    values = expected()
    if mode == "I;16":
        return to_bytes(Image.fromarray(values.astype(np.uint16) * 257))
    image = Image.fromarray(values).convert(mode)
    return to_bytes(image, "JPEG" if mode == "CMYK" else "PNG")


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "P", "I;16", "LA"])
def test_attachment_any_mode(limits: Limits, mode: str) -> None:
    result = mask_from_attachment(grey_mask(mode), SIZE, limits)
    assert result.mask.mode == "L" and result.source == "mask"
    assert np.array_equal(np.asarray(result.mask), expected())
    assert result.coverage == pytest.approx(4000 / 20000)


@pytest.mark.parametrize("stroke", [(255, 255, 255, 255), (0, 0, 0, 255), (255, 0, 0, 200)])
def test_attachment_strokes_on_transparent_layer(limits: Limits, stroke: tuple[int, ...]) -> None:
    layer = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    layer.paste(Image.new("RGBA", (80, 50), stroke), BOX[:2])
    result = mask_from_attachment(to_bytes(layer), SIZE, limits)
    assert np.array_equal(np.asarray(result.mask), expected())
    assert any("opaque strokes" in n for n in result.notices)


def test_attachment_grey_values_threshold_at_128(limits: Limits) -> None:
    values = np.full((100, 200), 127, dtype=np.uint8)
    values[:, 100:] = 128
    result = mask_from_attachment(to_bytes(Image.fromarray(values)), SIZE, limits)
    assert result.coverage == pytest.approx(0.5)
    assert set(np.unique(np.asarray(result.mask))) == {0, 255}


def test_attachment_invert(limits: Limits) -> None:
    result = mask_from_attachment(grey_mask("L"), SIZE, limits, invert=True)
    assert np.array_equal(np.asarray(result.mask), 255 - expected())
    assert result.coverage == pytest.approx(0.8)


def test_attachment_resized_with_notice(limits: Limits) -> None:
    small = Image.fromarray(expected((100, 50), (20, 10, 60, 35)))
    result = mask_from_attachment(to_bytes(small), SIZE, limits)
    assert "Mask was 100x50, resized to 200x100." in result.notices
    assert result.mask.size == SIZE
    assert np.array_equal(np.asarray(result.mask), expected())


def test_attachment_aspect_mismatch(limits: Limits) -> None:
    with pytest.raises(MaskError) as info:
        mask_from_attachment(to_bytes(Image.new("L", (100, 100), 255)), SIZE, limits)
    assert "100x100" in info.value.message and "200x100" in info.value.message


def test_attachment_bad_file_names_the_mask(limits: Limits) -> None:
    with pytest.raises(ImageError) as info:
        mask_from_attachment(b"not a picture at all", SIZE, limits)
    assert info.value.message.startswith("The mask ")


def test_real_mask_matches_real_photo(testdata: Path, limits: Limits) -> None:
    photo = load_image((testdata / "photo_coffee_1024x768.jpg").read_bytes(), limits)
    result = build_mask(photo, (testdata / "mask_coffee_1024x768_ellipse.png").read_bytes(), None, limits)
    source = np.asarray(Image.open(testdata / "mask_coffee_1024x768_ellipse.png"))
    assert result.source == "mask"
    assert np.array_equal(np.asarray(result.mask), np.where(source >= 128, 255, 0))
    assert 0.01 < result.coverage < 0.9


# --- transparency --------------------------------------------------------------------------------------


def test_alpha_semi_transparent_counts_as_fill() -> None:
    image = with_hole(under=(10, 200, 30))
    image.putpixel((5, 5), (90, 120, 150, 254))
    result = mask_from_alpha(image)
    want = expected()
    want[5, 5] = 255
    assert np.array_equal(np.asarray(result.mask), want)
    assert result.source == "alpha"


def test_alpha_wiped_colour_warning() -> None:
    notices = mask_from_alpha(with_hole(under="black")).notices
    assert len(notices) == 1 and "flat black" in notices[0]
    assert "flat white" in mask_from_alpha(with_hole(under="white")).notices[0]


def test_alpha_no_warning_when_colour_kept(testdata: Path, limits: Limits) -> None:
    loaded = load_image((testdata / "rgba_coffee_ellipse_hole.png").read_bytes(), limits)
    result = build_mask(loaded, None, None, limits)
    assert result.source == "alpha" and result.notices == ()
    assert result.coverage == pytest.approx(40792 / (600 * 400))


def test_fully_transparent_is_whole_picture() -> None:
    result = mask_from_alpha(Image.new("RGBA", SIZE, (0, 0, 0, 0)))
    assert result.coverage == 1.0
    assert any("whole picture" in n for n in result.notices)


def test_opaque_rgba_is_no_alpha(limits: Limits) -> None:
    loaded = load_image(to_bytes(Image.new("RGBA", SIZE, (1, 2, 3, 255))), limits)
    with pytest.raises(MaskError) as info:
        build_mask(loaded, None, None, limits)
    assert "transparent" in info.value.message


def test_nothing_given_explains_three_ways(limits: Limits) -> None:
    with pytest.raises(MaskError) as info:
        build_mask(loaded_rgb(), None, None, limits)
    message = info.value.message
    assert "mask" in message and "white = repaint" in message
    assert "transparent" in message and "region" in message and "x,y,w,h" in message


# --- regions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "region"),
    [
        ("40,20,80,50", Region(40, 20, 80, 50, percent=False)),
        (" 40 , 20,80 ,50 ", Region(40, 20, 80, 50, percent=False)),
        ("20%,20%,40%,50%", Region(20, 20, 40, 50, percent=True)),
        ("12.5%,0%,50%,100%", Region(12.5, 0, 50, 100, percent=True)),
        ("0,0,90%,100%", Region(0, 0, 90, 100, percent=True)),  # a bare 0 goes with percent
        ("10%,0,50%,0.0%", None),
        ("0,0,90,100", Region(0, 0, 90, 100, percent=False)),
    ],
)
def test_parse_region(text: str, region: Region | None) -> None:
    if region is None:
        with pytest.raises(MaskError, match="no area"):
            parse_region(text)
    else:
        assert parse_region(text) == region


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("40,20,80", "not a region"),
        ("a,b,c,d", "not a region"),
        ("-5,0,10,10", "negative value"),
        ("10%,20%,-30%,40%", "negative value"),
        ("1" * 400 + ",0,10,10", "is not a region"),
        ("0," * 30 + "1", "is not a region"),
        ("123456789,0,10,10", "is not a region"),
        ("10%,20,30%,40%", "mixes pixels and percent"),
        ("0,5,30%,40%", "mixes pixels and percent"),
        ("10,10,0,10", "no area"),
        ("10%,10%,120%,10%", "above 100%"),
    ],
)
def test_parse_region_errors(text: str, words: str) -> None:
    with pytest.raises(MaskError) as info:
        parse_region(text)
    assert words in info.value.message
    assert "x,y,w,h" in info.value.message and "e.g." in info.value.message


def test_region_pixels_and_percent_give_the_same_mask() -> None:
    by_pixels = mask_from_region(parse_region("40,20,80,50"), SIZE)
    by_percent = mask_from_region(parse_region("20%,20%,40%,50%"), SIZE)
    assert np.array_equal(np.asarray(by_pixels.mask), expected())
    assert np.array_equal(np.asarray(by_percent.mask), expected())
    assert by_pixels.coverage == pytest.approx(0.2) and by_pixels.notices == ()


def test_region_partly_outside_is_clipped() -> None:
    result = mask_from_region(parse_region("150,50,100,100"), SIZE)
    assert np.array_equal(np.asarray(result.mask), expected(box=(150, 50, 200, 100)))
    assert any("cut" in n for n in result.notices)


def test_region_wholly_outside_is_an_error() -> None:
    with pytest.raises(MaskError) as info:
        mask_from_region(parse_region("300,10,50,50"), SIZE)
    assert "outside" in info.value.message and "200x100" in info.value.message


# --- precedence, invert, coverage ----------------------------------------------------------------------


def test_precedence_mask_over_region_over_alpha(limits: Limits) -> None:
    loaded = LoadedImage(image=with_hole(box=(0, 0, 10, 10)), format="PNG", notices=())
    by_mask = build_mask(loaded, grey_mask("L"), "0,0,50,50", limits)
    assert by_mask.source == "mask" and np.array_equal(np.asarray(by_mask.mask), expected())
    assert len(by_mask.notices) == 2
    by_region = build_mask(loaded, None, "40,20,80,50", limits)
    assert by_region.source == "region" and np.array_equal(np.asarray(by_region.mask), expected())
    assert any("stay transparent" in n for n in by_region.notices)
    assert build_mask(loaded, None, None, limits).source == "alpha"


@pytest.mark.parametrize("region", [None, "40,20,80,50"])
def test_build_mask_invert(limits: Limits, region: str | None) -> None:
    loaded = loaded_rgb() if region else LoadedImage(image=with_hole(), format="PNG", notices=())
    result = build_mask(loaded, None, region, limits, invert=True)
    assert np.array_equal(np.asarray(result.mask), 255 - expected())


def test_mask_selecting_nothing(limits: Limits) -> None:
    with pytest.raises(MaskError) as info:
        build_mask(loaded_rgb(), to_bytes(Image.new("L", SIZE, 0)), None, limits)
    assert "selects nothing" in info.value.message and "invert" in info.value.message
    with pytest.raises(MaskError):
        build_mask(loaded_rgb(), None, "0,0,200,100", limits, invert=True)


def test_mask_selecting_everything(limits: Limits) -> None:
    result = build_mask(loaded_rgb(), to_bytes(Image.new("L", SIZE, 255)), None, limits)
    assert result.coverage == 1.0
    assert any("whole picture" in n for n in result.notices)


# --- soften --------------------------------------------------------------------------------------------


def bbox(mask: Image.Image, level: int = 128) -> tuple[int, int, int, int] | None:
    return mask.point(lambda v: 255 if v >= level else 0).getbbox()


def test_soften_identity() -> None:
    mask = Image.fromarray(expected())
    assert np.array_equal(np.asarray(soften(mask)), expected())


def test_grow_and_shrink() -> None:
    mask = Image.fromarray(expected())
    assert bbox(soften(mask, grow=10)) == (30, 10, 130, 80)
    assert bbox(soften(mask, grow=-10)) == (50, 30, 110, 60)
    grown = np.asarray(soften(mask, grow=10))
    assert grown[10, 30] == 0  # corners are rounded: growth is by distance, not a square
    assert set(np.unique(grown)) == {0, 255}


def test_shrink_keeps_picture_edges() -> None:
    mask = Image.fromarray(expected(box=(0, 0, 200, 50)))
    assert bbox(soften(mask, grow=-5)) == (0, 0, 200, 45)


def test_feather_blurs_the_edge_only() -> None:
    mask = Image.fromarray(expected())
    soft = np.asarray(soften(mask, feather=4))
    assert soft[45, 80] == 255 and soft[95, 190] == 0
    edge = soft[45, 34:46]
    assert np.all(np.diff(edge.astype(int)) >= 0) and 0 < edge[3] < edge[-3] < 255


def test_soften_matches_whole_picture_processing() -> None:
    # The region-of-interest shortcut must give exactly what processing the whole mask gives.
    values = expected(size=(300, 200), box=(100, 60, 180, 120))
    got = np.asarray(soften(Image.fromarray(values), grow=7, feather=3))
    keep = np.where(values >= 128, 0, 1).astype(np.uint8)
    grown = np.where(cv2.distanceTransform(keep, cv2.DIST_L2, 5) <= 7, 255, 0).astype(np.uint8)
    assert np.array_equal(got, cv2.GaussianBlur(grown, (0, 0), 3.0))


def test_soften_empty_mask_and_bad_feather() -> None:
    empty = Image.new("L", SIZE, 0)
    assert soften(empty, grow=5, feather=2).getbbox() is None
    with pytest.raises(ValueError):
        soften(empty, feather=-1)


def test_a_huge_region_is_refused_without_echoing_it_back() -> None:
    """A 400-digit value used to overflow the pixel maths; now it is refused and quoted only in part."""
    with pytest.raises(MaskError) as info:
        parse_region("9" * 400 + ",0,10,10")
    assert len(info.value.message) < 400
