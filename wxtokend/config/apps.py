"""Each app entry made an AppConfig: its identity, its tickets, its secret read and checked."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from wxtokend.config.checker import _Checker
from wxtokend.config.models import _NAME, _AppModel, _SettingsModel
from wxtokend.config.reader import _Loader
from wxtokend.config.settings import TICKETS_FOR, AppConfig
from wxtokend.redact import Secret

__all__ = ["_AppResolver", "_Named"]


@dataclass(frozen=True, kw_only=True)
class _Named:
    """An app's identity, known before its secret is read."""

    kind: str
    appid: str
    name: str


class _AppResolver(_Checker):
    """Resolves the apps whose shape is right, one at a time (None where one fails)."""

    def __init__(
        self,
        loader: _Loader,
        model: _SettingsModel,
        env: os._Environ[str] | dict[str, str],
        *,
        secrets: bool,
        problems: list[str],
    ) -> None:
        super().__init__(loader, secrets=secrets, problems=problems)
        self.model = model
        self.env = env
        # Each app's appid and name once known, even if its secret then fails: duplicates
        # are found among every app that got that far, not only the fully valid ones.
        self.named: dict[int, _Named] = {}

    def app(self, index: int, app: _AppModel) -> AppConfig | None:
        where = f"apps[{index}]"
        ident = self._identity(where, app)
        if ident is None:
            return None
        name = app.name if app.name is not None else ident
        if app.name is None and not _NAME.fullmatch(name):
            self._fail(f"{where}.appid", "can't be used as a file name", "set name: for this app")
            return None
        self.named[index] = _Named(kind=app.kind, appid=ident, name=name)
        allowed = TICKETS_FOR[app.kind]
        for i, ticket in enumerate(app.tickets):
            if ticket not in allowed:
                self._fail(
                    f"{where}.tickets[{i}]",
                    f"{ticket} is not a ticket of a {app.kind} app",
                    "use " + " or ".join(sorted(allowed)),
                )
                return None
        if "agent_config" in app.tickets and app.agentid is None:
            self._fail(
                f"{where}.agentid",
                "is required for the agent_config ticket (wx.agentConfig names the application)",
                "add agentid: (the application's AgentId)",
            )
            return None
        sources = [
            k for k in ("secret_file", "secret_env", "secret") if getattr(app, k) is not None
        ]
        if len(sources) != 1:
            problem = (
                "has no secret"
                if not sources
                else "has more than one secret: " + ", ".join(sources)
            )
            self._fail(where, problem, "set exactly one of secret_file, secret_env or secret")
            return None
        secret = self._secret(where, app) if self.secrets else ""
        if secret is None:
            return None
        source = sources[0]
        wecom = app.kind == "wecom"
        default_base = self.model.wecom_api_base if wecom else self.model.api_base
        return AppConfig(
            appid=ident,
            name=name,
            grant="wecom" if wecom else (app.grant or "stable"),
            kind=app.kind,
            tickets=tuple(dict.fromkeys(app.tickets)),
            agentid=app.agentid,
            api_base=app.api_base or default_base,
            secret_file=self.base / app.secret_file if app.secret_file else None,
            secret=Secret(secret),
            secret_source=f"{source} {getattr(app, source)}"
            if source != "secret"
            else "secret: in the config file",
        )

    def _identity(self, where: str, app: _AppModel) -> str | None:
        """The appid (or a WeCom app's corpid), checking the keys that go with the kind."""
        if app.kind == "official":
            for key in ("corpid", "agentid"):
                if getattr(app, key) is not None:
                    self._fail(
                        f"{where}.{key}", "is for WeCom apps", "add kind: wecom, or remove it"
                    )
                    return None
            if app.appid is None:
                self._fail(f"{where}.appid", "is required but missing", "add appid: (wx...)")
            return app.appid
        if app.appid is not None:
            self._fail(f"{where}.appid", "WeCom apps have a corpid", "write corpid: instead")
            return None
        if app.grant is not None:
            self._fail(f"{where}.grant", "WeCom apps have no grant", "remove grant:")
            return None
        if app.corpid is None:
            self._fail(f"{where}.corpid", "is required but missing", "add corpid: (ww...)")
            return None
        if app.name is None:
            self._fail(
                f"{where}.name",
                "is required for WeCom apps (one corp has several applications)",
                "add name:, e.g. hr-app",
            )
            return None
        return app.corpid

    def _secret(self, where: str, app: _AppModel) -> str | None:
        return self.read_secret(
            where, "secret", (app.secret, app.secret_env, app.secret_file), what="AppSecret"
        )

    def read_secret(
        self,
        where: str,
        key: str,
        sources: tuple[str | None, str | None, str | None],
        *,
        what: str,
    ) -> str | None:
        """The value of ``key`` (inline), ``key_env`` or ``key_file`` — whichever is set."""
        inline, env_name, file_name = sources
        if inline is not None:
            return self._clean_secret(f"{where}.{key}", inline, f"the inline {key}", what)
        if env_name is not None:
            value = self.env.get(env_name)
            if not value:
                state = "is not set" if value is None else "is empty"
                self._fail(
                    f"{where}.{key}_env",
                    f"environment variable {env_name} {state}",
                    f"export {env_name}=<{what}> for the daemon (systemd: Environment= or"
                    " EnvironmentFile=; Kubernetes: env from a Secret)",
                )
                return None
            return self._clean_secret(f"{where}.{key}_env", value, f"${env_name}", what)
        if file_name is None:
            self._fail(where, f"no {key} given", f"add {key}_file: (or {key}_env:, or {key}:)")
            return None
        path = self.base / file_name
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._fail(
                f"{where}.{key}_file",
                f"{path}: no such file",
                f"create it holding only the {what}, or fix the path",
            )
            return None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            self._fail(
                f"{where}.{key}_file",
                f"{path}: cannot read: {reason}",
                "let the user wxtokend runs as read it, and nobody else (chmod 0600)",
            )
            return None
        return self._clean_secret(f"{where}.{key}_file", text, str(path), what)

    def _clean_secret(self, keypath: str, raw: str, what: str, value_name: str) -> str | None:
        value = raw.strip()
        if not value:
            self._fail(
                keypath, f"{what} is empty", f"put the {value_name} from the WeChat console there"
            )
            return None
        if not re.fullmatch(r"[\x21-\x7e]+", value):
            self._fail(
                keypath,
                f"{what} holds spaces, several lines or non-ASCII characters",
                f"it must hold only the {value_name}",
            )
            return None
        return value
