"""Figure: what the API proxy adds to a WeChat call, against calling the emulator directly.

Both are measured side by side in one run with wrk (Debian's ``wrk``, a C load tool,
so the client is never the bottleneck): latency at one connection (added p50/p99),
and the most requests per second at 64 connections, with the daemon's and the
emulator's own CPU over that run. The emulator shares the 2 cores with the daemon and
wrk, so "direct" is the emulator's own ceiling and the proxy's figure is bounded by it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from harness import DaemonProcess, EmulatorProcess, TestApp

from bench.figures import Figure

__all__ = ["proxy_overhead"]

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_CALL = "/cgi-bin/user/info?openid=o-bench&lang=zh_CN"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(url: str, *, connections: int, seconds: int) -> dict[str, float]:
    """wrk's requests/s and latency percentiles (seconds) for GETs of ``url``."""
    out = subprocess.run(
        [
            shutil.which("wrk") or "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    found = {"rps": float(rate.group(1))}
    for pct, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.MULTILINE):
        found[f"p{pct}"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    found["non2xx"] = float(errors.group(1)) if errors else 0.0
    return found


def proxy_overhead(work: Path, *, seconds: int = 10) -> list[Figure]:
    if shutil.which("wrk") is None:
        return [
            Figure("API proxy overhead", "not measured", "", "install wrk (apt-get install wrk)")
        ]
    app = TestApp(appid="wx00000000000b0001", secret="b1" * 16, name="shop", grant="stable")
    emu = EmulatorProcess(work / "emu", [app], lifetime=3600)
    daemon = DaemonProcess(
        work / "d", [app], emu.base_url, api_proxy={"listen": "127.0.0.1:0"}
    ).start()
    try:
        token = daemon.wait_for_tokens(["shop"])["shop"]
        direct_url = f"{emu.base_url}{_CALL}&access_token={token}"
        proxy_url = f"{daemon.proxy_url()}/shop{_CALL}"
        _wrk(proxy_url, connections=8, seconds=2)  # warm both pools
        one = {
            "direct": _wrk(direct_url, connections=1, seconds=seconds),
            "proxy": _wrk(proxy_url, connections=1, seconds=seconds),
        }
        direct = _wrk(direct_url, connections=64, seconds=seconds)
        cpu = (_cpu_seconds(daemon.pid), _cpu_seconds(emu.process.pid))
        loaded = _wrk(proxy_url, connections=64, seconds=seconds)
        daemon_cpu = (_cpu_seconds(daemon.pid) - cpu[0]) / seconds
        emu_cpu = (_cpu_seconds(emu.process.pid) - cpu[1]) / seconds
    finally:
        daemon.kill()
        emu.close()
    added = {p: (one["proxy"][p] - one["direct"][p]) * 1000 for p in ("p50", "p99")}
    return [
        Figure(
            "API proxy: added latency, one connection",
            f"p50 +{added['p50']:.2f} ms, p99 +{added['p99']:.2f} ms",
            "added p50 <= 1 ms",
            f"direct p50 {one['direct']['p50'] * 1000:.2f} ms / p99"
            f" {one['direct']['p99'] * 1000:.2f} ms; through the proxy"
            f" {one['proxy']['p50'] * 1000:.2f} / {one['proxy']['p99'] * 1000:.2f} ms (wrk)",
        ),
        Figure(
            "API proxy: requests/s, 64 connections",
            f"{loaded['rps']:,.0f}/s",
            ">= 2,000/s",
            f"direct to the emulator {direct['rps']:,.0f}/s; during the proxied run the daemon"
            f" used {daemon_cpu:.0%} of a core and the emulator {emu_cpu:.0%} (2 cores shared"
            f" with wrk); p50 {loaded['p50'] * 1000:.1f} ms; non-2xx {loaded['non2xx']:.0f}",
        ),
    ]
