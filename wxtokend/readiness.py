"""Readiness, health and the one-line status of a daemon's refresh loops.

Ready: every app's token (and each of its tickets) valid and on disk. Healthy:
every loop's task alive and no fetch stuck. Both feed ``/readyz`` and
``/healthz``, systemd's READY/WATCHDOG/STATUS and the apps gauges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from wxtokend.store import TOKEN

if TYPE_CHECKING:
    from wxtokend.fleet import Fleet
    from wxtokend.metrics import Metrics
    from wxtokend.refresher import Refresher

__all__ = ["health", "missing", "ready", "status_line", "update_gauges"]


def ready(loop: Refresher) -> bool:
    """A valid token (or ticket) that is also on disk."""
    return loop.on_disk()


def missing(
    refreshers: Mapping[str, Refresher], tickets: Mapping[str, Mapping[str, Refresher]]
) -> dict[str, str]:
    """Apps without a valid token (or one of their tickets) on disk, and why."""
    result = {}
    for name in refreshers:
        for loop in [refreshers[name], *tickets.get(name, {}).values()]:
            if not ready(loop):
                status = loop.status()
                what = "" if loop.kind == TOKEN else f"{loop.kind} ticket: "
                result[name] = what + (status.last_error or status.state)
                break
    return result


def health(
    tasks: Mapping[str, asyncio.Task[None]], loops: Mapping[str, Refresher], *, fetch_limit: float
) -> list[str]:
    """Why the refresh machinery is unhealthy (dead or stuck loops); empty if fine."""
    problems = []
    for name, task in tasks.items():
        if task.done():
            problems.append(f"{name}: its refresh loop has stopped")
            continue
        why = loops[name].stuck(fetch_limit=fetch_limit)
        if why:
            problems.append(f"{name}: {why}")
    return problems


def update_gauges(
    metrics: Metrics,
    refreshers: Mapping[str, Refresher],
    waiting: Mapping[str, str],
    fleet: Fleet | None,
) -> None:
    configured = len(refreshers)
    ready_apps = configured - sum(name in waiting for name in refreshers)
    metrics.apps(configured=configured, ready=ready_apps)
    if fleet is not None:
        metrics.fleet_up(fleet.up)


def status_line(refreshers: Mapping[str, Refresher], waiting: Mapping[str, str], now: float) -> str:
    """One line for ``systemctl status``."""
    total = len(refreshers)
    platforms = sorted(k for k in waiting if k not in refreshers)
    waiting = {k: v for k, v in waiting.items() if k in refreshers}
    if platforms and not waiting:
        return f"{total} apps with a valid token; waiting for {', '.join(platforms)}"
    if not waiting:
        soonest = min(refreshers.values(), key=lambda r: r.next_at, default=None)
        if soonest is None:
            return "no apps configured"
        wait = max(0, int(soonest.next_at - now))
        return f"{total} apps, all tokens valid; next refresh: {soonest.app.name} in {wait} s"
    names = sorted(waiting)
    shown = ", ".join(f"{n} ({waiting[n]})" for n in names[:3])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{total - len(waiting)}/{total} apps have a valid token; waiting for {shown}{more}"
