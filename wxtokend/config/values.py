"""Checks of single values that several models share: names, appids, URLs."""

from __future__ import annotations

import re

import httpx

__all__ = ["_APPID", "_NAME", "_WXID", "_check_http_url", "_check_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_APPID = re.compile(r"[\x21-\x7e]{1,128}")
_WXID = re.compile(r"wx[0-9a-f]{16}")  # an Official Account's, Mini Program's or component's


def _check_http_url(value: str | None) -> str | None:
    if value is None:
        return None
    problem = "must be an http:// or https:// URL without query, e.g. https://host"
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(problem)
    try:
        port = httpx.URL(value).port
    except (httpx.InvalidURL, ValueError):
        raise ValueError(problem) from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is not between 1 and 65535")
    return value.rstrip("/")


def _check_name(value: str) -> None:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} can't be a file name: use 1-128 letters, digits, '_' or '-',"
            " starting with a letter or digit (no '/', '..', dots or spaces)"
        )
