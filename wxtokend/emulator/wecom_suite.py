"""WeCom third-party apps (企业微信第三方应用): suite tickets, suite tokens, corps.

What it models, every value a setting of :class:`EmulatedSuite` (``suites:``):

- ``suite_ticket`` pushes sealed with the suite's crypto (receiveid = suite_id):
  ``get_suite_token`` takes the newest ticket or the one before while valid
  (``suite_ticket_lifetime``), else 40085;
- suite tokens (``suite_access_token`` query parameter: 42009 expired, 40082
  unknown), each valid ``suite_token_lifetime`` s, the previous one for ``grace``;
- corps installing the app on demand (``create_auth``: a one-time ``auth_code``
  traded by ``get_permanent_code`` for the corp's permanent code and a first
  token), ``get_corp_token`` with the permanent code (40084 once revoked or
  uninstalled), ``cancel_auth`` pushes;
- the provider token (``get_provider_token``) when ``provider_corpid`` is set.

Control endpoints: ``POST /emulator/suites/<suite_id>/push-ticket``,
``/create-auth`` (answers the corpid and auth code), ``/cancel-auth`` and
``/revoke-permanent-code`` (``{"corpid"}``); ``GET /emulator/suites``: counts per
endpoint and corp-token refreshes per corp.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from wxtokend.callback.crypto import MessageCrypto
from wxtokend.emulator.openplatform import rotate, text
from wxtokend.emulator.replies import Reply, error
from wxtokend.emulator.suite_config import EmulatedSuite

__all__ = ["ID", "SuiteState", "WeComSuites"]

ID = re.compile(r"[A-Za-z0-9]{6,64}")  # a corpid


@dataclass(slots=True)
class _Corp:
    permanent_code: str = field(repr=False)
    installed: bool = True
    tokens: dict[str, float] = field(default_factory=dict, repr=False)  # token → expires_at


class SuiteState:
    """One suite's side of WeCom."""

    def __init__(self, config: EmulatedSuite, *, grace: float) -> None:
        self.config, self.grace = config, grace
        self.crypto = MessageCrypto(
            token=config.token,
            encoding_aes_key=config.encoding_aes_key,
            receiver_id=config.suite_id,
        )
        self.tickets: list[tuple[str, float]] = []  # newest last
        self.suite_tokens: dict[str, float] = {}
        self.provider_tokens: dict[str, float] = {}
        self.corps: dict[str, _Corp] = {}
        self.codes: dict[str, tuple[str, float]] = {}  # auth_code → (corpid, expires_at)
        self.counts: dict[str, int] = {}
        self.refreshes_of: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


