"""What ``python -m bench`` runs: the timed figures, the counted ones, and how one is run.

Kept out of ``__main__`` so the worker processes of the counted phase (spawned,
clean interpreters) can import the runner by name.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the harness

from bench.baselines import baselines
from bench.crash import crash_safety
from bench.figures import Figure
from bench.lifetimes import calls_per_lifetime, fleet_calls
from bench.platforms import platform_scale
from bench.proxy import proxy_overhead
from bench.reads import read_cost
from bench.scale import first_tokens, scale
from bench.soak import chaos_soak
from bench.storm import fleet_storm, passive_storm

__all__ = ["Run", "counted", "describe", "measure", "timed"]

Run = Callable[[Path], list[Figure]]


def timed(quick: bool) -> list[Run]:
    return [
        partial(first_tokens, n=1000),
        partial(passive_storm, n=1000),
        partial(fleet_storm, n=1000, size=5),
        partial(read_cost, n=2000 if quick else 10000),
        partial(proxy_overhead, seconds=5 if quick else 15),
        partial(scale, n=1000, idle=10 if quick else 30),
        *([] if quick else [partial(scale, n=10000, idle=30, starts=3, on_disk=True)]),
        partial(platform_scale, n=10000 if quick else 100000, idle=10 if quick else 30),
    ]


def counted(quick: bool) -> list[Run]:
    lifetimes = 3 if quick else 20
    return [
        # Quick: shorter lifetimes (the 1 s stable window is then a larger share of each).
        partial(
            calls_per_lifetime, lifetimes=lifetimes, apps_per_grant=50, lifetime=12 if quick else 24
        ),
        partial(baselines, pattern="fetch-per-use", lifetimes=3 if quick else 10),
        partial(baselines, pattern="ttl-cache", lifetimes=3 if quick else 10),
        *(partial(fleet_calls, size=n, lifetimes=3 if quick else 10) for n in (1, 5, 10)),
        partial(chaos_soak, apps=100, lifetimes=6 if quick else 50, timeouts="hang"),
        partial(chaos_soak, apps=100, lifetimes=6 if quick else 50, timeouts="lost"),
        partial(crash_safety, kills=30 if quick else 200),
    ]


def measure(run: Run) -> tuple[list[Figure], float]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wxtokend-bench-") as tmp:
        figures = run(Path(tmp))
    return figures, time.monotonic() - started


def describe(run: Run) -> str:
    assert isinstance(run, partial)
    args = ", ".join(f"{k}={v}" for k, v in run.keywords.items())
    return f"{run.func.__name__}({args})"
