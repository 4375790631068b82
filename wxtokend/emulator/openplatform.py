"""Open Platform (开放平台): component tokens, authorizers, refresh tokens, pushed tickets.

What it models, every value a setting of :class:`EmulatedPlatform`:

- ``component_verify_ticket`` pushes, sealed with the platform's message crypto:
  ``api_component_token`` accepts the newest ticket or the one before it while
  valid (61005 once expired, 61006 for one never pushed);
- component tokens (``component_access_token`` query parameter: 42001 expired,
  40001 unknown), each valid ``component_token_lifetime`` s, the previous one for
  ``grace`` more;
- authorizers: pre-authorized ones (``authorizers: N`` → appids ``wxa`` + 15 hex
  digits, created lazily, so 100,000 cost nothing until used) and ones authorized
  on demand with a one-time, expiring code (``api_query_auth``); refresh tokens
  that rotate on every ``api_authorizer_token`` (the previous one works for
  ``refresh_grace`` s), die on ``unauthorized``, or are revoked (61023);
- ``api_get_authorizer_list`` pages (count ≤ 500).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from wxtokend.callback.crypto import MessageCrypto
from wxtokend.emulator.platform_config import EmulatedPlatform
from wxtokend.emulator.replies import Reply, error

__all__ = ["OpenPlatform", "PlatformState", "authorizer_appid", "rotate", "text"]


def authorizer_appid(index: int) -> str:
    """The appid of pre-authorized account ``index`` (0-based)."""
    return f"wxa{index:015x}"


@dataclass(slots=True)
class _Authorizer:
    refresh_token: str = field(repr=False)
    previous_refresh: str | None = field(default=None, repr=False)
    previous_until: float = 0.0
    authorized: bool = True
    tokens: dict[str, float] = field(default_factory=dict, repr=False)  # token → expires_at
    refreshes: int = 0
    auth_time: int = 0


class PlatformState:
    """One platform's side of WeChat."""

    def __init__(self, config: EmulatedPlatform, *, grace: float, now: float) -> None:
        self.config = config
        self.grace = grace
        self.crypto = MessageCrypto(
            token=config.token,
            encoding_aes_key=config.encoding_aes_key,
            receiver_id=config.component_appid,
        )
        self.tickets: list[tuple[str, float]] = []  # (ticket, created_at), newest last
        self.component_tokens: dict[str, float] = {}  # token → expires_at
        self.authorizers: dict[str, _Authorizer] = {}
        self.order: list[str] = []  # authorized on demand, after the pre-authorized ones
        self.codes: dict[str, tuple[str, float]] = {}  # code → (appid, expires_at)
        self.counts: dict[str, int] = {}
        self.refreshes_of: dict[str, int] = {}
        self.started = now

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def authorizer(self, appid: str) -> _Authorizer | None:
        """An authorizer, created on first use if it is one of the pre-authorized."""
        found = self.authorizers.get(appid)
        if found is None and self._preauthorized(appid):
            found = self.authorizers[appid] = _Authorizer(
                refresh_token=f"refresh@@@{appid}@0", auth_time=int(self.started)
            )
        return found

    def _preauthorized(self, appid: str) -> bool:
        if not appid.startswith("wxa") or len(appid) != 18:
            return False
        try:
            return int(appid[3:], 16) < self.config.authorizers
        except ValueError:
            return False

    def ticket_error(self, ticket: str, now: float) -> Reply | None:
        for value, created in self.tickets[-2:]:
            if value == ticket:
                if now > created + self.config.verify_ticket_lifetime:
                    return error(61005, "component ticket is expired")
                return None
        return error(61006, "component ticket is invalid")

    def component_error(self, token: str, now: float) -> Reply | None:
        expires = self.component_tokens.get(token)
        if expires is None:
            return error(40001, "invalid credential, access_token is invalid or not latest")
        if now >= expires:
            return error(42001, "access_token expired")
        return None


