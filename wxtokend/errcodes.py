"""What a WeChat errcode means for us: the row type of every kind's errcode table.

Each credential kind (:mod:`wxtokend.kinds`) owns its table; :func:`error_for`
turns a code and its message into the :class:`~wxtokend.errors.FetchError`
subclass the scheduler acts on, with the operator's fix filled in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from wxtokend.config import AppConfig
from wxtokend.errors import AdminWaitError, FetchError, UnknownErrcodeError

__all__ = ["CONSOLE", "Errcode", "error_for"]

_WHITELIST_IP = re.compile(r"invalid ip ([0-9a-fA-F.:]+)")
CONSOLE = "mp.weixin.qq.com"


@dataclass(frozen=True, kw_only=True)
class Errcode:
    """One row of the errcode table: what it means, what to do, what the daemon does.

    ``retry`` is empty where the error kind's own default says it.
    """

    kind: type[FetchError]
    meaning: str
    fix: str
    retry: str = ""
    wait: float = 0.0


def error_for(
    errcode: int, errmsg: str, app: AppConfig, table: Mapping[int, Errcode]
) -> FetchError:
    """The error a WeChat errcode stands for in ``table``, with the operator's fix filled in."""
    row = table.get(errcode)
    if row is None:
        return UnknownErrcodeError(
            f"errcode {errcode}: {errmsg}",
            errcode=errcode,
            fix="unknown errcode: look it up by the rid in its message",
        )
    ip = m.group(1) if (m := _WHITELIST_IP.search(errmsg)) else "this server's egress IP"
    fix = row.fix.format(source=app.secret_source, console=CONSOLE, ip=ip)
    message = f"errcode {errcode} ({row.meaning}): {errmsg}"
    if row.kind is AdminWaitError:
        return AdminWaitError(message, errcode=errcode, fix=fix, retry=row.retry, wait=row.wait)
    return row.kind(message, errcode=errcode, fix=fix, retry=row.retry)
