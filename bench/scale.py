"""Figure 2: many apps in one daemon — first tokens, peak memory, idle CPU.

Also the plain start-up figure: 1,000 apps with the default settings, from process
start until every app's token file exists.

For N apps (half classic, half stable, a lifetime of an hour so the idle window
has no refresh in it): the time from process start until every app has its
token file, the daemon's peak RSS (VmHWM), and the CPU it burns while idle,
as a share of one core — timers only, so it should be close to nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import DaemonProcess, EmulatorProcess, TestApp, wait_for

from bench.apps import make_apps
from bench.figures import Figure

__all__ = ["first_tokens", "scale"]


def _token_files(out: Path) -> int:
    # A listdir, not a glob: the poll must stay cheap beside a daemon writing 20,000 files.
    try:
        return sum(1 for name in os.listdir(out) if name.endswith(".json"))
    except FileNotFoundError:
        return 0


class _ReadyInLog:
    """True once the daemon has logged "ready"; each poll reads only what the log gained."""

    MARK = b'"event": "ready"'

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.tail = path, 0, b""

    def __call__(self) -> bool:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except FileNotFoundError:
            return False
        text = self.tail + chunk
        self.offset += len(chunk)
        self.tail = text[-len(self.MARK) :]
        return self.MARK in text


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class _Start:
    seconds: float  # process start until the daemon logged ready (every file written)
    daemon_cpu: float  # its CPU seconds by then, writer threads included
    emulator_cpu: float
    rss_mb: float  # peak
    idle_share: float | None = None  # of one core, when measured


SHM = "/dev/shm"  # noqa: S108 - only ever the parent of a mkdtemp() directory


def _tmpfs() -> Path | None:
    """The shared-memory mount if it is a tmpfs: token files live on one in production
    (/run/wxtoken under systemd, a memory emptyDir in Kubernetes), unlike the benchmark's
    work directory."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == SHM and fields[2] == "tmpfs":
            return Path(SHM)
    return None


def _start(
    work: Path, apps: list[TestApp], *, idle: float | None, output: Path | None = None
) -> _Start:
    """One cold start of a daemon with ``apps``; then, if ``idle``, its idle CPU."""
    emu = EmulatorProcess(work / "emu", apps, lifetime=3600)
    where = {"output_dir": str(output)} if output is not None else {}
    daemon = DaemonProcess(work / "d", apps, emu.base_url, **where)
    try:
        started = time.monotonic()
        daemon.start()
        # The daemon logs "ready" once every app's files are written; following its log
        # costs far less than listing 20,000 files every poll, on the same two cores.
        wait_for(_ReadyInLog(daemon.log_path), timeout=600, what="ready", step=0.1)
        result = _Start(
            seconds=time.monotonic() - started,
            daemon_cpu=_cpu_seconds(daemon.pid),
            emulator_cpu=_cpu_seconds(emu.process.pid),
            rss_mb=0.0,
        )
        files = _token_files(daemon.output_dir)
        assert files == len(apps), f"ready, but {files} of {len(apps)} token files"
        if idle is not None:
            time.sleep(2)  # let the last writes and logs settle
            cpu_before, t_before = _cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(idle)
            used = _cpu_seconds(daemon.pid) - cpu_before
            result.idle_share = used / (time.monotonic() - t_before)
        result.rss_mb = _peak_rss_mb(daemon.pid)
    finally:
        daemon.kill()
        emu.close()
    return result


def scale(
    work: Path, *, n: int, idle: float, starts: int = 1, on_disk: bool = False
) -> list[Figure]:
    """Figure 2 for n apps, token files on a tmpfs as in production. The start is timed
    ``starts`` times (median reported), since a shared machine's speed drifts by tens of
    percent between runs; ``on_disk``: once more with the files on the work directory's
    disk, where every write is fsynced for real."""
    apps = make_apps(n, offset=0x50000, name="s")
    tmpfs = _tmpfs()
    runs = []
    for i in range(starts):
        output = Path(tempfile.mkdtemp(prefix="wxtokend-bench-", dir=tmpfs)) if tmpfs else None
        try:
            last = i == starts - 1
            runs.append(
                _start(work / f"start{i}", apps, idle=idle if last else None, output=output)
            )
        finally:
            if output is not None:
                shutil.rmtree(output, ignore_errors=True)
    disk = _start(work / "disk", apps, idle=None) if on_disk else None
    middle = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    all_times = ", ".join(f"{r.seconds:.1f}" for r in runs)
    idle_share = runs[-1].idle_share
    assert idle_share is not None, "the last start measures idle CPU"
    how = f"median of {starts} cold starts ({all_times} s)" if starts > 1 else "one cold start"
    how += ", token files on tmpfs" if tmpfs else ", token files on disk (no tmpfs found)"
    if disk is not None:
        how += f" (on this disk, fsync and all: {disk.seconds:.1f} s, {disk.daemon_cpu:.1f} CPU s)"
    return [
        Figure(
            f"{n:,} apps: time until every app has its first token",
            f"{middle.seconds:.1f} s",
            "≤ 15 s for 10,000" if n >= 10000 else "seconds",
            f"from process start, default settings (max_concurrency 16); {how}; by then the"
            f" daemon had used {middle.daemon_cpu:.1f} CPU s (writer threads included), the"
            f" emulator on the same cores {middle.emulator_cpu:.1f}",
        ),
        Figure(
            f"{n:,} apps: daemon peak RSS",
            f"{max(r.rss_mb for r in runs):.0f} MB",
            "≤ 200 MB for 10,000" if n >= 10000 else "(≤ 200 MB for 10,000)",
            "VmHWM, highest of the starts",
        ),
        Figure(
            f"{n:,} apps: idle CPU",
            f"{idle_share * 100:.2f} % of one core",
            "≤ 1 %",
            f"over {idle:.0f} s with no refresh due (timers only, no polling)",
        ),
    ]


def first_tokens(work: Path, *, n: int) -> list[Figure]:
    """Time from process start until every one of n apps has its token file (defaults)."""
    apps = make_apps(n, offset=0x50000, name="s")
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
        wait_for(lambda: _token_files(out) == n, timeout=300, what=f"{n} files", step=0.05)
        total = time.monotonic() - started
    finally:
        daemon.kill()
        emu.close()
    return [
        Figure(
            f"time until {n:,} apps have their first token",
            f"{total:.2f} s",
            "seconds",
            f"default settings (max_concurrency 16); of which {booted:.2f} s interpreter"
            " start-up and config load",
        )
    ]
