"""Figure 1: upstream calls per app per token lifetime, for one daemon and for fleets.

Counted from the daemons' own logs: each app's refresh events, as intervals between
its calls (see :func:`per_lifetime`), and cross-checked with the emulator's counters.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

from harness import DaemonProcess, EmulatorProcess, RedisServer

from bench.apps import make_apps
from bench.consumers import consume
from bench.figures import Figure

__all__ = ["calls_per_lifetime", "daemon_events", "fleet_calls", "per_lifetime"]


def calls_per_lifetime(
    work: Path, *, lifetimes: int, apps_per_grant: int, lifetime: int = 24
) -> list[Figure]:
    """Steady-state upstream calls per app per token lifetime, for each grant.

    The stable window keeps close to WeChat's proportion (300 s of 7,200 s ≈ 4 %; the
    config's smallest window is 1 s, so 1 s of 24 s): the ratio for stable is
    lifetime / (lifetime - window), so a window that is a larger share of the lifetime
    would overstate real-world calls.
    """
    window = 1
    classic = make_apps(apps_per_grant, offset=0x1000, name="classic", grants=("classic",))
    stable = make_apps(apps_per_grant, offset=0x2000, name="stable", grants=("stable",))
    group = classic + stable
    emu = EmulatorProcess(work / "emu", group, lifetime=lifetime, grace=3, stable_window=window)
    daemon = DaemonProcess(work / "d", group, emu.base_url, stable_renew_window=window)
    try:
        daemon.start()
        daemon.wait_for_tokens([a.name for a in group], timeout=60)
        time.sleep(lifetime)  # one lifetime of warm-up: the first fetches are not steady state
        emu.post("/emulator/reset-stats", {})
        started = time.monotonic()
        names = [a.name for a in group]
        seconds = lifetime * lifetimes
        reads = asyncio.run(
            consume(emu.base_url, daemon.output_dir, names, seconds=seconds, period=1)
        )
        elapsed = time.monotonic() - started
        stats = emu.stats()
    finally:
        daemon.kill()
        emu.close()
    events = daemon_events(daemon)
    figures = []
    for grant, members, endpoint in (
        ("classic", classic, "token"),
        ("stable", stable, "stable_token"),
    ):
        calls = sum(stats.get(a.appid, {}).get(endpoint, 0) for a in members)
        ratio = per_lifetime(events, [a.name for a in members], lifetime)
        counted = sum(1 for a in members if len(events.get(a.name, [])) >= 3)
        figures.append(
            Figure(
                f"upstream calls per app per lifetime ({grant})",
                f"{ratio:.3f}",
                "≤ 1.3 (minimum 1)",
                f"{len(members)} apps ({counted} with 2+ steady-state intervals),"
                f" {elapsed / lifetime:.1f} lifetimes of {lifetime} s"
                + (f", stable window {window} s" if grant == "stable" else "")
                + f"; emulator counted {calls / len(members) / (elapsed / lifetime):.3f}",
            )
        )
    figures.append(
        Figure(
            "wxtokend's consumers: rejected or unreadable reads",
            f"{reads.invalid} of {reads.total:,}",
            "0",
            "over the same run, each app's file read and its token used at once every second;"
            f" problems {reads.problems()}",
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


def fleet_calls(work: Path, *, size: int, lifetimes: int) -> list[Figure]:
    """Upstream calls per app per lifetime for a fleet of ``size`` classic-grant instances."""
    lifetime = 10
    group = make_apps(10, offset=0x40000 + size * 100, name="classic", grants=("classic",))
    redis = RedisServer(work / "redis")
    emu = EmulatorProcess(work / "emu", group, lifetime=lifetime, grace=3)
    settings = {"redis": redis.url, "key_prefix": f"bench{size}", "reconcile_interval": 5}
    fleet = [
        DaemonProcess(work / f"d{i}", group, emu.base_url, fleet=settings) for i in range(size)
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
        redis.stop()
    events = daemon_events(*fleet)
    ratio = per_lifetime(events, [a.name for a in group], lifetime)
    counted = sum(1 for a in group if len(events.get(a.name, [])) >= 3)
    return [
        Figure(
            f"fleet of {size}: upstream calls per app per lifetime (classic)",
            f"{ratio:.3f}",
            "≈ 1 (not N)",
            f"{len(group)} apps ({counted} with 2+ steady-state intervals),"
            f" {elapsed / lifetime:.1f} lifetimes of {lifetime} s, one Redis;"
            f" emulator counted {calls / len(group) / (elapsed / lifetime):.3f}",
        )
    ]
