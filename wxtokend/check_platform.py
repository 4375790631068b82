"""``wxtokend check``'s lines for a third-party platform: what is on disk, and what to do.

Read only, and never a secret: the pushed ticket's age (not the ticket), how many
refresh tokens or permanent codes ``state_dir`` holds (not the tokens), the upper
token's fingerprint and how many accounts' token files are valid. What a
platform cannot have yet at its first start (no ticket, no accounts) is said
with what brings it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from wxtokend.config import Config, PlatformConfig
from wxtokend.errors import StateFileError
from wxtokend.platforms.platform import PROVIDER_FILE
from wxtokend.platforms.products import OPEN_PLATFORM, WECOM_SUITE, Product
from wxtokend.platforms.vault import Vault
from wxtokend.redact import fingerprint
from wxtokend.store import Record, TokenStore

__all__ = ["platform_lines"]

Problem = Callable[[Record | None, str, float], str]
_SHOWN = 3  # expected accounts named in a line, at most


def platform_lines(config: Config, problem_of: Problem, now: float | None = None) -> list[str]:
    """Every platform's summary, indented under ``check``'s app lines."""
    at = time.time() if now is None else now
    lines: list[str] = []
    for platform in config.platforms:
        lines += _platform(config, platform, problem_of, at)
    return lines


def _platform(
    config: Config, platform: PlatformConfig, problem_of: Problem, now: float
) -> list[str]:
    wecom = platform.product == "wecom"
    product: Product = WECOM_SUITE if wecom else OPEN_PLATFORM
    what = "WeCom suite" if wecom else "Open Platform component"
    store = TokenStore(directory=config.output_dir / platform.name, file_mode=config.file_mode)
    vault = Vault(Path(config.state_dir) / platform.name)
    lines = [
        f"  {platform.name}/: {what} {platform.component_appid}, {platform.secret_source};"
        f" files in {store.directory}",
        _ticket_line(config, vault, product, now),
        _file_line(store, product.upper_file, platform.component_appid, problem_of, now),
    ]
    provider = platform.provider_app()
    if provider is not None:
        lines.append(_file_line(store, PROVIDER_FILE, provider.appid, problem_of, now))
    lines += _account_lines(platform, vault, store, now)
    return lines


def _ticket_line(config: Config, vault: Vault, product: Product, now: float) -> str:
    name = product.ticket_name
    try:
        ticket = vault.load_ticket()
    except StateFileError as exc:
        return f"    {name}: unreadable ({exc}); run check as the user wxtokend runs as"
    where = "callback.listen" if config.callback_listen is not None else "the admin forward"
    if ticket is None:
        return (
            f"    {name}: none received yet — WeChat pushes one every 10 minutes to the"
            f" platform's callback URL, which must reach {where}"
        )
    age = now - ticket.created_at
    if age > product.ticket_lifetime:
        return (
            f"    {name}: the newest is {_span(age)} old, past its {_span(product.ticket_lifetime)}"
            f" — WeChat's pushes no longer arrive: check that the callback URL reaches {where}"
        )
    return f"    {name}: received {_span(age)} ago (valid about {_span(product.ticket_lifetime)})"


def _file_line(store: TokenStore, file: str, appid: str, problem_of: Problem, now: float) -> str:
    try:
        record = store.load(file)
    except (StateFileError, ValueError) as exc:
        return f"    {file}: its file is unusable: {exc}"
    problem = problem_of(record, appid, now)
    if record is None or problem:
        return f"    {file}: {problem}"
    left = int(record.expires_at - now)
    return f"    {file}: token {fingerprint(record.access_token)} valid for {left} s"


def _account_lines(
    platform: PlatformConfig, vault: Vault, store: TokenStore, now: float
) -> list[str]:
    secret = "permanent codes" if platform.product == "wecom" else "refresh tokens"
    try:
        grants, refused = vault.grants()
    except StateFileError as exc:
        return [f"    accounts: {exc}; run check as the user wxtokend runs as"]
    held = {g.appid for g in grants}
    valid = sum(1 for r in _records(store, now) if r.appid in held and now < r.expires_at)
    line = (
        f"    accounts: {len(held)} with {secret} in {vault.directory},"
        f" {valid} with a valid token file"
    )
    if refused:
        line += f"; {len(refused)} journal line(s) refused (the daemon logs each)"
    lines = [line]
    waiting = [a for a in platform.authorizers if a not in held]
    if waiting:
        shown = ", ".join(waiting[:_SHOWN]) + (" …" if len(waiting) > _SHOWN else "")
        lines.append(
            f"    {len(waiting)} listed in authorizers: without a grant yet ({shown}) — each"
            " must authorize the platform (or is still to be read from WeChat's list)"
        )
    return lines


def _records(store: TokenStore, now: float) -> list[Record]:
    try:
        return store.records(now=now)
    except FileNotFoundError:
        return []  # no start yet
    except OSError:
        return []  # unreadable: the upper token's line already says so


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 2 * 3600:
        return f"{int(seconds // 60)} min"
    return f"{seconds / 3600:.0f} h"
