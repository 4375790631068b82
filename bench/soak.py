"""Figure 5: a chaos soak — tokens stay valid while 30 % of WeChat's answers go wrong.

100 apps (half classic, half stable) run for many compressed lifetimes against an
emulator where 30 % of token calls fail in mixed ways: HTTP 502, errcode -1, garbage
bodies, slow answers, and timeouts. Meanwhile consumers read every app's token file
twice a second and use the token at once (``getcallbackip``); an invalid read is a use
rejected with 40001/42001, or a file that is missing or empty.

Timeouts come in two kinds, run as two soaks side by side:

* ``hang``: the call is held past the client's timeout and never processed (a request
  stuck or dropped before WeChat handled it);
* ``lost``: WeChat processed the call at once but the reply never arrives in time. For
  classic that issued a token nobody has: the daemon's current token is now the
  previous one. The emulator keeps only the newest two tokens alive, so the daemon's
  retry, which issues a third, kills the file's token at once, milliseconds before the
  daemon has the new one on disk. Reads in those milliseconds fail whatever the daemon
  does; retrying at once keeps the window that small (waiting would let the token die
  in the file when the grace ends).

Time is compressed 720x (a 7,200 s lifetime becomes 10 s) while the backoff is
compressed less (floor 1 s -> 50 ms, 20x; cap 60 s -> 150 ms, 400x) and the request
timeout far less (10 s -> 0.5 s, 20x): the daemon gets fewer attempts in the slack
before expiry than production has (there 1,080 s or more of slack, dozens of attempts;
here 1.5-2.5 s, about ten, fewer when the soak shares the CPU with the other counted
figures). It is harsher than the real thing, not kinder.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness import DaemonProcess, EmulatorProcess

from bench.apps import make_apps
from bench.consumers import consume
from bench.figures import Figure

__all__ = ["chaos_soak"]

LIFETIME = 10
FAULTS = {
    "http_5xx": 0.08,
    "busy": 0.08,
    "garbage": 0.06,
    "slow": 0.04,
    "slow_seconds": 0.1,  # late, yet well within the client's timeout on a busy machine
    "hang_seconds": 1.0,  # past the client's 0.5 s timeout
}
TIMEOUTS = 0.04  # of calls, as "hang" or as "lost"
FAULTED = sum(v for k, v in FAULTS.items() if not k.endswith("_seconds")) + TIMEOUTS
FAILING = FAULTED - FAULTS["slow"]  # slow answers arrive within the timeout


def chaos_soak(work: Path, *, apps: int, lifetimes: int, timeouts: str = "hang") -> list[Figure]:
    """The soak with its timeouts as ``timeouts``: "hang" (never processed) or "lost"."""
    group = make_apps(apps, offset=0x70000, name="soak")
    faults = {**FAULTS, timeouts: TIMEOUTS}
    emu = EmulatorProcess(
        work / "emu", group, lifetime=LIFETIME, grace=1, stable_window=2, faults=faults
    )
    daemon = DaemonProcess(
        work / "d",
        group,
        emu.base_url,
        request_timeout=0.5,
        stable_renew_window=2,
        retry={"min": 0.05, "max": 0.15},
    )
    try:
        daemon.start()
        daemon.wait_for_tokens([a.name for a in group], timeout=120)
        emu.post("/emulator/reset-stats", {})
        started = time.monotonic()
        names = [a.name for a in group]
        reads = asyncio.run(
            consume(
                emu.base_url, daemon.output_dir, names, seconds=LIFETIME * lifetimes, period=0.5
            )
        )
        elapsed = time.monotonic() - started
        stats = emu.stats()
    finally:
        daemon.kill()
        emu.close()
    spans = elapsed / LIFETIME
    names_of = {g: {a.name for a in group if a.grant == g} for g in ("classic", "stable")}
    calls = {
        grant: sum(
            s.get("token", 0) + s.get("stable_token", 0)
            for a in group
            if a.grant == grant
            for s in [stats.get(a.appid, {})]
        )
        / (apps / 2)
        / spans
        for grant in ("classic", "stable")
    }
    faults = sum(s.get("faults", 0) for s in stats.values())
    total_calls = sum(s.get("token", 0) + s.get("stable_token", 0) for s in stats.values())
    by_grant = {
        grant: sum(n for name, n in reads.invalid_by_app.items() if name in names_of[grant])
        for grant in ("classic", "stable")
    }
    kind = {"hang": "timeouts never processed", "lost": "timeouts processed, replies lost"}
    rate = f"classic {calls['classic']:.2f}, stable {calls['stable']:.2f}"
    figures = [
        Figure(
            f"chaos soak ({kind[timeouts]}): invalid reads, {FAULTED:.0%} of calls faulted",
            f"{reads.invalid}",
            "0",
            f"{apps} apps (half classic, half stable), {spans:.0f} lifetimes of {LIFETIME} s;"
            f" {reads.total:,} reads, each token used at once;"
            f" {faults:,} of {total_calls:,} upstream calls faulted"
            f" ({faults / max(total_calls, 1):.0%}; failing {FAILING:.0%}: 502, -1, garbage,"
            f" {timeouts}; slow but in time {FAULTS['slow']:.0%});"
            f" invalid: {reads.problems()}, classic {by_grant['classic']},"
            f" stable {by_grant['stable']}"
            + ("" if timeouts == "hang" else f"; upstream calls per app per lifetime {rate}"),
        )
    ]
    if timeouts == "hang":
        figures.append(
            Figure(
                "chaos soak: upstream calls per app per lifetime (failed calls included)",
                rate,
                "< 2 (no retry storm; fault-free ≈ 1.25)",
                "each failure costs one more call; retries 50-150 ms apart (retry: min 50ms,"
                " max 150ms), request_timeout 0.5 s",
            )
        )
    return figures
