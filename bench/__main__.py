"""``python -m bench [--quick]``: measure, print a markdown table, write bench/results/.

Everything runs against the emulator on loopback with the real daemon process,
using the same process harness as the end-to-end tests (tests/harness.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import (  # noqa: E402
    DaemonProcess,
    EmulatorProcess,
    RedisServer,
    TestApp,
    raw_post,
    wait_for,
)

from bench.baselines import baselines  # noqa: E402
from bench.crash import crash_safety  # noqa: E402
from bench.figures import Figure, table  # noqa: E402
from bench.reads import read_cost  # noqa: E402
from bench.scale import scale  # noqa: E402


def _apps(n: int, grant: str, offset: int) -> list[TestApp]:
    return [
        TestApp(
            appid=f"wx{offset + i:016x}",
            secret=f"{offset + i:032x}",
            name=f"{grant}{i}",
            grant=grant,
        )
        for i in range(n)
    ]


def calls_per_lifetime(work: Path, *, lifetimes: int, apps_per_grant: int) -> list[Figure]:
    """Steady-state upstream calls per app per token lifetime, for each grant.

    The stable window keeps WeChat's proportion (300 s of 7,200 s ≈ 4 %): the
    ratio for stable is lifetime / (lifetime - window), so a compressed window
    that is a larger share of the lifetime would overstate real-world calls.
    """
    lifetime, window = 24, 1
    classic = _apps(apps_per_grant, "classic", 0x1000)
    stable = _apps(apps_per_grant, "stable", 0x2000)
    apps = classic + stable
    emu = EmulatorProcess(work / "emu", apps, lifetime=lifetime, grace=3, stable_window=window)
    daemon = DaemonProcess(work / "d", apps, emu.base_url, stable_renew_window=window)
    try:
        daemon.start()
        daemon.wait_for_tokens([a.name for a in apps], timeout=60)
        time.sleep(lifetime)  # one lifetime of warm-up: the first fetches are not steady state
        emu.post("/emulator/reset-stats", {})
        started = time.monotonic()
        time.sleep(lifetime * lifetimes)
        elapsed = time.monotonic() - started
        stats = emu.stats()
    finally:
        daemon.kill()
        emu.close()
    events = daemon_events(daemon)
    figures = []
    for grant, group, endpoint in (
        ("classic", classic, "token"),
        ("stable", stable, "stable_token"),
    ):
        calls = sum(stats.get(a.appid, {}).get(endpoint, 0) for a in group)
        ratio = per_lifetime(events, [a.name for a in group], lifetime)
        figures.append(
            Figure(
                f"upstream calls per app per lifetime ({grant})",
                f"{ratio:.3f}",
                "≤ 1.3 (minimum 1)",
                f"{len(group)} apps, {elapsed / lifetime:.1f} lifetimes of {lifetime} s;"
                f" emulator counted {calls / len(group) / (elapsed / lifetime):.3f}",
            )
        )
    return figures


def daemon_events(*daemons: DaemonProcess) -> dict[str, list[float]]:
    """Per app, the times of its upstream calls, from one or more daemons' logs.

    A refresh event is one upstream call, except "reused" (from disk) and "shared"
    (taken from the fleet's record).
    """
    times: dict[str, list[float]] = {}
    for daemon in daemons:
        for event in daemon.events():
            if event.get("event") == "refresh" and event.get("outcome") not in ("reused", "shared"):
                stamp = datetime.fromisoformat(event["timestamp"]).timestamp()
                times.setdefault(event["app"], []).append(stamp)
    return times


def per_lifetime(events: dict[str, list[float]], names: list[str], lifetime: float) -> float:
    """Calls per lifetime from each app's own first-to-last span.

    Counting calls in a fixed window is quantised: apps started together stay
    in phase (stable jitter is a fraction of a second), so every app rounds the
    same way. Intervals between an app's own calls have no such bias.
    """
    spans, intervals = 0.0, 0
    for name in names:
        stamps = sorted(events.get(name, []))[1:]  # the first fetch is not steady state
        if len(stamps) >= 2:
            spans += stamps[-1] - stamps[0]
            intervals += len(stamps) - 1
    return intervals / (spans / lifetime)


def first_tokens(work: Path, *, n: int) -> list[Figure]:
    """Time from process start until every one of n apps has its token file."""
    apps = _apps(n // 2, "classic", 0x10000) + _apps(n - n // 2, "stable", 0x20000)
    emu = EmulatorProcess(work / "emu", apps, lifetime=3600)
    daemon = DaemonProcess(work / "d", apps, emu.base_url)
    out = daemon.output_dir
    try:
        started = time.monotonic()
        daemon.start()
        wait_for(
            lambda: daemon.log_path.exists() and '"started"' in daemon.log_text(),
            timeout=60,
            what="start",
        )
        booted = time.monotonic() - started
        wait_for(
            lambda: out.exists() and sum(1 for _ in out.glob("*.json")) == n,
            timeout=300,
            what=f"{n} token files",
            step=0.05,
        )
        total = time.monotonic() - started
    finally:
        daemon.kill()
        emu.close()
    return [
        Figure(
            f"time until {n:,} apps have their first token",
            f"{total:.2f} s",
            "seconds",
            f"of which {booted:.2f} s interpreter start-up and config load",
        )
    ]


def passive_storm(work: Path, *, n: int) -> list[Figure]:
    """n concurrent reports of one stale token, each on its own connection."""
    shop = TestApp(
        appid=f"wx{0x30000:016x}", secret=f"{0x30000:032x}", name="shop", grant="classic"
    )
    emu = EmulatorProcess(work / "emu", [shop], lifetime=3600)
    daemon = DaemonProcess(work / "d", [shop], emu.base_url)
    try:
        daemon.start()
        stale = daemon.wait_for_tokens(["shop"])["shop"]
        url = daemon.admin_url()
        before = emu.calls(shop.appid, "token")
        body = json.dumps({"access_token": stale}).encode()

        async def storm() -> list[tuple[int, bytes, float]]:
            path = "/v1/apps/shop/refresh"
            return await asyncio.gather(*(raw_post(url, path, body) for _ in range(n)))

        answers = asyncio.run(storm())
        upstream = emu.calls(shop.appid, "token") - before
    finally:
        daemon.kill()
        emu.close()
    latencies = sorted(seconds for _, _, seconds in answers)
    results = Counter(json.loads(payload)["result"] for _, payload, _ in answers)
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
    return [
        Figure(
            f"passive refresh storm: upstream calls for {n:,} concurrent reports of one token",
            str(upstream),
            "1",
            f"answer latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (connect included);"
            f" results {dict(results)}",
        )
    ]


def fleet_calls(work: Path, *, sizes: tuple[int, ...], lifetimes: int) -> list[Figure]:
    """Upstream calls per app per lifetime for fleets of N classic-grant instances."""
    lifetime = 10
    figures = []
    redis = RedisServer(work / "redis")
    try:
        for n in sizes:
            group = _apps(10, "classic", 0x40000 + n * 100)
            emu = EmulatorProcess(work / f"emu{n}", group, lifetime=lifetime, grace=3)
            settings = {"redis": redis.url, "key_prefix": f"bench{n}", "reconcile_interval": 5}
            fleet = [
                DaemonProcess(work / f"d{n}-{i}", group, emu.base_url, fleet=settings)
                for i in range(n)
            ]
            try:
                for daemon in fleet:
                    daemon.start()
                for daemon in fleet:
                    daemon.wait_for_tokens([a.name for a in group], timeout=60)
                time.sleep(lifetime)
                emu.post("/emulator/reset-stats", {})
                started = time.monotonic()
                time.sleep(lifetime * lifetimes)
                elapsed = time.monotonic() - started
                calls = sum(emu.calls(a.appid, "token") for a in group)
            finally:
                for daemon in fleet:
                    daemon.kill()
                emu.close()
            ratio = per_lifetime(daemon_events(*fleet), [a.name for a in group], lifetime)
            figures.append(
                Figure(
                    f"fleet of {n}: upstream calls per app per lifetime (classic)",
                    f"{ratio:.3f}",
                    "≈ 1 (not N)",
                    f"{len(group)} apps, {elapsed / lifetime:.1f} lifetimes of {lifetime} s,"
                    f" one Redis; emulator counted {calls / len(group) / (elapsed / lifetime):.3f}",
                )
            )
    finally:
        redis.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer lifetimes (about a minute)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.md")
    args = parser.parse_args()
    runs: list[Callable[[Path], list[Figure]]] = [
        lambda w: calls_per_lifetime(w, lifetimes=3 if args.quick else 20, apps_per_grant=50),
        lambda w: first_tokens(w, n=1000),
        lambda w: baselines(w, lifetimes=3 if args.quick else 10),
        lambda w: passive_storm(w, n=1000),
        lambda w: read_cost(w, n=2000 if args.quick else 10000),
        lambda w: scale(w, n=1000, idle=10 if args.quick else 30),
        *([] if args.quick else [lambda w: scale(w, n=10000, idle=30)]),
        lambda w: crash_safety(w, kills=40 if args.quick else 200),
        lambda w: fleet_calls(w, sizes=(1, 5, 10), lifetimes=4 if args.quick else 10),
    ]
    figures: list[Figure] = []
    for run in runs:
        with tempfile.TemporaryDirectory(prefix="wxtokend-bench-") as tmp:
            figures += run(Path(tmp))
            print(table(figures[-1:]).splitlines()[-1], flush=True)
    machine = (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    command = "python -m bench" + (" --quick" if args.quick else "")
    report = f"{table(figures)}\n\nMachine: {machine}, {_cpus()} cores. Command: `{command}`.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print("\n" + report)
    return 0


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    raise SystemExit(main())
