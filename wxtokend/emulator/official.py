"""Official Accounts and Mini Programs: classic and stable tokens, their tickets, getcallbackip.

Apps are identified by appid alone; their tokens are of the families "classic" and "stable".
"""

from __future__ import annotations

import math
import secrets

from wxtokend.emulator.config import EmulatedApp, Grant, require
from wxtokend.emulator.core import Core, Usage
from wxtokend.emulator.replies import NOT_LATEST, Reply, error, minute_quota_error, rid
from wxtokend.emulator.tokens import TOKEN_KINDS, Slot, Token, TokenKind

__all__ = ["Official"]

_OFFICIAL: tuple[TokenKind, ...] = ("classic", "stable")
_PRODUCT = "official"


def _ipv6_form(ip: str) -> str:
    return f"::ffff:{ip}" if ":" not in ip else ip


def _rejection(code: int, message: str) -> Reply:
    """WeChat's wording of a token problem: a request id on all but 41001."""
    return error(code, message if code == 41001 else f"{message} {rid()}")


class Official:
    """The official token endpoints (``/cgi-bin/token``, ``stable_token``) and getticket."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._config = core.config
        self._whitelist = frozenset(core.config.ip_whitelist)
        self._secrets: dict[str, str] = {}
        for app in core.config.apps:
            if app.kind == _PRODUCT:
                core.claim(app.appid, _PRODUCT)
                self._secrets[app.appid] = app.secret

    def set_app(self, appid: str, secret: str) -> None:
        """Add an app or change its secret; tokens already issued are left alone."""
        EmulatedApp(appid=appid, secret=secret)  # same validation as the config
        require(self._core.claim(appid, _PRODUCT), f"{appid} is already a wecom corpid")
        self._secrets[appid] = secret

    def revoke(self, appid: str, grant: Grant, *, secret: str | None = None) -> None:
        """Kill the app's current and previous token of that grant now."""
        if appid not in self._secrets:
            raise ValueError(f"unknown appid {appid!r}")
        if secret is not None:
            raise ValueError('secret is only for grant "wecom"')
        self._core.tokens.revoke(grant, [(appid, "")], self._core.clock())

    def classic_token(self, *, grant_type: str, appid: str, secret: str, client_ip: str) -> Reply:
        """``GET /cgi-bin/token``: a new token per call, the previous one lives on for ``grace``."""
        core = self._core
        now = core.clock()
        rejected = self._check_credentials(grant_type, appid, secret, client_ip, stable=False)
        if rejected is not None:
            return rejected
        usage = core.usage_of((appid, ""), now)
        if usage.used("token") >= self._config.daily_quota:
            return error(45009, f"reach max api daily quota limit {rid()}")
        if core.over_minute_quota(usage):
            return minute_quota_error()
        usage.use("token")
        previous_until = now + self._config.grace
        return core.fresh(core.issue("classic", (appid, ""), now, previous_until=previous_until))

    def stable_token(
        self, *, grant_type: str, appid: str, secret: str, force: bool, client_ip: str
    ) -> Reply:
        """``POST /cgi-bin/stable_token`` in normal or force mode."""
        core = self._core
        now = core.clock()
        rejected = self._check_credentials(grant_type, appid, secret, client_ip, stable=True)
        if rejected is not None:
            return rejected
        usage = core.usage_of((appid, ""), now)
        if core.over_minute_quota(usage):
            return minute_quota_error()
        slot = core.tokens.slot("stable", (appid, ""))
        if force:
            return self._force_stable(appid, slot, usage, now)
        current = slot.current
        if current is not None and self._lasts_beyond_window(current, now):
            return core.grant(current, now)
        # Renewal: the old token was handed out to others and keeps working until its expiry.
        return core.fresh(core.issue("stable", (appid, ""), now, previous_until=math.inf))

    def _lasts_beyond_window(self, token: Token, now: float) -> bool:
        alive = token.status(now) == "valid"
        return alive and token.expires_at - now > self._config.stable_window

    def _force_stable(self, appid: str, slot: Slot, usage: Usage, now: float) -> Reply:
        core = self._core
        current = slot.current
        recent = now - slot.last_force < self._config.stable_force_interval
        if recent and current is not None and current.status(now) == "valid":
            return core.grant(current, now)  # WeChat: "otherwise it will not refresh"
        # A dead current token (revoked, expired) is replaced even inside the interval: handing
        # it out again would only make the caller force once more.
        if usage.used("stable_token_force") >= self._config.stable_force_daily:
            return error(45009, f"reach max api daily quota limit {rid()}")
        usage.use("stable_token_force")
        slot.last_force = now
        return core.fresh(core.issue("stable", (appid, ""), now, previous_until=now))

    def check_token(self, token: str, *, counted: bool = True) -> Reply:
        """``GET /cgi-bin/getcallbackip``: answers whether ``token`` is usable right now.

        WeCom serves the same path, so every family is checked here, WeCom's in its shape.
        """
        core = self._core
        found = core.tokens.get(token)
        if counted:
            core.count(found.appid if found else "", "getcallbackip")
        problem = core.tokens.problem(token, TOKEN_KINDS, core.clock())
        if problem is not None:
            return _rejection(*problem)
        if found is not None and found.kind == "wecom":
            return {"errcode": 0, "errmsg": "ok", "ip_list": ["127.0.0.1"]}
        return {"ip_list": ["127.0.0.1"]}

    def getticket(self, *, access_token: str, ticket_type: str) -> Reply:
        """``GET /cgi-bin/ticket/getticket``: a new ``jsapi`` or ``wx_card`` ticket per call."""
        core = self._core
        now = core.clock()
        problem = core.tokens.problem(access_token, _OFFICIAL, now)
        if problem is not None:
            return _rejection(*problem)
        if ticket_type not in ("jsapi", "wx_card"):
            return error(40097, "invalid args")
        owner = core.tokens.owner_of(access_token)
        return core.issue_ticket(owner, ticket_type, now)

    def _check_credentials(
        self, grant_type: str, appid: str, secret: str, client_ip: str, *, stable: bool
    ) -> Reply | None:
        if grant_type != "client_credential":
            return error(40002, "invalid grant_type")
        if not appid:
            return error(41002, "appid missing")
        if not secret:
            return error(41004, "appsecret missing")
        expected = self._secrets.get(appid)
        if expected is None:
            return error(40013, "invalid appid")
        if not secrets.compare_digest(secret.encode(), expected.encode()):
            # The stable endpoint really answers a wrong secret with 40001.
            if stable:
                return error(40001, NOT_LATEST)
            return error(40125, "invalid appsecret")
        if self._whitelist and client_ip not in self._whitelist:
            return error(
                40164,
                f"invalid ip {client_ip} ipv6 {_ipv6_form(client_ip)}, not in whitelist {rid()}",
            )
        return None
