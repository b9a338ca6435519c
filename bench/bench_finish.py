"""Benchmark finishing a fill job (provider completion -> finished files), today's code against a baseline commit.

Run: .venv/bin/python bench/bench_finish.py [--runs 15] [--rounds 3] [--baseline 0f2fc97]

`finish` is what runs between "the provider's outputs are downloaded" and "the files are ready to send": decode the
stored original and mask, decode each provider PNG, put it back into the picture, encode within Discord's 10 MiB
(less 64 KiB, as the bot passes it). Each version runs in a fresh child process on identical inputs: the baseline
from `git archive` of --baseline (the last commit before the faster finish), today's from this checkout, once with
the default format and once with PNG asked for. Prepare time (`prepare_fill`) is shown too, so work moved from the
finish into the preparation would be seen. Peak memory is VmHWM over the RSS before one finish.

Inputs are generated from the test photos in tests/data (upscaled, with sensor-like noise so they compress like
photos); provider outputs are PNGs (Pillow's default level, as providers send them) at the size the provider returns.
A last table measures which JPEG/WebP quality fits four 4000x3000 photos into one Discord message.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from _common import (  # noqa: E402
    TESTDATA,
    encoded,
    machine_lines,
    percentile,
    photo_1440,
    proc_status_kib,
    reset_peak_rss,
)

BASELINE = "0f2fc97"
DISCORD_CAP = 10 * 1024 * 1024 - 64 * 1024
MiB = 1024 * 1024
TARGET_MS = 150.0  # completion -> finished picture, 1440x1440 fill with one output


@dataclass(frozen=True)
class Case:
    name: str
    key: str
    outputs: int
    region: str | None
    share: float  # of --runs: the 12 MP case took 16 s per finish before


CASES = (
    Case("1440x1440 JPEG, 1 output", "jpeg1440", 1, "420,380,640,600", 1.0),
    Case("1440x1440 RGBA PNG hole, 1 output", "rgba1440", 1, None, 1.0),
    Case("4000x3000 JPEG, 4 outputs", "jpeg12mp", 4, "1200,900,1600,1200", 0.2),
)


def noisy(image: Image.Image, sigma: float, seed: int = 7) -> Image.Image:
    noise = np.random.default_rng(seed).standard_normal((image.height, image.width, 3), dtype=np.float32) * sigma
    return Image.fromarray(np.clip(np.asarray(image.convert("RGB")) + noise, 0, 255).astype(np.uint8))


def soft_photo() -> Image.Image:
    """4000x3000 like the issue's phone photo: about 1.4 MB as JPEG q90."""
    with Image.open(TESTDATA / "photo_coffee_1024x768.jpg") as source:
        return noisy(source.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC), 2.0)


def detailed_photo() -> Image.Image:
    """4000x3000 with real-photo detail at every pixel (the test photos tiled unscaled), about 4.4 MB at q95."""
    tiles = []
    for name in ("photo_coffee_1024x768.jpg", "photo_astronaut_512x512.png", "photo_chelsea_900x600.webp"):
        with Image.open(TESTDATA / name) as tile:
            tiles.append(tile.convert("RGB"))
    out = Image.new("RGB", (4000, 3000))
    y = index = 0
    while y < out.height:
        x = row = 0
        while x < out.width:
            tile = tiles[index % 3]
            if index % 2:
                tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out.paste(tile, (x, y))
            x, row, index = x + tile.width, max(row, tile.height), index + 1
        y += row
    return noisy(out, 4.0)


