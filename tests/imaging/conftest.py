"""Fixtures for the imaging tests: the test photos in tests/data (real pictures) and default limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.imaging import Limits

TESTDATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def testdata() -> Path:
    assert TESTDATA.is_dir(), f"test pictures missing at {TESTDATA}"
    return TESTDATA


@pytest.fixture(scope="session")
def limits() -> Limits:
    return Limits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000)


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    """The 1024x768 coffee photo as RGB."""
    with Image.open(TESTDATA / "photo_coffee_1024x768.jpg") as image:
        return image.convert("RGB")


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """The 512x512 astronaut photo as RGB."""
    with Image.open(TESTDATA / "photo_astronaut_512x512.png") as image:
        return image.convert("RGB")
