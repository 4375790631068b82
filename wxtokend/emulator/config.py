"""The emulator's configuration: its dataclasses, validated on construction, and the YAML file.

Every value from a file, a flag or a control request goes through these dataclasses, so each
kind of value has one validator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from wxtokend.emulator.platform_config import EmulatedPlatform, platform_from
from wxtokend.emulator.suite_config import EmulatedSuite, suite_from

__all__ = [
    "SCALARS",
    "EmulatedApp",
    "EmulatorConfig",
    "EmulatorConfigError",
    "Faults",
    "Grant",
    "Owner",
    "faults_from",
    "load_emulator_config",
    "owner_of",
    "require",
]

Grant = Literal["classic", "stable"]
# Who a token or ticket belongs to: (appid, "") or, for a WeCom application, (corpid, secret).
Owner = tuple[str, str]

_KINDS = ("official", "wecom")
_NON_NEGATIVE = (
    "grace",
    "stable_window",
    "daily_quota",
    "minute_quota",
    "stable_force_daily",
    "stable_force_interval",
)


class EmulatorConfigError(ValueError):
    """The emulator's configuration (YAML, flags or control request) is invalid."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise EmulatorConfigError(message)


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Fractions in [0, 1] of token-endpoint calls that misbehave."""

    http_5xx: float = 0.0
    busy: float = 0.0
    garbage: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 3.0
    # Both hold the caller past its timeout (hang_seconds). hang: never processed, then
    # a 504 (a request stuck before WeChat handled it). lost: processed (and issued) at
    # once, its reply held (lost on the way back): for classic, the token the caller
    # holds has just been replaced.
    hang: float = 0.0
    lost: float = 0.0
    hang_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in ("http_5xx", "busy", "garbage", "slow", "hang", "lost"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{name} must be between 0 and 1, got {value}")
        require(self.slow_seconds >= 0, f"slow_seconds must be >= 0, got {self.slow_seconds}")
        require(self.hang_seconds >= 0, f"hang_seconds must be >= 0, got {self.hang_seconds}")


@dataclass(frozen=True, kw_only=True)
class EmulatedApp:
    """One app the emulator knows; ``faults`` None means the emulator-wide default.

    ``kind`` "official" (Official Account, Mini Program...) is identified by ``appid``. ``kind``
    "wecom" is one application of a WeCom corp, identified by ``corpid`` and ``secret``
    together: the applications of one corp share the corpid and differ in their secrets.
    """

    appid: str = ""
    secret: str
    faults: Faults | None = None
    kind: str = "official"
    corpid: str = ""

    def __post_init__(self) -> None:
        require(self.kind in _KINDS, f'kind must be "official" or "wecom", got {self.kind!r}')
        if self.kind == "wecom":
            require(not self.appid, "appid is not used by kind wecom: give corpid instead")
            require(bool(self.corpid), "corpid must be a non-empty string")
        else:
            require(bool(self.appid), "appid must be a non-empty string")
            require(not self.corpid, "corpid is only for kind wecom")
        require(bool(self.secret), "secret must be a non-empty string")

    @property
    def key(self) -> str:
        """The appid, or a WeCom app's corpid: what counters and control requests name it by."""
        return self.corpid if self.kind == "wecom" else self.appid


def owner_of(app: EmulatedApp) -> Owner:
    return (app.corpid, app.secret) if app.kind == "wecom" else (app.appid, "")


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """Everything the emulator needs; durations are in (possibly compressed) seconds."""

    host: str = "127.0.0.1"
    port: int = 0
    lifetime: int = 7200
    # expires_in of a ticket; None: the same as ``lifetime``.
    ticket_lifetime: int | None = None
    grace: float = 300
    stable_window: float = 300
    day_length: float = 86400
    daily_quota: int = 2000
    minute_quota: int = 0
    stable_force_daily: int = 20
    stable_force_interval: float = 30
    ip_whitelist: tuple[str, ...] = ()
    seed: int | None = None
    faults: Faults = field(default_factory=Faults)
    apps: tuple[EmulatedApp, ...] = ()
    platforms: tuple[EmulatedPlatform, ...] = ()
    suites: tuple[EmulatedSuite, ...] = ()

    def __post_init__(self) -> None:
        require(0 <= self.port <= 65535, f"port must be 0..65535, got {self.port}")
        require(self.lifetime > 0, f"lifetime must be > 0, got {self.lifetime}")
        require(
            self.ticket_lifetime is None or self.ticket_lifetime > 0,
            f"ticket_lifetime must be > 0, got {self.ticket_lifetime}",
        )
        require(self.day_length > 0, f"day_length must be > 0, got {self.day_length}")
        for name in _NON_NEGATIVE:
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for ip in self.ip_whitelist:
            require(_is_ip(ip), f"ip_whitelist: {ip!r} is not an IP address")
        seen = Counter(app.appid for app in self.apps if app.kind == "official")
        duplicates = sorted(appid for appid, n in seen.items() if n > 1)
        require(not duplicates, f"apps: duplicate appid {', '.join(duplicates)}")
        wecom = Counter((app.corpid, app.secret) for app in self.apps if app.kind == "wecom")
        twice = sorted(corpid for (corpid, _), n in wecom.items() if n > 1)
        require(not twice, f"apps: corpid {', '.join(twice)} lists the same secret twice")
        both = sorted(set(seen) & {corpid for corpid, _ in wecom})
        require(not both, f"apps: {', '.join(both)} is both an appid and a wecom corpid")

    @property
    def effective_ticket_lifetime(self) -> int:
        return self.lifetime if self.ticket_lifetime is None else self.ticket_lifetime


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _as_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EmulatorConfigError(f"{key} must be an integer")
    return value


