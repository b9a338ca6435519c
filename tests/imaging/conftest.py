"""Shared helpers for the imaging tests: the shared test photos and a few byte-level builders."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.imaging import Limits

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
LIMITS = Limits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000)


def data(name: str) -> bytes:
    """Bytes of a file from the shared test data."""
    return (TESTDATA / name).read_bytes()


def to_bytes(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def crafted_png(width: int, height: int, *, rows: int = 4, extra: list[tuple[int, bytes]] | None = None) -> bytes:
    """A 1-bit grey PNG whose header claims width x height but whose IDAT holds only a few rows.

    `extra` chunks are (position, chunk) with position 0 = before IDAT, 1 = after IDAT.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * rows)
    before = b"".join(chunk for pos, chunk in extra or [] if pos == 0)
    after = b"".join(chunk for pos, chunk in extra or [] if pos == 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + before
        + png_chunk(b"IDAT", idat)
        + after
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    with Image.open(TESTDATA / "photo_coffee_1024x768.jpg") as image:
        return image.convert("RGB")


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    with Image.open(TESTDATA / "photo_astronaut_512x512.png") as image:
        return image.convert("RGB")
