"""Work out which pixels to repaint: from a mask attachment, a typed region, or the picture's transparency.

Every result is a hard "L" mask at the picture's size (255 = repaint, 0 = keep), so providers, previews
and compositing all agree on one area.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from bot.errors import MaskError
from bot.imaging.loading import Limits, LoadedImage, decode, min_alpha

log = logging.getLogger(__name__)

FILL = 255
KEEP = 0
ASPECT_TOLERANCE = 0.01

_THRESHOLD = [KEEP] * 128 + [FILL] * 128
_THRESHOLD_INVERTED = [FILL] * 128 + [KEEP] * 128
_INVERT = [255 - v for v in range(256)]
_NOT_OPAQUE = [FILL] * 255 + [KEEP]
_CLEAR = [FILL] + [KEEP] * 255
_WIPED_SHARE = 0.98  # per channel; all three at 98% means at least 94% of pixels share one colour
# Above this share of the picture, a mask was more likely drawn the wrong way round than meant.
MOSTLY = 0.75
# A mask attachment "is a photo" when, in a sample of about 256 px on the long side, at least 10% of pixels are
# colourful (channels 48+ apart), 25% are neither dark nor light, and there are 100+ distinct colours at 4 bits
# per channel. The test photos score 35-83%, 66-97% and 225-700; masks (JPEG-compressed or blurred) score 0%,
# under 10% and under 20; a mask drawn with a flat coloured brush has 2-22 colours.
_PHOTO_SAMPLE = 256
_PHOTO_COLOURFUL, _PHOTO_BETWEEN, _PHOTO_COLOURS = 0.10, 0.25, 100

# Region text is bounded before any parsing: a number is at most 8 digits before and 4 after the point (no
# picture is 10^8 px wide), so a pasted 400-digit value is refused instead of overflowing the pixel maths.
MAX_REGION_CHARS = 60
_NUMBER = r"\s*(-?)(\d{1,8}(?:\.\d{1,4})?)\s*(%?)\s*"
_REGION = re.compile(rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}$")
REGION_SYNTAX = (
    "Give the region as x,y,w,h: left, top, width and height in pixels (e.g. `100,50,400,300`) "
    "or all four in percent of the picture (e.g. `10%,5%,50%,40%`)."
)
NO_MASK = (
    "There is nothing to repaint yet. Either attach a black-and-white mask (white = repaint, black = keep), "
    "use a picture with transparent holes where it should be repainted, or give `region` as x,y,w,h "
    "(e.g. `100,50,400,300` or `10%,5%,50%,40%`)."
)


@dataclass(frozen=True)
class Region:
    """A rectangle typed by the user: all values in pixels, or all in percent of the picture."""

    x: float
    y: float
    w: float
    h: float
    percent: bool

    def to_box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels, clipped to `size`; empty (right <= left) when fully outside."""
        width, height = size
        left, top, right, bottom = self.unclipped_box(size)
        return (min(left, width), min(top, height), min(right, width), min(bottom, height))

    def unclipped_box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels as typed, possibly past the picture's edge."""
        if not self.percent:
            return (
                math.floor(self.x),
                math.floor(self.y),
                math.ceil(self.x + self.w),
                math.ceil(self.y + self.h),
            )
        width, height = size
        return (
            round(self.x * width / 100),
            round(self.y * height / 100),
            round((self.x + self.w) * width / 100),
            round((self.y + self.h) * height / 100),
        )

    def __str__(self) -> str:
        unit = "%" if self.percent else ""
        return ",".join(f"{v:g}{unit}" for v in (self.x, self.y, self.w, self.h))


@dataclass(frozen=True)
class MaskResult:
    """A hard mask (mode "L", 0 = keep, 255 = repaint) at the picture's size, with what it was made from."""

    mask: Image.Image
    coverage: float
    source: str
    notices: tuple[str, ...]


