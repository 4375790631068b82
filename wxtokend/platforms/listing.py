"""``api_get_authorizer_list``: WeChat's own list of who authorized a platform.

It is how refresh tokens are recovered: every account's at a fresh start (no
state kept yet), and one account's when WeChat refuses the refresh token the
daemon holds (a rotation whose answer was lost, say) — before that account is
declared in need of re-authorization. Lookups share one sweep of the list, and a
sweep is reused for a minute, so a burst of refusals costs one pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from wxtokend.clock import Clock
from wxtokend.errors import FetchError
from wxtokend.kinds.base import Dependency
from wxtokend.persist import in_writer
from wxtokend.platforms.calls import LIST_PAGE, Sender
from wxtokend.platforms.journal import Grant

if TYPE_CHECKING:
    from wxtokend.platforms.authorizers import Authorizer
    from wxtokend.platforms.vault import Vault

__all__ = ["Listing", "save_held", "unsaved"]

_SWEEP_REUSED: Final = 60.0  # seconds
_REJECTED = (40001, 42001)  # the component token was refused


class _Adopts(Protocol):
    def adopt_listed(self, appid: str, refresh_token: str) -> bool: ...


class Listing:
    """One platform's view of its authorizer list."""

    def __init__(self, sender: Sender, component: Dependency, *, clock: Clock, log: Any) -> None:
        self._sender, self._component = sender, component
        self._clock, self._log = clock, log
        self._sweep: tuple[float, asyncio.Future[dict[str, str]]] | None = None

    async def sync(self, book: _Adopts) -> int:
        """Take every listed refresh token the book does not hold; how many were new."""
        while True:
            await self._component.until_valid(None)
            used = self._component.record
            try:
                listed = await self._list()
            except FetchError as exc:
                self._log.warning("api_get_authorizer_list failed; retrying", error=str(exc))
                if exc.errcode in _REJECTED and used is not None:
                    # Compare-and-refresh the component token, then ask again.
                    await self._component.report_rejected(
                        token=used.access_token, allow_force=False, internal=True
                    )
                await self._clock.sleep(2.0 if exc.errcode in _REJECTED else 30.0)
                continue
            added = sum(book.adopt_listed(appid, refresh) for appid, refresh in listed.items())
            self._log.info("authorizer list synced", authorizers=len(listed), new=added)
            return added

    async def grant_of(self, appid: str) -> str | None:
        """``appid``'s refresh token as the list has it now, if it is listed."""
        now = self._clock.monotonic()
        if self._sweep is None or now - self._sweep[0] > _SWEEP_REUSED:
            self._sweep = (now, asyncio.ensure_future(self._list()))
        try:
            listed = await asyncio.shield(self._sweep[1])
        except FetchError as exc:
            self._log.warning("api_get_authorizer_list failed", error=str(exc))
            self._sweep = None
            return None
        return listed.get(appid)

    async def _list(self) -> dict[str, str]:
        record = self._component.record
        if record is None or not self._component.has_valid_token():
            return {}
        listed: dict[str, str] = {}
        offset, total = 0, 1
        while offset < total:
            total, page = await self._sender.authorizer_page(record.access_token, offset)
            listed.update(page)
            if not page:
                break
            offset += LIST_PAGE
        return listed


async def save_held(entries: Mapping[str, Authorizer], vault: Vault, now: float, log: Any) -> None:
    """Save, in one batch, the listed grants of accounts whose token is still valid:
    no refresh is due to save them for hours. (The others are saved by their first
    refresh, as the grant it rotates to.)"""
    grants = [
        Grant(appid=e.appid, refresh_token=e.refresh_token, updated_at=now)
        for e in entries.values()
        if e.unsaved and e.valid(now) and e.refresh_token is not None
    ]
    if not grants:
        return
    try:
        await in_writer(vault.save_grants, grants)
    except OSError as exc:
        log.error("cannot write refresh tokens to state_dir", error=exc.strerror)
        return
    for grant in grants:
        entry = entries.get(grant.appid)
        if entry is not None and entry.refresh_token == grant.refresh_token:
            entry.unsaved = False  # not rotated meanwhile


def unsaved(
    entries: Mapping[str, Authorizer], among: Iterable[Authorizer] | None = None
) -> list[Authorizer]:
    """The entries whose live refresh token is not in the vault yet: of all ``entries``,
    or only of ``among`` (an earlier answer) that are still in ``entries``.

    Waiting on a shrinking list costs what is left at each look; scanning all
    100,000 entries five times a second was a sixth of a core at a cold start.
    """
    if among is None:
        return [e for e in entries.values() if e.unsaved and not e.needs_authorization]
    # The cheap test first: most of an earlier answer is saved by the next look.
    return [
        e for e in among if e.unsaved and entries.get(e.appid) is e and not e.needs_authorization
    ]
