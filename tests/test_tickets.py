"""Tickets beside tokens, JS-SDK signatures, and WeCom applications, in-process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import ScriptedTickets, ScriptedWeChat, VirtualClock, daemon_config

from wxtokend.admin import admin_app
from wxtokend.config import AppConfig, Grant, Ticket
from wxtokend.daemon import Daemon
from wxtokend.jssdk import signature
from wxtokend.redact import Secret


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def official(name: str, n: int, tickets: tuple[Ticket, ...], grant: Grant = "stable") -> AppConfig:
    return AppConfig(
        appid=f"wx{n:016x}",
        name=name,
        grant=grant,
        tickets=tickets,
        secret=Secret(f"{n:032x}"),
        secret_source="secret_file x",
    )


def wecom(name: str, corpid: str, secret: str, agentid: int | None = None) -> AppConfig:
    return AppConfig(
        appid=corpid,
        name=name,
        grant="wecom",
        kind="wecom",
        agentid=agentid,
        tickets=("jsapi", "agent_config"),
        secret=Secret(secret),
        secret_source="secret_file y",
    )


class Upstream:
    def __init__(self, wechat: ScriptedWeChat, tickets: ScriptedTickets) -> None:
        self.wechat, self.tickets = wechat, tickets

    async def fetch_token(self, app: AppConfig, *, force: bool = False) -> Any:
        return await self.wechat.fetch_token(app, force=force)

    async def fetch_ticket(self, app: AppConfig, kind: Ticket, access_token: str) -> Any:
        return await self.tickets.fetch_ticket(app, kind, access_token)


class World:
    def __init__(self, tmp_path: Path, apps: tuple[AppConfig, ...]) -> None:
        self.tmp_path = tmp_path
        self.clock = VirtualClock()
        self.wechat = ScriptedWeChat(self.clock)
        self.ticketing = ScriptedTickets(self.clock, self.wechat)
        config = daemon_config(tmp_path, apps)
        self.daemon = Daemon(config, source=Upstream(self.wechat, self.ticketing), clock=self.clock)
        self.daemon.start()
        self.admin = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=admin_app(self.daemon)), base_url="http://admin"
        )

    async def fetch_all(self) -> None:
        for refresher in self.daemon.refreshers.values():
            assert await refresher.refresh()
        for kinds in self.daemon.tickets.values():
            for ticket in kinds.values():
                assert await ticket.refresh()


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path, (official("shop", 1, ("jsapi", "wx_card"), "classic"),))
    yield world
    await world.admin.aclose()


@pytest.mark.anyio
class TestTicketFiles:
    """Each ticket is kept in its own pair of files beside the token."""

    async def test_files(self, shop: World) -> None:
        """<name>.jsapi_ticket holds the bare ticket, its JSON the ticket and times."""
        await shop.fetch_all()
        tokens = shop.tmp_path / "tokens"
        for kind in ("jsapi", "wx_card"):
            ticket = (tokens / f"shop.{kind}_ticket").read_text()
            assert ticket.startswith(f"TICKET_{kind}_")
            data = json.loads((tokens / f"shop.{kind}_ticket.json").read_text())
            assert data["type"] == kind
            assert data["ticket"] == ticket
            assert data["expires_at"] - data["fetched_at"] == 7200
            assert "access_token" not in data
        assert (tokens / "shop").read_text().startswith("TOKEN_")

    async def test_fetched_with_the_current_token(self, shop: World) -> None:
        """A ticket is fetched with the app's current access_token."""
        await shop.fetch_all()
        token = shop.daemon.refreshers["shop"].record
        assert token is not None
        assert {t for _, _, t in shop.ticketing.calls} == {token.access_token}

    async def test_ticket_waits_for_the_token(self, shop: World) -> None:
        """Before the token exists a ticket fetch fails softly, calling nothing."""
        ticket = shop.daemon.tickets["shop"]["jsapi"]
        assert not await ticket.refresh()
        assert shop.ticketing.calls == []
        assert ticket.last_error is not None
        assert "no valid access_token yet" in str(ticket.last_error)

    async def test_ready_needs_tickets(self, shop: World) -> None:
        """readyz counts tickets: an app with its token but no ticket is not ready."""
        await shop.daemon.refreshers["shop"].refresh()
        assert shop.daemon.readiness() == {"shop": "jsapi ticket: pending"}
        await shop.fetch_all()
        assert shop.daemon.readiness() == {}

    async def test_status_lists_tickets(self, shop: World) -> None:
        """/v1/apps shows each ticket's state and fingerprint, never the ticket."""
        await shop.fetch_all()
        answer = await shop.admin.get("/v1/apps/shop")
        tickets = answer.json()["tickets"]
        assert set(tickets) == {"jsapi", "wx_card"}
        assert tickets["jsapi"]["state"] == "ok"
        assert tickets["jsapi"]["grant"] == "jsapi_ticket"
        ticket = (shop.tmp_path / "tokens" / "shop.jsapi_ticket").read_text()
        assert ticket not in answer.text

    async def test_metrics(self, shop: World) -> None:
        """Ticket refreshes and expiry show up in /metrics, labelled by ticket."""
        await shop.fetch_all()
        text = (await shop.admin.get("/metrics")).text
        assert 'wxtokend_ticket_expiry_timestamp_seconds{app="shop",ticket="jsapi"}' in text
        assert 'grant="wx_card_ticket",outcome="ok"' in text


