"""``wxtokend get <platform>/<account>``: a third-party account's token from its file.

``<account>`` is an authorizer's appid (Open Platform) or a corpid (WeCom suite),
or ``component`` / ``suite`` for the platform's own token.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from wxtokend.config import Config
from wxtokend.errors import StateFileError
from wxtokend.platforms.products import OPEN_PLATFORM, WECOM_SUITE
from wxtokend.store import Record, TokenStore

__all__ = ["get_platform"]

Problem = Callable[[Record | None, str, float], str]


def get_platform(config: Config, key: str, problem_of: Problem) -> int:
    """Print the token (exit 0), or say why there is none (1) or the key is wrong (2)."""
    name, _, account = key.partition("/")
    platform = next((p for p in config.platforms if p.name == name), None)
    if platform is None:
        names = ", ".join(p.name for p in config.platforms) or "none"
        print(
            f"wxtokend: no platform named {name!r} in {config.path} (platforms: {names})",
            file=sys.stderr,
        )
        return 2
    product = WECOM_SUITE if platform.product == "wecom" else OPEN_PLATFORM
    upper = "suite" if product is WECOM_SUITE else "component"
    own = account in (upper, "component")
    if not own:
        try:
            product.check_id(account)
        except ValueError as exc:
            print(f"wxtokend: {account!r}: {exc}, or {upper!r}", file=sys.stderr)
            return 2
    file = product.upper_file if own else account
    appid = platform.component_appid if own else account
    store = TokenStore(directory=config.output_dir / name, file_mode=config.file_mode)
    try:
        record = store.load(file)
    except (StateFileError, ValueError) as exc:
        print(f"wxtokend: {key}: its token file is unusable: {exc}", file=sys.stderr)
        return 1
    problem = problem_of(record, appid, time.time())
    if record is None or problem:
        print(
            f"wxtokend: {key}: {problem} in {store.directory} — has it authorized the platform,"
            " and is the daemon running? Its log and /readyz say why.",
            file=sys.stderr,
        )
        return 1
    sys.stdout.write(record.access_token + ("\n" if sys.stdout.isatty() else ""))
    return 0
