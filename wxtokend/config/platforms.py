"""Each platform entry made a PlatformConfig: its three secrets read and checked."""

from __future__ import annotations

from wxtokend.callback.crypto import check_aes_key, check_token
from wxtokend.config.apps import _AppResolver
from wxtokend.config.models import _SettingsModel
from wxtokend.config.platform_models import _PlatformModel, _SuiteModel
from wxtokend.config.settings import DEFAULT_API_BASE, PlatformConfig
from wxtokend.redact import Secret

__all__ = ["_PlatformResolver"]


class _PlatformResolver(_AppResolver):
    """Resolves ``platforms:`` (reading secrets the way apps do)."""

    def platform(self, index: int, model: _PlatformModel) -> PlatformConfig | None:
        where = f"platforms[{index}]"
        m = model
        given = [
            self._one_source(where, key, sources)
            for key, sources in (
                (
                    "component_appsecret",
                    (m.component_appsecret, m.component_appsecret_env, m.component_appsecret_file),
                ),
                ("token", (m.token, m.token_env, m.token_file)),
                (
                    "encoding_aes_key",
                    (m.encoding_aes_key, m.encoding_aes_key_env, m.encoding_aes_key_file),
                ),
            )
        ]
        if not all(given):
            return None
        if not self.secrets:  # a command that only reads files: nothing is decrypted
            return _platform(m, "", "", "", self.model.api_base)
        secret = self.read_secret(
            where,
            "component_appsecret",
            (m.component_appsecret, m.component_appsecret_env, m.component_appsecret_file),
            what="component AppSecret",
        )
        token = self.read_secret(
            where, "token", (m.token, m.token_env, m.token_file), what="message-check Token"
        )
        aes_key = self.read_secret(
            where,
            "encoding_aes_key",
            (m.encoding_aes_key, m.encoding_aes_key_env, m.encoding_aes_key_file),
            what="EncodingAESKey",
        )
        token, aes_key = self._crypto(
            where, token, aes_key, "the platform's 开发资料 page on open.weixin.qq.com"
        )
        if secret is None or token is None or aes_key is None:
            return None
        return _platform(m, secret, token, aes_key, self.model.api_base)

    def suite(self, index: int, m: _SuiteModel) -> PlatformConfig | None:
        where = f"suites[{index}]"
        sources = {
            "suite_secret": (m.suite_secret, m.suite_secret_env, m.suite_secret_file),
            "token": (m.token, m.token_env, m.token_file),
            "encoding_aes_key": (
                m.encoding_aes_key,
                m.encoding_aes_key_env,
                m.encoding_aes_key_file,
            ),
        }
        provider = (m.provider_secret, m.provider_secret_env, m.provider_secret_file)
        if not all([self._one_source(where, key, given) for key, given in sources.items()]):
            return None
        if (m.provider_corpid is None) != (not any(provider)):
            self._fail(
                where,
                "provider_corpid and provider_secret come together",
                "set both (for the provider_access_token) or neither",
            )
            return None
        if not self.secrets:
            return _suite(m, ("", "", "", "" if m.provider_corpid else None), self.model)
        what = {
            "suite_secret": "suite secret",
            "token": "callback Token",
            "encoding_aes_key": "EncodingAESKey",
        }
        values = [self.read_secret(where, k, v, what=what[k]) for k, v in sources.items()]
        values = [*values[:1], *self._crypto(where, values[1], values[2], "the app's 回调配置")]
        provider_value = None
        if m.provider_corpid is not None:
            provider_value = self.read_secret(
                where, "provider_secret", provider, what="ProviderSecret"
            )
            if provider_value is None:
                return None
        if any(v is None for v in values):
            return None
        return _suite(m, (*values, provider_value), self.model)  # type: ignore[arg-type]

    def _crypto(
        self, where: str, token: str | None, aes_key: str | None, page: str
    ) -> tuple[str | None, str | None]:
        fix = f"copy it from {page}"
        if token is not None and (problem := check_token(token)):
            self._fail(f"{where}.token", f"the Token {problem}", fix)
            token = None
        if aes_key is not None and (problem := check_aes_key(aes_key)):
            self._fail(f"{where}.encoding_aes_key", f"the EncodingAESKey {problem}", fix)
            aes_key = None
        return token, aes_key

    def _one_source(
        self, where: str, key: str, sources: tuple[str | None, str | None, str | None]
    ) -> bool:
        names = [n for n, v in zip((key, f"{key}_env", f"{key}_file"), sources, strict=True) if v]
        if len(names) == 1:
            return True
        problem = f"has no {key}" if not names else f"has more than one {key}: " + ", ".join(names)
        self._fail(where, problem, f"set exactly one of {key}_file, {key}_env or {key}")
        return False


def _platform(
    m: _PlatformModel, secret: str, token: str, aes_key: str, api_base: str
) -> PlatformConfig:
    return PlatformConfig(
        name=m.name,
        component_appid=m.component_appid,
        secret=Secret(secret),
        token=Secret(token),
        encoding_aes_key=Secret(aes_key),
        secret_source=_source(m),
        api_base=m.api_base or api_base or DEFAULT_API_BASE,
        authorizers=tuple(dict.fromkeys(m.authorizers)),
    )


def _source(m: _PlatformModel) -> str:
    """Where the component AppSecret comes from, for error fixes (never the value)."""
    if m.component_appsecret_file is not None:
        return f"component_appsecret_file {m.component_appsecret_file}"
    if m.component_appsecret_env is not None:
        return f"${m.component_appsecret_env}"
    return "component_appsecret in the config"


def _suite(
    m: _SuiteModel, values: tuple[str, str, str, str | None], model: _SettingsModel
) -> PlatformConfig:
    secret, token, aes_key, provider = values
    return PlatformConfig(
        name=m.name,
        component_appid=m.suite_id,
        secret=Secret(secret),
        token=Secret(token),
        encoding_aes_key=Secret(aes_key),
        secret_source="suite_secret",  # noqa: S106  # where it is set, not its value
        api_base=m.api_base or model.wecom_api_base,
        authorizers=tuple(dict.fromkeys(m.corps)),
        product="wecom",
        provider_corpid=m.provider_corpid,
        provider_secret=Secret(provider) if provider is not None else None,
    )
