"""WeCom third-party apps (企业微信第三方应用): the suite token, corp tokens, the provider token.

The suite_access_token is fetched with the suite's secret and the newest
``suite_ticket`` WeCom pushed (every 10 minutes, valid 30); each authorized
corp's access_token with the suite token and that corp's permanent code (a
long-lived secret, kept like a refresh token); the provider_access_token with
the provider's corpid and secret alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from wxtokend.config import AppConfig, Grant
from wxtokend.credential import Token
from wxtokend.errcodes import Errcode
from wxtokend.errors import FetchError, ReauthorizationNeeded, TransientError
from wxtokend.kinds.base import Attempt, Call
from wxtokend.kinds.component import parse_token_field
from wxtokend.kinds.official import ERRCODES
from wxtokend.kinds.wecom import WECOM_ERRCODES
from wxtokend.store import TOKEN

__all__ = [
    "PROVIDER_TOKEN",
    "SUITE_ERRCODES",
    "SUITE_TICKET_REFUSED",
    "SUITE_TOKEN",
    "ProviderToken",
    "SuiteToken",
    "corp_token_call",
    "permanent_code_call",
]

SUITE_TICKET_REFUSED: Final = (40085,)
_WAIT_FOR_PUSH = "waiting for WeCom's next suite_ticket push (every 10 minutes)"
SUITE_ERRCODES: Final[dict[int, Errcode]] = {
    **ERRCODES,
    **WECOM_ERRCODES,
    40082: Errcode(
        kind=TransientError,
        meaning="invalid suite_access_token",
        fix="",
        retry="refreshing the suite token",
    ),
    40084: Errcode(
        kind=ReauthorizationNeeded,
        meaning="invalid permanent_code",
        fix="the corp must install the app again (its administrator authorizes it anew)",
    ),
    40085: Errcode(
        kind=TransientError,
        meaning="invalid suite_ticket",
        fix="check that WeCom's pushes reach the callback listener (the app's 指令回调URL)",
        retry=_WAIT_FOR_PUSH,
    ),
    42009: Errcode(
        kind=TransientError,
        meaning="suite_access_token expired",
        fix="",
        retry="refreshing the suite token",
    ),
}


class SuiteToken:
    """A WeCom suite's suite_access_token, fetched with its pushed suite_ticket."""

    __slots__ = ()
    name: Final = TOKEN  # its files: output_dir/<suite>/suite_access_token(.json)
    depends_on: str | None = "suite_ticket"
    repeat_keeps_times: Final = False

    def label(self, app: AppConfig) -> str:
        return "suite"

    def renewal(self, app: AppConfig) -> Grant:
        return "classic"

    def fleet_key(self, app: AppConfig) -> str:
        return f"{app.appid}:suite"

    def log_context(self) -> dict[str, str]:
        return {"credential": "suite_access_token"}

    async def fetch(self, attempt: Attempt, *, force: bool) -> Token:
        ticket = attempt.dependency
        held = ticket.record if ticket is not None else None
        if ticket is None or held is None or not ticket.has_valid_token():
            raise TransientError("no suite_ticket yet", retry=_WAIT_FOR_PUSH)
        try:
            async with attempt.on_wire():
                return await attempt.upstream.fetch(self, attempt.app, using=held.access_token)
        except TransientError as exc:
            if exc.errcode in SUITE_TICKET_REFUSED:
                attempt.off_wire()
                await ticket.report_rejected(token=held.access_token, internal=True)
            raise

    def call(self, app: AppConfig, *, force: bool, using: str | None) -> Call:
        assert using is not None, "the suite token is fetched with the suite_ticket"
        body = {"suite_id": app.appid, "suite_secret": app.secret.reveal(), "suite_ticket": using}
        return Call(
            method="POST", endpoint="/cgi-bin/service/get_suite_token", body=body, sent=(using,)
        )

    def errcodes(self, app: AppConfig) -> Mapping[int, Errcode]:
        return SUITE_ERRCODES

    def reply_error(self, body: Any) -> FetchError | None:
        return None

    def parse(self, body: Any, *, fetched_at: float) -> Token:
        return parse_token_field(body, "suite_access_token", fetched_at=fetched_at)


class ProviderToken(SuiteToken):
    """The service provider's provider_access_token: its corpid and provider secret, no ticket."""

    __slots__ = ()
    depends_on = None

    def label(self, app: AppConfig) -> str:
        return "provider"

    def fleet_key(self, app: AppConfig) -> str:
        return f"{app.appid}:provider"

    def log_context(self) -> dict[str, str]:
        return {"credential": "provider_access_token"}

    async def fetch(self, attempt: Attempt, *, force: bool) -> Token:
        async with attempt.on_wire():
            return await attempt.upstream.fetch(self, attempt.app)

    def call(self, app: AppConfig, *, force: bool, using: str | None) -> Call:
        body = {"corpid": app.appid, "provider_secret": app.secret.reveal()}
        return Call(method="POST", endpoint="/cgi-bin/service/get_provider_token", body=body)

    def parse(self, body: Any, *, fetched_at: float) -> Token:
        return parse_token_field(body, "provider_access_token", fetched_at=fetched_at)


SUITE_TOKEN: Final = SuiteToken()
PROVIDER_TOKEN: Final = ProviderToken()


def _with_suite(endpoint: str, suite_token: str, body: Mapping[str, object], *sent: str) -> Call:
    return Call(
        method="POST",
        endpoint=f"/cgi-bin/service/{endpoint}",
        params={"suite_access_token": suite_token},
        body=body,
        sent=(suite_token, *sent),
    )


def permanent_code_call(suite_token: str, auth_code: str) -> Call:
    """``get_permanent_code``: a ``create_auth`` event's code for the corp's permanent code."""
    return _with_suite("get_permanent_code", suite_token, {"auth_code": auth_code}, auth_code)


def corp_token_call(suite_token: str, corpid: str, permanent_code: str) -> Call:
    """``get_corp_token``: an authorized corp's access_token."""
    body = {"auth_corpid": corpid, "permanent_code": permanent_code}
    return _with_suite("get_corp_token", suite_token, body, permanent_code)
