"""Loading and validating the YAML config.

Reading is bounded (size, values counted through aliases, depth) before anything
is built, so no file can hang the daemon at a reload. Pydantic checks the shape
(and gives the JSON Schema for editors); the steps pydantic cannot do — reading
secret files and variables, resolving the group, finding duplicates — run
afterwards, on every part whose shape is right. Every problem becomes one line
naming the file, the line, the key path and the fix, in wxtokend's words, and
all of them come together, in the file's order, in a single
:class:`~wxtokend.errors.ConfigError`.
"""

from __future__ import annotations

import datetime
import difflib
import grp
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from wxtokend.asgi import Listen, parse_listen
from wxtokend.errors import ConfigError
from wxtokend.fleet import FleetSettings
from wxtokend.redact import Secret

__all__ = [
    "DEFAULT_WECOM_API_BASE",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES",
    "TICKETS_FOR",
    "AdminConfig",
    "AppConfig",
    "Config",
    "Grant",
    "GrantChoice",
    "Ticket",
    "json_schema",
    "load_config",
    "parse_duration",
]

Grant = Literal["stable", "classic", "wecom"]  # how a token is fetched (wecom: gettoken)
GrantChoice = Literal["stable", "classic"]  # what an official app's config may say
Ticket = Literal["jsapi", "wx_card", "agent_config"]
TICKETS_FOR: dict[str, frozenset[str]] = {
    "official": frozenset({"jsapi", "wx_card"}),
    "wecom": frozenset({"jsapi", "agent_config"}),
}
DEFAULT_WECOM_API_BASE = "https://qyapi.weixin.qq.com"

DEFAULT_API_BASE = "https://api.weixin.qq.com"
OUTPUT_DIR_MODE = 0o750
# What reading a config may cost, so that a broken or hostile file (an alias bomb, a huge
# or deeply nested document) is refused in a moment rather than taking the daemon down at
# a reload. A config of 10,000 apps is about 1.3 MB and 150,000 values, 4 levels deep.
MAX_CONFIG_BYTES = 8 << 20
MAX_CONFIG_VALUES = 500_000  # scalars, lists and mappings, counted again at every alias
MAX_CONFIG_DEPTH = 64  # lists and mappings inside one another

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_APPID = re.compile(r"[\x21-\x7e]{1,128}")
_REDIS_URL = re.compile(r"^(redis|rediss|unix)://")
_MIN_FLEET_KEY = 32  # characters of the fleet key: 128+ bits as hex, more as base64
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_LAST_STEP = re.compile(r"(\.[^.\[\]]*|\[\d+\])$")  # ".key" or "[3]" at a key path's end
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from ``300``, ``"300"``, ``"15s"``, ``"5m"``, ``"1h"`` or ``"500ms"``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 300, '15s', '5m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("must be a duration such as 300, '15s', '5m' or '1h'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a finite duration longer than zero")
    return seconds


def _parse_file_mode(value: object) -> int:
    # Only strings: YAML reads an unquoted 0640 as octal 416 but 440 as decimal
    # 440 (= 0o670), so an unquoted mode cannot be trusted to mean what it says.
    if not isinstance(value, str) or not re.fullmatch(r"(0o|0)?[0-7]{3}", value.strip()):
        raise ValueError('must be an octal mode written as a quoted string, e.g. "0640"')
    mode = int(value.strip().removeprefix("0o"), 8)
    if not mode & stat.S_IRUSR:
        raise ValueError("must let the owner read the file (e.g. 0640)")
    if mode & stat.S_IWOTH:
        raise ValueError("must not make token files world-writable (use e.g. 0640)")
    return mode


def _parse_group(value: object) -> str | None:
    # bool is an int to Python: `file_group: no` must not become gid 0 (root).
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    raise ValueError("must be a group name or a numeric gid")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(json_schema_extra={"anyOf": [{"type": "number"}, {"type": "string"}]}),
]
FileMode = Annotated[int, BeforeValidator(_parse_file_mode)]
Group = Annotated[str | None, BeforeValidator(_parse_group)]


