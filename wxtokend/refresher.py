"""One refresh loop per app: fetch, write, sleep until the schedule says so.

A :class:`Refresher` owns one app's token. It never has two fetches in flight
(a lock), takes a slot of the daemon-wide semaphore only for the network call,
and never touches the files except to replace a token with a newer one or to
note in the JSON that the token expired without a replacement.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from wxtokend.clock import Clock
from wxtokend.config import AppConfig
from wxtokend.errors import DailyQuotaError, FetchError, StateFileError, TransientError
from wxtokend.logs import REDACTOR, get_logger
from wxtokend.redact import fingerprint
from wxtokend.schedule import Policy, Rng, backoff, refresh_at, retry_at, unchanged_retry_at
from wxtokend.store import Record, TokenStore
from wxtokend.wechat import Token

__all__ = ["AppStatus", "Refresher", "TokenSource"]

State = Literal["pending", "ok", "failing", "expired"]


class TokenSource(Protocol):
    """Where tokens come from: the WeChat client, or a fake in tests."""

    async def fetch_token(self, app: AppConfig, *, force: bool = False) -> Token: ...


@dataclass(frozen=True, kw_only=True)
class AppStatus:
    """A snapshot of one app for status pages, without the token itself."""

    name: str
    appid: str
    grant: str
    state: State
    expires_at: float | None
    fingerprint: str | None
    next_refresh: float
    consecutive_failures: int
    last_error: str | None
    hint: str | None


_WRITE_HINT = "let the user wxtokend runs as write to output_dir (and be in file_group); retrying"


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return str(t)


class Refresher:
    """Keeps one app's token files fresh."""

    def __init__(
        self,
        app: AppConfig,
        *,
        source: TokenSource,
        store: TokenStore,
        clock: Clock,
        rng: Rng,
        policy: Policy,
        semaphore: asyncio.Semaphore,
    ) -> None:
        self.app = app
        self._source = source
        self._store = store
        self._clock = clock
        self._rng = rng
        self._policy = policy
        self._semaphore = semaphore
        self._lock = asyncio.Lock()
        self._log = get_logger(app=app.name, appid=app.appid, grant=app.grant)
        self.record: Record | None = None
        self.next_at = clock.now()
        self._planned = self.next_at  # the refresh point, kept while a file write is retried
        self.failures = 0
        self.last_error: FetchError | None = None
        self._unsaved = False
        self.write_failures = 0
        self.write_error: str | None = None

    # -- state ---------------------------------------------------------------

    def has_valid_token(self) -> bool:
        record = self.record
        return record is not None and not record.expired and self._clock.now() < record.expires_at

    def status(self) -> AppStatus:
        record, error = self.record, self.last_error
        problem = str(error) if error else self.write_error
        state: State
        if record is None:
            state = "pending"
        elif not self.has_valid_token():
            state = "expired"
        else:
            state = "failing" if problem else "ok"
        return AppStatus(
            name=self.app.name,
            appid=self.app.appid,
            grant=self.app.grant,
            state=state,
            expires_at=record.expires_at if record else None,
            fingerprint=fingerprint(record.access_token) if record else None,
            next_refresh=self.next_at,
            consecutive_failures=self.failures,
            last_error=problem,
            hint=error.hint if error else (_WRITE_HINT if self.write_error else None),
        )

    # -- start ---------------------------------------------------------------

    def adopt_stored(self) -> bool:
        """Take over a still-valid token from an earlier run; True if one was adopted."""
        try:
            record = self._store.load(self.app.name)
        except StateFileError as exc:
            self._log.warning("state file ignored", reason=str(exc), fix="it will be replaced")
            return False
        if record is None:
            return False
        if record.appid != self.app.appid:
            # Another account's token must not be served under this app's name.
            self._store.remove(self.app.name)
            self._log.warning(
                "state file removed",
                reason=f"it holds a token of appid {record.appid}, not {self.app.appid}",
            )
            return False
        if (record.grant, record.api_base) != (self.app.grant, self.app.api_base):
            self._log.warning(
                "state file not reused",
                reason=f"fetched with grant {record.grant} from {record.api_base or '?'}",
                fix="a new token replaces it now",
            )
            return False
        now = self._clock.now()
        if record.expired or now >= record.expires_at:
            return False
        self.record = record
        self.next_at = self._planned = self._refresh_point(record, now)
        if record.interrupted():
            # WeChat may have issued a newer token, killing this one after ~5 minutes.
            self.next_at = self._planned = now
        self._save(record)  # repairs a bare file left behind by a crash; no-op otherwise
        REDACTOR.register(f"token:{self.app.name}", record.access_token, label="<token>")
        self._log.info(
            "refresh",
            outcome="reused",
            token=fingerprint(record.access_token),
            expires_in=int(record.expires_at - now),
            next_refresh=_iso(self.next_at),
            interrupted_fetch=record.interrupted() or None,
        )
        return True

    # -- loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Refresh forever; cancel the task to stop."""
        while True:
            await self._sleep_until(self.next_at)
            await self.step()

    async def step(self) -> None:
        """Whatever is due now: retry a failed file write, or refresh."""
        if self._unsaved and self.record is not None:
            self._write(self.record)
            return
        await self.refresh()

    async def ensure(self, *, attempts: int = 3) -> bool:
        """For ``--once``: a valid token on disk, fetched only if needed, retrying transients."""
        if self.has_valid_token() and self.next_at > self._clock.now():
            return True
        for attempt in range(attempts):
            if await self.refresh() and not self._unsaved:
                return True
            if self._unsaved:
                break
            if not isinstance(self.last_error, TransientError) or attempt == attempts - 1:
                break
            await self._clock.sleep(backoff(attempt + 1, self._rng, base=1.0, cap=5.0, floor=1.0))
        return self.has_valid_token() and not self._unsaved

    async def refresh(self, *, force: bool = False) -> bool:
        """One fetch for this app (never two at once); True on success."""
        async with self._lock:
            self._mark_refreshing()
            try:
                async with self._semaphore:
                    token = await self._source.fetch_token(self.app, force=force)
            except FetchError as error:
                self._failed(error)
                return False
            self._succeeded(token)
            return True

    # -- outcomes ------------------------------------------------------------

    def _succeeded(self, token: Token) -> None:
        now = self._clock.now()
        self.failures, self.last_error = 0, None
        previous = self.record
        if (
            previous is not None
            and not previous.expired
            and token.access_token == previous.access_token
        ):
            self.next_at = unchanged_retry_at(
                now=now,
                fetched_at=previous.fetched_at,
                expires_at=previous.expires_at,
                rng=self._rng,
                policy=self._policy,
            )
            self._log_refresh("unchanged", token, now)
            return
        record = Record.of(
            token,
            appid=self.app.appid,
            name=self.app.name,
            grant=self.app.grant,
            api_base=self.app.api_base,
        )
        REDACTOR.register(f"token:{self.app.name}", token.access_token, label="<token>")
        self.record = record
        self._planned = refresh_at(
            now=now,
            fetched_at=token.fetched_at,
            expires_at=token.expires_at,
            grant=self.app.grant,
            rng=self._rng,
            policy=self._policy,
        )
        self._log_refresh("ok" if self._write(record) else "unsaved", token, now)

    def _failed(self, error: FetchError) -> None:
        now = self._clock.now()
        self.failures += 1
        self.last_error = error
        valid_until = self.record.expires_at if self.has_valid_token() and self.record else None
        self.next_at = retry_at(
            now=now,
            error=error,
            attempt=self.failures,
            rng=self._rng,
            policy=self._policy,
            expires_at=valid_until,
        )
        log = self._log.warning if isinstance(error, TransientError) else self._log.error
        if isinstance(error, DailyQuotaError):
            self._log.error(
                "daily quota used up: no more fetches for this app until the reset",
                reset_at=_iso(self.next_at),
            )
        log(
            "refresh",
            outcome=error.outcome,
            errcode=error.errcode,
            error=str(error),
            hint=error.hint or None,
            attempt=self.failures,
            next_refresh=_iso(self.next_at),
            token_valid_for=int(valid_until - now) if valid_until else 0,
        )
        self._mark_if_expired()

    def _log_refresh(self, outcome: str, token: Token, now: float) -> None:
        self._log.info(
            "refresh",
            outcome=outcome,
            errcode=0,
            token=fingerprint(token.access_token),
            expires_in=token.expires_in,
            next_refresh=_iso(self.next_at),
            next_refresh_in=round(self.next_at - now, 1),
        )

    # -- files ---------------------------------------------------------------

    def _write(self, record: Record) -> bool:
        """Save, or keep the token in memory and retry the write soon (never refetch for it)."""
        if self._save(record):
            self._unsaved = False
            self.write_failures = 0
            self.write_error = None
            self.next_at = self._planned
            return True
        self._unsaved = True
        self.write_failures += 1
        self.next_at = self._clock.now() + backoff(
            self.write_failures, self._rng, base=1.0, cap=30.0, floor=1.0
        )
        return False

    def _save(self, record: Record) -> bool:
        try:
            self._store.save(record)
        except OSError as exc:
            where = exc.filename or self._store.directory
            self.write_error = f"cannot write token files: {exc.strerror} ({where})"
            self._log.error("write failed", error=self.write_error, fix=_WRITE_HINT)
            return False
        return True

    def _mark_refreshing(self) -> None:
        """Before a classic fetch, note it in the JSON: it will invalidate the current token."""
        record = self.record
        if self.app.grant == "classic" and record is not None and not self._unsaved:
            self._save(record.refreshing(self._clock.now()))

    def _mark_if_expired(self, *, force: bool = False) -> None:
        record = self.record
        if record is None or record.expired:
            return
        if not force and self._clock.now() < record.expires_at:
            return
        self.record = record.as_expired()
        self._save(self.record)
        error = self.last_error
        self._log.error(
            "token expired without a replacement; its file stays, marked expired in the JSON",
            last_error=str(error) if error else None,
            hint=error.hint if error else None,
        )

    async def _sleep_until(self, at: float) -> None:
        """Sleep until ``at``, waking at the token's expiry on the way to mark it.

        The waits are computed once, up front: the sleep itself runs on the
        monotonic clock, so a wall-clock step during it cannot stretch it.
        """
        now = self._clock.now()
        record = self.record
        if record is not None and not record.expired and now < record.expires_at < at:
            await self._clock.sleep(record.expires_at - now)
            self._mark_if_expired(force=True)
            now = record.expires_at
        await self._clock.sleep(at - now)

    def _refresh_point(self, record: Record, now: float) -> float:
        return refresh_at(
            now=now,
            fetched_at=record.fetched_at,
            expires_at=record.expires_at,
            grant=self.app.grant,
            rng=self._rng,
            policy=self._policy,
        )
