"""Figure 7: one third-party platform with 100,000 authorizers in one daemon.

The emulator plays WeChat's Open Platform with N pre-authorized accounts and
pushes an encrypted ``component_verify_ticket`` to the daemon's callback listener
every 2 s. Measured, against the issue's targets:

- **cold start**: from process start, with an empty state directory, until
  ``/readyz`` answers 200 — ticket, component token, the authorizer list (which
  recovers every refresh token), then one ``api_authorizer_token`` per account,
  each refresh token saved (fsync) in the state directory before its token file;
- peak RSS (VmHWM) and idle CPU once every token is valid (timers only);
- **refresh spread**: each authorizer's planned refresh time, read from the
  paged admin listing, bucketed per minute: the busiest minute against an even
  spread over the window the plans cover (no herd at the 80 % mark);
- **restart** with every token still valid: SIGTERM, start again, time until
  ``/readyz`` is 200, and the upstream calls that cost (should be 0).

Token files go to a tmpfs as in production; the state directory stays on the
work directory's disk, as ``/var/lib/wxtokend`` would be.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from harness import DaemonProcess, EmulatorProcess, free_port, wait_for

from bench.figures import Figure
from bench.scale import _cpu_seconds, _peak_rss_mb, _tmpfs

__all__ = ["platform_scale"]

COMPONENT = "wx00b0b0b0b0b0b0b0"
SECRET = "BENCH_COMPONENT_SECRET_0123456789"  # noqa: S105 - the emulator's
TOKEN = "wxtokendbenchtoken"  # noqa: S105 - the emulator's
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
LIFETIME = 7200  # real lifetimes: nothing is due during the figure
PAGE = 1000


def _emulator(work: Path, n: int, callback_port: int) -> EmulatorProcess:
    platform = {
        "component_appid": COMPONENT,
        "component_appsecret": SECRET,
        "token": TOKEN,
        "encoding_aes_key": AES_KEY,
        "callback_url": f"http://127.0.0.1:{callback_port}/callback/bench",
        "ticket_push_interval": 2.0,
        "component_token_lifetime": LIFETIME,
        "authorizer_token_lifetime": LIFETIME,
        "authorizers": n,
    }
    return EmulatorProcess(work / "emu", [], lifetime=LIFETIME, platforms=[platform])


def _daemon(work: Path, base_url: str, callback_port: int, output: Path | None) -> DaemonProcess:
    directory = work / "d"
    secrets = directory / "secrets"
    secrets.mkdir(parents=True)
    for name, value in (("bench", SECRET), ("bench.token", TOKEN), ("bench.aes", AES_KEY)):
        (secrets / name).write_text(value + "\n")
    where = {"output_dir": str(output)} if output is not None else {}
    return DaemonProcess(
        directory,
        [],
        base_url,
        **where,
        state_dir="state",
        callback={"listen": f"127.0.0.1:{callback_port}"},
        admin={"listen": f"127.0.0.1:{free_port()}"},  # the same across the restart
        platforms=[
            {
                "name": "bench",
                "component_appid": COMPONENT,
                "component_appsecret_file": "secrets/bench",
                "token_file": "secrets/bench.token",
                "encoding_aes_key_file": "secrets/bench.aes",
            }
        ],
    )


def _until_ready(daemon: DaemonProcess, started: float, timeout: float) -> float:
    """Seconds from ``started`` until the daemon's /readyz answers 200."""
    url = daemon.admin_url(timeout=60)

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    # Each /readyz counts every authorizer: a poll a second, as a probe would, not a spin.
    wait_for(ready, timeout=timeout, what="every authorizer valid", step=1.0)
    return time.monotonic() - started


def _calls(emu: EmulatorProcess) -> dict[str, int]:
    stats = emu.http.get("/emulator/platforms", timeout=60).json()["platforms"][COMPONENT]
    return dict(stats["counts"])


def _plans(daemon: DaemonProcess) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=daemon.admin_url(), timeout=30) as admin:
        while True:
            page = admin.get(
                "/v1/platforms/bench/authorizers", params={"offset": len(rows), "limit": PAGE}
            ).json()
            rows += page["authorizers"]
            if len(rows) >= page["total"] or not page["authorizers"]:
                return rows


def _spread(rows: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(busiest minute / even share, the window's length in minutes, rows without a plan)."""
    at = [r["refresh_at"] for r in rows if r["refresh_at"] is not None]
    if not at:
        return float("nan"), 0.0, len(rows)
    minutes = Counter(int(t // 60) for t in at)
    window = max(minutes) - min(minutes) + 1
    return max(minutes.values()) / (len(at) / window), float(window), len(rows) - len(at)


def platform_scale(work: Path, *, n: int, idle: float) -> list[Figure]:
    tmpfs = _tmpfs()
    output = Path(tempfile.mkdtemp(prefix="wxtokend-bench-", dir=tmpfs)) if tmpfs else None
    port = free_port()
    emu = _emulator(work, n, port)
    daemon = _daemon(work, emu.base_url, port, output)
    try:
        started = time.monotonic()
        daemon.start()
        cold = _until_ready(daemon, started, timeout=900)
        cold_cpu, emu_cpu = _cpu_seconds(daemon.pid), _cpu_seconds(emu.process.pid)
        cold_calls = _calls(emu)
        time.sleep(2)  # the last writes and logs settle
        cpu_before, t_before = _cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(idle)
        idle_share = (_cpu_seconds(daemon.pid) - cpu_before) / (time.monotonic() - t_before)
        rows = _plans(daemon)
        herd, window, unplanned = _spread(rows)
        rss = _peak_rss_mb(daemon.pid)
        before = _calls(emu)
        daemon.stop()
        started = time.monotonic()
        daemon.start()
        warm = _until_ready(daemon, started, timeout=300)
        time.sleep(2)  # any call a restart would make has been made by now
        restart_calls = sum(_calls(emu).values()) - sum(before.values())
        rss = max(rss, _peak_rss_mb(daemon.pid))
    finally:
        daemon.kill()
        emu.close()
        if output is not None:
            shutil.rmtree(output, ignore_errors=True)
    detail_calls = ", ".join(f"{k} {v:,}" for k, v in sorted(cold_calls.items()))
    return [
        Figure(
            f"{n:,} authorizers: cold start until every token is valid",
            f"{cold:.1f} s",
            "≤ 60 s",
            f"empty state directory, from process start to /readyz 200; upstream calls:"
            f" {detail_calls}; the daemon used {cold_cpu:.1f} CPU s, the emulator on the same"
            f" cores {emu_cpu:.1f}; refresh tokens fsynced on disk, token files on"
            f" {'tmpfs' if tmpfs else 'disk'}",
        ),
        Figure(
            f"{n:,} authorizers: restart with every token valid",
            f"{warm:.1f} s, {restart_calls} upstream calls",
            "≤ 10 s, 0 calls",
            "SIGTERM, start again, until /readyz 200; calls counted by the emulator",
        ),
        Figure(f"{n:,} authorizers: daemon peak RSS", f"{rss:.0f} MB", "≤ 1 GB", "VmHWM"),
        Figure(
            f"{n:,} authorizers: idle CPU",
            f"{idle_share * 100:.2f} % of one core",
            "≤ 1 %",
            f"over {idle:.0f} s, every token valid, tickets still pushed every 2 s",
        ),
        Figure(
            f"{n:,} authorizers: refresh spread",
            f"busiest minute {herd:.2f}x an even share",
            "no herd (≈ 1x)",
            f"planned refreshes (from the admin listing) cover {window:.0f} minutes;"
            f" {unplanned} without a plan",
        ),
    ]
