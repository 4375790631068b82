"""Passive refresh and the SDK endpoints against the real daemon, over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import TestApp, raw_post

from wxtokend.redact import fingerprint

pytestmark = pytest.mark.e2e


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self._body = json.loads(body)

    def json(self) -> dict[str, Any]:
        return dict(self._body)


async def storm(base_url: str, path: str, body: dict[str, str], n: int) -> list[Answer]:
    payload = json.dumps(body).encode()
    results = await asyncio.gather(*(raw_post(base_url, path, payload) for _ in range(n)))
    return [Answer(status, data) for status, data, _ in results]


class TestPassiveStorm:
    """A token WeChat rejected, reported by everyone at once."""

    @pytest.mark.parametrize("grant", ["classic", "stable"])
    def test_thousand_reports_one_upstream_call(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, grant: str
    ) -> None:
        """1,000 concurrent reports of the same token: one upstream call, one answer for all."""
        shop = TestApp(appid="wx00000000000000d1", secret="d" * 32, name="shop", grant=grant)
        emu = emulator([shop], lifetime=600)
        d = daemon([shop], emu.base_url).start()
        stale = d.wait_for_tokens(["shop"])["shop"]
        if grant == "stable":
            emu.post("/emulator/revoke", {"appid": shop.appid, "grant": "stable"})
        assert emu.check(stale) != 0 or grant == "classic"
        before = emu.stats()[shop.appid]
        answers = asyncio.run(
            storm(d.admin_url(), "/v1/apps/shop/refresh", {"access_token": stale}, 1000)
        )
        after = emu.stats()[shop.appid]
        endpoint = "token" if grant == "classic" else "stable_token"
        upstream = after[endpoint] - before[endpoint]
        # classic: one fetch; stable: one normal call that returns a new token (revoked), or
        # normal + force when WeChat still thinks the rejected token valid.
        assert upstream == 1
        fresh = d.token("shop")
        assert fresh != stale
        assert emu.check(fresh or "") == 0
        # Reports that joined the refresh say "refreshed"; any arriving after it finished
        # say "newer": every one of them names the same new token.
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["result"] for a in answers} <= {"refreshed", "newer"}
        assert answers[0].json()["result"] == "refreshed"
        assert {a.json()["app"]["fingerprint"] for a in answers} == {fingerprint(fresh or "")}


class TestSdkOverHttp:
    """SDK-style calls: WxJava/co-wechat-api GET, wechatpy/EasyWeChat stable POST."""

    def test_classic_get_and_stable_post(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """Both endpoints hand out the file's token and remaining lifetime, no upstream call."""
        shop = TestApp(appid="wx00000000000000e1", secret="e" * 32, name="shop", grant="classic")
        mini = TestApp(appid="wx00000000000000e2", secret="f" * 32, name="mini", grant="stable")
        emu = emulator([shop, mini], lifetime=600)
        d = daemon([shop, mini], emu.base_url).start()
        tokens = d.wait_for_tokens(["shop", "mini"])
        stats = emu.stats()
        with d.admin() as admin:
            got = admin.get(
                "/cgi-bin/token",
                params={
                    "grant_type": "client_credential",
                    "appid": shop.appid,
                    "secret": shop.secret,
                },
            ).json()
            assert got["access_token"] == tokens["shop"]
            assert 590 <= got["expires_in"] <= 600
            got = admin.post(
                "/cgi-bin/stable_token",
                json={
                    "grant_type": "client_credential",
                    "appid": mini.appid,
                    "secret": mini.secret,
                },
            ).json()
            assert got["access_token"] == tokens["mini"]
            wrong = admin.get(
                "/cgi-bin/token",
                params={"grant_type": "client_credential", "appid": shop.appid, "secret": "x" * 32},
            ).json()
            assert wrong == {"errcode": 40125, "errmsg": "invalid appsecret"}
        assert emu.stats() == stats
