"""Crash safety: kill -9 the daemon at random moments while it rewrites files quickly.

After every kill each app's files are inspected; before every start the JSONs are
read, so that a restart which calls WeChat for a token that was still valid, not
interrupted and not yet due is caught by the emulator's counters.
"""

from __future__ import annotations

import json
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import DaemonProcess, EmulatorProcess, TestApp, wait_for  # noqa: E402

from bench.apps import make_apps  # noqa: E402
from bench.figures import Figure  # noqa: E402

__all__ = ["CrashResult", "crash_safety", "kill_loop"]

LIFETIME, GRACE, WINDOW = 10, 3, 2
CLASSIC_FRACTION = (0.75, 0.85)  # wxtokend.schedule.Policy.classic_fraction
STABLE_AIM = (0.05, 0.25)  # wxtokend.schedule.Policy.stable_aim
_VISIBLE = re.compile(rb"[\x21-\x7e]{1,512}")


@dataclass
class CrashResult:
    kills: int
    apps: int
    elapsed: float = 0.0
    failures: list[str] = field(default_factory=list)  # partial/empty/unparsable/missing, ...
    # Bare file holds a token the JSON named earlier (JSON is written first; a start repairs
    # the bare file only for a token it can still serve, so an expired one is left behind).
    bare_behind: int = 0
    bare_other: int = 0  # bare file holds a token the JSON never named: a torn or foreign write
    temps_seen: int = 0  # temp files found right after a kill
    premature: list[str] = field(default_factory=list)  # restart calls while tokens were valid
    safe_checked: int = 0  # (restart, app) pairs whose token was valid, not interrupted, not due
    interrupted: int = 0  # (restart, app) pairs whose JSON showed an interrupted classic fetch
    calls: int = 0  # token + stable_token calls over the kill loop
    expected: float = 0.0  # what a never-restarted daemon would make in the same wall time
    final_invalid: int = 0  # tokens the emulator rejects after the final clean start
    started: int = 0  # kills that came after the daemon had logged "started"


def _calls(stats: dict[str, dict[str, int]], appid: str) -> int:
    counts = stats.get(appid, {})
    return counts.get("token", 0) + counts.get("stable_token", 0)


def _earliest_refresh(record: dict[str, Any], grant: str) -> float:
    """The earliest moment the daemon may replace this token after adopting it at start."""
    fetched, expires = record["fetched_at"], record["expires_at"]
    if grant == "classic":
        return float(fetched + (expires - fetched) * CLASSIC_FRACTION[0])
    window = min(WINDOW, max(0, expires - fetched) / 2)
    return float(expires - window + window * STABLE_AIM[0])


def _read_json(path: Path) -> dict[str, Any] | None:
    """The parsed JSON, or None if it is missing or unusable (the inspection reports which)."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


def _safe_at_start(out: Path, apps: list[TestApp], result: CrashResult) -> dict[str, float]:
    """Per app whose token on disk is valid and not interrupted: when it may first be refreshed."""
    safe: dict[str, float] = {}
    now = time.time()
    for app in apps:
        record = _read_json(out / f"{app.name}.json")
        try:
            if record is None or not _unexpired(record, now):
                continue
            started = record.get("refresh_started_at")
            if started is not None and started >= record["fetched_at"]:
                result.interrupted += 1
                continue
            safe[app.name] = _earliest_refresh(record, app.grant)
        except (KeyError, TypeError):
            continue  # not reusable: the inspection after the kill already counted it
    return safe


def _inspect(
    out: Path, apps: list[TestApp], named: dict[str, set[str]], result: CrashResult
) -> None:
    """Check every app's two files after a kill; ``named`` gathers every JSON's token."""
    for app in apps:
        where = f"kill {result.kills}: {app.name}"
        try:
            bare: bytes | None = (out / app.name).read_bytes()
        except FileNotFoundError:
            bare = None
        try:
            data: bytes | None = (out / f"{app.name}.json").read_bytes()
        except FileNotFoundError:
            data = None
        if bare is not None and not _VISIBLE.fullmatch(bare):
            result.failures.append(f"{where}: bare file {'empty' if not bare else 'not a token'}")
            continue
        if data is None:
            result.failures.append(f"{where}: JSON missing")
            continue
        token = _json_token(data, app.appid)
        if token is None:
            result.failures.append(f"{where}: JSON partial or unparsable ({len(data)} bytes)")
            continue
        earlier = named.setdefault(app.name, set())
        earlier.add(token)
        if bare is None:
            result.bare_behind += 1  # a first fetch cut off between the two writes
        elif bare.decode() != token:
            if bare.decode() in earlier:
                result.bare_behind += 1
            else:
                result.bare_other += 1


def _json_token(data: bytes, appid: str) -> str | None:
    """The JSON's token if the file is complete and names this appid, else None."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("appid") != appid:
        return None
    token = record.get("access_token")
    if not isinstance(token, str) or not _VISIBLE.fullmatch(token.encode()):
        return None
    if not all(isinstance(record.get(k), int) for k in ("expires_at", "fetched_at")):
        return None
    return token


