"""Where the API proxy sends a call, and what of it goes there (pure functions)."""

from __future__ import annotations

import pytest

from wxtokend.proxy.metrics import MAX_ERRCODES, ProxyMetrics
from wxtokend.proxy.route import (
    Refused,
    Target,
    allowed,
    request_headers,
    response_headers,
    target,
    with_token,
)
from wxtokend.proxy.upstream import errcode_of


class TestTarget:
    """The app name and API path come from the request path, and nothing climbs out."""

    def test_app_and_api_path(self) -> None:
        """/<name>/<api path>: the name, the path after it, and its first segment."""
        assert target(b"/shop/cgi-bin/message/custom/send") == Target(
            name="shop", path="cgi-bin/message/custom/send", root="cgi-bin"
        )

    def test_path_passed_as_encoded(self) -> None:
        """The API path is passed on as the client encoded it (a space, UTF-8)."""
        found = target(b"/shop/wxa/get%20qr%E4%BD%A0")
        assert found == Target(name="shop", path="wxa/get%20qr%E4%BD%A0", root="wxa")

    @pytest.mark.parametrize(
        "path",
        [
            b"/shop/../emulator/stats",
            b"/shop/cgi-bin/../../x",
            b"/shop/./cgi-bin/x",
            b"/shop//cgi-bin/x",
            b"/shop/cgi-bin/%2e%2e/%2e%2e/emulator",
            b"/shop/cgi-bin/%2E%2e/x",
            b"/shop/cgi-bin/a%2fb",
            b"/shop/cgi-bin/a%5Cb",
            b"/shop/cgi-bin/a\\b",
            b"/shop/cgi-bin/a%00b",
            b"/shop/cgi-bin/%74oken",
            b"/sh%6fp/cgi-bin/x",
            b"/shop/cgi-bin/a/..;/x",
            b"/shop/cgi-bin/x;jsessionid=1",
            b"/shop/cgi-bin/%zz",
            b"/shop/cgi-bin/100%",
            b"http://evil.example/cgi-bin/x",
            b"//evil.example/cgi-bin/x",
            b"/shop/cgi-bin/x\r\nHost: evil",
            b"/shop/cgi-bin/\xff",
            b"*",
        ],
    )
    def test_escapes_are_refused(self, path: bytes) -> None:
        """Dot segments, empty segments, encoded separators, escaped letters (a disguised
        cgi-bin/token), ";" (Java's "..;"), stray "%", absolute forms: 400."""
        found = target(path)
        assert isinstance(found, Refused)
        assert found.status == 400

    @pytest.mark.parametrize("path", [b"/", b"/shop", b"/shop/cgi-bin", b"/shop/cgi-bin/"])
    def test_too_short_is_not_an_api_call(self, path: bytes) -> None:
        """A path without an API path after the name is answered 404 in WeChat's shape."""
        found = target(path)
        assert isinstance(found, Refused)
        assert found.status in (400, 404)


class TestAllowed:
    """Only WeChat's API roots are reachable, per kind of app."""

    def test_official_roots(self) -> None:
        """An Official Account or Mini Program reaches cgi-bin, wxa, sns, datacube."""
        for root in ("cgi-bin", "wxa", "sns", "datacube"):
            assert allowed(Target(name="a", path=f"{root}/x", root=root), "official") is None

    def test_other_roots_are_not(self) -> None:
        """The emulator's control paths, or anything else on the host, are not."""
        refused = allowed(Target(name="a", path="emulator/stats", root="emulator"), "official")
        assert refused is not None
        assert refused.status == 404

    def test_wecom_reaches_cgi_bin_only(self) -> None:
        """qyapi.weixin.qq.com serves its API under cgi-bin."""
        assert allowed(Target(name="a", path="cgi-bin/user/get", root="cgi-bin"), "wecom") is None
        assert allowed(Target(name="a", path="wxa/x", root="wxa"), "wecom") is not None


class TestWithToken:
    """The client's access_token, whatever its spelling, is replaced by the app's."""

    def test_replaced_and_others_kept(self) -> None:
        """Other parameters keep their order and encoding; the token goes last."""
        query = with_token("openid=o%201&access_token=CLIENT&lang=zh_CN", "REAL")
        assert query == "openid=o%201&lang=zh_CN&access_token=REAL"

    def test_encoded_and_repeated_names_removed(self) -> None:
        """acc%65ss_token and a second access_token cannot smuggle the client's token."""
        query = with_token("acc%65ss_token=A&access_token=B&access_token=C", "REAL")
        assert query == "access_token=REAL"

    def test_token_is_encoded(self) -> None:
        """A token is put in as one query value, whatever its characters."""
        assert with_token("", "a/b+c&d") == "access_token=a%2Fb%2Bc%26d"


class TestHeaders:
    """Hop-by-hop headers, and those the client's Connection names, stay on their hop."""

    def test_request_headers(self) -> None:
        """Host, length, encoding, hop-by-hop and Connection-named headers are dropped."""
        sent = [
            ("Host", "evil.example"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "1"),
            ("Proxy-Authorization", "Basic abc"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "10"),
            ("Accept-Encoding", "gzip"),
            ("Content-Type", "application/json"),
            ("X-Request-Id", "r1"),
        ]
        assert request_headers(sent) == [
            ("Content-Type", "application/json"),
            ("X-Request-Id", "r1"),
            ("Accept-Encoding", "identity"),
        ]

    def test_response_headers(self) -> None:
        """The proxy frames the body itself; content type and disposition pass."""
        got = [
            ("Content-Type", "image/jpeg"),
            ("Content-Length", "5"),
            ("Connection", "close"),
            ("Content-Disposition", "attachment"),
            ("Keep-Alive", "timeout=5"),
        ]
        assert response_headers(got) == [
            ("Content-Type", "image/jpeg"),
            ("Content-Disposition", "attachment"),
        ]


class TestErrcodeOf:
    """The top-level errcode of a reply, only when it is WeChat JSON."""

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b'{"errcode":40001,"errmsg":"invalid credential"}', 40001),
            (b'{"errcode":0,"errmsg":"ok"}', 0),
            (b'{"ip_list":[]}', None),
            (b'{"errcode":"40001"}', None),
            (b'{"errcode":true}', None),
            (b'[{"errcode":40001}]', None),
            (b'{"data":{"errcode":40001}}', None),
            (b"not json errcode", None),
        ],
    )
    def test_errcode(self, body: bytes, code: int | None) -> None:
        """Nested, quoted or boolean errcodes are not WeChat's answer."""
        assert errcode_of(body) == code


class TestProxyMetrics:
    """Errcodes from upstream cannot grow the label set without bound."""

    def test_errcode_labels_capped(self) -> None:
        """After MAX_ERRCODES distinct codes, the rest count as "other"."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        metrics = ProxyMetrics(registry)
        for code in range(MAX_ERRCODES + 50):
            metrics.request("shop", "cgi-bin", code)
        text = generate_latest(registry).decode()
        lines = [x for x in text.splitlines() if x.startswith("wxtokend_proxy_requests_total")]
        assert len(lines) == MAX_ERRCODES + 1
        assert 'errcode="other"' in text
