"""A platform as the admin API shows it: counts, statuses and fingerprints, never a token."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from wxtokend.config import PlatformConfig
from wxtokend.platforms.authorizers import Authorizer, AuthorizerBook
from wxtokend.platforms.products import Product
from wxtokend.platforms.verify import VerifyTicket
from wxtokend.redact import fingerprint
from wxtokend.refresher import Refresher
from wxtokend.status import describe


class Shown(Protocol):
    """What a summary reads of a platform."""

    name: str
    config: PlatformConfig
    product: Product
    component: Refresher
    provider: Refresher | None
    ticket: VerifyTicket
    book: AuthorizerBook

    def problems(self) -> list[str]: ...


__all__ = ["page", "summary"]


def summary(platform: Shown, now: float) -> dict[str, Any]:
    data = {
        "name": platform.name,
        "product": platform.config.product,
        "id": platform.config.component_appid,
        platform.product.upper_file: describe(platform.component.status(), now),
        platform.product.ticket_name: describe(platform.ticket.status(), now),
        "authorizers": platform.book.counts(),
        "problems": platform.problems(),
    }
    if platform.provider is not None:
        data["provider_access_token"] = describe(platform.provider.status(), now)
    return data


def page(entries: Mapping[str, Authorizer], offset: int, limit: int, now: float) -> dict[str, Any]:
    rows = list(entries.values())
    return {
        "total": len(rows),
        "offset": offset,
        "authorizers": [_row(e, now) for e in rows[offset : offset + limit]],
    }


def _row(e: Authorizer, now: float) -> dict[str, Any]:
    state = (
        "needs_authorization" if e.needs_authorization else ("ok" if e.valid(now) else "pending")
    )
    return {
        "appid": e.appid,
        "state": state,
        "expires_at": int(e.expires_at) if e.token else None,
        "refresh_at": int(e.next_at) if math.isfinite(e.next_at) and e.next_at else None,
        "fingerprint": fingerprint(e.token) if e.token else None,
        "error": str(e.error) if e.error else None,
        "hint": e.error.hint if e.error else None,
    }
