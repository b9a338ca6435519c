"""`bench/bench_workers.py` with a tiny wave (4 jobs, 1 worker process) runs from a fresh checkout: every job is
claimed and delivered by the worker, and every figure is reported. No timing assertions: machines are noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_workers.py"


@pytest.mark.timeout(120)
def test_worker_benchmark_tiny_wave(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--jobs", "4", "--workers", "1", "--warmup", "1", "--json"],
        cwd=tmp_path,  # the command must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    run = out["runs"]["1"]
    assert run["jobs"] == 4 and run["failed"] == 0
    assert run["claims"] == [4]  # the worker ran them all, not the front bot
    assert len(run["edit_delay"]) == 4 and run["jobs_per_s"] > 0
    keys = {f["key"] for f in out["figures"]}
    assert {"workers.jobs_per_s.1", "workers.edit_p50.1", "workers.edit_p90.1", "workers.cpus",
            "workers.failed"} <= keys