def _as_float(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EmulatorConfigError(f"{key} must be a number")
    return float(value)


def _as_str(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise EmulatorConfigError(f"{key} must be a string (quote it if it looks like a number)")
    return value


def _as_mapping(value: object, key: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise EmulatorConfigError(f"{key} must be a mapping")
    return value


def _as_list(value: object, key: str) -> list[object]:
    if not isinstance(value, list):
        raise EmulatorConfigError(f"{key} must be a list")
    return value


@contextlib.contextmanager
def _within(where: str) -> Iterator[None]:
    """Prefix errors raised by the dataclasses' own checks with where the value came from."""
    try:
        yield
    except EmulatorConfigError as exc:
        raise EmulatorConfigError(f"{where}{exc}") from None


def _known_keys(data: Mapping[str, object], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        raise EmulatorConfigError(f"{where}unknown key {unknown[0]!r}")


def faults_from(value: object, where: str) -> Faults:
    data = _as_mapping(value, where)
    names = tuple(f.name for f in dataclasses.fields(Faults))
    _known_keys(data, names, f"{where}: ")
    numbers = {name: _as_float(data[name], f"{where}.{name}") for name in names if name in data}
    with _within(f"{where}."):
        return Faults(**numbers)


def _app_from(value: object, where: str) -> EmulatedApp:
    """An ``apps:`` entry: ``{appid, secret}``, or ``{kind: wecom, corpid, secret}``."""
    data = _as_mapping(value, where)
    _known_keys(data, ("kind", "appid", "corpid", "secret", "faults"), f"{where}: ")
    faults = data.get("faults")
    text = {
        key: _as_str(data.get(key, default), f"{where}.{key}")
        for key, default in (("kind", "official"), ("appid", ""), ("corpid", ""), ("secret", ""))
    }
    with _within(f"{where}."):
        return EmulatedApp(
            **text,
            faults=None if faults is None else faults_from(faults, "faults"),
        )


def _as_optional_int(value: object, key: str) -> int | None:
    return None if value is None else _as_int(value, key)


# The plain keys of EmulatorConfig and how a YAML value becomes each.
SCALARS: dict[str, Callable[[object, str], object]] = {
    "host": _as_str,
    "port": _as_int,
    "lifetime": _as_int,
    "ticket_lifetime": _as_optional_int,
    "grace": _as_float,
    "stable_window": _as_float,
    "day_length": _as_float,
    "daily_quota": _as_int,
    "minute_quota": _as_int,
    "stable_force_daily": _as_int,
    "stable_force_interval": _as_float,
    "seed": _as_optional_int,
}


def _config_from(value: object) -> EmulatorConfig:
    data = _as_mapping({} if value is None else value, "the top level")
    _known_keys(data, (*SCALARS, "ip_whitelist", "faults", "apps", "platforms", "suites"), "")
    kwargs: dict[str, Any] = {
        key: convert(data[key], key) for key, convert in SCALARS.items() if key in data
    }
    if "ip_whitelist" in data:
        ips = _as_list(data["ip_whitelist"], "ip_whitelist")
        kwargs["ip_whitelist"] = tuple(
            _as_str(ip, f"ip_whitelist[{i}]") for i, ip in enumerate(ips)
        )
    if "faults" in data:
        kwargs["faults"] = faults_from(data["faults"], "faults")
    if "apps" in data:
        apps = _as_list(data["apps"], "apps")
        kwargs["apps"] = tuple(_app_from(app, f"apps[{i}]") for i, app in enumerate(apps))
    if "platforms" in data:
        entries = _as_list(data["platforms"], "platforms")
        try:
            kwargs["platforms"] = tuple(
                platform_from(p, f"platforms[{i}]") for i, p in enumerate(entries)
            )
        except ValueError as exc:
            raise EmulatorConfigError(str(exc)) from None
    if "suites" in data:
        entries = _as_list(data["suites"], "suites")
        try:
            kwargs["suites"] = tuple(suite_from(s, f"suites[{i}]") for i, s in enumerate(entries))
        except ValueError as exc:
            raise EmulatorConfigError(str(exc)) from None
    return EmulatorConfig(**kwargs)


def load_emulator_config(path: Path) -> EmulatorConfig:
    """Read a YAML file with EmulatorConfig's keys; errors name the file and the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EmulatorConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise EmulatorConfigError(f"{path}: cannot read: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise EmulatorConfigError(f"{path}: not valid YAML{where}") from exc
    try:
        return _config_from(data)
    except EmulatorConfigError as exc:
        raise EmulatorConfigError(f"{path}: {exc}") from exc
