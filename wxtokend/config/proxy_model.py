"""The shape of ``api_proxy:``: the listener consumers call WeChat through.

Not ``proxy:``: that key already names the egress HTTP proxy every WeChat call
(proxied ones included) goes out through.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from wxtokend.asgi import parse_listen

__all__ = ["_ApiProxyModel"]


class _ApiProxyModel(BaseModel):
    """Consumers call ``http://<listen>/<app name>/cgi-bin/...`` without any token."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field(
        description="host:port or unix:/path (e.g. 127.0.0.1:9736); it answers with the"
        " apps' tokens, so keep it on loopback or a unix socket."
    )
    replay_body_limit: int = Field(
        256 * 1024,
        ge=0,
        le=16 * 1024 * 1024,
        strict=True,
        description="Request bodies up to this many bytes are held so that a call WeChat"
        " rejects for its token (40001/40014/42001) is replayed with the new one; larger"
        " ones stream through and get WeChat's answer.",
    )
    max_connections: int = Field(
        256, ge=1, le=10_000, strict=True, description="Upstream connections for proxied calls."
    )
    request_timeout: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds WeChat may stay silent during one proxied call (uploads are slow).",
    )

    @field_validator("listen")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_listen(value)
        return value
