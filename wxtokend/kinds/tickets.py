"""JS-SDK tickets: jsapi and wx_card (official), jsapi and agent_config (WeCom).

A ticket is fetched with its app's current access_token, so it depends on the
token's loop. A ticket fetch refused for its token (40001/40014/42001) goes
through the token's compare-and-refresh, then asks once more: one token refresh
per dead token, never a loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from wxtokend.config import AppConfig, Grant, Ticket
from wxtokend.credential import Token
from wxtokend.errcodes import Errcode
from wxtokend.errors import (
    FatalConfigError,
    FetchError,
    MalformedResponse,
    TokenRejectedError,
    TransientError,
)
from wxtokend.kinds.base import Attempt, Call, Kind, parse_token
from wxtokend.store import TOKEN

__all__ = ["TicketKind"]

_TOKEN_REJECTED = (40001, 40014, 42001)
_ENDPOINTS: Final[dict[tuple[str, str], tuple[str, dict[str, str]]]] = {
    ("official", "jsapi"): ("/cgi-bin/ticket/getticket", {"type": "jsapi"}),
    ("official", "wx_card"): ("/cgi-bin/ticket/getticket", {"type": "wx_card"}),
    ("wecom", "jsapi"): ("/cgi-bin/get_jsapi_ticket", {}),
    ("wecom", "agent_config"): ("/cgi-bin/ticket/get", {"type": "agent_config"}),
}


class TicketKind:
    """One of an app's tickets, fetched with the token of ``token``'s kind."""

    __slots__ = ("_refusing", "_token", "name")
    depends_on: Final = TOKEN
    # A ticket repeated is simply valid for expires_in from now.
    repeat_keeps_times: Final = False

    def __init__(self, token: Kind, ticket: Ticket) -> None:
        self._token = token
        self.name: Ticket = ticket
        self._refusing = False  # fresh tokens refused too: stop refreshing the token for it

    def label(self, app: AppConfig) -> str:
        return f"{self.name}_ticket"

    def renewal(self, app: AppConfig) -> Grant:
        # Whether a re-fetch invalidates the previous ticket is not documented:
        # assume it may, like a classic token, and replace tickets well ahead.
        return "classic"

    def fleet_key(self, app: AppConfig) -> str:
        return f"{self._token.fleet_key(app)}:{self.name}"

    def log_context(self) -> dict[str, str]:
        return {"ticket": self.name}

    async def fetch(self, attempt: Attempt, *, force: bool) -> Token:
        tokens = attempt.dependency
        assert tokens is not None, "a ticket loop runs with its app's token loop"
        for attempt_no in (1, 2):
            token = tokens.record
            if token is None or not tokens.has_valid_token():
                raise TransientError(
                    "no valid access_token yet", retry="the ticket is fetched once the token is"
                )
            try:
                async with attempt.on_wire():
                    ticket = await attempt.upstream.fetch_ticket(
                        attempt.app, self.name, token.access_token
                    )
                self._refusing = False
                return ticket
            except TokenRejectedError:
                attempt.off_wire()
                if attempt_no == 2 or self._refusing:
                    # Even a freshly issued token is refused: refreshing again cannot help
                    # and would kill the token consumers hold. Wait as for a fatal error.
                    self._refusing = True
                    raise FatalConfigError(
                        f"the {self.name} ticket endpoint refuses even a fresh access_token",
                        errcode=40001,
                        fix="another system may be refreshing this appid's token (classic"
                        " grant), or the account may not use this ticket",
                    ) from None
                answer = await tokens.report_rejected(
                    token=token.access_token, allow_force=False, internal=True
                )
                attempt.warn(
                    "the ticket fetch was refused for its token: refreshed the token first",
                    result=answer.result,
                )
        raise AssertionError("unreachable")

    def call(self, app: AppConfig, *, force: bool, using: str | None) -> Call:
        assert using is not None, "a ticket is fetched with an access_token"
        endpoint, params = _ENDPOINTS[(app.kind, self.name)]
        return Call(
            method="GET", endpoint=endpoint, params={"access_token": using, **params}, sent=(using,)
        )

    def errcodes(self, app: AppConfig) -> Mapping[int, Errcode]:
        return self._token.errcodes(app)

    def reply_error(self, body: Any) -> FetchError | None:
        """40001/40014/42001 here mean the token was rejected: the caller refreshes it first."""
        errcode = body.get("errcode") if isinstance(body, dict) else None
        if errcode in _TOKEN_REJECTED:
            return TokenRejectedError(
                f"errcode {errcode}: the access_token was rejected fetching the {self.name} ticket",
                errcode=errcode,
                retry="refreshing the token, then the ticket",
            )
        return None

    def parse(self, body: Any, *, fetched_at: float) -> Token:
        """The ticket comes back in the token's shape: its value as ``access_token``."""
        if not isinstance(body, dict) or not isinstance(body.get("ticket"), str):
            raise MalformedResponse("reply has no ticket")
        return parse_token(
            {"access_token": body["ticket"], "expires_in": body.get("expires_in")},
            fetched_at=fetched_at,
        )
