"""WeChatState: the shared core with one part per product, behind one interface.

It only routes each call to the part that owns it; the logic lives in core.py and the
product modules.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal

from wxtokend.emulator.config import EmulatorConfig, Faults, Grant
from wxtokend.emulator.core import Core, Endpoint
from wxtokend.emulator.faults import Fault, garbage_body
from wxtokend.emulator.official import Official
from wxtokend.emulator.openplatform import OpenPlatform
from wxtokend.emulator.replies import Reply
from wxtokend.emulator.wecom import WeCom
from wxtokend.emulator.wecom_suite import WeComSuites

__all__ = ["WeChatState"]


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
        self.core = Core(
            config, clock=clock, rng=rng if rng is not None else random.Random(config.seed)
        )
        # Registration order is the order of stats(): official apps, then WeCom corps.
        self.official = Official(self.core)
        self.wecom = WeCom(self.core)
        self.open_platform = OpenPlatform(config.platforms, grace=config.grace, now=clock())
        self.wecom_suites = WeComSuites(config.suites, grace=config.grace)

    def now(self) -> float:
        return self.core.clock()

    # -- operator controls

    def set_app(self, appid: str, secret: str) -> None:
        """Add an app or change its secret; tokens already issued are left alone."""
        self.official.set_app(appid, secret)

    def set_wecom_app(self, corpid: str, secret: str) -> None:
        """Add an application with ``secret`` to WeCom corp ``corpid`` (added if new)."""
        self.wecom.set_app(corpid, secret)

    def set_faults(self, appid: str | None, faults: Faults | None, *, secret: str = "") -> None:
        """Set one app's faults (None: back to the default), or the default when appid is None.

        For WeCom, ``appid`` is the corpid: without ``secret`` the faults apply to every
        application of the corp, with it to that application only (it wins over the corp's).
        """
        self.core.set_faults(appid, faults, secret=secret)

    def faults_for(self, appid: str, secret: str = "") -> Faults:
        return self.core.faults_for(appid, secret)

    def revoke(
        self, appid: str, grant: Grant | Literal["wecom"], *, secret: str | None = None
    ) -> None:
        """Kill tokens now, as if done elsewhere.

        ``grant`` "classic" or "stable": the app's current and previous token of that grant.
        ``grant`` "wecom": ``appid`` is a corpid, and the tokens of all its applications die,
        or only those of the application whose secret is ``secret``.
        """
        if grant == "wecom":
            self.wecom.revoke(appid, secret=secret)
        else:
            self.official.revoke(appid, grant, secret=secret)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per appid: every configured app and every appid seen, all keys present.

        WeCom applications are counted under their corpid: the applications of one corp add up.
        """
        return self.core.stats()

    def reset_stats(self) -> None:
        self.core.reset_stats()

    # -- the request path

    def count(self, appid: str, counter: str) -> None:
        self.core.count(appid, counter)

    def admit(
        self, endpoint: Endpoint, appid: str, *, force: bool = False, secret: str = ""
    ) -> Fault | None:
        """Count a call of a token or ticket endpoint and decide whether a fault hijacks it.

        ``appid`` is the corpid for WeCom, with the application's ``secret``. Slow calls count
        as faults too, although they go on to answer (and issue) normally.
        """
        return self.core.admit(endpoint, appid, force=force, secret=secret)

    def token_owner(self, access_token: str) -> tuple[str, str]:
        """(appid or corpid, WeCom secret or "") of a token ever issued; ("", "") otherwise.

        The ticket endpoints know the app only through the token: this picks the counters and
        faults of a ticket call.
        """
        return self.core.tokens.owner_of(access_token)

    def garbage_body(self) -> bytes:
        """A body no JSON parser accepts: either not JSON at all, or JSON cut off mid-token."""
        return garbage_body(self.core.rng)

    def classic_token(self, *, grant_type: str, appid: str, secret: str, client_ip: str) -> Reply:
        return self.official.classic_token(
            grant_type=grant_type, appid=appid, secret=secret, client_ip=client_ip
        )

    def stable_token(
        self, *, grant_type: str, appid: str, secret: str, force: bool, client_ip: str
    ) -> Reply:
        return self.official.stable_token(
            grant_type=grant_type, appid=appid, secret=secret, force=force, client_ip=client_ip
        )

    def wecom_token(self, *, corpid: str, corpsecret: str, client_ip: str) -> Reply:
        return self.wecom.gettoken(corpid=corpid, corpsecret=corpsecret, client_ip=client_ip)

    def check_token(self, token: str) -> Reply:
        return self.official.check_token(token)

    def getticket(self, *, access_token: str, ticket_type: str) -> Reply:
        return self.official.getticket(access_token=access_token, ticket_type=ticket_type)

    def wecom_jsapi_ticket(self, *, access_token: str, client_ip: str) -> Reply:
        return self.wecom.jsapi_ticket(access_token=access_token, client_ip=client_ip)

    def wecom_ticket(self, *, access_token: str, ticket_type: str, client_ip: str) -> Reply:
        return self.wecom.ticket(
            access_token=access_token, ticket_type=ticket_type, client_ip=client_ip
        )

    def check_ticket(self, ticket: str) -> Reply:
        """``GET /emulator/check-ticket``: whether ``ticket`` works now, and whose it is."""
        return self.core.tickets.check(ticket, self.core.clock())
