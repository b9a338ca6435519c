"""A small picture showing the user which area will be repainted, for a quick Discord edit before the job runs,
and again beside the result as its "before"."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from bot.imaging.encoding import encode

PREVIEW_FORMAT = "jpeg"
PREVIEW_QUALITY = 80
TINT = (255, 0, 200)
TINT_STRENGTH = 0.45
_CHECKER = 8  # px squares behind transparent parts, like image editors show them
_SQUARES = np.kron(np.array([[204, 153], [153, 204]], dtype=np.uint8), np.ones((_CHECKER, _CHECKER), np.uint8))
_THRESHOLD = [0] * 128 + [255] * 128
BEFORE_NAME = "before.jpg"
BEFORE_SIDE = 320
_OUTER = np.ones((5, 5), dtype=np.uint8)
_INNER = np.ones((3, 3), dtype=np.uint8)


def mask_preview(image: Image.Image, mask: Image.Image, *, max_side: int = 640) -> bytes:
    """JPEG of `image` at most `max_side` px, the fill area tinted magenta and outlined (typically 30–90 KB).

    `mask` may be any size; it is scaled onto the picture. Transparent parts are shown over a checkerboard.
    """
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = _flatten(image if size == image.size else _shrink(image, size))
    area = mask if mask.mode == "L" else mask.convert("L")
    inside = np.asarray((area if area.size == size else _shrink(area, size)).point(_THRESHOLD))
    # In OpenCV and numpy: Pillow's blend, composite and paste took 3 ms on 640x640, these a third of that.
    out = np.array(small)
    tint = np.empty_like(out)
    tint[:] = TINT
    cv2.copyTo(cv2.addWeighted(out, 1 - TINT_STRENGTH, tint, TINT_STRENGTH, 0), inside, out)
    # A ring about 3 px wide straddling the edge; OpenCV's morphology is ~20x faster than Pillow's rank filters.
    outline = cv2.dilate(inside, _OUTER) - cv2.erode(inside, _INNER)
    cv2.copyTo(tint, outline, out)
    return encode(Image.fromarray(out), PREVIEW_FORMAT, quality=PREVIEW_QUALITY)


def before_preview(original: bytes, mask: bytes | None, *, max_side: int = BEFORE_SIDE) -> bytes:
    """A thumbnail of a finished job's stored input (with its fill area marked, for a fill), for the result.

    The inputs were validated when the job was made; a JPEG is decoded at a reduced scale (`draft`), so this
    costs a few ms on a photo rather than a full decode.
    """
    with Image.open(io.BytesIO(original)) as opened:
        opened.draft("RGB", (max_side, max_side))
        opened.load()
        image = opened if opened.mode in ("RGB", "RGBA") else opened.convert("RGBA")
        if mask is not None:
            with Image.open(io.BytesIO(mask)) as area:
                area.load()
                return mask_preview(image, area, max_side=max_side)
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        return encode(_flatten(image), PREVIEW_FORMAT, quality=PREVIEW_QUALITY)


def _shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow's box average by the whole factor, then OpenCV's bilinear for the rest (less than 2x, so nothing
    is skipped): 1440 -> 640 px RGB takes 1 ms, against 3 ms for OpenCV's area average at 2.25x and 5 ms for
    Pillow's resize, which also premultiplies an RGBA picture first. Unpremultiplied, the colour under
    transparent pixels may tint their edge, where the preview draws its outline anyway. `image` is L, RGB or
    RGBA."""
    factor = min(image.width // size[0], image.height // size[1])
    values = np.asarray(image.reduce(factor) if factor >= 2 else image)  # reduced before it is copied out
    if (values.shape[1], values.shape[0]) != size:
        values = cv2.resize(values, size, interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(values, image.mode)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB for display: transparent parts over a grey checkerboard."""
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        return image.convert("RGB")
    reps = (image.height // len(_SQUARES) + 1, image.width // len(_SQUARES) + 1)
    squares = np.tile(_SQUARES, reps)[: image.height, : image.width]
    backdrop = Image.fromarray(squares).convert("RGBA")
    return Image.alpha_composite(backdrop, image).convert("RGB")
