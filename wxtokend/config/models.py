"""The config file's shape, as pydantic models, and the parsers of its values.

The models say what the YAML may hold (and give the JSON Schema for editors); they
check each value on its own. What needs more than one value, the file system or the
environment (secrets, the group, duplicates) is :mod:`wxtokend.config.resolve`'s job.
The models' class names are in the schema's ``$defs``: renaming one changes it.
"""

from __future__ import annotations

import math
import re
import stat
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from wxtokend.asgi import parse_listen
from wxtokend.config.platform_models import _CallbackModel, _PlatformModel, _SuiteModel
from wxtokend.config.proxy_model import _ApiProxyModel
from wxtokend.config.settings import (
    DEFAULT_API_BASE,
    DEFAULT_WECOM_API_BASE,
    GrantChoice,
    Ticket,
)
from wxtokend.config.values import _APPID, _NAME, _check_http_url, _check_name

__all__ = [
    "_APPID",
    "_NAME",
    "_REDIS_URL",
    "Duration",
    "FileMode",
    "Group",
    "_AdminModel",
    "_AppModel",
    "_ConfigModel",
    "_FleetModel",
    "_PlatformModel",
    "_RetryModel",
    "_SettingsModel",
    "_check_http_url",
    "_check_name",
    "json_schema",
    "parse_duration",
]

_REDIS_URL = re.compile(r"^(redis|rediss|unix)://")
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
    platforms: list[_PlatformModel] = Field(
        default_factory=list, description="Open Platform third-party platforms."
    )
    suites: list[_SuiteModel] = Field(
        default_factory=list, description="WeCom third-party apps (suites)."
    )
    state_dir: str = Field(
        "/var/lib/wxtokend",
        description="Private state (mode 0700): platforms' pushed tickets and refresh tokens.",
    )
    callback: _CallbackModel = Field(default_factory=lambda: _CallbackModel.model_validate({}))
    api_proxy: _ApiProxyModel | None = Field(
        None, description="A WeChat API proxy that puts each app's token into its calls."
    )

    @field_validator("api_base", "wecom_api_base", "proxy")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return _check_http_url(value)


class _ConfigModel(_SettingsModel):
    """wxtokend configuration."""

    model_config = ConfigDict(
        extra="forbid",
        title="wxtokend configuration",
        json_schema_extra={
            "anyOf": [{"required": ["apps"]}, {"required": ["platforms"]}, {"required": ["suites"]}]
        },
    )

    apps: list[_AppModel] = Field(
        default_factory=list,
        description="The apps whose tokens are kept (at least one, unless platforms: lists one).",
    )

    @model_validator(mode="after")
    def _something_to_keep(self) -> _ConfigModel:
        if not self.apps and not self.platforms and not self.suites:
            raise ValueError("list at least one app under apps: (or platforms: or suites:)")
        return self


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors and CI linters."""
    return _ConfigModel.model_json_schema()
