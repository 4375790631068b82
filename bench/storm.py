"""Figure 4: a passive refresh storm — 1,000 concurrent reports of one stale token.

Each report is a POST on its own TCP connection (connect included in its latency),
to one daemon or spread over a fleet of five sharing one Redis. Counted: upstream
calls (target 1; for stable a normal call that returns the same token is followed by
one force), and the p50/p99 answer latency.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from harness import DaemonProcess, EmulatorProcess, RedisServer, TestApp, raw_post, wait_for

from bench.figures import Figure

__all__ = ["fleet_storm", "passive_storm"]


def _shop(grant: str) -> TestApp:
    return TestApp(appid=f"wx{0x30000:016x}", secret=f"{0x30000:032x}", name="shop", grant=grant)


def _storm(urls: list[str], stale: str, n: int) -> list[tuple[int, bytes, float]]:
    body = json.dumps({"access_token": stale}).encode()

    async def storm() -> list[tuple[int, bytes, float]]:
        path = "/v1/apps/shop/refresh"
        return await asyncio.gather(*(raw_post(urls[i % len(urls)], path, body) for i in range(n)))

    return asyncio.run(storm())


def _calls(emu: EmulatorProcess, app: TestApp) -> tuple[int, int]:
    stats = emu.stats().get(app.appid, {})
    return stats.get("token", 0) + stats.get("stable_token", 0), stats.get("stable_token_force", 0)


def _figure(
    name: str, upstream: int, target: str, answers: list[tuple[int, bytes, float]]
) -> Figure:
    latencies = sorted(seconds for _, _, seconds in answers)
    results = Counter(json.loads(payload).get("result", "?") for _, payload, _ in answers)
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
    return Figure(
        name,
        str(upstream),
        target,
        f"answer latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (connect included);"
        f" results {dict(results)}",
    )


def passive_storm(work: Path, *, n: int) -> list[Figure]:
    """n concurrent reports of one stale classic token to one daemon."""
    shop = _shop("classic")
    emu = EmulatorProcess(work / "emu", [shop], lifetime=3600)
    daemon = DaemonProcess(work / "d", [shop], emu.base_url)
    try:
        daemon.start()
        stale = daemon.wait_for_tokens(["shop"])["shop"]
        before, _ = _calls(emu, shop)
        answers = _storm([daemon.admin_url()], stale, n)
        upstream = _calls(emu, shop)[0] - before
    finally:
        daemon.kill()
        emu.close()
    return [
        _figure(
            f"passive refresh storm: upstream calls for {n:,} concurrent reports of one token",
            upstream,
            "1",
            answers,
        )
    ]


def fleet_storm(work: Path, *, n: int, size: int = 5) -> list[Figure]:
    """n concurrent reports of one stale token, spread over a fleet of ``size`` instances."""
    figures = []
    redis = RedisServer(work / "redis")
    try:
        for grant, target in (("classic", "1"), ("stable", "2 (1 normal, then 1 force)")):
            shop = _shop(grant)
            emu = EmulatorProcess(work / f"emu-{grant}", [shop], lifetime=3600)
            settings = {"redis": redis.url, "key_prefix": f"storm-{grant}"}
            fleet = [
                DaemonProcess(work / f"d-{grant}{i}", [shop], emu.base_url, fleet=settings)
                for i in range(size)
            ]
            try:
                for daemon in fleet:
                    daemon.start()
                stale = fleet[0].wait_for_tokens(["shop"], timeout=60)["shop"]
                for daemon in fleet:
                    wait_for(
                        lambda d=daemon, s=stale: d.token("shop") == s, timeout=30, what="agree"
                    )
                before, forces = _calls(emu, shop)
                answers = _storm([d.admin_url() for d in fleet], stale, n)
                after, forces_after = _calls(emu, shop)
            finally:
                for daemon in fleet:
                    daemon.kill()
                emu.close()
            figure = _figure(
                f"fleet of {size}, passive refresh storm ({grant}): upstream calls for"
                f" {n:,} concurrent reports",
                after - before,
                target,
                answers,
            )
            figure.detail += (
                f"; forces {forces_after - forces}; reports spread over {size} instances"
            )
            figures.append(figure)
    finally:
        redis.stop()
    return figures