class WeComSuites:
    """Every configured suite, by suite_id (``platforms``: the pusher's view)."""

    def __init__(self, configs: tuple[EmulatedSuite, ...], *, grace: float) -> None:
        self.platforms = {c.suite_id: SuiteState(c, grace=grace) for c in configs}
        self._owner: dict[str, tuple[str, str]] = {}  # corp token → (suite_id, corpid)

    # -- pushes -------------------------------------------------------------------

    def new_ticket(self, suite_id: str, now: float) -> bytes:
        suite = self.platforms[suite_id]
        ticket = f"suiteticket@@@{secrets.token_urlsafe(24)}"
        suite.tickets = [*suite.tickets[-1:], (ticket, now)]
        return _xml(suite_id, "suite_ticket", now, SuiteTicket=ticket)

    def create_auth(self, suite_id: str, now: float) -> tuple[str, str, bytes]:
        """A corp installs the app: (its corpid, the auth code, the event's inner XML)."""
        suite = self.platforms[suite_id]
        corpid = f"wwc{secrets.token_hex(8)}"
        code = f"authcode@@@{secrets.token_urlsafe(24)}"
        suite.codes[code] = (corpid, now + suite.config.code_lifetime)
        return corpid, code, _xml(suite_id, "create_auth", now, AuthCode=code)

    def cancel_auth(self, suite_id: str, corpid: str, now: float) -> bytes:
        corp = self.platforms[suite_id].corps.get(corpid)
        if corp is not None:
            corp.installed = False
            corp.tokens.clear()
        return _xml(suite_id, "cancel_auth", now, AuthCorpId=corpid)

    def revoke_permanent_code(self, suite_id: str, corpid: str) -> None:
        corp = self.platforms[suite_id].corps.get(corpid)
        if corp is not None:
            corp.permanent_code = f"revoked@@@{secrets.token_urlsafe(8)}"

    # -- WeCom's endpoints ------------------------------------------------------------

    def suite_token(self, body: dict[str, object], now: float) -> Reply:
        suite = self.platforms.get(text(body, "suite_id"))
        if suite is None:
            return error(40013, "invalid suite_id")
        suite.count("get_suite_token")
        if text(body, "suite_secret") != suite.config.suite_secret:
            return error(40125, "invalid suite_secret")
        given = text(body, "suite_ticket")
        fresh = [
            t
            for t, created in suite.tickets[-2:]
            if now <= created + suite.config.suite_ticket_lifetime
        ]
        if given not in fresh:
            return error(40085, "invalid suite_ticket")
        token = f"suite@@@{secrets.token_urlsafe(32)}"
        lifetime = suite.config.suite_token_lifetime
        rotate(suite.suite_tokens, token, now + lifetime, now, suite.grace)
        return {"errcode": 0, "suite_access_token": token, "expires_in": lifetime}

    def provider_token(self, body: dict[str, object], now: float) -> Reply:
        corpid = text(body, "corpid")
        suite = next(
            (s for s in self.platforms.values() if corpid and s.config.provider_corpid == corpid),
            None,
        )
        if suite is None or text(body, "provider_secret") != suite.config.provider_secret:
            return error(40013, "invalid corpid or provider_secret")
        suite.count("get_provider_token")
        token = f"provider@@@{secrets.token_urlsafe(32)}"
        rotate(suite.provider_tokens, token, now + 7200, now, suite.grace)
        return {"errcode": 0, "provider_access_token": token, "expires_in": 7200}

    def permanent_code(self, suite: SuiteState, body: dict[str, object], now: float) -> Reply:
        suite.count("get_permanent_code")
        corpid, expires = suite.codes.pop(text(body, "auth_code"), ("", 0.0))
        if not corpid or now > expires:
            return error(40078, "invalid auth_code")
        code = f"permanent@@@{secrets.token_urlsafe(24)}"
        corp = suite.corps[corpid] = _Corp(permanent_code=code)
        token, lifetime = self._issue(suite, corpid, corp, now)
        return {
            "errcode": 0,
            "access_token": token,
            "expires_in": lifetime,
            "permanent_code": code,
            "auth_corp_info": {"corpid": corpid, "corp_name": f"Corp {corpid[-4:]}"},
        }

    def corp_token(self, suite: SuiteState, body: dict[str, object], now: float) -> Reply:
        suite.count("get_corp_token")
        corpid = text(body, "auth_corpid")
        corp = suite.corps.get(corpid)
        if (
            corp is None
            or not corp.installed
            or text(body, "permanent_code") != corp.permanent_code
        ):
            return error(40084, "invalid permanent_code")
        suite.refreshes_of[corpid] = suite.refreshes_of.get(corpid, 0) + 1
        token, lifetime = self._issue(suite, corpid, corp, now)
        return {"errcode": 0, "access_token": token, "expires_in": lifetime}

    def suite_error(self, token: str, now: float) -> tuple[SuiteState | None, Reply]:
        for suite in self.platforms.values():
            expires = suite.suite_tokens.get(token)
            if expires is not None:
                if now >= expires:
                    return None, error(42009, "suite_access_token expired")
                return suite, {}
        return None, error(40082, "invalid suite_access_token")

    def check_corp_token(self, token: str, now: float) -> Reply | None:
        """For getcallbackip: None if ``token`` is no corp token of a suite, else the answer."""
        owner = self._owner.get(token)
        if owner is None:
            return None
        corp = self.platforms[owner[0]].corps.get(owner[1])
        expires = corp.tokens.get(token) if corp is not None else None
        if expires is None:
            return error(40014, "invalid access_token")
        if now >= expires:
            return error(42001, "access_token expired")
        return {"errcode": 0, "ip_list": ["127.0.0.1"]}

    def stats(self) -> dict[str, object]:
        return {
            i: {"counts": s.counts, "refreshes": s.refreshes_of} for i, s in self.platforms.items()
        }

    def _issue(self, suite: SuiteState, corpid: str, corp: _Corp, now: float) -> tuple[str, int]:
        token = f"corp@@@{secrets.token_urlsafe(32)}"
        lifetime = suite.config.corp_token_lifetime
        for old in [t for t, e in corp.tokens.items() if e <= now]:
            self._owner.pop(old, None)
        rotate(corp.tokens, token, now + lifetime, now, suite.grace)
        self._owner[token] = (suite.config.suite_id, corpid)
        return token, lifetime


def _xml(suite_id: str, info: str, now: float, **values: str) -> bytes:
    extra = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in values.items())
    return (
        f"<xml><SuiteId><![CDATA[{suite_id}]]></SuiteId><InfoType><![CDATA[{info}]]></InfoType>"
        f"<TimeStamp>{int(now)}</TimeStamp>{extra}</xml>"
    ).encode()
