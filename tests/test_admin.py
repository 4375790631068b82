"""The admin API in-process: health, readiness, metrics, status, passive refresh, SDK."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import ScriptedWeChat, VirtualClock, daemon_config

from wxtokend.admin import admin_app, probe_app
from wxtokend.config import AppConfig, Grant
from wxtokend.daemon import Daemon
from wxtokend.redact import Secret, fingerprint

SHOP_SECRET = "SHOPSECRET0123456789abcdef012345"
MINI_SECRET = "MINISECRET0123456789abcdef012345"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_app(name: str, grant: Grant, n: int, secret: str) -> AppConfig:
    return AppConfig(
        appid=f"wx{n:016x}",
        name=name,
        grant=grant,
        secret=Secret(secret),
        secret_source=f"secret_file /etc/wxtokend/secrets/{name}",
    )


SHOP = make_app("shop", "classic", 1, SHOP_SECRET)
MINI = make_app("mini", "stable", 2, MINI_SECRET)


class World:
    """A daemon on a virtual clock with a scripted WeChat, and clients for both apps."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = VirtualClock()
        self.wechat = ScriptedWeChat(self.clock)
        config = daemon_config(tmp_path, (SHOP, MINI))
        self.daemon = Daemon(config, source=self.wechat, clock=self.clock)
        self.daemon.start()
        self.admin = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=admin_app(self.daemon)), base_url="http://admin"
        )
        self.probe = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=probe_app(self.daemon)), base_url="http://probe"
        )

    async def fetch_all(self) -> None:
        for refresher in self.daemon.refreshers.values():
            assert await refresher.refresh()

    def token_expiry(self, name: str) -> float:
        record = self.daemon.refreshers[name].record
        assert record is not None
        return record.expires_at

    def token(self, name: str) -> str:
        record = self.daemon.refreshers[name].record
        assert record is not None
        return record.access_token


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    yield w
    await w.admin.aclose()
    await w.probe.aclose()


@pytest.mark.anyio
class TestProbes:
    """Health, readiness and metrics, on both listeners."""

    async def test_ready_only_when_every_app_has_a_token(self, world: World) -> None:
        """readyz is 503 naming the apps without a token, then 200 once all have one."""
        answer = await world.probe.get("/readyz")
        assert answer.status_code == 503
        assert set(answer.json()["apps"]) == {"shop", "mini"}
        await world.daemon.refreshers["shop"].refresh()
        assert set((await world.probe.get("/readyz")).json()["apps"]) == {"mini"}
        await world.fetch_all()
        answer = await world.probe.get("/readyz")
        assert (answer.status_code, answer.json()) == (200, {"status": "ready", "apps": 2})

    async def test_expired_token_is_not_ready(self, world: World) -> None:
        """An expired token makes readyz 503 again."""
        await world.fetch_all()
        world.clock.t += 7201
        assert (await world.probe.get("/readyz")).status_code == 503

    async def test_healthz_fails_for_a_stuck_fetch(self, world: World) -> None:
        """A fetch hanging far beyond its timeout makes healthz 503 with the reason."""
        world.daemon._tasks["shop"] = asyncio.create_task(asyncio.sleep(3600))
        world.wechat.gate = asyncio.Event()
        hung = asyncio.create_task(world.daemon.refreshers["shop"].refresh())
        await asyncio.sleep(0)
        assert (await world.probe.get("/healthz")).status_code == 200
        world.clock.t += 500
        answer = await world.probe.get("/healthz")
        assert answer.status_code == 503
        assert "shop: a fetch has been running for 500 s" in answer.json()["problems"]
        world.wechat.gate.set()
        await hung
        world.daemon._tasks["shop"].cancel()

    async def test_healthz_fails_for_a_dead_loop(self, world: World) -> None:
        """A refresh loop that ended makes healthz 503."""
        done = asyncio.create_task(asyncio.sleep(0))
        await done
        world.daemon._tasks["mini"] = done
        answer = await world.probe.get("/healthz")
        assert answer.status_code == 503
        assert answer.json()["problems"] == ["mini: its refresh loop has stopped"]

    async def test_metrics_have_conventional_names_and_no_secrets(self, world: World) -> None:
        """/metrics exposes the documented series and never a token or secret."""
        await world.fetch_all()
        await world.admin.post("/v1/apps/shop/refresh", json={"access_token": "old-one"})
        text = (await world.probe.get("/metrics")).text
        for name in (
            "wxtokend_refresh_total",
            "wxtokend_token_expiry_timestamp_seconds",
            "wxtokend_last_success_timestamp_seconds",
            "wxtokend_consecutive_failures",
            "wxtokend_file_write_errors_total",
            "wxtokend_passive_refresh_total",
            "wxtokend_apps_ready",
        ):
            assert name in text
        assert (
            'wxtokend_refresh_total{app="shop",errcode="0",grant="classic",outcome="ok"} 1.0'
            in text
        )
        assert 'wxtokend_passive_refresh_total{app="shop",result="newer"} 1.0' in text
        for secret in (world.token("shop"), world.token("mini"), SHOP_SECRET, MINI_SECRET):
            assert secret not in text
        assert fingerprint(world.token("shop")) not in text

    async def test_probe_listener_serves_no_api(self, world: World) -> None:
        """The probe app has no status, refresh or SDK endpoints."""
        for path in ("/v1/apps", "/cgi-bin/token"):
            assert (await world.probe.get(path)).status_code == 404