@pytest.mark.anyio
class TestRejectedToken:
    """A ticket fetch refused for its token: one token refresh, then the ticket; no loop."""

    async def test_one_token_refresh_then_ticket(self, shop: World) -> None:
        """40001 on getticket refreshes the token once and fetches the ticket with the new one."""
        await shop.fetch_all()
        token_calls = len(shop.wechat.calls)
        old = shop.daemon.refreshers["shop"].record
        shop.ticketing.reject = 1
        assert await shop.daemon.tickets["shop"]["jsapi"].refresh()
        assert len(shop.wechat.calls) == token_calls + 1
        new = shop.daemon.refreshers["shop"].record
        assert old is not None
        assert new is not None
        assert new.access_token != old.access_token
        assert shop.ticketing.calls[-1][2] == new.access_token

    async def test_never_a_loop(self, shop: World) -> None:
        """If the new token is refused too, the ticket fails and backs off: no storm."""
        await shop.fetch_all()
        token_calls = len(shop.wechat.calls)
        shop.ticketing.reject = 100
        ticket = shop.daemon.tickets["shop"]["jsapi"]
        for _ in range(5):
            assert not await ticket.refresh()
        # one token refresh for the first rejection; the rest are rate limited per app
        assert len(shop.wechat.calls) == token_calls + 1
        assert ticket.failures == 5
        assert ticket.next_at > shop.clock.now()


@pytest.mark.anyio
class TestJsSdkSignature:
    """POST /v1/apps/{name}/jssdk-signature."""

    async def test_signature(self, shop: World) -> None:
        """The answer is wx.config's fields, signed with the current jsapi ticket."""
        await shop.fetch_all()
        url = "https://shop.example.com/cart?id=7#top"
        answer = await shop.admin.post("/v1/apps/shop/jssdk-signature", json={"url": url})
        fields = answer.json()
        assert answer.status_code == 200
        assert fields["appId"] == "wx0000000000000001"
        ticket = (shop.tmp_path / "tokens" / "shop.jsapi_ticket").read_text()
        expected = signature(
            ticket=ticket,
            nonce=fields["nonceStr"],
            timestamp=fields["timestamp"],
            url="https://shop.example.com/cart?id=7",
        )
        assert fields["signature"] == expected
        assert ticket not in answer.text

    async def test_errors(self, shop: World, tmp_path: Path) -> None:
        """No ticket yet is 503, a bad URL 400, a bad body 400, an unknown app 404."""
        no_ticket = await shop.admin.post(
            "/v1/apps/shop/jssdk-signature", json={"url": "https://a"}
        )
        assert no_ticket.status_code == 503
        await shop.fetch_all()
        bad_url = await shop.admin.post("/v1/apps/shop/jssdk-signature", json={"url": "/cart"})
        assert bad_url.status_code == 400
        bad_body = await shop.admin.post("/v1/apps/shop/jssdk-signature", content=b"[]")
        assert bad_body.status_code == 400
        unknown = await shop.admin.post("/v1/apps/nope/jssdk-signature", json={"url": "https://a"})
        assert unknown.status_code == 404

    async def test_app_without_jsapi_ticket(self, tmp_path: Path) -> None:
        """An app that keeps no jsapi ticket answers 409 with the config fix."""
        world = World(tmp_path, (official("mini", 2, ()),))
        await world.fetch_all()
        answer = await world.admin.post("/v1/apps/mini/jssdk-signature", json={"url": "https://a"})
        assert answer.status_code == 409
        assert "tickets: [jsapi]" in answer.json()["error"]

    async def test_agent_on_an_official_app(self, shop: World) -> None:
        """ "agent": true on an official app is a 409 saying it is for WeCom apps only."""
        await shop.fetch_all()
        answer = await shop.admin.post(
            "/v1/apps/shop/jssdk-signature", json={"url": "https://a", "agent": True}
        )
        assert answer.status_code == 409
        error = answer.json()["error"]
        assert 'is not a WeCom app: "agent": true (wx.agentConfig) is for WeCom apps only' in error
        assert "agent_config" not in error


