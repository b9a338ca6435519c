"""`fillbot` command line: help, local fill end to end, clear errors with non-zero exit, and a Replicate run
against the fake server in a real subprocess."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import build_parser, cli_wording, main, option_flags
from bot.params import SPECS
from tests.fakes.replicate_server import FakeReplicate

TESTDATA = Path(__file__).resolve().parents[1] / "data"
COFFEE = TESTDATA / "photo_coffee_1024x768.jpg"
COFFEE_MASK = TESTDATA / "mask_coffee_1024x768_ellipse.png"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.endswith(("_API_TOKEN", "_API_KEY", "_BASE_URL")) or name in ("DEFAULT_PROVIDER", "DISCORD_TOKEN"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("run", "sync", "fill", "edit"):
        assert word in out


def test_local_fill_writes_a_composited_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["fill", str(COFFEE), "--mask", str(COFFEE_MASK), "--provider", "local", "-o", str(out)])
    assert code == 0
    files = list(out.iterdir())
    assert len(files) == 1
    with Image.open(files[0]) as result:
        assert result.size == (1024, 768)
        original = Image.open(COFFEE).convert("RGB")
        # Far outside the mask the pixels are the user's own (composite is on by default).
        assert result.convert("RGB").getpixel((5, 5)) == original.getpixel((5, 5))
    assert "prompt was not used" in capsys.readouterr().err


def test_bad_input_exits_non_zero_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "fake.png"
    bogus.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>")
    code = main(["fill", str(bogus), "--region", "0,0,10,10", "-o", str(tmp_path / "o")])
    assert code == 1
    assert "PNG, JPEG, WebP or GIF" in capsys.readouterr().err


def test_out_of_range_option_is_refused_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fill", str(COFFEE), "--mask", str(COFFEE_MASK), "--provider", "bfl", "--steps", "99"])
    assert code == 1
    err = capsys.readouterr().err
    assert "`--steps` = 99" in err and "15 to 50" in err


def test_unconfigured_provider_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fill", str(COFFEE), "--mask", str(COFFEE_MASK), "--provider", "replicate", "-p", "x"])
    assert code == 1
    err = capsys.readouterr().err
    assert "`replicate` is not configured" in err and "set REPLICATE_API_TOKEN" in err, err


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fill", "nope.png", "--region", "1,1,5,5", "--provider", "local"])
    assert code == 1
    assert "Cannot read the image" in capsys.readouterr().err


async def test_replicate_fill_in_a_subprocess_against_the_fake(tmp_path: Path) -> None:
    async with FakeReplicate(duration=0.3) as fake:
        env = {**os.environ, "REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url,
               "POLL_INTERVAL": "0.05", "ALLOW_PRIVATE_DOWNLOADS": "true"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "fill", str(COFFEE), "--mask", str(COFFEE_MASK), "--prompt", "a red vase",
            "--outputs", "2", "-o", str(tmp_path / "out"), env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, stderr.decode()
        written = sorted((tmp_path / "out").iterdir())
        assert len(written) == 2
        assert Image.open(io.BytesIO(written[0].read_bytes())).size == (1024, 768)
        assert fake.count("POST", "create") == 1
        assert fake.token not in stdout.decode() + stderr.decode()


def test_run_without_token_explains_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert "DISCORD_TOKEN" in capsys.readouterr().err


def test_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOB_DEADLINE", "soon")
    assert main(["fill", str(COFFEE), "--region", "1,1,5,5"]) == 2
    assert "JOB_DEADLINE" in capsys.readouterr().err


async def test_interrupted_fill_is_resumed_without_a_second_create(tmp_path: Path) -> None:
    """Ctrl-C while the provider runs the job, then `fillbot resume`: the job is polled, never sent again."""
    async with FakeReplicate(duration=3.0, honour_wait=False) as fake:
        env = {**os.environ, "REPLICATE_API_TOKEN": fake.token, "REPLICATE_BASE_URL": fake.base_url,
               "POLL_INTERVAL": "0.05", "JOB_LEASE_SECONDS": "0.5", "ALLOW_PRIVATE_DOWNLOADS": "true"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "fill", str(COFFEE), "--mask", str(COFFEE_MASK), "--prompt", "a red vase",
            "-o", str(tmp_path / "out"), env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            while fake.count("GET", "get") == 0:  # noqa: ASYNC110 - the fake has no event: submitted and polled
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
        text = stderr.decode()
        assert proc.returncode == 130, text
        match = re.search(r"fillbot resume ([0-9a-f]{12})", text)
        assert match is not None and "without sending it again" in text, text
        assert not (tmp_path / "out").exists()

        resumed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "resume", match.group(1), "-o", str(tmp_path / "out"), env=env,
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(resumed.communicate(), timeout=60)
        assert resumed.returncode == 0, stderr.decode()
        assert len(list((tmp_path / "out").iterdir())) == 1
        assert fake.count("POST", "create") == 1  # resumed by polling
        again = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "resume", match.group(1), env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(again.communicate(), timeout=60)
        assert again.returncode == 1 and "already finished" in stderr.decode()


def test_results_that_cannot_be_written_are_kept_for_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    code = main(["fill", str(COFFEE), "--mask", str(COFFEE_MASK), "--provider", "local", "-o", str(blocked)])
    err = capsys.readouterr().err
    assert code == 1 and "cannot write the results" in err, err
    match = re.search(r"fillbot resume ([0-9a-f]{12}) -o OTHER_DIR", err)
    assert match is not None, err
    assert main(["resume", match.group(1), "-o", str(tmp_path / "elsewhere")]) == 0
    assert len(list((tmp_path / "elsewhere").iterdir())) == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_guidance_is_a_one_line_error_naming_the_flag(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["fill", str(COFFEE), "--mask", str(COFFEE_MASK), "--provider", "replicate", "-p", "x",
                 "--guidance", value])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert f"`--guidance` = {float(value)!r}" in err and "0 to 100" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_messages_name_the_cli_flags_not_the_discord_options(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fill", str(COFFEE), "--mask", str(COFFEE_MASK), "--provider", "local", "--quality", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "`--quality` = 0" in err and "output_quality" not in err, err


def test_every_shared_option_name_has_a_flag() -> None:
    """The mapping is read from argparse, so a renamed flag or a new spec option cannot be left unmapped."""
    flags = option_flags(build_parser())
    assert flags["output_quality"] == "--quality" and flags["output_format"] == "--format"
    assert flags["invert_mask"] == "--invert-mask" and flags["lora_scale"] == "--lora-scale"
    for name in {f.name for spec in SPECS for f in spec.user_fields}:
        assert name in flags, name
    assert cli_wording("did you mean `invert_mask`? `local` stays", flags) == (
        "did you mean `--invert-mask`? `local` stays"
    )


@pytest.mark.parametrize(
    ("region", "words"),
    [
        ("-5,0,10,10", "negative value"),
        ("0,-5,10,10", "negative value"),
        ("1" * 400 + ",0,10,10", "is not a region"),
    ],
)
def test_bad_regions_are_one_line_errors(region: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fill", str(COFFEE), "--region", region, "--provider", "local", "-o", "out"])
    err = capsys.readouterr().err
    assert code == 1 and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_region_mixing_a_bare_zero_with_percent_works(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["fill", str(COFFEE), "--region", "0,0,90%,100%", "--provider", "local", "-o", str(out)]) == 0
    assert len(list(out.iterdir())) == 1


def test_preview_writes_the_mask_preview_before_the_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preview = tmp_path / "preview.jpg"
    code = main(["fill", str(COFFEE), "--region", "10%,10%,30%,30%", "--provider", "local",
                 "-o", str(tmp_path / "out"), "--preview", str(preview)])
    assert code == 0
    with Image.open(preview) as shown:
        assert shown.format == "JPEG" and max(shown.size) <= 640
        tinted = shown.convert("RGB").getpixel((int(shown.width * 0.25), int(shown.height * 0.25)))
        assert tinted[0] > tinted[1] and tinted[2] > tinted[1]  # magenta tint over the fill area
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fill", "--help"])
    assert "--preview FILE" in capsys.readouterr().out


def test_unwritable_preview_stops_before_anything_is_sent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fill", str(COFFEE), "--region", "10%,10%,30%,30%", "--provider", "local",
                 "-o", str(tmp_path / "out"), "--preview", str(tmp_path / "missing" / "p.jpg")])
    err = capsys.readouterr().err
    assert code == 1 and "Cannot write the mask preview" in err and "Nothing was sent" in err, err
    assert not (tmp_path / "out").exists()


async def test_negative_region_in_a_subprocess_is_not_taken_for_a_flag(tmp_path: Path) -> None:
    """argparse would read `-5,0,10,10` as an unknown option; the region check must answer it instead."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "fill", str(COFFEE), "--region", "-5,0,10,10", "--provider", "local",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = stderr.decode()
    assert proc.returncode == 1 and "negative value" in text and "expected one argument" not in text, text


