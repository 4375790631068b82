"""A platform's accounts behind the proxy: ``/<platform>/<authorizer appid or corpid>/...``.

An Open Platform authorizer is an Official Account or Mini Program, so its calls
go to the platform's ``api_base`` with the authorizer's token in ``access_token``;
a WeCom suite's corp calls WeCom's API with the corp's token. :class:`AccountLoop`
gives the proxy the same view of such an account that it has of an app: its
current token, and a compare-and-refresh when WeChat rejects it (the platform's
own workers make the refresh; see :mod:`wxtokend.platforms.rejections`).

Metrics name the platform (``<platform>/accounts``), never the account: 100,000
authorizers must not become 100,000 label values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wxtokend.config import AppConfig, PlatformConfig
from wxtokend.proxy.route import Refused, Target
from wxtokend.redact import Secret
from wxtokend.store import Record

if TYPE_CHECKING:
    from wxtokend.clock import Clock
    from wxtokend.service import Service

__all__ = ["AccountLoop", "account_target"]

_PLATFORM_OWN = ("cgi-bin/component/", "cgi-bin/service/")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


class AccountLoop:
    """One platform account, as the proxy sees an app's loop."""

    def __init__(
        self, service: Service, platform: PlatformConfig, account: str, clock: Clock
    ) -> None:
        self._service, self._platform, self._clock = service, platform, clock
        self.account = account
        self.app = AppConfig(
            appid=account,
            name=f"{platform.name}/accounts",  # the metrics' label: the platform, not the account
            grant="classic",
            secret=Secret(""),  # never sent: the proxy only injects tokens
            secret_source="platform account",  # noqa: S106  # where it is set, not its value
            api_base=platform.api_base,
            kind="wecom" if platform.product == "wecom" else "official",
        )

    @property
    def record(self) -> Record | None:
        """The account's current token as a record, or None if it has no valid one."""
        view = self._service.platforms.get(self._platform.name)
        now = self._clock.now()
        found = None if view is None else view.authorizer_token(self.account, now)
        if not isinstance(found, tuple):
            return None
        token, expires_in = found
        return Record(
            appid=self.account,
            name=self.account,
            grant="classic",
            access_token=token,
            expires_at=int(now) + expires_in,
            fetched_at=int(now),
        )

    def has_valid_token(self) -> bool:
        return self.record is not None

    async def report_rejected(self, *, token: str) -> None:
        """Compare-and-refresh: wait (bounded) for the account's next token."""
        await self._service.platforms.rejected(self._platform.name, self.account, token)


def account_target(
    service: Service, found: Target, clock: Clock
) -> tuple[AccountLoop, Target] | Refused | None:
    """``found`` as a platform account's call, if its name is a platform's; None if not."""
    platform = next((p for p in service.config.platforms if p.name == found.name), None)
    if platform is None:
        return None
    account, _, path = found.path.partition("/")
    root = path.partition("/")[0]
    if not account or not set(account) <= _ID_CHARS or "/" not in path or not root:
        return Refused(
            404,
            404,
            f"not a call for one of {platform.name}'s accounts: use"
            f" /{platform.name}/<authorizer appid or corpid>/cgi-bin/...",
        )
    if path.startswith(_PLATFORM_OWN):
        # These carry the component (suite) credentials, which only the daemon holds:
        # proxied for an account they could rotate its refresh token behind its back.
        return Refused(403, -1, f"{path.partition('?')[0][:64]} is {platform.name}'s own call")
    view = service.platforms.get(platform.name)
    state = 61003 if view is None else view.authorizer_token(account, clock.now())
    if state == 61003:
        return Refused(
            404, 61003, f"{account[:64]} has not authorized {platform.name} (not in its accounts)"
        )
    if state == 61023:
        return Refused(
            403, 61023, f"{account[:64]} must authorize {platform.name} again (no live grant)"
        )
    loop = AccountLoop(service, platform, account, clock)
    return loop, Target(name=f"{platform.name}/{account}", path=path, root=root)
