"""`bench/bench_filter.py --quick` runs from a fresh checkout and prints every row. No timing assertions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_filter.py"


@pytest.mark.timeout(60)
def test_filter_benchmark_prints_old_and_new_figures(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--quick"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=50, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| new: ") or line.startswith("| old: ")]
    cases = ("ordinary", "crafted", "look-alikes", "new characters", "overlapping terms")
    assert [row.split("|")[1].strip() for row in rows if row.startswith("| new: ")] == [f"new: {c}" for c in cases]
    assert sum(row.startswith("| old: ") for row in rows) == 2
    assert all(" ms |" in row for row in rows)
