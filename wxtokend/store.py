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
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from wxtokend.config import OUTPUT_DIR_MODE, Grant
from wxtokend.credential import InvalidCredential, Token, check
from wxtokend.errors import OutputDirError, StateFileError

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

_TEMP_MARK = ".tmp-"
_TEMP_TRIES = 3  # fresh random temp names tried before giving up (a name taken is planted)
_MAX_STATE_BYTES = 64 * 1024  # a state file is ~300 bytes: a bigger one is not ours
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted at a file name must not hang the daemon in open().
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TOKEN = "access_token"  # noqa: S105  # a kind label, not a credential
TICKET_KINDS = ("jsapi", "wx_card", "agent_config")


@dataclass(frozen=True, kw_only=True)
class Record:
    """What the files say about one credential: an app's token, or one of its tickets."""

    appid: str
    name: str
    grant: Grant
    access_token: str = field(repr=False)  # the ticket itself for a ticket record
    expires_at: int
    fetched_at: int
    expired: bool = False
    api_base: str = ""
    # Set just before a classic fetch: if the process dies before writing the
    # result, WeChat may have issued a newer token that kills this one.
    refresh_started_at: int | None = None
    kind: str = TOKEN  # or a ticket type: jsapi, wx_card, agent_config

    @classmethod
    def of(
        cls,
        token: Token,
        *,
        appid: str,
        name: str,
        grant: Grant,
        api_base: str,
        kind: str = TOKEN,
    ) -> Record:
        # Floor the expiry: a consumer trusting it must never overshoot.
        return cls(
            appid=appid,
            name=name,
            grant=grant,
            access_token=token.access_token,
            expires_at=math.floor(token.expires_at),
            fetched_at=math.floor(token.fetched_at),
            api_base=api_base,
            kind=kind,
        )

    @property
    def file(self) -> str:
        return file_name(self.name, self.kind)

    def as_expired(self) -> Record:
        return replace(self, expired=True)

    def refreshing(self, now: float) -> Record:
        return replace(self, refresh_started_at=math.floor(now))

    def interrupted(self) -> bool:
        """A classic fetch started after this token and never finished."""
        started = self.refresh_started_at
        return started is not None and started >= self.fetched_at

    def to_json(self) -> bytes:
        data = asdict(self)
        del data["kind"]
        if self.kind != TOKEN:
            # A ticket file says what it holds: {"appid", "name", "type", "ticket", ...}.
            ticket = data.pop("access_token")
            data = {"appid": self.appid, "name": self.name, "type": self.kind, "ticket": ticket}
            data |= {k: v for k, v in asdict(self).items() if k not in ("access_token", "kind")}
        return (json.dumps(data, ensure_ascii=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, kind: str = TOKEN, *, now: float | None = None) -> Record:
        """The record in a JSON state file; StateFileError if any field is unusable.

        ``now`` (default: the system clock) bounds how far in the future its times may lie.
        """
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise StateFileError("not valid JSON") from None
        if not isinstance(raw, dict):
            raise StateFileError("not a JSON object")
        key = "access_token" if kind == TOKEN else "ticket"
        token = raw.get(key)
        if kind != TOKEN and raw.get("type") != kind:
            raise StateFileError(f"it holds a {raw.get('type')!r} ticket, not {kind!r}")
        for name in ("appid", "name"):
            if not isinstance(raw.get(name), str):
                raise StateFileError(f"{name} is missing")
        if raw.get("grant") not in ("stable", "classic", "wecom"):
            raise StateFileError("grant is not stable, classic or wecom")
        times = [raw.get("expires_at"), raw.get("fetched_at")]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in times):
            raise StateFileError("expires_at / fetched_at are not unix seconds")
        try:
            check(token, fetched_at=times[1], expires_at=times[0], now=_now(now))
        except InvalidCredential as exc:
            raise StateFileError(f"{key}: {exc}") from None
        started = raw.get("refresh_started_at")
        if started is not None and (isinstance(started, bool) or not isinstance(started, int)):
            raise StateFileError("refresh_started_at is not unix seconds")
        return cls(
            appid=raw["appid"],
            name=raw["name"],
            grant=raw["grant"],
            access_token=str(token),
            expires_at=raw["expires_at"],
            fetched_at=raw["fetched_at"],
            expired=raw.get("expired") is True,
            api_base=str(raw.get("api_base", "")),
            refresh_started_at=started,
            kind=kind,
        )


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def file_name(name: str, kind: str = TOKEN) -> str:
    """``shop`` for the token, ``shop.jsapi_ticket`` for its jsapi ticket."""
    return name if kind == TOKEN else f"{name}.{kind}_ticket"


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
        with _open_dir(self.directory) as fd:
            for entry in os.scandir(fd):
                if not (entry.name.startswith(".") and _TEMP_MARK in entry.name):
                    continue
                if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=fd)
                        removed.append(entry.name)
        return removed

    def save(self, record: Record) -> bool:
        """Write both files (JSON first); True if anything on disk changed."""
        token_path, json_path = self.paths(record.file)
        with _open_dir(self.directory) as fd:
            wrote_json = _write_at(fd, json_path, record.to_json(), self.file_mode, self.gid)
            wrote_token = _write_at(
                fd, token_path, record.access_token.encode(), self.file_mode, self.gid
            )
            if wrote_json or wrote_token:
                os.fsync(fd)
        return wrote_json or wrote_token

    def load(self, name: str, kind: str = TOKEN, *, now: float | None = None) -> Record | None:
        """The record in ``<name>.json``; None if there is none; StateFileError if unusable."""
        _, json_path = self.paths(file_name(name, kind))
        try:
            with _open_dir(self.directory) as fd:
                data = _read_at(fd, json_path, _MAX_STATE_BYTES)
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
        with _open_dir(self.directory) as fd:
            for kind in kinds:
                for path in self.paths(file_name(name, kind)):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(path.name, dir_fd=fd)
            os.fsync(fd)


def atomic_write(path: Path, data: bytes, *, mode: int, gid: int | None = None) -> bool:
    """Replace ``path`` with ``data`` atomically; skip (False) if it already holds exactly that."""
    with _open_dir(path.parent) as fd:
        return _write_at(fd, path, data, mode, gid)


@contextlib.contextmanager
def _open_dir(directory: Path) -> Iterator[int]:
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


def _write_at(directory: int, path: Path, data: bytes, mode: int, gid: int | None) -> bool:
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
        temp = f".{name}{_TEMP_MARK}{secrets.token_hex(4)}"
        try:
            return temp, os.open(temp, _CREATE_FLAGS, mode, dir_fd=directory)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"{_TEMP_TRIES} random temp names were all taken", name)


def _read_at(directory: int, path: Path, limit: int) -> bytes:
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
        return _read_at(directory, Path(name), len(data)) == data
    except OSError:
        return False
