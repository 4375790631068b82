"""The shape of ``platforms:`` and ``callback:``: third-party platforms and their callbacks."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wxtokend.asgi import parse_listen
from wxtokend.config.values import _WXID, _check_http_url, _check_name

_ENV = r"^[A-Za-z_][A-Za-z0-9_]*$"
_CORPID = r"^[A-Za-z0-9]{6,64}$"

__all__ = ["_CallbackModel", "_PlatformModel", "_SuiteModel"]


class _PlatformModel(BaseModel):
    """An Open Platform third-party platform (第三方平台) acting for many accounts."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Directory under output_dir for its tokens, e.g. agency.")
    component_appid: str = Field(description="The platform's component AppID (wx...).")
    component_appsecret_file: str | None = Field(
        None, description="File holding the component AppSecret."
    )
    component_appsecret_env: str | None = Field(
        None,
        description="Environment variable holding the component AppSecret.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    component_appsecret: str | None = Field(
        None, description="The component AppSecret inline (keep the file private)."
    )
    token_file: str | None = Field(None, description="File holding the message-check Token.")
    token_env: str | None = Field(
        None,
        description="Environment variable holding the Token.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    token: str | None = Field(None, description="The message-check Token inline.")
    encoding_aes_key_file: str | None = Field(
        None, description="File holding the EncodingAESKey (43 characters)."
    )
    encoding_aes_key_env: str | None = Field(
        None,
        description="Environment variable holding the EncodingAESKey.",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
    )
    encoding_aes_key: str | None = Field(None, description="The EncodingAESKey inline.")
    authorizers: list[str] = Field(
        default_factory=list,
        description="Authorizer appids expected to be authorized (their refresh tokens come"
        " from WeChat's authorization events or api_get_authorizer_list).",
    )
    api_base: str | None = Field(None, description="This platform's API base, if not the default.")

    @field_validator("name")
    @classmethod
    def _platform_name(cls, value: str) -> str:
        _check_name(value)
        return value

    @field_validator("component_appid")
    @classmethod
    def _component_appid(cls, value: str) -> str:
        if not _WXID.fullmatch(value):
            raise ValueError("must be wx followed by 16 hex digits, e.g. wx0123456789abcdef")
        return value

    @field_validator("authorizers")
    @classmethod
    def _authorizer_appids(cls, value: list[str]) -> list[str]:
        for appid in value:
            if not _WXID.fullmatch(appid):
                raise ValueError(f"{appid!r} is not an appid (wx followed by 16 hex digits)")
        return value

    @field_validator("api_base")
    @classmethod
    def _platform_api_base(cls, value: str | None) -> str | None:
        return _check_http_url(value)


class _CallbackModel(BaseModel):
    """The listener WeChat's callbacks (tickets, authorization events) arrive on."""

    model_config = ConfigDict(extra="forbid")

    listen: str | None = Field(
        None,
        description="host:port or unix:/path serving only POST /callback/<platform>; it faces"
        " WeChat (put it behind your HTTPS reverse proxy).",
    )

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


class _SuiteModel(BaseModel):
    """A WeCom third-party app (企业微信第三方应用) installed by many corps."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Directory under output_dir for its tokens, e.g. crm.")
    suite_id: str = Field(description="The app's SuiteID.", pattern=_CORPID)
    suite_secret_file: str | None = Field(None, description="File holding the suite secret.")
    suite_secret_env: str | None = Field(
        None, description="Environment variable holding the suite secret.", pattern=_ENV
    )
    suite_secret: str | None = Field(None, description="The suite secret inline.")
    token_file: str | None = Field(None, description="File holding the callback Token.")
    token_env: str | None = Field(
        None, description="Environment variable holding the Token.", pattern=_ENV
    )
    token: str | None = Field(None, description="The callback Token inline.")
    encoding_aes_key_file: str | None = Field(
        None, description="File holding the EncodingAESKey (43 characters)."
    )
    encoding_aes_key_env: str | None = Field(
        None, description="Environment variable holding the EncodingAESKey.", pattern=_ENV
    )
    encoding_aes_key: str | None = Field(None, description="The EncodingAESKey inline.")
    corps: list[str] = Field(
        default_factory=list,
        description="Corpids expected to have installed the app (their permanent codes come"
        " from create_auth events).",
    )
    provider_corpid: str | None = Field(
        None,
        description="The service provider's CorpID, for the provider_access_token.",
        pattern=_CORPID,
    )
    provider_secret_file: str | None = Field(
        None, description="File holding the provider secret (ProviderSecret)."
    )
    provider_secret_env: str | None = Field(
        None, description="Environment variable holding the provider secret.", pattern=_ENV
    )
    provider_secret: str | None = Field(None, description="The provider secret inline.")
    api_base: str | None = Field(None, description="This app's API base, if not wecom_api_base.")

    @field_validator("name")
    @classmethod
    def _suite_name(cls, value: str) -> str:
        _check_name(value)
        return value

    @field_validator("corps")
    @classmethod
    def _corpids(cls, value: list[str]) -> list[str]:
        for corpid in value:
            if not re.fullmatch(_CORPID, corpid):
                raise ValueError(f"{corpid!r} is not a corpid (6-64 letters and digits)")
        return value

    @field_validator("api_base")
    @classmethod
    def _suite_api_base(cls, value: str | None) -> str | None:
        return _check_http_url(value)
