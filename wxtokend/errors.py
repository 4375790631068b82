"""Every way wxtokend can fail, and what each failure means for the operator.

The tree::

    WxTokendError
    ├── ConfigError               a config file can't be used: names file, key path, fix
    ├── StateFileError            a <name>.json left by an earlier run can't be reused
    ├── OutputDirError            output_dir can't be created or written
    ├── ListenError               an admin address can't be listened on
    ├── BadCallback               a callback body refused: bad signature, replay, not ours
    └── FetchError                WeChat gave no usable token (carries errcode + hint)
        ├── TransientError        -1, HTTP 5xx, timeouts, connection errors: back off, retry
        │   ├── MalformedResponse 200 but not a usable token (garbage, truncated, bad fields)
        │   └── TokenRejectedError a ticket fetch was refused for its access_token: refresh it
        ├── MinuteQuotaError      45011: wait for the next minute
        ├── DailyQuotaError       45009: stop until the quota resets at 00:00 UTC+8
        ├── AdminWaitError        89501/89503/89506/89507: an admin must act; wait as told
        ├── FatalConfigError      bad secret, appid, IP whitelist, frozen...: a human must fix
        │   │                     it, retry at most every 10 minutes
        │   └── ReauthorizationNeeded 61023/61003: an authorizer must authorize the platform
        │                         again; never retried until it does
        └── UnknownErrcodeError   an errcode this version does not know: retry slowly

No message in this tree ever contains a secret or a token: :mod:`wxtokend.wechat`
builds them from the errcode table, and anything taken from the wire passes the
redactor first.
"""

from __future__ import annotations

__all__ = [
    "AdminWaitError",
    "BadCallback",
    "ConfigError",
    "DailyQuotaError",
    "FatalConfigError",
    "FetchError",
    "ListenError",
    "MalformedResponse",
    "MinuteQuotaError",
    "OutputDirError",
    "ReauthorizationNeeded",
    "StateFileError",
    "TokenRejectedError",
    "TransientError",
    "UnknownErrcodeError",
    "WxTokendError",
]


class WxTokendError(Exception):
    """Base of every error wxtokend raises on purpose."""


class ConfigError(WxTokendError):
    """A config is unusable; the message says where and how to fix it.

    ``problems`` holds one line per invalid input, each of the shape
    ``FILE: KEY.PATH: what is wrong — fix``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class StateFileError(WxTokendError):
    """A state file is corrupt or belongs to another app; it is ignored, never trusted."""


class OutputDirError(WxTokendError):
    """The token directory is unusable, so no token could ever reach a consumer."""


class ListenError(WxTokendError):
    """An admin address is taken or forbidden: probes and SDKs would find nobody there."""


class BadCallback(WxTokendError):
    """A callback from "WeChat" that must not be believed; the message says which check failed.

    Raised before anything in it is used: unsigned, forged, replayed, undecryptable or
    addressed to another receiver. Never contains the body, the key or the Token.
    """


class FetchError(WxTokendError):
    """A token fetch failed.

    ``errcode`` is WeChat's (``None`` for HTTP or transport failures), ``fix``
    what the operator should do (empty if nothing), ``retry`` what the daemon
    does about it (each kind has its default), ``outcome`` the short label used
    in logs and metrics. ``hint`` is both, for the daemon's logs and status; a
    one-shot command (``check --online``) retries nothing and shows ``fix`` only.
    """

    outcome = "error"
    retries = "retrying"

    def __init__(
        self, message: str, *, errcode: int | None = None, fix: str = "", retry: str = ""
    ) -> None:
        self.errcode = errcode
        self.fix = fix
        self.retry = retry or self.retries
        super().__init__(message)

    @property
    def hint(self) -> str:
        return f"{self.fix}; {self.retry}" if self.fix else self.retry


class TransientError(FetchError):
    """WeChat or the network hiccuped; the same call will likely work soon."""

    outcome = "transient"
    retries = "retrying with backoff"


class MalformedResponse(TransientError):
    """A reply that is not a usable token; treated as transient, never written."""

    outcome = "malformed"


class TokenRejectedError(TransientError):
    """40001/40014/42001 on a ticket fetch: the access_token is dead, not the ticket call."""

    outcome = "token_rejected"


class MinuteQuotaError(FetchError):
    """45011: too many calls this minute; the next minute is fine."""

    outcome = "minute_quota"
    retries = "waiting for the next minute"


class DailyQuotaError(FetchError):
    """45009: the daily quota is spent; calling again before the reset only fails."""

    outcome = "daily_quota"
    retries = "no fetch until the quota resets at 00:00 Beijing time"


class AdminWaitError(FetchError):
    """An administrator must confirm (or refused) this IP; ``wait`` is how long to hold off."""

    outcome = "admin_wait"

    def __init__(
        self, message: str, *, errcode: int, fix: str, wait: float, retry: str = ""
    ) -> None:
        self.wait = wait
        super().__init__(message, errcode=errcode, fix=fix, retry=retry or _retrying_in(wait))


class FatalConfigError(FetchError):
    """Retrying cannot help until a human changes something (secret, whitelist, account)."""

    outcome = "fatal"
    retries = "retrying every 10 min"


class ReauthorizationNeeded(FatalConfigError):
    """An authorizer's refresh token is dead: only its administrator authorizing again helps.

    Retrying would be a loop of refusals, so that authorizer waits for a new
    ``authorized`` event; every other authorizer goes on.
    """

    outcome = "reauthorize"
    retries = "not retried until it authorizes again"


class UnknownErrcodeError(FetchError):
    """An errcode missing from our table: retried slowly so it cannot burn the quota."""

    outcome = "unknown"
    retries = "retrying slowly"


def _retrying_in(seconds: float) -> str:
    if seconds >= 3600:
        return f"retrying in {seconds / 3600:g} h"
    return f"retrying in {seconds / 60:g} min"