@pytest.mark.anyio
class TestStatus:
    """/v1/apps shows each app's state with fingerprints, never tokens."""

    async def test_apps_listing(self, world: World) -> None:
        """Every app with its state, fingerprint and expiry; no token value anywhere."""
        await world.daemon.refreshers["shop"].refresh()
        answer = await world.admin.get("/v1/apps")
        apps = {a["name"]: a for a in answer.json()["apps"]}
        assert apps["shop"]["state"] == "ok"
        assert apps["shop"]["fingerprint"] == fingerprint(world.token("shop"))
        assert apps["shop"]["expires_in"] == 7200
        assert apps["mini"]["state"] == "pending"
        assert world.token("shop") not in answer.text

    async def test_one_app_by_name_or_appid(self, world: World) -> None:
        """An app can be addressed by name or appid; an unknown one is a 404 listing names."""
        assert (await world.admin.get("/v1/apps/shop")).json()["appid"] == SHOP.appid
        assert (await world.admin.get(f"/v1/apps/{SHOP.appid}")).json()["name"] == "shop"
        missing = await world.admin.get("/v1/apps/nope")
        assert missing.status_code == 404
        assert missing.json()["apps"] == ["mini", "shop"]


@pytest.mark.anyio
class TestPassiveRefresh:
    """POST /v1/apps/{name}/refresh: compare-and-refresh."""

    async def test_current_token_is_refreshed_once(self, world: World) -> None:
        """Reporting the current token replaces it with one upstream call."""
        await world.fetch_all()
        stale, calls = world.token("shop"), len(world.wechat.calls)
        answer = await world.admin.post("/v1/apps/shop/refresh", json={"access_token": stale})
        assert answer.status_code == 200
        body = answer.json()
        assert body["result"] == "refreshed"
        assert len(world.wechat.calls) == calls + 1
        assert world.token("shop") != stale
        assert body["app"]["fingerprint"] == fingerprint(world.token("shop"))
        assert stale not in answer.text
        assert world.token("shop") not in answer.text

    async def test_older_token_answers_at_once(self, world: World) -> None:
        """Reporting a token that is no longer current costs nothing and names the newer one."""
        await world.fetch_all()
        calls = len(world.wechat.calls)
        answer = await world.admin.post("/v1/apps/shop/refresh", json={"access_token": "OLDER"})
        assert (answer.status_code, answer.json()["result"]) == (200, "newer")
        assert answer.json()["app"]["expires_at"] is not None
        assert len(world.wechat.calls) == calls

    async def test_fingerprint_is_enough(self, world: World) -> None:
        """The report may carry the token's fingerprint instead of the token."""
        await world.fetch_all()
        fp = fingerprint(world.token("shop"))
        answer = await world.admin.post("/v1/apps/shop/refresh", json={"fingerprint": fp})
        assert answer.json()["result"] == "refreshed"

    async def test_storm_of_one_thousand_is_one_call(self, world: World) -> None:
        """1,000 concurrent reports of the same stale token: one upstream call, one answer."""
        await world.fetch_all()
        stale, calls = world.token("shop"), len(world.wechat.calls)
        world.wechat.gate = asyncio.Event()  # hold the fetch so every report arrives first
        reports = [
            asyncio.create_task(
                world.admin.post("/v1/apps/shop/refresh", json={"access_token": stale})
            )
            for _ in range(1000)
        ]
        await asyncio.sleep(0.2)
        world.wechat.gate.set()
        answers = await asyncio.gather(*reports)
        assert len(world.wechat.calls) == calls + 1
        results = {
            (a.status_code, a.json()["result"], a.json()["app"]["fingerprint"]) for a in answers
        }
        assert results == {(200, "refreshed", fingerprint(world.token("shop")))}

    async def test_rate_limited_per_app(self, world: World) -> None:
        """A second refresh on a report within passive_min_interval is refused with Retry-After."""
        await world.fetch_all()
        await world.admin.post("/v1/apps/shop/refresh", json={"access_token": world.token("shop")})
        world.clock.t += 3
        again = await world.admin.post(
            "/v1/apps/shop/refresh", json={"access_token": world.token("shop")}
        )
        assert again.status_code == 429
        assert again.json()["result"] == "rate_limited"
        assert again.headers["Retry-After"] == "7"
        world.clock.t += 8
        later = await world.admin.post(
            "/v1/apps/shop/refresh", json={"access_token": world.token("shop")}
        )
        assert later.json()["result"] == "refreshed"

    async def test_stable_same_token_forces(self, world: World) -> None:
        """Stable: when normal mode returns the rejected token, force_refresh replaces it."""
        await world.fetch_all()
        stale = world.token("mini")
        answer = await world.admin.post("/v1/apps/mini/refresh", json={"access_token": stale})
        assert answer.json()["result"] == "refreshed"
        assert len(world.wechat.forced) == 1
        assert world.token("mini") != stale

    async def test_stable_force_budget(self, world: World) -> None:
        """Force refreshes keep WeChat's budget: 30 s apart and 20 a day, then a clear 429."""
        await world.fetch_all()
        results = []
        for _ in range(22):
            answer = await world.admin.post(
                "/v1/apps/mini/refresh", json={"access_token": world.token("mini")}
            )
            results.append(answer.json()["result"])
            world.clock.t += 31
        assert results[:20] == ["refreshed"] * 20
        assert results[20:] == ["force_budget_spent"] * 2
        assert len(world.wechat.forced) == 20
        spent = await world.admin.post(
            "/v1/apps/mini/refresh", json={"access_token": world.token("mini")}
        )
        assert spent.status_code == 429
        assert "20 force refreshes a day" in spent.json()["detail"]

    async def test_stable_force_interval(self, world: World) -> None:
        """Two forces less than 30 s apart: the second waits, with Retry-After."""
        await world.fetch_all()
        world.daemon.refreshers["mini"]._passive_min_interval = 1
        first = await world.admin.post(
            "/v1/apps/mini/refresh", json={"access_token": world.token("mini")}
        )
        world.clock.t += 5
        second = await world.admin.post(
            "/v1/apps/mini/refresh", json={"access_token": world.token("mini")}
        )
        assert first.json()["result"] == "refreshed"
        assert second.json()["result"] == "force_budget_spent"
        assert second.json()["retry_after"] == 25.0

    async def test_failure_is_reported(self, world: World) -> None:
        """An upstream failure answers 502 with the error, and the old token stays."""
        from wxtokend.errors import TransientError

        await world.fetch_all()
        stale = world.token("shop")
        world.wechat.failures[len(world.wechat.calls) + 1] = TransientError("HTTP 502 from WeChat")
        answer = await world.admin.post("/v1/apps/shop/refresh", json={"access_token": stale})
        assert answer.status_code == 502
        assert answer.json()["result"] == "failed"
        assert "HTTP 502" in answer.json()["detail"]
        assert world.token("shop") == stale

    @pytest.mark.parametrize(
        "body",
        [b"", b"not json", b"[]", b'{"access_token": ""}', b'{"fingerprint": "abc"}', b"{}"],
    )
    async def test_bad_body(self, world: World, body: bytes) -> None:
        """A report without a token or 8-digit fingerprint is a 400 that says what to send."""
        await world.fetch_all()
        answer = await world.admin.post("/v1/apps/shop/refresh", content=body)
        assert answer.status_code == 400
        assert "access_token" in answer.json()["error"]

    async def test_no_token_yet(self, world: World) -> None:
        """Before the first token a report answers 503: the first fetch is under way."""
        answer = await world.admin.post("/v1/apps/shop/refresh", json={"access_token": "x"})
        assert (answer.status_code, answer.json()["result"]) == (503, "no_token")


