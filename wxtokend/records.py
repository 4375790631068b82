"""What a state file holds: one Record per credential, and checking a file's JSON.

A ``<name>.json`` (or ``<name>.<kind>_ticket.json``) file is the daemon's memory
across restarts. Its JSON comes from disk, so nothing in it is trusted: every
field is checked before a Record exists, the credential itself by
:func:`wxtokend.credential.check`, the one validator of tokens and tickets.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields, replace

from wxtokend.config import Grant
from wxtokend.credential import InvalidCredential, Token, check
from wxtokend.errors import StateFileError

__all__ = ["TICKET_KINDS", "TOKEN", "Record", "file_name"]

TOKEN = "access_token"  # noqa: S105  # a kind label, not a credential
TICKET_KINDS = ("jsapi", "wx_card", "agent_config")


@dataclass(frozen=True, kw_only=True)
class Record:
    """What the files say about one credential: an app's token, or one of its tickets."""

    appid: str
    name: str
    grant: Grant
    access_token: str = field(repr=False)  # the ticket itself for a ticket record
    expires_at: int
    fetched_at: int
    expired: bool = False
    api_base: str = ""
    # Set just before a classic fetch: if the process dies before writing the
    # result, WeChat may have issued a newer token that kills this one.
    refresh_started_at: int | None = None
    kind: str = TOKEN  # or a ticket type: jsapi, wx_card, agent_config

    @classmethod
    def of(
        cls,
        token: Token,
        *,
        appid: str,
        name: str,
        grant: Grant,
        api_base: str,
        kind: str = TOKEN,
    ) -> Record:
        # Floor the expiry: a consumer trusting it must never overshoot.
        return cls(
            appid=appid,
            name=name,
            grant=grant,
            access_token=token.access_token,
            expires_at=math.floor(token.expires_at),
            fetched_at=math.floor(token.fetched_at),
            api_base=api_base,
            kind=kind,
        )

    @property
    def file(self) -> str:
        return file_name(self.name, self.kind)

    def as_expired(self) -> Record:
        return replace(self, expired=True)

    def refreshing(self, now: float) -> Record:
        return replace(self, refresh_started_at=math.floor(now))

    def interrupted(self) -> bool:
        """A classic fetch started after this token and never finished."""
        started = self.refresh_started_at
        return started is not None and started >= self.fetched_at

    def to_json(self) -> bytes:
        # The fields are all str, int, bool or None: a shallow read is asdict()'s result
        # without its deep copy, which was most of the cost of writing 100,000 files.
        data = {name: getattr(self, name) for name in _FIELDS}
        if self.kind != TOKEN:
            # A ticket file says what it holds: {"appid", "name", "type", "ticket", ...}.
            ticket = data.pop("access_token")
            data = {"appid": self.appid, "name": self.name, "type": self.kind, "ticket": ticket}
            data |= {k: getattr(self, k) for k in _FIELDS if k != "access_token"}
        return (json.dumps(data, ensure_ascii=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, kind: str = TOKEN, *, now: float | None = None) -> Record:
        """The record in a JSON state file; StateFileError if any field is unusable.

        ``now`` (default: the system clock) bounds how far in the future its times may lie.
        """
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise StateFileError("not valid JSON") from None
        if not isinstance(raw, dict):
            raise StateFileError("not a JSON object")
        key = "access_token" if kind == TOKEN else "ticket"
        token = raw.get(key)
        if kind != TOKEN and raw.get("type") != kind:
            raise StateFileError(f"it holds a {raw.get('type')!r} ticket, not {kind!r}")
        for name in ("appid", "name"):
            if not isinstance(raw.get(name), str):
                raise StateFileError(f"{name} is missing")
        if raw.get("grant") not in ("stable", "classic", "wecom"):
            raise StateFileError("grant is not stable, classic or wecom")
        times = [raw.get("expires_at"), raw.get("fetched_at")]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in times):
            raise StateFileError("expires_at / fetched_at are not unix seconds")
        try:
            check(token, fetched_at=times[1], expires_at=times[0], now=_now(now))
        except InvalidCredential as exc:
            raise StateFileError(f"{key}: {exc}") from None
        started = raw.get("refresh_started_at")
        if started is not None and (isinstance(started, bool) or not isinstance(started, int)):
            raise StateFileError("refresh_started_at is not unix seconds")
        return cls(
            appid=raw["appid"],
            name=raw["name"],
            grant=raw["grant"],
            access_token=str(token),
            expires_at=raw["expires_at"],
            fetched_at=raw["fetched_at"],
            expired=raw.get("expired") is True,
            api_base=str(raw.get("api_base", "")),
            refresh_started_at=started,
            kind=kind,
        )


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def file_name(name: str, kind: str = TOKEN) -> str:
    """``shop`` for the token, ``shop.jsapi_ticket`` for its jsapi ticket."""
    return name if kind == TOKEN else f"{name}.{kind}_ticket"


_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Record) if f.name != "kind")
