"""A PNG writer that compresses parts of the picture on several cores at once.

The filter and zlib settings are OpenCV's fastest (the Up filter, level 1, the RLE strategy), which made the
smallest and fastest-decoding files of the encoders measured (encoding.py). zlib works on one core, though, and
the PNG of a finished 1440x1440 photo is most of a finish's time. Here the filtered rows are cut into one band
per core, each band is deflated on its own (raw deflate ending on a byte boundary, with no reference to another
band), and the bands are joined into the one zlib stream PNG wants: on 2 cores a 1440x1440 photo takes 30 ms
instead of 53, for the same 3.0 MB. zlib releases the GIL while it compresses, so the bands really overlap.
"""

from __future__ import annotations

import itertools
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bot.picture_pool import lower_priority, usable_cpus

_COLOUR_TYPES = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}  # mode -> (PNG colour type, bytes per pixel)
_NONE, _UP = 0, 2  # PNG filter types: the bytes as they are; each byte minus the one above it
_LEVEL = 1
_MIN_BAND = 1 << 20  # bytes of filtered rows below which a band is not worth a thread
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, the fastest level
_ADLER_BASE = 65521

_helpers: ThreadPoolExecutor | None = None
_helpers_made = threading.Lock()  # picture threads may write their first PNGs at the same moment


def png_bytes(image: Image.Image) -> bytes:
    """A metadata-free 8-bit PNG of an L, RGB or RGBA image."""
    part = _part(_filtered(_rows(image), None))
    return _file(image, [_chunk(b"IDAT", b"".join((_ZLIB_HEADER, part.data, _closing(part.adler))))])


class FixedRows:
    """PNGs of pictures that equal `image` outside rows [top, bottom) — a fill's results, which differ from the
    original only in the fill area's box (`Filled`). The rows outside are filtered and deflated once, ahead of
    the results (in the finish's groundwork), so each picture costs only its own rows: the box of the bench's
    fill is 45 % of a 1440x1440 photo. The caller vouches for the other rows; they are not compared."""

    def __init__(self, image: Image.Image, top: int, bottom: int) -> None:
        if not 0 <= top <= bottom <= image.height:
            raise ValueError(f"rows {top}..{bottom} are not within a picture {image.height} rows high")
        self.mode, self.size, self.top, self.bottom = image.mode, image.size, top, bottom
        self._head = _part(_filtered(_rows(image, 0, top), None))
        # The first row below the box has no filter: the row above it is the results' own.
        self._tail = _part(_filtered(_rows(image, bottom, image.height), None))
        self._head_chunk = _chunk(b"IDAT", _ZLIB_HEADER + self._head.data)
        self._tail_chunk = _chunk(b"IDAT", self._tail.data)

    def png_bytes(self, image: Image.Image) -> bytes:
        """The PNG of `image` (same mode and size, the same rows outside the box), as `png_bytes` would write it."""
        if (image.mode, image.size) != (self.mode, self.size):
            raise ValueError(f"a {image.mode} {image.size} picture is not one of these {self.mode} {self.size} ones")
        above = max(0, self.top - 1)  # the row the box's first row is filtered against, if any
        rows = _rows(image, above, self.bottom)
        middle = _part(_filtered(rows[self.top - above:], rows[0] if self.top else None))
        adler = _adler32_combine(_adler32_combine(self._head.adler, middle.adler, middle.length),
                                 self._tail.adler, self._tail.length)
        return _file(image, [self._head_chunk, _chunk(b"IDAT", middle.data), self._tail_chunk,
                             _chunk(b"IDAT", _closing(adler))])


@dataclass(frozen=True)
class _Part:
    """Filtered rows deflated (raw deflate, ending on a byte boundary), with the adler32 and length of the rows."""

    data: bytes
    adler: int
    length: int


def _rows(image: Image.Image, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) as bytes, one row each (only those are copied out of the picture)."""
    if image.mode not in _COLOUR_TYPES:
        raise ValueError(f"PNG writing takes L, RGB or RGBA pictures, not {image.mode}")
    stop = image.height if stop is None else stop
    part = image if (start, stop) == (0, image.height) else image.crop((0, start, image.width, stop))
    return np.asarray(part, dtype=np.uint8).reshape(stop - start, image.width * _COLOUR_TYPES[image.mode][1])


def _filtered(rows: np.ndarray, above: np.ndarray | None) -> np.ndarray:
    """The rows with PNG's filter byte in front: Up (each byte minus the one above it, modulo 256), the first
    against `above`, or unfiltered without one."""
    height, width = rows.shape
    filtered = np.empty((height, 1 + width), dtype=np.uint8)
    if height == 0:
        return filtered
    filtered[:, 0] = _UP
    if above is None:
        filtered[0, 0] = _NONE
        filtered[0, 1:] = rows[0]
    else:
        np.subtract(rows[0], above, out=filtered[0, 1:])
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    return filtered


def _part(filtered: np.ndarray) -> _Part:
    bands = _bands(filtered)
    adler = 1
    for band in bands:
        adler = zlib.adler32(band, adler)
    return _Part(b"".join(_deflate_all(bands)), adler, filtered.size)


def _closing(adler: int) -> bytes:
    """The end of the zlib stream: an empty final block, then the adler32 of everything it holds."""
    return b"\x03\x00" + struct.pack(">I", adler)


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """The adler32 of two byte strings one after the other, from theirs (zlib's adler32_combine)."""
    remainder = second_length % _ADLER_BASE
    low = ((first & 0xFFFF) + (second & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    high = (remainder * (first & 0xFFFF) + (first >> 16) + (second >> 16) + _ADLER_BASE - remainder) % _ADLER_BASE
    return (high << 16) | low


def _file(image: Image.Image, idat: list[bytes]) -> bytes:
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, _COLOUR_TYPES[image.mode][0], 0, 0, 0)
    return b"".join((_SIGNATURE, _chunk(b"IHDR", header), *idat, _chunk(b"IEND", b"")))


def _bands(filtered: np.ndarray) -> list[memoryview]:
    """The filtered rows cut into up to one band per core, whole rows each."""
    if filtered.size == 0:
        return [memoryview(b"")]
    count = max(1, min(usable_cpus(), filtered.size // _MIN_BAND, filtered.shape[0]))
    edges = np.linspace(0, filtered.shape[0], count + 1).astype(int)
    return [filtered[a:b].data.cast("B") for a, b in itertools.pairwise(edges.tolist())]


def _deflate_all(bands: list[memoryview]) -> list[bytes]:
    """Each band deflated on its own; the caller's thread takes the first, helper threads the others (below the
    event loop's priority, like the picture pool's)."""
    global _helpers
    if len(bands) == 1:
        return [_deflate(bands[0])]
    with _helpers_made:
        if _helpers is None:
            _helpers = ThreadPoolExecutor(max_workers=max(1, usable_cpus() - 1), thread_name_prefix="fillbot-png",
                                          initializer=lower_priority)
        helpers = _helpers
    others = [helpers.submit(_deflate, band) for band in bands[1:]]
    first = _deflate(bands[0])
    return [first, *(other.result() for other in others)]


def _deflate(band: memoryview) -> bytes:
    """Raw deflate blocks, none marked final, ending on a byte boundary (a full flush): bands made this way
    can follow one another in one stream, which the empty final block joined in `png_bytes` closes."""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 9, zlib.Z_RLE)
    return compressor.compress(band) + compressor.flush(zlib.Z_FULL_FLUSH)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
