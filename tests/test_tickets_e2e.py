"""Tickets and WeCom with the real daemon and emulator over loopback."""

from __future__ import annotations

import json
import time

import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import TestApp, wait_for

from wxtokend.jssdk import signature

pytestmark = pytest.mark.e2e


class TestTicketsAlwaysValid:
    """Tickets rotate before expiry and every ticket read validates."""

    def test_rotation(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """Over several 6 s lifetimes the jsapi and wx_card tickets on disk always work."""
        shop = TestApp(
            appid="wx00000000000000f1",
            secret="f1" * 16,
            name="shop",
            grant="stable",
            tickets=["jsapi", "wx_card"],
        )
        emu = emulator([shop], lifetime=6, grace=2, stable_window=2)
        d = daemon([shop], emu.base_url, stable_renew_window=2).start()
        files = ["shop.jsapi_ticket", "shop.wx_card_ticket"]
        wait_for(lambda: all(d.token(f) for f in files), timeout=20, what="ticket files")
        seen: dict[str, set[str]] = {f: set() for f in files}
        failures = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for name in files:
                value = d.token(name) or ""
                if not emu.check_ticket(value):
                    failures.append(name)
                seen[name].add(value)
            time.sleep(0.05)
        assert failures == []
        assert all(len(values) >= 3 for values in seen.values())
        record = d.record("shop.jsapi_ticket")
        assert record is not None
        assert record["type"] == "jsapi"
        for value in seen["shop.jsapi_ticket"]:
            assert value not in d.log_text()

    def test_invalidated_token_recovered_with_one_refresh(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A token killed under a ticket fetch costs exactly one token refresh."""
        shop = TestApp(
            appid="wx00000000000000f2",
            secret="f2" * 16,
            name="shop",
            grant="classic",
            tickets=["jsapi"],
        )
        emu = emulator([shop], lifetime=60, grace=2)
        d = daemon([shop], emu.base_url).start()
        wait_for(lambda: d.token("shop.jsapi_ticket"), timeout=20, what="the ticket")
        before_token, before_ticket = d.token("shop"), d.token("shop.jsapi_ticket")
        emu.post("/emulator/revoke", {"appid": shop.appid, "grant": "classic"})
        token_calls = emu.calls(shop.appid, "token")
        # Make the ticket due now: the JSON's refresh mark sends the daemon straight to it.
        d.stop()
        record = d.record("shop.jsapi_ticket")
        assert record is not None
        record["refresh_started_at"] = record["fetched_at"]
        (d.output_dir / "shop.jsapi_ticket.json").write_text(json.dumps(record))
        d.start()
        wait_for(
            lambda: d.token("shop.jsapi_ticket") != before_ticket,
            timeout=20,
            what="a new ticket",
        )
        assert emu.calls(shop.appid, "token") == token_calls + 1
        assert d.token("shop") != before_token
        assert emu.check(d.token("shop") or "") == 0
        assert emu.check_ticket(d.token("shop.jsapi_ticket") or "")


class TestWeComE2e:
    """WeCom applications of one corp."""

    def test_applications_of_one_corp(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """Two applications with different secrets get different valid tokens and tickets."""
        hr = TestApp(
            appid="ww00000000000000a1",
            secret="hr" * 16,
            name="hr",
            kind="wecom",
            tickets=["jsapi", "agent_config"],
            agentid=1000002,
        )
        crm = TestApp(appid="ww00000000000000a1", secret="cr" * 16, name="crm", kind="wecom")
        emu = emulator([hr, crm], lifetime=120)
        d = daemon([hr, crm], emu.base_url).start()
        tokens = d.wait_for_tokens(["hr", "crm", "hr.jsapi_ticket", "hr.agent_config_ticket"])
        assert tokens["hr"] != tokens["crm"]
        assert emu.check(tokens["hr"]) == 0
        assert emu.check(tokens["crm"]) == 0
        assert emu.check_ticket(tokens["hr.agent_config_ticket"])
        with d.admin() as admin:
            apps = {a["name"]: a for a in admin.get("/v1/apps").json()["apps"]}
            assert apps["hr"]["grant"] == "wecom"
            assert set(apps["hr"]["tickets"]) == {"jsapi", "agent_config"}
            got = admin.get(
                "/cgi-bin/gettoken", params={"corpid": hr.appid, "corpsecret": crm.secret}
            ).json()
            assert got["access_token"] == tokens["crm"]
        signed = d.run("sign", "hr", "--url", "https://hr.example.com/a#b", "--agent")
        assert signed.returncode == 0, signed.stderr
        fields = json.loads(signed.stdout)
        assert fields["corpid"] == hr.appid
        assert fields["agentid"] == 1000002
        assert fields["signature"] == signature(
            ticket=tokens["hr.agent_config_ticket"],
            nonce=fields["nonceStr"],
            timestamp=fields["timestamp"],
            url="https://hr.example.com/a",
        )
