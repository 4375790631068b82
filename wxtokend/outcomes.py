"""What a fetch's outcome does: to the held record, the plan, the files, metrics and logs.

:class:`Outcomes` takes a new value (fetched, adopted from the fleet, or left by
an earlier run) or a failure, plans the next refresh with :mod:`wxtokend.schedule`,
and keeps the files true: a new token written in order and retried, a classic
fetch noted before it kills the token consumers hold, an expired one marked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wxtokend.clock import Clock, iso
from wxtokend.config import AppConfig
from wxtokend.credential import Token
from wxtokend.errors import DailyQuotaError, FetchError, TransientError
from wxtokend.holding import Holding
from wxtokend.kinds import Kind
from wxtokend.logs import REDACTOR
from wxtokend.metrics import Metrics
from wxtokend.obtain import InFleet, Strategy
from wxtokend.persist import Files
from wxtokend.redact import fingerprint
from wxtokend.schedule import (
    Policy,
    Rng,
    backoff,
    fleet_refresh_at,
    refresh_at,
    retry_at,
    unchanged_retry_at,
)
from wxtokend.store import Record

if TYPE_CHECKING:
    from wxtokend.kinds.base import Dependency

__all__ = ["Outcomes"]


class Outcomes(Holding):
    """Success, failure and start-up of one credential's loop, and their files."""

    __slots__ = ("_log", "_metrics", "_obtain", "_planned", "_policy", "_rng")

    def __init__(
        self,
        app: AppConfig,
        kind: Kind,
        *,
        clock: Clock,
        files: Files,
        dependency: Dependency | None,
        stem: str | None,
        rng: Rng,
        policy: Policy,
        metrics: Metrics,
        log: Any,
        obtain: Strategy,
    ) -> None:
        super().__init__(app, kind, clock=clock, files=files, dependency=dependency, stem=stem)
        self._rng, self._policy = rng, policy
        self._metrics, self._log = metrics, log
        self._obtain = obtain
        self._planned = self.next_at  # the refresh point, kept while a file write is retried

    # -- start ---------------------------------------------------------------

    @property
    def log(self) -> Any:
        return self._log

    def reconfigure(self, app: AppConfig, *, policy: Policy) -> None:
        """A reload kept this app's fetch settings: take its new details, keep the token."""
        self.app = app
        self._policy = policy

    def adopt_stored(self, *, refetch: bool = False) -> bool:
        """Take over a still-valid token from an earlier run; True if one was adopted.

        ``refetch``: serve it, but fetch a new one at once (a reload changed the secret).
        """
        now = self._clock.now()
        record = self._files.stored(self.app, self.kind, now=now, name=self.stem)
        if record is None or record.expired or now >= record.expires_at:
            return False
        self._hold(record, record.expires_at - now)
        self.next_at = self._planned = self._refresh_point(
            record, now, fetched_at=record.fetched_at, expires_at=record.expires_at
        )
        if record.interrupted() or refetch:
            # Interrupted: WeChat may have issued a newer token, killing this one soon.
            self.next_at = self._planned = now
        self._files.save_now(record)  # repairs a bare file left behind by a crash; no-op otherwise
        REDACTOR.register(f"{self.kind}:{self.app.name}", record.access_token, label="<token>")
        self._metrics.refresh(self.app.name, self.credential, "reused", None)
        self._metrics.token(self.app.name, expires_at=record.expires_at, kind=self.kind)
        self._log.info(
            "refresh",
            outcome="reused",
            fingerprint=fingerprint(record.access_token),
            expires_in=int(record.expires_at - now),
            next_refresh=iso(self.next_at),
            interrupted_fetch=record.interrupted() or None,
        )
        return True

    # -- outcomes ------------------------------------------------------------

    async def _succeeded(self, token: Token, outcome: str = "ok") -> None:
        now = self._clock.now()
        self.failures, self.last_error = 0, None
        self._metrics.failures(self.app.name, 0, kind=self.kind)
        previous = self.record
        if (
            self.credential_kind.repeat_keeps_times
            and previous is not None
            and self.has_valid_token()  # else (a clock step, a long stop) its times are stale
            and token.access_token == previous.access_token
        ):
            self.next_at = unchanged_retry_at(
                now=now,
                fetched_at=previous.fetched_at,
                expires_at=previous.expires_at,
                rng=self._rng,
                policy=self._policy,
                grant=self.schedule_grant,
            )
            self._log_refresh("unchanged", token, now)
            return
        record = Record.of(
            token,
            appid=self.app.appid,
            name=self.stem,
            grant=self.app.grant,
            api_base=self.app.api_base,
            kind=self.kind,
        )
        REDACTOR.register(f"{self.kind}:{self.app.name}", token.access_token, label="<token>")
        self._hold(record, token.expires_at - now)
        self._planned = self._refresh_point(
            record, now, fetched_at=token.fetched_at, expires_at=token.expires_at
        )
        self.next_at = self._planned  # before the write: it yields, and may be cancelled
        saved = await self._write(record)
        self._announce_arrival()
        self._metrics.token(
            self.app.name, expires_at=record.expires_at, fetched=now, kind=self.kind
        )
        self._log_refresh(outcome if saved else "unsaved", token, now)

    async def _failed(self, error: FetchError) -> None:
        now = self._clock.now()
        self.failures += 1
        self.last_error = error
        left = self.valid_for()
        valid_until = now + left if left > 0 else None
        self.next_at = retry_at(
            now=now,
            error=error,
            attempt=self.failures,
            rng=self._rng,
            policy=self._policy,
            expires_at=valid_until,
        )
        self._metrics.refresh(self.app.name, self.credential, error.outcome, error.errcode)
        self._metrics.failures(self.app.name, self.failures, kind=self.kind)
        log = self._log.warning if isinstance(error, TransientError) else self._log.error
        if isinstance(error, DailyQuotaError):
            self._log.error(
                "daily quota used up: no more fetches for this app until the reset",
                reset_at=iso(self.next_at),
            )
        log(
            "refresh",
            outcome=error.outcome,
            errcode=error.errcode,
            error=str(error),
            hint=error.hint or None,
            attempt=self.failures,
            next_refresh=iso(self.next_at),
            token_valid_for=int(valid_until - now) if valid_until else 0,
        )
        await self._mark_if_expired()

    def _log_refresh(self, outcome: str, token: Token, now: float) -> None:
        self._metrics.refresh(self.app.name, self.credential, outcome, 0)
        self._log.info(
            "refresh",
            outcome=outcome,
            errcode=0,
            fingerprint=fingerprint(token.access_token),
            expires_in=token.expires_in,
            next_refresh=iso(self.next_at),
            next_refresh_in=round(self.next_at - now, 1),
        )

    def _refresh_point(
        self, record: Record, now: float, *, fetched_at: float, expires_at: float
    ) -> float:
        """When to replace ``record``: in a fleet, at one point per token (see schedule)."""
        # The token's exact times when known: the record's are floored to whole seconds.
        when = {"now": now, "fetched_at": fetched_at, "expires_at": expires_at}
        grant, rng, policy = self.schedule_grant, self._rng, self._policy
        if isinstance(self._obtain, InFleet):
            token_print = fingerprint(record.access_token)
            return fleet_refresh_at(
                **when, token_print=token_print, grant=grant, rng=rng, policy=policy
            )
        return refresh_at(**when, grant=grant, rng=rng, policy=policy)

    # -- files ---------------------------------------------------------------

    async def _write(self, record: Record) -> bool:
        """Save, or keep the token in memory and retry the write soon (never refetch for it)."""
        files = self._files
        if await files.save(record):
            files.unsaved = False
            files.write_failures = 0
            self.next_at = self._planned
            if files.on_written is not None:
                files.on_written()
            return True
        files.unsaved = True
        files.write_failures += 1
        self.next_at = self._clock.now() + backoff(
            files.write_failures, self._rng, base=1.0, cap=30.0, floor=1.0
        )
        return False

    async def _mark_refreshing(self) -> None:
        """Before a classic fetch, note it in the JSON: it will invalidate the current token.

        If the note cannot be written, neither could the new token be: the fetch would
        only kill the token consumers hold. While that one is valid, the fetch waits
        (a transient error, retried with backoff) for the disk to come back.
        """
        record, files = self.record, self._files
        if self.schedule_grant != "classic" or record is None or files.unsaved:
            return
        if await files.save(record.refreshing(self._clock.now())):
            return
        if self.has_valid_token() and files.written_token == record.access_token:
            raise TransientError(
                f"fetch deferred, the token on disk stays valid: {files.write_error}",
                fix=files.write_hint or "",
            )

    async def _mark_if_expired(self, *, force: bool = False) -> None:
        record = self.record
        if record is None or record.expired:
            return
        if not force and self.valid_for() > 0:
            return
        self.record = record.as_expired()
        await self._files.save(self.record)
        error = self.last_error
        self._log.error(
            "token expired without a replacement; its file stays, marked expired in the JSON",
            last_error=str(error) if error else None,
            hint=error.hint if error else None,
        )

    # -- waiting for the dependency -------------------------------------------

    async def _await_dependency(self) -> None:
        """Sleep until the value this kind is fetched with is valid, woken when it arrives.

        A cold start fetches the token first; a token that keeps failing is the token
        loop's error to report, not this one's. Meanwhile this loop's own file is
        still marked expired when its time comes.
        """
        dependency = self._dependency
        while dependency is not None and not dependency.has_valid_token():
            self.waiting_for_token = True
            record = self.record
            live = record is not None and not record.expired
            timeout = max(0.0, record.expires_at - self._clock.now()) if live and record else None
            if not await dependency.until_valid(timeout):
                await self._mark_if_expired(force=True)
        self.waiting_for_token = False
