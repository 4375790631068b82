"""The access_token of a WeCom (企业微信) application: ``/cgi-bin/gettoken``.

One corp has one token per application secret. WeCom returns the same token
while it is valid and renews it only after expiry, so its loop asks again just
after the expiry instead of ahead of it. WeCom reuses some errcodes with its own
meaning: :data:`WECOM_ERRCODES` wins over the official table for its apps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from wxtokend.config import AppConfig
from wxtokend.errcodes import Errcode
from wxtokend.errors import DailyQuotaError, FatalConfigError
from wxtokend.kinds.base import Call
from wxtokend.kinds.official import ERRCODES, OfficialToken
from wxtokend.redact import fingerprint

__all__ = ["WECOM_ERRCODES", "WECOM_TOKEN", "WeComToken"]

_WECOM_COPY_FROM_CONSOLE = (
    "copy this application's Secret from the WeCom admin console (work.weixin.qq.com:"
    " 应用管理 → the application → Secret) into {source}"
)

# WeCom reuses some numbers with its own meaning; its own table wins for WeCom apps.
WECOM_ERRCODES: Final[dict[int, Errcode]] = {
    40001: Errcode(kind=FatalConfigError, meaning="invalid secret", fix=_WECOM_COPY_FROM_CONSOLE),
    40013: Errcode(
        kind=FatalConfigError,
        meaning="invalid corpid",
        fix="check corpid: it is the CorpID from the WeCom admin console (我的企业 → 企业信息)",
    ),
    40091: Errcode(
        kind=FatalConfigError, meaning="secret is invalid", fix=_WECOM_COPY_FROM_CONSOLE
    ),
    45009: Errcode(
        kind=DailyQuotaError,
        meaning="API call frequency limit reached",
        fix="WeCom limits how often a token may be fetched: if another system fetches with"
        " this application's secret, stop it",
        retry="no fetch until the reset",
    ),
}
_TABLE: Final[dict[int, Errcode]] = {**ERRCODES, **WECOM_ERRCODES}


class WeComToken(OfficialToken):
    """A WeCom application's token (its grant is ``wecom``: renewed after expiry)."""

    __slots__ = ()

    def fleet_key(self, app: AppConfig) -> str:
        # A corp's applications share the corpid and differ by secret.
        return f"{app.appid}:{app.grant}:{fingerprint(app.secret.reveal())}"

    def call(self, app: AppConfig, *, force: bool, using: str | None = None) -> Call:
        params = {"corpid": app.appid, "corpsecret": app.secret.reveal()}
        return Call(method="GET", endpoint="/cgi-bin/gettoken", params=params)

    def errcodes(self, app: AppConfig) -> Mapping[int, Errcode]:
        return _TABLE


WECOM_TOKEN: Final = WeComToken()