class _AppModel(BaseModel):
    """One app whose token wxtokend keeps: an Official Account, Mini Program, ...
    (kind: official, the default) or a WeCom application (kind: wecom)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["official", "wecom"] = Field(
        "official", description="official (Official Account, Mini Program, ...) or wecom."
    )
    appid: str | None = Field(None, description="The AppID, e.g. wx0123456789abcdef.")
    corpid: str | None = Field(None, description="WeCom: the CorpID, e.g. ww0123456789abcdef.")
    agentid: int | None = Field(None, description="WeCom: the application's AgentId.")
    name: str | None = Field(
        None, description="File name in output_dir; defaults to the appid (required for WeCom)."
    )
    grant: GrantChoice | None = Field(
        None,
        description="stable (/cgi-bin/stable_token, the default) or classic (/cgi-bin/token);"
        " not for WeCom.",
    )
    tickets: list[Ticket] = Field(
        default_factory=list,
        description="Tickets kept beside the token: jsapi and wx_card (official apps),"
        " jsapi and agent_config (WeCom).",
    )
    api_base: str | None = Field(None, description="This app's API base, if not the default.")
    secret_file: str | None = Field(None, description="File holding the AppSecret.")
    secret_env: str | None = Field(
        None, description="Environment variable holding it.", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    secret: str | None = Field(
        None, description="The AppSecret inline (keep the config file private)."
    )

    @field_validator("appid", "corpid")
    @classmethod
    def _id_shape(cls, value: str | None) -> str | None:
        if value is not None and not _APPID.fullmatch(value):
            raise ValueError("must be 1-128 visible ASCII characters, e.g. wx0123456789abcdef")
        return value

    @field_validator("name")
    @classmethod
    def _name_is_a_safe_file_name(cls, value: str | None) -> str | None:
        if value is not None:
            _check_name(value)
        return value

    @field_validator("api_base")
    @classmethod
    def _app_api_base(cls, value: str | None) -> str | None:
        return _check_http_url(value)


class _RetryModel(BaseModel):
    """How long to wait between attempts after a transient failure (5xx, -1, timeouts)."""

    model_config = ConfigDict(extra="forbid")

    min: Duration = Field(
        1.0,
        ge=0.01,
        le=600,
        description="Shortest wait before a retry (and the first backoff step).",
    )
    max: Duration = Field(
        60.0,
        ge=0.01,
        le=3600,
        description="Longest wait between retries; never past the current token's expiry.",
    )


class _AdminModel(BaseModel):
    """The admin HTTP listener: health, metrics, status, passive refresh, SDK endpoints."""

    model_config = ConfigDict(extra="forbid")

    listen: str | None = Field(
        "127.0.0.1:9735",
        description="host:port or unix:/path for the full admin API; null turns it off."
        " It listens beyond loopback only if you write such an address here.",
    )
    probe_listen: str | None = Field(
        None,
        description="Optional second address serving only /healthz, /readyz and /metrics"
        " (for kubelet probes and Prometheus on the pod IP).",
    )
    start_timeout: Duration = Field(
        60.0,
        ge=1,
        le=3600,
        description="systemd READY=1 after this long even if some apps have no token yet.",
    )
    passive_min_interval: Duration = Field(
        10.0,
        ge=1,
        le=3600,
        description="Passive refresh: at most one upstream refresh per app this often.",
    )

    passive_daily_limit: int = Field(
        100,
        ge=1,
        le=2000,
        strict=True,
        description="Passive refresh: at most this many upstream refreshes per app per day.",
    )

    @field_validator("listen", "probe_listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


class _FleetModel(BaseModel):
    """Fleet mode: instances coordinating through Redis, one refresh per credential."""

    model_config = ConfigDict(extra="forbid")

    redis: str | None = Field(
        None, description="redis://[:password@]host:6379/0, rediss:// for TLS, or unix:///path."
    )
    redis_file: str | None = Field(
        None,
        description="A file holding that URL instead (keeps the Redis password out of the"
        " config, which consumers may read).",
    )
    key_file: str | None = Field(
        None,
        description="Required: a file holding the fleet key (one line, at least 32 visible ASCII"
        " characters, e.g. from openssl rand -hex 32), the same on every member and follower;"
        " it signs every record, so nobody without it can plant a token in the fleet.",
    )
    key_prefix: str = Field(
        "wxtokend", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Prefix of every Redis key."
    )
    lock_ttl: Duration = Field(15.0, ge=1, le=300, description="How long a fetch lock lives.")
    role: Literal["member", "follower"] = Field(
        "member", description="member (may fetch) or follower (only mirrors the fleet's tokens)."
    )
    on_redis_down: Literal["wait", "fetch"] = Field(
        "wait",
        description="Classic-grant members while Redis is down: wait (default) or fetch alone.",
    )
    reconcile_interval: Duration = Field(
        30.0, ge=1, le=3600, description="How often to re-read every shared record."
    )

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # Never echo the value: it may carry a password.
        if value is not None and not _REDIS_URL.match(value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class _SettingsModel(BaseModel):
    """Every top-level key but apps: validated on its own, so that a broken app does not
    hide the settings' problems and broken settings do not hide the apps'."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str = Field("/run/wxtoken", description="Where token files are written.")
    file_mode: FileMode = Field(
        "0640",  # parsed by _parse_file_mode like user input
        validate_default=True,
        description='Mode of token files, applied exactly whatever the umask, e.g. "0640".',
        json_schema_extra={"type": "string", "pattern": "^(0o|0)?[0-7]{3}$"},
    )
    file_group: Group = Field(
        None, description="Group (name or gid) given to token files: the consumers' group."
    )
    api_base: str = Field(DEFAULT_API_BASE, description="WeChat API base URL.")
    wecom_api_base: str = Field(DEFAULT_WECOM_API_BASE, description="WeCom API base URL.")
    proxy: str | None = Field(None, description="HTTP(S) proxy for every WeChat call.")
    max_concurrency: int = Field(
        16, ge=1, le=1024, strict=True, description="Upstream calls in flight."
    )
    stable_renew_window: Duration = Field(
        300.0,
        ge=1,
        le=3600,
        description="Stable grant: WeChat renews only inside this last part of a lifetime.",
    )
    request_timeout: Duration = Field(
        10.0, ge=0.1, le=300, description="Timeout of one whole WeChat call."
    )
    retry: _RetryModel = Field(
        default_factory=lambda: _RetryModel.model_validate({}),
        description="Backoff after transient failures. Defaults suit WeChat; lower them only"
        " for compressed-time tests against the emulator.",
    )
    admin: _AdminModel = Field(default_factory=lambda: _AdminModel.model_validate({}))
    remove_files_on_removal: bool = Field(
        False,
        strict=True,
        description="Delete a removed app's files at once, not when its token expires.",
    )
    fleet: _FleetModel | None = Field(None, description="Fleet mode through Redis.")

    @field_validator("api_base", "wecom_api_base", "proxy")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_http_url(value)


