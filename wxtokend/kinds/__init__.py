"""Credential kinds: each module is one kind of credential the loop keeps fresh.

To add a kind, write a module here implementing :class:`~wxtokend.kinds.base.Kind`
(plus its part of the emulator) and return it from :func:`token_kind` or
:func:`ticket_kind`; ARCHITECTURE.md walks through the WeCom token as the example.
"""

from __future__ import annotations

from wxtokend.config import AppConfig, Ticket
from wxtokend.kinds.base import Attempt, Call, Dependency, Kind, Upstream, parse_token
from wxtokend.kinds.official import OFFICIAL_TOKEN
from wxtokend.kinds.tickets import TicketKind
from wxtokend.kinds.wecom import WECOM_TOKEN

__all__ = [
    "Attempt",
    "Call",
    "Dependency",
    "Kind",
    "Upstream",
    "parse_token",
    "ticket_kind",
    "token_kind",
]


def token_kind(app: AppConfig) -> Kind:
    """The kind of ``app``'s access_token."""
    return WECOM_TOKEN if app.kind == "wecom" else OFFICIAL_TOKEN


def ticket_kind(app: AppConfig, ticket: Ticket) -> TicketKind:
    """A new ``ticket`` kind for ``app`` (one per loop: it remembers refused tokens)."""
    return TicketKind(token_kind(app), ticket)
