"""The fleet section made FleetSettings: the Redis URL (inline or from a file) and the key."""

from __future__ import annotations

import re

from wxtokend.config.checker import _Checker
from wxtokend.config.models import _REDIS_URL, _FleetModel
from wxtokend.config.reader import _Loader
from wxtokend.fleet import FleetSettings
from wxtokend.redact import Secret

__all__ = ["_FleetResolver"]

_MIN_FLEET_KEY = 32  # characters of the fleet key: 128+ bits as hex, more as base64


class _FleetResolver(_Checker):
    """Reads what the fleet section names; no settings without one, or after a problem."""

    def __init__(
        self, loader: _Loader, section: _FleetModel | None, *, secrets: bool, problems: list[str]
    ) -> None:
        super().__init__(loader, secrets=secrets, problems=problems)
        self.section = section

    def resolve(self) -> FleetSettings | None:
        fleet = self.section
        if fleet is None:
            return None
        url, key = self._redis_url(fleet), self._fleet_key(fleet)
        if url is None or key is None:
            return None
        return FleetSettings(
            redis_url=url,
            key=key,
            key_prefix=fleet.key_prefix,
            lock_ttl=fleet.lock_ttl,
            role=fleet.role,
            on_redis_down=fleet.on_redis_down,
            reconcile_interval=fleet.reconcile_interval,
        )

    def _redis_url(self, fleet: _FleetModel) -> str | None:
        if (fleet.redis is None) == (fleet.redis_file is None):
            self._fail("fleet", "needs exactly one of redis or redis_file", "add redis: <url>")
            return None
        if fleet.redis is not None:
            return fleet.redis
        assert fleet.redis_file is not None
        path = self.base / fleet.redis_file
        try:
            url = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            self._fail("fleet.redis_file", f"{path}: cannot read it", "create it holding the URL")
            return None
        if not _REDIS_URL.match(url):
            self._fail(
                "fleet.redis_file",
                f"{path} does not hold a redis://, rediss:// or unix:// URL",
                "put only the URL in it",
            )
            return None
        return url

    def _fleet_key(self, fleet: _FleetModel) -> Secret | None:
        """The fleet key; never echoed. Commands without secrets (get) do not read it."""
        make_one = (
            "create one key for the whole fleet (openssl rand -hex 32 > /etc/wxtokend/fleet.key;"
            " chmod 600), give every member and follower the same file, and set"
            " fleet.key_file to it"
        )
        if fleet.key_file is None:
            self._fail(
                "fleet.key_file",
                "is missing: fleet records are signed, so that nobody who can write to Redis"
                " without the key can plant a token every member adopts",
                make_one + "; records of older, unsigned members are then never adopted",
            )
            return None
        if not self.secrets:
            return Secret("")
        path = self.base / fleet.key_file
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._fail("fleet.key_file", f"{path}: cannot read: {reason}", make_one)
            return None
        if not re.fullmatch(rf"[\x21-\x7e]{{{_MIN_FLEET_KEY},}}", text):
            self._fail(
                "fleet.key_file",
                f"{path} must hold one line of at least {_MIN_FLEET_KEY} visible ASCII"
                f" characters (it holds {len(text)} characters)",
                make_one,
            )
            return None
        return Secret(text)
