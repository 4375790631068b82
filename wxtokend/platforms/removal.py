"""Forgetting an account that unauthorized the platform: its grant, its files, its entry.

WeChat's ``unauthorized`` event reaches one instance, which forgets the account
here. In fleet mode it also publishes a removal record
(:data:`~wxtokend.platforms.shared.REMOVED`); the other members do not forget on that
record's word (a replayed or late one must never cost a grant) but refresh the
account at once, and WeChat's refusal marks it (fleet_book.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wxtokend.persist import in_writer

if TYPE_CHECKING:
    from wxtokend.platforms.authorizers import AuthorizerBook
    from wxtokend.platforms.vault import Vault
    from wxtokend.store import TokenStore

__all__ = ["Forget"]


class Forget:
    """Forgets accounts of one platform."""

    def __init__(self, book: AuthorizerBook, vault: Vault, store: TokenStore, log: Any) -> None:
        self._book, self._vault, self._store, self._log = book, vault, store, log

    async def __call__(self, appid: str) -> bool:
        """Forget ``appid``; False if it was not held."""
        if self._book.entries.pop(appid, None) is None:
            return False
        await in_writer(self._vault.remove_grant, appid, self._book.now())
        await in_writer(self._store.remove, appid)
        self._log.warning("authorizer unauthorized the platform: files removed", authorizer=appid)
        return True
