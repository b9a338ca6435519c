"""Decoded uploads kept on disk as raw pixels between checking a job, preparing it and finishing it.

A job's upload is decoded when it is prepared and again when its result is put back into it (and with the web
side on, a /fill without a mask first decodes it to see whether it has transparent holes). For a PNG that
second decode was the largest cost of the finish (1440x1440 RGBA: 71 ms to decode, 2 ms to read 8 MB of raw
pixels back); keeping the pixels in memory instead would cost 8 MB per waiting job. So the decoded upload
(pixels, plus the format and notices the loader found) goes to a private directory, keyed by a hash of the
upload's bytes: later steps read it (`peek`) until the finish takes it, and entries older than `max_age`, or
the oldest when the byte budget needs room, are dropped. It is only a cache: a missing, evicted or damaged file
means decoding the upload again, and the directory is the process's own (created 0700, removed at close; one
left by a killed process is removed by the next start).

JPEG uploads are not kept (nor looked up): they decode about as fast as their raw pixels read back (9 vs 2 ms at
1440x1440, for 6 MB of disk each).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from bot.imaging.loading import LoadedImage, sniff_format

log = logging.getLogger(__name__)

_PREFIX = "fillbot-pixels-"
_HEADER = struct.Struct("<8s4sIII")  # magic, mode, width, height, length of the JSON that follows
_MAGIC = b"FBPIXEL2"
_MODES = {"RGB": 3, "RGBA": 4, "L": 1}
_KEPT_FORMATS = frozenset({"PNG", "WEBP", "GIF"})  # what decodes slower than its raw pixels read back


def pixels_key(upload: bytes) -> str:
    """The name an upload's pixels are kept under."""
    return hashlib.blake2b(upload, digest_size=20).hexdigest()


class PixelSpool:
    """Raw pixels of decoded uploads in a private directory, at most `budget` bytes and `max_age` seconds each."""

    def __init__(
        self, budget: int, parent: Path | None = None, *, max_age: float = 7200.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.max_age = max_age
        self.clock = clock
        parent = parent or Path(tempfile.gettempdir())
        _sweep(parent)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent))
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (bytes, kept at), oldest first
        self._total = 0
        self._lock = threading.Lock()

    def keep(self, upload: bytes, loaded: LoadedImage) -> None:
        """Keep `loaded`, the decoded `upload`, unless it is a JPEG, already kept or larger than the whole budget."""
        if loaded.format not in _KEPT_FORMATS:
            return
        image = loaded.image
        bands = _MODES.get(image.mode)
        meta = json.dumps({"format": loaded.format, "notices": list(loaded.notices)}).encode()
        size = _HEADER.size + len(meta) + image.width * image.height * (bands or 0)
        key = pixels_key(upload)
        with self._lock:
            if bands is None or size > self.budget or key in self._entries:
                return
        partial = self.directory / f"{key}.{threading.get_ident()}.part"
        try:
            with open(partial, "wb") as file:
                file.write(_HEADER.pack(_MAGIC, image.mode.encode().ljust(4), image.width, image.height, len(meta)))
                file.write(meta)
                file.write(image.tobytes())
            os.replace(partial, self.directory / key)
        except OSError as exc:  # a full disk costs a decode later, never the job
            log.warning("could not keep decoded pixels (%s); the finish will decode the upload again", exc)
            with contextlib.suppress(OSError):
                partial.unlink()
            return
        with self._lock:
            if key in self._entries:  # another thread kept the same upload meanwhile
                return
            now = self.clock()
            self._entries[key] = (size, now)
            self._total += size
            for old, (_size, kept_at) in list(self._entries.items()):
                if self._total <= self.budget and now - kept_at <= self.max_age:
                    break
                self._drop(old)

    def peek(self, upload: bytes) -> LoadedImage | None:
        """The kept decode of `upload`, left kept for a later step; None if there is none (or it is damaged)."""
        return self._read(upload, take=False)

    def take(self, upload: bytes) -> LoadedImage | None:
        """The kept decode of `upload`, removed from the spool (its last use); None as for `peek`."""
        return self._read(upload, take=True)

    def _read(self, upload: bytes, *, take: bool) -> LoadedImage | None:
        if sniff_format(upload) not in _KEPT_FORMATS:
            return None  # never kept: no need to hash it
        key = pixels_key(upload)
        path = self.directory / key
        with self._lock:
            if key not in self._entries:
                return None
            if take:
                self._total -= self._entries.pop(key)[0]
        try:
            data = path.read_bytes()
        except OSError:
            return None
        finally:
            if take:
                with contextlib.suppress(OSError):
                    path.unlink()
        loaded = _parse(data)
        if loaded is None:
            log.warning("kept pixels %s are damaged; decoding the upload again", key)
        return loaded

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _drop(self, key: str) -> None:
        self._total -= self._entries.pop(key)[0]
        with contextlib.suppress(OSError):
            (self.directory / key).unlink()


def _parse(data: bytes) -> LoadedImage | None:
    if len(data) < _HEADER.size:
        return None
    magic, raw_mode, width, height, meta_length = _HEADER.unpack_from(data)
    mode = raw_mode.rstrip(b" ").decode("ascii", "replace")
    start = _HEADER.size + meta_length
    if magic != _MAGIC or mode not in _MODES or len(data) != start + width * height * _MODES[mode]:
        return None
    try:
        meta = json.loads(data[_HEADER.size : start])
        fmt, notices = str(meta["format"]), tuple(str(n) for n in meta["notices"])
    except (ValueError, KeyError, TypeError):
        return None
    return LoadedImage(Image.frombytes(mode, (width, height), memoryview(data)[start:]), fmt, notices)


def _sweep(parent: Path) -> None:
    """Remove the spools of this user's processes that are gone (killed without closing theirs)."""
    for path in parent.glob(f"{_PREFIX}*"):
        pid_text = path.name.removeprefix(_PREFIX).split("-", 1)[0]
        try:
            if not pid_text.isdigit() or path.stat().st_uid != os.getuid() or not path.is_dir():
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive under another user, or unreadable: not ours to remove
