"""Pydantic's errors in wxtokend's words: a problem and its fix for each.

Never pydantic's own message, and never the value that was wrong (it may be a
secret): only what kind of YAML value it is.
"""

from __future__ import annotations

import datetime
import difflib
from typing import Any

from pydantic import BaseModel

from wxtokend.config.models import (
    _AdminModel,
    _AppModel,
    _ConfigModel,
    _FleetModel,
    _RetryModel,
    parse_duration,
)

__all__ = ["_FIXES", "_describe", "_explain", "_fields_at", "_loc"]

_FIXES = {
    "grant": "use grant: stable (recommended) or grant: classic",
    "name": "pick a name like shop or mini-prod (it becomes the token's file name)",
    "file_mode": 'write it quoted, e.g. file_mode: "0640"',
    "file_group": "name a group consumers share (e.g. wxtoken), or a numeric gid",
    "api_base": "use e.g. https://api.weixin.qq.com",
    "proxy": "use e.g. http://egress.internal:3128",
    "stable_renew_window": "use e.g. 300 or '5m'",
    "request_timeout": "use e.g. 10 or '10s'",
    "min": "use e.g. 1 or '1s'",
    "max": "use e.g. 60 or '1m'",
    "secret_env": "name the variable (e.g. WX_SHOP_SECRET), not its value",
    "listen": "use e.g. 127.0.0.1:9735 or unix:/run/wxtoken/admin.sock",
    "redis": "use e.g. redis://:password@redis.internal:6379/0",
    "role": "use member or follower",
    "on_redis_down": "use wait or fetch",
    "lock_ttl": "use e.g. 15 or '15s'",
    "reconcile_interval": "use e.g. 30 or '30s'",
    "probe_listen": "use e.g. 0.0.0.0:9736",
    "start_timeout": "use e.g. 60 or '1m'",
    "passive_min_interval": "use e.g. 10 or '30s'",
    "max_concurrency": "use a whole number from 1 to 1024",
    "apps": "list at least one app under apps:",
    "apps[]": "each app is a mapping with appid: and a secret source, e.g."
    " - {appid: wx0123456789abcdef, secret_file: shop.secret}",
    "appid": "copy the AppID from the WeChat console",
    "corpid": "copy the CorpID (ww...) from the WeCom console",
    "agentid": "copy the application's AgentId, a number, from the WeCom console",
    "kind": "use kind: official (the default) or kind: wecom",
    "tickets": "list them, e.g. tickets: [jsapi]",
    "secret_file": "name the file holding the AppSecret, e.g. secret_file: shop.secret",
    "secret": "quote the AppSecret, or better move it to secret_file or secret_env",
    "output_dir": "name a directory, e.g. output_dir: /run/wxtoken",
    "wecom_api_base": "use e.g. https://qyapi.weixin.qq.com",
    "redis_file": "name the file holding the Redis URL, e.g. redis_file: /etc/wxtokend/redis.url",
    "key_prefix": "use e.g. key_prefix: wxtokend",
    "passive_daily_limit": "use a whole number from 1 to 2000",
    # a section that is not a mapping
    "admin:": "write admin: as a mapping, e.g. admin: {listen: 127.0.0.1:9735}; to turn the"
    " admin API off write admin: {listen: null}",
    "retry:": "write retry: as a mapping, e.g. retry: {min: 1s, max: 1m}, or remove it for the"
    " defaults",
    "fleet:": "write fleet: as a mapping, e.g. fleet: {redis_file: /etc/wxtokend/redis.url},"
    " or remove it to run without a fleet",
}


def _loc(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _explain(error: Any, loc: tuple[int | str, ...]) -> tuple[str, str]:
    """(problem, fix) for one pydantic error, in wxtokend's words.

    Never pydantic's own message (it names internal classes and says "Input should
    be"), and never the input: it may be a secret. Only its type is described.
    """
    kind, ctx = error["type"], error.get("ctx") or {}
    key = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
    fix = _FIXES.get(key, "see `wxtokend schema` or the README for what it takes")
    got = _describe(error.get("input"))
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        close = difflib.get_close_matches(key, fields, n=1)
        return (
            "unknown key",
            f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(fields),
        )
    if kind == "missing":
        return "is required but missing", _FIXES.get(key, f"add {key}:")
    if kind == "value_error":
        return str(ctx.get("error", "is not valid")), fix
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping (key: value lines), not {got}", _FIXES.get(f"{key}:", fix)
    if kind == "list_type":
        return f"must be a list, not {got}", fix
    if kind == "string_type":
        return f"must be text, not {got}", fix
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, not {got}", fix
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the documented values')}", fix
    if kind in _BOUNDS:
        word, bound = _BOUNDS[kind]
        unit = " s" if key in _DURATION_KEYS else ""
        limit = ctx.get(bound)
        shown = f"{limit:g}" if isinstance(limit, int | float) else str(limit)
        return f"must be {word} {shown}{unit}", fix
    if kind == "string_pattern_mismatch":
        return _PATTERNS.get(key, "is not in the expected form"), fix
    return "is not a valid value", fix


_BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("more than", "gt"),
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
}
_PATTERNS = {
    "secret_env": "is not an environment variable name",  # never echoed: it may be the secret
    "key_prefix": "must be 1-64 letters, digits, '_', '.', ':' or '-'",
}
_SECTIONS: dict[str, type[BaseModel]] = {
    "admin": _AdminModel,
    "fleet": _FleetModel,
    "retry": _RetryModel,
}
_DURATION_KEYS = frozenset(
    name
    for model in (_ConfigModel, _AdminModel, _FleetModel, _RetryModel)
    for name, info in model.model_fields.items()
    if any(getattr(m, "func", None) is parse_duration for m in info.metadata)
)


def _describe(value: object) -> str:
    """What kind of YAML value ``value`` is, in the config's words (never the value)."""
    if value is None:
        return "null (nothing)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return "a date (quote it to make it text)"
    return "binary data"  # the one YAML type left: !!binary


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys valid where ``loc`` points: the top level, an app, or a section."""
    model: type[BaseModel] = _ConfigModel
    if loc and loc[0] == "apps":
        model = _AppModel
    elif loc:
        model = _SECTIONS.get(str(loc[0]), _ConfigModel)
    return sorted(model.model_fields)
