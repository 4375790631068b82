"""Atomic file writes and safe reads, always through a descriptor of the directory.

Each file is written to a temp file in the same directory (``O_EXCL``, final
mode), fsynced and renamed over the old one, so a reader sees the old file or
the new one, never a mix; a write that would change nothing is skipped.

Nothing from outside is trusted: every file is reached through a descriptor of
the directory itself (opened ``O_NOFOLLOW``, so a symlink swapped in for it is
refused, not followed), files are read ``O_NOFOLLOW`` and only if regular, and a
symlink planted at a file or temp name is replaced by the rename, never written
through.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMP_MARK", "atomic_write", "open_dir", "read_at", "write_at"]

TEMP_MARK = ".tmp-"
_TEMP_TRIES = 3  # fresh random temp names tried before giving up (a name taken is planted)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at a file name must not hang the daemon in open().
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def atomic_write(path: Path, data: bytes, *, mode: int, gid: int | None = None) -> bool:
    """Replace ``path`` with ``data`` atomically; skip (False) if it already holds exactly that."""
    with open_dir(path.parent) as fd:
        return write_at(fd, path, data, mode, gid)


@contextlib.contextmanager
def open_dir(directory: Path) -> Iterator[int]:
    """A descriptor of ``directory`` itself; a symlink in its place is refused, not followed.

    Every file operation goes through it, so the directory checked is the one written.
    """
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except NotADirectoryError:
        if os.path.islink(directory):
            raise OSError(errno.ELOOP, "is a symlink now (not followed)", str(directory)) from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def write_at(directory: int, path: Path, data: bytes, mode: int, gid: int | None) -> bool:
    """:func:`atomic_write` inside an open directory; errors name ``path``, not the temp file."""
    if _already(directory, path.name, data, mode, gid):
        return False
    try:
        temp, fd = _create_temp(directory, path.name, mode)
        try:
            try:
                os.fchmod(fd, mode)  # the umask trimmed the mode given to open
                if gid is not None and os.fstat(fd).st_gid != gid:
                    os.fchown(fd, -1, gid)  # skipped when already right: no chown privilege needed
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # rename replaces whatever is at path (a planted symlink too), never its target.
            os.replace(temp, path.name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=directory)
            raise
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    return True


def _create_temp(directory: int, name: str, mode: int) -> tuple[str, int]:
    """A new temp file beside ``name``: (its name, an open descriptor).

    ``O_EXCL | O_NOFOLLOW``: a name someone planted (a symlink, say) is never opened;
    another random name is tried instead.
    """
    for _ in range(_TEMP_TRIES):
        temp = f".{name}{TEMP_MARK}{secrets.token_hex(4)}"
        try:
            return temp, os.open(temp, _CREATE_FLAGS, mode, dir_fd=directory)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"{_TEMP_TRIES} random temp names were all taken", name)


def read_at(directory: int, path: Path, limit: int) -> bytes:
    """The content of a regular file, up to ``limit`` bytes; never through a symlink."""
    try:
        fd = os.open(path.name, _READ_FLAGS, dir_fd=directory)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symlink (not followed)", str(path)) from None
        raise
    try:
        kind = stat.S_IFMT(os.fstat(fd).st_mode)
        if kind == stat.S_IFDIR:
            raise IsADirectoryError(errno.EISDIR, "it is a directory", str(path))
        if kind != stat.S_IFREG:
            raise OSError(errno.EINVAL, "it is not a regular file", str(path))
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"it is larger than {limit} bytes", str(path))
    return data


def _already(directory: int, name: str, data: bytes, mode: int, gid: int | None) -> bool:
    """``name`` is a regular file (not a link to one) with exactly this content, mode, group."""
    try:
        st = os.stat(name, dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o7777 != mode:
            return False
        if (gid is not None and st.st_gid != gid) or st.st_size != len(data):
            return False
        return read_at(directory, Path(name), len(data)) == data
    except OSError:
        return False
