"""What a refresh loop holds, and what can be said of it.

:class:`Holding` is the state of one credential's loop: the record it serves,
valid by the wall clock *and* the monotonic one (a clock step either way is
safe), its failures and plan, and the status and health answers built from
them. It fetches nothing: :class:`~wxtokend.refresher.Refresher` does.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING

from wxtokend.clock import Clock
from wxtokend.config import AppConfig, Grant
from wxtokend.errors import FetchError
from wxtokend.kinds import Kind
from wxtokend.persist import Files
from wxtokend.redact import fingerprint
from wxtokend.status import AppStatus, State, stuck_reason
from wxtokend.store import Record

if TYPE_CHECKING:
    from wxtokend.kinds.base import Dependency

__all__ = ["Holding"]


class Holding:
    """One credential as its loop holds it: the record, its validity, its status."""

    __slots__ = (
        "_arrived",
        "_clock",
        "_dependency",
        "_expires_mono",
        "_files",
        "_wake_due",
        "app",
        "busy_since",
        "credential_kind",
        "failures",
        "kind",
        "last_error",
        "next_at",
        "record",
        "stem",
        "waiting_for_token",
    )

    def __init__(
        self,
        app: AppConfig,
        kind: Kind,
        *,
        clock: Clock,
        files: Files,
        dependency: Dependency | None,
        stem: str | None = None,
    ) -> None:
        self.app = app
        self.stem = stem or app.name  # its files' name: the app's, unless told otherwise
        self.credential_kind = kind
        self.kind = kind.name  # what the store calls its files
        self._clock = clock
        self._files = files
        self._dependency = dependency
        self._arrived = asyncio.Event()  # set (and replaced) whenever a new value is in place
        self.record: Record | None = None
        # When the record's token expires on the monotonic clock: a wall clock set
        # back must not stretch its life (one set forward shortens it, by wall time).
        self._expires_mono = float("inf")
        self.next_at = clock.now()
        self.failures = 0
        self.last_error: FetchError | None = None
        self.busy_since: float | None = None  # monotonic start of the fetch on the wire
        self._wake_due: float | None = None  # monotonic deadline of the current sleep
        self.waiting_for_token = False  # its dependency has no valid value yet

    @property
    def dependency(self) -> Dependency | None:
        return self._dependency

    # -- what this loop keeps, as its kind says ------------------------------

    @property
    def schedule_grant(self) -> Grant:
        """Which timing rules apply: the app's grant for its token, classic for tickets."""
        return self.credential_kind.renewal(self.app)

    @property
    def credential(self) -> str:
        """The label in metrics and status: the grant for a token, ``jsapi_ticket`` etc."""
        return self.credential_kind.label(self.app)

    @property
    def fleet_key(self) -> str:
        """This credential's name in Redis (a WeCom corp's applications differ by secret)."""
        return self.credential_kind.fleet_key(self.app)

    # -- state ---------------------------------------------------------------

    @property
    def writing_since(self) -> float | None:
        """Monotonic start of a file write in progress."""
        return self._files.writing_since

    def clock_now(self) -> float:
        return self._clock.now()

    def on_disk(self) -> bool:
        """A valid token whose files are written (not just fetched)."""
        record = self.record
        return (
            self.has_valid_token() and record is not None and self._files.holds(record.access_token)
        )

    def has_valid_token(self) -> bool:
        """Valid by the wall clock *and* the monotonic one: a clock step either way is safe."""
        return self.valid_for() > 0

    def valid_for(self) -> float:
        """Seconds the current token has left (0 if none): the lesser of both clocks' answer."""
        record = self.record
        if record is None or record.expired:
            return 0.0
        left = min(
            record.expires_at - self._clock.now(), self._expires_mono - self._clock.monotonic()
        )
        return max(0.0, left)

    def _hold(self, record: Record, expires_in: float) -> None:
        """Take ``record`` as the current token, valid ``expires_in`` seconds from now."""
        self.record = record
        self._expires_mono = self._clock.monotonic() + expires_in

    def status(self) -> AppStatus:
        record, error, files = self.record, self.last_error, self._files
        problem = str(error) if error else files.write_error
        state: State
        if record is None:
            state = "pending"
        elif not self.has_valid_token():
            state = "expired"
        else:
            state = "failing" if problem else "ok"
        status = AppStatus(
            name=self.app.name,
            appid=self.app.appid,
            grant=self.credential,
            state=state,
            expires_at=record.expires_at if record else None,
            fingerprint=fingerprint(record.access_token) if record else None,
            next_refresh=self.next_at,
            consecutive_failures=self.failures,
            last_error=problem,
            hint=error.hint if error else (files.write_hint if files.write_error else None),
        )
        if not self.waiting_for_token or problem is not None or self._dependency is None:
            return status
        needed = self._dependency.status()
        why = f": {needed.last_error}" if needed.last_error else ""
        return replace(status, last_error=f"waiting for the access_token{why}", hint=needed.hint)

    def stuck(self, *, fetch_limit: float) -> str | None:
        """Why this loop looks stuck (a fetch hanging, a wake-up long overdue), or None."""
        return stuck_reason(
            mono=self._clock.monotonic(),
            busy_since=self.busy_since,
            writing_since=self._files.writing_since,
            wake_due=self._wake_due,
            fetch_limit=fetch_limit,
        )

    # -- waiting for a dependency, or for a token to arrive ------------------

    def _announce_arrival(self) -> None:
        """Wake everything waiting for a token (ticket loops at a cold start)."""
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()

    async def until_valid(self, within: float | None) -> bool:
        """Until this loop holds a valid token (True), or ``within`` seconds passed."""
        if self.has_valid_token():
            return True
        if within is None:
            await self._arrived.wait()
        else:
            await self._clock.wait(self._arrived, within)
        return self.has_valid_token()
