"""The ``wxtokend`` command: run, check, get, schema, emulate, demo.

Exit codes: 0 fine, 1 no valid token (or an upstream failure), 2 a bad config
or command line — always with a message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wxtokend import __version__, control, emulator, logs
from wxtokend.admin import SigningError, signed_fields, signing_ticket
from wxtokend.check_platform import platform_lines
from wxtokend.config import Config, json_schema, load_config
from wxtokend.errors import (
    ConfigError,
    FetchError,
    OutputDirError,
    StateFileError,
    TransientError,
    WxTokendError,
)
from wxtokend.get_platform import get_platform
from wxtokend.redact import fingerprint
from wxtokend.serve import run_daemon
from wxtokend.store import Record, TokenStore, check_directory
from wxtokend.wechat import Token, WeChatClient

__all__ = ["main"]

DEFAULT_CONFIG = "/etc/wxtokend/config.yaml"
_LOG_LEVEL_HELP = "debug, info (default), warning or error; before or after the command"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"wxtokend: invalid config:\n{exc}", file=sys.stderr)
        return 2
    except WxTokendError as exc:
        print(f"wxtokend: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wxtokend", description="Keeps WeChat access_tokens fresh in files anyone can read."
    )
    parser.add_argument("--version", action="version", version=f"wxtokend {__version__}")
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info", help=_LOG_LEVEL_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, handler: object) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    def log_level_option(p: argparse.ArgumentParser) -> None:
        # Also after the command; SUPPRESS lets one given before it show through.
        p.add_argument(
            "--log-level", choices=logs.LEVELS, default=argparse.SUPPRESS, help=_LOG_LEVEL_HELP
        )

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=Path(os.environ.get("WXTOKEND_CONFIG", DEFAULT_CONFIG)),
            help=f"config file (default: $WXTOKEND_CONFIG or {DEFAULT_CONFIG})",
        )
        log_level_option(p)

    run = command("run", "Run the daemon in the foreground.", _run)
    config_option(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="make sure every app has a valid token on disk, then exit (init containers, cron)",
    )

    check = command("check", "Validate the config and summarise each app.", _check)
    config_option(check)
    check.add_argument(
        "--online", action="store_true", help="also ask WeChat once per app and report its answer"
    )
    check.add_argument(
        "--force",
        action="store_true",
        help="with --online, also fetch classic-grant apps (this invalidates their running token)",
    )

    get = command("get", "Print an app's current token.", _get)
    get.add_argument(
        "name", help="the app's name (or appid), or <platform>/<authorizer appid|component>"
    )
    config_option(get)

    sign = command("sign", "Print wx.config fields (JS-SDK signature) for a page.", _sign)
    sign.add_argument("name", help="the app's name (or appid)")
    sign.add_argument("--url", required=True, help="the page's full URL (its #fragment is dropped)")
    sign.add_argument(
        "--agent",
        action="store_true",
        help="WeCom: sign wx.agentConfig with the agent_config ticket",
    )
    config_option(sign)

    reload = command(
        "reload",
        "Reload the running daemon's config and wait until it is done.",
        control.reload_daemon,
    )
    config_option(reload)
    control.add_arguments(reload)

    health = command(
        "health", "Exit 0 if the running daemon is healthy (HEALTHCHECK).", control.check_health
    )
    config_option(health)
    control.add_admin_arguments(health)
    health.add_argument(
        "--ready", action="store_true", help="ask /readyz (every token valid) instead of /healthz"
    )

    command("schema", "Print the config file's JSON Schema.", _schema)

    emulate = command("emulate", "Run the local WeChat emulator.", emulator.run_from_args)
    emulator.add_arguments(emulate)

    demo = command("demo", "Run the emulator and the daemon on a demo config.", _demo)
    demo.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=Path("wxtoken-demo"),
        help="where the demo's config, secrets and tokens go (default: ./wxtoken-demo)",
    )
    log_level_option(demo)
    return parser


def _load(args: argparse.Namespace, *, log_to_stdout: bool = False, secrets: bool = True) -> Config:
    """Set up logging (stderr unless the command's output *is* its log), then load."""
    logs.configure(level=args.log_level, stream=sys.stdout if log_to_stdout else sys.stderr)
    config = load_config(args.config, secrets=secrets)
    for warning in config.warnings:
        logs.get_logger().warning("config", problem=warning)
    return config


def _run(args: argparse.Namespace) -> int:
    config = _load(args, log_to_stdout=True)
    _check_output_dir(config)  # exit 2 with the config's line, before anything starts
    return asyncio.run(run_daemon(config, once=args.once))


def _check_output_dir(config: Config) -> list[str]:
    """Refuse (exit 2) an output_dir the daemon could not use or others could tamper with.

    Only for the commands that write token files: ``get`` and ``sign`` run as
    consumers, which merely read them.
    """
    try:
        return check_directory(config.output_dir)
    except OutputDirError as exc:
        raise config.output_dir_error(exc) from None


def _schema(_: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
    return 0


def _get(args: argparse.Namespace) -> int:
    config = _load(args, secrets=False)  # consumers run this: no secrets needed
    if "/" in args.name:
        return get_platform(config, args.name, _token_problem)
    app = config.app(args.name)
    if app is None:
        names = ", ".join(a.name for a in config.apps)
        print(
            f"wxtokend: no app named {args.name!r} in {config.path} (apps: {names})",
            file=sys.stderr,
        )
        return 2
    store = TokenStore(directory=config.output_dir, file_mode=config.file_mode)
    try:
        record = store.load(app.name)
    except StateFileError as exc:
        print(f"wxtokend: {store.paths(app.name)[1]} is unusable: {exc}", file=sys.stderr)
        return 1
    problem = _token_problem(record, app.appid, time.time())
    if record is None or problem:
        print(
            f"wxtokend: {app.name}: {problem} in {config.output_dir} — is the daemon running"
            " (systemctl status wxtokend)? Its log says why the refresh fails.",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(record.access_token + ("\n" if sys.stdout.isatty() else ""))
    return 0


def _fail(message: str) -> None:
    print(f"wxtokend: {message}", file=sys.stderr)


def _sign(args: argparse.Namespace) -> int:
    config = _load(args, secrets=False)
    app = config.app(args.name)
    if app is None:
        print(f"wxtokend: no app named {args.name!r} in {config.path}", file=sys.stderr)
        return 2
    try:
        kind = signing_ticket(app, agent=args.agent, flag="--agent")
    except SigningError as exc:
        print(f"wxtokend: {exc}", file=sys.stderr)
        return 2
    store = TokenStore(directory=config.output_dir, file_mode=config.file_mode)
    try:
        record = store.load(app.name, kind)
    except StateFileError as exc:
        print(f"wxtokend: the {kind} ticket file is unusable: {exc}", file=sys.stderr)
        return 1
    now = time.time()
    problem = _token_problem(record, app.appid, now)
    if record is None or problem:
        print(
            f"wxtokend: {app.name} {kind} ticket: {problem} — is the daemon running?",
            file=sys.stderr,
        )
        return 1
    try:
        fields = signed_fields(app, record.access_token, args.url, int(now), args.agent)
    except SigningError as exc:
        print(f"wxtokend: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(fields, ensure_ascii=False))
    return 0


def _token_problem(record: Record | None, appid: str, now: float) -> str:
    if record is None:
        return "no token file yet"
    if record.appid != appid:
        return f"the token file holds appid {record.appid}'s token, not {appid}'s"
    if record.expired or now >= record.expires_at:
        return f"token expired {int(now - record.expires_at)} s ago"
    return ""


def _check(args: argparse.Namespace) -> int:
    config = _load(args)
    for warning in _check_output_dir(config):  # what run would refuse, check refuses too
        print(f"WARNING: output_dir: {warning}")
    platforms = f", {len(config.platforms)} platform(s)" if config.platforms else ""
    print(
        f"{config.path}: config valid — {len(config.apps)} app(s){platforms},"
        f" token files in {config.output_dir}"
    )
    store = TokenStore(directory=config.output_dir, file_mode=config.file_mode, gid=config.file_gid)
    now = time.time()
    for app in config.apps:
        try:
            record = store.load(app.name)
            problem = _token_problem(record, app.appid, now)
            on_disk = problem or (
                f"token {fingerprint(record.access_token)} valid for"
                f" {int(record.expires_at - now)} s"
                if record
                else ""
            )
        except StateFileError as exc:
            on_disk = f"state file unusable: {exc}"
        print(f"  {app.name}: appid {app.appid}, {app.grant} grant, {app.secret_source}; {on_disk}")
    for line in platform_lines(config, _token_problem, now):
        print(line)
    if not args.online:
        return 0
    return asyncio.run(_check_online(config, store, force=args.force))


async def _check_online(config: Config, store: TokenStore, *, force: bool) -> int:
    client = WeChatClient(
        api_base=config.api_base, timeout=config.request_timeout, proxy=config.proxy
    )
    failed = checked = 0
    try:
        for app in config.apps:
            if app.grant == "classic" and config.fleet is not None:
                print(
                    f"  {app.name}: skipped — in a fleet a lone classic fetch would invalidate the"
                    " token every instance serves; the fleet's own refresh is the check"
                )
                continue
            if app.grant == "classic" and not force:
                print(
                    f"  {app.name}: skipped — a classic fetch invalidates the token consumers hold;"
                    " add --force to fetch anyway"
                )
                continue
            checked += 1
            try:
                token = await client.fetch_token(app)
            except FetchError as exc:
                failed += 1
                print(f"  {app.name}: FAILED — {exc}{_fix_line(exc)}")
                continue
            print(
                f"  {app.name}: OK — {'WeCom' if app.kind == 'wecom' else 'WeChat'} issued token"
                f" {fingerprint(token.access_token)},"
                f" expires_in {token.expires_in}"
            )
            if app.grant == "classic":
                _keep_forced_token(store, app.appid, app.name, app.api_base, token)
    finally:
        await client.aclose()
    for platform in config.platforms:
        print(
            f"  {platform.name}/: not asked online — its upper token needs the pushed ticket,"
            " and a fetch here could invalidate the daemon's; /readyz and the daemon's log"
            " give WeChat's answers with their fixes"
        )
    print(_online_summary(checked, failed, skipped=len(config.apps) - checked))
    return 1 if failed else 0


def _fix_line(exc: FetchError) -> str:
    """What the operator should do; a one-shot check retries nothing, so no retry plans."""
    fix = exc.fix
    if not fix and isinstance(exc, TransientError):
        fix = "a passing failure on WeChat's side: run the check again in a moment"
    return f"\n    fix: {fix}" if fix else ""


def _online_summary(checked: int, failed: int, *, skipped: int) -> str:
    aside = f" ({skipped} skipped)" if skipped else ""
    if failed:
        return f"online: {failed} of {checked} apps FAILED{aside}"
    if checked:
        return f"online: all {checked} OK{aside}"
    return f"online: no app checked{aside}"


def _keep_forced_token(
    store: TokenStore, appid: str, name: str, api_base: str, token: Token
) -> None:
    """A forced classic fetch killed the old token: hand the new one to consumers."""
    record = Record.of(token, appid=appid, name=name, grant="classic", api_base=api_base)
    try:
        store.ensure_directory()
        store.save(record)
        print(f"    the new token replaced the old one in {store.directory}")
    except OSError as exc:
        print(
            f"    WARNING: could not write {store.directory} ({exc.strerror}): consumers hold a"
            " token that stops working in about 5 minutes; restart wxtokend now"
        )


def _demo(args: argparse.Namespace) -> int:
    from wxtokend.demo import DemoDirectoryError, run_demo

    logs.configure(level=args.log_level, stream=sys.stdout)
    try:
        return run_demo(args.directory)
    except DemoDirectoryError as exc:
        _fail(str(exc))
        return 2
