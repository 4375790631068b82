"""``wxtokend emulate``: its flags (on top of the YAML file), the port file, the run loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wxtokend.emulator.config import (
    SCALARS,
    EmulatedApp,
    EmulatorConfig,
    EmulatorConfigError,
    load_emulator_config,
)
from wxtokend.emulator.routes import Emulator

__all__ = ["add_arguments", "config_from_args", "run_from_args"]


def _app_flag(text: str) -> EmulatedApp:
    appid, _, secret = text.partition(":")
    if not appid or not secret:
        raise argparse.ArgumentTypeError(f"expected APPID:SECRET, got {text!r}")
    return EmulatedApp(appid=appid, secret=secret)


def _wecom_flag(text: str) -> EmulatedApp:
    corpid, _, secret = text.partition(":")
    if not corpid or not secret:
        raise argparse.ArgumentTypeError(f"expected CORPID:SECRET, got {text!r}")
    return EmulatedApp(kind="wecom", corpid=corpid, secret=secret)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``wxtokend emulate``; all default to None so the YAML file shows through."""
    add = parser.add_argument
    add("--config", type=Path, metavar="FILE", help="YAML file with the emulator settings")
    add("--host", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, help="port to listen on (default 0: any free port)")
    add("--lifetime", type=int, help="expires_in of a fresh token, seconds (default 7200)")
    add("--ticket-lifetime", type=int, help="expires_in of a ticket (default: --lifetime)")
    add("--grace", type=float, help="classic: life left to the previous token (default 300)")
    add("--stable-window", type=float, help="stable: renew only inside this window (default 300)")
    add("--day-length", type=float, help="length of a quota day, seconds (default 86400)")
    add("--daily-quota", type=int, help="classic token calls per app per day (default 2000)")
    add("--minute-quota", type=int, help="token calls per app per minute, 0 = off (default 0)")
    add("--seed", type=int, help="seed of the fault-injection random generator")
    add("--app", type=_app_flag, action="append", metavar="APPID:SECRET", help="repeatable")
    add(
        "--wecom",
        type=_wecom_flag,
        action="append",
        metavar="CORPID:SECRET",
        help="a WeCom application; repeatable, also with the same corpid",
    )
    add("--ip-whitelist", action="append", metavar="IP", help="allowed client IP; repeatable")
    add("--port-file", type=Path, metavar="FILE", help="write the bound port here when listening")


def _merge_apps(apps: tuple[EmulatedApp, ...], flags: list[EmulatedApp]) -> tuple[EmulatedApp, ...]:
    """``--app`` adds an app or replaces its secret (keeping its faults); ``--wecom`` adds a
    WeCom application unless its corp already has one with that secret."""
    merged = {(app.kind, app.key, app.secret if app.kind == "wecom" else ""): app for app in apps}
    for flag in flags:
        if flag.kind == "wecom":
            merged.setdefault(("wecom", flag.corpid, flag.secret), flag)
        else:
            key = ("official", flag.appid, "")
            merged[key] = dataclasses.replace(merged.get(key, flag), secret=flag.secret)
    return tuple(merged.values())


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The YAML file (if any) with the flags on top; ``--app`` adds apps or replaces secrets,
    ``--wecom`` adds WeCom applications."""
    config = load_emulator_config(args.config) if args.config else EmulatorConfig()
    # A flag left at None was not given; scalars without a flag are simply absent from args.
    flags = {name: getattr(args, name, None) for name in SCALARS}
    changes: dict[str, Any] = {name: value for name, value in flags.items() if value is not None}
    if args.ip_whitelist:
        changes["ip_whitelist"] = tuple(args.ip_whitelist)
    if args.app or args.wecom:
        changes["apps"] = _merge_apps(config.apps, [*(args.app or ()), *(args.wecom or ())])
    return dataclasses.replace(config, **changes)


def _write_port_file(path: Path, port: int) -> None:
    # Write-then-rename: a harness polling the file never reads half a number.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n", encoding="utf-8")
    os.replace(temporary, path)


async def _serve_until_signal(emulator: Emulator, ready: Callable[[str], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(emulator.serve(ready=ready))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        serving.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    with contextlib.suppress(asyncio.CancelledError):
        await serving  # re-raises a startup failure such as a port already in use


class _PortFileError(Exception):
    """--port-file cannot be written: a bad command line, not a listen failure."""


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``wxtokend emulate`` until SIGINT or SIGTERM; 0 on a clean stop, 2 on bad config."""
    try:
        config = config_from_args(args)
    except EmulatorConfigError as exc:
        print(f"wxtokend emulate: {exc}", file=sys.stderr)
        return 2
    port_file: Path | None = args.port_file

    def ready(url: str) -> None:
        if port_file is not None:
            try:
                _write_port_file(port_file, urlsplit(url).port or 0)
            except OSError as exc:
                raise _PortFileError(f"--port-file {port_file}: {exc.strerror or exc}") from None
        print(f"wxtokend emulator listening on {url}", flush=True)

    try:
        asyncio.run(_serve_until_signal(Emulator(config), ready))
    except _PortFileError as exc:
        print(f"wxtokend emulate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"wxtokend emulate: cannot listen on {config.host}:{config.port}: {reason}",
            file=sys.stderr,
        )
        return 1
    return 0
