"""Noticing that the config or a secret file changed.

Editors replace files, and Kubernetes updates ConfigMap and Secret volumes by
swapping a ``..data`` symlink beside the files rather than writing them, so
watching the files themselves misses changes. Instead the *directories* that
hold them are watched (watchdog, inotify on Linux), and any event there
triggers a cheap comparison of the files' contents: only a real change of
content reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog import events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["ConfigWatcher", "content_fingerprint"]

# Changes only: without a filter inotify also reports every open and read, e.g. the
# daemon reading 10,000 secret files at start, each then passed to watchdog's thread.
_CHANGES: list[type[FileSystemEvent]] = [
    getattr(events, name)
    for name in (
        *("DirCreatedEvent", "DirDeletedEvent", "DirMovedEvent", "FileClosedEvent"),
        *("FileCreatedEvent", "FileDeletedEvent", "FileModifiedEvent", "FileMovedEvent"),
        # chmod/chown/touch (IN_ATTRIB): e.g. fixing an unreadable secret file. Older
        # watchdog reported these as modifications and has no classes for them.
        "DirAttribEvent",
        "FileAttribEvent",
    )
    if hasattr(events, name)
]


def content_fingerprint(paths: Iterable[Path]) -> str:
    """A digest of the files' contents (a missing or unreadable file counts as such)."""
    digest = hashlib.sha256()
    for path in sorted(set(paths)):
        digest.update(str(path).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(f"<{exc.errno}>".encode())
        digest.update(b"\0")
    return digest.hexdigest()


class _Forward(FileSystemEventHandler):
    """Passes on events that touch a watched file, or Kubernetes' ``..data`` swaps."""

    def __init__(self, notify: Callable[[], None], names: set[str]) -> None:
        self._notify = notify
        self._names = names

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):  # reads are not changes
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            name = os.path.basename(os.fsdecode(path)) if path else ""
            # Other files in the same directory (logs, tokens) must not cost a reload check.
            if name in self._names or name.startswith(".."):
                self._notify()
                return


class ConfigWatcher:
    """Calls ``on_change`` in the event loop when files under watched directories change."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_change: Callable[[], None]) -> None:
        self._loop = loop
        self._on_change = on_change
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._watched: set[Path] = set()
        self._names: set[str] = set()

    def watch(self, files: Iterable[Path]) -> None:
        """(Re)start watching the directories holding ``files``."""
        files = list(files)
        directories = {f.absolute().parent for f in files}
        directories = {d for d in directories if d.is_dir()}
        if directories == self._watched and {f.name for f in files} == self._names:
            return
        self.stop()
        observer = Observer()
        handler = _Forward(self._threadsafe_notify, {f.name for f in files})
        for directory in sorted(directories):
            observer.schedule(handler, str(directory), recursive=False, event_filter=_CHANGES)
        observer.daemon = True
        observer.start()
        self._observer, self._watched = observer, directories
        self._names = {f.name for f in files}

    def _threadsafe_notify(self) -> None:
        # Runs on watchdog's thread; the loop may already be closing at shutdown.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_change)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
            self._watched = set()
