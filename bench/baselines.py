"""What users do instead of wxtokend, measured against the same emulator.

Two client-side patterns, each run for a number of (compressed) token lifetimes with
plain asyncio + httpx over loopback, no wxtokend daemon involved:

* **fetch-per-use**, the pattern in most blog posts (../shared/seeds): every API use
  first calls ``/cgi-bin/token``, then uses the new token. Upstream calls per lifetime
  grow with the use rate (≈ uses per second times lifetime) and burn the 2,000-a-day quota.
* **an in-process TTL cache in each of N worker processes**, the common SDK pattern:
  each worker caches its own token and refreshes it a little before its ``expires_in``.
  With the classic grant every fetch invalidates the token before the previous one (the
  previous one survives only for the grace period), so workers keep killing each
  other's tokens: their uses see 40001/42001, they refetch, which kills more tokens —
  the "40001 storm". We count both the upstream calls and the rejections the workers saw.

Upstream calls come from the emulator's own counters (reset after a warm-up); rejections
are counted in the workers. These are the figures wxtokend is compared with in issue 6.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import EmulatorProcess  # type: ignore[import-not-found]  # noqa: E402

from bench.apps import make_apps  # noqa: E402
from bench.figures import Figure  # noqa: E402

__all__ = ["baselines"]

REJECTED = (40001, 42001)


@dataclass
class _Tally:
    """Counters shared by the consumers of one measurement; only count while measuring."""

    measuring: bool = False
    rejections: int = 0
    failed_uses: int = 0
    uses: int = 0


async def _fetch(client: httpx.AsyncClient, app: Any) -> tuple[str, int]:
    """One upstream ``/cgi-bin/token`` call: (token, expires_in)."""
    response = await client.get(
        "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": app.appid, "secret": app.secret},
    )
    body = response.json()
    if "access_token" not in body:
        raise RuntimeError(f"token fetch failed for {app.appid}: {body}")
    return str(body["access_token"]), int(body["expires_in"])


async def _use(client: httpx.AsyncClient, token: str) -> int:
    """One API use of ``token``: 0 if accepted, else WeChat's errcode."""
    response = await client.get("/cgi-bin/getcallbackip", params={"access_token": token})
    body = response.json()
    return 0 if "ip_list" in body else int(body.get("errcode", -1))


async def _paced(rate: float, end: float) -> AsyncIterator[None]:
    """Yield once per 1/rate seconds (random phase) until ``end`` (monotonic)."""
    interval = 1.0 / rate
    due = time.monotonic() + random.uniform(0, interval)
    while True:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if time.monotonic() >= end:
            return
        yield
        due += interval


async def _fetch_per_use(
    client: httpx.AsyncClient, app: Any, rate: float, end: float, tally: _Tally
) -> None:
    async for _ in _paced(rate, end):
        token, _expires_in = await _fetch(client, app)
        code = await _use(client, token)
        if tally.measuring:
            tally.uses += 1
            if code in REJECTED:
                tally.rejections += 1
            if code:
                tally.failed_uses += 1


async def _ttl_worker(
    client: httpx.AsyncClient, app: Any, rate: float, end: float, margin: float, tally: _Tally
) -> None:
    """One worker process's SDK cache: refresh ``margin`` s early, refetch once on 40001."""
    token: str | None = None
    expires_at = 0.0

    async def refresh() -> str:
        nonlocal token, expires_at
        token, expires_in = await _fetch(client, app)
        expires_at = time.monotonic() + expires_in
        return token

    async for _ in _paced(rate, end):
        current = token
        if current is None or time.monotonic() >= expires_at - margin:
            current = await refresh()
        code = await _use(client, current)
        if code in REJECTED:
            if tally.measuring:
                tally.rejections += 1
            token = None
            code = await _use(client, await refresh())
            if code in REJECTED and tally.measuring:
                tally.rejections += 1
        if tally.measuring:
            tally.uses += 1
            if code:
                tally.failed_uses += 1


async def _measure(
    base_url: str,
    apps: list[Any],
    *,
    pattern: str,
    workers: int,
    rate: float,
    margin: float,
    warmup: float,
    duration: float,
) -> tuple[float, float, _Tally]:
    """Run one pattern for warm-up + duration: (upstream token calls per app, seconds, tally)."""
    tally = _Tally()
    limits = httpx.Limits(max_connections=len(apps) * workers * 2 + 4)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=10, trust_env=False, limits=limits
    ) as client:
        end = time.monotonic() + warmup + duration
        if pattern == "fetch-per-use":
            consumers = [_fetch_per_use(client, app, rate, end, tally) for app in apps]
        else:
            consumers = [
                _ttl_worker(client, app, rate / workers, end, margin, tally)
                for app in apps
                for _ in range(workers)
            ]
        tasks = [asyncio.create_task(c) for c in consumers]
        try:
            await asyncio.sleep(warmup)
            (await client.post("/emulator/reset-stats", json={})).raise_for_status()
            tally.measuring = True
            started = time.monotonic()
            await asyncio.sleep(max(0.0, end - started))
            stats = (await client.get("/emulator/stats")).json()["apps"]
            elapsed = time.monotonic() - started
            tally.measuring = False
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    calls = sum(int(stats.get(app.appid, {}).get("token", 0)) for app in apps)
    return calls / len(apps), elapsed, tally


def baselines(
    work: Path,
    *,
    pattern: str,
    lifetimes: int,
    apps: int = 5,
    workers: int = 4,
    lifetime: int = 10,
    uses_per_second: float = 5.0,
) -> list[Figure]:
    """Upstream calls (and, for the caches, 40001s) per app per lifetime for ``pattern``:
    "fetch-per-use" or "ttl-cache" (``workers`` caches per app)."""
    group = make_apps(apps, offset=0x40000, name="baseline", grants=("classic",))
    emu = EmulatorProcess(work / "emu", group, lifetime=lifetime, grace=3, daily_quota=10**9)
    margin = max(1.0, 0.2 * lifetime)
    try:
        calls, elapsed, tally = asyncio.run(
            _measure(
                emu.base_url,
                group,
                pattern=pattern,
                workers=workers,
                rate=uses_per_second,
                margin=margin,
                warmup=lifetime / 2,
                duration=float(lifetime * lifetimes),
            )
        )
    finally:
        emu.close()
    spans = elapsed / lifetime
    setting = f"{apps} apps, {uses_per_second:g} uses/s each"
    if pattern == "fetch-per-use":
        return [
            Figure(
                "fetch-per-use: upstream calls per app per lifetime",
                f"{calls / spans:.2f}",
                "wxtokend: {classic}",
                f"{setting}, {spans:.1f} lifetimes of {lifetime} s;"
                f" {tally.uses} uses, {tally.failed_uses} failed",
            )
        ]
    return [
        Figure(
            f"TTL cache in {workers} workers: upstream calls per app per lifetime",
            f"{calls / spans:.2f}",
            "wxtokend: {classic}",
            f"{setting} split over {workers} workers, refresh {margin:g} s early,"
            f" grace 3 s; {spans:.1f} lifetimes of {lifetime} s",
        ),
        Figure(
            f"TTL cache in {workers} workers: 40001/42001 rejections seen per app per lifetime",
            f"{tally.rejections / apps / spans:.2f}",
            "wxtokend's consumers: {rejections} reads (1 per app per second)",
            f"{tally.rejections} rejections in {tally.uses} uses;"
            f" {tally.failed_uses} uses still failed after one refetch and retry",
        ),
    ]