def provider_result(sent: Image.Image, size: tuple[int, int]) -> bytes:
    """The provider's picture: what was sent, regenerated (colours turned) at the provider's size, as PNG."""
    values = np.asarray(sent.convert("RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
    return encoded(Image.fromarray(np.roll(values, 1, axis=2)), "PNG")


def make_inputs(directory: Path) -> None:
    """Write each case's upload, region and provider outputs (made with today's sizing rules) to `directory`."""
    from bot.imaging import REPLICATE_FILL, replicate_output_size, target_size

    with Image.open(TESTDATA / "photo_astronaut_512x512.png") as source:
        astronaut = noisy(source.convert("RGB").resize((1440, 1440), Image.Resampling.LANCZOS), 3.0)
    uploads = {
        "jpeg1440": encoded(astronaut, "JPEG", quality=92),
        "rgba1440": photo_1440(),
        "jpeg12mp": encoded(soft_photo(), "JPEG", quality=90),
    }
    for case in CASES:
        upload = uploads[case.key]
        with Image.open(io.BytesIO(upload)) as picture:
            sent_size = target_size(REPLICATE_FILL, picture.size)
            sent = picture.convert("RGB").resize(sent_size, Image.Resampling.LANCZOS)
        size = replicate_output_size(sent_size, "1")
        folder = directory / case.key
        folder.mkdir()
        (folder / "upload").write_bytes(upload)
        for i in range(case.outputs):
            (folder / f"output{i}").write_bytes(provider_result(sent.rotate(i * 90), size))


def child(root: str, folder: str, runs: int, fmt: str | None, case_json: str) -> None:
    """In a fresh process with `root`'s bot package first on the path: time prepare_fill and finish."""
    sys.path.insert(0, root)
    from bot.imaging import Limits
    from bot.params import Delivery, FillRequest, MaskOptions
    from bot.pipeline import finish, prepare_fill

    case = Case(**json.loads(case_json))
    limits = Limits(max_bytes=25 * MiB, max_pixels=40_000_000)
    upload = Path(folder, "upload").read_bytes()
    outputs = [(Path(folder, f"output{i}").read_bytes(), False) for i in range(case.outputs)]
    delivery = Delivery(fmt) if fmt else Delivery()
    request = FillRequest.build(
        "replicate", "a red ball", {"outputs": case.outputs}, mask=MaskOptions(region=case.region), delivery=delivery
    )
    prepare_ms = []
    for _ in range(max(3, runs // 3)):
        start = time.perf_counter()
        prepared = prepare_fill(upload, None, request, limits)
        prepare_ms.append((time.perf_counter() - start) * 1000)

    def run() -> Any:
        return finish(outputs, inputs=prepared.inputs, request=request, limits=limits, job_id="bench",
                      max_total_bytes=DISCORD_CAP)

    gc.collect()
    baseline = proc_status_kib("VmRSS")
    reset_peak_rss()
    done = run()
    peak_mib = (proc_status_kib("VmHWM") - baseline) / 1024
    finish_ms = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        finish_ms.append((time.perf_counter() - start) * 1000)
    first = done.images[0]
    print(json.dumps({
        "prepare_ms": statistics.median(prepare_ms),
        "finish_ms": finish_ms,
        "peak_mib": peak_mib,
        "delivered": f"{first.filename.rsplit('.', 1)[-1]} {first.size[0]}x{first.size[1]}",
        "bytes": sum(len(image.data) for image in done.images),
        "stored": len(prepared.inputs.original),
        "notices": list(done.notices),
    }))


def run_child(root: Path, folder: Path, runs: int, fmt: str | None, case: Case) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(root), str(folder), str(runs), fmt or "",
               json.dumps(asdict(case))]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def baseline_tree(rev: str, directory: Path) -> Path | None:
    """The `bot` package as of `rev`, unpacked into `directory`; None if this clone lacks that commit."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "bot"], capture_output=True,
                          check=False)
    if done.returncode != 0:
        print(f"(baseline {rev} not available: {done.stderr.decode(errors='replace').strip()})\n")
        return None
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(directory, filter="data")
    return directory


def quality_table() -> list[str]:
    """Bytes of one 4000x3000 photo per format and quality, times four, against Discord's limit."""
    rows = []
    for label, photo in (("soft (1.4 MB phone JPEG)", soft_photo()), ("detailed (4.4 MB JPEG)", detailed_photo())):
        upload = encoded(photo, "JPEG", quality=95 if label.startswith("detailed") else 90)
        picture = Image.open(io.BytesIO(upload)).convert("RGB")  # what the bot works on: the decoded upload
        for fmt, quality, params in (
            ("PNG", None, {"compress_level": 1}),
            *(("JPEG", q, {"quality": q}) for q in (95, 90, 85, 80, 75)),
            *(("WebP", q, {"quality": q, "method": 0}) for q in (90, 85, 80)),
        ):
            start = time.perf_counter()
            size = len(encoded(picture, "WEBP" if fmt == "WebP" else fmt, **params))
            ms = (time.perf_counter() - start) * 1000
            fits = "yes" if 4 * size <= DISCORD_CAP else "no"
            name = fmt if quality is None else f"{fmt} q{quality}"
            rows.append(f"| {label} | {name} | {size / MiB:.2f} | {4 * size / MiB:.1f} | {fits} | {ms:.0f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="versions alternate this many times per case, so a "
                        "busy machine slows them alike")
    parser.add_argument("--baseline", default=BASELINE, help="commit to compare against (default: %(default)s)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root, folder, runs, fmt, case_json = args.child
        child(root, folder, int(runs), fmt or None, case_json)
        return 0

    sys.path.insert(0, str(ROOT))
    print("# Finish benchmark: provider outputs -> finished files\n")
    print("\n".join(machine_lines()))
    print(f"- command: {Path(sys.executable).name} bench/bench_finish.py --runs {args.runs} --rounds {args.rounds} "
          f"--baseline {args.baseline}")
    print(f"- load average at start: {Path('/proc/loadavg').read_text().split()[0]}")
    print(f"- {args.runs} timed finishes per row (a fifth for 4000x3000) in {args.rounds} rounds that alternate the "
          f"versions, each after one untimed finish (peak memory: the largest of those); cap "
          f"{DISCORD_CAP / MiB:.2f} MiB as the Discord front end passes it\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_inputs(work)
        old_root = baseline_tree(args.baseline, work / "baseline")
        versions: list[tuple[str, Path, str | None]] = []
        if old_root is not None:
            versions.append((f"{args.baseline} (default png)", old_root, None))
        versions += [("today (default auto)", ROOT, None), ("today, png asked", ROOT, "png")]
        print("| case | version | prepare ms | finish median ms | finish p90 ms | delivered | total MB | stored "
              "original MB | peak extra MiB | notices |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for case in CASES:
            runs = max(1, round(args.runs * case.share / args.rounds))
            pooled: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in versions}
            for _ in range(args.rounds):
                for label, root, fmt in versions:
                    pooled[label].append(run_child(root, work / case.key, runs, fmt, case))
            for label, found in pooled.items():
                times = [t for one in found for t in one["finish_ms"]]
                prepare = statistics.median(one["prepare_ms"] for one in found)
                peak = max(one["peak_mib"] for one in found)
                last = found[-1]
                notices = " / ".join(last["notices"]) or "-"
                print(f"| {case.name} | {label} | {prepare:.0f} | {statistics.median(times):.0f} "
                      f"| {percentile(times, 90):.0f} | {last['delivered']} | {last['bytes'] / 1e6:.2f} "
                      f"| {last['stored'] / 1e6:.2f} | {peak:.0f} | {notices} |")
    print(f"\nTarget: finish <= {TARGET_MS:.0f} ms median for the 1440x1440 JPEG fill with one output.\n")
    print("## Which quality fits four 4000x3000 photos in one message\n")
    print("| photo | encoding | MiB each | MiB for four | four fit 10 MiB | encode ms |")
    print("|---|---|---|---|---|---|")
    print("\n".join(quality_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
