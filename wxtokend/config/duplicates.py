"""Apps that are one app twice: an appid, a WeCom application or a file name repeated."""

from __future__ import annotations

from collections.abc import Callable

from wxtokend.config.apps import _Named
from wxtokend.config.checker import _Checker
from wxtokend.config.models import _AppModel
from wxtokend.config.reader import _Loader
from wxtokend.config.settings import AppConfig

__all__ = ["_Duplicates"]


class _Duplicates(_Checker):
    """Flags each app that repeats an earlier one (once, naming the first)."""

    def __init__(
        self,
        loader: _Loader,
        apps: list[_AppModel | None],
        named: dict[int, _Named],
        *,
        secrets: bool,
        problems: list[str],
    ) -> None:
        super().__init__(loader, secrets=secrets, problems=problems)
        self.apps = apps
        self.named = named

    def check(self, resolved: tuple[AppConfig | None, ...]) -> None:
        apps = [resolved[i] or self.named.get(i) for i in range(len(resolved))]
        flagged: set[int] = set()
        checks: list[tuple[str, Callable[[AppConfig | _Named], object]]] = [
            ("appid", lambda a: a.appid if a.kind == "official" else None),
            # Without secrets loaded (get, sign) every secret is blank: nothing to compare.
            (
                "secret",
                lambda a: (
                    (a.appid, a.secret)
                    if isinstance(a, AppConfig) and a.kind == "wecom" and self.secrets
                    else None
                ),
            ),
            ("name", lambda a: a.name),
        ]
        for attr, key_of in checks:
            first: dict[object, int] = {}
            for i, app in enumerate(apps):
                if app is None or i in flagged or key_of(app) is None:
                    continue
                value = key_of(app)
                if value not in first:
                    first[value] = i
                    continue
                flagged.add(i)
                self._fail(*self._duplicate(i, attr, app, first[value]))

    def _duplicate(
        self, i: int, attr: str, app: AppConfig | _Named, other: int
    ) -> tuple[str, str, str]:
        if attr == "secret":
            return (
                f"apps[{i}]",
                f"corpid {app.appid!r} with the same secret as apps[{other}]: the same"
                " WeCom application twice",
                "each WeCom application has its own secret; keep one entry",
            )
        explicit = attr == "name" and getattr(self.apps[i], "name", None) is not None
        value = app.name if attr == "name" else app.appid
        return (
            f"apps[{i}].{'name' if explicit else 'appid'}",
            f"{attr} {value!r} is already used by apps[{other}]",
            f"give every app its own {attr}",
        )
