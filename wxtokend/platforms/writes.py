"""What an authorizer's refresh leaves on disk: its grant in the vault, then its files.

A write that fails is retried by itself, a few seconds later — never by fetching
again: a new ``api_authorizer_token`` call would rotate the refresh token (one
more secret to keep) and spend quota every few seconds while a disk is full.
Writes go through group commits, so a cold start of 100,000 authorizers costs
batches, not 100,000 thread hand-offs. In fleet mode the grant (and token) is
also published to Redis (:mod:`wxtokend.platforms.shared`) after the vault
write: the local copy first, then the fleet's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from wxtokend.credential import Token
from wxtokend.fleet import RedisDown
from wxtokend.platforms.commit import GroupCommit, each
from wxtokend.platforms.journal import Grant
from wxtokend.records import Record

if TYPE_CHECKING:
    from wxtokend.platforms.shared import GrantShare
    from wxtokend.platforms.vault import Vault
    from wxtokend.store import TokenStore

__all__ = ["Writes"]


class Authorizer(Protocol):
    """What is written of an authorizer (authorizers.Authorizer)."""

    appid: str
    refresh_token: str | None
    token: str | None
    fetched_at: float
    expires_at: float
    unsaved: bool
    unwritten: bool
    unshared: bool
    version: int

    def valid(self, now: float) -> bool: ...


class Writes:
    """One platform's grant and token-file writes."""

    def __init__(
        self,
        *,
        vault: Vault,
        store: TokenStore,
        api_base: str,
        log: Any,
        share: GrantShare | None = None,
    ) -> None:
        self._api_base, self._log = api_base, log
        self._share = share
        self.share_down = False  # logged once per outage, not once per authorizer
        self.grants: GroupCommit[Grant] = GroupCommit(lambda batch: _all(vault, batch))
        # Late bound: the store's save is looked up at each batch (tests replace it).
        self._files: GroupCommit[Record] = GroupCommit(each(lambda r: store.save(r)))

    async def write(self, entry: Authorizer, now: float) -> bool:
        """Whatever of ``entry`` is not on disk yet, grant first; True once all of it is."""
        if entry.unsaved and entry.refresh_token is not None:
            grant = Grant(appid=entry.appid, refresh_token=entry.refresh_token, updated_at=now)
            try:
                await self.grants.save(grant)
                entry.unsaved = entry.refresh_token != grant.refresh_token  # rotated meanwhile
            except OSError as exc:
                self._log.error(
                    "cannot write a refresh token to state_dir: kept in memory, retried in 5 s",
                    authorizer=entry.appid,
                    error=exc.strerror,
                    fix="make state_dir writable for the user wxtokend runs as",
                )
        if entry.unshared and self._share is not None:
            await self._publish(self._share, entry, now)
        if entry.unwritten and entry.token is not None:
            try:
                await self._files.save(self._record(entry))
                entry.unwritten = False
            except OSError as exc:
                self._log.error(
                    "cannot write token files: the token is kept, written again in 5 s",
                    authorizer=entry.appid,
                    error=exc.strerror,
                )
        return not (entry.unsaved or entry.unwritten or entry.unshared)

    async def _publish(self, share: GrantShare, entry: Authorizer, now: float) -> None:
        grant = entry.refresh_token
        if grant is None:
            entry.unshared = False
            return
        token = None
        if entry.token is not None and entry.valid(now):
            token = (entry.token, entry.fetched_at, entry.expires_at)
        try:
            version = await share.publish(entry.appid, grant, token, now=now)
        except RedisDown as exc:
            if not self.share_down:
                self._log.error(
                    "cannot publish refresh tokens to the fleet: kept in state_dir, retried",
                    error=str(exc),
                )
            self.share_down = True
            return
        self.share_down = False
        entry.unshared = entry.refresh_token != grant  # rotated meanwhile: publish that too
        if version is not None:
            entry.version = version

    def _record(self, entry: Authorizer) -> Record:
        assert entry.token is not None
        token = Token(
            access_token=entry.token,
            expires_in=round(entry.expires_at - entry.fetched_at),
            fetched_at=entry.fetched_at,
        )
        return Record.of(
            token, appid=entry.appid, name=entry.appid, grant="classic", api_base=self._api_base
        )


def _all(vault: Vault, batch: list[Grant]) -> list[OSError | None]:
    """One durable write for the whole batch: it succeeds or fails as one."""
    vault.save_grants(batch)
    return [None] * len(batch)
