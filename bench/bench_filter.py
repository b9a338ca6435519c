"""Benchmark the blocked-term filter: the linear-time `bot.moderation.TermFilter` against the one it replaced.

Run: .venv/bin/python bench/bench_filter.py [--runs 30] [--old-runs 3] [--old-crafted-terms 50] [--quick]

Every case checks one 2000-character prompt (the longest a member may send) against a server with 500 'block'
terms and one 'strip' term, the set-up of issue 10:
- ordinary: plain English words;
- crafted: "a a … b b" with the strip term "ab": each strip reveals the next "a b", so the old filter went round
  its loop once per pair (the issue measured 3 s at 50 terms and 90 s at 500 on the event loop);
- look-alikes: "1", "|", "!", zero-width and fullwidth characters throughout, so every reading is scanned;
- new characters: 2000 distinct non-ASCII characters never seen before (the per-character cache is emptied),
  the worst case for normalisation;
- overlapping terms: a hostile server's own terms "aa", "aaa", … "a"×100 against "a a a …", where every letter
  starts ~100 occurrences (new filter only: it refuses once occurrences outnumber characters).
The old filter takes about 90 s per crafted run at 500 terms, so by default its crafted case uses 50 terms
(`--old-crafted-terms 500` reproduces the issue's figure). Medians are printed with the range; no assertion.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _filter_before import TermFilter as OldFilter  # noqa: E402

from bot import moderation  # noqa: E402
from bot.params import MAX_PROMPT_CHARS  # noqa: E402

TERMS = 500
ORDINARY_TARGET_MS = 5.0
CRAFTED_TARGET_MS = 20.0


def server_terms(count: int) -> list[tuple[str, str]]:
    """`count` block terms that look like real words but never occur in the prompts, plus the strip term "ab"."""
    rng = random.Random(10)
    syllables = [c + v for c in "bcdfghjklmnpqrstvwxz" for v in "aeiou"]
    words = {"".join(rng.choices(syllables, k=3)) for _ in range(4 * count)}
    return [(w, "block") for w in sorted(words)[:count]] + [("ab", "strip")]


def prompts() -> dict[str, str]:
    ordinary = ("a watercolour painting of a lighthouse on a cliff at dusk, gulls over the waves, "
                "soft warm light, detailed brushwork, " * 30)[:MAX_PROMPT_CHARS]
    crafted = ("a " * (MAX_PROMPT_CHARS // 4) + "b " * (MAX_PROMPT_CHARS // 4))[:MAX_PROMPT_CHARS]
    lookalike = ("k1ll th3 l|ghts! ｎｏｗ\u200b " * 100)[:MAX_PROMPT_CHARS]
    rng = random.Random(7)
    fresh = "".join(rng.sample([chr(c) for c in range(0x100, 0x3000) if chr(c).isprintable()], MAX_PROMPT_CHARS))
    return {"ordinary": ordinary, "crafted": crafted, "look-alikes": lookalike, "new characters": fresh}


@dataclass(frozen=True)
class Figure:
    median_ms: float
    low_ms: float
    high_ms: float
    verdict: str


def measure(check: Callable[[str], object], prompt: str, runs: int, *, cold: bool = False) -> Figure:
    times: list[float] = []
    result: object = None
    for _ in range(runs):
        if cold:
            moderation._fold.cache_clear()
        started = time.perf_counter()
        result = check(prompt)
        times.append((time.perf_counter() - started) * 1000)
    blocked = getattr(result, "blocked_term", None)
    verdict = f"refused: {str(blocked)[:12]}" if blocked else "allowed"
    return Figure(statistics.median(times), min(times), max(times), verdict)


def show(name: str, terms: int, figure: Figure | None) -> str:
    if figure is None:
        return f"| {name} | {terms} | skipped | | |"
    return (f"| {name} | {terms} | {figure.median_ms:.3g} ms | {figure.low_ms:.3g}–{figure.high_ms:.3g} | "
            f"{figure.verdict} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="runs of each case with the new filter")
    parser.add_argument("--old-runs", type=int, default=3, help="runs of each case with the old filter (0: none)")
    parser.add_argument("--old-crafted-terms", type=int, default=50, help="block terms for the old crafted case")
    parser.add_argument("--quick", action="store_true", help="3 new runs, 1 old run, old crafted case at 10 terms")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.old_runs, args.old_crafted_terms = 3, 1, 10

    new = moderation.TermFilter(server_terms(TERMS))
    new.check("warm-up: ｆｕｌｌｗｉｄｔｈ")  # the confusables table is built once per process
    old = OldFilter(server_terms(TERMS))
    old_crafted = OldFilter(server_terms(args.old_crafted_terms))
    targets = {"ordinary": ORDINARY_TARGET_MS, "crafted": CRAFTED_TARGET_MS}

    print(f"Python {sys.version.split()[0]}, {MAX_PROMPT_CHARS}-character prompts, {TERMS} block terms + 1 strip term")
    print("| case | terms | median | range | answer |")
    print("|---|---|---|---|---|")
    failed = []
    for case, prompt in prompts().items():
        figure = measure(new.check, prompt, args.runs, cold=case == "new characters")
        print(show(f"new: {case}", TERMS, figure))
        target = targets.get(case)
        if target is not None and figure.median_ms > target:
            failed.append(f"{case}: {figure.median_ms:.3g} ms > {target} ms")
        if case in targets:
            before = old_crafted if case == "crafted" else old
            terms = args.old_crafted_terms if case == "crafted" else TERMS
            print(show(f"old: {case}", terms, measure(before.check, prompt, args.old_runs) if args.old_runs else None))
    overlapping = moderation.TermFilter([("a" * k, "strip") for k in range(2, 101)])
    print(show("new: overlapping terms", 99, measure(overlapping.check, "a " * (MAX_PROMPT_CHARS // 2), args.runs)))
    print(f"targets: ordinary <= {ORDINARY_TARGET_MS} ms, crafted <= {CRAFTED_TARGET_MS} ms (new filter, medians): "
          + ("; ".join(failed) if failed else "met"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