class _ConfigModel(_SettingsModel):
    """wxtokend configuration."""

    model_config = ConfigDict(extra="forbid", title="wxtokend configuration")

    apps: list[_AppModel] = Field(min_length=1, description="The apps whose tokens are kept.")


def _check_http_url(value: str | None) -> str | None:
    if value is None:
        return None
    problem = "must be an http:// or https:// URL without query, e.g. https://host"
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(problem)
    try:
        port = httpx.URL(value).port
    except (httpx.InvalidURL, ValueError):
        raise ValueError(problem) from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is not between 1 and 65535")
    return value.rstrip("/")


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


@dataclass(frozen=True, kw_only=True)
class AppConfig:
    """One app, validated and with its secret already read."""

    appid: str  # the CorpID for WeCom applications
    name: str
    grant: Grant
    secret: Secret
    secret_source: str
    api_base: str = DEFAULT_API_BASE
    secret_file: Path | None = None  # watched for changes by the daemon
    kind: Literal["official", "wecom"] = "official"
    tickets: tuple[Ticket, ...] = ()
    agentid: int | None = None

    def fetches_like(self, other: AppConfig) -> bool:
        """Whether a token fetched for ``other`` is this app's token too."""
        return (self.appid, self.grant, self.secret, self.api_base) == (
            other.appid,
            other.grant,
            other.secret,
            other.api_base,
        )


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    """Where the admin API listens and how it paces passive refreshes."""

    listen: Listen | None = field(default_factory=lambda: parse_listen("127.0.0.1:9735"))
    probe_listen: Listen | None = None
    start_timeout: float = 60.0
    passive_min_interval: float = 10.0
    passive_daily_limit: int = 100


