"""The emulator's ``suites:``: WeCom third-party apps it plays WeCom for."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from wxtokend.callback.crypto import check_aes_key, check_token

__all__ = ["EmulatedSuite", "suite_from"]

_ID = re.compile(r"[A-Za-z0-9]{6,64}")


@dataclass(frozen=True, kw_only=True)
class EmulatedSuite:
    """One suite; every duration in (possibly compressed) seconds."""

    suite_id: str
    suite_secret: str
    token: str
    encoding_aes_key: str
    callback_url: str = ""
    ticket_push_interval: float = 600.0
    suite_ticket_lifetime: float = 1800.0
    suite_token_lifetime: int = 7200
    corp_token_lifetime: int = 7200
    code_lifetime: float = 600.0
    provider_corpid: str = ""
    provider_secret: str = ""

    def __post_init__(self) -> None:
        problems = [
            None if _ID.fullmatch(self.suite_id) else "suite_id is not 6-64 letters and digits",
            None if self.suite_secret else "suite_secret is empty",
            check_token(self.token) and f"token {check_token(self.token)}",
            check_aes_key(self.encoding_aes_key)
            and f"encoding_aes_key {check_aes_key(self.encoding_aes_key)}",
            None if self.ticket_push_interval > 0 else "ticket_push_interval must be > 0",
            None
            if min(self.suite_token_lifetime, self.corp_token_lifetime) > 0
            else "token lifetimes must be > 0",
        ]
        for problem in problems:
            if problem:
                raise ValueError(problem)

    @property
    def component_appid(self) -> str:  # the pusher's name for the receiver's id
        return self.suite_id


def suite_from(value: object, where: str) -> EmulatedSuite:
    """A ``suites:`` entry; errors name ``where`` and the key."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: must be a mapping")
    types = {f.name: f.type for f in fields(EmulatedSuite)}
    unknown = sorted(set(value) - set(types))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    kwargs: dict[str, Any] = {}
    for key, raw in value.items():
        kind = {"str": str, "float": float, "int": int}[str(types[key])]
        if kind is str and not isinstance(raw, str):
            raise ValueError(f"{where}.{key}: must be text")
        if kind is not str and (isinstance(raw, bool) or not isinstance(raw, int | float)):
            raise ValueError(f"{where}.{key}: must be a number")
        kwargs[key] = kind(raw)
    try:
        return EmulatedSuite(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