@pytest.fixture
async def corp(tmp_path: Path) -> AsyncIterator[World]:
    apps = (
        wecom("hr", "ww00000000000000c1", "HR" + "0" * 30, agentid=1000002),
        wecom("crm", "ww00000000000000c1", "CRM" + "0" * 29, agentid=1000003),
    )
    world = World(tmp_path, apps)
    yield world
    await world.admin.aclose()


@pytest.mark.anyio
class TestWeCom:
    """WeCom applications: one corp, several secrets, several tokens."""

    async def test_applications_get_their_own_tokens(self, corp: World) -> None:
        """Two applications of one corp are fetched by their secrets and differ."""
        await corp.fetch_all()
        hr = corp.daemon.refreshers["hr"].record
        crm = corp.daemon.refreshers["crm"].record
        assert hr is not None
        assert crm is not None
        assert hr.access_token != crm.access_token
        assert hr.grant == crm.grant == "wecom"

    async def test_gettoken_drop_in(self, corp: World) -> None:
        """/cgi-bin/gettoken answers WeCom-style, telling applications apart by secret."""
        await corp.fetch_all()
        for name, secret in (("hr", "HR" + "0" * 30), ("crm", "CRM" + "0" * 29)):
            answer = await corp.admin.get(
                "/cgi-bin/gettoken",
                params={"corpid": "ww00000000000000c1", "corpsecret": secret},
            )
            body = answer.json()
            record = corp.daemon.refreshers[name].record
            assert record is not None
            assert (body["errcode"], body["errmsg"]) == (0, "ok")
            assert body["access_token"] == record.access_token
            assert body["expires_in"] == 7200

    @pytest.mark.parametrize(
        ("params", "errcode"),
        [
            ({"corpid": "wwunknown", "corpsecret": "x"}, 40013),
            ({"corpid": "ww00000000000000c1", "corpsecret": "wrong"}, 40001),
            ({"corpsecret": "x"}, 41002),
            ({"corpid": "ww00000000000000c1"}, 41004),
        ],
    )
    async def test_gettoken_errors(self, corp: World, params: dict[str, str], errcode: int) -> None:
        """Bad WeCom requests get WeCom's errcodes."""
        await corp.fetch_all()
        answer = await corp.admin.get("/cgi-bin/gettoken", params=params)
        assert answer.json()["errcode"] == errcode

    async def test_wecom_is_not_an_official_appid(self, corp: World) -> None:
        """The official-account endpoint does not hand out WeCom tokens."""
        await corp.fetch_all()
        answer = await corp.admin.get(
            "/cgi-bin/token",
            params={
                "grant_type": "client_credential",
                "appid": "ww00000000000000c1",
                "secret": "HR" + "0" * 30,
            },
        )
        assert answer.json()["errcode"] == 40013

    async def test_agent_config_signature(self, corp: World) -> None:
        """agent: true signs wx.agentConfig with the agent_config ticket, naming corp and agent."""
        await corp.fetch_all()
        answer = await corp.admin.post(
            "/v1/apps/hr/jssdk-signature", json={"url": "https://hr.example.com/", "agent": True}
        )
        fields = answer.json()
        assert fields["corpid"] == "ww00000000000000c1"
        assert fields["agentid"] == 1000002
        ticket = (corp.tmp_path / "tokens" / "hr.agent_config_ticket").read_text()
        assert fields["signature"] == signature(
            ticket=ticket,
            nonce=fields["nonceStr"],
            timestamp=fields["timestamp"],
            url="https://hr.example.com/",
        )