@dataclass(frozen=True, kw_only=True)
class Config:
    """The validated config, ready for the daemon."""

    path: Path
    output_dir: Path
    file_mode: int
    file_gid: int | None
    api_base: str
    proxy: str | None
    max_concurrency: int
    stable_renew_window: float
    request_timeout: float
    apps: tuple[AppConfig, ...]
    retry_min: float = 1.0
    retry_max: float = 60.0
    admin: AdminConfig = field(default_factory=AdminConfig)
    fleet: FleetSettings | None = None
    remove_files_on_removal: bool = False
    warnings: tuple[str, ...] = ()
    output_dir_line: int | None = None  # for output_dir_error's message

    def watched_files(self) -> list[Path]:
        """The files whose change should reload the daemon: the config and secret files."""
        return [self.path, *(a.secret_file for a in self.apps if a.secret_file)]

    def output_dir_error(self, problem: object) -> ConfigError:
        """A problem with output_dir as a config error on the line that sets it."""
        where = f"{self.path}:{self.output_dir_line}" if self.output_dir_line else str(self.path)
        return ConfigError([f"{where}: output_dir: {problem}"])

    def app(self, key: str) -> AppConfig | None:
        """The app whose name or appid is ``key``."""
        for app in self.apps:
            if key == app.name or (key == app.appid and app.kind == "official"):
                return app
        return None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors and CI linters."""
    return _ConfigModel.model_json_schema()


def load_config(
    path: Path | str, *, environ: dict[str, str] | None = None, secrets: bool = True
) -> Config:
    """Read, validate and resolve ``path``; raise ConfigError listing every problem.

    ``secrets=False`` is for commands that only read token files (``get``): they
    run as a consumer, which must not need the AppSecrets or the file group.
    """
    path = Path(path)
    env = os.environ if environ is None else environ
    loader = _Loader(path)
    settings, apps, problems = _validate(loader, loader.read())
    problems = [*loader.problems, *problems]
    return _Resolver(loader, settings, apps, env, secrets=secrets, problems=problems).resolve()


def _validate(
    loader: _Loader, data: dict[Any, Any]
) -> tuple[_SettingsModel, list[_AppModel | None], list[str]]:
    """The settings, each app (None where invalid, so indices stay) and every shape problem.

    One pass over the whole file when it is valid; otherwise the settings and each
    app are validated on their own, so every part's problems come out together and
    the valid parts still get the checks that follow (secrets, duplicates...).
    """
    try:
        model = _ConfigModel.model_validate(data)
    except ValidationError:
        pass  # find out which parts are wrong, below
    else:
        return model, list(model.apps), []
    problems: list[str] = []
    settings = _valid_settings(loader, {k: v for k, v in data.items() if k != "apps"}, problems)
    return settings, _valid_apps(loader, data, problems), problems


def _valid_settings(loader: _Loader, data: dict[Any, Any], problems: list[str]) -> _SettingsModel:
    """The settings with every invalid key replaced by its default (after its problem)."""
    try:
        return _SettingsModel.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    problems.extend(_problem(loader, e, tuple(e["loc"])) for e in errors)
    bad = {str(e["loc"][0]) for e in errors}
    try:
        return _SettingsModel.model_validate({k: v for k, v in data.items() if str(k) not in bad})
    except ValidationError:  # cannot happen: the defaults are valid
        return _SettingsModel.model_validate({})


def _valid_apps(
    loader: _Loader, data: dict[Any, Any], problems: list[str]
) -> list[_AppModel | None]:
    if "apps" not in data:
        problems.append(loader.problem("apps", "is required but missing", _FIXES["apps"]))
        return []
    entries = data["apps"]
    if not isinstance(entries, list) or not entries:
        problem = f"must be a list of apps, not {_describe(entries)}" if entries else "is empty"
        problems.append(loader.problem("apps", problem, _FIXES["apps"]))
        return []
    apps: list[_AppModel | None] = []
    for i, entry in enumerate(entries):
        app = None
        if not isinstance(entry, dict):
            problems.append(loader.problem(f"apps[{i}]", "is not a mapping", _FIXES["apps[]"]))
        else:
            try:
                app = _AppModel.model_validate(entry)
            except ValidationError as exc:
                problems.extend(_problem(loader, e, ("apps", i, *e["loc"])) for e in exc.errors())
        apps.append(app)
    return apps


def _problem(loader: _Loader, error: Any, loc: tuple[int | str, ...]) -> str:
    return loader.problem(_loc(loc), *_explain(error, loc))


def _may_chown_to(gid: int) -> bool:
    """Whether fchown(fd, -1, gid) can succeed for this process."""
    return os.geteuid() == 0 or gid == os.getegid() or gid in os.getgroups()


def _check_name(value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} can't be a file name: use 1-128 letters, digits, '_' or '-',"
            " starting with a letter or digit (no '/', '..', dots or spaces)"
        )


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


class _Loader:
    """Reads the YAML and remembers the line of every key, for messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, int] = {}
        self.problems: list[str] = []  # about keys: the rest of the file is still judged

    def line_of(self, keypath: str) -> int | None:
        """The line of ``keypath``; of its nearest enclosing key if it is not in the file."""
        while keypath:
            if line := self.lines.get(keypath):
                return line
            parent = _LAST_STEP.sub("", keypath)
            if parent == keypath:
                return None
            keypath = parent
        return None

    def problem(self, keypath: str, problem: str, fix: str = "") -> str:
        line = self.line_of(keypath)
        where = f"{self.path}:{line}" if line else str(self.path)
        text = f"{where}: {keypath}: {problem}" if keypath else f"{where}: {problem}"
        return f"{text} — {fix}" if fix else text

    def read(self) -> Any:
        text = self._text()
        try:
            _check_cost(text)
            node = yaml.compose(text, Loader=_COMPOSER)
            if node is not None:
                self._index(node, "")  # before merges copy keys in with the anchor's lines
            data = yaml.SafeLoader(text).construct_document(node) if node is not None else None
        except _TooCostly as exc:
            line = exc.mark.line + 1
            raise ConfigError([f"{self.path}:{line}: {exc.problem} — {exc.fix}"]) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{self.path}:{mark.line + 1}:{mark.column + 1}" if mark else str(self.path)
            raise ConfigError(
                [f"{where}: invalid YAML: {exc.problem} — check indentation and quoting there"]
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{self.path}: invalid YAML: {exc}"]) from None
        if not isinstance(data, dict):
            raise ConfigError(
                [f"{self.path}: not a YAML mapping — start it with output_dir: and apps: keys"]
            )
        return data

    def _text(self) -> str:
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file claims
        except FileNotFoundError:
            raise ConfigError(
                [f"{self.path}: no such config file — pass the right path with -c"]
            ) from None
        except OSError as exc:
            raise ConfigError(
                [f"{self.path}: cannot read the config file: {exc.strerror}"]
            ) from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                [
                    f"{self.path}: larger than {MAX_CONFIG_BYTES >> 20} MB, the limit for a config"
                    " file — check that -c names the config (10,000 apps take about 1.3 MB)"
                ]
            )
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(
                [f"{self.path}: cannot read the config file: not UTF-8 text"]
            ) from None

    def _index(self, node: yaml.Node, prefix: str) -> None:
        """Record every key's line; and so that building the data cannot fail on a key,
        drop (as problems) duplicate keys and list or mapping keys, and read every
        other key as the text written: no config key is a number, true or null, so
        ``1:``, ``yes:`` or ``null:`` is an unknown key, reported as written."""
        if isinstance(node, yaml.MappingNode):
            kept: list[tuple[yaml.Node, yaml.Node]] = []
            first: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if key.tag == _MERGE:
                    kept.append((key, value))
                    continue  # merged keys are the entry's own: they take its line
                if not isinstance(key, yaml.ScalarNode):
                    where = f"{self.path}:{line}: {prefix}" if prefix else f"{self.path}:{line}"
                    self.problems.append(
                        f"{where}: a key must be a plain word, not a list or mapping"
                        " — check the indentation and any '?' there"
                    )
                    continue
                path = f"{prefix}.{key.value}" if prefix else str(key.value)
                if key.value in first:
                    self.problems.append(
                        f"{self.path}:{line}: {path}: appears twice in one mapping (first on"
                        f" line {first[key.value]}) — keep one of them"
                    )
                    continue
                first[key.value] = line
                if key.tag != _STR:
                    key = yaml.ScalarNode(_STR, key.value, key.start_mark, key.end_mark)
                kept.append((key, value))
                self.lines[path] = line
                self._index(value, path)
            node.value = kept
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}[{i}]"
                self.lines[path] = item.start_mark.line + 1
                self._index(item, path)