@pytest.mark.anyio
class TestSdkEndpoints:
    """/cgi-bin/token and /cgi-bin/stable_token, called the way SDKs call WeChat."""

    async def test_classic_get_returns_managed_token(self, world: World) -> None:
        """WxJava-style GET gets the managed token and its real remaining lifetime."""
        await world.fetch_all()
        world.clock.t += 100
        calls = len(world.wechat.calls)
        answer = await world.admin.get(
            "/cgi-bin/token",
            params={"grant_type": "client_credential", "appid": SHOP.appid, "secret": SHOP_SECRET},
        )
        # Cached no longer than the old token survives the next refresh (+240 s of
        # WeChat's ~300 s overlap), not the full 7,100 s left.
        expected = int(world.daemon.refreshers["shop"].next_at - world.clock.now() + 240)
        assert answer.json() == {"access_token": world.token("shop"), "expires_in": expected}
        assert expected < 7100
        assert len(world.wechat.calls) == calls  # never a new classic fetch

    async def test_stable_post_returns_managed_token(self, world: World) -> None:
        """The stable endpoint answers with the same managed token."""
        await world.fetch_all()
        answer = await world.admin.post(
            "/cgi-bin/stable_token",
            json={"grant_type": "client_credential", "appid": MINI.appid, "secret": MINI_SECRET},
        )
        assert answer.json() == {"access_token": world.token("mini"), "expires_in": 7200}

    @pytest.mark.parametrize(
        ("params", "errcode"),
        [
            ({"grant_type": "client_credential", "appid": "wxunknown", "secret": "x"}, 40013),
            ({"grant_type": "client_credential", "appid": SHOP.appid, "secret": "wrong"}, 40125),
            (
                {
                    "grant_type": "client_credential",
                    "appid": SHOP.appid,
                    "secret": SHOP_SECRET[:-1],
                },
                40125,
            ),
            ({"grant_type": "client_credential", "secret": "x"}, 41002),
            ({"grant_type": "client_credential", "appid": SHOP.appid}, 41004),
            ({"grant_type": "password", "appid": SHOP.appid, "secret": SHOP_SECRET}, 40002),
        ],
    )
    async def test_wechat_errcodes(
        self, world: World, params: dict[str, str], errcode: int
    ) -> None:
        """Bad requests get WeChat's own errcodes, never the token."""
        await world.fetch_all()
        answer = await world.admin.get("/cgi-bin/token", params=params)
        assert answer.json()["errcode"] == errcode
        assert "access_token" not in answer.json()

    async def test_wrong_methods_and_bodies(self, world: World) -> None:
        """POST to the classic path and GET to the stable one are 43002; non-JSON is 47001."""
        assert (await world.admin.post("/cgi-bin/token")).json()["errcode"] == 43002
        assert (await world.admin.get("/cgi-bin/stable_token")).json()["errcode"] == 43002
        bad = await world.admin.post("/cgi-bin/stable_token", content=b"appid=x")
        assert bad.json()["errcode"] == 47001

    async def test_no_token_yet_is_system_busy(self, world: World) -> None:
        """Before the first token, SDKs get -1 (system busy), which they retry."""
        answer = await world.admin.get(
            "/cgi-bin/token",
            params={"grant_type": "client_credential", "appid": SHOP.appid, "secret": SHOP_SECRET},
        )
        assert answer.json()["errcode"] == -1

    @pytest.mark.parametrize(
        "change",
        [{"access_token": "evil token\nwith newline"}, {"expires_at": 10**15}],
    )
    async def test_invalid_token_never_handed_out(
        self, world: World, change: dict[str, Any]
    ) -> None:
        """A token failing the one check (a bug upstream) gets -1, never reaches an SDK."""
        await world.fetch_all()
        for refresher in world.daemon.refreshers.values():
            assert refresher.record is not None
            refresher.record = dataclasses.replace(refresher.record, **change)
        params = {"grant_type": "client_credential", "appid": SHOP.appid, "secret": SHOP_SECRET}
        answer = (await world.admin.get("/cgi-bin/token", params=params)).json()
        assert answer["errcode"] == -1
        assert "access_token" not in answer

    async def test_force_refresh_is_debounced(self, world: World) -> None:
        """Classic force_refresh: a brand-new token is returned; an older one refreshed once."""
        await world.fetch_all()
        params = {"grant_type": "client_credential", "appid": SHOP.appid, "secret": SHOP_SECRET}
        body = {**params, "force_refresh": True}
        calls = len(world.wechat.calls)
        fresh = await world.admin.post("/cgi-bin/stable_token", json=body)
        assert len(world.wechat.calls) == calls
        assert fresh.json()["access_token"] == world.token("shop")
        world.clock.t += 60
        stale = world.token("shop")
        answers = await asyncio.gather(
            *(world.admin.post("/cgi-bin/stable_token", json=body) for _ in range(50))
        )
        assert world.token("shop") != stale
        assert {a.json()["access_token"] for a in answers} == {world.token("shop")}
        assert len(world.wechat.calls) == calls + 1

    async def test_sdk_force_never_spends_the_stable_force_budget(self, world: World) -> None:
        """Stable force_refresh from SDKs makes a normal-mode call at most, never a force."""
        await world.fetch_all()
        body = {
            "grant_type": "client_credential",
            "appid": MINI.appid,
            "secret": MINI_SECRET,
            "force_refresh": True,
        }
        for _ in range(25):
            world.clock.t += 31
            answer = await world.admin.post("/cgi-bin/stable_token", json=body)
            assert answer.json()["access_token"] == world.token("mini")
        assert world.wechat.forced == []


