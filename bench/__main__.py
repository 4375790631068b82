"""``python -m bench [--quick]``: measure, print a markdown table, write bench/results/.

Everything runs against the emulator on loopback with the real daemon process,
using the same process harness as the end-to-end tests (tests/harness.py).

Two phases keep the run short without bending the figures:

1. **Timed** figures (start-up, memory and idle CPU, read cost, storm latency) run
   one after another with the machine to themselves.
2. **Counted** figures (calls per lifetime, the baselines, fleets, the chaos soak,
   crash safety) run side by side, each in its own process: they count calls and
   rejections over compressed lifetimes, which a busy CPU changes little; where it
   does (the soak's short timeouts, the crash test's kills during start-up) it makes
   the test harder, and the crash figure says how many kills found a started daemon.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench.figures import Figure, table  # noqa: E402
from bench.plan import Run, counted, describe, measure, timed  # noqa: E402


def _side_by_side(figures: list[Figure]) -> None:
    """Fill the baselines' targets with wxtokend's figures from the same run."""
    found = {f.name: f.value for f in figures}
    values = {
        "classic": found.get("upstream calls per app per lifetime (classic)", "?"),
        "rejections": found.get("wxtokend's consumers: rejected or unreadable reads", "?"),
    }
    for figure in figures:
        figure.target = figure.target.format(**values)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer lifetimes (under 2 minutes)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.md")
    args = parser.parse_args()
    started = time.monotonic()
    results: dict[int, list[Figure]] = {}
    runs = timed(args.quick) + counted(args.quick)
    for i, run in enumerate(timed(args.quick)):
        results[i], seconds = measure(run)
        _report(run, results[i], seconds)
    offset = len(timed(args.quick))
    spawn = multiprocessing.get_context("spawn")  # a clean interpreter per figure
    jobs = counted(args.quick)
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=spawn) as pool:
        futures = {offset + i: pool.submit(measure, run) for i, run in enumerate(jobs)}
        for i, future in futures.items():
            results[i], seconds = future.result()
            _report(runs[i], results[i], seconds)
    figures = [f for i in sorted(results) for f in results[i]]
    _side_by_side(figures)
    elapsed = time.monotonic() - started
    machine = (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    command = "python -m bench" + (" --quick" if args.quick else "")
    report = (
        f"{table(figures)}\n\nMachine: {machine}, {_cpus()} cores. Command: `{command}`"
        f" ({elapsed / 60:.1f} minutes).\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print("\n" + report)
    return 0


def _report(run: Run, figures: list[Figure], seconds: float) -> None:
    print(f"{describe(run)}: {seconds:.0f} s", flush=True)
    for line in table(figures).splitlines()[2:]:
        print("  " + line, flush=True)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
