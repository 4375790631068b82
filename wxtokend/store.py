"""Token files: written atomically, read back at start.

Per app, in the output directory:

- ``<name>``       the bare token, no newline: ``cat`` it.
- ``<name>.json``  ``{"appid", "name", "grant", "access_token", "expires_at",
  "fetched_at", "expired"}``, times in unix seconds; also the daemon's memory
  across restarts.

Each file is written to a temp file in the same directory (``O_EXCL``, final
mode), fsynced, renamed over the old one and the directory fsynced, so a reader
sees the old file or the new one, never a mix. The JSON goes first: after a
crash between the two renames the JSON already names the newer token and the
next start repairs the bare file, never the other way round.

Nothing from outside is trusted: every file is reached through a descriptor of
the directory itself (opened ``O_NOFOLLOW``, so a symlink swapped in for it is
refused, not followed), files are read ``O_NOFOLLOW`` and only if regular, and a
symlink planted at a token or temp name is replaced by the rename, never written
through. A directory anyone may write to without the sticky bit is refused.

This module is the store itself (:class:`TokenStore`: an app's files saved,
loaded, listed and removed). What a state file holds is
:mod:`wxtokend.records`, how a file is written and read safely
:mod:`wxtokend.files`, whether the directory is safe :mod:`wxtokend.outdir`;
their names stay importable from here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from wxtokend.config import OUTPUT_DIR_MODE
from wxtokend.errors import StateFileError
from wxtokend.files import TEMP_MARK, atomic_write, open_dir, read_at, write_at
from wxtokend.outdir import UnsafeDirectoryError, check_directory, write_fix
from wxtokend.records import TICKET_KINDS, TOKEN, Record, file_name

__all__ = [
    "TICKET_KINDS",
    "TOKEN",
    "Record",
    "TokenStore",
    "UnsafeDirectoryError",
    "atomic_write",
    "check_directory",
    "file_name",
    "write_fix",
]

_MAX_STATE_BYTES = 64 * 1024  # a state file is ~300 bytes: a bigger one is not ours


class TokenStore:
    """The output directory and the two files per app in it."""

    def __init__(self, *, directory: Path, file_mode: int, gid: int | None = None) -> None:
        self.directory = directory
        self.file_mode = file_mode
        self.gid = gid

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.directory / name, self.directory / f"{name}.json"

    def ensure_directory(self) -> None:
        """Create the directory with mode 0750 exactly (and the group) if it is missing."""
        if not os.path.lexists(self.directory):
            self.directory.mkdir(parents=True, mode=OUTPUT_DIR_MODE)
            os.chmod(self.directory, OUTPUT_DIR_MODE)
            if self.gid is not None:
                os.chown(self.directory, -1, self.gid)

    def check_directory(self) -> list[str]:
        """:func:`check_directory` on this store's directory."""
        return check_directory(self.directory)

    def prepare(self) -> list[str]:
        """At daemon start: ensure the directory; remove temp files a crash left behind.

        A symlink with a temp name goes too: temp names are ours, whatever they hold.
        """
        self.ensure_directory()
        removed = []
        with open_dir(self.directory) as fd:
            for entry in os.scandir(fd):
                if not (entry.name.startswith(".") and TEMP_MARK in entry.name):
                    continue
                if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=fd)
                        removed.append(entry.name)
        return removed

    def save(self, record: Record) -> bool:
        """Write both files (JSON first); True if anything on disk changed."""
        token_path, json_path = self.paths(record.file)
        with open_dir(self.directory) as fd:
            wrote_json = write_at(fd, json_path, record.to_json(), self.file_mode, self.gid)
            wrote_token = write_at(
                fd, token_path, record.access_token.encode(), self.file_mode, self.gid
            )
            if wrote_json or wrote_token:
                os.fsync(fd)
        return wrote_json or wrote_token

    def load(self, name: str, kind: str = TOKEN, *, now: float | None = None) -> Record | None:
        """The record in ``<name>.json``; None if there is none; StateFileError if unusable."""
        _, json_path = self.paths(file_name(name, kind))
        try:
            with open_dir(self.directory) as fd:
                data = read_at(fd, json_path, _MAX_STATE_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"cannot read: {exc.strerror}") from None
        return Record.from_json(data, kind, now=now)

    def records(self, *, now: float | None = None) -> list[Record]:
        """Every record in the directory that is our own: ``<name>[.<kind>_ticket].json``
        parsing as a record of that name and kind (checked against ``now``, the caller's
        clock). Anything else is never touched."""
        found = []
        for entry in os.scandir(self.directory):
            stem = entry.name.removesuffix(".json")
            if stem == entry.name or not entry.is_file(follow_symlinks=False):
                continue
            name, _, suffix = stem.partition(".")
            kind = suffix.removesuffix("_ticket") if suffix else TOKEN
            if not name or (kind != TOKEN and kind not in TICKET_KINDS):
                continue
            if file_name(name, kind) != stem:
                continue
            with contextlib.suppress(StateFileError):
                record = self.load(name, kind, now=now)
                if record is not None and record.name == name:
                    found.append(record)
        return found

    def remove(self, name: str, kinds: tuple[str, ...] = (TOKEN, *TICKET_KINDS)) -> None:
        """Delete an app's files: its token and tickets, or only the ``kinds`` given.

        Only files and links (unlink never follows a link): a directory at a token
        name is not ours to delete.
        """
        with open_dir(self.directory) as fd:
            for kind in kinds:
                for path in self.paths(file_name(name, kind)):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(path.name, dir_fd=fd)
            os.fsync(fd)