@pytest.mark.anyio
class TestRaces:
    """Passive refresh, the regular loop and reloads never step on each other."""

    async def test_loop_does_not_refetch_after_a_passive_refresh(self, world: World) -> None:
        """A loop that woke while a passive refresh held the lock re-plans instead of fetching."""
        await world.fetch_all()
        shop = world.daemon.refreshers["shop"]
        world.clock.t = shop.next_at - 1  # the regular refresh is one second away
        world.wechat.gate = asyncio.Event()
        report = asyncio.create_task(
            world.admin.post("/v1/apps/shop/refresh", json={"access_token": world.token("shop")})
        )
        await asyncio.sleep(0.05)  # the passive fetch now holds the lock, waiting upstream
        loop = asyncio.create_task(shop.run())  # wakes at the old refresh point, waits for lock
        await asyncio.sleep(0.05)
        passive_at = world.clock.now()
        world.wechat.gate.set()
        assert (await report).json()["result"] == "refreshed"
        for _ in range(50):
            await asyncio.sleep(0)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
        later = [t for t in world.wechat.calls if t > passive_at]
        assert all(t >= passive_at + 0.75 * 7200 for t in later), later

    async def test_removed_app_is_not_rewritten_by_a_passive_refresh(
        self, world: World, tmp_path: Path
    ) -> None:
        """A reload removing an app while its passive fetch is in flight leaves no files."""
        await world.fetch_all()
        world.wechat.gate = asyncio.Event()
        report = asyncio.create_task(
            world.admin.post("/v1/apps/shop/refresh", json={"access_token": world.token("shop")})
        )
        await asyncio.sleep(0.05)
        removal = asyncio.create_task(world.daemon._remove("shop", delete_files=True))
        await asyncio.sleep(0.05)
        world.wechat.gate.set()
        await asyncio.gather(report, removal)
        assert not (tmp_path / "tokens" / "shop").exists()
        assert not (tmp_path / "tokens" / "shop.json").exists()

    async def test_appid_swap_keeps_both_lookups(self, world: World) -> None:
        """A reload that swaps two apps' appids leaves both reachable by appid."""
        from dataclasses import replace

        await world.fetch_all()
        swapped = replace(
            world.daemon.config,
            apps=(replace(SHOP, appid=MINI.appid), replace(MINI, appid=SHOP.appid)),
        )
        await world.daemon._apply(swapped)
        assert world.daemon.find_appid(SHOP.appid) is world.daemon.refreshers["mini"]
        assert world.daemon.find_appid(MINI.appid) is world.daemon.refreshers["shop"]
        for task in world.daemon._tasks.values():
            task.cancel()