def _temps(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if ".tmp-" in p.name} if out.exists() else set()


def kill_loop(work: Path, *, kills: int, apps: int, seed: int = 6) -> CrashResult:
    """Start, wait 0.2-1.5 s, kill -9, inspect; ``kills`` times, then one clean start."""
    rng = random.Random(seed)
    group = make_apps(apps, offset=0x60000, name="app", grants=("classic", "stable"))
    names = [a.name for a in group]
    result = CrashResult(kills=0, apps=apps)
    emu = EmulatorProcess(work / "emu", group, lifetime=LIFETIME, grace=GRACE, stable_window=WINDOW)
    daemon = DaemonProcess(work / "d", group, emu.base_url, stable_renew_window=WINDOW)
    out = daemon.output_dir
    named: dict[str, set[str]] = {}
    try:
        daemon.start()
        daemon.wait_for_tokens(names, timeout=60)
        daemon.kill()
        _inspect(out, group, named, result)
        pending = _temps(out)  # temp files a start must remove
        emu.post("/emulator/reset-stats", {})
        began = time.monotonic()
        for _ in range(kills):
            safe = _safe_at_start(out, group, result)
            before = emu.stats()
            log_size = daemon.log_path.stat().st_size
            daemon.start()
            if rng.random() < 0.5:  # half the kills land after the start, whatever the speed
                wait_for(partial(_logged_started, daemon, log_size), timeout=30, what="started")
                time.sleep(rng.uniform(0.0, 1.0))
            else:
                time.sleep(rng.uniform(0.2, 1.5))
            after = emu.stats()
            checked_at = time.time()
            daemon.kill()  # SIGKILL
            result.kills += 1
            reached_start = _logged_started(daemon, log_size)
            result.started += reached_start
            for app in group:
                bound = safe.get(app.name)
                if not reached_start or bound is None or bound <= checked_at:
                    continue  # not yet running, or due before the kill: nothing to judge
                result.safe_checked += 1
                made = _calls(after, app.appid) - _calls(before, app.appid)
                if made:
                    result.premature.append(f"kill {result.kills}: {app.name} ({made} calls)")
            _inspect(out, group, named, result)
            now_temps = _temps(out)
            result.temps_seen += len(now_temps - pending)
            if reached_start:  # the start's cleanup ran: nothing from before may survive it
                result.failures += [
                    f"kill {result.kills}: {n} survived a start" for n in pending & now_temps
                ]
                pending = now_temps
            else:
                pending |= now_temps
        result.elapsed = time.monotonic() - began
        stats = emu.stats()
        result.calls = sum(_calls(stats, a.appid) for a in group)
        for app in group:
            interval = (
                LIFETIME * sum(CLASSIC_FRACTION) / 2
                if app.grant == "classic"
                else LIFETIME - WINDOW + WINDOW * sum(STABLE_AIM) / 2
            )
            result.expected += result.elapsed / interval
        _final_start(daemon, emu, group, pending, result)
    finally:
        daemon.kill()
        emu.close()
    return result


