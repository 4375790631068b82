"""Loading and validating the YAML config.

Pydantic checks the shape (and gives the JSON Schema for editors); the steps
pydantic cannot do — reading secret files and variables, resolving the group,
finding duplicates — run afterwards. Every problem becomes one line naming the
file, the line, the key path and the fix, collected into a single
:class:`~wxtokend.errors.ConfigError`.
"""

from __future__ import annotations

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

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_APPID = re.compile(r"[\x21-\x7e]{1,128}")
_REDIS_URL = re.compile(r"^(redis|rediss|unix)://")
_MIN_FLEET_KEY = 32  # characters of the fleet key: 128+ bits as hex, more as base64
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
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


class _ConfigModel(BaseModel):
    """wxtokend configuration."""

    model_config = ConfigDict(extra="forbid", title="wxtokend configuration")

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
    fleet: _FleetModel | None = Field(None, description="Fleet mode through Redis.")
    apps: list[_AppModel] = Field(min_length=1, description="The apps whose tokens are kept.")

    @field_validator("api_base", "wecom_api_base", "proxy")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_http_url(value)


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
    "appid": "copy the AppID from the WeChat console",
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
    warnings: tuple[str, ...] = ()

    def watched_files(self) -> list[Path]:
        """The files whose change should reload the daemon: the config and secret files."""
        return [self.path, *(a.secret_file for a in self.apps if a.secret_file)]

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
    data = loader.read()
    try:
        model = _ConfigModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [loader.problem(_loc(e["loc"]), *_explain(e)) for e in exc.errors()]
        ) from None
    return _Resolver(loader, model, env, secrets=secrets).resolve()


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


def _explain(error: Any) -> tuple[str, str]:
    """(problem, fix) for one pydantic error, never echoing the input (it may be a secret)."""
    kind, loc = error["type"], error["loc"]
    key = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(key), fields, n=1)
        fix = f"did you mean {close[0]!r}?" if close else "valid keys: " + ", ".join(fields)
        return "unknown key", fix
    if kind == "missing":
        return "is required but missing", _FIXES.get(key, f"add {key}:")
    message = str(error["msg"]).removeprefix("Value error, ")
    if key == "secret_env" and kind == "string_pattern_mismatch":
        message = "is not an environment variable name"  # never echo: it may be the secret
    if loc == ("apps",) and kind in ("list_type", "too_short"):
        return message, _FIXES["apps"]
    if len(loc) == 2 and loc[0] == "apps" and kind in ("model_type", "dict_type"):
        return "is not a mapping", "each app is a mapping with appid: and a secret source"
    return message, _FIXES.get(key, "")


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = _AppModel if "apps" in loc else _ConfigModel
    return sorted(model.model_fields)


class _Loader:
    """Reads the YAML and remembers the line of every key, for messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, int] = {}

    def problem(self, keypath: str, problem: str, fix: str = "") -> str:
        line = self.lines.get(keypath)
        where = f"{self.path}:{line}" if line else str(self.path)
        text = f"{where}: {keypath}: {problem}" if keypath else f"{where}: {problem}"
        return f"{text} — {fix}" if fix else text

    def read(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                [f"{self.path}: no such config file — pass the right path with -c"]
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError([f"{self.path}: cannot read the config file: {reason}"]) from None
        try:
            node = yaml.compose(text, Loader=_COMPOSER)
            data = _StrictLoader(text).construct_document(node) if node is not None else None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{self.path}:{mark.line + 1}:{mark.column + 1}" if mark else str(self.path)
            raise ConfigError(
                [f"{where}: invalid YAML: {exc.problem} — check indentation and quoting there"]
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{self.path}: invalid YAML: {exc}"]) from None
        if node is not None:
            self._index(node, "")
        if not isinstance(data, dict):
            raise ConfigError(
                [f"{self.path}: not a YAML mapping — start it with output_dir: and apps: keys"]
            )
        return data

    def _index(self, node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{prefix}.{key.value}" if prefix else str(key.value)
                self.lines[path] = key.start_mark.line + 1
                self._index(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}[{i}]"
                self.lines[path] = item.start_mark.line + 1
                self._index(item, path)


# libyaml's parser when PyYAML has it: the pure-Python one took seconds for 10,000 apps.
# Its nodes carry the same line marks; construction stays in _StrictLoader.
_COMPOSER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool | None):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a key must be a plain word, not a list or mapping",
                    key_node.start_mark,
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Resolver:
    """The checks pydantic can't do: secrets, groups, duplicates, paths."""

    def __init__(
        self,
        loader: _Loader,
        model: _ConfigModel,
        env: os._Environ[str] | dict[str, str],
        *,
        secrets: bool,
    ):
        self.loader = loader
        self.secrets = secrets
        self.model = model
        self.env = env
        self.base = loader.path.absolute().parent
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def resolve(self) -> Config:
        apps = tuple(self._app(i, a) for i, a in enumerate(self.model.apps))
        self._duplicates(apps)
        gid = self._group()
        fleet = self._fleet()
        self._retry()
        self._inline_secret_warning()
        if self.problems:
            raise ConfigError(self.problems)
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
            warnings=tuple(self.warnings),
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

    def _duplicates(self, apps: tuple[AppConfig | None, ...]) -> None:
        flagged: set[int] = set()
        checks: list[tuple[str, Callable[[AppConfig], object]]] = [
            ("appid", lambda a: a.appid if a.kind == "official" else None),
            # Without secrets loaded (get, sign) every secret is blank: nothing to compare.
            (
                "secret",
                lambda a: (a.appid, a.secret) if a.kind == "wecom" and self.secrets else None,
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

    def _duplicate(self, i: int, attr: str, app: AppConfig, other: int) -> tuple[str, str, str]:
        if attr == "secret":
            return (
                f"apps[{i}]",
                f"corpid {app.appid!r} with the same secret as apps[{other}]: the same"
                " WeCom application twice",
                "each WeCom application has its own secret; keep one entry",
            )
        explicit = attr == "name" and self.model.apps[i].name is not None
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
            f"apps[{i}].secret" for i, a in enumerate(self.model.apps) if a.secret is not None
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
