"""The events inside WeChat's callbacks, each value checked where it enters.

Open Platform (InfoType): ``component_verify_ticket``, ``authorized``,
``updateauthorized``, ``unauthorized``. WeCom third-party apps: ``suite_ticket``,
``create_auth``, ``change_auth``, ``cancel_auth``. Anything else is answered
``success`` and ignored (:func:`parse_event` returns None). Tickets and codes are
secrets: their fields never show in a repr, and a refusal names the field, not
its value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

from wxtokend.callback.crypto import xml_fields
from wxtokend.errors import BadCallback

__all__ = [
    "Authorized",
    "CorpAuthorized",
    "CorpCancelled",
    "CorpChanged",
    "Event",
    "Product",
    "Unauthorized",
    "VerifyTicket",
    "parse_event",
]

Product = Literal["open", "wecom"]
_APPID = re.compile(r"wx[0-9a-f]{16}")
_ID = re.compile(r"[A-Za-z0-9]{6,64}")  # a corpid or suite_id
_SECRET = re.compile(r"[\x21-\x7e]{1,512}")
_MAX_TIME: Final = 10**11  # unix seconds, or milliseconds would be refused


@dataclass(frozen=True, kw_only=True)
class VerifyTicket:
    """A pushed component_verify_ticket (Open Platform) or suite_ticket (WeCom)."""

    receiver: str
    ticket: str = field(repr=False)
    created_at: float
    product: Product


@dataclass(frozen=True, kw_only=True)
class Authorized:
    """An account authorized the platform (or changed what it authorized)."""

    receiver: str
    authorizer_appid: str
    authorization_code: str = field(repr=False)
    code_expires_at: float
    updated: bool


@dataclass(frozen=True, kw_only=True)
class Unauthorized:
    """An account withdrew its authorization: its tokens are dead."""

    receiver: str
    authorizer_appid: str


@dataclass(frozen=True, kw_only=True)
class CorpAuthorized:
    """A corp installed the WeCom app: its auth code buys the permanent code."""

    receiver: str
    auth_code: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class CorpChanged:
    """A corp changed what it granted the WeCom app."""

    receiver: str
    corpid: str


@dataclass(frozen=True, kw_only=True)
class CorpCancelled:
    """A corp uninstalled the WeCom app."""

    receiver: str
    corpid: str


Event = VerifyTicket | Authorized | Unauthorized | CorpAuthorized | CorpChanged | CorpCancelled


def parse_event(message: bytes, *, product: Product) -> Event | None:
    """The event in a decrypted callback message, or None for one wxtokend does not use."""
    fields = xml_fields(message)
    if product == "open":
        return _open_platform(fields)
    return _wecom(fields)


def _open_platform(f: dict[str, str]) -> Event | None:
    info = f.get("InfoType")
    receiver = _id(f, "AppId", _APPID)
    if info == "component_verify_ticket":
        ticket = _secret(f, "ComponentVerifyTicket")
        return VerifyTicket(
            receiver=receiver, ticket=ticket, created_at=_time(f, "CreateTime"), product="open"
        )
    if info in ("authorized", "updateauthorized"):
        return Authorized(
            receiver=receiver,
            authorizer_appid=_id(f, "AuthorizerAppid", _APPID),
            authorization_code=_secret(f, "AuthorizationCode"),
            code_expires_at=_time(f, "AuthorizationCodeExpiredTime"),
            updated=info == "updateauthorized",
        )
    if info == "unauthorized":
        return Unauthorized(receiver=receiver, authorizer_appid=_id(f, "AuthorizerAppid", _APPID))
    return None


def _wecom(f: dict[str, str]) -> Event | None:
    info = f.get("InfoType")
    if info not in ("suite_ticket", "create_auth", "change_auth", "cancel_auth"):
        return None
    receiver = _id(f, "SuiteId", _ID)
    if info == "suite_ticket":
        ticket = _secret(f, "SuiteTicket")
        return VerifyTicket(
            receiver=receiver, ticket=ticket, created_at=_time(f, "TimeStamp"), product="wecom"
        )
    if info == "create_auth":
        return CorpAuthorized(receiver=receiver, auth_code=_secret(f, "AuthCode"))
    corpid = _id(f, "AuthCorpId", _ID)
    if info == "change_auth":
        return CorpChanged(receiver=receiver, corpid=corpid)
    return CorpCancelled(receiver=receiver, corpid=corpid)


def _id(f: dict[str, str], name: str, shape: re.Pattern[str]) -> str:
    value = f.get(name, "")
    if not shape.fullmatch(value):
        raise BadCallback(f"{name} missing or not an id")
    return value


def _secret(f: dict[str, str], name: str) -> str:
    value = f.get(name, "")
    if not _SECRET.fullmatch(value):
        raise BadCallback(f"{name} missing or not 1-512 visible ASCII characters")
    return value


def _time(f: dict[str, str], name: str) -> float:
    value = f.get(name, "")
    if not value.isdigit() or not 0 < int(value) < _MAX_TIME:
        raise BadCallback(f"{name} missing or not unix seconds")
    return float(value)
