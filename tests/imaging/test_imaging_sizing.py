"""Provider sizing rules and Replicate's output size."""

from __future__ import annotations

import pytest
from PIL import Image

from bot.errors import ParameterError
from bot.imaging import (
    BFL_FILL,
    KONTEXT,
    LOCAL,
    REPLICATE_FILL,
    WAVESPEED_FILL,
    SizingRule,
    replicate_output_size,
    resize_for,
    target_size,
)

RULES = [REPLICATE_FILL, WAVESPEED_FILL, BFL_FILL, KONTEXT, LOCAL]
SIZES = [
    (32, 32),
    (100, 60),
    (512, 512),
    (1024, 768),
    (768, 1024),
    (900, 600),
    (1440, 1440),
    (1500, 1000),
    (4000, 3000),
    (3000, 4000),
    (6000, 6000),
    (8000, 1000),
    (300, 40),
    (4032, 3024),
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_rules_hold(rule: SizingRule, size: tuple[int, int]) -> None:
    width, height = target_size(rule, size)
    assert width % rule.multiple == 0 and height % rule.multiple == 0
    assert min(width, height) >= rule.min_side
    if rule.max_side is not None:
        assert max(width, height) <= rule.max_side
    if rule.max_pixels is not None:
        assert width * height <= rule.max_pixels
    fits = rule.max_side is None or max(size) * rule.min_side / min(size) <= rule.max_side
    if fits:  # the aspect ratio survives, up to flooring to the multiple
        tolerance = rule.multiple / min(width, height) + 0.01
        assert width / height == pytest.approx(size[0] / size[1], rel=tolerance)
    if min(size) >= rule.min_side:  # no upscaling unless needed for min_side
        assert width <= size[0] and height <= size[1]


@pytest.mark.parametrize(
    ("rule", "size", "want"),
    [
        (REPLICATE_FILL, (4000, 3000), (1440, 1056)),
        (REPLICATE_FILL, (1024, 768), (1024, 768)),
        (REPLICATE_FILL, (1000, 700), (992, 672)),
        (REPLICATE_FILL, (100, 100), (256, 256)),
        (REPLICATE_FILL, (300, 40), (1440, 256)),  # 7.5:1 cannot fit 1440 with a 256 floor: clamped
        (WAVESPEED_FILL, (4000, 3000), (1536, 1152)),
        (WAVESPEED_FILL, (1024, 768), (1024, 768)),
        (BFL_FILL, (6000, 6000), (2048, 2048)),
        (BFL_FILL, (4000, 3000), (2048, 1536)),
        (BFL_FILL, (3000, 2000), (2048, 1344)),
        (KONTEXT, (4000, 3000), (1440, 1080)),
        (KONTEXT, (100, 60), (100, 60)),
        (LOCAL, (4000, 3000), (1024, 768)),
        (LOCAL, (900, 600), (900, 600)),
    ],
)
def test_target_size_examples(rule: SizingRule, size: tuple[int, int], want: tuple[int, int]) -> None:
    assert target_size(rule, size) == want


@pytest.mark.parametrize(
    ("size", "megapixels", "want"),
    [
        ((1024, 768), "1", (1152, 864)),
        ((1024, 768), "0.25", (576, 416)),
        ((1024, 768), "match_input", (1024, 768)),
        ((512, 512), "1", (1024, 1024)),
        ((4000, 3000), "match_input", (1440, 1056)),
        ((1000, 700), "match_input", (992, 672)),
        ((1440, 1056), "1", (1184, 864)),
    ],
)
def test_replicate_output_size(size: tuple[int, int], megapixels: str, want: tuple[int, int]) -> None:
    assert replicate_output_size(size, megapixels) == want


def test_match_input_returns_what_we_send() -> None:
    for size in SIZES:
        sent = target_size(REPLICATE_FILL, size)
        assert replicate_output_size(sent, "match_input") == sent


def test_replicate_output_size_rejects_unknown() -> None:
    with pytest.raises(ParameterError) as info:
        replicate_output_size((1024, 768), "2")
    assert "match_input" in info.value.message


def test_resize_for(coffee: Image.Image) -> None:
    big = coffee.resize((4000, 3000)).convert("RGBA")
    mask = Image.new("L", big.size, 0)
    mask.paste(255, (2000, 1500, 4000, 3000))
    image, small_mask = resize_for(REPLICATE_FILL, big, mask)
    assert image.size == small_mask.size == (1440, 1056)
    assert image.mode == "RGB" and small_mask.mode == "L"
    assert small_mask.getpixel((1400, 1000)) == 255 and small_mask.getpixel((100, 100)) == 0
    same, same_mask = resize_for(LOCAL, coffee, Image.new("L", coffee.size, 0))
    assert same is coffee and same_mask.size == coffee.size
