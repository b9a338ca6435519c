"""The pixel spool: a prepared upload's decoded pixels reach its finish without a second decode, within a disk
budget, and every way the cache can fail only costs that decode."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.imaging import Limits, LoadedImage, loading
from bot.imaging.spool import PixelSpool, pixels_key
from bot.params import FillRequest, MaskOptions
from bot.pipeline import finish, prepare_fill
from cogs.paint import has_holes


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def photo_with_hole(astronaut: Image.Image) -> Image.Image:
    rgba = astronaut.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (180, 160, 320, 300))
    return rgba


def result_for(prepared_image: bytes) -> bytes:
    """A provider's answer: the sent picture, brightened everywhere (so the composite is visible)."""
    with Image.open(io.BytesIO(prepared_image)) as sent:
        values = np.asarray(sent.convert("RGB"), dtype=np.int16) + 70
    return png(Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[PixelSpool]:
    kept = PixelSpool(64 * 1024 * 1024, tmp_path)
    yield kept
    kept.close()


def loaded(image: Image.Image, *notices: str) -> LoadedImage:
    return LoadedImage(image, "PNG", notices)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_a_kept_decode_is_read_until_the_last_step_takes_it(
    spool: PixelSpool, astronaut: Image.Image, mode: str
) -> None:
    image = astronaut.convert(mode)
    upload = png(image)
    spool.keep(upload, loaded(image, "Animated PNG: only the first frame is used."))
    for _ in range(2):  # checking, then preparing: each reads it, it stays
        seen = spool.peek(upload)
        assert seen is not None and seen.image.tobytes() == image.tobytes()
    back = spool.take(upload)
    assert back is not None and back.image.mode == mode and back.image.size == image.size
    assert back.image.tobytes() == image.tobytes()
    assert back.format == "PNG" and back.notices == ("Animated PNG: only the first frame is used.",)
    assert spool.take(upload) is None and spool.peek(upload) is None  # taken: nothing lingers on disk
    assert list(spool.directory.iterdir()) == []


def test_the_budget_and_the_age_limit_drop_the_oldest_first(tmp_path: Path, astronaut: Image.Image) -> None:
    now = [0.0]
    one = len(astronaut.tobytes()) + 64
    spool = PixelSpool(2 * one, tmp_path, max_age=100.0, clock=lambda: now[0])
    uploads = [png(astronaut.rotate(angle)) for angle in (90, 180, 270)]
    for upload in uploads:
        spool.keep(upload, loaded(astronaut))
    assert sorted(p.name for p in spool.directory.iterdir()) == sorted(pixels_key(u) for u in uploads[1:])
    assert spool.take(uploads[0]) is None
    now[0] = 150.0  # the two left are now too old: keeping another drops them
    fresh = png(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    spool.keep(fresh, loaded(astronaut))
    assert [p.name for p in spool.directory.iterdir()] == [pixels_key(fresh)]
    assert spool.take(uploads[1]) is None and spool.take(fresh) is not None
    big = Image.new("RGB", (2000, 2000))
    spool.keep(png(big), loaded(big))  # larger than the whole budget: not kept
    assert list(spool.directory.iterdir()) == []
    spool.close()


def test_a_damaged_or_missing_file_is_a_miss(spool: PixelSpool, astronaut: Image.Image) -> None:
    uploads = [png(astronaut), png(astronaut.rotate(90))]
    for upload in uploads:
        spool.keep(upload, loaded(astronaut))
    truncated = spool.directory / pixels_key(uploads[0])
    truncated.write_bytes(truncated.read_bytes()[:-1])
    (spool.directory / pixels_key(uploads[1])).unlink()
    assert spool.peek(uploads[0]) is None and spool.take(uploads[0]) is None
    assert spool.take(uploads[1]) is None


def test_the_directory_is_private_and_a_dead_process_s_spool_is_swept(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = tmp_path / f"fillbot-pixels-{int(gone.stdout)}-abc"
    dead.mkdir()
    (dead / "leftover").write_bytes(b"x" * 100)
    alive = tmp_path / f"fillbot-pixels-{os.getpid()}-def"  # this process's own: left alone
    alive.mkdir()
    other = tmp_path / "fillbot-pixels-notapid-x"
    other.mkdir()
    spool = PixelSpool(1024, tmp_path)
    assert not dead.exists() and alive.is_dir() and other.is_dir()
    assert stat.S_IMODE(spool.directory.stat().st_mode) == 0o700
    spool.close()
    assert not spool.directory.exists()


def test_a_png_job_is_finished_from_kept_pixels_with_the_same_result(
    spool: PixelSpool, astronaut: Image.Image, limits: Limits, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = png(photo_with_hole(astronaut))
    request = FillRequest.build("replicate", "a red ball", {}, mask=MaskOptions(feather=4))
    decoded: list[str] = []
    real_decode = loading.decode

    def counting(data: bytes, limits: Limits, *, what: str = "image", grey_ok: bool = False) -> object:
        decoded.append(what)
        return real_decode(data, limits, what=what, grey_ok=grey_ok)

    monkeypatch.setattr(loading, "decode", counting)
    assert has_holes(upload, limits, "image", spool)  # the web side's check of a /fill without a mask
    prepared = prepare_fill(upload, None, request, limits, spool)
    assert decoded.count("image") == 1  # decoded by the check alone
    assert [p.name for p in spool.directory.iterdir()] == [pixels_key(upload)]
    outputs = [(result_for(prepared.job.image.data), False)]
    decoded.clear()
    kept = finish(outputs, inputs=prepared.inputs, request=request, limits=limits, job_id="k", pixels=spool)
    assert "image" not in decoded  # the upload was not decoded again
    assert list(spool.directory.iterdir()) == []
    again = finish(outputs, inputs=prepared.inputs, request=request, limits=limits, job_id="k", pixels=spool)
    assert "image" in decoded  # nothing kept any more: decoded, same answer
    assert [i.data for i in kept.images] == [i.data for i in again.images]
    assert kept.before == again.before


def test_jpeg_uploads_are_not_kept(spool: PixelSpool, testdata: Path, limits: Limits) -> None:
    upload = (testdata / "photo_coffee_1024x768.jpg").read_bytes()
    request = FillRequest.build("replicate", "a cup", {}, mask=MaskOptions(region="10%,10%,30%,30%"))
    prepare_fill(upload, None, request, limits, spool)
    assert list(spool.directory.iterdir()) == []