def _logged_started(daemon: DaemonProcess, log_size: int) -> bool:
    """Whether the daemon logged "started" after the log was ``log_size`` bytes long."""
    with daemon.log_path.open("rb") as log:
        log.seek(log_size)
        return b'"started"' in log.read()


def _serving(record: dict[str, Any] | None, bare: str | None) -> bool:
    """The bare file holds the JSON's token and that token has not expired."""
    return record is not None and record.get("access_token") == bare and _unexpired(record)


def _unexpired(record: dict[str, Any], now: float | None = None) -> bool:
    """The JSON's token is not marked expired and its expiry is still ahead."""
    expires = record.get("expires_at")
    if record.get("expired") or not isinstance(expires, int):
        return False
    return expires > (time.time() if now is None else now)


def _final_start(
    daemon: DaemonProcess,
    emu: EmulatorProcess,
    group: list[TestApp],
    pending: set[str],
    result: CrashResult,
) -> None:
    """One clean start: temp files are gone and every bare file matches its JSON again."""
    out = daemon.output_dir
    log_size = daemon.log_path.stat().st_size
    daemon.start()

    def settled() -> bool:
        # "started" comes before the first fetch, so tokens that expired during the loop
        # (a slow machine may never reach a refresh in it) are waited for, not judged.
        if not _logged_started(daemon, log_size) or _temps(out):
            return False
        return all(_serving(daemon.record(a.name), daemon.token(a.name)) for a in group)

    try:
        wait_for(settled, timeout=30, what="a clean start to repair the files")
    except AssertionError:
        left = sorted(_temps(out))
        stale = [a.name for a in group if not _serving(daemon.record(a.name), daemon.token(a.name))]
        result.failures.append(f"final start: temp files {left}, not serving a valid token {stale}")
    result.final_invalid = sum(1 for a in group if emu.check(daemon.token(a.name) or "") != 0)
    daemon.stop(signal.SIGTERM)


def crash_safety(work: Path, *, kills: int = 200, apps: int = 20, seed: int = 6) -> list[Figure]:
    """Figure 6: files after ``kills`` SIGKILLs, and upstream calls caused by the restarts."""
    r = kill_loop(work, kills=kills, apps=apps, seed=seed)
    classic = (apps + 1) // 2
    shown = "; ".join(r.failures[:3]) + (" …" if len(r.failures) > 3 else "")
    calls_shown = "; ".join(r.premature[:3]) + (" …" if len(r.premature) > 3 else "")
    return [
        Figure(
            f"crash safety: partial, empty or unparsable files after {r.kills} x kill -9",
            str(len(r.failures)),
            "0",
            f"{apps} apps ({classic} classic, {apps - classic} stable), lifetime {LIFETIME} s,"
            f" killed 0.2-1.5 s after each start; bare file behind its JSON after a kill:"
            f" {r.bare_behind} (JSON is written first; the next start rewrites it while the"
            f" token is valid); bare file holding a token its JSON never named: {r.bare_other};"
            f" temp files left by kills: {r.temps_seen}, all removed by the next start;"
            f" tokens rejected after a final clean start: {r.final_invalid}"
            + (f"; {shown}" if shown else ""),
        ),
        Figure(
            "crash safety: upstream calls at restarts while tokens were valid",
            str(len(r.premature)),
            "0",
            f"{r.started} of {r.kills} kills came after the daemon had started; over those,"
            f" {r.safe_checked} (restart, app) pairs with a valid, not interrupted, not yet due"
            f" token checked; {r.interrupted} pairs found an interrupted classic"
            f" fetch and refetched (correct); all token calls {r.calls} over {r.elapsed:.0f} s vs"
            f" {r.expected:.0f} for a never-restarted daemon ({r.calls - r.expected:+.0f})"
            + (f"; {calls_shown}" if calls_shown else ""),
        ),
    ]