@pytest.mark.anyio
class TestPassiveLimits:
    """Reports can never break a wait WeChat imposed, nor drain the quota."""

    async def test_no_call_during_a_daily_quota_wait(self, world: World) -> None:
        """While 45009 holds an app until the reset, reports answer without calling WeChat."""
        from wxtokend.errors import DailyQuotaError

        await world.fetch_all()
        world.clock.t += 6000
        world.wechat.failures[len(world.wechat.calls) + 1] = DailyQuotaError("45009", errcode=45009)
        await world.daemon.refreshers["shop"].refresh()
        calls = len(world.wechat.calls)
        for _ in range(5):
            world.clock.t += 60
            answer = await world.admin.post(
                "/v1/apps/shop/refresh", json={"access_token": world.token("shop")}
            )
            assert answer.json()["result"] == "failed"
            assert answer.json()["retry_after"] > 0
        assert len(world.wechat.calls) == calls

    async def test_daily_cap(self, world: World) -> None:
        """After passive_daily_limit refreshes on reports, further reports wait for the reset."""
        await world.fetch_all()
        shop = world.daemon.refreshers["shop"]
        shop._passive_daily_limit = 3
        results = []
        for _ in range(5):
            world.clock.t += 11
            answer = await world.admin.post(
                "/v1/apps/shop/refresh", json={"access_token": world.token("shop")}
            )
            results.append(answer.json()["result"])
        assert results == ["refreshed"] * 3 + ["rate_limited"] * 2

    async def test_force_45009_does_not_block_regular_refreshes(self, world: World) -> None:
        """WeChat refusing a force (45009) answers force_budget_spent and keeps the schedule."""
        from wxtokend.errors import DailyQuotaError

        await world.fetch_all()
        mini = world.daemon.refreshers["mini"]
        # call 1: normal mode (same token); call 2: the force, refused by WeChat
        world.wechat.failures[len(world.wechat.calls) + 2] = DailyQuotaError("45009", errcode=45009)
        answer = await world.admin.post(
            "/v1/apps/mini/refresh", json={"access_token": world.token("mini")}
        )
        assert answer.json()["result"] == "force_budget_spent"
        assert mini.last_error is None
        # the regular refresh stays planned within the token's life, not at the quota reset
        assert mini.next_at < world.token_expiry("mini")

    async def test_waiting_for_a_semaphore_slot_is_not_stuck(self, world: World) -> None:
        """Apps queued behind a full semaphore are not reported as hung fetches."""
        shop = world.daemon.refreshers["shop"]
        world.daemon._semaphore = asyncio.Semaphore(0)
        shop._semaphore = world.daemon._semaphore
        queued = asyncio.create_task(shop.refresh())
        await asyncio.sleep(0.01)
        world.clock.t += 1000
        assert shop.stuck(fetch_limit=10) is None
        queued.cancel()


