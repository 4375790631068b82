"""Files of removed apps: kept until they expire, then deleted; the leftover sweep.

Consumers may still read a removed app's files, and a removal may be a
mistaken edit: each record no loop keeps waits for its expiry on a timer, which
a loop taking the files back (the app returns) cancels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from wxtokend.clock import iso
from wxtokend.errors import StateFileError
from wxtokend.store import file_name

if TYPE_CHECKING:
    from wxtokend.clock import Clock
    from wxtokend.refresher import Refresher
    from wxtokend.store import Record, TokenStore

__all__ = ["Retirer"]

Keeps = Callable[[str, str], bool]  # whether a loop keeps (name, kind)'s files


class Retirer:
    """The timers of records no loop keeps, each deleting its files once expired."""

    def __init__(self, *, store: TokenStore, clock: Clock, log: Any) -> None:
        self._store, self._clock, self._log = store, clock, log
        # Files no loop keeps any more (a removed app's), each deleted when it expires.
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def unretire(self, name: str, kind: str) -> None:
        """A loop keeps these files again (the app came back), or they go now: no timer."""
        task = self.tasks.pop((name, kind), None)
        if task is not None:
            task.cancel()

    def sweep(
        self, owners: Mapping[str, Refresher], keeps: Keeps, *, at_once: bool, wait: bool = True
    ) -> None:
        """Our records in output_dir that no loop keeps: a removed app's, maybe before a restart.

        Consumers may still read them, and a removal may be a mistaken edit: each is
        deleted once it expires (at once with remove_files_on_removal, or if its name now
        belongs to another appid, whose consumers must never get this account's token).
        """
        try:
            records = self._store.records(now=self._clock.now())
        except OSError as exc:
            self._log.warning("cannot list output_dir for leftover files", error=exc.strerror)
            return
        for record in records:
            key = (record.name, record.kind)
            owner = owners.get(record.name)
            foreign = owner is not None and owner.app.appid != record.appid
            if keeps(*key) or (key in self.tasks and not (foreign or at_once)):
                continue
            self.unretire(*key)
            if foreign:
                self._delete(record, "its name now belongs to another appid")
            elif at_once:
                self._delete(record, "remove_files_on_removal is set")
            elif self._clock.now() >= record.expires_at:
                self._delete(record, "it has expired")
            elif wait:
                self.tasks[key] = asyncio.create_task(self._retire(record, keeps))
                self._log.info(
                    "files no longer configured stay until they expire",
                    app=record.name,
                    files=_files_of(record),
                    expires_at=iso(record.expires_at),
                    fix="set remove_files_on_removal: true to delete them at once",
                )

    async def _retire(self, record: Record, keeps: Keeps) -> None:
        """Delete ``record``'s files once expired, unless a loop has taken them back."""
        key = (record.name, record.kind)
        try:
            while True:
                await self._clock.sleep(record.expires_at - self._clock.now())
                if keeps(*key):
                    return
                try:
                    current = self._store.load(*key, now=self._clock.now())
                except StateFileError:
                    return  # not our record any more: never touch it
                if current is None:
                    return
                if self._clock.now() < current.expires_at:  # rewritten meanwhile: wait again
                    record = current
                    continue
                self._delete(current, "it has expired")
                return
        finally:
            if self.tasks.get(key) is asyncio.current_task():
                del self.tasks[key]

    def _delete(self, record: Record, why: str) -> None:
        try:
            self._store.remove(record.name, (record.kind,))
        except OSError as exc:
            self._log.warning(
                "cannot delete files no longer configured",
                app=record.name,
                files=_files_of(record),
                error=exc.strerror,
            )
            return
        self._log.info(
            "deleted files no longer configured",
            app=record.name,
            files=_files_of(record),
            reason=why,
        )


def _files_of(record: Record) -> list[str]:
    name = file_name(record.name, record.kind)
    return [name, f"{name}.json"]
