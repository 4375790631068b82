"""Each platform entry made a PlatformConfig: its three secrets read and checked."""

from __future__ import annotations

from wxtokend.callback.crypto import check_aes_key, check_token
from wxtokend.config.apps import _AppResolver
from wxtokend.config.platform_models import _PlatformModel
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
        fix = "copy it from the platform's 开发资料 page on open.weixin.qq.com"
        if token is not None and (problem := check_token(token)):
            self._fail(f"{where}.token", f"the Token {problem}", fix)
            token = None
        if aes_key is not None and (problem := check_aes_key(aes_key)):
            self._fail(f"{where}.encoding_aes_key", f"the EncodingAESKey {problem}", fix)
            aes_key = None
        if secret is None or token is None or aes_key is None:
            return None
        return _platform(m, secret, token, aes_key, self.model.api_base)

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
