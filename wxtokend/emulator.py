"""A WeChat emulator: a loopback HTTP server that hands out access_tokens like WeChat does.

It lets people develop offline and lets the end-to-end tests exercise the real client.
Time is compressed by configuration: lifetimes of seconds, a quota "day" of seconds.

What it models:

- ``GET /cgi-bin/token`` (classic): every fetch issues a new token; the previous one keeps
  working for a grace period, anything older dies at once; a daily quota (45009).
- ``POST /cgi-bin/stable_token``: normal mode hands every caller the same token and renews it
  only inside the last ``stable_window`` seconds (the old one lives until its own expiry);
  force mode invalidates at once, at most ``stable_force_daily`` a day and ``stable_force_interval``
  seconds apart.
- The credential errors WeChat returns (40002, 41002, 41004, 40013, 40125/40001, 40164), wrong
  methods (43002), malformed bodies (47001), a per-minute quota (45011).
- ``GET /cgi-bin/getcallbackip`` as the "is this token still good?" check (40001/42001/41001),
  for every kind of token.
- Tickets: ``GET /cgi-bin/ticket/getticket?type=jsapi|wx_card`` (Official Account, Mini
  Program) and WeCom's ``GET /cgi-bin/get_jsapi_ticket`` and
  ``GET /cgi-bin/ticket/get?type=agent_config``. They need a currently valid token of the right
  family (41001 missing, 42001 expired, 40001 invalidated or unknown; 40097 for a bad type).
  Every call issues a new ticket of ``ticket_lifetime`` seconds; the previous ticket of that
  app (WeCom: application) and type keeps working for ``grace`` seconds, older ones die at once,
  like classic tokens. Tickets outlive the token they were fetched with. No ticket quota.
  ``GET /emulator/check-ticket?ticket=T`` tells whether a ticket is valid.
- WeCom (企业微信) ``GET /cgi-bin/gettoken?corpid=&corpsecret=``: apps of ``kind: wecom`` are
  applications identified by corpid and secret together (one corp has several). A repeat fetch
  returns the same token and its remaining life until it expires, then a new one. Errors 41002,
  41004, 40013, 40001 (wrong secret), 45009 (``daily_quota`` per application), 45011, with
  WeCom's ``hint: [...], from ip: ..., more info at ...`` suffix. Counters of WeCom apps are
  keyed by corpid, so the applications of one corp add up.
- Injected faults on the token and ticket endpoints (HTTP 502, errcode -1, garbage bodies,
  slowness), and control endpoints under ``/emulator/`` to read counters, add apps, set faults
  and revoke tokens.

What it does not model (yet): ``clear_quota`` and ``openapi/quota/get``, ticket quotas and
ticket revocation, WeCom's trusted-IP list (60020) and its 40014 for rejected tokens (40001
stands in), third-party platforms, and every other WeChat API. The state keeps per-kind token
slots, per-(app, type) ticket slots, token and ticket indexes and per-app daily usage keyed by
API name, so those slot in as new kinds and new usage keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import ipaddress
import json
import math
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from wxtokend.asgi import base_url, serve, tcp_listener

__all__ = [
    "EmulatedApp",
    "Emulator",
    "EmulatorConfig",
    "EmulatorConfigError",
    "Fault",
    "Faults",
    "Grant",
    "WeChatState",
    "add_arguments",
    "config_from_args",
    "load_emulator_config",
    "run_from_args",
]

Grant = Literal["classic", "stable"]
Reply = dict[str, object]
# Set by a "lost" fault while a call is handled: how long to hold its finished reply.
_HOLD: contextvars.ContextVar[float] = contextvars.ContextVar("hold", default=0.0)


def _held(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """The handler, its reply held back if a lost fault hit the call (after it took effect)."""

    async def handle(request: Request) -> Response:
        hold = _HOLD.set(0.0)
        try:
            response = await handler(request)
            seconds = _HOLD.get()
        finally:
            _HOLD.reset(hold)
        if seconds:
            await asyncio.sleep(seconds)
        return response

    return handle


# The endpoints whose calls are counted and may be hijacked by a fault.
_Endpoint = Literal[
    "token", "stable_token", "gettoken", "getticket", "get_jsapi_ticket", "ticket_get"
]
# Token families: classic and stable (Official Account, Mini Program...), and WeCom.
_TokenKind = Literal["classic", "stable", "wecom"]
# Who a token or ticket belongs to: (appid, "") or, for a WeCom application, (corpid, secret).
_Owner = tuple[str, str]

# Every counter is reported for every app, so consumers can index without .get().
_COUNTERS = (
    "token",
    "stable_token",
    "stable_token_force",
    "gettoken",
    "getcallbackip",
    "issued",
    "getticket",
    "get_jsapi_ticket",
    "ticket_get",
    "tickets_issued",
    "faults",
)
_TOKEN_KINDS: tuple[_TokenKind, ...] = ("classic", "stable", "wecom")
_OFFICIAL: tuple[_TokenKind, ...] = ("classic", "stable")
_KINDS = ("official", "wecom")
_NOT_LATEST = "invalid credential, access_token is invalid or not latest"
_BAD_GATEWAY = (
    "<html><head><title>502 Bad Gateway</title></head><body>"
    "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)

_GATEWAY_TIMEOUT = (
    "<html><head><title>504 Gateway Time-out</title></head><body>"
    "<center><h1>504 Gateway Time-out</h1></center><hr><center>nginx</center></body></html>"
)

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


def _require(ok: bool, message: str) -> None:
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
            _require(0.0 <= value <= 1.0, f"{name} must be between 0 and 1, got {value}")
        _require(self.slow_seconds >= 0, f"slow_seconds must be >= 0, got {self.slow_seconds}")
        _require(self.hang_seconds >= 0, f"hang_seconds must be >= 0, got {self.hang_seconds}")


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
        _require(self.kind in _KINDS, f'kind must be "official" or "wecom", got {self.kind!r}')
        if self.kind == "wecom":
            _require(not self.appid, "appid is not used by kind wecom: give corpid instead")
            _require(bool(self.corpid), "corpid must be a non-empty string")
        else:
            _require(bool(self.appid), "appid must be a non-empty string")
            _require(not self.corpid, "corpid is only for kind wecom")
        _require(bool(self.secret), "secret must be a non-empty string")

    @property
    def key(self) -> str:
        """The appid, or a WeCom app's corpid: what counters and control requests name it by."""
        return self.corpid if self.kind == "wecom" else self.appid


