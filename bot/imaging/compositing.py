"""Put a provider's result back into the user's picture at full resolution.

Providers return other sizes (docs/providers.md §5 item 10) and re-encode every pixel, so only the fill area
is taken from the result; everything else stays the user's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageChops

from bot.imaging.masks import soften
from bot.imaging.png import FixedRows

_THRESHOLD = [0] * 128 + [255] * 128

Box = tuple[int, int, int, int]


class Filled:
    """The original with each provider result pasted in through the mask: a sequence of finished pictures.

    Only the mask's box, widened by the feather, is composited, and only that patch is kept per result, so
    four results on a 12 MP photo cost one photo and four small patches rather than five photos, and no
    full-size resize or blend. Item i is the original itself with patch i pasted in: it is valid until the
    next item is taken, and the original passed in is changed (give a copy to keep it).

    The feather only grows outward: inside the fill area the result is used as is, because under a
    transparent hole the original's colour is junk (often wiped to black) and must not bleed in. Pixels
    more than about 3x`feather` px outside the mask are exactly the original's. An RGBA original becomes
    opaque where it was filled; if nothing transparent is left, the pictures are RGB.
    """

    def __init__(self, original: Image.Image, mask: Image.Image, *, feather: int = 4) -> None:
        if feather < 0:
            raise ValueError(f"feather must be >= 0, not {feather}")
        base = original if original.mode in ("RGB", "RGBA") else original.convert("RGB")
        hard = mask if mask.mode == "L" else mask.convert("L")
        if hard.size != base.size:
            hard = hard.resize(base.size, Image.Resampling.NEAREST)
        hard = hard.point(_THRESHOLD)
        self._area: _Area | None = None
        self._patches: list[Image.Image] = []
        self._count = 0
        box = _fill_box(hard, feather, base.size)
        if box is not None:
            area = hard.crop(box)
            # soften() only looks 3x`feather` px around the area, which the box includes: the same as the whole.
            weight = ImageChops.lighter(soften(area, feather=feather), area) if feather else area
            alpha: Image.Image | None = None
            if base.mode == "RGBA":
                alpha = base.getchannel("A")
                filled = ImageChops.lighter(alpha.crop(box), weight)
                alpha.paste(filled, box)
                # Opaque everywhere once filled: deliver RGB (smaller, and JPEG can carry it).
                alpha, base = (None, base.convert("RGB")) if alpha.getextrema()[0] == 255 else (filled, base)
            under = base.crop(box) if base.mode == "RGB" else base.crop(box).convert("RGB")
            self._area = _Area(box, weight, under, alpha)
        self._base = base

    @property
    def size(self) -> tuple[int, int]:
        return self._base.size

    @property
    def mode(self) -> str:
        return self._base.mode

    def png_writer(self) -> FixedRows:
        """A PNG writer for these pictures with the rows outside the box written already (`FixedRows`)."""
        top, bottom = (self._area.box[1], self._area.box[3]) if self._area is not None else (0, 0)
        return FixedRows(self._base, top, bottom)

    def add(self, result: Image.Image) -> None:
        """Blend one result (any size or mode: it is scaled onto the picture) and keep only its patch."""
        self._count += 1
        if self._area is None:
            return
        area = self._area
        patch = Image.composite(_scaled_part(result, self._base.size, area.box), area.under, area.weight)
        if area.alpha is not None:
            patch.putalpha(area.alpha)
        self._patches.append(patch)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int, /) -> Image.Image:
        if not -self._count <= index < self._count:
            raise IndexError(index)
        if self._area is not None:
            self._base.paste(self._patches[index], self._area.box)
        return self._base


@dataclass(frozen=True)
class _Area:
    """Where results go: the box, the blend weight and the original's RGB (and filled alpha) inside it."""

    box: Box
    weight: Image.Image
    under: Image.Image
    alpha: Image.Image | None


def composite(original: Image.Image, result: Image.Image, mask: Image.Image, *, feather: int = 4) -> Image.Image:
    """The original (left unchanged) with `result` pasted through `mask`, its edge feathered outward by
    `feather` px; see `Filled`."""
    filled = Filled(original.copy(), mask, feather=feather)
    filled.add(result)
    return filled[0]


def fit_result(original_size: tuple[int, int], result: Image.Image) -> Image.Image:
    """The result scaled (LANCZOS) to the original's size, for replies that show the provider's picture whole."""
    if result.mode not in ("RGB", "RGBA"):
        result = result.convert("RGB")
    if result.size == original_size:
        return result
    return result.resize(original_size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _fill_box(hard: Image.Image, feather: int, size: tuple[int, int]) -> Box | None:
    """The area's bounding box widened by the feather's reach (as in `soften`), or None for an empty mask."""
    bbox = hard.getbbox()
    if bbox is None:
        return None
    pad = 3 * feather + 2 if feather else 0
    width, height = size
    return (max(bbox[0] - pad, 0), max(bbox[1] - pad, 0), min(bbox[2] + pad, width), min(bbox[3] + pad, height))


def _scaled_part(result: Image.Image, size: tuple[int, int], box: Box) -> Image.Image:
    """`box` of the result scaled to `size`, resampling only that part: equal to scaling the whole result
    and cropping (up to rounding), at a fraction of the cost when the area is small."""
    if result.mode != "RGB":
        result = result.convert("RGB")
    if result.size == size:
        return result.crop(box)
    sx, sy = result.width / size[0], result.height / size[1]
    source = (box[0] * sx, box[1] * sy, min(box[2] * sx, result.width), min(box[3] * sy, result.height))
    return result.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS, box=source, reducing_gap=3.0)
