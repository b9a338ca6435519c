"""Benchmark the CPU work of preparing one fill job, and the encoder choice for provider uploads.

Run: .venv/bin/python bench/bench_preprocess.py [--runs 15]

A job here is what happens between "attachments downloaded" and "request sent": load_image, build_mask,
soften, resize_for (target_size + resize), encode_for_provider, encode_mask and mask_preview. Inputs are
generated from the test photos in tests/data (upscaled, with sensor-like noise so they compress like photos).
Memory is measured in a fresh child process per case: Pillow allocates outside Python's allocator, so
the RSS high-water mark (ru_maxrss) is the real figure; tracemalloc only sees NumPy/Python objects.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL
from PIL import Image, ImageDraw, features

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.imaging import (  # noqa: E402
    REPLICATE_FILL,
    Limits,
    build_mask,
    encode_for_provider,
    encode_mask,
    load_image,
    mask_preview,
    resize_for,
    soften,
)

TESTDATA = ROOT / "tests" / "data"
LIMITS = Limits(max_bytes=25 * 1024 * 1024, max_pixels=40_000_000)
GROW, FEATHER = 8, 4


@dataclass(frozen=True)
class Case:
    name: str
    target_ms: float
    region: str | None


CASES = (
    Case("1440x1440 RGBA PNG, transparent hole", 120.0, None),
    Case("4000x3000 JPEG, region mask", 250.0, "1200,900,1600,1200"),
)
TARGET_MIB = 120.0


def make_inputs(directory: Path) -> list[Path]:
    """Write the two test uploads; generated once, outside any measurement."""
    rng = np.random.default_rng(7)

    def noisy(image: Image.Image, sigma: float) -> Image.Image:
        values = np.asarray(image, dtype=np.float32)
        values += rng.normal(0.0, sigma, values.shape).astype(np.float32)
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))

    with Image.open(TESTDATA / "photo_astronaut_512x512.png") as source:
        astronaut = noisy(source.convert("RGB").resize((1440, 1440), Image.Resampling.LANCZOS), 3.0)
    hole = Image.new("L", astronaut.size, 255)
    ImageDraw.Draw(hole).ellipse((420, 380, 1060, 980), fill=0)
    rgba = astronaut.convert("RGBA")
    rgba.paste((0, 0, 0, 0), mask=Image.eval(hole, lambda v: 255 - v))  # erased pixels are wiped to black
    png = directory / "hole_1440.png"
    rgba.save(png, "PNG")

    with Image.open(TESTDATA / "photo_coffee_1024x768.jpg") as source:
        coffee = noisy(source.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC), 4.0)
    jpeg = directory / "coffee_4000x3000.jpg"
    coffee.save(jpeg, "JPEG", quality=90)
    return [png, jpeg]


def job(data: bytes, region: str | None) -> dict[str, int]:
    """One job's preprocessing, as the job runner does it."""
    loaded = load_image(data, LIMITS)
    area = build_mask(loaded, None, region, LIMITS)
    softened = soften(area.mask, grow=GROW, feather=FEATHER)
    image, mask = resize_for(REPLICATE_FILL, loaded.image, softened)
    upload = encode_for_provider(image)
    mask_upload = encode_mask(mask)
    preview = mask_preview(image, mask)
    return {"image": len(upload), "mask": len(mask_upload), "preview": len(preview), "width": image.width}


