"""Helpers shared by the benchmarks: the test picture, percentiles, process memory and CPU, machine description."""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import resource
import socket
import statistics
import struct
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
TESTDATA = ROOT / "tests" / "data"
RESULTS = ROOT / "bench" / "results"
MiB = 1024 * 1024


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for the bot's web side)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def encoded(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _noisy_1440() -> tuple[Image.Image, Image.Image]:
    """The noisy 1440x1440 astronaut (RGB) and the ellipse of the area to repaint (L, white inside)."""
    rng = np.random.default_rng(7)
    with Image.open(TESTDATA / "photo_astronaut_512x512.png") as source:
        resized = source.convert("RGB").resize((1440, 1440), Image.Resampling.LANCZOS)
    values = np.asarray(resized, dtype=np.float32)
    values += rng.normal(0.0, 3.0, values.shape).astype(np.float32)
    hole = Image.new("L", resized.size, 0)
    ImageDraw.Draw(hole).ellipse((420, 380, 1060, 980), fill=255)
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)), hole


def _cached(name: str, make: Callable[[], bytes]) -> bytes:
    cached = RESULTS / ".cache" / name
    if cached.exists():
        return cached.read_bytes()
    data = make()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(data)
    return data


def photo_1440() -> bytes:
    """The 1440x1440 RGBA PNG of bench_preprocess (noisy astronaut, transparent hole), ~3.5 MB.

    Noise makes it compress like a photo: a gradient test card would make every encode look free.
    The transparent hole is the fill area, so /fill needs no mask attachment.
    """

    def make() -> bytes:
        photo, hole = _noisy_1440()
        rgba = photo.convert("RGBA")
        rgba.paste((0, 0, 0, 0), mask=hole)
        return encoded(rgba, "PNG")

    return _cached("hole_1440.png", make)


def jpeg_1440() -> tuple[bytes, bytes]:
    """The same photo as a camera would save it (JPEG quality 90, ~0.4 MB) and its mask as a black-and-white PNG
    (white = repaint): the other way members attach a fill."""
    jpeg = _cached("photo_1440.jpg", lambda: encoded(_noisy_1440()[0], "JPEG", quality=90))
    mask = _cached("mask_1440.png", lambda: encoded(_noisy_1440()[1], "PNG"))
    return jpeg, mask


def tagged(data: bytes, tag: str) -> bytes:
    """`data` (a PNG or JPEG) with a comment naming `tag`: other bytes, the same pixels. Every job of a benchmark
    uploads its own file, as members do, so nothing keyed by an upload's bytes is shared between them."""
    if data.startswith(b"\xff\xd8"):  # JPEG: a COM segment right after the start-of-image marker
        body = tag.encode()
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + data[2:]
    body = b"Comment\x00" + tag.encode()
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    end_of_header = 8 + 8 + 13 + 4  # signature, IHDR length and type, IHDR data, CRC
    return data[:end_of_header] + chunk + data[end_of_header:]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank-free linear percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return float(values[0])
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def proc_status_kib(field: str) -> int:
    """VmHWM / VmRSS of this process in KiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU of this process (all threads), or of `pid` from /proc."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_lines() -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    libs = ", ".join(
        f"{name} {_version(name)}" for name in ("discord.py", "httpx", "aiohttp", "Pillow", "numpy", "replicate")
    )
    return [
        f"- machine: {_cpu_model()}, {os.cpu_count()} CPUs ({usable} usable), {_ram_gib():.1f} GiB RAM, "
        f"{platform.platform()}",
        f"- Python {platform.python_version()} ({sys.executable}); {libs}",
    ]