def parse_region(text: str) -> Region:
    """Parse "x,y,w,h" (pixels) or "x%,y%,w%,h%"; the error message shows the syntax with examples.

    A bare `0` goes with either unit (`0,0,50%,100%`): zero pixels and zero percent are the same place.
    """
    shown = text if len(text) <= MAX_REGION_CHARS else text[:MAX_REGION_CHARS] + "…"
    found = _REGION.match(text) if len(text) <= MAX_REGION_CHARS else None
    if not found:
        raise MaskError(f"`{shown}` is not a region. {REGION_SYNTAX}")
    groups = [found.group(i, i + 1, i + 2) for i in (1, 4, 7, 10)]
    if any(sign for sign, _, _ in groups):
        raise MaskError(
            f"The region `{text}` has a negative value: x and y count from the picture's top-left corner and "
            f"width and height are sizes, so all four are 0 or more. {REGION_SYNTAX}"
        )
    values = [float(number) for _, number, _ in groups]
    units = {unit for (_, _, unit), value in zip(groups, values, strict=True) if value != 0}
    if len(units) > 1:
        raise MaskError(f"`{text}` mixes pixels and percent. {REGION_SYNTAX}")
    percent = units == {"%"}
    x, y, w, h = values
    if w <= 0 or h <= 0:
        raise MaskError(f"The region `{text}` has no area: width and height must be above 0. {REGION_SYNTAX}")
    if percent and max(values) > 100:
        raise MaskError(f"The region `{text}` has a value above 100%. {REGION_SYNTAX}")
    return Region(x=x, y=y, w=w, h=h, percent=percent)


def mask_from_attachment(
    data: bytes, image_size: tuple[int, int], limits: Limits, *, invert: bool = False
) -> MaskResult:
    """Read a mask picture of any mode or bit depth: white (>= 128) repaints, or opaque strokes if it has alpha."""
    mask, notices = _attachment_mask(data, image_size, limits, invert=invert)
    return _finish(mask, "mask", notices, inverted=invert)


def mask_from_alpha(image: Image.Image) -> MaskResult:
    """Repaint every pixel that is not fully opaque, semi-transparent edges included."""
    mask, notices = _alpha_mask(image)
    return _finish(mask, "alpha", notices)


def mask_from_region(region: Region, image_size: tuple[int, int]) -> MaskResult:
    """A rectangle mask; a region partly outside the picture is clipped, one wholly outside is an error."""
    mask, notices, filled = _region_mask(region, image_size, invert=False)
    return _finish(mask, "region", notices, filled=filled)


def build_mask(
    loaded: LoadedImage, mask_data: bytes | None, region: str | None, limits: Limits, *, invert: bool = False
) -> MaskResult:
    """Pick the fill area: an attached mask wins over a region, which wins over the picture's transparency."""
    size = loaded.image.size
    has_alpha = loaded.image.mode == "RGBA"
    notices: list[str] = []
    if mask_data is not None:
        if region:
            notices.append("Both a mask and a region were given: the mask is used and the region ignored.")
        if has_alpha:
            notices.append(
                "The mask decides what is repainted, not the picture's transparency; "
                "transparent parts outside the mask stay transparent."
            )
        mask, more = _attachment_mask(mask_data, size, limits, invert=invert)
        return _finish(mask, "mask", (*notices, *more), inverted=invert)
    if region:
        if has_alpha:
            notices.append(
                "The picture's transparent parts are not repainted because a region was given; they stay transparent."
            )
        mask, more, filled = _region_mask(parse_region(region), size, invert=invert)
        return _finish(mask, "region", (*notices, *more), filled=filled, inverted=invert)
    if not has_alpha:
        raise MaskError(NO_MASK)
    mask, more = _alpha_mask(loaded.image)
    if invert:
        mask = mask.point(_INVERT)
    return _finish(mask, "alpha", (*notices, *more), inverted=invert)


def require_kept_area(mask: Image.Image, provider: str) -> None:
    """Refuse a fill area with nothing kept around it, for a provider that only spreads the kept pixels inward
    (OpenCV inpainting): it would hand the picture back unchanged, a job reported done that did nothing."""
    if mask.mode != "L":
        mask = mask.convert("L")
    if not any(mask.histogram()[:128]):
        raise MaskError(
            f"The fill area covers the whole picture, so the `{provider}` provider has nothing to work from: it "
            "repaints by spreading the surrounding pixels inward and would return the picture unchanged. Keep part "
            "of the picture out of the fill area, or choose an AI provider, which can regenerate a whole picture."
        )


