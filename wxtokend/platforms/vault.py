"""A platform's private state: its pushed ticket and its authorizers' refresh tokens.

These are secrets whose loss costs more than a token: a lost refresh token means
the merchant must authorize again. So they live apart from ``output_dir``, in
``state_dir/<platform>/`` (mode 0700, files 0600: consumers cannot read them),
each written atomically (temp file, fsync, rename, directory fsync) *before* the
value it replaces is forgotten: a crash at any instant leaves the old value or
the new one on disk, never neither. What is read back is validated like
everything from outside (:func:`check_secret`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from wxtokend.errors import StateFileError
from wxtokend.files import TEMP_MARK, open_dir, read_at, write_at
from wxtokend.platforms.journal import Grant, Journal

__all__ = ["STATE_DIR_MODE", "Grant", "PushedTicket", "Vault", "check_appid", "check_secret"]

STATE_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_MAX_FILE: Final = 4096
_ID = re.compile(r"[A-Za-z0-9]{1,64}")  # an appid or corpid: its file name
_SECRET = re.compile(r"[\x21-\x7e]{1,512}")
_TICKET_FILE: Final = "component_verify_ticket.json"
_LISTED_FILE: Final = "authorizer_list.json"  # the list was read and every grant saved
_GRANTS: Final = "grants.jsonl"  # every authorizer's refresh token: see journal.py


def check_appid(value: object) -> str:
    """An account's id as the vault keeps it (an appid or corpid): a safe file name."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError("not an appid or corpid (1-64 letters and digits)")
    return value


def check_secret(value: object, what: str) -> str:
    """A refresh token, ticket or code: 1-512 visible ASCII characters (never echoed)."""
    if not isinstance(value, str) or not _SECRET.fullmatch(value):
        raise ValueError(f"{what} is not 1-512 visible ASCII characters")
    return value


@dataclass(frozen=True, kw_only=True)
class PushedTicket:
    """The newest component_verify_ticket and when WeChat created it."""

    ticket: str = field(repr=False)
    created_at: float


class Vault:
    """Reads and writes one platform's private state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.journal = Journal(
            directory,
            _GRANTS,
            check_appid=check_appid,
            check_secret=lambda value: check_secret(value, "refresh_token"),
        )

    def prepare(self) -> list[str]:
        """Create the directory 0700 (exactly); remove temp files a crash left."""
        removed = []
        for path in (self.directory,):
            if not os.path.lexists(path):
                path.mkdir(parents=True, mode=STATE_DIR_MODE)
            os.chmod(path, STATE_DIR_MODE, follow_symlinks=False)
            with open_dir(path) as fd:
                for entry in os.scandir(fd):
                    if entry.name.startswith(".") and TEMP_MARK in entry.name:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.name, dir_fd=fd)
                            removed.append(entry.name)
        return removed

    # -- the pushed ticket ----------------------------------------------------

    def save_ticket(self, ticket: PushedTicket) -> None:
        data = {"ticket": ticket.ticket, "created_at": ticket.created_at}
        self._write(self.directory, _TICKET_FILE, data)

    def load_ticket(self) -> PushedTicket | None:
        data = self._read(self.directory, _TICKET_FILE)
        if data is None:
            return None
        try:
            created = data.get("created_at")
            if isinstance(created, bool) or not isinstance(created, int | float):
                raise ValueError("created_at is not a number")
            return PushedTicket(
                ticket=check_secret(data.get("ticket"), "ticket"), created_at=created
            )
        except ValueError as exc:
            raise StateFileError(f"{self.directory / _TICKET_FILE}: {exc}") from None

    # -- the authorizer list ------------------------------------------------------

    def save_listed(self, at: float) -> None:
        """Every account WeChat listed has its refresh token in this vault since ``at``:
        later starts trust the vault and need not read the list again."""
        self._write(self.directory, _LISTED_FILE, {"listed_at": at})

    def listed(self) -> bool:
        """True once :meth:`save_listed` was done; a refused file counts as not listed
        (reading the list again costs a few calls and loses nothing)."""
        try:
            data = self._read(self.directory, _LISTED_FILE)
        except StateFileError:
            return False
        at = None if data is None else data.get("listed_at")
        return isinstance(at, int | float) and not isinstance(at, bool)

    # -- refresh tokens -------------------------------------------------------

    def save_grant(self, grant: Grant) -> None:
        """Write ``grant`` durably: only after this returns may the old refresh token go."""
        self.save_grants([grant])

    def save_grants(self, grants: list[Grant]) -> None:
        """Write many grants with one fsync (a batch of rotations): all durable on return."""
        self.journal.append([(g.appid, g) for g in grants], at=0.0)

    def remove_grant(self, appid: str, at: float) -> None:
        """Forget ``appid``'s refresh token (it unauthorized the platform)."""
        self.journal.append([(check_appid(appid), None)], at=at)

    def grants(self) -> tuple[list[Grant], list[str]]:
        """Every stored refresh token, and a problem line for each journal line refused."""
        try:
            found, problems = self.journal.read()
        except OSError as exc:
            raise StateFileError(f"{self.journal.path}: cannot read: {exc.strerror}") from None
        return list(found.values()), problems

    # -- files ----------------------------------------------------------------

    def _write(self, directory: Path, name: str, data: dict[str, object]) -> None:
        body = json.dumps(data, sort_keys=True).encode()
        with open_dir(directory) as fd:
            if write_at(fd, directory / name, body, _FILE_MODE, None):
                os.fsync(fd)  # the rename itself must be durable before the old value goes

    def _read(self, directory: Path, name: str) -> dict[str, object] | None:
        try:
            with open_dir(directory) as fd:
                raw = read_at(fd, directory / name, _MAX_FILE)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"{directory / name}: cannot read: {exc.strerror}") from None
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise StateFileError(f"{directory / name}: not JSON") from None
        if not isinstance(data, dict):
            raise StateFileError(f"{directory / name}: not a JSON object")
        return data
