"""JS-SDK signatures: the ``wx.config`` fields a web page needs.

The signature is the sha1 of ``jsapi_ticket=..&noncestr=..&timestamp=..&url=..``
(keys sorted, the URL without its ``#fragment``), as WeChat's JS-SDK docs
specify. Front-end servers in any language ask wxtokend for it (CLI or admin
API) and never handle the ticket themselves.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from urllib.parse import urlsplit

__all__ = ["jssdk_config", "signature"]

_NONCE_ALPHABET = string.ascii_letters + string.digits


def signature(*, ticket: str, nonce: str, timestamp: int, url: str) -> str:
    """sha1 over the four fields in the order WeChat sorts them."""
    plain = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}"
    return hashlib.sha1(plain.encode(), usedforsecurity=False).hexdigest()


def jssdk_config(
    *,
    app_id: str,
    ticket: str,
    url: str,
    timestamp: int,
    nonce: str | None = None,
) -> dict[str, object]:
    """The ``wx.config`` fields for the page at ``url``; ValueError if it is not a page URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not a page URL: give the full http(s):// address")
    page = url.split("#", 1)[0]  # WeChat signs the URL without its fragment
    nonce = nonce or "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(16))
    return {
        "appId": app_id,
        "timestamp": timestamp,
        "nonceStr": nonce,
        "signature": signature(ticket=ticket, nonce=nonce, timestamp=timestamp, url=page),
    }
