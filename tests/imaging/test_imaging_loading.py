"""load_image over real photos and every class of bad input, with the user-facing message checked."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from bot.errors import ImageError
from bot.imaging import Limits, encode, load_image


def to_bytes(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def claimed_png(width: int, height: int) -> bytes:
    """A 1-bit PNG whose header claims width x height but whose data is a few hundred bytes."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress((b"\x00" + b"\x00" * ((width + 7) // 8)) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def with_chunk(png: bytes, extra: bytes, *, after_idat: bool) -> bytes:
    """Insert a chunk right after IHDR, or right before IEND."""
    if after_idat:
        end = png.rindex(b"IEND") - 4
        return png[:end] + extra + png[end:]
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return png[:ihdr_end] + extra + png[ihdr_end:]


def px(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """One multi-band pixel, typed."""
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def rejected(data: bytes, limits: Limits, *, what: str = "image") -> str:
    with pytest.raises(ImageError) as info:
        load_image(data, limits, what=what)
    return info.value.message


# --- real pictures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "mode", "size"),
    [
        ("photo_astronaut_512x512.png", "PNG", "RGB", (512, 512)),
        ("photo_coffee_1024x768.jpg", "JPEG", "RGB", (1024, 768)),
        ("photo_chelsea_900x600.webp", "WEBP", "RGB", (900, 600)),
        ("rgba_coffee_ellipse_hole.png", "PNG", "RGBA", (600, 400)),  # the README says 1024x768
        ("mask_coffee_1024x768_ellipse.png", "PNG", "RGB", (1024, 768)),
    ],
)
def test_real_pictures_load(testdata: Path, limits: Limits, name: str, fmt: str, mode: str, size: Any) -> None:
    loaded = load_image((testdata / name).read_bytes(), limits)
    assert (loaded.format, loaded.image.mode, loaded.image.size) == (fmt, mode, size)
    assert loaded.notices == ()
    assert loaded.image.info == {}


def test_format_comes_from_bytes_not_name(testdata: Path, limits: Limits) -> None:
    # A WebP that a user named "cat.png" is still a WebP: there is no name to be fooled by.
    loaded = load_image((testdata / "photo_chelsea_900x600.webp").read_bytes(), limits)
    assert loaded.format == "WEBP"


# --- refused inputs ------------------------------------------------------------------------------------


def test_empty(limits: Limits) -> None:
    message = rejected(b"", limits)
    assert "empty" in message and "PNG, JPEG, WebP or GIF" in message


def test_text_named_png(limits: Limits) -> None:
    message = rejected(b"hello, this is not a picture\n" * 10, limits)
    assert "not a PNG, JPEG, WebP or GIF" in message and "text" in message


def test_svg(limits: Limits) -> None:
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"></svg>'
    message = rejected(svg, limits)
    assert "SVG" in message and "PNG, JPEG, WebP or GIF" in message


@pytest.mark.parametrize(
    ("fmt", "hint"),
    [("BMP", "BMP"), ("TIFF", "TIFF"), ("ICO", "icon")],
)
def test_other_picture_formats(limits: Limits, astronaut: Image.Image, fmt: str, hint: str) -> None:
    message = rejected(to_bytes(astronaut.resize((64, 64)), fmt), limits)
    assert hint in message and "PNG, JPEG, WebP or GIF" in message


def test_zip_and_heic(limits: Limits) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "x")
    assert "ZIP" in rejected(archive.getvalue(), limits)
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100
    assert "HEIC" in rejected(heic, limits)


