"""What a credential kind is: the part the refresh loop runs without knowing its name.

A kind says what it is called and keyed by, how to fetch it (its upstream call,
its reply and its errcode table), what it depends on, when to renew it and how to
validate it. The loop (:mod:`wxtokend.refresher`) plans, fetches through the
kind, and keeps the result; :class:`~wxtokend.wechat.WeChatClient` makes any
kind's :class:`Call` on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from wxtokend.config import AppConfig, Grant, Ticket
from wxtokend.credential import InvalidCredential, Token, check
from wxtokend.errcodes import Errcode
from wxtokend.errors import FetchError, MalformedResponse
from wxtokend.status import AppStatus, Passive

__all__ = [
    "Attempt",
    "Call",
    "Dependency",
    "Kind",
    "TicketSource",
    "TokenSource",
    "Upstream",
    "parse_token",
]


@dataclass(frozen=True, kw_only=True)
class Call:
    """One upstream request: method, endpoint, and a query or a JSON body.

    ``sent`` lists credentials the request carries besides the app's secret (a
    ticket call's access_token): they are scrubbed from every error text.
    """

    method: Literal["GET", "POST"]
    endpoint: str
    params: Mapping[str, str] | None = None
    body: Mapping[str, object] | None = None
    sent: tuple[str, ...] = field(default=(), repr=False)


class TokenSource(Protocol):
    """Where tokens come from: the WeChat client, or a fake in tests."""

    async def fetch_token(self, app: AppConfig, *, force: bool = False) -> Token: ...


class TicketSource(Protocol):
    """Where tickets come from: the WeChat client, or a fake in tests."""

    async def fetch_ticket(self, app: AppConfig, kind: Ticket, access_token: str) -> Token: ...


class Upstream(TokenSource, TicketSource, Protocol):
    """Both, and any kind's call: what the daemon talks to."""

    async def fetch(
        self, kind: Kind, app: AppConfig, *, force: bool = False, using: str | None = None
    ) -> Token: ...


class Held(Protocol):
    """A credential as a loop holds it (a store Record)."""

    @property
    def access_token(self) -> str: ...


class Dependency(Protocol):
    """The loop of the credential a kind is fetched with (a ticket: its app's token)."""

    @property
    def record(self) -> Held | None: ...

    def has_valid_token(self) -> bool: ...

    def status(self) -> AppStatus: ...

    async def until_valid(self, within: float | None) -> bool: ...

    async def report_rejected(
        self, *, token: str | None = None, allow_force: bool = True, internal: bool = False
    ) -> Passive: ...


class Attempt(Protocol):
    """What a kind's fetch may use of the loop running it."""

    @property
    def app(self) -> AppConfig: ...

    @property
    def upstream(self) -> Upstream: ...

    @property
    def dependency(self) -> Dependency | None: ...

    def on_wire(self) -> AbstractAsyncContextManager[None]:
        """Hold a slot of the daemon's concurrency limit while on the wire."""
        ...

    def off_wire(self) -> None:
        """The call is over (for a kind that then waits on something else)."""
        ...

    def warn(self, event: str, **fields: object) -> None: ...


class Kind(Protocol):
    """One kind of credential: an official token, a WeCom token, a ticket..."""

    @property
    def name(self) -> str:
        """The store's name for it: ``token``, or the ticket's (``jsapi``)."""
        ...

    @property
    def depends_on(self) -> str | None:
        """The kind it is fetched with, if any: its loop waits until that one is valid."""
        ...

    @property
    def repeat_keeps_times(self) -> bool:
        """Whether WeChat repeating the current value means "still valid, same expiry"."""
        ...

    def label(self, app: AppConfig) -> str:
        """Its label in metrics and status: ``classic``, ``jsapi_ticket``..."""
        ...

    def renewal(self, app: AppConfig) -> Grant:
        """Which timing rules of :mod:`wxtokend.schedule` renew it."""
        ...

    def fleet_key(self, app: AppConfig) -> str:
        """Its name in Redis: one per credential WeChat issues."""
        ...

    def log_context(self) -> dict[str, str]: ...

    async def fetch(self, attempt: Attempt, *, force: bool) -> Token:
        """A new value, from upstream (and from its dependency first, if it needs one)."""
        ...

    def call(self, app: AppConfig, *, force: bool, using: str | None) -> Call:
        """The request that fetches it; ``using`` is the dependency's value."""
        ...

    def errcodes(self, app: AppConfig) -> Mapping[int, Errcode]: ...

    def reply_error(self, body: Any) -> FetchError | None:
        """An errcode this kind reads before its table (a ticket's rejected token)."""
        ...

    def parse(self, body: Any, *, fetched_at: float) -> Token: ...


def parse_token(body: Any, *, fetched_at: float) -> Token:
    """Accept only a non-empty visible-ASCII token ≤ 512 chars with a lifetime of 1 s to a day."""
    if not isinstance(body, dict):
        raise MalformedResponse("reply is JSON but not an object")
    token, expires_in = body.get("access_token"), body.get("expires_in")
    if not isinstance(token, str) or not token:
        raise MalformedResponse("reply has no access_token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise MalformedResponse("expires_in is not a positive integer")
    try:
        check(token, fetched_at=fetched_at, expires_at=fetched_at + expires_in, now=fetched_at)
    except InvalidCredential as exc:
        # Named as WeChat spells them: the operator compares this with the reply.
        wire = {"token": "access_token", "lifetime": "expires_in"}.get(exc.field, exc.field)
        raise MalformedResponse(f"reply refused: {wire}: {exc}") from None
    return Token(access_token=token, expires_in=expires_in, fetched_at=fetched_at)
