"""Commands that ask the running daemon through its admin API: ``reload`` and ``health``.

``wxtokend reload``: reload the running daemon and wait until it is done.

``systemctl reload`` (ExecReload=) runs this: ``kill -HUP`` returned before the
reload happened, so ``systemctl reload wxtokend && ...`` raced it. This asks the
admin API (``POST /v1/reload``), which answers once the reload is applied or
refused; exit 0 for applied or unchanged, 1 for refused (the problems go to stderr,
and systemd marks the reload failed). With the admin API off, ``--pid`` falls back to
SIGHUP, which cannot be waited for.

``wxtokend health [--ready]``: exit 0 if ``/healthz`` (or ``/readyz``) answers 200;
the container image's HEALTHCHECK (the slim base has no curl).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import httpx
import yaml

from wxtokend.asgi import Listen, parse_listen
from wxtokend.config import load_config
from wxtokend.errors import ConfigError

__all__ = ["add_admin_arguments", "add_arguments", "check_health", "reload_daemon"]

_DEFAULT_ADMIN = "127.0.0.1:9735"


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin",
        help="the daemon's admin address, host:port, http://host:port or unix:/path"
        " (default: admin.listen of the config file)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_admin_arguments(parser)
    parser.add_argument(
        "--pid",
        type=int,
        help="the daemon's PID (systemd: $MAINPID): SIGHUP it if the admin API is off",
    )
    parser.add_argument(
        "--timeout", type=float, default=90.0, help="seconds to wait for the reload (90)"
    )


def check_health(args: argparse.Namespace) -> int:
    listen = _listen(args)
    path = "/readyz" if args.ready else "/healthz"
    if listen is None:
        print("wxtokend: health: admin.listen is off in the config", file=sys.stderr)
        return 2
    try:
        with _client(listen, 5.0) as client:
            reply = client.get(path)
    except httpx.TransportError as exc:
        print(f"wxtokend: health: {listen} did not answer ({exc})", file=sys.stderr)
        return 1
    print(f"wxtokend: {path} {reply.status_code} {reply.text.strip()[:300]}")
    return 0 if reply.status_code == 200 else 1


def _listen(args: argparse.Namespace) -> Listen | None:
    given = args.admin.removeprefix("http://") if args.admin else None
    return parse_listen(given) if given else _admin_listen(args.config)


def reload_daemon(args: argparse.Namespace) -> int:
    listen = _listen(args)
    if listen is None:
        return _signal_only(args.pid, "admin.listen is off in the config")
    try:
        with _client(listen, args.timeout) as client:
            reply = client.post("/v1/reload")
    except httpx.TransportError as exc:
        if args.pid:
            return _signal_only(args.pid, f"the admin API at {listen} did not answer ({exc})")
        print(
            f"wxtokend: reload: the admin API at {listen} did not answer ({exc}) — is the"
            " daemon running (systemctl status wxtokend)? Or give --pid to send SIGHUP.",
            file=sys.stderr,
        )
        return 1
    return _report(reply)


def _report(reply: httpx.Response) -> int:
    try:
        answer = reply.json()
        result = answer["result"]
    except (ValueError, KeyError, TypeError):
        print(f"wxtokend: reload: unexpected answer (HTTP {reply.status_code})", file=sys.stderr)
        return 1
    if result == "failed":
        print("wxtokend: reload failed, the daemon runs on the old config:", file=sys.stderr)
        for problem in answer.get("problems", []):
            print(f"  {problem}", file=sys.stderr)
        return 1
    changes = {k: v for k, v in answer.get("changes", {}).items() if v}
    done = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in sorted(changes.items()))
    print(f"wxtokend: reload {result}" + (f" ({done})" if done else ""))
    return 0


def _signal_only(pid: int | None, why: str) -> int:
    if pid is None:
        print(f"wxtokend: reload: {why}; give --pid to send SIGHUP instead", file=sys.stderr)
        return 2
    os.kill(pid, signal.SIGHUP)
    print(f"wxtokend: {why}: sent SIGHUP to {pid}; not waiting (no admin API to ask)")
    return 0


def _client(listen: Listen, timeout: float) -> httpx.Client:
    if listen.path is not None:
        transport = httpx.HTTPTransport(uds=str(listen.path))
        return httpx.Client(transport=transport, base_url="http://wxtokend", timeout=timeout)
    host = f"[{listen.host}]" if ":" in listen.host else listen.host
    if host in ("0.0.0.0", "[::]"):  # listening everywhere: ask it on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return httpx.Client(base_url=f"http://{host}:{listen.port}", timeout=timeout, trust_env=False)


def _admin_listen(config: Path) -> Listen | None:
    """admin.listen of ``config``, even when the file is broken (the reload will say how)."""
    try:
        return load_config(config, secrets=False).admin.listen
    except ConfigError:
        pass
    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
        admin = raw.get("admin", {}) if isinstance(raw, dict) else {}
        listen = admin.get("listen", _DEFAULT_ADMIN) if isinstance(admin, dict) else None
        return parse_listen(listen) if isinstance(listen, str) else None
    except (OSError, ValueError, yaml.YAMLError):
        return parse_listen(_DEFAULT_ADMIN)