def test_over_byte_cap_before_decoding(limits: Limits) -> None:
    small = Limits(max_bytes=1024 * 1024, max_pixels=limits.max_pixels)
    message = rejected(b"\x89PNG\r\n\x1a\n".ljust(3 * 1024 * 1024 // 2, b"\x00"), small)
    assert "1.5 MB" in message and "limit is 1 MB" in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(limits: Limits, coffee: Image.Image, fmt: str) -> None:
    whole = to_bytes(coffee, fmt)
    message = rejected(whole[: len(whole) // 2], limits)
    assert "damaged or incomplete" in message


def test_decompression_bomb_rejected_from_header(limits: Limits, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = claimed_png(40000, 40000)
    assert len(bomb) < 30_000
    decoded: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    message = rejected(bomb, limits)
    assert decoded == []
    assert "1,600 megapixels" in message and "40 megapixels" in message


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_cap_is_ours_not_pillows(limits: Limits, monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 MP is under Pillow's own hard limit (~179 MP): our cap must catch it, before any decoding.
    decoded: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    message = rejected(claimed_png(10000, 10000), limits)
    assert decoded == []
    assert "10000x10000" in message and "100 megapixels" in message and "40 megapixels" in message


@pytest.mark.parametrize("after_idat", [False, True])
def test_png_text_chunk_bomb(limits: Limits, astronaut: Image.Image, after_idat: bool) -> None:
    payload = b"Comment\x00\x00" + zlib.compress(b"A" * (4 * 1024 * 1024), 9)
    bomb = with_chunk(to_bytes(astronaut), chunk(b"zTXt", payload), after_idat=after_idat)
    assert len(bomb) < len(to_bytes(astronaut)) + 10_000
    message = rejected(bomb, limits)
    assert "oversized embedded text" in message


@pytest.mark.parametrize(("size", "words"), [((1, 1), "1x1"), ((20, 300), "20x300")])
def test_too_small(limits: Limits, size: tuple[int, int], words: str) -> None:
    message = rejected(to_bytes(Image.new("RGB", size, "red")), limits)
    assert words in message and "at least 32 pixels" in message


def test_extreme_aspect_ratio(limits: Limits) -> None:
    message = rejected(to_bytes(Image.new("RGB", (10000, 100), "red")), limits)
    assert "10000x100" in message and "100:1" in message and "8 times" in message


def test_what_names_the_attachment(limits: Limits) -> None:
    assert rejected(b"", limits, what="mask").startswith("The mask ")
    assert rejected(b"", limits).startswith("The image ")


# --- animation, orientation, modes ---------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "kind"), [("GIF", "GIF"), ("WEBP", "WebP"), ("PNG", "PNG")])
def test_animated_uses_first_frame(limits: Limits, fmt: str, kind: str) -> None:
    frames = [Image.new("RGB", (64, 48), colour) for colour in ("red", "lime", "blue")]
    params: dict[str, Any] = {"save_all": True, "append_images": frames[1:], "duration": 100, "loop": 0}
    if fmt == "WEBP":
        params["lossless"] = True
    loaded = load_image(to_bytes(frames[0], fmt, **params), limits)
    assert loaded.notices == (f"Animated {kind}: only the first frame is used.",)
    assert px(loaded.image, (10, 10)) == (255, 0, 0)


def test_exif_orientation_applied(limits: Limits) -> None:
    stored = Image.new("RGB", (200, 100), "white")
    stored.paste((255, 0, 0), (0, 0, 50, 50))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    loaded = load_image(to_bytes(stored, "JPEG", exif=exif.tobytes(), quality=95), limits)
    assert loaded.image.size == (100, 200)
    red, green, _ = px(loaded.image, (90, 10))  # clockwise: top-left goes to top-right
    assert red > 200 and green < 60
    assert px(loaded.image, (10, 10))[1] > 200


def test_palette_with_transparency_becomes_rgba(limits: Limits) -> None:
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 32, 64))
    loaded = load_image(to_bytes(image, transparency=0), limits)
    assert loaded.image.mode == "RGBA"
    assert px(loaded.image, (10, 10))[3] == 0
    assert px(loaded.image, (50, 10)) == (255, 0, 0, 255)


def test_palette_without_transparency_becomes_rgb(limits: Limits) -> None:
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert load_image(to_bytes(image), limits).image.mode == "RGB"


def test_la_becomes_rgba(limits: Limits) -> None:
    image = Image.new("LA", (64, 64), (200, 255))
    image.paste((100, 0), (0, 0, 16, 16))
    loaded = load_image(to_bytes(image), limits)
    assert loaded.image.mode == "RGBA"
    assert px(loaded.image, (40, 40)) == (200, 200, 200, 255)
    assert px(loaded.image, (5, 5))[3] == 0


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel_become_rgb(limits: Limits, mode: str) -> None:
    image = Image.new(mode, (64, 64), 255)
    loaded = load_image(to_bytes(image), limits)
    assert loaded.image.mode == "RGB" and px(loaded.image, (0, 0)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped(limits: Limits) -> None:
    values = np.zeros((64, 96), dtype=np.uint16)
    values[:, 32:64] = 32768
    values[:, 64:] = 65535
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    loaded = load_image(to_bytes(image), limits)
    assert loaded.image.mode == "RGB"
    assert [px(loaded.image, (x, 5))[0] for x in (10, 40, 80)] == [0, 128, 255]


def test_cmyk_jpeg_becomes_rgb(limits: Limits) -> None:
    image = Image.new("CMYK", (64, 64), (0, 0, 0, 0))
    image.paste((255, 0, 0, 0), (0, 0, 32, 64))  # full cyan on the left
    data = to_bytes(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    loaded = load_image(data, limits)
    assert loaded.image.mode == "RGB"
    red, green, blue = px(loaded.image, (10, 10))
    assert red < 40 and green > 200 and blue > 200
    assert min(px(loaded.image, (50, 10))) > 240


def test_opaque_rgba_becomes_rgb(limits: Limits, astronaut: Image.Image) -> None:
    loaded = load_image(to_bytes(astronaut.convert("RGBA")), limits)
    assert loaded.image.mode == "RGB"


def test_rgb_with_trns_becomes_rgba(limits: Limits) -> None:
    image = Image.new("RGB", (64, 64), (1, 2, 3))
    image.paste((9, 9, 9), (0, 0, 8, 8))
    loaded = load_image(to_bytes(image, transparency=(1, 2, 3)), limits)
    assert loaded.image.mode == "RGBA"
    assert px(loaded.image, (30, 30))[3] == 0 and px(loaded.image, (2, 2))[3] == 255


def test_png_with_zip_appended_loads_and_is_not_forwarded(limits: Limits, astronaut: Image.Image) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("secret.txt", "SECRET-PAYLOAD-123")
    polyglot = to_bytes(astronaut) + archive.getvalue()
    loaded = load_image(polyglot, limits)
    assert loaded.image.size == (512, 512)
    for fmt in ("png", "jpeg", "webp"):
        out = encode(loaded.image, fmt)
        assert b"PK\x03\x04" not in out and b"SECRET-PAYLOAD" not in out


def test_metadata_is_dropped(limits: Limits, coffee: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x8825] = {2: (48.0, 51.0, 30.0)}  # a GPS latitude
    exif[0x010F] = "PhoneMaker"
    loaded = load_image(to_bytes(coffee, "JPEG", exif=exif.tobytes(), comment=b"private"), limits)
    assert loaded.image.info == {}
    assert b"PhoneMaker" not in encode(loaded.image, "jpeg")
