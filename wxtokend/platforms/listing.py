"""``api_get_authorizer_list``: WeChat's own list of who authorized a platform.

It is how refresh tokens are recovered: every account's at a fresh start (no
state kept yet), and one account's when WeChat refuses the refresh token the
daemon holds (a rotation whose answer was lost, say) — before that account is
declared in need of re-authorization. Lookups share one sweep of the list, and a
sweep is reused for a minute, so a burst of refusals costs one pass.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

from wxtokend.clock import Clock
from wxtokend.errors import FetchError
from wxtokend.kinds.base import Dependency
from wxtokend.platforms.calls import LIST_PAGE, Sender

__all__ = ["Listing"]

_SWEEP_REUSED: Final = 60.0  # seconds
_REJECTED = (40001, 42001)  # the component token was refused


class _Adopts(Protocol):
    async def adopt_grant(self, appid: str, refresh_token: str) -> bool: ...


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
            added = 0
            for appid, refresh in listed.items():
                added += await book.adopt_grant(appid, refresh)
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
