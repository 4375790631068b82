"""One loop's files: written in order, in worker threads, and retried, never lost.

:class:`Files` is the only way a refresh loop touches the disk. Writes of one
credential queue in the order they were asked for, so the newest record is the
one left on disk; a failed write keeps the token in memory and says what to fix;
a closed loop (removed or replaced by a reload) writes nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from structlog.typing import FilteringBoundLogger

from wxtokend.clock import Clock
from wxtokend.config import AppConfig
from wxtokend.errors import StateFileError
from wxtokend.metrics import Metrics
from wxtokend.store import Record, TokenStore, write_fix

__all__ = ["Files", "in_writer"]

T = TypeVar("T")


class Files:
    """Saves one loop's records and remembers what the disk holds."""

    __slots__ = (
        "_clock",
        "_log",
        "_metrics",
        "_order",
        "_store",
        "closed",
        "on_written",
        "unsaved",
        "write_error",
        "write_failures",
        "write_hint",
        "writing_since",
        "written_token",
    )

    def __init__(
        self,
        store: TokenStore,
        *,
        clock: Clock,
        metrics: Metrics,
        log: FilteringBoundLogger,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self._order = asyncio.Lock()  # one file write at a time, in order
        self.on_written = on_written
        self.closed = False
        self.unsaved = False  # the current record is not on disk yet: retry the write
        self.write_failures = 0
        self.write_error: str | None = None
        self.write_hint: str | None = None
        self.writing_since: float | None = None  # monotonic start of a file write in progress
        self.written_token: str | None = None  # the token the files on disk hold

    @property
    def store(self) -> TokenStore:
        return self._store

    async def save(self, record: Record) -> bool:
        """Write in a worker thread: fsync waits on the disk, and the loop serves on meanwhile.

        Writes of one app queue on ``_order`` in the order they were asked for (the lock
        is fair), so the newest record is always the one left on disk.
        """
        async with self._order:
            if self.closed:
                return True  # removed or replaced by a reload: its files are not ours any more
            self.writing_since = self._clock.monotonic()
            try:
                await in_writer(self._store.save, record)
            except OSError as exc:
                return self._failed(exc)
            finally:
                self.writing_since = None
            self._saved(record)
        return True

    def save_now(self, record: Record) -> bool:
        """The same, in the caller's thread: at start, before the loops run."""
        try:
            self._store.save(record)
        except OSError as exc:
            return self._failed(exc)
        self._saved(record)
        return True

    def stored(self, app: AppConfig, kind: str, *, now: float, name: str) -> Record | None:
        """What an earlier run left as ``name``'s ``kind``, if it may be served as ``app``'s."""
        try:
            record = self._store.load(name, kind, now=now)
        except StateFileError as exc:
            self._metrics.rejected("state_file")
            self._log.warning("state file ignored", reason=str(exc), fix="it will be replaced")
            return None
        if record is None:
            return None
        if record.appid != app.appid:
            # Another account's token must not be served under this app's name.
            self._store.remove(name, (kind,))
            self._log.warning(
                "state file removed",
                reason=f"it holds a token of appid {record.appid}, not {app.appid}",
            )
            return None
        if (record.grant, record.api_base) != (app.grant, app.api_base):
            self._log.warning(
                "state file not reused",
                reason=f"fetched with grant {record.grant} from {record.api_base or '?'}",
                fix="a new token replaces it now",
            )
            return None
        return record

    def holds(self, token: str) -> bool:
        """The files on disk hold ``token`` and the last write went through."""
        return token == self.written_token and not self.write_error

    def _saved(self, record: Record) -> None:
        self.written_token = record.access_token
        self.write_error = self.write_hint = None

    def _failed(self, exc: OSError) -> bool:
        where = exc.filename or self._store.directory
        self.write_hint = write_fix(exc)
        self.write_error = f"cannot write token files: {exc.strerror} ({where}) — {self.write_hint}"
        self._metrics.write_error()
        self._log.error("write failed", error=self.write_error)
        return False


_WRITER_POOL: ThreadPoolExecutor | None = None


def _writers() -> ThreadPoolExecutor:
    """File writes get threads of their own: in the default executor they queued with
    aiohttp's DNS lookups, which could then time out behind a burst of fsyncs."""
    global _WRITER_POOL
    if _WRITER_POOL is None:
        _WRITER_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="wxtokend-write")
    return _WRITER_POOL


async def in_writer(work: Callable[..., T], *args: object) -> T:
    """``work(*args)`` in the writer threads, and its result. If the caller is cancelled
    meanwhile, the thread still finishes before the cancellation goes on, so no later
    write overlaps it."""
    future = asyncio.get_running_loop().run_in_executor(_writers(), work, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():  # a second cancellation must not cut this wait short
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({future})
        raise
