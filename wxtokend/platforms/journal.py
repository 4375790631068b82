"""The refresh-token journal: every authorizer's grant in one append-only file.

One file per grant cost two fsyncs and a create and a rename in a directory of
100,000 files for every rotation; a platform's cold start rotates every grant
at once. The journal appends a batch of grants as lines and makes the batch
durable with one ``fdatasync``: the batch's callers learn it is saved only then.

Crash safety: appends never touch earlier bytes, so a kill at any instant leaves
every earlier line intact and at most a torn last line (no newline yet), which
is never reported as saved: it is ignored on read and cut off before the next
append. Compaction writes the live grants to a temp file, fsyncs, and renames it
over the journal (then fsyncs the directory): the old journal or the new one,
never neither. Every line read back is validated (:func:`read_line`); a bad line
is a problem line naming the file and line number, never its content.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from wxtokend.files import open_dir, write_at

__all__ = ["Grant", "Journal", "read_line"]

_FILE_MODE: Final = 0o600
_APPEND_FLAGS: Final = (
    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_LINE: Final = 2048  # an appid, a ≤ 512-character secret, a time: far less
_COMPACT_SLACK: Final = 1024  # lines beyond twice the live grants before compacting


@dataclass(frozen=True, kw_only=True)
class Grant:
    """An authorizer's refresh token (WeChat's authorizer_refresh_token) and when we got it."""

    appid: str
    refresh_token: str = field(repr=False)
    updated_at: float


Check = Callable[[object], str]


def read_line(raw: bytes, *, check_appid: Check, check_secret: Check) -> tuple[str, Grant | None]:
    """One journal line: (appid, its grant) or (appid, None) for a removal; ValueError if bad."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    appid = check_appid(data.get("appid"))
    updated = data.get("updated_at")
    if isinstance(updated, bool) or not isinstance(updated, int | float):
        raise ValueError("updated_at is not a number")
    if data.get("removed") is True:
        return appid, None
    token = check_secret(data.get("refresh_token"))
    return appid, Grant(appid=appid, refresh_token=token, updated_at=updated)


def _line(appid: str, grant: Grant | None, at: float) -> bytes:
    """A grant's line, or a removal's (at ``at``)."""
    if grant is None:
        data: dict[str, object] = {"appid": appid, "removed": True, "updated_at": at}
    else:
        data = {"appid": appid, "refresh_token": grant.refresh_token}
        data["updated_at"] = grant.updated_at
    return json.dumps(data, sort_keys=True).encode() + b"\n"


class Journal:
    """``directory/name``, appended to by one writer at a time (a lock: writer threads)."""

    def __init__(self, directory: Path, name: str, *, check_appid: Check, check_secret: Check):
        self.path = directory / name
        self._directory, self._name = directory, name
        self._checks = {"check_appid": check_appid, "check_secret": check_secret}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lines = 0  # lines in the file, live or not
        self._live: set[str] = set()  # appids with a grant (their tokens are not kept here)

    # -- reading ----------------------------------------------------------------

    def read(self) -> tuple[dict[str, Grant], list[str]]:
        """The newest grant of each appid, and a problem line for each refused line."""
        with self._lock:
            grants, problems, _ = self._scan()
            return grants, problems

    def _scan(self) -> tuple[dict[str, Grant], list[str], int]:
        """(grants, problems, the length up to the last complete line)."""
        data = self._content()
        complete = data.rfind(b"\n") + 1  # a torn last line was never confirmed: ignored
        grants: dict[str, Grant] = {}
        problems: list[str] = []
        lines = data[:complete].split(b"\n")[:-1]
        for number, raw in enumerate(lines, start=1):
            try:
                if len(raw) > _MAX_LINE:
                    raise ValueError(f"longer than {_MAX_LINE} bytes")
                appid, grant = read_line(raw, **self._checks)
            except ValueError as exc:
                problems.append(f"{self.path}: line {number}: {exc}")
                continue
            if grant is None:
                grants.pop(appid, None)
            else:
                grants[appid] = grant
        self._lines, self._live = len(lines), set(grants)
        return grants, problems, complete

    def _content(self) -> bytes:
        try:
            with open_dir(self._directory) as dir_fd:
                fd = os.open(self._name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return b""
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "it is not a regular file", str(self.path))
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    # -- writing ----------------------------------------------------------------

    def append(self, changes: list[tuple[str, Grant | None]], at: float) -> None:
        """Append grants (None: a removal) and make them durable before returning."""
        data = b"".join(_line(appid, grant, at) for appid, grant in changes)
        if not data:
            return
        with self._lock:
            fd = self._open()
            try:
                _write_all(fd, data)
                os.fdatasync(fd)
            except OSError as exc:
                self._close()  # reopened (and a torn tail cut) by the next append
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
            for appid, grant in changes:
                self._lines += 1
                (self._live.add if grant is not None else self._live.discard)(appid)
            if self._lines > 2 * len(self._live) + _COMPACT_SLACK:
                self._compact()

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        _, _, complete = self._scan()
        with open_dir(self._directory) as dir_fd:
            created = not _exists(self._name, dir_fd)
            fd = os.open(self._name, _APPEND_FLAGS, _FILE_MODE, dir_fd=dir_fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "it is not a regular file", str(self.path))
                os.fchmod(fd, _FILE_MODE)
                if os.fstat(fd).st_size != complete:
                    os.ftruncate(fd, complete)  # a torn line, or lines appended must follow it
                    os.fsync(fd)
                if created:
                    os.fsync(dir_fd)  # the journal's own name must survive a crash
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        return fd

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _compact(self) -> None:
        """Rewrite the journal with the live grants only (atomically, durably)."""
        grants, _, _ = self._scan()  # refused lines are dropped: they were never usable
        body = b"".join(_line(appid, grant, 0.0) for appid, grant in grants.items())
        with open_dir(self._directory) as dir_fd:
            write_at(dir_fd, self.path, body, _FILE_MODE, None)
            os.fsync(dir_fd)
        self._close()

    def close(self) -> None:
        with self._lock:
            self._close()


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