def _owner_of(app: EmulatedApp) -> _Owner:
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

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, f"port must be 0..65535, got {self.port}")
        _require(self.lifetime > 0, f"lifetime must be > 0, got {self.lifetime}")
        _require(
            self.ticket_lifetime is None or self.ticket_lifetime > 0,
            f"ticket_lifetime must be > 0, got {self.ticket_lifetime}",
        )
        _require(self.day_length > 0, f"day_length must be > 0, got {self.day_length}")
        for name in _NON_NEGATIVE:
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for ip in self.ip_whitelist:
            _require(_is_ip(ip), f"ip_whitelist: {ip!r} is not an IP address")
        seen = Counter(app.appid for app in self.apps if app.kind == "official")
        duplicates = sorted(appid for appid, n in seen.items() if n > 1)
        _require(not duplicates, f"apps: duplicate appid {', '.join(duplicates)}")
        wecom = Counter((app.corpid, app.secret) for app in self.apps if app.kind == "wecom")
        twice = sorted(corpid for (corpid, _), n in wecom.items() if n > 1)
        _require(not twice, f"apps: corpid {', '.join(twice)} lists the same secret twice")
        both = sorted(set(seen) & {corpid for corpid, _ in wecom})
        _require(not both, f"apps: {', '.join(both)} is both an appid and a wecom corpid")

    @property
    def effective_ticket_lifetime(self) -> int:
        return self.lifetime if self.ticket_lifetime is None else self.ticket_lifetime


class Fault(Enum):
    """How an injected fault makes a token-endpoint call misbehave."""

    HTTP_5XX = "http_5xx"
    BUSY = "busy"
    GARBAGE = "garbage"
    SLOW = "slow"
    HANG = "hang"
    LOST = "lost"


# --------------------------------------------------------------------------- state


@dataclass(slots=True, kw_only=True)
class _Token:
    """An access_token or a ticket; ``kind`` is the token's family or the ticket's type."""

    value: str
    owner: _Owner
    kind: str
    expires_at: float
    # Invalidation (a newer fetch, a force, a revoke) is reported as 40001, expiry as 42001.
    invalid_at: float = math.inf

    @property
    def appid(self) -> str:
        """The appid or corpid: the key its counters are kept under."""
        return self.owner[0]

    def status(self, now: float) -> Literal["valid", "invalid", "expired"]:
        if now >= self.invalid_at and self.invalid_at < self.expires_at:
            return "invalid"
        return "expired" if now >= self.expires_at else "valid"


@dataclass(slots=True)
class _Slot:
    """The only tokens of one owner and kind that can still be valid: memory stays bounded."""

    current: _Token | None = None
    previous: _Token | None = None
    last_force: float = -math.inf

    def rotate(self, fresh: _Token, *, now: float, previous_until: float) -> _Token | None:
        """Make ``fresh`` current; the old current lives until ``previous_until`` at most.

        Returns the token before that, which dies now (if it has not already).
        """
        evicted = self.previous
        if evicted is not None:
            evicted.invalid_at = min(evicted.invalid_at, now)
        if self.current is not None:
            self.current.invalid_at = min(self.current.invalid_at, previous_until)
        self.previous, self.current = self.current, fresh
        return evicted


@dataclass(slots=True, kw_only=True)
class _Usage:
    """Quota counters of one app; reset lazily when the day or minute index changes."""

    day: int
    minute: int
    daily: dict[str, int] = field(default_factory=dict)  # calls today, by API name
    minute_calls: int = 0

    def used(self, api: str) -> int:
        return self.daily.get(api, 0)

    def use(self, api: str) -> None:
        self.daily[api] = self.daily.get(api, 0) + 1


def _error(errcode: int, errmsg: str) -> Reply:
    return {"errcode": errcode, "errmsg": errmsg}


def _rid() -> str:
    """WeChat appends a request id to many messages; clients must cope with it."""
    raw = os.urandom(12).hex()
    return f"rid: {raw[:8]}-{raw[8:16]}-{raw[16:]}"


def _wecom_error(errcode: int, message: str, *, client_ip: str, now: float) -> Reply:
    """WeCom's error shape: the message, then a hint, the caller's IP and a help link."""
    hint = f"{int(now)}_{os.urandom(1)[0] % 100:02d}_{os.urandom(16).hex()}"
    return _error(
        errcode,
        f"{message}, hint: [{hint}], from ip: {client_ip}, "
        f"more info at https://open.work.weixin.qq.com/devtool/query?e={errcode}",
    )


def _wecom_ok(**fields: object) -> Reply:
    return {"errcode": 0, "errmsg": "ok", **fields}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ipv6_form(ip: str) -> str:
    return f"::ffff:{ip}" if ":" not in ip else ip