async def keep_token_fresh(world: World) -> int:
    """Run the token's own refresh when due (the virtual clock jumps hours); 1 if it ran."""
    token = world.daemon.refreshers["shop"]
    if world.clock.now() >= token.next_at:
        await token.step()
        return 1
    return 0


@pytest.mark.anyio
class TestReviewFixes:
    """Ticket and WeCom paths that once stormed WeChat or left stale state."""

    async def test_repeated_ticket_is_not_polled(self, shop: World) -> None:
        """A repeated ticket counts as valid for expires_in: one call per 75-85 % of it."""
        await shop.fetch_all()
        ticket = shop.daemon.tickets["shop"]["jsapi"]

        async def same_ticket(app: AppConfig, kind: Ticket, access_token: str) -> Any:
            from wxtokend.wechat import Token

            shop.ticketing.calls.append((shop.clock.now(), kind, access_token))
            return Token(access_token="SAME_TICKET", expires_in=7200, fetched_at=shop.clock.now())

        shop.ticketing.fetch_ticket = same_ticket  # type: ignore[method-assign]
        calls = len(shop.ticketing.calls)
        for _ in range(8):
            shop.clock.t = max(shop.clock.t, ticket.next_at)
            await keep_token_fresh(shop)
            await ticket.step()
        hours = (shop.clock.t - shop.ticketing.calls[calls][0]) / 3600
        assert len(shop.ticketing.calls) - calls == 8
        assert hours > 8 * 7200 * 0.75 / 3600 - 2  # each call waited most of a lifetime

    async def test_fresh_tokens_refused_stop_the_token_refreshes(self, shop: World) -> None:
        """A ticket endpoint refusing even new tokens: one token refresh, then 10-minute waits."""
        await shop.fetch_all()
        shop.ticketing.reject = 10_000
        ticket = shop.daemon.tickets["shop"]["jsapi"]
        token_calls = len(shop.wechat.calls)
        regular = 0
        for _ in range(20):
            shop.clock.t = max(shop.clock.t, ticket.next_at)
            regular += await keep_token_fresh(shop)
            await ticket.step()
        assert len(shop.wechat.calls) == token_calls + regular + 1  # one for the ticket
        assert ticket.last_error is not None
        assert "refuses even a fresh access_token" in str(ticket.last_error)
        assert ticket.next_at - shop.clock.now() >= 600
        assert shop.daemon.refreshers["shop"]._passive_today == []  # not the consumers' budget

    async def test_wecom_report_never_forces(self, corp: World) -> None:
        """WeCom has no force mode: a report makes one gettoken call at most, never a 'force'."""
        await corp.fetch_all()
        hr = corp.daemon.refreshers["hr"]
        assert hr.record is not None
        answer = await hr.report_rejected(token=hr.record.access_token)
        assert answer.result in ("newer", "refreshed")
        assert corp.wechat.forced == []

    async def test_corpid_is_not_an_app_key(self, corp: World) -> None:
        """A corpid names several applications, so it does not address one."""
        assert corp.daemon.find("ww00000000000000c1") is None
        assert corp.daemon.find("hr") is corp.daemon.refreshers["hr"]

    async def test_dropped_ticket_with_changed_secret(self, shop: World) -> None:
        """A reload that changes the secret and drops a ticket removes that ticket's files."""
        from dataclasses import replace

        await shop.fetch_all()
        tokens = shop.tmp_path / "tokens"
        assert (tokens / "shop.wx_card_ticket").exists()
        old = shop.daemon.config.apps[0]
        new = replace(old, secret=Secret("f" * 32), tickets=("jsapi",))
        await shop.daemon._apply(replace(shop.daemon.config, apps=(new,)))
        assert not (tokens / "shop.wx_card_ticket").exists()
        assert not (tokens / "shop.wx_card_ticket.json").exists()
        for task in shop.daemon._tasks.values():
            task.cancel()


