"""A third-party platform (or WeCom suite) as the e2e tests give it to the real daemon.

The daemon reads a platform's three secrets from files; every test that starts one
writes the same three files and the same config entry, and reads the same token
files back. This is that, once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from harness import DaemonProcess, wait_for

__all__ = ["ThirdParty", "ready"]


@dataclass(frozen=True, kw_only=True)
class ThirdParty:
    """One platform's credentials; ``suite`` for a WeCom suite, else an Open Platform."""

    name: str
    appid: str  # component_appid, or suite_id
    secret: str
    crypto_token: str  # the message-crypto Token, not an access token
    aes_key: str
    suite: bool = False

    def entry(self, directory: Path, **extra: Any) -> dict[str, Any]:
        """Write the secrets under ``directory``/secrets; the config entry naming them."""
        secrets = directory / "secrets"
        secrets.mkdir(parents=True, exist_ok=True)
        files = {"": self.secret, ".token": self.crypto_token, ".aes": self.aes_key}
        for suffix, value in files.items():
            (secrets / f"{self.name}{suffix}").write_text(value + "\n")
        return {
            "name": self.name,
            ("suite_id" if self.suite else "component_appid"): self.appid,
            ("suite_secret_file" if self.suite else "component_appsecret_file"): (
                f"secrets/{self.name}"
            ),
            "token_file": f"secrets/{self.name}.token",
            "encoding_aes_key_file": f"secrets/{self.name}.aes",
            **extra,
        }

    def files(self, proc: DaemonProcess) -> Path:
        """Where the daemon writes this platform's token files."""
        return proc.output_dir / self.name

    def token(self, proc: DaemonProcess, account: str) -> str | None:
        """The bare token file of ``account`` (or ``component_access_token``), if written."""
        try:
            return (self.files(proc) / account).read_text()
        except FileNotFoundError:
            return None

    def wait_for_accounts(
        self, proc: DaemonProcess, accounts: Iterable[str], *, timeout: float = 20
    ) -> dict[str, str]:
        """Wait until every one of ``accounts`` has a token file; their tokens."""
        wanted = list(accounts)
        wait_for(
            lambda: all(self.token(proc, a) for a in wanted),
            timeout=timeout,
            what=f"{self.name}'s tokens for {len(wanted)} accounts",
        )
        return {a: self.token(proc, a) or "" for a in wanted}


def ready(admin: httpx.Client) -> bool:
    """/readyz says ready; False while a restarted daemon is not listening yet."""
    try:
        return admin.get("/readyz").status_code == 200
    except httpx.ConnectError:
        return False