class OpenPlatform:
    """Every configured platform, by component_appid."""

    def __init__(self, configs: tuple[EmulatedPlatform, ...], *, grace: float, now: float) -> None:
        self.platforms = {
            c.component_appid: PlatformState(c, grace=grace, now=now) for c in configs
        }
        self._token_owner: dict[str, tuple[str, str]] = {}  # authorizer token → (component, appid)

    # -- pushes and operator controls ----------------------------------------

    def new_ticket(self, component: str, now: float) -> bytes:
        """A fresh ticket (kept as the newest) and the inner XML that announces it."""
        platform = self.platforms[component]
        ticket = f"ticket@@@{secrets.token_urlsafe(24)}"
        platform.tickets = [*platform.tickets[-1:], (ticket, now)]
        return (
            f"<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>{int(now)}</CreateTime>"
            "<InfoType><![CDATA[component_verify_ticket]]></InfoType>"
            f"<ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
        ).encode()

    def authorize(self, component: str, appid: str | None, now: float, *, update: bool) -> bytes:
        """An account authorizes (again): a one-time code, and the event's inner XML."""
        platform = self.platforms[component]
        appid = appid or f"wxb{secrets.randbits(60):015x}"
        code = f"queryauthcode@@@{secrets.token_urlsafe(24)}"
        expires = now + platform.config.code_lifetime
        platform.codes[code] = (appid, expires)
        info = "updateauthorized" if update else "authorized"
        return (
            f"<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>{int(now)}</CreateTime>"
            f"<InfoType><![CDATA[{info}]]></InfoType>"
            f"<AuthorizerAppid><![CDATA[{appid}]]></AuthorizerAppid>"
            f"<AuthorizationCode><![CDATA[{code}]]></AuthorizationCode>"
            f"<AuthorizationCodeExpiredTime>{int(expires)}</AuthorizationCodeExpiredTime>"
            f"<PreAuthCode><![CDATA[preauthcode@@@{secrets.token_urlsafe(8)}]]></PreAuthCode></xml>"
        ).encode()

    def unauthorize(self, component: str, appid: str, now: float) -> bytes:
        platform = self.platforms[component]
        found = platform.authorizer(appid)
        if found is not None:
            found.authorized = False
            found.tokens.clear()
        return (
            f"<xml><AppId><![CDATA[{component}]]></AppId><CreateTime>{int(now)}</CreateTime>"
            "<InfoType><![CDATA[unauthorized]]></InfoType>"
            f"<AuthorizerAppid><![CDATA[{appid}]]></AuthorizerAppid></xml>"
        ).encode()

    def revoke_refresh_token(self, component: str, appid: str) -> None:
        """That authorizer's refresh tokens die (as if re-issued elsewhere): 61023 for it."""
        found = self.platforms[component].authorizer(appid)
        if found is not None:
            found.refresh_token = f"revoked@@@{secrets.token_urlsafe(8)}"
            found.previous_refresh = None

    def revoke_tokens(self, component: str, appid: str) -> None:
        """That authorizer's access tokens die at once (40001), its refresh token lives."""
        found = self.platforms[component].authorizer(appid)
        if found is not None:
            found.tokens.clear()

    # -- WeChat's endpoints ----------------------------------------------------

    def component_token(self, body: dict[str, object], now: float) -> Reply:
        component = text(body, "component_appid")
        platform = self.platforms.get(component)
        if platform is None:
            return error(40013, "invalid appid")
        platform.count("api_component_token")
        if text(body, "component_appsecret") != platform.config.component_appsecret:
            return error(40125, "invalid appsecret")
        refused = platform.ticket_error(text(body, "component_verify_ticket"), now)
        if refused is not None:
            return refused
        token = f"component@@@{secrets.token_urlsafe(32)}"
        lifetime = platform.config.component_token_lifetime
        rotate(platform.component_tokens, token, now + lifetime, now, platform.grace)
        return {"component_access_token": token, "expires_in": lifetime}

    def query_auth(self, upper: str, body: dict[str, object], now: float) -> Reply:
        platform, refused = self._platform(upper, body, now, "api_query_auth")
        if platform is None:
            return refused
        code = text(body, "authorization_code")
        appid, expires = platform.codes.pop(code, ("", 0.0))
        if not appid or now > expires:
            return error(61010, "code is expired or invalid")
        found = platform.authorizer(appid)
        refresh = f"refresh@@@{secrets.token_urlsafe(24)}"
        if found is None:
            found = platform.authorizers[appid] = _Authorizer(refresh_token=refresh)
            platform.order.append(appid)
        found.refresh_token, found.previous_refresh, found.authorized = refresh, None, True
        found.auth_time = int(now)
        token, lifetime = self._issue(platform, appid, found, now)
        info = {
            "authorizer_appid": appid,
            "authorizer_access_token": token,
            "expires_in": lifetime,
            "authorizer_refresh_token": refresh,
            "func_info": [{"funcscope_category": {"id": 1}}],
        }
        return {"authorization_info": info}

    def authorizer_token(self, upper: str, body: dict[str, object], now: float) -> Reply:
        platform, refused = self._platform(upper, body, now, "api_authorizer_token")
        if platform is None:
            return refused
        appid = text(body, "authorizer_appid")
        given = text(body, "authorizer_refresh_token")
        found = platform.authorizer(appid)
        if found is None or not found.authorized:
            return error(61003, "component is not authorized by this account")
        valid = given == found.refresh_token or (
            given == found.previous_refresh and now < found.previous_until
        )
        if not valid:
            return error(61023, "refresh_token is invalid")
        platform.refreshes_of[appid] = platform.refreshes_of.get(appid, 0) + 1
        if platform.config.rotate_refresh_tokens and given == found.refresh_token:
            found.previous_refresh, found.previous_until = (
                given,
                now + platform.config.refresh_grace,
            )
            found.refresh_token = f"refresh@@@{secrets.token_urlsafe(24)}"
        token, lifetime = self._issue(platform, appid, found, now)
        return {
            "authorizer_access_token": token,
            "expires_in": lifetime,
            "authorizer_refresh_token": found.refresh_token,
        }

    def authorizer_list(self, upper: str, body: dict[str, object], now: float) -> Reply:
        platform, refused = self._platform(upper, body, now, "api_get_authorizer_list")
        if platform is None:
            return refused
        offset, count = body.get("offset"), body.get("count")
        if not isinstance(offset, int) or not isinstance(count, int) or not 0 < count <= 500:
            return error(40097, "invalid args: offset, and count from 1 to 500")
        n = platform.config.authorizers
        appids = [authorizer_appid(i) for i in range(offset, min(n, offset + count))]
        appids += platform.order[max(0, offset - n) : max(0, offset + count - n)]
        rows = []
        for appid in appids:
            found = platform.authorizer(appid)
            # A revoked grant is not listed: the account must authorize again.
            if found is not None and found.authorized and "revoked@@@" not in found.refresh_token:
                rows.append(
                    {
                        "authorizer_appid": appid,
                        "refresh_token": found.refresh_token,
                        "auth_time": found.auth_time,
                    }
                )
        return {"total_count": n + len(platform.order), "list": rows}

    def check_authorizer_token(self, token: str, now: float) -> Reply | None:
        """For getcallbackip: None if ``token`` is no authorizer token, else the answer."""
        owner = self._token_owner.get(token)
        if owner is None:
            return None
        platform = self.platforms[owner[0]]
        found = platform.authorizers.get(owner[1])
        expires = found.tokens.get(token) if found is not None else None
        if expires is None:
            return error(40001, "invalid credential, access_token is invalid or not latest")
        if now >= expires:
            return error(42001, "access_token expired")
        return {"ip_list": ["127.0.0.1"]}

    def stats(self) -> dict[str, object]:
        return {
            component: {"counts": p.counts, "refreshes": p.refreshes_of}
            for component, p in self.platforms.items()
        }

    def _platform(
        self, upper: str, body: dict[str, object], now: float, endpoint: str
    ) -> tuple[PlatformState | None, Reply]:
        platform = self.platforms.get(text(body, "component_appid"))
        if platform is None:
            return None, error(40013, "invalid appid")
        platform.count(endpoint)
        refused = platform.component_error(upper, now)
        if refused is not None:
            return None, refused
        return platform, {}

    def _issue(
        self, platform: PlatformState, appid: str, found: _Authorizer, now: float
    ) -> tuple[str, int]:
        token = f"authorizer@@@{secrets.token_urlsafe(32)}"
        lifetime = platform.config.authorizer_token_lifetime
        for old in [t for t, e in found.tokens.items() if e <= now]:
            self._token_owner.pop(old, None)
        rotate(found.tokens, token, now + lifetime, now, platform.grace)
        self._token_owner[token] = (platform.config.component_appid, appid)
        return token, lifetime


def rotate(tokens: dict[str, float], token: str, expires: float, now: float, grace: float) -> None:
    """The new token; the previous ones keep at most ``grace`` s (like classic tokens)."""
    for old, old_expires in list(tokens.items()):
        tokens[old] = min(old_expires, now + grace)
        if tokens[old] <= now:
            del tokens[old]
    tokens[token] = expires


def text(body: dict[str, object], key: str) -> str:
    """A request body's text field; "" when absent or not text."""
    value = body.get(key)
    return value if isinstance(value, str) else ""