def timed(fn: Callable[[], Any], runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def stage_times(data: bytes, region: str | None, runs: int) -> dict[str, float]:
    """Median ms per stage, to see where the time goes."""
    out: dict[str, list[float]] = {}
    for _ in range(runs):
        marks = [time.perf_counter()]
        loaded = load_image(data, LIMITS)
        marks.append(time.perf_counter())
        area = build_mask(loaded, None, region, LIMITS)
        marks.append(time.perf_counter())
        softened = soften(area.mask, grow=GROW, feather=FEATHER)
        marks.append(time.perf_counter())
        image, mask = resize_for(REPLICATE_FILL, loaded.image, softened)
        marks.append(time.perf_counter())
        encode_for_provider(image)
        marks.append(time.perf_counter())
        encode_mask(mask)
        marks.append(time.perf_counter())
        mask_preview(image, mask)
        marks.append(time.perf_counter())
        names = ("load", "mask", "soften", "resize", "encode", "encode_mask", "preview")
        for name, start, end in zip(names, marks, marks[1:], strict=False):
            out.setdefault(name, []).append((end - start) * 1000)
    return {name: statistics.median(values) for name, values in out.items()}


def peak_rss_kib() -> int:
    """The process's RSS high-water mark. VmHWM belongs to this exec; ru_maxrss can carry the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(path: str, region: str) -> None:
    """Child process: peak memory of one job over the baseline of a process holding the upload bytes."""
    data = Path(path).read_bytes()
    base_rss = peak_rss_kib()
    tracemalloc.start()
    job(data, region or None)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"rss_kib": peak_rss_kib() - base_rss, "traced": traced_peak}))


def measure_memory(path: Path, region: str | None) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(path), region or ""],
        check=True,
        capture_output=True,
        text=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {"rss_mib": found["rss_kib"] / 1024, "traced_mib": found["traced"] / (1024 * 1024)}


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b.convert(a.mode), dtype=np.float64)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def encoder_table(image: Image.Image, runs: int) -> list[tuple[str, float, int, float]]:
    """Candidates for encode_for_provider on the prepared 1440x1440 picture: (name, ms, bytes, PSNR dB)."""
    candidates: dict[str, dict[str, Any]] = {
        "PNG compress_level=1": {"format": "PNG", "compress_level": 1},
        "PNG compress_level=6": {"format": "PNG", "compress_level": 6},
        "JPEG q95 4:4:4 (chosen)": {"format": "JPEG", "quality": 95, "subsampling": 0},
        "JPEG q95 4:2:0": {"format": "JPEG", "quality": 95},
        "WebP q90 method=0": {"format": "WEBP", "quality": 90, "method": 0},
        "WebP lossless method=0": {"format": "WEBP", "lossless": True, "quality": 0, "method": 0},
    }
    rows = []
    for name, params in candidates.items():
        buffer = io.BytesIO()

        def save(params: dict[str, Any] = params, buffer: io.BytesIO = buffer) -> None:
            buffer.seek(0)
            buffer.truncate()
            image.save(buffer, **params)

        times = timed(save, runs=max(3, runs // 3), warmup=1)
        decoded = Image.open(io.BytesIO(buffer.getvalue()))
        rows.append((name, statistics.median(times), len(buffer.getvalue()), psnr(image, decoded)))
    return rows


def machine() -> str:
    jpeg = features.version("libjpeg_turbo") or features.version("jpg")
    return (
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs "
        f"({len(os.sched_getaffinity(0))} usable), {platform.processor() or platform.machine()}\n"
        f"- Python {platform.python_version()}, Pillow {PIL.__version__} (libjpeg-turbo {jpeg}, "
        f"zlib {features.version('zlib')}, libwebp {features.version('webp')}), NumPy {np.__version__}, "
        f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--memory-child", nargs=2, metavar=("PATH", "REGION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0

    print("# Fill job preprocessing benchmark\n")
    print(machine())
    print(
        f"- {args.runs} timed runs per case after 2 warm-up runs; grow={GROW}, feather={FEATHER}, rule=replicate-fill\n"
    )
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_inputs(Path(tmp))
        rows = []
        stages = []
        for case, path in zip(CASES, paths, strict=True):
            data = path.read_bytes()
            sizes = job(data, case.region)
            times = timed(functools.partial(job, data, case.region), args.runs)
            memory = measure_memory(path, case.region)
            median, high = statistics.median(times), p90(times)
            ok = median <= case.target_ms and memory["rss_mib"] <= TARGET_MIB
            failures += not ok
            rows.append(
                f"| {case.name} | {len(data) / 1e6:.1f} MB | {median:.0f} | {high:.0f} | {case.target_ms:.0f} "
                f"| {memory['rss_mib']:.0f} | {memory['traced_mib']:.0f} | {sizes['image'] / 1024:.0f} KiB "
                f"+ {sizes['mask'] / 1024:.0f} KiB | {sizes['preview'] / 1024:.0f} KiB | {'ok' if ok else 'MISSED'} |"
            )
            stage = stage_times(data, case.region, max(5, args.runs // 3))
            stages.append(f"| {case.name} | " + " | ".join(f"{v:.1f}" for v in stage.values()) + " |")
        print(
            "| case | upload | median ms | p90 ms | target ms | peak extra RSS MiB | tracemalloc peak MiB "
            "| sent (image + mask) | preview | |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print(f"\nMemory target: <= {TARGET_MIB:.0f} MiB extra peak per job.\n")
        print("## Where the time goes (median ms per stage)\n")
        print("| case | load | mask | soften | resize | encode | encode_mask | preview |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(stages))

        with Image.open(paths[0]) as source:
            prepared = source.convert("RGB")
    print("\n## encode_for_provider candidates (1440x1440 photo-like RGB)\n")
    print("| encoder | median ms | size KiB | PSNR dB |")
    print("|---|---|---|---|")
    for name, ms, size, quality in encoder_table(prepared, args.runs):
        print(f"| {name} | {ms:.1f} | {size / 1024:.0f} | {quality:.1f} |")
    print(
        "\nNotes: JPEG draft() (DCT-domain downscale while decoding) is not used: compositing needs the original "
        "at full resolution, so a draft decode would mean decoding twice. Times include Pillow's allocations "
        "(fresh pages for each 36 MB image), as in the bot."
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
