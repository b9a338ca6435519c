"""Encode pictures for providers and for Discord, always from pixels: a user's original bytes (and their
EXIF/GPS/ICC metadata or anything appended to the file) are never passed on.
"""

from __future__ import annotations

import io
import logging
import math
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

FORMATS = ("png", "jpeg", "webp")
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

PROVIDER_FORMAT = "jpeg"
PROVIDER_MIME = MIME_TYPES[PROVIDER_FORMAT]
PROVIDER_QUALITY = 95

# fit_under: quality steps tried before downscaling, and the smallest side it will shrink to.
_QUALITY_STEPS = (85, 75)
_MIN_SIDE = 64


def encode(image: Image.Image, fmt: str, *, quality: int = 90) -> bytes:
    """Encode to "png", "jpeg" (alias "jpg") or "webp" with no metadata; JPEG drops alpha (it has none)."""
    fmt = _format(fmt)
    if fmt == "jpeg":
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        return _save(image, "JPEG", quality=quality, optimize=False)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    if fmt == "png":
        # Level 1: 2.4x faster than the default 6 on a 1440x1440 result (166 vs 398 ms) for 15% more bytes,
        # which is most of the time between the provider finishing and the user seeing the picture.
        return _save(image, "PNG", compress_level=1)
    return _save(image, "WEBP", quality=quality, method=4)


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
    # Masks are two flat colours: the fastest zlib level is already within a few percent of the best.
    return _save(mask, "PNG", compress_level=1)


def fit_under(images: list[Image.Image], fmt: str, quality: int, max_total_bytes: int) -> tuple[list[bytes], list[str]]:
    """Encode all `images`; if together they exceed `max_total_bytes`, lower quality, then downscale.

    Returns the encoded files and notices saying what was done. Raises ValueError if even 64 px thumbnails
    do not fit, which only happens with a nonsensical cap.
    """
    fmt = _format(fmt)
    encoded = [encode(image, fmt, quality=quality) for image in images]
    total = sum(map(len, encoded))
    if total <= max_total_bytes:
        return encoded, []
    limit = _size_text(max_total_bytes)
    notices: list[str] = []
    if fmt != "png":
        for step in (q for q in _QUALITY_STEPS if q < quality):
            quality = step
            encoded = [encode(image, fmt, quality=quality) for image in images]
            total = sum(map(len, encoded))
            if total <= max_total_bytes:
                return encoded, [f"Images were saved at quality {quality} to fit the {limit} upload limit."]
        notices.append(f"Images were saved at quality {quality} to fit the {limit} upload limit.")
    scale = 1.0
    sizes = [image.size for image in images]
    while total > max_total_bytes:
        # Bytes grow roughly with area: aim just under the cap, but always shrink by at least 10%.
        scale *= min(0.9, math.sqrt(max_total_bytes / total) * 0.95)
        sizes = [(max(1, round(i.width * scale)), max(1, round(i.height * scale))) for i in images]
        if any(min(size) < _MIN_SIDE for size in sizes):
            raise ValueError(f"{len(images)} images cannot fit in {max_total_bytes} bytes as {fmt}")
        encoded = [
            encode(image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0), fmt, quality=quality)
            for image, size in zip(images, sizes, strict=True)
        ]
        total = sum(map(len, encoded))
    if len(set(sizes)) == 1:
        shrunk = f"to {sizes[0][0]}x{sizes[0][1]}"
    else:
        shrunk = f"to {scale:.0%} of their size"
    notices.append(f"Images were downscaled {shrunk} to fit the {limit} upload limit.")
    log.info("fit_under: %d images, scale %.2f, quality %d, %d bytes", len(images), scale, quality, total)
    return encoded, notices


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
