"""The resolved config: the frozen objects the rest of wxtokend is given.

Everything here is already checked and has its secrets read; nothing is a YAML shape
any more (that is :mod:`wxtokend.config.models`). Also the small vocabulary both sides
share: how a token is fetched, which tickets each kind of app has, the default bases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wxtokend.asgi import Listen, parse_listen
from wxtokend.errors import ConfigError
from wxtokend.fleet import FleetSettings
from wxtokend.redact import Secret

__all__ = [
    "COMPONENT_FILE",
    "DEFAULT_API_BASE",
    "DEFAULT_WECOM_API_BASE",
    "OUTPUT_DIR_MODE",
    "TICKETS_FOR",
    "AdminConfig",
    "ApiProxyConfig",
    "AppConfig",
    "Config",
    "Grant",
    "GrantChoice",
    "PlatformConfig",
    "Ticket",
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
class PlatformConfig:
    """A third-party platform, its secrets already read: an Open Platform 第三方平台
    (``product="open"``: component_appid, authorizers) or a WeCom 第三方应用
    (``product="wecom"``: the suite_id in ``component_appid``, corps as authorizers).

    Its upper token (component or suite) and each account's token are files under
    ``output_dir/<name>/``; its pushed ticket and the accounts' refresh tokens or
    permanent codes are kept in ``state_dir/<name>/``, which consumers cannot read.
    """

    name: str
    component_appid: str
    secret: Secret  # the component_appsecret
    token: Secret  # the message-crypto Token
    encoding_aes_key: Secret
    secret_source: str
    api_base: str = DEFAULT_API_BASE
    authorizers: tuple[str, ...] = ()  # expected authorizer appids (refresh tokens come later)
    product: Literal["open", "wecom"] = "open"  # wecom: a WeCom suite (component_appid: suite_id)
    provider_corpid: str | None = None  # WeCom: the provider token's corpid and secret
    provider_secret: Secret | None = None

    def component_app(self) -> AppConfig:
        """The component as the WeChat client sees an app: its appid, secret and api_base."""
        return AppConfig(
            appid=self.component_appid,
            # Its label in logs and metrics; its files are COMPONENT_FILE in the platform's dir.
            name=f"{self.name}/{'component' if self.product == 'open' else 'suite'}",
            grant="classic",
            secret=self.secret,
            secret_source=self.secret_source,
            api_base=self.api_base,
        )

    def provider_app(self) -> AppConfig | None:
        """A WeCom suite's service provider, as the WeChat client sees an app."""
        if self.provider_corpid is None or self.provider_secret is None:
            return None
        return AppConfig(
            appid=self.provider_corpid,
            name=f"{self.name}/provider",
            grant="classic",
            secret=self.provider_secret,
            secret_source="provider_secret",  # noqa: S106  # where it is set, not its value
            api_base=self.api_base,
        )


COMPONENT_FILE = "component_access_token"  # a file name, not a credential


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    """Where the admin API listens and how it paces passive refreshes."""

    listen: Listen | None = field(default_factory=lambda: parse_listen("127.0.0.1:9735"))
    probe_listen: Listen | None = None
    start_timeout: float = 60.0
    passive_min_interval: float = 10.0
    passive_daily_limit: int = 100


@dataclass(frozen=True, kw_only=True)
class ApiProxyConfig:
    """Where the WeChat API proxy listens, and what it may hold and wait for."""

    listen: Listen
    replay_body_limit: int = 256 * 1024
    max_connections: int = 256
    request_timeout: float = 60.0


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
    platforms: tuple[PlatformConfig, ...] = ()
    state_dir: Path = Path("/var/lib/wxtokend")
    callback_listen: Listen | None = None  # where WeChat's callbacks arrive
    api_proxy: ApiProxyConfig | None = None

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
