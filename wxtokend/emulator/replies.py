"""The reply shapes the WeChat products share: JSON objects with errcode and errmsg."""

from __future__ import annotations

import os

__all__ = ["NOT_LATEST", "Reply", "error", "minute_quota_error", "rid"]

Reply = dict[str, object]
NOT_LATEST = "invalid credential, access_token is invalid or not latest"


def error(errcode: int, errmsg: str) -> Reply:
    return {"errcode": errcode, "errmsg": errmsg}


def rid() -> str:
    """WeChat appends a request id to many messages; clients must cope with it."""
    raw = os.urandom(12).hex()
    return f"rid: {raw[:8]}-{raw[8:16]}-{raw[16:]}"


def minute_quota_error() -> Reply:
    return error(45011, "api minute-quota reach limit  mustslower  retry next minute")
