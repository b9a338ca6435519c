"""The parallel PNG writer: exact pixels for every mode, read back by two decoders, a valid zlib stream however
many bands it was cut into."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from bot.imaging import png


def noise(mode: str, size: tuple[int, int], seed: int = 3) -> Image.Image:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    values = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(values[..., 0] if channels == 1 else values, mode)


def idat_stream(data: bytes) -> bytes:
    """The concatenated IDAT payloads, each chunk's CRC checked on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    stream, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IDAT":
            stream += body
        offset += 12 + length
    return stream


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (64, 48), (700, 600)])
def test_pixels_come_back_exactly(mode: str, size: tuple[int, int]) -> None:
    picture = noise(mode, size)
    data = png.png_bytes(picture)
    with Image.open(io.BytesIO(data)) as back:
        back.load()
        assert back.mode == mode and back.size == size and not back.info.get("exif")
        assert np.array_equal(np.asarray(back), np.asarray(picture))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # a second, libpng decoder
    values = np.asarray(picture)
    order = {"L": None, "RGB": [2, 1, 0], "RGBA": [2, 1, 0, 3]}[mode]  # OpenCV puts blue first
    assert np.array_equal(decoded, values if order is None else values[..., order])


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_bands_join_into_one_valid_zlib_stream(monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    """However many cores share the work, the stream inflates (adler32 checked) to the Up-filtered rows."""
    monkeypatch.setattr(png, "usable_cpus", lambda: cores)
    picture = noise("RGB", (1100, 1000))
    rows = np.asarray(picture).reshape(1000, 3300)
    assert len(png._bands(np.zeros((1000, 3301), np.uint8))) == cores
    raw = np.frombuffer(zlib.decompress(idat_stream(png.png_bytes(picture))), np.uint8).reshape(1000, 3301)
    assert raw[0, 0] == 0 and (raw[1:, 0] == 2).all()  # no filter on the first row, Up on every other
    assert np.array_equal(np.cumsum(raw[:, 1:], axis=0, dtype=np.uint8), rows)
    with Image.open(io.BytesIO(png.png_bytes(picture))) as back:
        assert np.array_equal(np.asarray(back), rows.reshape(1000, 1100, 3))


def test_other_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="L, RGB or RGBA"):
        png.png_bytes(Image.new("P", (4, 4)))


def test_pictures_written_at_the_same_time_from_several_threads_come_back_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The picture pool writes PNGs on every thread at once; they share the helper threads."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(png, "usable_cpus", lambda: 2)
    monkeypatch.setattr(png, "_helpers", None)
    pictures = [noise("RGB", (1100, 1000), seed=seed) for seed in range(4)]  # two bands each
    with ThreadPoolExecutor(max_workers=4) as pool:
        written = list(pool.map(png.png_bytes, pictures))
    for picture, data in zip(pictures, written, strict=True):
        with Image.open(io.BytesIO(data)) as back:
            assert np.array_equal(np.asarray(back), np.asarray(picture))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize(("top", "bottom"), [(0, 0), (0, 400), (150, 330), (150, 150), (399, 400), (0, 1), (400, 400)])
def test_pictures_sharing_rows_outside_a_box_come_back_exactly(mode: str, top: int, bottom: int) -> None:
    """Rows outside [top, bottom) written once for several pictures that differ only inside: each file is a valid
    PNG (chunk CRCs, the stream's adler32) with exactly its own picture's pixels, for two decoders."""
    base = noise(mode, (300, 400))
    writer = png.FixedRows(base, top, bottom)
    for seed in (5, 6):
        picture = base.copy()
        if bottom > top:
            picture.paste(noise(mode, (300, bottom - top), seed=seed), (0, top))
        data = writer.png_bytes(picture)
        rows = np.asarray(picture).reshape(400, -1)
        raw = np.frombuffer(zlib.decompress(idat_stream(data)), np.uint8).reshape(400, -1)
        assert raw[0, 0] == 0 and (bottom == 400 or raw[bottom, 0] == 0)  # no filter where the row above differs
        with Image.open(io.BytesIO(data)) as back:
            back.load()
            assert back.mode == mode and np.array_equal(np.asarray(back).reshape(400, -1), rows)
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.shape[:2] == (400, 300)


def test_rows_written_ahead_take_only_pictures_like_theirs() -> None:
    with pytest.raises(ValueError, match=r"rows 5\.\.3"):
        png.FixedRows(noise("RGB", (8, 8)), 5, 3)
    writer = png.FixedRows(noise("RGB", (8, 8)), 2, 4)
    with pytest.raises(ValueError, match="is not one of these"):
        writer.png_bytes(noise("RGBA", (8, 8)))
    with pytest.raises(ValueError, match="is not one of these"):
        writer.png_bytes(noise("RGB", (8, 9)))


def test_adler32_of_joined_parts_from_theirs() -> None:
    rng = np.random.default_rng(1)
    for first_length, second_length in [(0, 0), (3, 0), (0, 7), (100, 65521), (65520, 65522), (5000, 200_000)]:
        first, second = rng.bytes(first_length), rng.bytes(second_length)
        combined = png._adler32_combine(zlib.adler32(first), zlib.adler32(second), second_length)
        assert combined == zlib.adler32(first + second)
    ones = b"\xff" * 70_000  # the largest sums: every modulo matters
    assert png._adler32_combine(zlib.adler32(ones), zlib.adler32(ones), len(ones)) == zlib.adler32(ones + ones)