def soften(mask: Image.Image, *, grow: int = 0, feather: int = 0) -> Image.Image:
    """Grow (or with a negative value shrink) the fill area by `grow` px, then blur its edge by `feather` px.

    Growing thresholds the mask at 128 first; feathering is a Gaussian with sigma `feather` (reaching ~3x).
    Only the area around the fill is processed, which keeps this cheap on big photos with small masks.
    """
    if feather < 0:
        raise ValueError(f"feather must be >= 0, not {feather}")
    if mask.mode != "L":
        mask = mask.convert("L")
    if grow == 0 and feather == 0:
        return mask
    bbox = mask.getbbox()
    if bbox is None:
        return mask
    pad = abs(grow) + 3 * feather + 2
    width, height = mask.size
    roi = (max(bbox[0] - pad, 0), max(bbox[1] - pad, 0), min(bbox[2] + pad, width), min(bbox[3] + pad, height))
    values = np.asarray(mask.crop(roi))
    if grow:
        # Distance to the nearest pixel of the other kind: O(pixels) whatever `grow` is, unlike a dilation.
        flag = cv2.THRESH_BINARY_INV if grow > 0 else cv2.THRESH_BINARY
        _, others = cv2.threshold(values, 127, 1, flag)
        distance = cv2.distanceTransform(others, cv2.DIST_L2, 5)
        _, grown = cv2.threshold(distance, float(abs(grow)), FILL, flag)
        values = grown.astype(np.uint8)
    if feather:
        values = cv2.GaussianBlur(values, (0, 0), float(feather))
    out = Image.new("L", mask.size, KEEP)
    out.paste(Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8)), roi[:2])
    return out


def _attachment_mask(
    data: bytes, image_size: tuple[int, int], limits: Limits, *, invert: bool
) -> tuple[Image.Image, list[str]]:
    picture, _, loaded_notices = decode(data, limits, what="mask", grey_ok=True)
    notices = list(loaded_notices)
    if picture.mode in ("RGBA", "LA") and min_alpha(picture) < 128:
        grey = picture.getchannel("A")
        notices.append("The mask has transparent parts, so its opaque strokes are the area to repaint.")
    else:
        if _looks_like_photo(picture):
            raise MaskError(
                "The mask looks like a colour photo, not a mask. A mask is black and white: white = repaint, "
                "black = keep, the same shape as the picture. Attach that, or give `region` instead."
            )
        grey = picture if picture.mode == "L" else picture.convert("L")
    if grey.size != image_size:
        grey = _match_size(grey, image_size)
        notices.append(f"Mask was {picture.width}x{picture.height}, resized to {image_size[0]}x{image_size[1]}.")
    return grey.point(_THRESHOLD_INVERTED if invert else _THRESHOLD), notices


def _looks_like_photo(picture: Image.Image) -> bool:
    """A colourful picture full of in-between shades and distinct colours (see `_PHOTO_SAMPLE`): a photo attached
    by mistake, which thresholding would turn into a meaningless speckled area."""
    if picture.mode not in ("RGB", "RGBA"):
        return False
    scale = min(1.0, _PHOTO_SAMPLE / max(picture.size))
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    values = np.asarray(picture.resize(size, Image.Resampling.NEAREST).convert("RGB"), dtype=np.int16)
    colourful = float(np.mean(values.max(axis=2) - values.min(axis=2) >= 48))
    luma = values.mean(axis=2)
    between = float(np.mean((luma > 48) & (luma < 208)))
    bins = values // 16
    colours = len(np.unique(bins[..., 0] * 256 + bins[..., 1] * 16 + bins[..., 2]))
    return colourful >= _PHOTO_COLOURFUL and between >= _PHOTO_BETWEEN and colours >= _PHOTO_COLOURS


def _match_size(mask: Image.Image, image_size: tuple[int, int]) -> Image.Image:
    """Stretch a mask of the same shape onto the picture; a different shape means it was made for another one."""
    width, height = image_size
    mask_ratio = mask.width / mask.height
    image_ratio = width / height
    if abs(mask_ratio - image_ratio) > ASPECT_TOLERANCE * image_ratio:
        raise MaskError(
            f"The mask is {mask.width}x{mask.height} but the picture is {width}x{height}: their shapes differ, "
            "so the mask cannot be lined up. Attach a mask with the same size as the picture."
        )
    return mask.resize(image_size, Image.Resampling.NEAREST)


