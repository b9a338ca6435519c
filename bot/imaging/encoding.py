"""Encode pictures for providers and for Discord, always from pixels: a user's original bytes (and their
EXIF/GPS/ICC metadata or anything appended to the file) are never passed on.

Delivery keeps the full resolution whenever it can: over a byte budget, `fit_under` first trades lossless for
high-quality lossy, then quality, and shrinks pixels only as the last resort, saying what it did.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from bot.imaging.png import FixedRows, png_bytes

log = logging.getLogger(__name__)

AUTO = "auto"
FORMATS = ("png", "jpeg", "webp")
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}

PROVIDER_FORMAT = "jpeg"
PROVIDER_MIME = MIME_TYPES[PROVIDER_FORMAT]
PROVIDER_QUALITY = 95

# fit_under: lossy qualities tried, best first, before any downscaling, and the smallest side it shrinks to.
# bench/bench_finish.py: four 4000x3000 photos as JPEG total 5.4 MiB at q90 (soft phone photo, 1.4 MB upload)
# and 7.8 MiB at q85 (detailed, 4.4 MB upload), so Discord's 10 MiB holds four full-resolution results at q85.
QUALITY_STEPS = (85, 80, 75, 70, 65, 60)
_MIN_SIDE = 64

# PNGs: the Up filter, zlib level 1 and the RLE strategy (OpenCV's fastest setting, written by png.py on every
# core), rather than Pillow's zlib with per-row adaptive filtering: on a 1440x1440 photo 30 vs 205 ms and 3.0 vs
# 3.4 MB, and it decodes faster (43 vs 72 ms).
# WebP effort: method 0 is 3x faster than 4 on 1440 px and 12 MP photos (57 vs 180 ms, 256 vs 886 ms) and
# its files range from 25% larger to 15% smaller, so delivery waits for the fast one.
_WEBP_METHOD = 0


class Pictures(Protocol):
    """Pictures read one at a time by index: a list, or a `Filled` that reuses one picture for all."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Image.Image: ...


@dataclass(frozen=True)
class Encoded:
    """One encoded picture: its bytes, format ("png", "jpeg" or "webp") and pixel size."""

    data: bytes
    format: str
    size: tuple[int, int]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def encode(image: Image.Image, fmt: str, *, quality: int = 90) -> bytes:
    """Encode to "png", "jpeg" (alias "jpg") or "webp" with no metadata; JPEG drops alpha (it has none)."""
    fmt = _format(fmt)
    if fmt == "jpeg":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        return _save(image, "JPEG", quality=quality, optimize=False)
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    if fmt == "png":
        return png_bytes(image)
    return _save(image, "WEBP", quality=quality, method=_WEBP_METHOD)


def auto_format(source: str | None, *, transparent: bool) -> str:
    """The delivery format when none was asked: the upload's kind (`source`, a loader format name).

    A JPEG photo comes back as JPEG and a lossy WebP as WebP, both at high quality and a fraction of a PNG's
    size; everything else (PNG, GIF, graphics) and anything still transparent comes back lossless as PNG.
    """
    if source == "WEBP":
        return "webp"
    if source == "JPEG" and not transparent:
        return "jpeg"
    return "png"


