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

__all__ = ["STATE_DIR_MODE", "Grant", "PushedTicket", "Vault", "check_appid", "check_secret"]

STATE_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600
_MAX_FILE: Final = 4096
_ID = re.compile(r"[A-Za-z0-9]{1,64}")  # an appid or corpid: its file name
_SECRET = re.compile(r"[\x21-\x7e]{1,512}")
_TICKET_FILE: Final = "component_verify_ticket.json"
_AUTHORIZERS: Final = "authorizers"


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


@dataclass(frozen=True, kw_only=True)
class Grant:
    """An authorizer's refresh token (WeChat's authorizer_refresh_token) and when we got it."""

    appid: str
    refresh_token: str = field(repr=False)
    updated_at: float


class Vault:
    """Reads and writes one platform's private state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._authorizers = directory / _AUTHORIZERS

    def prepare(self) -> list[str]:
        """Create both directories 0700 (exactly); remove temp files a crash left."""
        removed = []
        for path in (self.directory, self._authorizers):
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

    # -- refresh tokens -------------------------------------------------------

    def save_grant(self, grant: Grant) -> None:
        """Write ``grant`` durably: only after this returns may the old refresh token go."""
        data = {
            "appid": grant.appid,
            "refresh_token": grant.refresh_token,
            "updated_at": grant.updated_at,
        }
        self._write(self._authorizers, f"{grant.appid}.json", data)

    def remove_grant(self, appid: str) -> None:
        with open_dir(self._authorizers) as fd, contextlib.suppress(FileNotFoundError):
            os.unlink(f"{check_appid(appid)}.json", dir_fd=fd)
            os.fsync(fd)

    def grants(self) -> tuple[list[Grant], list[str]]:
        """Every stored refresh token, and a problem line for each file that is refused."""
        found: list[Grant] = []
        problems: list[str] = []
        with open_dir(self._authorizers) as fd:
            names = [e.name for e in os.scandir(fd) if e.name.endswith(".json")]
        for name in sorted(names):
            try:
                grant = self._grant(name)
            except StateFileError as exc:
                problems.append(str(exc))
                continue
            if grant is not None:
                found.append(grant)
        return found, problems

    def _grant(self, name: str) -> Grant | None:
        data = self._read(self._authorizers, name)
        if data is None:
            return None
        try:
            appid = check_appid(data.get("appid"))
            if name != f"{appid}.json":
                raise ValueError("its appid does not match its file name")
            updated = data.get("updated_at")
            if isinstance(updated, bool) or not isinstance(updated, int | float):
                raise ValueError("updated_at is not a number")
            token = check_secret(data.get("refresh_token"), "refresh_token")
        except ValueError as exc:
            raise StateFileError(f"{self._authorizers / name}: {exc}") from None
        return Grant(appid=appid, refresh_token=token, updated_at=updated)

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