class WeChatState:
    """WeChat's token bookkeeping as pure logic: no I/O, time comes from ``clock``."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng if rng is not None else random.Random(config.seed)
        self._start = clock()
        self._whitelist = frozenset(config.ip_whitelist)
        self._secrets = {app.appid: app.secret for app in config.apps if app.kind == "official"}
        self._corps: dict[str, set[str]] = {}  # corpid -> the secrets of its applications
        for app in config.apps:
            if app.kind == "wecom":
                self._corps.setdefault(app.corpid, set()).add(app.secret)
        self._default_faults = config.faults
        self._app_faults = {_owner_of(app): app.faults for app in config.apps if app.faults}
        self._slots: dict[_TokenKind, dict[_Owner, _Slot]] = {kind: {} for kind in _TOKEN_KINDS}
        self._tokens: dict[str, _Token] = {}
        self._ticket_slots: dict[tuple[_Owner, str], _Slot] = {}
        # Tickets stay indexed after they die, so check-ticket can say why; see _forget_tickets.
        self._tickets: dict[str, _Token] = {}
        self._ticket_sweep_at = self._start + config.day_length
        self._usage: dict[_Owner, _Usage] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def now(self) -> float:
        return self._clock()

    # -- operator controls

    def set_app(self, appid: str, secret: str) -> None:
        """Add an app or change its secret; tokens already issued are left alone."""
        EmulatedApp(appid=appid, secret=secret)  # same validation as the config
        _require(appid not in self._corps, f"{appid} is already a wecom corpid")
        self._secrets[appid] = secret

    def set_wecom_app(self, corpid: str, secret: str) -> None:
        """Add an application with ``secret`` to WeCom corp ``corpid`` (added if new)."""
        EmulatedApp(kind="wecom", corpid=corpid, secret=secret)
        _require(corpid not in self._secrets, f"{corpid} is already an appid")
        self._corps.setdefault(corpid, set()).add(secret)

    def set_faults(self, appid: str | None, faults: Faults | None, *, secret: str = "") -> None:
        """Set one app's faults (None: back to the default), or the default when appid is None.

        For WeCom, ``appid`` is the corpid: without ``secret`` the faults apply to every
        application of the corp, with it to that application only (it wins over the corp's).
        """
        if appid is None:
            self._default_faults = faults or Faults()
        elif faults is None:
            self._app_faults.pop((appid, secret), None)
        else:
            self._app_faults[(appid, secret)] = faults

    def faults_for(self, appid: str, secret: str = "") -> Faults:
        for owner in ((appid, secret), (appid, "")):
            faults = self._app_faults.get(owner)
            if faults is not None:
                return faults
        return self._default_faults

    def revoke(
        self, appid: str, grant: Grant | Literal["wecom"], *, secret: str | None = None
    ) -> None:
        """Kill tokens now, as if done elsewhere.

        ``grant`` "classic" or "stable": the app's current and previous token of that grant.
        ``grant`` "wecom": ``appid`` is a corpid, and the tokens of all its applications die,
        or only those of the application whose secret is ``secret``.
        """
        if grant == "wecom":
            known = self._corps.get(appid)
            if known is None:
                raise ValueError(f"unknown corpid {appid!r}")
            if secret is not None and secret not in known:
                raise ValueError(f"corpid {appid!r} has no application with that secret")
            owners = [(appid, s) for s in known if secret is None or s == secret]
        else:
            if appid not in self._secrets:
                raise ValueError(f"unknown appid {appid!r}")
            if secret is not None:
                raise ValueError('secret is only for grant "wecom"')
            owners = [(appid, "")]
        now = self._clock()
        for owner in owners:
            slot = self._slots[grant].get(owner)
            if slot is None:
                continue
            for token in (slot.current, slot.previous):
                if token is not None:
                    token.invalid_at = min(token.invalid_at, now)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per appid: every configured app and every appid seen, all keys present.

        WeCom applications are counted under their corpid: the applications of one corp add up.
        """
        apps = {appid: dict(counts) for appid, counts in self._counts.items()}
        for appid in (*self._secrets, *self._corps):
            apps.setdefault(appid, dict.fromkeys(_COUNTERS, 0))
        return apps

    def reset_stats(self) -> None:
        self._counts.clear()

    # -- the request path

    def count(self, appid: str, counter: str) -> None:
        counts = self._counts.get(appid)
        if counts is None:
            counts = self._counts[appid] = dict.fromkeys(_COUNTERS, 0)
        counts[counter] += 1

    def admit(
        self, endpoint: _Endpoint, appid: str, *, force: bool = False, secret: str = ""
    ) -> Fault | None:
        """Count a call of a token or ticket endpoint and decide whether a fault hijacks it.

        ``appid`` is the corpid for WeCom, with the application's ``secret``. Slow calls count
        as faults too, although they go on to answer (and issue) normally.
        """
        self.count(appid, endpoint)
        if force:
            self.count(appid, "stable_token_force")
        fault = self._roll(self.faults_for(appid, secret))
        if fault is not None:
            self.count(appid, "faults")
        return fault

    def token_owner(self, access_token: str) -> tuple[str, str]:
        """(appid or corpid, WeCom secret or "") of a token ever issued; ("", "") otherwise.

        The ticket endpoints know the app only through the token: this picks the counters and
        faults of a ticket call.
        """
        token = self._tokens.get(access_token)
        return token.owner if token is not None else ("", "")

    def _roll(self, faults: Faults) -> Fault | None:
        # One draw split into consecutive bands: each fraction is honoured exactly while they
        # sum to at most 1, and the order decides which wins when they do not.
        bands = (
            (Fault.HTTP_5XX, faults.http_5xx),
            (Fault.BUSY, faults.busy),
            (Fault.GARBAGE, faults.garbage),
            (Fault.SLOW, faults.slow),
            (Fault.HANG, faults.hang),
            (Fault.LOST, faults.lost),
        )
        if not any(fraction for _, fraction in bands):
            return None
        draw = self._rng.random()
        for fault, fraction in bands:
            if draw < fraction:
                return fault
            draw -= fraction
        return None

    def garbage_body(self) -> bytes:
        """A body no JSON parser accepts: either not JSON at all, or JSON cut off mid-token."""
        if self._rng.random() < 0.5:
            return b"upstream connect error or disconnect/reset before headers"
        return b'{"access_token":"' + secrets.token_urlsafe(24).encode()

    def classic_token(self, *, grant_type: str, appid: str, secret: str, client_ip: str) -> Reply:
        """``GET /cgi-bin/token``: a new token per call, the previous one lives on for ``grace``."""
        now = self._clock()
        rejected = self._check_credentials(grant_type, appid, secret, client_ip, stable=False)
        if rejected is not None:
            return rejected
        usage = self._usage_of((appid, ""), now)
        if usage.used("token") >= self.config.daily_quota:
            return _error(45009, f"reach max api daily quota limit {_rid()}")
        if self._over_minute_quota(usage):
            return _minute_quota_error()
        usage.use("token")
        return self._fresh(
            self._issue("classic", (appid, ""), now, previous_until=now + self.config.grace)
        )

    def stable_token(
        self, *, grant_type: str, appid: str, secret: str, force: bool, client_ip: str
    ) -> Reply:
        """``POST /cgi-bin/stable_token`` in normal or force mode."""
        now = self._clock()
        rejected = self._check_credentials(grant_type, appid, secret, client_ip, stable=True)
        if rejected is not None:
            return rejected
        usage = self._usage_of((appid, ""), now)
        if self._over_minute_quota(usage):
            return _minute_quota_error()
        slot = self._slot("stable", (appid, ""))
        if force:
            return self._force_stable(appid, slot, usage, now)
        current = slot.current
        if current is not None and self._lasts_beyond_window(current, now):
            return self._grant(current, now)
        # Renewal: the old token was handed out to others and keeps working until its expiry.
        return self._fresh(self._issue("stable", (appid, ""), now, previous_until=math.inf))

    def _lasts_beyond_window(self, token: _Token, now: float) -> bool:
        alive = token.status(now) == "valid"
        return alive and token.expires_at - now > self.config.stable_window

    def _force_stable(self, appid: str, slot: _Slot, usage: _Usage, now: float) -> Reply:
        current = slot.current
        recent = now - slot.last_force < self.config.stable_force_interval
        if recent and current is not None and current.status(now) == "valid":
            return self._grant(current, now)  # WeChat: "otherwise it will not refresh"
        # A dead current token (revoked, expired) is replaced even inside the interval: handing
        # it out again would only make the caller force once more.
        if usage.used("stable_token_force") >= self.config.stable_force_daily:
            return _error(45009, f"reach max api daily quota limit {_rid()}")
        usage.use("stable_token_force")
        slot.last_force = now
        return self._fresh(self._issue("stable", (appid, ""), now, previous_until=now))

    def wecom_token(self, *, corpid: str, corpsecret: str, client_ip: str) -> Reply:
        """``GET /cgi-bin/gettoken`` (WeCom): the same token until it expires, then a new one."""
        now = self._clock()

        def fail(errcode: int, message: str) -> Reply:
            return _wecom_error(errcode, message, client_ip=client_ip, now=now)

        if not corpid:
            return fail(41002, "corpid missing")
        if not corpsecret:
            return fail(41004, "corpsecret missing")
        known = self._corps.get(corpid)
        if known is None:
            return fail(40013, "invalid corpid")
        if not any(secrets.compare_digest(corpsecret.encode(), s.encode()) for s in known):
            # WeCom also documents 40091 ("secret is invalid") for a secret of the wrong
            # format; the emulator answers every wrong secret with 40001.
            return fail(40001, "invalid credential")
        owner = (corpid, corpsecret)
        usage = self._usage_of(owner, now)
        if usage.used("gettoken") >= self.config.daily_quota:
            return fail(45009, "api freq out of limit")
        if self._over_minute_quota(usage):
            return fail(45011, "api minute-quota reach limit, retry next minute")
        usage.use("gettoken")
        current = self._slot("wecom", owner).current
        if current is not None and current.status(now) == "valid":
            return _wecom_ok(**self._grant(current, now))
        return _wecom_ok(**self._fresh(self._issue("wecom", owner, now, previous_until=math.inf)))

    def check_token(self, token: str) -> Reply:
        """``GET /cgi-bin/getcallbackip``: answers whether ``token`` is usable right now."""
        found = self._tokens.get(token) if token else None
        self.count(found.appid if found else "", "getcallbackip")
        rejected = self._reject_token(token, _TOKEN_KINDS, self._clock())
        if rejected is not None:
            return rejected
        if found is not None and found.kind == "wecom":
            return _wecom_ok(ip_list=["127.0.0.1"])
        return {"ip_list": ["127.0.0.1"]}

    def _reject_token(
        self,
        token: str,
        kinds: tuple[_TokenKind, ...],
        now: float,
        *,
        wecom_ip: str | None = None,
    ) -> Reply | None:
        """The error for a token that is missing, expired, or not a valid one of ``kinds``.

        Worded like WeChat, or like WeCom when ``wecom_ip`` (the caller's address) is given.
        """
        found = self._tokens.get(token) if token else None
        status = found.status(now) if found is not None and found.kind in kinds else "invalid"
        if token and status == "valid":
            return None
        if not token:
            code, message = 41001, "access_token missing"
        elif status == "expired":
            code, message = 42001, "access_token expired"
        else:
            code, message = 40001, _NOT_LATEST
        if wecom_ip is not None:
            return _wecom_error(code, message, client_ip=wecom_ip, now=now)
        return _error(code, message if code == 41001 else f"{message} {_rid()}")

    # -- tickets

    def getticket(self, *, access_token: str, ticket_type: str) -> Reply:
        """``GET /cgi-bin/ticket/getticket``: a new ``jsapi`` or ``wx_card`` ticket per call."""
        return self._ticket(access_token, ticket_type, _OFFICIAL, ("jsapi", "wx_card"), None)

    def wecom_jsapi_ticket(self, *, access_token: str, client_ip: str) -> Reply:
        """``GET /cgi-bin/get_jsapi_ticket`` (WeCom): a new JS-SDK ticket per call."""
        return self._ticket(access_token, "jsapi", ("wecom",), ("jsapi",), client_ip)

    def wecom_ticket(self, *, access_token: str, ticket_type: str, client_ip: str) -> Reply:
        """``GET /cgi-bin/ticket/get`` (WeCom): only ``type=agent_config``, new per call."""
        return self._ticket(access_token, ticket_type, ("wecom",), ("agent_config",), client_ip)

    def check_ticket(self, ticket: str) -> Reply:
        """``GET /emulator/check-ticket``: whether ``ticket`` works now, and whose it is."""
        found = self._tickets.get(ticket)
        if found is None:
            return {"valid": False, "reason": "unknown"}
        status = found.status(self._clock())
        if status == "valid":
            return {"valid": True, "appid": found.appid, "type": found.kind}
        return {"valid": False, "reason": "expired" if status == "expired" else "invalidated"}

    def _ticket(
        self,
        access_token: str,
        ticket_type: str,
        kinds: tuple[_TokenKind, ...],
        types: tuple[str, ...],
        wecom_ip: str | None,
    ) -> Reply:
        now = self._clock()
        rejected = self._reject_token(access_token, kinds, now, wecom_ip=wecom_ip)
        if rejected is not None:
            return rejected
        if ticket_type not in types:
            if wecom_ip is not None:
                return _wecom_error(40097, "invalid args", client_ip=wecom_ip, now=now)
            return _error(40097, "invalid args")
        owner = self._tokens[access_token].owner
        lifetime = self.config.effective_ticket_lifetime
        ticket = _Token(
            value=secrets.token_urlsafe(64),
            owner=owner,
            kind=ticket_type,
            expires_at=now + lifetime,
        )
        slot = self._ticket_slots.setdefault((owner, ticket_type), _Slot())
        slot.rotate(ticket, now=now, previous_until=now + self.config.grace)
        self._forget_tickets(now)
        self._tickets[ticket.value] = ticket
        self.count(owner[0], "tickets_issued")
        return {"errcode": 0, "errmsg": "ok", "ticket": ticket.value, "expires_in": lifetime}

    def _forget_tickets(self, now: float) -> None:
        """Once a quota day, drop tickets dead for over a day: check-ticket then says unknown."""
        if now < self._ticket_sweep_at:
            return
        self._ticket_sweep_at = now + self.config.day_length
        horizon = now - self.config.day_length
        self._tickets = {
            value: ticket
            for value, ticket in self._tickets.items()
            if min(ticket.invalid_at, ticket.expires_at) > horizon
        }

    # -- helpers

    def _check_credentials(
        self, grant_type: str, appid: str, secret: str, client_ip: str, *, stable: bool
    ) -> Reply | None:
        if grant_type != "client_credential":
            return _error(40002, "invalid grant_type")
        if not appid:
            return _error(41002, "appid missing")
        if not secret:
            return _error(41004, "appsecret missing")
        expected = self._secrets.get(appid)
        if expected is None:
            return _error(40013, "invalid appid")
        if not secrets.compare_digest(secret.encode(), expected.encode()):
            # The stable endpoint really answers a wrong secret with 40001.
            return _error(40001, _NOT_LATEST) if stable else _error(40125, "invalid appsecret")
        if self._whitelist and client_ip not in self._whitelist:
            return _error(
                40164,
                f"invalid ip {client_ip} ipv6 {_ipv6_form(client_ip)}, not in whitelist {_rid()}",
            )
        return None

    def _usage_of(self, owner: _Owner, now: float) -> _Usage:
        elapsed = now - self._start
        day, minute = int(elapsed // self.config.day_length), int(elapsed // 60)
        usage = self._usage.get(owner)
        if usage is None:
            usage = self._usage[owner] = _Usage(day=day, minute=minute)
        if usage.day != day:
            usage.day = day
            usage.daily.clear()
        if usage.minute != minute:
            usage.minute = minute
            usage.minute_calls = 0
        return usage

    def _over_minute_quota(self, usage: _Usage) -> bool:
        if not self.config.minute_quota:
            return False
        usage.minute_calls += 1
        return usage.minute_calls > self.config.minute_quota

    def _slot(self, kind: _TokenKind, owner: _Owner) -> _Slot:
        slots = self._slots[kind]
        slot = slots.get(owner)
        if slot is None:
            slot = slots[owner] = _Slot()
        return slot

    def _issue(
        self, kind: _TokenKind, owner: _Owner, now: float, *, previous_until: float
    ) -> _Token:
        """Make a new current token; the old current lives until ``previous_until`` at most."""
        token = _Token(
            value=secrets.token_urlsafe(96),
            owner=owner,
            kind=kind,
            expires_at=now + self.config.lifetime,
        )
        evicted = self._slot(kind, owner).rotate(token, now=now, previous_until=previous_until)
        if evicted is not None:
            # Two fetches back is invalid anyway: forgetting it keeps memory bounded.
            self._tokens.pop(evicted.value, None)
        self._tokens[token.value] = token
        self.count(owner[0], "issued")
        return token

    def _fresh(self, token: _Token) -> Reply:
        # The configured lifetime, not expires_at - now: float rounding could make that 7199.
        return {"access_token": token.value, "expires_in": self.config.lifetime}

    def _grant(self, token: _Token, now: float) -> Reply:
        return {"access_token": token.value, "expires_in": math.floor(token.expires_at - now)}


def _minute_quota_error() -> Reply:
    return _error(45011, "api minute-quota reach limit  mustslower  retry next minute")


# --------------------------------------------------------------------------- HTTP


def _client_ip(request: Request) -> str:
    host = request.client.host if request.client else ""
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; the whitelist holds a.b.c.d.
    return host.removeprefix("::ffff:") if "." in host else host


def _parse_object(raw: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _text_field(body: Mapping[str, object], key: str) -> str:
    """A string parameter; anything else counts as missing, as a lenient server would."""
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _required_text(body: Mapping[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _optional_text(body: Mapping[str, object], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string or absent")
    return value


def _grant_from(value: object) -> Grant | Literal["wecom"]:
    if value == "classic":
        return "classic"
    if value == "stable":
        return "stable"
    if value == "wecom":
        return "wecom"
    raise ValueError('grant must be "classic", "stable" or "wecom"')


def _control(
    action: Callable[[dict[str, object]], None],
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an operator action: JSON object in, ``{"ok": true}`` or HTTP 400 out."""

    async def endpoint(request: Request) -> Response:
        raw = await request.body()
        body = _parse_object(raw) if raw.strip() else {}
        try:
            if body is None:
                raise ValueError("body must be a JSON object")
            action(body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True})

    return endpoint


class Emulator:
    """The state behind a Starlette app, served by uvicorn on loopback.

    Control endpoints (JSON bodies; ``{"ok": true}`` or HTTP 400 with ``{"error": ...}``):

    - ``GET /emulator/stats``: ``{"apps": {appid or corpid: {counter: n}}, "now": t}``.
    - ``POST /emulator/reset-stats``.
    - ``POST /emulator/apps``: ``{"appid", "secret"}`` adds an app or changes its secret;
      ``{"kind": "wecom", "corpid", "secret"}`` adds an application to a WeCom corp.
    - ``POST /emulator/faults``: ``{"appid"?, "secret"?, "faults": {...} | null}``: one app's
      faults (WeCom: ``appid`` is the corpid; with ``secret``, one application only), or the
      default without ``appid``; null clears.
    - ``POST /emulator/revoke``: ``{"appid", "grant": "classic" | "stable"}``, or
      ``{"appid": corpid, "grant": "wecom"}`` for the tokens of every application of the corp,
      with ``"secret"`` for one application's only.
    - ``GET /emulator/check-ticket?ticket=T``: ``{"valid": true, "appid", "type"}`` or
      ``{"valid": false, "reason": "expired" | "invalidated" | "unknown"}``.
    """

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state = WeChatState(config, clock=clock)
        self.app = Starlette(
            routes=[
                Route("/cgi-bin/token", _held(self._token), methods=["GET", "POST"]),
                Route("/cgi-bin/stable_token", _held(self._stable_token), methods=["GET", "POST"]),
                Route("/cgi-bin/gettoken", _held(self._gettoken), methods=["GET"]),
                Route("/cgi-bin/getcallbackip", self._getcallbackip, methods=["GET"]),
                Route("/cgi-bin/ticket/getticket", _held(self._getticket), methods=["GET"]),
                Route("/cgi-bin/get_jsapi_ticket", _held(self._get_jsapi_ticket), methods=["GET"]),
                Route("/cgi-bin/ticket/get", _held(self._ticket_get), methods=["GET"]),
                Route("/emulator/stats", self._stats, methods=["GET"]),
                Route("/emulator/check-ticket", self._check_ticket, methods=["GET"]),
                Route("/emulator/reset-stats", _control(self._reset_stats), methods=["POST"]),
                Route("/emulator/apps", _control(self._set_app), methods=["POST"]),
                Route("/emulator/faults", _control(self._set_faults), methods=["POST"]),
                Route("/emulator/revoke", _control(self._revoke), methods=["POST"]),
            ]
        )

    async def serve(
        self, *, sock: socket.socket | None = None, ready: Callable[[str], None] | None = None
    ) -> None:
        """Serve until cancelled; ``ready`` gets the base URL once connections are accepted.

        Listens on ``sock`` when given (serve owns it from then on and closes it), otherwise
        binds ``config.host:config.port``.
        """
        listener = tcp_listener(
            sock if sock is not None else await _bind(self.config.host, self.config.port)
        )
        url = base_url(listener)
        await serve(self.app, [listener], ready=(lambda: ready(url)) if ready else None)

    async def _token(self, request: Request) -> Response:
        query = request.query_params
        appid = query.get("appid", "")
        if request.method != "GET":
            self.state.count(appid, "token")
            return JSONResponse(_error(43002, "require GET method"))
        hijacked = await self._inject_fault("token", appid, force=False)
        if hijacked is not None:
            return hijacked
        reply = self.state.classic_token(
            grant_type=query.get("grant_type", ""),
            appid=appid,
            secret=query.get("secret", ""),
            client_ip=_client_ip(request),
        )
        return JSONResponse(reply)

    async def _stable_token(self, request: Request) -> Response:
        if request.method != "POST":
            self.state.count(request.query_params.get("appid", ""), "stable_token")
            return JSONResponse(_error(43002, "require POST method"))
        body = _parse_object(await request.body())
        fields = body if body is not None else {}
        appid = _text_field(fields, "appid")
        force = fields.get("force_refresh") is True
        hijacked = await self._inject_fault("stable_token", appid, force=force)
        if hijacked is not None:
            return hijacked
        if body is None:
            return JSONResponse(_error(47001, "data format error"))
        reply = self.state.stable_token(
            grant_type=_text_field(body, "grant_type"),
            appid=appid,
            secret=_text_field(body, "secret"),
            force=force,
            client_ip=_client_ip(request),
        )
        return JSONResponse(reply)

    async def _gettoken(self, request: Request) -> Response:
        query = request.query_params
        corpid, corpsecret = query.get("corpid", ""), query.get("corpsecret", "")
        hijacked = await self._inject_fault("gettoken", corpid, secret=corpsecret)
        if hijacked is not None:
            return hijacked
        reply = self.state.wecom_token(
            corpid=corpid, corpsecret=corpsecret, client_ip=_client_ip(request)
        )
        return JSONResponse(reply)

    async def _getticket(self, request: Request) -> Response:
        access_token = request.query_params.get("access_token", "")
        hijacked = await self._inject_ticket_fault("getticket", access_token)
        if hijacked is not None:
            return hijacked
        ticket_type = request.query_params.get("type", "")
        return JSONResponse(
            self.state.getticket(access_token=access_token, ticket_type=ticket_type)
        )

    async def _get_jsapi_ticket(self, request: Request) -> Response:
        access_token = request.query_params.get("access_token", "")
        hijacked = await self._inject_ticket_fault("get_jsapi_ticket", access_token)
        if hijacked is not None:
            return hijacked
        reply = self.state.wecom_jsapi_ticket(
            access_token=access_token, client_ip=_client_ip(request)
        )
        return JSONResponse(reply)

    async def _ticket_get(self, request: Request) -> Response:
        access_token = request.query_params.get("access_token", "")
        hijacked = await self._inject_ticket_fault("ticket_get", access_token)
        if hijacked is not None:
            return hijacked
        reply = self.state.wecom_ticket(
            access_token=access_token,
            ticket_type=request.query_params.get("type", ""),
            client_ip=_client_ip(request),
        )
        return JSONResponse(reply)

    async def _inject_ticket_fault(self, endpoint: _Endpoint, access_token: str) -> Response | None:
        # A ticket call names its app only through the token: its owner's faults apply.
        appid, secret = self.state.token_owner(access_token)
        return await self._inject_fault(endpoint, appid, secret=secret)

    async def _inject_fault(
        self, endpoint: _Endpoint, appid: str, *, force: bool = False, secret: str = ""
    ) -> Response | None:
        """The response a fault replaces the real answer with; None to answer normally."""
        fault = self.state.admit(endpoint, appid, force=force, secret=secret)
        if fault is Fault.HTTP_5XX:
            return HTMLResponse(_BAD_GATEWAY, status_code=502)
        if fault is Fault.BUSY:
            return JSONResponse(_error(-1, "system error"))
        if fault is Fault.GARBAGE:
            return Response(self.state.garbage_body(), media_type="application/json")
        if fault is Fault.SLOW:
            await asyncio.sleep(self.state.faults_for(appid, secret).slow_seconds)
        if fault is Fault.HANG:
            await asyncio.sleep(self.state.faults_for(appid, secret).hang_seconds)
            return HTMLResponse(_GATEWAY_TIMEOUT, status_code=504)
        if fault is Fault.LOST:
            _HOLD.set(self.state.faults_for(appid, secret).hang_seconds)
        return None

    async def _getcallbackip(self, request: Request) -> Response:
        return JSONResponse(self.state.check_token(request.query_params.get("access_token", "")))

    async def _stats(self, request: Request) -> Response:
        return JSONResponse({"apps": self.state.stats(), "now": self.state.now()})

    async def _check_ticket(self, request: Request) -> Response:
        ticket = request.query_params.get("ticket", "")
        if not ticket:
            return JSONResponse({"error": "ticket is required"}, status_code=400)
        return JSONResponse(self.state.check_ticket(ticket))

    def _reset_stats(self, body: dict[str, object]) -> None:
        self.state.reset_stats()

    def _set_app(self, body: dict[str, object]) -> None:
        kind = body.get("kind", "official")
        if kind == "wecom":
            self.state.set_wecom_app(_required_text(body, "corpid"), _required_text(body, "secret"))
        elif kind == "official":
            self.state.set_app(_required_text(body, "appid"), _required_text(body, "secret"))
        else:
            raise ValueError('kind must be "official" or "wecom"')

    def _set_faults(self, body: dict[str, object]) -> None:
        appid = body.get("appid")
        if appid is not None and not isinstance(appid, str):
            raise ValueError("appid must be a string or absent")
        if "faults" not in body:
            raise ValueError("faults is required: an object, or null to clear")
        raw = body["faults"]
        faults = None if raw is None else _faults_from(raw, "faults")
        secret = _optional_text(body, "secret")
        if secret is not None and appid is None:
            raise ValueError("secret needs appid (the corpid)")
        self.state.set_faults(appid, faults, secret=secret or "")

    def _revoke(self, body: dict[str, object]) -> None:
        appid, grant = _required_text(body, "appid"), _grant_from(body.get("grant"))
        self.state.revoke(appid, grant, secret=_optional_text(body, "secret"))


async def _bind(host: str, port: int) -> socket.socket:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, *_, address = infos[0]
    # A deep backlog: the tests open a thousand connections at once.
    return socket.create_server(address[:2], family=family, backlog=4096)


# --------------------------------------------------------------------------- configuration


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


def _faults_from(value: object, where: str) -> Faults:
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
            faults=None if faults is None else _faults_from(faults, "faults"),
        )


def _as_optional_int(value: object, key: str) -> int | None:
    return None if value is None else _as_int(value, key)


# The plain keys of EmulatorConfig and how a YAML value becomes each.
_SCALARS: dict[str, Callable[[object, str], object]] = {
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
    _known_keys(data, (*_SCALARS, "ip_whitelist", "faults", "apps"), "")
    kwargs: dict[str, Any] = {
        key: convert(data[key], key) for key, convert in _SCALARS.items() if key in data
    }
    if "ip_whitelist" in data:
        ips = _as_list(data["ip_whitelist"], "ip_whitelist")
        kwargs["ip_whitelist"] = tuple(
            _as_str(ip, f"ip_whitelist[{i}]") for i, ip in enumerate(ips)
        )
    if "faults" in data:
        kwargs["faults"] = _faults_from(data["faults"], "faults")
    if "apps" in data:
        apps = _as_list(data["apps"], "apps")
        kwargs["apps"] = tuple(_app_from(app, f"apps[{i}]") for i, app in enumerate(apps))
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


# --------------------------------------------------------------------------- command line


def _app_flag(text: str) -> EmulatedApp:
    appid, _, secret = text.partition(":")
    if not appid or not secret:
        raise argparse.ArgumentTypeError(f"expected APPID:SECRET, got {text!r}")
    return EmulatedApp(appid=appid, secret=secret)


def _wecom_flag(text: str) -> EmulatedApp:
    corpid, _, secret = text.partition(":")
    if not corpid or not secret:
        raise argparse.ArgumentTypeError(f"expected CORPID:SECRET, got {text!r}")
    return EmulatedApp(kind="wecom", corpid=corpid, secret=secret)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``wxtokend emulate``; all default to None so the YAML file shows through."""
    add = parser.add_argument
    add("--config", type=Path, metavar="FILE", help="YAML file with the emulator settings")
    add("--host", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, help="port to listen on (default 0: any free port)")
    add("--lifetime", type=int, help="expires_in of a fresh token, seconds (default 7200)")
    add("--ticket-lifetime", type=int, help="expires_in of a ticket (default: --lifetime)")
    add("--grace", type=float, help="classic: life left to the previous token (default 300)")
    add("--stable-window", type=float, help="stable: renew only inside this window (default 300)")
    add("--day-length", type=float, help="length of a quota day, seconds (default 86400)")
    add("--daily-quota", type=int, help="classic token calls per app per day (default 2000)")
    add("--minute-quota", type=int, help="token calls per app per minute, 0 = off (default 0)")
    add("--seed", type=int, help="seed of the fault-injection random generator")
    add("--app", type=_app_flag, action="append", metavar="APPID:SECRET", help="repeatable")
    add(
        "--wecom",
        type=_wecom_flag,
        action="append",
        metavar="CORPID:SECRET",
        help="a WeCom application; repeatable, also with the same corpid",
    )
    add("--ip-whitelist", action="append", metavar="IP", help="allowed client IP; repeatable")
    add("--port-file", type=Path, metavar="FILE", help="write the bound port here when listening")


def _merge_apps(apps: tuple[EmulatedApp, ...], flags: list[EmulatedApp]) -> tuple[EmulatedApp, ...]:
    """``--app`` adds an app or replaces its secret (keeping its faults); ``--wecom`` adds a
    WeCom application unless its corp already has one with that secret."""
    merged = {(app.kind, app.key, app.secret if app.kind == "wecom" else ""): app for app in apps}
    for flag in flags:
        if flag.kind == "wecom":
            merged.setdefault(("wecom", flag.corpid, flag.secret), flag)
        else:
            key = ("official", flag.appid, "")
            merged[key] = dataclasses.replace(merged.get(key, flag), secret=flag.secret)
    return tuple(merged.values())


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The YAML file (if any) with the flags on top; ``--app`` adds apps or replaces secrets,
    ``--wecom`` adds WeCom applications."""
    config = load_emulator_config(args.config) if args.config else EmulatorConfig()
    # A flag left at None was not given; scalars without a flag are simply absent from args.
    flags = {name: getattr(args, name, None) for name in _SCALARS}
    changes: dict[str, Any] = {name: value for name, value in flags.items() if value is not None}
    if args.ip_whitelist:
        changes["ip_whitelist"] = tuple(args.ip_whitelist)
    if args.app or args.wecom:
        changes["apps"] = _merge_apps(config.apps, [*(args.app or ()), *(args.wecom or ())])
    return dataclasses.replace(config, **changes)


def _write_port_file(path: Path, port: int) -> None:
    # Write-then-rename: a harness polling the file never reads half a number.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{port}\n", encoding="utf-8")
    os.replace(temporary, path)


async def _serve_until_signal(emulator: Emulator, ready: Callable[[str], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(emulator.serve(ready=ready))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        serving.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    with contextlib.suppress(asyncio.CancelledError):
        await serving  # re-raises a startup failure such as a port already in use


class _PortFileError(Exception):
    """--port-file cannot be written: a bad command line, not a listen failure."""


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``wxtokend emulate`` until SIGINT or SIGTERM; 0 on a clean stop, 2 on bad config."""
    try:
        config = config_from_args(args)
    except EmulatorConfigError as exc:
        print(f"wxtokend emulate: {exc}", file=sys.stderr)
        return 2
    port_file: Path | None = args.port_file

    def ready(url: str) -> None:
        if port_file is not None:
            try:
                _write_port_file(port_file, urlsplit(url).port or 0)
            except OSError as exc:
                raise _PortFileError(f"--port-file {port_file}: {exc.strerror or exc}") from None
        print(f"wxtokend emulator listening on {url}", flush=True)

    try:
        asyncio.run(_serve_until_signal(Emulator(config), ready))
    except _PortFileError as exc:
        print(f"wxtokend emulate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(
            f"wxtokend emulate: cannot listen on {config.host}:{config.port}: {reason}",
            file=sys.stderr,
        )
        return 1
    return 0
