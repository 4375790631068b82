"""Whether an output_dir is safe to write tokens in, and what to do when a write fails.

Decided once, here, for ``run`` (before anything starts, and again at the
daemon's start) and for ``wxtokend check``: a directory anyone may write to
without the sticky bit, or a symlink in place of the directory, is refused; one
owned by another user is a warning. Every message says what to do about it.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from wxtokend.errors import OutputDirError

__all__ = ["UnsafeDirectoryError", "check_directory", "write_fix"]


class UnsafeDirectoryError(OutputDirError):
    """output_dir is one others could tamper with: the daemon refuses to use it."""


def check_directory(directory: Path) -> list[str]:
    """Refuse an output_dir the daemon cannot use or others can tamper with; warn on
    what is merely risky. The one place this is decided, for ``run`` (before anything
    starts, and again at the daemon's start) and ``wxtokend check``:

    - not usable: a file, a dangling symlink, a directory this user cannot write in,
      or one that cannot be created (OutputDirError, saying what to do);
    - a symlink: refused, since whoever can swap the link redirects every write;
    - writable by everyone without the sticky bit: refused, since anyone could
      rename their own file over a token file (with the sticky bit, as on
      Kubernetes' memory-backed emptyDir, only the owner of a file can);
    - owned by another user than the daemon's (root aside): a warning, since that
      user can replace the token files but may be a deliberate setup.
    """
    problem = _unusable(directory)
    if problem:
        raise OutputDirError(problem)
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return []  # created 0750 at start
    except OSError as exc:
        raise OutputDirError(f"output_dir {directory}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDirectoryError(
            f"{directory} is a symlink (to {os.readlink(directory)}): whoever can swap it"
            " redirects the token files — set output_dir to the directory itself"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise OutputDirError(
            f"output_dir {directory} is not a directory — remove it or fix the path"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise UnsafeDirectoryError(
            f"{directory} is writable by every user (mode {mode:04o}) without the sticky bit:"
            f" anyone could replace the token files — chmod o-w {directory} (or chmod +t)"
        )
    warnings = []
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        warnings.append(
            f"{directory} is owned by uid {st.st_uid}, not the daemon's uid {euid}: that user"
            f" can replace the token files — chown {euid} {directory} unless that is intended"
        )
    return warnings


def _unusable(directory: Path) -> str:
    """Why this process could not create or write ``directory`` (with the fix); "" if fine."""
    uid = os.geteuid()
    give = (
        f"create it for the user wxtokend runs as (uid {uid}): install -d -o {uid} -m 0750"
        f" {directory}, or under systemd RuntimeDirectory=wxtoken"
    )
    if os.path.lexists(directory) and not os.path.exists(directory):
        return f"{directory} is a symlink to nothing — point it at a directory, or remove it"
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            return f"{directory} is a file, not a directory — point output_dir at a directory"
        if why := _cannot_write_in(directory):
            return f"{directory} is not writable by this user (uid {uid}): {why} — {give}"
        return ""
    ancestor = directory.parent
    while not os.path.exists(ancestor):  # "/" exists
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        return (
            f"{directory} cannot be created: {ancestor} is a file — point output_dir at a directory"
        )
    if why := _cannot_write_in(ancestor):
        return (
            f"{directory} cannot be created: this user (uid {uid}) cannot write in"
            f" {ancestor}: {why} — {give}"
        )
    return ""


def _cannot_write_in(directory: Path) -> str:
    """Why a file cannot be created in ``directory``; empty if it can.

    Tried rather than asked: os.access says yes to root for a read-only mount or
    /proc. An unnamed temporary file (O_TMPFILE) leaves nothing behind.
    """
    try:
        with tempfile.TemporaryFile(dir=directory):
            return ""
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def write_fix(exc: OSError) -> str:
    """What to do about a failed token file write, by its cause."""
    where = exc.filename or "output_dir"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space on output_dir's filesystem; wxtokend retries the write by itself"
    if exc.errno == errno.EROFS:
        return "output_dir's filesystem is read-only: remount it read-write; retrying"
    if exc.errno == errno.EISDIR:
        return f"{where} is a directory: remove it, wxtokend writes its token file there; retrying"
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        return "output_dir must be a directory, not a symlink: fix the path; retrying"
    return "let the user wxtokend runs as write to output_dir (and be in file_group); retrying"
