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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from wxtokend.config import OUTPUT_DIR_MODE, Grant
from wxtokend.credential import InvalidCredential, check
from wxtokend.errors import StateFileError
from wxtokend.wechat import Token

__all__ = ["TICKET_KINDS", "TOKEN", "Record", "TokenStore", "atomic_write", "file_name"]

_TEMP_MARK = ".tmp-"
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
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, mode=OUTPUT_DIR_MODE)
            os.chmod(self.directory, OUTPUT_DIR_MODE)
            if self.gid is not None:
                os.chown(self.directory, -1, self.gid)

    def prepare(self) -> list[str]:
        """At daemon start: ensure the directory; remove temp files a crash left behind."""
        self.ensure_directory()
        removed = []
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") and _TEMP_MARK in entry.name and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
        return removed

    def save(self, record: Record) -> bool:
        """Write both files (JSON first); True if anything on disk changed."""
        token_path, json_path = self.paths(record.file)
        wrote_json = atomic_write(json_path, record.to_json(), mode=self.file_mode, gid=self.gid)
        wrote_token = atomic_write(
            token_path, record.access_token.encode(), mode=self.file_mode, gid=self.gid
        )
        if wrote_json or wrote_token:
            _fsync_dir(self.directory)
        return wrote_json or wrote_token

    def load(self, name: str, kind: str = TOKEN, *, now: float | None = None) -> Record | None:
        """The record in ``<name>.json``; None if there is none; StateFileError if unusable."""
        _, json_path = self.paths(file_name(name, kind))
        try:
            data = json_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"cannot read: {exc.strerror}") from None
        return Record.from_json(data, kind, now=now)

    def remove(self, name: str, kinds: tuple[str, ...] = (TOKEN, *TICKET_KINDS)) -> None:
        """Delete an app's files: its token and tickets, or only the ``kinds`` given."""
        for kind in kinds:
            for path in self.paths(file_name(name, kind)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        _fsync_dir(self.directory)


def atomic_write(path: Path, data: bytes, *, mode: int, gid: int | None = None) -> bool:
    """Replace ``path`` with ``data`` atomically; skip (False) if it already holds exactly that."""
    if _already(path, data, mode, gid):
        return False
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
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
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return True


def _already(path: Path, data: bytes, mode: int, gid: int | None) -> bool:
    try:
        st = path.stat()
        if st.st_mode & 0o7777 != mode or (gid is not None and st.st_gid != gid):
            return False
        if st.st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
