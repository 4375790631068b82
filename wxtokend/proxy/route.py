"""Where a proxied call goes, and what of it goes there: pure functions of the request.

A call ``/<app name>/<api path>?<query>`` goes to ``<the app's api_base>/<api path>``:
the first segment of the API path must be one of WeChat's API roots (:data:`ROOTS`),
and no segment may climb out of it (``..``, ``.``, empty, or encoded ``/``, ``\\`` or
``.``), so nothing but the app's own API is reachable. ``access_token`` in the query
is replaced by the app's token; the other parameters pass as the client wrote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

__all__ = [
    "PLACEHOLDER_TOKEN",
    "ROOTS",
    "TOKEN_PATHS",
    "USER_TOKEN_ROOTS",
    "Refused",
    "Target",
    "allowed",
    "request_headers",
    "response_headers",
    "target",
    "with_token",
]

# What a token endpoint on the proxy hands out: SDKs that insist on fetching a token
# (WxJava, EasyWeChat) get this one, and the proxy swaps it for the real one.
PLACEHOLDER_TOKEN: Final = "WXTOKEND_PROXY_PUTS_THE_TOKEN_IN"  # noqa: S105  # not a credential

# The first segment of every WeChat server API path (api.weixin.qq.com, qyapi.weixin.qq.com).
ROOTS: Final = {
    "official": frozenset(
        {
            "cgi-bin",
            "wxa",
            "wxaapi",
            "sns",
            "datacube",
            "card",
            "customservice",
            "merchant",
            "semantic",
            "shakearound",
            "tcb",
            "product",
            "shop",
            "channels",
            "union",
            "wxopen",
        }
    ),
    "wecom": frozenset({"cgi-bin"}),
}
# Calls under these roots carry the *user's* token (sns/userinfo, sns/auth) or the
# secret (sns/oauth2/access_token, sns/jscode2session): passed as sent, never given
# the app's token, never a reason to refresh it.
USER_TOKEN_ROOTS: Final = frozenset({"sns"})
# Token fetches are answered by the proxy itself: forwarded, they would fetch (and with the
# classic grant invalidate) a token behind the daemon's back.
TOKEN_PATHS: Final = {
    "official": frozenset({"cgi-bin/token", "cgi-bin/stable_token"}),
    "wecom": frozenset({"cgi-bin/gettoken"}),
}

# No ";": Java-style servers read "..;" as "..". No "\\", no control bytes.
_SAFE_PATH = re.compile(rb"^/[A-Za-z0-9\-._~!$&'()*+,=:@%/]*$")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
# Escaped separators and NUL climb or cut; an escaped letter, digit or "-._~" only ever
# disguises a path (cgi-bin/%74oken is cgi-bin/token).
_REFUSED_ESCAPES = frozenset(b"/\\.\0" + bytes(range(0x30, 0x3A)) + bytes(range(0x41, 0x5B)))
_REFUSED_ESCAPES |= frozenset(bytes(range(0x61, 0x7B)) + b"-_~")
# RFC 9110 §7.6.1, plus what only a proxy's client may address to the proxy.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED: Final = _HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
_NOT_RETURNED: Final = _HOP_BY_HOP | {"content-length", "date", "server"}


@dataclass(frozen=True, slots=True)
class Target:
    """The app a call is for, and the API path it asks for (no leading slash, still encoded)."""

    name: str
    path: str
    root: str  # its first segment: the metrics' path group


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a call is answered by the proxy itself, in WeChat's shape."""

    status: int
    errcode: int
    errmsg: str


def target(raw_path: bytes) -> Target | Refused:
    """The app and API path of ``raw_path`` (the request target before its ``?``)."""
    if not _SAFE_PATH.match(raw_path) or _disguised(raw_path):
        return Refused(400, 40039, "invalid url: characters the WeChat API never uses")
    segments = raw_path.decode("ascii").split("/")[1:]
    if any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
        return Refused(400, 40039, "invalid url: empty, . or .. path segments")
    if len(segments) < 3 or not segments[-1]:
        return Refused(
            404, 404, "not a WeChat API call: use /<app name>/cgi-bin/... (or wxa, sns, ...)"
        )
    name = unquote(segments[0])
    return Target(name=name, path="/".join(segments[1:]), root=segments[1])


def _disguised(raw_path: bytes) -> bool:
    escapes = _ESCAPE.findall(raw_path)
    if len(escapes) != raw_path.count(b"%"):
        return True  # a "%" that starts no escape
    return any(int(code, 16) in _REFUSED_ESCAPES for code in escapes)


def allowed(found: Target, kind: str) -> Refused | None:
    """Whether ``found`` names an API root of an app of ``kind``."""
    if found.root in ROOTS.get(kind, frozenset()):
        return None
    roots = ", ".join(sorted(ROOTS.get(kind, frozenset())))
    return Refused(404, 404, f"not a WeChat API path of this app: it starts with one of {roots}")


def with_token(raw_query: str, token: str) -> str:
    """``raw_query`` without any ``access_token`` parameter, and with ``token`` as one."""
    kept = [
        part
        for part in raw_query.split("&")
        if part and unquote(part.partition("=")[0]) != "access_token"
    ]
    kept.append("access_token=" + quote(token, safe=""))
    return "&".join(kept)


def request_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers that go on to WeChat: not hop-by-hop, not Host, not the ones
    the proxy sets itself (length, encoding), nor any the client's Connection names."""
    dropped = _NOT_FORWARDED | _connection_names(headers)
    kept = [(k, v) for k, v in headers if k.lower() not in dropped]
    # The proxy reads errcodes, so WeChat must answer uncompressed; its hop to the
    # consumer is loopback, where compression buys nothing.
    kept.append(("Accept-Encoding", "identity"))
    return kept


def response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """WeChat's headers that go back to the client (the proxy frames the body itself)."""
    dropped = _NOT_RETURNED | _connection_names(headers)
    return [(k, v) for k, v in headers if k.lower() not in dropped]


def _connection_names(headers: list[tuple[str, str]]) -> set[str]:
    return {
        name.strip().lower()
        for key, value in headers
        if key.lower() == "connection"
        for name in value.split(",")
    }
