"""The checks pydantic can't do, in order, and the Config they end in.

The apps (identity, tickets, secrets), the duplicates among them, the group, the
fleet and the retry settings; every problem found on the way is raised together,
in the file's order, as one ConfigError.
"""

from __future__ import annotations

import grp
import os

from wxtokend.asgi import parse_listen
from wxtokend.config.apps import _AppResolver
from wxtokend.config.checker import _Checker
from wxtokend.config.duplicates import _Duplicates
from wxtokend.config.fleet import _FleetResolver
from wxtokend.config.models import _AppModel, _SettingsModel
from wxtokend.config.platforms import _PlatformResolver
from wxtokend.config.reader import _in_file_order, _Loader
from wxtokend.config.settings import AdminConfig, ApiProxyConfig, AppConfig, Config, PlatformConfig
from wxtokend.errors import ConfigError

__all__ = ["_Resolver", "_may_chown_to"]


def _may_chown_to(gid: int) -> bool:
    """Whether fchown(fd, -1, gid) can succeed for this process."""
    return os.geteuid() == 0 or gid == os.getegid() or gid in os.getgroups()


class _Resolver(_Checker):
    """The checks pydantic can't do: secrets, groups, duplicates, paths."""

    def __init__(
        self,
        loader: _Loader,
        model: _SettingsModel,
        apps: list[_AppModel | None],
        env: os._Environ[str] | dict[str, str],
        *,
        secrets: bool,
        problems: list[str],
    ) -> None:
        super().__init__(loader, secrets=secrets, problems=problems)
        self.model = model
        self.apps = apps  # None where the entry's shape is wrong: already a problem
        self.env = env
        self.warnings: list[str] = []

    def resolve(self) -> Config:
        each = _AppResolver(
            self.loader, self.model, self.env, secrets=self.secrets, problems=self.problems
        )
        apps = tuple(None if a is None else each.app(i, a) for i, a in enumerate(self.apps))
        _Duplicates(
            self.loader, self.apps, each.named, secrets=self.secrets, problems=self.problems
        ).check(apps)
        platforms = self._platforms(each, apps)
        gid = self._group()
        fleet = _FleetResolver(
            self.loader, self.model.fleet, secrets=self.secrets, problems=self.problems
        ).resolve()
        self._retry()
        self._inline_secret_warning()
        api_proxy = self._api_proxy()
        if self.problems:
            raise ConfigError(_in_file_order(self.loader.path, self.problems))
        return Config(
            path=self.loader.path.absolute(),
            output_dir=self.base / self.model.output_dir,
            file_mode=self.model.file_mode,
            file_gid=gid,
            api_base=self.model.api_base,
            proxy=self.model.proxy,
            max_concurrency=self.model.max_concurrency,
            stable_renew_window=self.model.stable_renew_window,
            request_timeout=self.model.request_timeout,
            apps=tuple(a for a in apps if a is not None),
            retry_min=self.model.retry.min,
            retry_max=self.model.retry.max,
            admin=self._admin(),
            fleet=fleet,
            remove_files_on_removal=self.model.remove_files_on_removal,
            warnings=tuple(self.warnings),
            output_dir_line=self.loader.line_of("output_dir"),
            platforms=platforms,
            state_dir=self.base / self.model.state_dir,
            callback_listen=parse_listen(self.model.callback.listen)
            if self.model.callback.listen
            else None,
            api_proxy=api_proxy,
        )

    def _platforms(
        self, each: _AppResolver, apps: tuple[AppConfig | None, ...]
    ) -> tuple[PlatformConfig, ...]:
        resolver = _PlatformResolver(
            self.loader, self.model, self.env, secrets=self.secrets, problems=self.problems
        )
        found = [resolver.platform(i, p) for i, p in enumerate(self.model.platforms)]
        found += [resolver.suite(i, s) for i, s in enumerate(self.model.suites)]
        taken = {n.name for n in each.named.values()}  # an app's files are output_dir/<name>
        seen: set[str] = set()
        named = [("platforms", i, p.name) for i, p in enumerate(self.model.platforms)]
        named += [("suites", i, s.name) for i, s in enumerate(self.model.suites)]
        for key, i, name in named:
            if name in taken or name in seen:
                self._fail(
                    f"{key}[{i}].name",
                    f"{name!r} is already the name of an app or another platform",
                    "give each platform its own name: its tokens go in output_dir/<name>/",
                )
            seen.add(name)
        return tuple(p for p in found if p is not None)

    def _retry(self) -> None:
        retry = self.model.retry
        if retry.min < 1:
            self.warnings.append(
                self.loader.problem(
                    "retry.min",
                    f"{retry.min:g} s is meant for compressed-time tests against the emulator",
                    "against WeChat keep it at 1 s or more: each failure costs a call",
                )
            )
        if retry.max < retry.min:
            self._fail(
                "retry.max",
                f"{retry.max:g} s is shorter than retry.min ({retry.min:g} s)",
                "make retry.max at least retry.min",
            )

    def _admin(self) -> AdminConfig:
        admin = self.model.admin
        return AdminConfig(
            listen=parse_listen(admin.listen) if admin.listen else None,
            probe_listen=parse_listen(admin.probe_listen) if admin.probe_listen else None,
            start_timeout=admin.start_timeout,
            passive_min_interval=admin.passive_min_interval,
            passive_daily_limit=admin.passive_daily_limit,
        )

    def _api_proxy(self) -> ApiProxyConfig | None:
        proxy = self.model.api_proxy
        if proxy is None:
            return None
        listen = parse_listen(proxy.listen)
        if not listen.is_loopback:
            self.warnings.append(
                self.loader.problem(
                    "api_proxy.listen",
                    f"{listen} is beyond loopback: anyone who reaches it calls WeChat as your apps",
                    "listen on 127.0.0.1, [::1] or a unix socket, or guard it with a"
                    " NetworkPolicy / firewall",
                )
            )
        return ApiProxyConfig(
            listen=listen,
            replay_body_limit=proxy.replay_body_limit,
            max_connections=proxy.max_connections,
            request_timeout=proxy.request_timeout,
        )

    def _group(self) -> int | None:
        group = self.model.file_group
        if group is None:
            return None
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                self._fail(
                    "file_group",
                    f"no group named {group!r} on this host",
                    f"create it (groupadd --system {group}, or systemd-sysusers) or remove"
                    " file_group",
                )
                return None
        if self.secrets and not _may_chown_to(gid):
            self._fail(
                "file_group",
                f"this process (uid {os.geteuid()}) is not in group {group!r}, so it cannot give"
                " token files to it",
                f"run wxtokend as a member of {group} (systemd: Group= or SupplementaryGroups=)"
                " or remove file_group",
            )
        return gid

    def _inline_secret_warning(self) -> None:
        inline = [
            f"apps[{i}].secret" for i, a in enumerate(self.apps) if a and a.secret is not None
        ]
        if not inline:
            return
        try:
            mode = self.loader.path.stat().st_mode
        except OSError:
            return
        if mode & 0o077:
            self.warnings.append(
                self.loader.problem(
                    inline[0],
                    f"inline secret in a file others can read (mode {mode & 0o777:04o})",
                    f"chmod 600 {self.loader.path}, or move it to secret_file / secret_env",
                )
            )
