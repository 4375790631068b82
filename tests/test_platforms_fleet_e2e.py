"""A platform in fleet mode: three real daemons, one emulator, one real redis-server.

WeChat pushes the ticket to one instance only; every authorizer is refreshed
once per lifetime fleet-wide (a rotated-out refresh token dies at once here, so a
second refresh with the same grant would show as 61023), and every instance's
files stay valid, accounts authorized on another instance included.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, EmulatorProcess, RedisServer, free_port, wait_for
from test_platforms_e2e import AGENCY, COMPONENT, PREAUTHORIZED

pytestmark = pytest.mark.e2e

LIFETIME = 6  # the authorizer token's, in the emulator's compressed time


def _emulator(emulator: EmulatorFactory, push_to: int, lifetime: int = LIFETIME) -> EmulatorProcess:
    platform = {
        "component_appid": COMPONENT,
        "component_appsecret": AGENCY.secret,
        "token": AGENCY.crypto_token,
        "encoding_aes_key": AGENCY.aes_key,
        "callback_url": f"http://127.0.0.1:{push_to}/callback/agency",
        "ticket_push_interval": 2.0,
        "component_token_lifetime": 10,
        "authorizer_token_lifetime": lifetime,
        "authorizers": len(PREAUTHORIZED),
        "refresh_grace": 0.0,
    }
    return emulator([], grace=4, platforms=[platform])  # old tokens live 4 s: WeChat's 5 min


def _member(
    daemon: DaemonFactory,
    emu: EmulatorProcess,
    redis: RedisServer,
    tmp_path: Path,
    i: int,
    port: int,
) -> DaemonProcess:
    return daemon(
        [],
        emu.base_url,
        state_dir="state",
        callback={"listen": f"127.0.0.1:{port}"},
        retry={"min": "50ms", "max": "1s"},
        fleet={"redis": redis.url, "lock_ttl": 3, "reconcile_interval": 2},
        platforms=[AGENCY.entry(tmp_path / f"daemon{i}")],
    )


def _fleet(
    emulator: EmulatorFactory,
    daemon: DaemonFactory,
    redis: RedisServer,
    tmp_path: Path,
    *,
    lifetime: int,
) -> tuple[EmulatorProcess, list[DaemonProcess]]:
    """Three members started, each holding every token (WeChat knows one callback URL)."""
    ports = [free_port() for _ in range(3)]
    emu = _emulator(emulator, push_to=ports[0], lifetime=lifetime)
    fleet = [_member(daemon, emu, redis, tmp_path, i, ports[i]) for i in range(3)]
    for member in fleet:
        member.start()
    for member in fleet:  # the two never pushed to have the component token too
        AGENCY.wait_for_accounts(member, [*PREAUTHORIZED, "component_access_token"], timeout=30)
    return emu, fleet


def _stats(emu: EmulatorProcess) -> dict[str, Any]:
    return dict(emu.http.get("/emulator/platforms").json()["platforms"][COMPONENT])


class TestFleetOfThree:
    """Three instances refresh each authorizer as one daemon would."""

    def test_each_authorizer_once_per_lifetime(
        self,
        emulator: EmulatorFactory,
        daemon: DaemonFactory,
        redis_server: RedisServer,
        tmp_path: Path,
    ) -> None:
        emu, fleet = _fleet(emulator, daemon, redis_server, tmp_path, lifetime=LIFETIME)
        # An account authorizes: WeChat pushes the event to one instance, all get its token.
        new = emu.post(f"/emulator/platforms/{COMPONENT}/authorize", {})["authorizer_appid"]
        for member in fleet:
            wait_for(
                lambda m=member: AGENCY.token(m, new), timeout=20, what="the new account everywhere"
            )
        accounts = [*PREAUTHORIZED, new]
        before = _stats(emu)
        started = time.monotonic()
        invalid: list[str] = []
        while time.monotonic() - started < 3 * LIFETIME:
            for i, member in enumerate(fleet):
                for appid in accounts:
                    token = AGENCY.token(member, appid)
                    if token is None or emu.check(token) != 0:
                        invalid.append(f"daemon{i}/{appid}")
            time.sleep(0.25)
        lifetimes = (time.monotonic() - started) / LIFETIME
        after = _stats(emu)
        assert invalid == []
        for appid in accounts:
            refreshes = after["refreshes"].get(appid, 0) - before["refreshes"].get(appid, 0)
            # One daemon refreshes at 75-90 % of the lifetime: ~1.2 per lifetime; three
            # alone would make ~3.6 (and die of 61023 with this emulator's grace of 0).
            assert 1 <= refreshes <= 1.7 * lifetimes, (appid, refreshes, lifetimes)
        component_calls = (
            after["counts"]["api_component_token"] - before["counts"]["api_component_token"]
        )
        assert component_calls <= 1.7 * (3 * LIFETIME / 10), component_calls
        for member in fleet:
            with member.admin() as admin:
                summary = admin.get("/v1/platforms/agency").json()
                assert summary["authorizers"]["needs_authorization"] == 0, summary
                assert admin.get("/readyz").status_code == 200
            assert "61023" not in member.log_text()
            assert AGENCY.secret not in member.log_text()

    def test_an_unauthorized_account_is_known_on_every_instance(
        self,
        emulator: EmulatorFactory,
        daemon: DaemonFactory,
        redis_server: RedisServer,
        tmp_path: Path,
    ) -> None:
        """WeChat tells the instance behind the callback URL, which forgets the account;
        the fleet's record makes the others ask WeChat at once, and its refusal marks it
        there (no grant is deleted on a record's word)."""
        emu, fleet = _fleet(emulator, daemon, redis_server, tmp_path, lifetime=120)  # none due
        gone, kept = PREAUTHORIZED[0], PREAUTHORIZED[1]
        emu.post(f"/emulator/platforms/{COMPONENT}/unauthorize", {"authorizer_appid": gone})
        wait_for(
            lambda: AGENCY.token(fleet[0], gone) is None, timeout=10, what="the told one forgets"
        )
        for i, member in enumerate(fleet[1:], start=1):
            with member.admin() as admin:

                def marked(a: Any = admin) -> bool:
                    counts = a.get("/v1/platforms/agency").json()["authorizers"]
                    return bool(counts["needs_authorization"] == 1)

                # Far sooner than its next planned refresh (90 s or more from now).
                wait_for(marked, timeout=15, what=f"daemon{i} to mark it")
            assert AGENCY.token(member, kept) is not None
        # A restarted member asks again at its catch-up: still marked, nothing lost.
        fleet[2].stop()
        fleet[2].start()
        wait_for(
            lambda: fleet[2].log_text().count("needs re-authorization") >= 2,
            timeout=30,
            what="the restarted member to mark it again",
        )
        assert AGENCY.token(fleet[2], kept) is not None
