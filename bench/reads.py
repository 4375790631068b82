"""Figure 3: what one token read costs — the file, the admin SDK endpoint, a Redis GET.

Each is measured the way a consumer does it, one read after another from one
client: reading the file anew (open, read, close), a keep-alive HTTP GET of
``/cgi-bin/token`` on loopback, and a GET on a local redis-server. Reported
as median latency and reads per second, and as ratios to the file read,
because absolute times depend on the machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from harness import DaemonProcess, EmulatorProcess, RedisServer, TestApp

from bench.figures import Figure

__all__ = ["read_cost"]


def _measure(read: Callable[[], object], n: int) -> tuple[float, float]:
    """(median seconds per read, reads per second) over n reads."""
    samples = []
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        read()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples), n / (time.perf_counter() - started)


def read_cost(work: Path, *, n: int = 5000) -> list[Figure]:
    app = TestApp(appid="wx00000000000a0001", secret="a1" * 16, name="shop", grant="stable")
    emu = EmulatorProcess(work / "emu", [app], lifetime=3600)
    daemon = DaemonProcess(work / "d", [app], emu.base_url)
    server = RedisServer(work / "redis")
    try:
        daemon.start()
        token = daemon.wait_for_tokens(["shop"])["shop"]
        path = daemon.output_dir / "shop"
        params = {"grant_type": "client_credential", "appid": app.appid, "secret": app.secret}
        store = redis.Redis.from_url(server.url)
        store.set("wxtokend:shop", token)
        with httpx.Client(base_url=daemon.admin_url()) as http:
            results = {
                "file": _measure(path.read_text, n),
                "admin SDK endpoint": _measure(
                    lambda: http.get("/cgi-bin/token", params=params).json(), n // 5
                ),
                "Redis GET": _measure(lambda: store.get("wxtokend:shop"), n),
            }
        store.close()
    finally:
        daemon.kill()
        emu.close()
        server.stop()
    file_median, file_rate = results["file"]
    figures = []
    for how, (median, rate) in results.items():
        figures.append(
            Figure(
                f"read cost: {how}",
                f"{median * 1e6:.0f} µs median",
                "the file is the cheapest",
                f"{rate:,.0f} reads/s; {median / file_median:.1f}x the file's latency,"
                f" {rate / file_rate:.2f}x its rate",
            )
        )
    return figures
