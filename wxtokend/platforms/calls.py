"""A platform's calls to WeChat beyond its component token: through the one WeChat client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from wxtokend.config import AppConfig
from wxtokend.errcodes import Errcode
from wxtokend.errors import MalformedResponse
from wxtokend.kinds.base import Call
from wxtokend.kinds.component import WITH_COMPONENT_ERRCODES, authorizer_list_call
from wxtokend.platforms.products import OPEN_PLATFORM
from wxtokend.platforms.vault import check_secret

__all__ = ["LIST_PAGE", "Sender", "WireClient"]

LIST_PAGE = 500  # api_get_authorizer_list's largest page


class WireClient(Protocol):
    """The part of :class:`~wxtokend.wechat.WeChatClient` a platform uses."""

    async def send(self, app: AppConfig, call: Call, table: Mapping[int, Errcode]) -> Any: ...


class Sender:
    """Sends a platform's calls as its component (its appid, secret and api_base)."""

    def __init__(self, client: WireClient, app: AppConfig) -> None:
        self._client = client
        self.app = app

    async def send(self, call: Call, table: Mapping[int, Errcode] = WITH_COMPONENT_ERRCODES) -> Any:
        return await self._client.send(self.app, call, table)

    async def authorizer_page(
        self, component_token: str, offset: int
    ) -> tuple[int, list[tuple[str, str]]]:
        """One page of ``api_get_authorizer_list``: the total, and (appid, refresh_token)s."""
        body = await self.send(authorizer_list_call(self.app, component_token, offset, LIST_PAGE))
        total, rows = body.get("total_count"), body.get("list")
        if isinstance(total, bool) or not isinstance(total, int) or not isinstance(rows, list):
            raise MalformedResponse("api_get_authorizer_list reply has no total_count and list")
        page = []
        for row in rows:
            if not isinstance(row, dict):
                raise MalformedResponse("api_get_authorizer_list row is not an object")
            try:
                appid = OPEN_PLATFORM.check_id(row.get("authorizer_appid"))
                refresh = check_secret(row.get("refresh_token"), "refresh_token")
            except ValueError as exc:
                raise MalformedResponse(f"api_get_authorizer_list row refused: {exc}") from None
            page.append((appid, refresh))
        return total, page