class _TooCostly(Exception):
    """The document would cost too much to build: refused before anything is built."""

    def __init__(self, mark: Any, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.mark, self.problem, self.fix = mark, problem, fix


def _check_cost(text: str) -> None:
    """Refuse a document nested too deep, or too big once its aliases are expanded.

    Everything after parsing (composing, line indexing, validation) walks each alias
    again, so nine levels of nine aliases ("billion laughs") would be 387 million
    values. This pass runs on the parser's events, before any node exists: it keeps
    one number per anchor, so memory stays flat and each event costs the same.
    """
    sizes: dict[str, int] = {}  # anchor -> values in its node, aliases expanded
    open_: list[tuple[int, str | None]] = []  # (values before it, anchor) per open list/map
    values = plain = 0  # values with aliases expanded / as written
    for event in yaml.parse(text, Loader=_COMPOSER):
        if isinstance(event, yaml.ScalarEvent):  # the commonest first: this loop is hot
            values, plain = values + 1, plain + 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            before, anchor = open_.pop()
            if anchor:
                sizes[anchor] = values - before
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(open_) == MAX_CONFIG_DEPTH:
                raise _TooCostly(
                    event.start_mark,
                    f"lists and mappings nested more than {MAX_CONFIG_DEPTH} deep",
                    "a config needs 4 levels (apps, an app, its tickets): check the brackets"
                    " and the indentation",
                )
            open_.append((values, event.anchor))
            values, plain = values + 1, plain + 1
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for _, anchor in open_):
                raise _TooCostly(
                    event.start_mark,
                    f"alias *{event.anchor} is inside the node &{event.anchor} it names,"
                    " an endless loop",
                    "move the alias out of its anchor's node",
                )
            values += sizes.get(event.anchor or "", 1)  # undefined: the composer says so
        if values > MAX_CONFIG_VALUES:
            raise _too_many(event.start_mark, aliased=plain <= MAX_CONFIG_VALUES)


