"""The benchmark command works from a fresh checkout: `bench/run_all.py --smoke` (every benchmark, smallest
sizes, in parallel) exits cleanly and its table has every row. No timing assertions: machines are noisy."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "bench" / "run_all.py"


def required_keys() -> tuple[str, ...]:
    spec = importlib.util.spec_from_file_location("bench_run_all", RUN_ALL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.REQUIRED_KEYS)


@pytest.mark.timeout(90)
def test_run_all_smoke_produces_every_row(tmp_path: Path) -> None:
    out = tmp_path / "latest.md"
    done = subprocess.run(
        [sys.executable, str(RUN_ALL), "--smoke", "--out", str(out)],
        cwd=tmp_path,  # the command must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    rows = json.loads(out.with_suffix(".json").read_text())
    keys = [row["key"] for row in rows]
    assert set(required_keys()) <= set(keys), set(required_keys()) - set(keys)

    table = out.read_text()
    assert "| figure | median | range | target | result |" in table
    assert "- machine: " in table and "- command: " in table
    body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    assert len(body) == len(rows)
    for row in rows:
        assert any(line.startswith(f"| {row['name']} |") for line in body), row["name"]
    assert all(line.rstrip().endswith(("| pass |", "| FAIL |", "| info |")) for line in body)