def _alpha_mask(image: Image.Image) -> tuple[Image.Image, list[str]]:
    if image.mode != "RGBA":
        raise MaskError(NO_MASK)
    alpha = image.getchannel("A")
    notices: list[str] = []
    clear = alpha.point(_CLEAR)
    clear_count = cv2.countNonZero(np.asarray(clear))  # hard: FILL where fully transparent, else KEEP
    if clear_count:
        colour = _flat_colour(image, clear, clear_count)
        if colour:
            notices.append(
                f"The transparent area is flat {colour} underneath, so the provider sees {colour} there: "
                "fine for repainting, but it gets no hint of what was there before."
            )
    return alpha.point(_NOT_OPAQUE), notices


def _flat_colour(image: Image.Image, where: Image.Image, count: int) -> str | None:
    """Name the colour under `where` if (nearly) all those pixels share it: editors often wipe erased pixels."""
    histogram = image.histogram(mask=where)
    peaks = []
    for band in range(3):
        counts = histogram[band * 256 : band * 256 + 256]
        value = max(range(256), key=counts.__getitem__)
        if counts[value] < _WIPED_SHARE * count:
            return None
        peaks.append(value)
    names = {(0, 0, 0): "black", (255, 255, 255): "white"}
    return names.get((peaks[0], peaks[1], peaks[2]), "#{:02x}{:02x}{:02x}".format(*peaks))


def _region_mask(region: Region, image_size: tuple[int, int], *, invert: bool) -> tuple[Image.Image, list[str], int]:
    """The rectangle as a mask, with notices and its pixel count (a histogram of 12 MP costs ~5 ms)."""
    width, height = image_size
    left, top, right, bottom = region.to_box(image_size)
    if right <= left or bottom <= top:
        raise MaskError(
            f"The region `{region}` lies outside the {width}x{height} picture. x and y count from the top-left corner."
        )
    notices: list[str] = []
    if (left, top, right, bottom) != region.unclipped_box(image_size):
        notices.append(f"The region reached past the picture's edge and was cut to its {width}x{height}.")
    mask = Image.new("L", image_size, FILL if invert else KEEP)
    mask.paste(KEEP if invert else FILL, (left, top, right, bottom))
    area = (right - left) * (bottom - top)
    return mask, notices, width * height - area if invert else area


def _finish(
    mask: Image.Image,
    source: str,
    notices: tuple[str, ...] | list[str],
    *,
    filled: int | None = None,
    inverted: bool = False,
) -> MaskResult:
    """Check the coverage of a hard mask (`filled` pixels, counted here unless known) and wrap it up.

    A mask attachment or an inverted area that covers most of the picture gets a notice: drawing a mask the
    wrong way round is a common slip, and the job would repaint nearly everything.
    """
    total = mask.width * mask.height
    if filled is None:
        # Masks come here hard (every pixel FILL or KEEP): counting the non-zero ones is 20x faster than a
        # histogram (0.2 vs 4.4 ms at 1440x1440).
        filled = cv2.countNonZero(np.asarray(mask))
    if filled == 0:
        what = {"mask": "The mask", "alpha": "The transparency", "region": "The region"}[source]
        raise MaskError(f"{what} selects nothing to repaint: white = repaint, black = keep. Maybe you need `invert`.")
    extra: tuple[str, ...] = ()
    share = math.floor(filled * 100 / total)
    if filled == total:
        extra = ("The fill area covers the whole picture, so all of it will be regenerated.",)
    elif inverted and filled > MOSTLY * total:
        extra = (f"The inverted area covers {share}% of the picture: did you mean to leave `invert_mask` off?",)
    elif source == "mask" and filled > MOSTLY * total:
        extra = (f"The mask covers {share}% of the picture: did you mean `invert_mask`?",)
    return MaskResult(mask=mask, coverage=filled / total, source=source, notices=(*notices, *extra))
