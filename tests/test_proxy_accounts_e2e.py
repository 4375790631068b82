"""A platform's authorizers through the API proxy: the real daemon, the emulator's Open
Platform pushing real callbacks, calls over loopback HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, EmulatorProcess, free_port
from thirdparty import ThirdParty

pytestmark = pytest.mark.e2e

COMPONENT = "wx00d0d0d0d0d0d0d0"
SECRET = "COMPONENT_SECRET_0123456789abcdef"
TOKEN = "wxtokendproxyaccounts"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
ACCOUNTS = [f"wxa{i:015x}" for i in range(2)]
NOT_YET = "wxb000000000000001"
AGENCY = ThirdParty(
    name="agency", appid=COMPONENT, secret=SECRET, crypto_token=TOKEN, aes_key=AES_KEY
)


def _start(
    emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
) -> tuple[EmulatorProcess, DaemonProcess, str]:
    port = free_port()
    emu = emulator(
        [],
        grace=2,
        platforms=[
            {
                "component_appid": COMPONENT,
                "component_appsecret": SECRET,
                "token": TOKEN,
                "encoding_aes_key": AES_KEY,
                "callback_url": f"http://127.0.0.1:{port}/callback/agency",
                "ticket_push_interval": 2.0,
                "component_token_lifetime": 600,
                "authorizer_token_lifetime": 600,
                "authorizers": len(ACCOUNTS),
                "refresh_grace": 30.0,
            }
        ],
    )
    proc = daemon(
        [],
        emu.base_url,
        state_dir="state",
        callback={"listen": f"127.0.0.1:{port}"},
        api_proxy={"listen": "127.0.0.1:0"},
        # NOT_YET is expected, but it never authorized
        platforms=[AGENCY.entry(tmp_path / "daemon0", authorizers=[NOT_YET])],
    ).start()
    AGENCY.wait_for_accounts(proc, ACCOUNTS, timeout=30)
    return emu, proc, proc.proxy_url()


def _refreshes(emu: EmulatorProcess, appid: str) -> int:
    stats = emu.http.get("/emulator/platforms").json()["platforms"][COMPONENT]
    return int(stats["refreshes"].get(appid, 0))


class TestAccounts:
    """``/<platform>/<authorizer>/...`` carries that authorizer's token."""

    def test_calls_carry_the_accounts_token(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """Each account's call is made with its own token; unknown ones are refused."""
        emu, proc, proxy = _start(emulator, daemon, tmp_path)
        for appid in ACCOUNTS:
            answer = httpx.get(f"{proxy}/agency/{appid}/cgi-bin/user/info?openid=o1").json()
            assert answer["errcode"] == 0, answer
            assert answer["path"] == "/cgi-bin/user/info"
            assert answer["query"] == {"openid": "o1"}
        unknown = httpx.get(f"{proxy}/agency/wxa999999999999999/cgi-bin/user/info")
        assert (unknown.status_code, unknown.json()["errcode"]) == (404, 61003)
        bare = httpx.get(f"{proxy}/agency/{ACCOUNTS[0]}")
        assert bare.status_code == 404
        waiting = httpx.get(f"{proxy}/agency/{NOT_YET}/cgi-bin/user/info")
        assert (waiting.status_code, waiting.json()["errcode"]) == (403, 61023)
        calls = emu.http.get("/emulator/platforms").json()["platforms"][COMPONENT]["counts"]
        own = httpx.post(
            f"{proxy}/agency/{ACCOUNTS[0]}/cgi-bin/component/api_authorizer_token",
            json={"component_appid": COMPONENT, "authorizer_appid": ACCOUNTS[0]},
        )
        assert own.status_code == 403  # the component's calls are the daemon's alone
        after = emu.http.get("/emulator/platforms").json()["platforms"][COMPONENT]["counts"]
        assert after == calls
        metrics = httpx.get(f"{proc.admin_url()}/metrics").text
        assert 'app="agency/accounts"' in metrics
        assert not [a for a in ACCOUNTS if a in metrics]  # no label per account
        log = proc.log_text()
        tokens = [(proc.output_dir / "agency" / a).read_text() for a in ACCOUNTS]
        assert not [t for t in tokens if t in log or t in metrics]

    def test_a_revoked_token_is_refreshed_once_for_concurrent_calls(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """WeChat kills the account's token: 50 concurrent calls, one refresh, no 40001."""
        emu, proc, proxy = _start(emulator, daemon, tmp_path)
        appid = ACCOUNTS[0]
        before = _refreshes(emu, appid)
        other = _refreshes(emu, ACCOUNTS[1])
        emu.post(f"/emulator/platforms/{COMPONENT}/revoke-token", {"authorizer_appid": appid})
        answers = asyncio.run(_many(f"{proxy}/agency/{appid}/cgi-bin/user/info?openid=o", 50))
        assert [a for a in answers if a.get("errcode") != 0] == []
        assert _refreshes(emu, appid) == before + 1
        assert _refreshes(emu, ACCOUNTS[1]) == other  # the other account is left alone
        token = (proc.output_dir / "agency" / appid).read_text()
        assert emu.check(token) == 0
        metrics = httpx.get(f"{proc.admin_url()}/metrics").text
        assert 'wxtokend_proxy_recoveries_total{app="agency/accounts",result="replayed"}' in metrics


async def _many(url: str, n: int) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:

        async def one() -> dict[str, Any]:
            async with session.get(url) as reply:
                body: dict[str, Any] = await reply.json(content_type=None)
                return body

        return await asyncio.gather(*(one() for _ in range(n)))