class _Running:
    """A daemon of ``apps`` running in-process on the real clock, its JSON log captured."""

    def __init__(self, tmp_path: Path, apps: tuple[AppConfig, ...]) -> None:
        import io

        from wxtokend import logs
        from wxtokend.clock import SystemClock

        self.log = io.StringIO()
        logs.configure(level="debug", stream=self.log, json=True)
        clock = SystemClock()
        self.wechat = ScriptedWeChat(clock)  # type: ignore[arg-type]
        self.ticketing = ScriptedTickets(clock, self.wechat)  # type: ignore[arg-type]
        config = daemon_config(tmp_path, apps)
        self.daemon = Daemon(config, source=Upstream(self.wechat, self.ticketing))
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.daemon.run(self.stop))

    async def until(self, done: Any, what: str) -> None:
        for _ in range(500):
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    async def close(self) -> None:
        self.stop.set()
        await self.task

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.mark.anyio
class TestColdStart:
    """A ticket loop waits for its app's first token instead of failing without it."""

    async def test_no_warning_and_ticket_right_after_token(self, tmp_path: Path) -> None:
        """A cold start logs no warning and fetches each ticket once, with the first token."""
        running = _Running(tmp_path, (official("shop", 1, ("jsapi", "wx_card")),))
        ticket = running.daemon.tickets["shop"]["jsapi"]
        await running.until(lambda: running.daemon.readiness() == {}, "the tickets")
        await running.close()
        token = running.daemon.refreshers["shop"].record
        assert token is not None
        assert len(running.wechat.calls) == 1
        assert sorted((k, t) for _, k, t in running.ticketing.calls) == [
            ("jsapi", token.access_token),
            ("wx_card", token.access_token),
        ]
        assert (ticket.failures, ticket.last_error, ticket.waiting_for_token) == (0, None, False)
        levels = [e["level"] for e in running.events()]
        assert "warning" not in levels
        assert "error" not in levels
        metrics = running.daemon.metrics.render().decode()
        assert 'outcome="transient"' not in metrics

    async def test_token_failing_for_good(self, tmp_path: Path) -> None:
        """A token that keeps failing leaves the ticket waiting, saying so, with no calls."""
        from wxtokend.errors import FatalConfigError

        running = _Running(tmp_path, (official("shop", 1, ("jsapi",)),))
        running.wechat.failures = {
            n: FatalConfigError("errcode 40125 (invalid AppSecret)", errcode=40125)
            for n in range(1, 10)
        }
        ticket = running.daemon.tickets["shop"]["jsapi"]
        await running.until(lambda: running.wechat.calls and ticket.waiting_for_token, "a wait")
        for _ in range(20):
            await asyncio.sleep(0.01)
        status = ticket.status()
        readiness = running.daemon.readiness()
        await running.close()
        assert len(running.wechat.calls) == 1  # the token's next try is 10 min away
        assert running.ticketing.calls == []
        assert ticket.failures == 0
        assert status.state == "pending"
        assert (
            status.last_error == "waiting for the access_token: errcode 40125 (invalid AppSecret)"
        )
        assert readiness == {"shop": "errcode 40125 (invalid AppSecret)"}


@pytest.mark.anyio
class TestLogLines:
    """The daemon's log lines say what they hold."""

    async def test_started_counts_apps_and_tickets(self, tmp_path: Path) -> None:
        """The start line counts apps, and tickets separately."""
        apps = (official("shop", 1, ("jsapi",)), official("mini", 2, ()))
        running = _Running(tmp_path, apps)
        await running.until(lambda: running.daemon.readiness() == {}, "the tokens")
        await running.close()
        started = next(e for e in running.events() if e["event"] == "started")
        assert (started["apps"], started["tickets"]) == (2, 1)

    async def test_refresh_lines_name_the_fingerprint(self, tmp_path: Path) -> None:
        """Refresh lines carry the token's fingerprint as fingerprint, nothing called token."""
        from wxtokend.redact import fingerprint

        running = _Running(tmp_path, (official("shop", 1, ()),))
        await running.until(lambda: running.daemon.readiness() == {}, "the token")
        await running.close()
        refresh = next(e for e in running.events() if e["event"] == "refresh")
        token = running.daemon.refreshers["shop"].record
        assert token is not None
        assert refresh["fingerprint"] == fingerprint(token.access_token)
        assert "token" not in refresh