def test_a_prompt_starting_with_a_dash_is_kept_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fill", str(COFFEE), "--region", "1,1,5,5", "--provider", "replicate", "-p", "-a vase"])
    assert code == 1 and "not configured" in capsys.readouterr().err  # parsed, then refused for the provider


@pytest.mark.parametrize(("args", "expected"), [
    (["--shards", "0-3"], "--shards and --shard-count go together"),
    (["--shard-count", "8"], "--shards and --shard-count go together"),
    (["--shards", "4-9", "--shard-count", "8"], "shards are numbered 0 to 7"),
    (["--shards", "3-1", "--shard-count", "8"], "shards are numbered 0 to 7"),
    (["--shards", "0-x", "--shard-count", "8"], "such as 0-3 or 0,2,5"),
    (["--shards", "0", "--shard-count", "0"], "at least 1"),
    (["--shards", "0-3", "--shard-count", "8"], "need PostgreSQL: set DATABASE_URL"),
])
def test_a_bad_shard_plan_is_one_line_naming_the_flag(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err


def test_shard_plans_cover_ranges_and_lists() -> None:
    from bot.app import ShardPlan

    assert ShardPlan.parse("0-1,5", 8) == ShardPlan((0, 1, 5), 8)
    assert ShardPlan.parse("7", 8).partial and not ShardPlan.parse("0-1", 2).partial


def test_a_worker_without_a_token_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "DISCORD_TOKEN is not set" in err and err.count("\n") == 1, err