SDK_PARAMS = {"grant_type": "client_credential", "appid": SHOP.appid, "secret": SHOP_SECRET}


def count_comparisons(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every secret the SDK endpoints compare from now on, in order."""
    from wxtokend import sdk

    compared: list[str] = []
    real = sdk._secret_matches

    def counting(given: str, expected: str) -> bool:
        compared.append(given)
        return real(given, expected)

    monkeypatch.setattr(sdk, "_secret_matches", counting)
    return compared


@pytest.mark.anyio
class TestHostileBodies:
    """Bodies that are too big or not what an endpoint takes: 413 or 400 with a reason."""

    @pytest.mark.parametrize(
        ("body", "says"),
        [
            (b"", "body is not JSON"),
            (b"{", "body is not JSON"),
            (b'{"access_token": "\xff\xfe"}', "body is not UTF-8"),
            (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
            (b'{"fingerprint": ' + b"9" * 5000 + b"}", "body is not JSON"),
            (b'{"access_token": NaN}', "NaN is not a JSON number"),
            (b"[]", "JSON list, not an object"),
            (b'"x"', "JSON str, not an object"),
            (b'{"access_token": 5}', 'send JSON {"access_token"'),
            (b'{"fingerprint": ["1a2b3c4d"]}', 'send JSON {"access_token"'),
            (b'{"access_token": 1e999}', 'send JSON {"access_token"'),
        ],
    )
    async def test_refresh_bad_bodies(self, world: World, body: bytes, says: str) -> None:
        """Each malformed report is a 400 naming what is wrong and how to send it."""
        answer = await world.admin.post("/v1/apps/shop/refresh", content=body)
        assert answer.status_code == 400
        assert says in answer.json()["error"]

    async def test_signature_bad_body(self, world: World) -> None:
        """The signing endpoint parses with the same validator."""
        answer = await world.admin.post("/v1/apps/shop/jssdk-signature", content=b"\xff")
        assert answer.status_code == 400
        assert answer.json()["error"].startswith("body is not UTF-8")

    @pytest.mark.parametrize(
        ("path", "limit"),
        [("/v1/apps/shop/refresh", 16 * 1024), ("/cgi-bin/stable_token", 4 * 1024)],
    )
    async def test_over_the_limit_is_413(self, world: World, path: str, limit: int) -> None:
        """One byte over the endpoint's limit is 413; at the limit it is parsed."""
        padding = b'{"x": "' + b"a" * (limit - 9) + b'"}'
        assert len(padding) == limit
        assert (await world.admin.post(path, content=padding)).status_code != 413
        answer = await world.admin.post(path, content=padding + b" ")
        assert answer.status_code == 413
        assert answer.json() == {"error": f"request body over {limit} bytes"}

    async def test_chunked_over_the_limit_is_413(self, world: World) -> None:
        """A body without Content-Length is counted as it arrives and cut off."""

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(40):
                yield b"a" * 1024

        answer = await world.admin.post("/v1/apps/shop/refresh", content=chunks())
        assert answer.status_code == 413

    @pytest.mark.parametrize(
        "body",
        [
            {**SDK_PARAMS, "appid": ["x"]},
            {**SDK_PARAMS, "secret": 12345},
            {**SDK_PARAMS, "grant_type": None},
        ],
    )
    async def test_stable_token_wrong_types(self, world: World, body: dict[str, object]) -> None:
        """Non-string fields are WeChat's 47001, never stringified into a lookup."""
        await world.fetch_all()
        answer = await world.admin.post("/cgi-bin/stable_token", json=body)
        assert answer.json() == {"errcode": 47001, "errmsg": "data format error"}

    async def test_lone_surrogate_secret(self, world: World) -> None:
        """A secret JSON can carry but UTF-8 cannot is a wrong secret, not a 500."""
        body = b'{"grant_type": "client_credential", "appid": "%s", "secret": "\\ud800"}'
        answer = await world.admin.post("/cgi-bin/stable_token", content=body % SHOP.appid.encode())
        assert answer.json()["errcode"] == 40125


@pytest.mark.anyio
class TestHostilePaths:
    """App names with path characters and unknown paths: JSON 404s, nothing else."""

    @pytest.mark.parametrize(
        "name",
        [
            "..%2F..",
            "..%2F..%2Fsecrets%2Fshop",
            "%00",
            "shop%00",
            "a" * 5000,
            "%E5%BA%97",
            "%2e%2e",
        ],
    )
    @pytest.mark.parametrize("suffix", ["", "/refresh"])
    async def test_names_are_unknown_apps(self, world: World, name: str, suffix: str) -> None:
        """Each is 404 'no app named ...' with the app list, the name cut to 64 characters."""
        send = world.admin.get if not suffix else world.admin.post
        answer = await send(f"/v1/apps/{name}{suffix}")
        assert answer.status_code == 404
        body = answer.json()
        assert body["error"].startswith("no app named ")
        assert len(body["error"]) < 100
        assert body["apps"] == ["mini", "shop"]

    async def test_unknown_paths_and_methods_are_json(self, world: World) -> None:
        """Unknown paths are a JSON 404 listing the endpoints; a wrong method a JSON 405."""
        missing = await world.admin.get("/etc/passwd")
        assert missing.status_code == 404
        assert "use /healthz" in missing.json()["error"]
        wrong = await world.admin.delete("/v1/apps")
        assert wrong.status_code == 405
        assert "Method Not Allowed" in wrong.json()["error"]

    @pytest.mark.parametrize("path", ["/", "/v1/apps", "/v1/apps/shop", "/cgi-bin/token"])
    async def test_probe_listener_has_only_probes(self, world: World, path: str) -> None:
        """On the probe listener every other path is a JSON 404 naming the three it serves."""
        answer = await world.probe.get(path)
        assert answer.status_code == 404
        assert "serves only /healthz, /readyz, /metrics" in answer.json()["error"]

    async def test_probe_listener_bodies_are_guarded(self, world: World) -> None:
        """The same body guard stands in front of the probe listener."""
        answer = await world.probe.post("/healthz", content=b"a" * (16 * 1024 + 1))
        assert answer.status_code == 413


@pytest.mark.anyio
class TestBruteForce:
    """Wrong SDK credentials are limited per client; a wrong secret costs one comparison."""

    def client(self, world: World, host: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=admin_app(world.daemon), client=(host, 1234))
        return httpx.AsyncClient(transport=transport, base_url="http://admin")

    async def test_limit_then_45011_until_a_minute_passed(self, world: World) -> None:
        """After 10 wrong secrets a client gets 45011 with Retry-After, even with the right one."""
        await world.fetch_all()
        wrong = {**SDK_PARAMS, "secret": "guess"}
        admin = world.admin  # one app instance: one limiter
        codes = [(await admin.get("/cgi-bin/token", params=wrong)).json()["errcode"]]
        codes += [
            (await admin.post("/cgi-bin/stable_token", json={**wrong, "appid": f"wx{n}"})).json()[
                "errcode"
            ]
            for n in range(9)
        ]
        assert codes == [40125] + [40013] * 9
        blocked = await admin.get("/cgi-bin/token", params=SDK_PARAMS)
        assert blocked.json()["errcode"] == 45011
        assert blocked.headers["Retry-After"] == "60"
        world.clock.t += 30
        blocked = await admin.post("/cgi-bin/stable_token", json=SDK_PARAMS)
        assert blocked.json()["errcode"] == 45011
        assert blocked.headers["Retry-After"] == "30"
        world.clock.t += 30
        answer = await admin.get("/cgi-bin/token", params=SDK_PARAMS)
        assert answer.json()["access_token"] == world.token("shop")

    async def test_other_clients_unaffected(self, world: World) -> None:
        """One peer's failures leave another peer's requests alone."""
        await world.fetch_all()
        app = admin_app(world.daemon)
        clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=(host, 1)), base_url="http://a"
            )
            for host in ("10.0.0.1", "10.0.0.2")
        ]
        attacker, other = clients
        for _ in range(12):
            await attacker.get("/cgi-bin/token", params={**SDK_PARAMS, "secret": "guess"})
        assert (await attacker.get("/cgi-bin/token", params=SDK_PARAMS)).json()["errcode"] == 45011
        answer = await other.get("/cgi-bin/token", params=SDK_PARAMS)
        assert answer.json()["access_token"] == world.token("shop")
        for client in clients:
            await client.aclose()

    async def test_successes_and_other_errors_are_not_counted(self, world: World) -> None:
        """Right secrets, missing fields and bad bodies never use up the allowance."""
        await world.fetch_all()
        for _ in range(15):
            await world.admin.get("/cgi-bin/token", params=SDK_PARAMS)
            await world.admin.get("/cgi-bin/token", params={"grant_type": "client_credential"})
            await world.admin.post("/cgi-bin/stable_token", content=b"{")
        answer = await world.admin.get("/cgi-bin/token", params=SDK_PARAMS)
        assert answer.json()["access_token"] == world.token("shop")

    @pytest.mark.parametrize(
        ("appid", "errcode"), [(SHOP.appid, 40125), ("wx0000000000000bad", 40013)]
    )
    async def test_known_and_unknown_appid_cost_the_same(
        self, world: World, monkeypatch: pytest.MonkeyPatch, appid: str, errcode: int
    ) -> None:
        """A wrong secret is compared once whether or not the appid exists (a dummy if not)."""
        compared = count_comparisons(monkeypatch)
        answer = await world.admin.get(
            "/cgi-bin/token", params={**SDK_PARAMS, "appid": appid, "secret": "guess"}
        )
        assert answer.json()["errcode"] == errcode
        assert compared == ["guess"]

    async def test_wecom_gettoken_is_limited_too(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Unknown corpids count as failures, each compared once against a dummy secret."""
        compared = count_comparisons(monkeypatch)
        params = {"corpid": "ww0000000000000bad", "corpsecret": "guess"}
        codes = [
            (await world.admin.get("/cgi-bin/gettoken", params=params)).json()["errcode"]
            for _ in range(11)
        ]
        assert codes == [40013] * 10 + [45011]
        assert compared == ["guess"] * 10
