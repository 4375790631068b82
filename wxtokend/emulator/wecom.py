"""WeCom (企业微信): gettoken, its JS-SDK and agent_config tickets, and WeCom's error shape.

An application is identified by corpid and secret together (one corp has several); its
counters are kept under the corpid, so the applications of one corp add up.
"""

from __future__ import annotations

import math
import os
import secrets

from wxtokend.emulator.config import EmulatedApp, require
from wxtokend.emulator.core import Core
from wxtokend.emulator.replies import Reply, error

__all__ = ["WeCom", "wecom_error"]

_PRODUCT = "wecom"


def wecom_error(errcode: int, message: str, *, client_ip: str, now: float) -> Reply:
    """WeCom's error shape: the message, then a hint, the caller's IP and a help link."""
    hint = f"{int(now)}_{os.urandom(1)[0] % 100:02d}_{os.urandom(16).hex()}"
    return error(
        errcode,
        f"{message}, hint: [{hint}], from ip: {client_ip}, "
        f"more info at https://open.work.weixin.qq.com/devtool/query?e={errcode}",
    )


def _ok(**fields: object) -> Reply:
    return {"errcode": 0, "errmsg": "ok", **fields}


class WeCom:
    """The WeCom endpoints: ``/cgi-bin/gettoken``, ``get_jsapi_ticket`` and ``ticket/get``."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._corps: dict[str, set[str]] = {}  # corpid -> the secrets of its applications
        for app in core.config.apps:
            if app.kind == _PRODUCT:
                core.claim(app.corpid, _PRODUCT)
                self._corps.setdefault(app.corpid, set()).add(app.secret)

    def set_app(self, corpid: str, secret: str) -> None:
        """Add an application with ``secret`` to WeCom corp ``corpid`` (added if new)."""
        EmulatedApp(kind="wecom", corpid=corpid, secret=secret)
        require(self._core.claim(corpid, _PRODUCT), f"{corpid} is already an appid")
        self._corps.setdefault(corpid, set()).add(secret)

    def revoke(self, corpid: str, *, secret: str | None = None) -> None:
        """Kill the tokens of all the corp's applications, or of the one whose secret it is."""
        known = self._corps.get(corpid)
        if known is None:
            raise ValueError(f"unknown corpid {corpid!r}")
        if secret is not None and secret not in known:
            raise ValueError(f"corpid {corpid!r} has no application with that secret")
        owners = [(corpid, s) for s in known if secret is None or s == secret]
        self._core.tokens.revoke("wecom", owners, self._core.clock())

    def gettoken(self, *, corpid: str, corpsecret: str, client_ip: str) -> Reply:
        """``GET /cgi-bin/gettoken``: the same token until it expires, then a new one."""
        core = self._core
        now = core.clock()

        def fail(errcode: int, message: str) -> Reply:
            return wecom_error(errcode, message, client_ip=client_ip, now=now)

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
        usage = core.usage_of(owner, now)
        if usage.used("gettoken") >= core.config.daily_quota:
            return fail(45009, "api freq out of limit")
        if core.over_minute_quota(usage):
            return fail(45011, "api minute-quota reach limit, retry next minute")
        usage.use("gettoken")
        current = core.tokens.slot("wecom", owner).current
        if current is not None and current.status(now) == "valid":
            return _ok(**core.grant(current, now))
        return _ok(**core.fresh(core.issue("wecom", owner, now, previous_until=math.inf)))

    def jsapi_ticket(self, *, access_token: str, client_ip: str) -> Reply:
        """``GET /cgi-bin/get_jsapi_ticket``: a new JS-SDK ticket per call."""
        return self._ticket(access_token, "jsapi", ("jsapi",), client_ip)

    def ticket(self, *, access_token: str, ticket_type: str, client_ip: str) -> Reply:
        """``GET /cgi-bin/ticket/get``: only ``type=agent_config``, new per call."""
        return self._ticket(access_token, ticket_type, ("agent_config",), client_ip)

    def _ticket(
        self, access_token: str, ticket_type: str, types: tuple[str, ...], client_ip: str
    ) -> Reply:
        core = self._core
        now = core.clock()
        problem = core.tokens.problem(access_token, ("wecom",), now)
        if problem is not None:
            code, message = problem
            return wecom_error(code, message, client_ip=client_ip, now=now)
        if ticket_type not in types:
            return wecom_error(40097, "invalid args", client_ip=client_ip, now=now)
        return core.issue_ticket(core.tokens.owner_of(access_token), ticket_type, now)
