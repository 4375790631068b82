"""What differs between the two third-party products, for the parts they share.

Both are a chain ticket → upper token → one token per authorized account, kept
with a long-lived secret per account. :class:`OpenPlatform`: the
component_verify_ticket, the component token, authorizers with a refresh token
that may rotate. :class:`WeComSuite`: the suite_ticket, the suite token, corps
with a permanent code that does not. The vault, the book and the platform run
either through this interface.
"""

from __future__ import annotations

import re
from typing import Any, Final, Protocol

from wxtokend.config import AppConfig
from wxtokend.credential import Token
from wxtokend.errors import MalformedResponse
from wxtokend.kinds.base import Call, Kind
from wxtokend.kinds.component import (
    COMPONENT_TOKEN,
    WITH_COMPONENT_ERRCODES,
    authorizer_token_call,
    parse_token_field,
    query_auth_call,
)
from wxtokend.kinds.suite import SUITE_ERRCODES, SUITE_TOKEN, corp_token_call, permanent_code_call
from wxtokend.platforms.vault import check_secret

__all__ = ["OPEN_PLATFORM", "WECOM_SUITE", "OpenPlatform", "Product", "WeComSuite"]

_APPID = re.compile(r"wx[0-9a-f]{16}")
_CORPID = re.compile(r"[A-Za-z0-9]{6,64}")


class Product(Protocol):
    """The calls and names one product uses for its accounts."""

    upper: Kind  # the component or suite token
    upper_file: str
    ticket_name: str
    ticket_lifetime: float
    errcodes: Any

    def check_id(self, value: object) -> str: ...

    def refresh_call(self, app: AppConfig, upper: str, account: str, grant: str) -> Call: ...

    def read_refresh(self, body: Any, grant: str, *, fetched_at: float) -> tuple[Token, str]:
        """The account's new token, and its grant (a rotated refresh token, or the same)."""
        ...

    def authorize_call(self, app: AppConfig, upper: str, code: str) -> Call: ...

    def read_authorize(self, body: Any, *, fetched_at: float) -> tuple[str, Token | None, str]:
        """(account id, its token if the reply carries one, its grant) from an authorization."""
        ...


class OpenPlatform:
    """Open Platform (开放平台) third-party platforms and their authorizers."""

    upper: Kind = COMPONENT_TOKEN
    upper_file = "component_access_token"
    ticket_name = "component_verify_ticket"
    ticket_lifetime = 12 * 3600.0
    errcodes: Any = WITH_COMPONENT_ERRCODES  # its calls carry the component token

    def check_id(self, value: object) -> str:
        if not isinstance(value, str) or not _APPID.fullmatch(value):
            raise ValueError("not an authorizer appid (wx followed by 16 hex digits)")
        return value

    def refresh_call(self, app: AppConfig, upper: str, account: str, grant: str) -> Call:
        return authorizer_token_call(app, upper, account, grant)

    def read_refresh(self, body: Any, grant: str, *, fetched_at: float) -> tuple[Token, str]:
        token = parse_token_field(body, "authorizer_access_token", fetched_at=fetched_at)
        rotated = body.get("authorizer_refresh_token") or grant
        return token, _secret(rotated, "authorizer_refresh_token")

    def authorize_call(self, app: AppConfig, upper: str, code: str) -> Call:
        return query_auth_call(app, upper, code)

    def read_authorize(self, body: Any, *, fetched_at: float) -> tuple[str, Token | None, str]:
        info = body.get("authorization_info") if isinstance(body, dict) else None
        if not isinstance(info, dict):
            raise MalformedResponse("api_query_auth reply has no authorization_info")
        appid = self._id(info.get("authorizer_appid"))
        token = parse_token_field(info, "authorizer_access_token", fetched_at=fetched_at)
        return appid, token, _secret(info.get("authorizer_refresh_token"), "refresh token")

    def _id(self, value: object) -> str:
        try:
            return self.check_id(value)
        except ValueError as exc:
            raise MalformedResponse(f"reply refused: {exc}") from None


class WeComSuite(OpenPlatform):
    """WeCom third-party apps (企业微信第三方应用) and the corps that installed them."""

    upper = SUITE_TOKEN
    upper_file = "suite_access_token"
    ticket_name = "suite_ticket"
    ticket_lifetime = 30 * 60.0
    errcodes = SUITE_ERRCODES

    def check_id(self, value: object) -> str:
        if not isinstance(value, str) or not _CORPID.fullmatch(value):
            raise ValueError("not a corpid (6-64 letters and digits)")
        return value

    def refresh_call(self, app: AppConfig, upper: str, account: str, grant: str) -> Call:
        return corp_token_call(upper, account, grant)

    def read_refresh(self, body: Any, grant: str, *, fetched_at: float) -> tuple[Token, str]:
        return parse_token_field(body, "access_token", fetched_at=fetched_at), grant

    def authorize_call(self, app: AppConfig, upper: str, code: str) -> Call:
        return permanent_code_call(upper, code)

    def read_authorize(self, body: Any, *, fetched_at: float) -> tuple[str, Token | None, str]:
        corp = body.get("auth_corp_info") if isinstance(body, dict) else None
        if not isinstance(corp, dict):
            raise MalformedResponse("get_permanent_code reply has no auth_corp_info")
        corpid = self._id(corp.get("corpid"))
        code = _secret(body.get("permanent_code"), "permanent_code")
        token = None
        if "access_token" in body:
            token = parse_token_field(body, "access_token", fetched_at=fetched_at)
        return corpid, token, code


def _secret(value: object, what: str) -> str:
    try:
        return check_secret(value, what)
    except ValueError as exc:
        raise MalformedResponse(f"reply refused: {exc}") from None


OPEN_PLATFORM: Final = OpenPlatform()
WECOM_SUITE: Final = WeComSuite()