def encode_for_provider(image: Image.Image) -> bytes:
    """JPEG q95 with 4:4:4 chroma, alpha dropped (the mask is always sent on its own; see `encode_mask`).

    bench/bench_preprocess.py on a noisy 1440x1440 photo, 2 cores: PNG level 1 176 ms / 3.3 MB, PNG level 6
    397 ms / 2.9 MB, WebP lossless 52 ms / 3.0 MB, WebP q90 52 ms / 275 KB (38.4 dB), JPEG q95 4:4:4
    10 ms / 770 KB (40.1 dB PSNR). Uploads are base64 bodies or data URLs, so a few hundred KB matters; the
    JPEG loss is far below what the model changes, and outside the mask the user's own pixels are kept.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    return _save(image, "JPEG", quality=PROVIDER_QUALITY, subsampling=0, optimize=False)


def encode_mask(mask: Image.Image) -> bytes:
    """PNG in mode L: a lossless mask, since JPEG artefacts would turn into grey, half-repainted edges."""
    if mask.mode != "L":
        mask = mask.convert("L")
    return png_bytes(mask)


def fit_under(
    images: Pictures, fmt: str, quality: int, max_total_bytes: int | None, *, png: FixedRows | None = None
) -> tuple[list[Encoded], list[str]]:
    """Encode all `images` as `fmt`; if together they exceed `max_total_bytes`, keep the pixels and lose less.

    In order: PNG falls back to lossy (JPEG, or WebP while transparent) at `quality`; lossy quality steps
    down to 60; only then are the pictures downscaled. Returns the files and notices saying what was done;
    None means no budget. `images` are read one at a time and may be one picture reused (see `Filled`);
    `png` writes them as PNG when they share the rows it holds.
    Raises ValueError if even 64 px thumbnails do not fit, which only happens with a nonsensical cap.
    """
    fmt = _format(fmt)
    encoded = _encode_all(images, fmt, quality, max_total_bytes, png)
    if encoded is not None:
        return encoded, []
    assert max_total_bytes is not None  # without a cap every picture is encoded
    limit = _size_text(max_total_bytes)
    lossy, steps = fmt, tuple(q for q in QUALITY_STEPS if q < quality)
    if fmt == "png":
        lossy = "webp" if any(images[i].mode == "RGBA" for i in range(len(images))) else "jpeg"
        steps = (quality, *steps)
    found = _best_quality(images, lossy, steps, max_total_bytes)
    final = found[0] if found else min(steps, default=quality)
    notices: list[str] = []
    if fmt == "png":
        kept = " to keep their full resolution" if found else ""
        notices.append(
            f"As PNG the images would exceed the {limit} upload limit, so they were saved as {_NAMES[lossy]} "
            f"at quality {final}{kept}."
        )
    elif final != quality:
        notices.append(f"Images were saved at quality {final} to fit the {limit} upload limit.")
    if found:
        return found[1], notices
    encoded, scale = _downscaled(images, lossy, final, max_total_bytes)
    sizes = {e.size for e in encoded}
    shrunk = "to {}x{}".format(*sizes.pop()) if len(sizes) == 1 else f"to {scale:.0%} of their size"
    notices.append(f"Images were downscaled {shrunk} to fit the {limit} upload limit.")
    log.info("fit_under: %d images, scale %.2f, %s q%d, %d bytes", len(images), scale, lossy, final, _total(encoded))
    return encoded, notices


def _best_quality(
    images: Pictures, fmt: str, steps: Sequence[int], cap: int
) -> tuple[int, list[Encoded]] | None:
    """The highest quality in `steps` (best first) whose files fit `cap`, by bisection: sizes fall with
    quality, and each try costs an encode of every picture (a 12 MP WebP takes about 0.3 s)."""
    best: tuple[int, list[Encoded]] | None = None
    low, high = 0, len(steps) - 1
    while low <= high:
        middle = (low + high) // 2
        encoded = _encode_all(images, fmt, steps[middle], cap)
        if encoded is None:
            low = middle + 1
        else:
            best = (steps[middle], encoded)
            high = middle - 1
    return best


def _downscaled(images: Pictures, fmt: str, quality: int, cap: int) -> tuple[list[Encoded], float]:
    """Shrink every picture by one factor until the files fit `cap`: the last resort of `fit_under`."""
    encoded = [_encoded(images[i], fmt, quality) for i in range(len(images))]
    total = _total(encoded)
    full = [e.size for e in encoded]
    scale = 1.0
    while total > cap:
        # Bytes grow roughly with area: aim just under the cap, but always shrink by at least 10%.
        scale *= min(0.9, math.sqrt(cap / total) * 0.95)
        sizes = [(max(1, round(width * scale)), max(1, round(height * scale))) for width, height in full]
        if any(min(size) < _MIN_SIDE for size in sizes):
            raise ValueError(f"{len(images)} images cannot fit in {cap} bytes as {fmt}")
        encoded = [
            _encoded(images[i].resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0), fmt, quality)
            for i, size in enumerate(sizes)
        ]
        total = _total(encoded)
    return encoded, scale


def _encode_all(
    images: Pictures, fmt: str, quality: int, cap: int | None, png: FixedRows | None = None
) -> list[Encoded] | None:
    """Every picture encoded, or None as soon as the running total passes `cap` (no point finishing)."""
    out: list[Encoded] = []
    total = 0
    for index in range(len(images)):
        out.append(_encoded(images[index], fmt, quality, png))
        total += len(out[-1].data)
        if cap is not None and total > cap:
            return None
    return out


def _encoded(image: Image.Image, fmt: str, quality: int, png: FixedRows | None = None) -> Encoded:
    data = png.png_bytes(image) if png is not None and fmt == "png" else encode(image, fmt, quality=quality)
    return Encoded(data, fmt, image.size)


def _total(encoded: Sequence[Encoded]) -> int:
    return sum(len(e.data) for e in encoded)


def _format(fmt: str) -> str:
    name = fmt.lower()
    name = "jpeg" if name == "jpg" else name
    if name not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; expected one of {FORMATS}")
    return name


def _save(image: Image.Image, pil_format: str, **params: Any) -> bytes:
    """Save with every metadata carrier Pillow might copy from `image.info` explicitly emptied."""
    buffer = io.BytesIO()
    image.save(buffer, pil_format, exif=b"", icc_profile=None, comment=None, xmp=b"", pnginfo=None, **params)
    return buffer.getvalue()


def _size_text(n: int) -> str:
    mib = n / (1024 * 1024)
    if mib >= 1:
        return f"{mib:g} MiB" if mib == int(mib) else f"{mib:.1f} MiB"
    return f"{math.ceil(n / 1024)} KiB"
