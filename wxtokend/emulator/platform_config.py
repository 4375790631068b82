"""The emulator's ``platforms:``: Open Platform third-party platforms it plays WeChat for."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wxtokend.callback.crypto import check_aes_key, check_token

__all__ = ["EmulatedPlatform", "platform_from"]

_WXID = re.compile(r"wx[0-9a-f]{16}")


@dataclass(frozen=True, kw_only=True)
class EmulatedPlatform:
    """One platform; every duration is in (possibly compressed) seconds."""

    component_appid: str
    component_appsecret: str
    token: str
    encoding_aes_key: str
    callback_url: str = ""  # where tickets and authorization events are pushed
    ticket_push_interval: float = 600.0
    verify_ticket_lifetime: float = 43200.0
    component_token_lifetime: int = 7200
    authorizer_token_lifetime: int = 7200
    authorizers: int = 0  # pre-authorized accounts: appids wxa000000000000000, ...
    rotate_refresh_tokens: bool = True
    refresh_grace: float = 300.0  # how long a rotated-out refresh token still works
    code_lifetime: float = 3600.0  # an authorization code's life

    def __post_init__(self) -> None:
        problems = [
            None if _WXID.fullmatch(self.component_appid) else "component_appid is not wx+16 hex",
            None if self.component_appsecret else "component_appsecret is empty",
            check_token(self.token) and f"token {check_token(self.token)}",
            check_aes_key(self.encoding_aes_key)
            and f"encoding_aes_key {check_aes_key(self.encoding_aes_key)}",
            None if self.ticket_push_interval > 0 else "ticket_push_interval must be > 0",
            None if self.authorizers >= 0 else "authorizers must be >= 0",
            None
            if min(self.component_token_lifetime, self.authorizer_token_lifetime) > 0
            else "token lifetimes must be > 0",
        ]
        for problem in problems:
            if problem:
                raise ValueError(problem)


_NUMBERS = {
    "ticket_push_interval": float,
    "verify_ticket_lifetime": float,
    "component_token_lifetime": int,
    "authorizer_token_lifetime": int,
    "authorizers": int,
    "refresh_grace": float,
    "code_lifetime": float,
}
_TEXTS = ("component_appid", "component_appsecret", "token", "encoding_aes_key", "callback_url")


def platform_from(value: object, where: str) -> EmulatedPlatform:
    """A ``platforms:`` entry; errors name ``where`` and the key."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a mapping")
    unknown = sorted(set(value) - {*_NUMBERS, *_TEXTS, "rotate_refresh_tokens"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    kwargs: dict[str, Any] = {}
    for key in _TEXTS:
        if key in value:
            if not isinstance(value[key], str):
                raise ValueError(f"{where}.{key}: must be text")
            kwargs[key] = value[key]
    for key, kind in _NUMBERS.items():
        if key in value:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ValueError(f"{where}.{key}: must be a number")
            kwargs[key] = kind(number)
    if "rotate_refresh_tokens" in value:
        if not isinstance(value["rotate_refresh_tokens"], bool):
            raise ValueError(f"{where}.rotate_refresh_tokens: must be true or false")
        kwargs["rotate_refresh_tokens"] = value["rotate_refresh_tokens"]
    try:
        return EmulatedPlatform(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
