"""Put a provider's result back into the user's picture at full resolution.

Providers return other sizes (docs/providers.md §5 item 10) and re-encode every pixel, so only the fill area
is taken from the result; everything else stays the user's own pixels.
"""

from __future__ import annotations

from PIL import Image, ImageChops

from bot.imaging.masks import soften

_THRESHOLD = [0] * 128 + [255] * 128


def composite(original: Image.Image, result: Image.Image, mask: Image.Image, *, feather: int = 4) -> Image.Image:
    """The original with the result pasted through `mask`, its edge feathered outward by `feather` px.

    The feather only grows outward: inside the fill area the result is used as is, because under a
    transparent hole the original's colour is junk (often wiped to black) and must not bleed in. Pixels
    more than about 3x`feather` px outside the mask are exactly the original's. An RGBA original becomes
    opaque where it was filled; if nothing transparent is left, the output is RGB.
    """
    if feather < 0:
        raise ValueError(f"feather must be >= 0, not {feather}")
    size = original.size
    filled = fit_result(size, result)
    if filled.mode != "RGB":
        filled = filled.convert("RGB")
    hard = mask if mask.mode == "L" else mask.convert("L")
    if hard.size != size:
        hard = hard.resize(size, Image.Resampling.NEAREST)
    hard = hard.point(_THRESHOLD)
    weight = ImageChops.lighter(soften(hard, feather=feather), hard) if feather else hard
    if original.mode == "RGBA":
        base = original.convert("RGB")
        out = Image.composite(filled, base, weight)
        alpha = ImageChops.lighter(original.getchannel("A"), weight)
        if alpha.getextrema() == (255, 255):
            return out
        out.putalpha(alpha)
        return out
    base = original if original.mode == "RGB" else original.convert("RGB")
    return Image.composite(filled, base, weight)


def fit_result(original_size: tuple[int, int], result: Image.Image) -> Image.Image:
    """The result scaled (LANCZOS) to the original's size, for replies that show the provider's picture whole."""
    if result.mode not in ("RGB", "RGBA"):
        result = result.convert("RGB")
    if result.size == original_size:
        return result
    return result.resize(original_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
