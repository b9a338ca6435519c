"""Picture handling for fill jobs: safe loading, masks, provider sizing, encoding, previews, compositing.

Pure Pillow/NumPy/OpenCV code with no Discord imports; CPU-bound, so callers run it in a worker thread.
"""

from __future__ import annotations

import cv2

from bot.imaging.compositing import Filled, composite, fit_result
from bot.imaging.encoding import (
    AUTO,
    MIME_TYPES,
    PROVIDER_MIME,
    Encoded,
    Pictures,
    auto_format,
    encode,
    encode_for_provider,
    encode_mask,
    fit_under,
)
from bot.imaging.loading import ACCEPTED, Limits, LoadedImage, load_image, sniff_format
from bot.imaging.masks import (
    MaskResult,
    Region,
    build_mask,
    mask_from_alpha,
    mask_from_attachment,
    mask_from_region,
    parse_region,
    require_kept_area,
    soften,
)
from bot.imaging.preview import mask_preview
from bot.imaging.sizing import (
    BFL_FILL,
    KONTEXT,
    LOCAL,
    REPLICATE_FILL,
    WAVESPEED_FILL,
    SizingRule,
    replicate_output_size,
    resize_for,
    target_size,
)

# No thread pool of OpenCV's own: the picture pool already spreads picture work over the cores, below the event
# loop's priority, which OpenCV's threads do not keep; and a process stopping while they ran aborted with
# "terminate called without an active exception" (a worker stopped by SIGTERM during a finish's groundwork).
cv2.setNumThreads(1)

__all__ = [
    "ACCEPTED",
    "AUTO",
    "BFL_FILL",
    "KONTEXT",
    "LOCAL",
    "MIME_TYPES",
    "PROVIDER_MIME",
    "REPLICATE_FILL",
    "WAVESPEED_FILL",
    "Encoded",
    "Filled",
    "Limits",
    "LoadedImage",
    "MaskResult",
    "Pictures",
    "Region",
    "SizingRule",
    "auto_format",
    "build_mask",
    "composite",
    "encode",
    "encode_for_provider",
    "encode_mask",
    "fit_result",
    "fit_under",
    "load_image",
    "mask_from_alpha",
    "mask_from_attachment",
    "mask_from_region",
    "mask_preview",
    "parse_region",
    "replicate_output_size",
    "require_kept_area",
    "resize_for",
    "sniff_format",
    "soften",
    "target_size",
]