def _too_many(mark: Any, *, aliased: bool) -> _TooCostly:
    limit = f"{MAX_CONFIG_VALUES:,}"
    if aliased:
        return _TooCostly(
            mark,
            f"aliases here expand the document past {limit} values (an alias bomb?)",
            "write the repeated parts out, or alias only small parts such as <<: *defaults",
        )
    return _TooCostly(
        mark,
        f"the document holds more than {limit} values",
        "split the apps over several wxtokend instances (10,000 apps are about 150,000 values)",
    )


# libyaml's parser when PyYAML has it: the pure-Python one took seconds for 10,000 apps.
# Its nodes carry the same line marks; construction stays in the Python SafeLoader.
_COMPOSER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _in_file_order(path: Path, problems: list[str]) -> list[str]:
    """Problems by line (those of the whole file first), in the order one reads the file."""
    line = re.compile(re.escape(str(path)) + r":(\d+):")

    def line_of(problem: str) -> int:
        found = line.match(problem)
        return int(found.group(1)) if found else 0

    return sorted(problems, key=line_of)


@dataclass(frozen=True, kw_only=True)
class _Named:
    """An app's identity, known before its secret is read."""

    kind: str
    appid: str
    name: str


class _Resolver:
    """The checks pydantic can't do: secrets, groups, duplicates, paths."""

    def __init__(
        self,
        loader: _Loader,
        model: _SettingsModel,
        apps: list[_AppModel | None],
        env: os._Environ[str] | dict[str, str],
        *,
        secrets: bool,
        problems: list[str],
    ):
        self.loader = loader
        self.secrets = secrets
        self.model = model
        self.apps = apps  # None where the entry's shape is wrong: already a problem
        self.env = env
        self.base = loader.path.absolute().parent
        self.problems = problems
        self.warnings: list[str] = []
        # Each app's appid and name once known, even if its secret then fails: duplicates
        # are found among every app that got that far, not only the fully valid ones.
        self.named: dict[int, _Named] = {}

    def resolve(self) -> Config:
        apps = tuple(None if a is None else self._app(i, a) for i, a in enumerate(self.apps))
        self._duplicates(apps)
        gid = self._group()
        fleet = self._fleet()
        self._retry()
        self._inline_secret_warning()
        if self.problems:
            raise ConfigError(_in_file_order(self.loader.path, self.problems))
        return Config(
            path=self.loader.path.absolute(),
            output_dir=self.base / self.model.output_dir,
            file_mode=self.model.file_mode,
            file_gid=gid,
            api_base=self.model.api_base,
            proxy=self.model.proxy,
            max_concurrency=self.model.max_concurrency,
            stable_renew_window=self.model.stable_renew_window,
            request_timeout=self.model.request_timeout,
            apps=tuple(a for a in apps if a is not None),
            retry_min=self.model.retry.min,
            retry_max=self.model.retry.max,
            admin=self._admin(),
            fleet=fleet,
            remove_files_on_removal=self.model.remove_files_on_removal,
            warnings=tuple(self.warnings),
            output_dir_line=self.loader.line_of("output_dir"),
        )

    def _fleet(self) -> FleetSettings | None:
        fleet = self.model.fleet
        if fleet is None:
            return None
        url, key = self._redis_url(fleet), self._fleet_key(fleet)
        if url is None or key is None:
            return None
        return FleetSettings(
            redis_url=url,
            key=key,
            key_prefix=fleet.key_prefix,
            lock_ttl=fleet.lock_ttl,
            role=fleet.role,
            on_redis_down=fleet.on_redis_down,
            reconcile_interval=fleet.reconcile_interval,
        )

    def _redis_url(self, fleet: _FleetModel) -> str | None:
        if (fleet.redis is None) == (fleet.redis_file is None):
            self._fail("fleet", "needs exactly one of redis or redis_file", "add redis: <url>")
            return None
        if fleet.redis is not None:
            return fleet.redis
        assert fleet.redis_file is not None
        path = self.base / fleet.redis_file
        try:
            url = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            self._fail("fleet.redis_file", f"{path}: cannot read it", "create it holding the URL")
            return None
        if not _REDIS_URL.match(url):
            self._fail(
                "fleet.redis_file",
                f"{path} does not hold a redis://, rediss:// or unix:// URL",
                "put only the URL in it",
            )
            return None
        return url

    def _fleet_key(self, fleet: _FleetModel) -> Secret | None:
        """The fleet key; never echoed. Commands without secrets (get) do not read it."""
        make_one = (
            "create one key for the whole fleet (openssl rand -hex 32 > /etc/wxtokend/fleet.key;"
            " chmod 600), give every member and follower the same file, and set"
            " fleet.key_file to it"
        )
        if fleet.key_file is None:
            self._fail(
                "fleet.key_file",
                "is missing: fleet records are signed, so that nobody who can write to Redis"
                " without the key can plant a token every member adopts",
                make_one + "; records of older, unsigned members are then never adopted",
            )
            return None
        if not self.secrets:
            return Secret("")
        path = self.base / fleet.key_file
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._fail("fleet.key_file", f"{path}: cannot read: {reason}", make_one)
            return None
        if not re.fullmatch(rf"[\x21-\x7e]{{{_MIN_FLEET_KEY},}}", text):
            self._fail(
                "fleet.key_file",
                f"{path} must hold one line of at least {_MIN_FLEET_KEY} visible ASCII"
                f" characters (it holds {len(text)} characters)",
                make_one,
            )
            return None
        return Secret(text)

    def _retry(self) -> None:
        retry = self.model.retry
        if retry.min < 1:
            self.warnings.append(
                self.loader.problem(
                    "retry.min",
                    f"{retry.min:g} s is meant for compressed-time tests against the emulator",
                    "against WeChat keep it at 1 s or more: each failure costs a call",
                )
            )
        if retry.max < retry.min:
            self._fail(
                "retry.max",
                f"{retry.max:g} s is shorter than retry.min ({retry.min:g} s)",
                "make retry.max at least retry.min",
            )

    def _admin(self) -> AdminConfig:
        admin = self.model.admin
        return AdminConfig(
            listen=parse_listen(admin.listen) if admin.listen else None,
            probe_listen=parse_listen(admin.probe_listen) if admin.probe_listen else None,
            start_timeout=admin.start_timeout,
            passive_min_interval=admin.passive_min_interval,
            passive_daily_limit=admin.passive_daily_limit,
        )

    def _fail(self, keypath: str, problem: str, fix: str) -> None:
        self.problems.append(self.loader.problem(keypath, problem, fix))

    def _app(self, index: int, app: _AppModel) -> AppConfig | None:
        where = f"apps[{index}]"
        ident = self._identity(where, app)
        if ident is None:
            return None
        name = app.name if app.name is not None else ident
        if app.name is None and not _NAME.fullmatch(name):
            self._fail(f"{where}.appid", "can't be used as a file name", "set name: for this app")
            return None
        self.named[index] = _Named(kind=app.kind, appid=ident, name=name)
        allowed = TICKETS_FOR[app.kind]
        for i, ticket in enumerate(app.tickets):
            if ticket not in allowed:
                self._fail(
                    f"{where}.tickets[{i}]",
                    f"{ticket} is not a ticket of a {app.kind} app",
                    "use " + " or ".join(sorted(allowed)),
                )
                return None
        if "agent_config" in app.tickets and app.agentid is None:
            self._fail(
                f"{where}.agentid",
                "is required for the agent_config ticket (wx.agentConfig names the application)",
                "add agentid: (the application's AgentId)",
            )
            return None
        sources = [
            k for k in ("secret_file", "secret_env", "secret") if getattr(app, k) is not None
        ]
        if len(sources) != 1:
            problem = (
                "has no secret"
                if not sources
                else "has more than one secret: " + ", ".join(sources)
            )
            self._fail(where, problem, "set exactly one of secret_file, secret_env or secret")
            return None
        secret = self._secret(where, app) if self.secrets else ""
        if secret is None:
            return None
        source = sources[0]
        wecom = app.kind == "wecom"
        default_base = self.model.wecom_api_base if wecom else self.model.api_base
        return AppConfig(
            appid=ident,
            name=name,
            grant="wecom" if wecom else (app.grant or "stable"),
            kind=app.kind,
            tickets=tuple(dict.fromkeys(app.tickets)),
            agentid=app.agentid,
            api_base=app.api_base or default_base,
            secret_file=self.base / app.secret_file if app.secret_file else None,
            secret=Secret(secret),
            secret_source=f"{source} {getattr(app, source)}"
            if source != "secret"
            else "secret: in the config file",
        )

    def _identity(self, where: str, app: _AppModel) -> str | None:
        """The appid (or a WeCom app's corpid), checking the keys that go with the kind."""
        if app.kind == "official":
            for key in ("corpid", "agentid"):
                if getattr(app, key) is not None:
                    self._fail(
                        f"{where}.{key}", "is for WeCom apps", "add kind: wecom, or remove it"
                    )
                    return None
            if app.appid is None:
                self._fail(f"{where}.appid", "is required but missing", "add appid: (wx...)")
            return app.appid
        if app.appid is not None:
            self._fail(f"{where}.appid", "WeCom apps have a corpid", "write corpid: instead")
            return None
        if app.grant is not None:
            self._fail(f"{where}.grant", "WeCom apps have no grant", "remove grant:")
            return None
        if app.corpid is None:
            self._fail(f"{where}.corpid", "is required but missing", "add corpid: (ww...)")
            return None
        if app.name is None:
            self._fail(
                f"{where}.name",
                "is required for WeCom apps (one corp has several applications)",
                "add name:, e.g. hr-app",
            )
            return None
        return app.corpid

    def _secret(self, where: str, app: _AppModel) -> str | None:
        if app.secret is not None:
            return self._clean_secret(f"{where}.secret", app.secret, "the inline secret")
        if app.secret_env is not None:
            value = self.env.get(app.secret_env)
            if not value:
                state = "is not set" if value is None else "is empty"
                self._fail(
                    f"{where}.secret_env",
                    f"environment variable {app.secret_env} {state}",
                    f"export {app.secret_env}=<AppSecret> for the daemon (systemd: Environment= or"
                    " EnvironmentFile=; Kubernetes: env from a Secret)",
                )
                return None
            return self._clean_secret(f"{where}.secret_env", value, f"${app.secret_env}")
        assert app.secret_file is not None
        path = self.base / app.secret_file
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._fail(
                f"{where}.secret_file",
                f"{path}: no such file",
                "create it holding only the AppSecret, or fix the path",
            )
            return None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._fail(
                f"{where}.secret_file",
                f"{path}: cannot read: {reason}",
                "let the user wxtokend runs as read it, and nobody else (chmod 0600)",
            )
            return None
        return self._clean_secret(f"{where}.secret_file", text, str(path))

    def _clean_secret(self, keypath: str, raw: str, what: str) -> str | None:
        value = raw.strip()
        if not value:
            self._fail(
                keypath, f"{what} is empty", "put the AppSecret from the WeChat console there"
            )
            return None
        if not re.fullmatch(r"[\x21-\x7e]+", value):
            self._fail(
                keypath,
                f"{what} holds spaces, several lines or non-ASCII characters",
                "it must hold only the AppSecret",
            )
            return None
        return value

    def _duplicates(self, resolved: tuple[AppConfig | None, ...]) -> None:
        apps = [resolved[i] or self.named.get(i) for i in range(len(resolved))]
        flagged: set[int] = set()
        checks: list[tuple[str, Callable[[AppConfig | _Named], object]]] = [
            ("appid", lambda a: a.appid if a.kind == "official" else None),
            # Without secrets loaded (get, sign) every secret is blank: nothing to compare.
            (
                "secret",
                lambda a: (
                    (a.appid, a.secret)
                    if isinstance(a, AppConfig) and a.kind == "wecom" and self.secrets
                    else None
                ),
            ),
            ("name", lambda a: a.name),
        ]
        for attr, key_of in checks:
            first: dict[object, int] = {}
            for i, app in enumerate(apps):
                if app is None or i in flagged or key_of(app) is None:
                    continue
                value = key_of(app)
                if value not in first:
                    first[value] = i
                    continue
                flagged.add(i)
                self._fail(*self._duplicate(i, attr, app, first[value]))

    def _duplicate(
        self, i: int, attr: str, app: AppConfig | _Named, other: int
    ) -> tuple[str, str, str]:
        if attr == "secret":
            return (
                f"apps[{i}]",
                f"corpid {app.appid!r} with the same secret as apps[{other}]: the same"
                " WeCom application twice",
                "each WeCom application has its own secret; keep one entry",
            )
        explicit = attr == "name" and getattr(self.apps[i], "name", None) is not None
        value = app.name if attr == "name" else app.appid
        return (
            f"apps[{i}].{'name' if explicit else 'appid'}",
            f"{attr} {value!r} is already used by apps[{other}]",
            f"give every app its own {attr}",
        )

    def _group(self) -> int | None:
        group = self.model.file_group
        if group is None:
            return None
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                self._fail(
                    "file_group",
                    f"no group named {group!r} on this host",
                    f"create it (groupadd --system {group}, or systemd-sysusers) or remove"
                    " file_group",
                )
                return None
        if self.secrets and not _may_chown_to(gid):
            self._fail(
                "file_group",
                f"this process (uid {os.geteuid()}) is not in group {group!r}, so it cannot give"
                " token files to it",
                f"run wxtokend as a member of {group} (systemd: Group= or SupplementaryGroups=)"
                " or remove file_group",
            )
        return gid

    def _inline_secret_warning(self) -> None:
        inline = [
            f"apps[{i}].secret" for i, a in enumerate(self.apps) if a and a.secret is not None
        ]
        if not inline:
            return
        try:
            mode = self.loader.path.stat().st_mode
        except OSError:
            return
        if mode & 0o077:
            self.warnings.append(
                self.loader.problem(
                    inline[0],
                    f"inline secret in a file others can read (mode {mode & 0o777:04o})",
                    f"chmod 600 {self.loader.path}, or move it to secret_file / secret_env",
                )
            )
