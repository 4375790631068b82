"""Tests of the WeChat emulator: the pure state with a fake clock, then the real HTTP server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from wxtokend.emulator import (
    EmulatedApp,
    Emulator,
    EmulatorConfig,
    EmulatorConfigError,
    Fault,
    Faults,
    WeChatState,
    add_arguments,
    config_from_args,
    load_emulator_config,
    run_from_args,
)

APPID = "wx00000000000000a1"
SECRET = "secret-a1"
OTHER = "wx00000000000000b2"
CORP = "ww00000000000000c3"
CORP_SECRET = "corp-secret-1"
CORP_SECRET_2 = "corp-secret-2"
START = 1_700_000_000.0
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{128}")
TICKET_SHAPE = re.compile(r"[A-Za-z0-9_-]{86}")
RID = r"rid: [0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}"
COUNTERS = (
    *("token", "stable_token", "stable_token_force", "gettoken", "getcallbackip", "issued"),
    *("getticket", "get_jsapi_ticket", "ticket_get", "tickets_issued", "faults"),
    *("api_calls", "api_rejected"),
)
NO_CALLS = dict.fromkeys(COUNTERS, 0)


def wecom_hint(errcode: int, message: str) -> str:
    """The pattern of a WeCom errmsg: the message, a hint, the caller's IP and a help link."""
    return (
        rf"{re.escape(message)}, hint: \[\d+_\d\d_[0-9a-f]{{32}}\], from ip: 127\.0\.0\.1, "
        rf"more info at https://open\.work\.weixin\.qq\.com/devtool/query\?e={errcode}"
    )


Reply = dict[str, object]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """A clock that moves only when a test advances it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_config(**overrides: Any) -> EmulatorConfig:
    apps = (EmulatedApp(appid=APPID, secret=SECRET), EmulatedApp(appid=OTHER, secret="secret-b2"))
    return EmulatorConfig(**{"apps": apps, **overrides})


def make_state(clock: FakeClock, **overrides: Any) -> WeChatState:
    return WeChatState(make_config(**overrides), clock=clock, rng=random.Random(7))


WECOM_APPS = (
    EmulatedApp(kind="wecom", corpid=CORP, secret=CORP_SECRET),
    EmulatedApp(kind="wecom", corpid=CORP, secret=CORP_SECRET_2),
)


def make_wecom_config(**overrides: Any) -> EmulatorConfig:
    """Two Official Account apps and one WeCom corp with two applications."""
    return make_config(**{"apps": (*make_config().apps, *WECOM_APPS), **overrides})


def make_wecom_state(clock: FakeClock, **overrides: Any) -> WeChatState:
    return WeChatState(make_wecom_config(**overrides), clock=clock, rng=random.Random(7))


def classic(state: WeChatState, **params: str) -> Reply:
    request = {
        "grant_type": "client_credential",
        "appid": APPID,
        "secret": SECRET,
        "client_ip": "127.0.0.1",
    }
    return state.classic_token(**{**request, **params})


def stable(state: WeChatState, *, force: bool = False, **params: str) -> Reply:
    request = {
        "grant_type": "client_credential",
        "appid": APPID,
        "secret": SECRET,
        "client_ip": "127.0.0.1",
    }
    return state.stable_token(force=force, **{**request, **params})


def token_of(reply: Reply) -> str:
    assert "errcode" not in reply, reply
    token = reply["access_token"]
    assert isinstance(token, str)
    return token


def check(state: WeChatState, token: str) -> object:
    """The errcode getcallbackip answers for ``token``; 0 when it is accepted."""
    return state.check_token(token).get("errcode", 0)


def gettoken(state: WeChatState, **params: str) -> Reply:
    request = {"corpid": CORP, "corpsecret": CORP_SECRET, "client_ip": "127.0.0.1"}
    return state.wecom_token(**{**request, **params})


def wecom_token_of(reply: Reply) -> str:
    assert reply["errcode"] == 0, reply
    assert reply["errmsg"] == "ok"
    token = reply["access_token"]
    assert isinstance(token, str)
    return token


def ticket_of(reply: Reply) -> str:
    assert reply["errcode"] == 0, reply
    ticket = reply["ticket"]
    assert isinstance(ticket, str)
    return ticket


def jsapi(state: WeChatState, token: str, ticket_type: str = "jsapi") -> Reply:
    return state.getticket(access_token=token, ticket_type=ticket_type)


def admit_ticket(state: WeChatState, endpoint: Any, token: str) -> Fault | None:
    """What the HTTP layer does for a ticket call: the token's owner is counted and rolled."""
    appid, secret = state.token_owner(token)
    return state.admit(endpoint, appid, secret=secret)


def ticket_status(state: WeChatState, ticket: str) -> object:
    """ "valid", or the reason check-ticket gives for refusing ``ticket``."""
    reply = state.check_ticket(ticket)
    return "valid" if reply["valid"] else reply["reason"]


class TestClassicGrant:
    def test_fresh_token_looks_like_wechat(self, clock: FakeClock) -> None:
        """A fetch answers a 128-character url-safe token and the full lifetime, no errcode."""
        reply = classic(make_state(clock))
        assert TOKEN_SHAPE.fullmatch(token_of(reply))
        assert reply == {"access_token": reply["access_token"], "expires_in": 7200}

    def test_every_fetch_issues_a_new_token(self, clock: FakeClock) -> None:
        """Unlike stable tokens, each classic call hands out a different token."""
        state = make_state(clock)
        assert len({token_of(classic(state)) for _ in range(5)}) == 5

    def test_previous_token_works_until_grace_ends(self, clock: FakeClock) -> None:
        """After a new fetch the previous token keeps working for exactly ``grace`` seconds."""
        state = make_state(clock, grace=300)
        first = token_of(classic(state))
        clock.advance(100)
        second = token_of(classic(state))
        clock.advance(299.9)
        assert check(state, first) == 0
        clock.advance(0.1)
        assert check(state, first) == 40001
        assert check(state, second) == 0

    def test_token_before_previous_is_invalid_at_once(self, clock: FakeClock) -> None:
        """Only the immediately previous token gets a grace period."""
        state = make_state(clock)
        first, second, _third = (token_of(classic(state)) for _ in range(3))
        assert check(state, first) == 40001
        assert check(state, second) == 0

    def test_expired_token_reports_42001(self, clock: FakeClock) -> None:
        """A token past its lifetime is reported expired, not invalid."""
        state = make_state(clock, lifetime=60)
        token = token_of(classic(state))
        clock.advance(59.9)
        assert check(state, token) == 0
        clock.advance(0.1)
        assert check(state, token) == 42001

    def test_previous_expiring_inside_grace_reports_42001(self, clock: FakeClock) -> None:
        """Grace never extends a token beyond its own expiry."""
        state = make_state(clock, lifetime=7200, grace=300)
        first = token_of(classic(state))
        clock.advance(7100)
        classic(state)
        clock.advance(100)
        assert check(state, first) == 42001


class TestStableGrant:
    def test_normal_calls_share_one_token_with_remaining_life(self, clock: FakeClock) -> None:
        """Normal mode returns the same token and its remaining whole seconds."""
        state = make_state(clock)
        first = stable(state)
        clock.advance(1000.5)
        again = stable(state)
        assert again == {"access_token": token_of(first), "expires_in": 6199}

    def test_renews_only_inside_the_window(self, clock: FakeClock) -> None:
        """A new token comes only with <= stable_window left; the old one lives to its expiry."""
        state = make_state(clock, lifetime=7200, stable_window=300)
        old = token_of(stable(state))
        clock.advance(7200 - 301)
        assert stable(state) == {"access_token": old, "expires_in": 301}
        clock.advance(1)
        renewed = stable(state)
        assert token_of(renewed) != old
        assert renewed["expires_in"] == 7200
        clock.advance(299.9)
        assert check(state, old) == 0
        clock.advance(0.1)
        assert check(state, old) == 42001
        assert stable(state)["access_token"] == token_of(renewed)

    def test_never_returns_less_than_the_window(self, clock: FakeClock) -> None:
        """Across several lifetimes no normal-mode answer carries less than the window."""
        state = make_state(clock, lifetime=1000, stable_window=100)
        lives = []
        for _ in range(100):
            lives.append(stable(state)["expires_in"])
            clock.advance(37)
        assert all(isinstance(life, int) and life >= 100 for life in lives)

    def test_independent_of_classic(self, clock: FakeClock) -> None:
        """Classic fetches never disturb the stable token and vice versa."""
        state = make_state(clock)
        stable_token = token_of(stable(state))
        classic_token = token_of(classic(state))
        classic(state)
        classic(state)
        assert check(state, stable_token) == 0
        assert token_of(stable(state, force=True)) != stable_token
        assert check(state, classic_token) == 40001  # invalidated by classic fetches only
        assert stable_token != classic_token

    def test_revoked_token_is_replaced_by_next_normal_call(self, clock: FakeClock) -> None:
        """After a revoke the token is 40001 and the next normal call issues a new one."""
        state = make_state(clock)
        token = token_of(stable(state))
        state.revoke(APPID, "stable")
        assert check(state, token) == 40001
        assert token_of(stable(state)) != token

    def test_revoke_of_unknown_app_is_rejected(self, clock: FakeClock) -> None:
        """Revoking an appid the emulator does not know is an operator error."""
        with pytest.raises(ValueError, match="unknown appid"):
            make_state(clock).revoke("wxnobody", "classic")


class TestStableForce:
    def test_force_invalidates_previous_at_once(self, clock: FakeClock) -> None:
        """force_refresh issues a full-lifetime token and kills the previous one immediately."""
        state = make_state(clock)
        old = token_of(stable(state))
        clock.advance(60)
        forced = stable(state, force=True)
        assert token_of(forced) != old
        assert forced["expires_in"] == 7200
        assert check(state, old) == 40001
        assert check(state, token_of(forced)) == 0

    def test_force_within_interval_returns_same_token(self, clock: FakeClock) -> None:
        """A second force inside stable_force_interval does not refresh."""
        state = make_state(clock, stable_force_interval=30)
        first = token_of(stable(state, force=True))
        clock.advance(29)
        assert stable(state, force=True) == {"access_token": first, "expires_in": 7171}
        clock.advance(1)
        assert token_of(stable(state, force=True)) != first

    def test_daily_force_limit_and_reset(self, clock: FakeClock) -> None:
        """The 21st force in a day is 45009; the next day allows forces again."""
        state = make_state(clock, stable_force_daily=20, day_length=86400)
        tokens = set()
        for _ in range(20):
            tokens.add(token_of(stable(state, force=True)))
            clock.advance(30)
        assert len(tokens) == 20
        refused = stable(state, force=True)
        assert refused["errcode"] == 45009
        assert re.fullmatch(f"reach max api daily quota limit {RID}", str(refused["errmsg"]))
        clock.advance(86400)
        assert token_of(stable(state, force=True)) not in tokens


class TestQuotas:
    def test_daily_quota_then_reset_next_day(self, clock: FakeClock) -> None:
        """Past daily_quota classic calls answer 45009 until the next quota day."""
        state = make_state(clock, daily_quota=3, day_length=1000)
        for _ in range(3):
            token_of(classic(state))
        assert classic(state)["errcode"] == 45009
        assert state.stats()[APPID]["issued"] == 3
        clock.advance(999)
        assert classic(state)["errcode"] == 45009
        clock.advance(1)
        token_of(classic(state))

    def test_quota_is_per_app(self, clock: FakeClock) -> None:
        """One app exhausting its quota leaves the others alone."""
        state = make_state(clock, daily_quota=1)
        classic(state)
        assert classic(state)["errcode"] == 45009
        token_of(classic(state, appid=OTHER, secret="secret-b2"))

    def test_minute_quota(self, clock: FakeClock) -> None:
        """Past minute_quota token-endpoint calls answer 45011 until the next minute."""
        state = make_state(clock, minute_quota=2)
        token_of(classic(state))
        token_of(stable(state))
        assert classic(state) == {
            "errcode": 45011,
            "errmsg": "api minute-quota reach limit  mustslower  retry next minute",
        }
        assert stable(state)["errcode"] == 45011
        clock.advance(60)
        token_of(classic(state))

    def test_minute_quota_zero_means_off(self, clock: FakeClock) -> None:
        """The default minute_quota of 0 never limits."""
        state = make_state(clock)
        assert all("access_token" in classic(state) for _ in range(200))


class TestCredentialChecks:
    @pytest.mark.parametrize(
        ("params", "errcode", "errmsg"),
        [
            ({"grant_type": "password"}, 40002, "invalid grant_type"),
            ({"grant_type": "password", "appid": ""}, 40002, "invalid grant_type"),
            ({"appid": ""}, 41002, "appid missing"),
            ({"secret": ""}, 41004, "appsecret missing"),
            ({"appid": "wxnobody"}, 40013, "invalid appid"),
            ({"secret": "wrong"}, 40125, "invalid appsecret"),
        ],
    )
    def test_classic_rejections(
        self, clock: FakeClock, params: dict[str, str], errcode: int, errmsg: str
    ) -> None:
        """Bad classic requests get WeChat's errcode and message, checked in WeChat's order."""
        assert classic(make_state(clock), **params) == {"errcode": errcode, "errmsg": errmsg}

    def test_stable_wrong_secret_is_40001(self, clock: FakeClock) -> None:
        """The stable endpoint answers a wrong secret with 40001, like WeChat does."""
        reply = stable(make_state(clock), secret="wrong")
        assert reply["errcode"] == 40001
        assert str(reply["errmsg"]).startswith("invalid credential")

    def test_stable_shares_the_other_checks(self, clock: FakeClock) -> None:
        """Missing or unknown parameters get the same errcodes on the stable endpoint."""
        state = make_state(clock)
        assert stable(state, grant_type="x")["errcode"] == 40002
        assert stable(state, appid="")["errcode"] == 41002
        assert stable(state, secret="")["errcode"] == 41004
        assert stable(state, appid="wxnobody")["errcode"] == 40013

    def test_ip_whitelist_message_shape(self, clock: FakeClock) -> None:
        """A caller outside the whitelist gets 40164 naming its IP, as WeChat words it."""
        state = make_state(clock, ip_whitelist=("10.0.0.1",))
        for reply in (classic(state), stable(state)):
            assert reply["errcode"] == 40164
            expected = rf"invalid ip 127\.0\.0\.1 ipv6 ::ffff:127\.0\.0\.1, not in whitelist {RID}"
            assert re.fullmatch(expected, str(reply["errmsg"]))
        token_of(classic(state, client_ip="10.0.0.1"))

    def test_changed_secret(self, clock: FakeClock) -> None:
        """set_app changes the secret at once and leaves issued tokens working."""
        state = make_state(clock)
        token = token_of(classic(state))
        state.set_app(APPID, "rotated")
        assert classic(state)["errcode"] == 40125
        assert check(state, token) == 0
        token_of(classic(state, secret="rotated"))

    def test_set_app_validates(self, clock: FakeClock) -> None:
        """An empty secret is refused with the config error type."""
        with pytest.raises(EmulatorConfigError, match="secret"):
            make_state(clock).set_app("wxnew", "")


class TestCheckToken:
    def test_missing_token(self, clock: FakeClock) -> None:
        """No access_token at all is 41001."""
        assert make_state(clock).check_token("") == {
            "errcode": 41001,
            "errmsg": "access_token missing",
        }

    def test_unknown_token(self, clock: FakeClock) -> None:
        """A token never issued is 40001 with a rid."""
        reply = make_state(clock).check_token("made-up")
        assert reply["errcode"] == 40001
        pattern = f"invalid credential, access_token is invalid or not latest {RID}"
        assert re.fullmatch(pattern, str(reply["errmsg"]))

    def test_valid_token(self, clock: FakeClock) -> None:
        """A valid token answers the callback IP list."""
        state = make_state(clock)
        assert state.check_token(token_of(classic(state))) == {"ip_list": ["127.0.0.1"]}


class TestTickets:
    def test_valid_token_gets_a_ticket(self, clock: FakeClock) -> None:
        """A valid classic token gets a jsapi ticket in WeChat's reply shape."""
        state = make_state(clock)
        reply = jsapi(state, token_of(classic(state)))
        ticket = ticket_of(reply)
        assert TICKET_SHAPE.fullmatch(ticket)
        assert reply == {"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": 7200}
        assert state.check_ticket(ticket) == {"valid": True, "appid": APPID, "type": "jsapi"}

    def test_stable_token_and_wx_card(self, clock: FakeClock) -> None:
        """A stable token works too, and wx_card is a ticket type of its own."""
        state = make_state(clock)
        ticket = ticket_of(jsapi(state, token_of(stable(state)), "wx_card"))
        assert state.check_ticket(ticket) == {"valid": True, "appid": APPID, "type": "wx_card"}

    def test_ticket_lifetime(self, clock: FakeClock) -> None:
        """ticket_lifetime sets expires_in; the ticket is expired once it has passed."""
        state = make_state(clock, lifetime=100, ticket_lifetime=30)
        reply = jsapi(state, token_of(classic(state)))
        assert reply["expires_in"] == 30
        clock.advance(29.9)
        assert ticket_status(state, ticket_of(reply)) == "valid"
        clock.advance(0.1)
        assert ticket_status(state, ticket_of(reply)) == "expired"

    def test_expired_token_is_42001(self, clock: FakeClock) -> None:
        """A token past its lifetime gets 42001 with a rid."""
        state = make_state(clock, lifetime=60)
        token = token_of(classic(state))
        clock.advance(60)
        reply = jsapi(state, token)
        assert reply["errcode"] == 42001
        assert re.fullmatch(f"access_token expired {RID}", str(reply["errmsg"]))

    def test_invalidated_and_unknown_tokens_are_40001(self, clock: FakeClock) -> None:
        """A revoked token, one never issued, and one two fetches back all get 40001."""
        state = make_state(clock)
        revoked = token_of(classic(state))
        state.revoke(APPID, "classic")
        replaced = token_of(classic(state))
        classic(state)
        classic(state)
        for token in (revoked, "made-up", replaced):
            reply = jsapi(state, token)
            assert reply["errcode"] == 40001
            assert re.fullmatch(
                f"invalid credential, access_token is invalid or not latest {RID}",
                str(reply["errmsg"]),
            )

    def test_missing_token_is_41001(self, clock: FakeClock) -> None:
        """No access_token is 41001, whatever the type."""
        state = make_state(clock)
        for ticket_type in ("jsapi", "nope"):
            assert jsapi(state, "", ticket_type) == {
                "errcode": 41001,
                "errmsg": "access_token missing",
            }

    @pytest.mark.parametrize("ticket_type", ["", "JSAPI", "agent_config", "card"])
    def test_unknown_type_is_40097(self, clock: FakeClock, ticket_type: str) -> None:
        """A type other than jsapi or wx_card is 40097 and issues nothing."""
        state = make_state(clock)
        reply = jsapi(state, token_of(classic(state)), ticket_type)
        assert reply == {"errcode": 40097, "errmsg": "invalid args"}
        assert state.stats()[APPID]["tickets_issued"] == 0

    def test_new_ticket_per_call_previous_lives_for_grace(self, clock: FakeClock) -> None:
        """Each call issues a new ticket; the previous one works for exactly ``grace`` seconds."""
        state = make_state(clock, grace=300)
        token = token_of(stable(state))
        first = ticket_of(jsapi(state, token))
        clock.advance(100)
        second = ticket_of(jsapi(state, token))
        assert second != first
        clock.advance(299.9)
        assert ticket_status(state, first) == "valid"
        clock.advance(0.1)
        assert ticket_status(state, first) == "invalidated"
        assert ticket_status(state, second) == "valid"

    def test_ticket_before_previous_dies_at_once(self, clock: FakeClock) -> None:
        """Only the immediately previous ticket gets a grace period."""
        state = make_state(clock)
        token = token_of(classic(state))
        first, second, third = (ticket_of(jsapi(state, token)) for _ in range(3))
        assert [ticket_status(state, t) for t in (first, second, third)] == [
            "invalidated",
            "valid",
            "valid",
        ]

    def test_rotation_is_per_app_and_type(self, clock: FakeClock) -> None:
        """Fetching one app's wx_card or another app's jsapi leaves a jsapi ticket alone."""
        state = make_state(clock)
        token = token_of(classic(state))
        other = token_of(classic(state, appid=OTHER, secret="secret-b2"))
        ticket = ticket_of(jsapi(state, token))
        for _ in range(3):
            jsapi(state, token, "wx_card")
            jsapi(state, other)
        assert ticket_status(state, ticket) == "valid"

    def test_ticket_outlives_its_token(self, clock: FakeClock) -> None:
        """A ticket keeps working after the token it was fetched with is revoked."""
        state = make_state(clock)
        ticket = ticket_of(jsapi(state, token_of(classic(state))))
        state.revoke(APPID, "classic")
        assert ticket_status(state, ticket) == "valid"

    def test_check_ticket_unknown(self, clock: FakeClock) -> None:
        """A value never issued as a ticket, even a token, is unknown."""
        state = make_state(clock)
        token = token_of(classic(state))
        for value in ("made-up", token):
            assert state.check_ticket(value) == {"valid": False, "reason": "unknown"}

    def test_dead_tickets_are_forgotten_after_a_day(self, clock: FakeClock) -> None:
        """Memory stays bounded: a ticket dead for over a quota day becomes unknown."""
        state = make_state(clock, lifetime=5000, ticket_lifetime=10, day_length=1000)
        token = token_of(classic(state))
        old = ticket_of(jsapi(state, token))
        clock.advance(2011)
        assert ticket_status(state, old) == "expired"
        jsapi(state, token)
        assert ticket_status(state, old) == "unknown"


class TestWeComToken:
    def test_fresh_token_looks_like_wecom(self, clock: FakeClock) -> None:
        """gettoken answers errcode 0, a token and the full lifetime; getcallbackip accepts it."""
        state = make_wecom_state(clock)
        reply = gettoken(state)
        token = wecom_token_of(reply)
        assert TOKEN_SHAPE.fullmatch(token)
        assert reply == {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}
        assert state.check_token(token) == {"errcode": 0, "errmsg": "ok", "ip_list": ["127.0.0.1"]}

    def test_same_token_within_lifetime(self, clock: FakeClock) -> None:
        """A repeat fetch returns the same token with its remaining whole seconds."""
        state = make_wecom_state(clock)
        token = wecom_token_of(gettoken(state))
        clock.advance(7199.5)
        again = gettoken(state)
        assert again == {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 0}
        assert state.stats()[CORP]["issued"] == 1

    def test_new_token_after_expiry(self, clock: FakeClock) -> None:
        """Only once the token has expired does a fetch issue a new one, with full life."""
        state = make_wecom_state(clock, lifetime=60)
        old = wecom_token_of(gettoken(state))
        clock.advance(60)
        assert check(state, old) == 42001
        renewed = gettoken(state)
        assert wecom_token_of(renewed) != old
        assert renewed["expires_in"] == 60

    def test_applications_of_one_corp_get_different_tokens(self, clock: FakeClock) -> None:
        """One corp, two secrets: two tokens, each stable for its own application."""
        state = make_wecom_state(clock)
        first = wecom_token_of(gettoken(state))
        second = wecom_token_of(gettoken(state, corpsecret=CORP_SECRET_2))
        assert first != second
        assert wecom_token_of(gettoken(state)) == first
        assert wecom_token_of(gettoken(state, corpsecret=CORP_SECRET_2)) == second
        assert check(state, first) == check(state, second) == 0

    @pytest.mark.parametrize(
        ("params", "errcode", "message"),
        [
            ({"corpid": ""}, 41002, "corpid missing"),
            ({"corpid": "", "corpsecret": ""}, 41002, "corpid missing"),
            ({"corpsecret": ""}, 41004, "corpsecret missing"),
            ({"corpid": "wwnobody"}, 40013, "invalid corpid"),
            ({"corpid": APPID, "corpsecret": SECRET}, 40013, "invalid corpid"),
            ({"corpsecret": "wrong"}, 40001, "invalid credential"),
            ({"corpsecret": SECRET}, 40001, "invalid credential"),
        ],
    )
    def test_rejections(
        self, clock: FakeClock, params: dict[str, str], errcode: int, message: str
    ) -> None:
        """Bad gettoken requests get WeCom's errcode, and its message with hint and IP."""
        reply = gettoken(make_wecom_state(clock), **params)
        assert reply["errcode"] == errcode
        assert re.fullmatch(wecom_hint(errcode, message), str(reply["errmsg"]))

    def test_daily_quota_per_application(self, clock: FakeClock) -> None:
        """Past daily_quota calls an application gets 45009; its sibling and the next day don't."""
        state = make_wecom_state(clock, daily_quota=3, day_length=1000)
        for _ in range(3):
            wecom_token_of(gettoken(state))
        refused = gettoken(state)
        assert refused["errcode"] == 45009
        assert re.fullmatch(wecom_hint(45009, "api freq out of limit"), str(refused["errmsg"]))
        wecom_token_of(gettoken(state, corpsecret=CORP_SECRET_2))
        clock.advance(1000)
        wecom_token_of(gettoken(state))

    def test_minute_quota(self, clock: FakeClock) -> None:
        """minute_quota limits gettoken with 45011 until the next minute."""
        state = make_wecom_state(clock, minute_quota=1)
        wecom_token_of(gettoken(state))
        assert gettoken(state)["errcode"] == 45011
        clock.advance(60)
        wecom_token_of(gettoken(state))

    def test_revoke_the_corp_or_one_application(self, clock: FakeClock) -> None:
        """Revoking with a secret kills one application's token; without, the whole corp's."""
        state = make_wecom_state(clock)
        first = wecom_token_of(gettoken(state))
        second = wecom_token_of(gettoken(state, corpsecret=CORP_SECRET_2))
        state.revoke(CORP, "wecom", secret=CORP_SECRET)
        assert (check(state, first), check(state, second)) == (40001, 0)
        renewed = wecom_token_of(gettoken(state))
        assert renewed != first
        state.revoke(CORP, "wecom")
        assert (check(state, renewed), check(state, second)) == (40001, 40001)

    def test_revoke_rejects_unknown_targets(self, clock: FakeClock) -> None:
        """Unknown corpids and secrets, and a secret on a non-WeCom grant, are operator errors."""
        state = make_wecom_state(clock)
        with pytest.raises(ValueError, match="unknown corpid"):
            state.revoke("wwnobody", "wecom")
        with pytest.raises(ValueError, match="no application with that secret"):
            state.revoke(CORP, "wecom", secret="wrong")
        with pytest.raises(ValueError, match="secret is only for grant"):
            state.revoke(APPID, "classic", secret=SECRET)

    def test_set_wecom_app(self, clock: FakeClock) -> None:
        """An application added at run time works at once, also for a new corp."""
        state = make_wecom_state(clock)
        state.set_wecom_app(CORP, "third")
        state.set_wecom_app("wwnew", "one")
        tokens = {wecom_token_of(gettoken(state, corpsecret=s)) for s in (CORP_SECRET, "third")}
        assert len(tokens) == 2
        wecom_token_of(gettoken(state, corpid="wwnew", corpsecret="one"))
        assert {CORP, "wwnew"} <= set(state.stats())

    def test_appids_and_corpids_do_not_mix(self, clock: FakeClock) -> None:
        """A corpid cannot become an appid nor the reverse: their counters would mix."""
        state = make_wecom_state(clock)
        with pytest.raises(EmulatorConfigError, match="already an appid"):
            state.set_wecom_app(APPID, "s")
        with pytest.raises(EmulatorConfigError, match="already a wecom corpid"):
            state.set_app(CORP, "s")
        with pytest.raises(EmulatorConfigError, match="secret"):
            state.set_wecom_app("wwnew", "")


class TestWeComTickets:
    def test_jsapi_and_agent_config(self, clock: FakeClock) -> None:
        """A WeCom token gets both ticket kinds in the common reply shape."""
        state = make_wecom_state(clock, ticket_lifetime=50)
        token = wecom_token_of(gettoken(state))
        corp = state.wecom_jsapi_ticket(access_token=token, client_ip="127.0.0.1")
        agent = state.wecom_ticket(
            access_token=token, ticket_type="agent_config", client_ip="127.0.0.1"
        )
        for reply, ticket_type in ((corp, "jsapi"), (agent, "agent_config")):
            ticket = ticket_of(reply)
            assert reply == {"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": 50}
            assert state.check_ticket(ticket) == {
                "valid": True,
                "appid": CORP,
                "type": ticket_type,
            }

    def test_token_errors_are_worded_like_wecom(self, clock: FakeClock) -> None:
        """Missing, expired, unknown and Official Account tokens get 41001/42001/40001."""
        state = make_wecom_state(clock, lifetime=60)
        official = token_of(classic(state))
        expired = wecom_token_of(gettoken(state))
        clock.advance(60)
        cases = [
            ("", 41001, "access_token missing"),
            (expired, 42001, "access_token expired"),
            ("made-up", 40001, "invalid credential, access_token is invalid or not latest"),
            (official, 40001, "invalid credential, access_token is invalid or not latest"),
        ]
        for token, errcode, message in cases:
            reply = state.wecom_jsapi_ticket(access_token=token, client_ip="127.0.0.1")
            assert reply["errcode"] == errcode
            assert re.fullmatch(wecom_hint(errcode, message), str(reply["errmsg"]))

    def test_wecom_token_is_refused_by_getticket(self, clock: FakeClock) -> None:
        """The Official Account ticket endpoint does not know WeCom tokens."""
        state = make_wecom_state(clock)
        assert jsapi(state, wecom_token_of(gettoken(state)))["errcode"] == 40001

    @pytest.mark.parametrize("ticket_type", ["", "jsapi", "wx_card"])
    def test_ticket_get_only_agent_config(self, clock: FakeClock, ticket_type: str) -> None:
        """ticket/get answers any type but agent_config with 40097."""
        state = make_wecom_state(clock)
        reply = state.wecom_ticket(
            access_token=wecom_token_of(gettoken(state)),
            ticket_type=ticket_type,
            client_ip="127.0.0.1",
        )
        assert reply["errcode"] == 40097
        assert re.fullmatch(wecom_hint(40097, "invalid args"), str(reply["errmsg"]))

    def test_rotation_per_application(self, clock: FakeClock) -> None:
        """Each call issues a new ticket with grace; the corp's other application is unaffected."""
        state = make_wecom_state(clock, grace=10)
        mine = wecom_token_of(gettoken(state))
        sibling = wecom_token_of(gettoken(state, corpsecret=CORP_SECRET_2))

        def fetch(token: str) -> str:
            return ticket_of(state.wecom_jsapi_ticket(access_token=token, client_ip="127.0.0.1"))

        theirs = fetch(sibling)
        first = fetch(mine)
        second = fetch(mine)
        clock.advance(10)
        assert [ticket_status(state, t) for t in (first, second, theirs)] == [
            "invalidated",
            "valid",
            "valid",
        ]


class TestFaults:
    @pytest.mark.parametrize("kind", ["http_5xx", "busy", "garbage", "slow"])
    def test_fraction_is_roughly_honoured(self, clock: FakeClock, kind: str) -> None:
        """With a fraction of 0.3, about 300 of 1,000 calls misbehave."""
        state = make_state(clock, faults=Faults(**{kind: 0.3}))
        hits = [state.admit("token", APPID) for _ in range(1000)]
        assert 240 <= hits.count(Fault(kind)) <= 360
        assert hits.count(None) == 1000 - hits.count(Fault(kind))

    def test_fractions_add_up(self, clock: FakeClock) -> None:
        """Every fault at 1/6 fires about a sixth of the time."""
        faults = Faults(
            http_5xx=1 / 6, busy=1 / 6, garbage=1 / 6, slow=1 / 6, hang=1 / 6, lost=1 / 6
        )
        state = make_state(clock, faults=faults)
        hits = [state.admit("stable_token", APPID) for _ in range(1000)]
        for fault in Fault:
            assert 120 <= hits.count(fault) <= 215

    def test_seed_makes_faults_reproducible(self, clock: FakeClock) -> None:
        """Two states with the same seed misbehave on the same calls."""
        config = make_config(seed=42, faults=Faults(busy=0.5))
        runs = [WeChatState(config, clock=clock) for _ in range(2)]
        sequences = [[state.admit("token", APPID) for _ in range(50)] for state in runs]
        assert sequences[0] == sequences[1]

    def test_per_app_faults_override_the_default(self, clock: FakeClock) -> None:
        """An app's own faults replace the default; clearing them restores it."""
        apps = (EmulatedApp(appid=APPID, secret=SECRET, faults=Faults(busy=1.0)),)
        state = WeChatState(EmulatorConfig(apps=apps, faults=Faults(http_5xx=1.0)), clock=clock)
        assert state.admit("token", APPID) is Fault.BUSY
        assert state.admit("token", OTHER) is Fault.HTTP_5XX
        state.set_faults(APPID, None)
        assert state.admit("token", APPID) is Fault.HTTP_5XX
        state.set_faults(None, None)
        assert state.admit("token", APPID) is None

    def test_wecom_faults_per_application_and_corp(self, clock: FakeClock) -> None:
        """A WeCom application's own faults win over its corp's, which win over the default."""
        apps = (
            EmulatedApp(kind="wecom", corpid=CORP, secret=CORP_SECRET, faults=Faults(busy=1.0)),
            EmulatedApp(kind="wecom", corpid=CORP, secret=CORP_SECRET_2),
        )
        state = WeChatState(EmulatorConfig(apps=apps), clock=clock)
        assert state.admit("gettoken", CORP, secret=CORP_SECRET) is Fault.BUSY
        assert state.admit("gettoken", CORP, secret=CORP_SECRET_2) is None
        state.set_faults(CORP, Faults(http_5xx=1.0))
        assert state.admit("gettoken", CORP, secret=CORP_SECRET) is Fault.BUSY
        assert state.admit("ticket_get", CORP, secret=CORP_SECRET_2) is Fault.HTTP_5XX
        state.set_faults(CORP, None, secret=CORP_SECRET)
        assert state.admit("get_jsapi_ticket", CORP, secret=CORP_SECRET) is Fault.HTTP_5XX

    def test_ticket_calls_use_the_token_owner_faults(self, clock: FakeClock) -> None:
        """getticket finds its app through the token; an unknown token gets the default faults."""
        state = make_wecom_state(clock, faults=Faults(garbage=1.0))
        state.set_faults(APPID, Faults(slow=1.0))
        state.set_faults(CORP, Faults(busy=1.0), secret=CORP_SECRET_2)
        official = token_of(classic(state))
        wecom = wecom_token_of(gettoken(state, corpsecret=CORP_SECRET_2))
        assert state.token_owner(official) == (APPID, "")
        assert state.token_owner(wecom) == (CORP, CORP_SECRET_2)
        assert state.token_owner("made-up") == ("", "")
        assert admit_ticket(state, "getticket", official) is Fault.SLOW
        assert admit_ticket(state, "get_jsapi_ticket", wecom) is Fault.BUSY
        assert admit_ticket(state, "getticket", "made-up") is Fault.GARBAGE

    def test_garbage_is_never_json(self, clock: FakeClock) -> None:
        """Garbage bodies are unparsable, and both kinds show up."""
        state = make_state(clock)
        bodies = [state.garbage_body() for _ in range(40)]
        for body in bodies:
            with pytest.raises(json.JSONDecodeError):
                json.loads(body)
        assert any(body.startswith(b"{") for body in bodies)
        assert any(not body.startswith(b"{") for body in bodies)

    def test_invalid_fraction_is_refused(self) -> None:
        """Fractions outside [0, 1] are a config error."""
        with pytest.raises(EmulatorConfigError, match="busy must be between 0 and 1"):
            Faults(busy=1.5)


class TestCounters:
    def test_counts_by_endpoint_and_app(self, clock: FakeClock) -> None:
        """Calls, forces, checks, issued tokens and faults are counted per appid."""
        state = make_state(clock, faults=Faults())
        state.set_faults(OTHER, Faults(busy=1.0))
        state.admit("token", APPID)
        token = token_of(classic(state))
        state.admit("stable_token", APPID)
        state.admit("stable_token", APPID, force=True)
        state.admit("token", OTHER)
        state.check_token(token)
        state.check_token("unknown")
        state.admit("token", "")
        stats = state.stats()
        assert stats[APPID] == {
            **NO_CALLS,
            "token": 1,
            "stable_token": 2,
            "stable_token_force": 1,
            "getcallbackip": 1,
            "issued": 1,
        }
        assert stats[OTHER]["faults"] == 1
        assert stats[""]["getcallbackip"] == 1
        assert stats[""]["token"] == 1

    def test_configured_apps_listed_with_zeros(self, clock: FakeClock) -> None:
        """Every configured app appears with every counter even before any call."""
        stats = make_state(clock).stats()
        assert set(stats) == {APPID, OTHER}
        assert all(value == 0 for counts in stats.values() for value in counts.values())

    def test_ticket_and_wecom_counters(self, clock: FakeClock) -> None:
        """Ticket calls and issues count per app; a corp's applications add up under its corpid."""
        state = make_wecom_state(clock)
        official = token_of(classic(state))
        admit_ticket(state, "getticket", official)
        jsapi(state, official)
        jsapi(state, official, "wx_card")
        jsapi(state, official, "bogus")
        for secret in (CORP_SECRET, CORP_SECRET_2):
            state.admit("gettoken", CORP, secret=secret)
            token = wecom_token_of(gettoken(state, corpsecret=secret))
            admit_ticket(state, "get_jsapi_ticket", token)
            state.wecom_jsapi_ticket(access_token=token, client_ip="127.0.0.1")
        state.admit("ticket_get", CORP, secret=CORP_SECRET)
        state.check_token(token)
        stats = state.stats()
        assert stats[APPID] == {**NO_CALLS, "issued": 1, "getticket": 1, "tickets_issued": 2}
        assert stats[CORP] == {
            **NO_CALLS,
            "gettoken": 2,
            "issued": 2,
            "get_jsapi_ticket": 2,
            "ticket_get": 1,
            "tickets_issued": 2,
            "getcallbackip": 1,
        }

    def test_configured_corps_listed_with_zeros(self, clock: FakeClock) -> None:
        """A WeCom corp appears once, under its corpid, with every counter at zero."""
        stats = make_wecom_state(clock).stats()
        assert set(stats) == {APPID, OTHER, CORP}
        assert stats[CORP] == NO_CALLS

    def test_reset_stats(self, clock: FakeClock) -> None:
        """reset_stats zeroes every counter but keeps configured apps listed."""
        state = make_state(clock)
        state.admit("token", "wxstranger")
        classic(state)
        state.reset_stats()
        assert set(state.stats()) == {APPID, OTHER}
        assert state.stats()[APPID]["issued"] == 0


# --------------------------------------------------------------------------- configuration


GOOD_YAML = """\
host: 127.0.0.2
port: 8123
lifetime: 20
ticket_lifetime: 15
grace: 2.5
stable_window: 5
day_length: 600
daily_quota: 50
minute_quota: 1000
stable_force_daily: 3
stable_force_interval: 1
ip_whitelist: [127.0.0.1, "::1"]
seed: 9
faults: {busy: 0.1}
apps:
  - {appid: wx1, secret: s1}
  - appid: wx2
    secret: "123"
    faults: {http_5xx: 0.5, slow: 0.25, slow_seconds: 0.1}
"""


class TestLoadConfig:
    def test_good_yaml(self, tmp_path: Path) -> None:
        """Every key of the YAML file lands in the config."""
        path = tmp_path / "emulator.yaml"
        path.write_text(GOOD_YAML)
        assert load_emulator_config(path) == EmulatorConfig(
            host="127.0.0.2",
            port=8123,
            lifetime=20,
            ticket_lifetime=15,
            grace=2.5,
            stable_window=5,
            day_length=600,
            daily_quota=50,
            minute_quota=1000,
            stable_force_daily=3,
            stable_force_interval=1,
            ip_whitelist=("127.0.0.1", "::1"),
            seed=9,
            faults=Faults(busy=0.1),
            apps=(
                EmulatedApp(appid="wx1", secret="s1"),
                EmulatedApp(
                    appid="wx2",
                    secret="123",
                    faults=Faults(http_5xx=0.5, slow=0.25, slow_seconds=0.1),
                ),
            ),
        )

    def test_wecom_entries(self, tmp_path: Path) -> None:
        """kind: wecom entries use corpid; several may share it, beside Official Account apps."""
        path = tmp_path / "emulator.yaml"
        path.write_text(
            "apps:\n"
            "  - {appid: wx1, secret: s1, kind: official}\n"
            "  - {kind: wecom, corpid: ww1, secret: a}\n"
            "  - kind: wecom\n"
            "    corpid: ww1\n"
            "    secret: b\n"
            "    faults: {busy: 0.5}\n"
        )
        assert load_emulator_config(path).apps == (
            EmulatedApp(appid="wx1", secret="s1"),
            EmulatedApp(kind="wecom", corpid="ww1", secret="a"),
            EmulatedApp(kind="wecom", corpid="ww1", secret="b", faults=Faults(busy=0.5)),
        )

    def test_emulated_app_kinds(self) -> None:
        """EmulatedApp(appid=, secret=) is still an official app; key names either kind."""
        official = EmulatedApp(appid="wx1", secret="s")
        wecom = EmulatedApp(kind="wecom", corpid="ww1", secret="s")
        assert (official.kind, official.key, official.corpid) == ("official", "wx1", "")
        assert (wecom.key, wecom.appid) == ("ww1", "")

    def test_ticket_lifetime_defaults_to_lifetime(self) -> None:
        """Without ticket_lifetime, tickets live as long as tokens."""
        assert EmulatorConfig(lifetime=30).effective_ticket_lifetime == 30
        assert EmulatorConfig(lifetime=30, ticket_lifetime=9).effective_ticket_lifetime == 9

    def test_empty_file_gives_defaults(self, tmp_path: Path) -> None:
        """An empty file is a valid config with every default."""
        path = tmp_path / "empty.yaml"
        path.write_text("")
        assert load_emulator_config(path) == EmulatorConfig()

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("lifetim: 5", "unknown key 'lifetim'"),
            ("lifetime: soon", "lifetime must be an integer"),
            ("lifetime: true", "lifetime must be an integer"),
            ("lifetime: 0", "lifetime must be > 0"),
            ("grace: -1", "grace must be >= 0"),
            ("port: 70000", "port must be 0..65535"),
            ("faults: {busy: 1.5}", "faults.busy must be between 0 and 1"),
            ("faults: {bussy: 0.5}", "faults: unknown key 'bussy'"),
            ("apps: [{appid: wx1, secret: 123}]", "apps[0].secret must be a string"),
            ("apps: [{appid: wx1}]", "apps[0].secret must be a non-empty string"),
            ("apps: {wx1: s}", "apps must be a list"),
            ("apps: [{appid: a, secret: b}, {appid: a, secret: c}]", "duplicate appid a"),
            (
                "apps: [{appid: a, secret: b}, {appid: c, secret: d, faults: {slow: -1}}]",
                "apps[1].faults.slow must be between 0 and 1",
            ),
            ("ip_whitelist: [nope]", "ip_whitelist: 'nope' is not an IP address"),
            ("ticket_lifetime: 0", "ticket_lifetime must be > 0"),
            ("ticket_lifetime: soon", "ticket_lifetime must be an integer"),
            ("apps: [{kind: wecom, secret: s}]", "apps[0].corpid must be a non-empty string"),
            (
                "apps: [{kind: wecom, appid: wx1, secret: s}]",
                "apps[0].appid is not used by kind wecom: give corpid instead",
            ),
            (
                "apps: [{appid: wx1, corpid: ww1, secret: s}]",
                "apps[0].corpid is only for kind wecom",
            ),
            ("apps: [{corpid: ww1, secret: s}]", "apps[0].appid must be a non-empty string"),
            (
                "apps: [{kind: qywx, corpid: ww1, secret: s}]",
                """apps[0].kind must be "official" or "wecom", got 'qywx'""",
            ),
            ("apps: [{kind: wecom, corpid: 1, secret: s}]", "apps[0].corpid must be a string"),
            ("apps: [{kind: wecom, corpid: ww1}]", "apps[0].secret must be a non-empty string"),
            (
                "apps: [{kind: wecom, corpid: ww1, secret: s, agentid: 7}]",
                "apps[0]: unknown key 'agentid'",
            ),
            (
                "apps: [{kind: wecom, corpid: w, secret: s}, {kind: wecom, corpid: w, secret: s}]",
                "apps: corpid w lists the same secret twice",
            ),
            (
                "apps: [{appid: x1, secret: s}, {kind: wecom, corpid: x1, secret: t}]",
                "apps: x1 is both an appid and a wecom corpid",
            ),
            ("- just\n- a list", "the top level must be a mapping"),
            ("lifetime: [unclosed", "not valid YAML at line"),
        ],
    )
    def test_bad_yaml(self, tmp_path: Path, text: str, message: str) -> None:
        """Bad input raises one line naming the file and the key."""
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(EmulatorConfigError) as caught:
            load_emulator_config(path)
        assert str(caught.value).startswith(f"{path}: ")
        assert message in str(caught.value)
        assert "\n" not in str(caught.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A file that cannot be read is a config error, not a traceback."""
        with pytest.raises(EmulatorConfigError, match="cannot read"):
            load_emulator_config(tmp_path / "absent.yaml")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wxtokend emulate")
    add_arguments(parser)
    return parser.parse_args(argv)


class TestCommandLine:
    def test_flags_round_trip(self) -> None:
        """Every flag reaches the config."""
        args = parse(
            *("--host", "127.0.0.3", "--port", "9000", "--lifetime", "30", "--grace", "1.5"),
            *("--ticket-lifetime", "20", "--wecom", "ww1:a", "--wecom", "ww1:b:c"),
            *("--stable-window", "3", "--day-length", "120", "--daily-quota", "7"),
            *("--minute-quota", "9", "--seed", "5", "--app", "wx1:s1", "--app", "wx2:s:2"),
            *("--ip-whitelist", "127.0.0.1", "--ip-whitelist", "10.0.0.2"),
            *("--port-file", "/tmp/emulator.port"),
        )
        assert args.port_file == Path("/tmp/emulator.port")
        assert config_from_args(args) == EmulatorConfig(
            host="127.0.0.3",
            port=9000,
            lifetime=30,
            ticket_lifetime=20,
            grace=1.5,
            stable_window=3,
            day_length=120,
            daily_quota=7,
            minute_quota=9,
            seed=5,
            ip_whitelist=("127.0.0.1", "10.0.0.2"),
            apps=(
                EmulatedApp(appid="wx1", secret="s1"),
                EmulatedApp(appid="wx2", secret="s:2"),
                EmulatedApp(kind="wecom", corpid="ww1", secret="a"),
                EmulatedApp(kind="wecom", corpid="ww1", secret="b:c"),
            ),
        )

    def test_no_flags_give_defaults(self) -> None:
        """Without flags or a file the config is all defaults."""
        assert config_from_args(parse()) == EmulatorConfig()

    def test_flags_override_the_file(self, tmp_path: Path) -> None:
        """Flags win over YAML; --app adds apps or replaces a secret, keeping its faults."""
        path = tmp_path / "emulator.yaml"
        path.write_text(GOOD_YAML)
        config = config_from_args(
            parse("--config", str(path), "--lifetime", "99", "--app", "wx2:new", "--app", "wx3:s3")
        )
        assert config.lifetime == 99
        assert config.grace == 2.5
        assert config.apps == (
            EmulatedApp(appid="wx1", secret="s1"),
            EmulatedApp(
                appid="wx2", secret="new", faults=Faults(http_5xx=0.5, slow=0.25, slow_seconds=0.1)
            ),
            EmulatedApp(appid="wx3", secret="s3"),
        )

    def test_wecom_flag_adds_applications(self, tmp_path: Path) -> None:
        """--wecom adds an application; one the file already has keeps its faults."""
        path = tmp_path / "emulator.yaml"
        path.write_text("apps: [{kind: wecom, corpid: ww1, secret: a, faults: {busy: 1}}]")
        config = config_from_args(
            parse("--config", str(path), "--wecom", "ww1:a", "--wecom", "ww1:b", "--app", "wx1:s")
        )
        assert config.apps == (
            EmulatedApp(kind="wecom", corpid="ww1", secret="a", faults=Faults(busy=1.0)),
            EmulatedApp(appid="wx1", secret="s"),
            EmulatedApp(kind="wecom", corpid="ww1", secret="b"),
        )

    def test_bad_wecom_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--wecom without a secret is an argparse usage error."""
        with pytest.raises(SystemExit):
            parse("--wecom", "ww1:")
        assert "CORPID:SECRET" in capsys.readouterr().err

    def test_bad_app_flag(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--app without a colon is an argparse usage error."""
        with pytest.raises(SystemExit):
            parse("--app", "wx1")
        assert "APPID:SECRET" in capsys.readouterr().err

    def test_bad_config_returns_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """run_from_args reports a bad config on stderr and returns 2 without serving."""
        path = tmp_path / "bad.yaml"
        path.write_text("lifetime: 0")
        assert run_from_args(parse("--config", str(path))) == 2
        assert "lifetime must be > 0" in capsys.readouterr().err

    def test_bad_flag_value_returns_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Flag values get the same validation as the file."""
        assert run_from_args(parse("--ip-whitelist", "not-an-ip")) == 2
        assert "ip_whitelist" in capsys.readouterr().err


# --------------------------------------------------------------------------- HTTP


@contextlib.asynccontextmanager
async def serving(
    config: EmulatorConfig, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[Emulator, httpx.AsyncClient]]:
    """A real emulator on a free loopback port, and a client pointed at it."""
    emulator = Emulator(dataclasses.replace(config, port=0), clock=clock)
    urls: list[str] = []
    ready = anyio.Event()

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(partial(emulator.serve, ready=on_ready))
        with anyio.fail_after(5):
            await ready.wait()
        async with httpx.AsyncClient(base_url=urls[0], timeout=5) as client:
            yield emulator, client
        tasks.cancel_scope.cancel()


CLASSIC = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}


def stable_body(*, force: bool = False) -> dict[str, object]:
    return {**CLASSIC, "force_refresh": force}


WECOM = {"corpid": CORP, "corpsecret": CORP_SECRET}


@pytest.mark.anyio
class TestHttp:
    async def test_classic_round_trip(self) -> None:
        """A classic fetch over HTTP gives a token that getcallbackip accepts."""
        async with serving(make_config()) as (_, client):
            response = await client.get("/cgi-bin/token", params=CLASSIC)
            assert response.status_code == 200
            token = token_of(response.json())
            check = await client.get("/cgi-bin/getcallbackip", params={"access_token": token})
            assert check.json() == {"ip_list": ["127.0.0.1"]}

    async def test_stable_round_trip(self) -> None:
        """Normal stable calls share a token; a force replaces it and kills the old one."""
        async with serving(make_config()) as (_, client):
            first = await client.post("/cgi-bin/stable_token", json=stable_body())
            second = await client.post("/cgi-bin/stable_token", json=stable_body())
            assert token_of(first.json()) == token_of(second.json())
            forced = await client.post("/cgi-bin/stable_token", json=stable_body(force=True))
            assert token_of(forced.json()) != token_of(first.json())
            params = {"access_token": token_of(first.json())}
            check = await client.get("/cgi-bin/getcallbackip", params=params)
            assert check.json()["errcode"] == 40001

    async def test_expired_token_over_http(self) -> None:
        """The injected clock drives expiry over HTTP too."""
        clock = FakeClock()
        async with serving(make_config(lifetime=10), clock) as (_, client):
            token = token_of((await client.get("/cgi-bin/token", params=CLASSIC)).json())
            clock.advance(10)
            check = await client.get("/cgi-bin/getcallbackip", params={"access_token": token})
            assert check.json()["errcode"] == 42001
            missing = await client.get("/cgi-bin/getcallbackip")
            assert missing.json()["errcode"] == 41001

    async def test_wrong_methods(self) -> None:
        """POST on the classic endpoint and GET on the stable one answer 43002."""
        async with serving(make_config()) as (_, client):
            post = await client.post("/cgi-bin/token", params=CLASSIC)
            assert post.json() == {"errcode": 43002, "errmsg": "require GET method"}
            get = await client.get("/cgi-bin/stable_token", params=CLASSIC)
            assert get.json() == {"errcode": 43002, "errmsg": "require POST method"}

    async def test_stable_body_must_be_a_json_object(self) -> None:
        """A non-JSON or non-object body is 47001."""
        async with serving(make_config()) as (_, client):
            for content in (b"grant_type=client_credential", b"[1, 2]"):
                response = await client.post("/cgi-bin/stable_token", content=content)
                assert response.json() == {"errcode": 47001, "errmsg": "data format error"}

    async def test_ip_whitelist_over_http(self) -> None:
        """The peer address is what the whitelist checks."""
        async with serving(make_config(ip_whitelist=("10.0.0.1",))) as (_, client):
            response = await client.get("/cgi-bin/token", params=CLASSIC)
            assert response.json()["errcode"] == 40164
            assert "invalid ip 127.0.0.1 " in response.json()["errmsg"]

    async def test_garbage_fault_is_unparsable(self) -> None:
        """A garbage fault answers 200 with a body no JSON parser accepts."""
        async with serving(make_config(faults=Faults(garbage=1.0))) as (_, client):
            for _ in range(10):
                response = await client.get("/cgi-bin/token", params=CLASSIC)
                assert response.status_code == 200
                with pytest.raises(json.JSONDecodeError):
                    response.json()

    async def test_5xx_fault(self) -> None:
        """An http_5xx fault answers 502 with an HTML body and issues no token."""
        async with serving(make_config(faults=Faults(http_5xx=1.0))) as (emulator, client):
            response = await client.post("/cgi-bin/stable_token", json=stable_body())
            assert response.status_code == 502
            assert response.headers["content-type"].startswith("text/html")
            assert "502 Bad Gateway" in response.text
            assert emulator.state.stats()[APPID]["issued"] == 0

    async def test_busy_and_slow_faults(self) -> None:
        """busy answers errcode -1; slow waits slow_seconds, then answers normally."""
        faults = {APPID: Faults(busy=1.0), OTHER: Faults(slow=1.0, slow_seconds=0.05)}
        apps = tuple(EmulatedApp(appid=a, secret="s", faults=f) for a, f in faults.items())
        async with serving(EmulatorConfig(apps=apps)) as (_, client):
            busy = await client.get("/cgi-bin/token", params={**CLASSIC, "secret": "s"})
            assert busy.json() == {"errcode": -1, "errmsg": "system error"}
            started = time.monotonic()
            params = {**CLASSIC, "appid": OTHER, "secret": "s"}
            slow = await client.get("/cgi-bin/token", params=params)
            assert time.monotonic() - started >= 0.05
            token_of(slow.json())

    async def test_lost_issues_at_once_and_holds_the_reply(self) -> None:
        """lost processes the call at once (classic: the caller's token is replaced and dies
        after the grace) but holds the reply past the client's timeout."""
        apps = (EmulatedApp(appid=APPID, secret=SECRET),)
        async with serving(EmulatorConfig(apps=apps, grace=0)) as (emulator, client):
            first = token_of((await client.get("/cgi-bin/token", params=CLASSIC)).json())
            emulator.state.set_faults(APPID, Faults(lost=1.0, hang_seconds=0.5))
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/cgi-bin/token", params=CLASSIC, timeout=0.2)
            assert emulator.state.stats()[APPID]["token"] == 2
            assert emulator.state.check_token(first)["errcode"] == 40001
            emulator.state.set_faults(APPID, None)
            started = time.monotonic()
            token_of((await client.get("/cgi-bin/token", params=CLASSIC)).json())
            assert time.monotonic() - started < 0.2  # only hit calls are held

    async def test_hang_holds_and_never_issues(self) -> None:
        """hang holds the call past the client's timeout and then answers 504: nothing was
        issued, the caller's token lives on."""
        apps = (EmulatedApp(appid=APPID, secret=SECRET),)
        async with serving(EmulatorConfig(apps=apps, grace=0)) as (emulator, client):
            first = token_of((await client.get("/cgi-bin/token", params=CLASSIC)).json())
            emulator.state.set_faults(APPID, Faults(hang=1.0, hang_seconds=0.3))
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/cgi-bin/token", params=CLASSIC, timeout=0.1)
            late = await client.get("/cgi-bin/token", params=CLASSIC, timeout=2)
            assert late.status_code == 504
            assert emulator.state.check_token(first).get("errcode", 0) == 0

    async def test_stats_and_reset(self) -> None:
        """/emulator/stats reports every counter per app; reset-stats zeroes them."""
        clock = FakeClock()
        async with serving(make_config(), clock) as (_, client):
            await client.get("/cgi-bin/token", params=CLASSIC)
            await client.post("/cgi-bin/stable_token", json=stable_body(force=True))
            stats = (await client.get("/emulator/stats")).json()
            assert stats["now"] == START
            assert stats["apps"][APPID] == {
                "token": 1,
                "stable_token": 1,
                "stable_token_force": 1,
                "gettoken": 0,
                "getcallbackip": 0,
                "issued": 2,
                "getticket": 0,
                "get_jsapi_ticket": 0,
                "ticket_get": 0,
                "tickets_issued": 0,
                "faults": 0,
                "api_calls": 0,
                "api_rejected": 0,
            }
            assert stats["apps"][OTHER]["token"] == 0
            assert (await client.post("/emulator/reset-stats")).json() == {"ok": True}
            stats = (await client.get("/emulator/stats")).json()
            assert stats["apps"][APPID]["issued"] == 0

    async def test_add_app_and_change_secret(self) -> None:
        """/emulator/apps adds an app and changes a secret without killing its tokens."""
        async with serving(make_config()) as (_, client):
            params = {**CLASSIC, "appid": "wxnew", "secret": "one"}
            assert (await client.get("/cgi-bin/token", params=params)).json()["errcode"] == 40013
            added = await client.post("/emulator/apps", json={"appid": "wxnew", "secret": "one"})
            assert added.json() == {"ok": True}
            token = token_of((await client.get("/cgi-bin/token", params=params)).json())
            await client.post("/emulator/apps", json={"appid": "wxnew", "secret": "two"})
            assert (await client.get("/cgi-bin/token", params=params)).json()["errcode"] == 40125
            check = await client.get("/cgi-bin/getcallbackip", params={"access_token": token})
            assert check.json() == {"ip_list": ["127.0.0.1"]}

    async def test_set_faults(self) -> None:
        """/emulator/faults sets one app's faults or the default, and null clears an app's."""
        async with serving(make_config()) as (_, client):
            await client.post("/emulator/faults", json={"appid": APPID, "faults": {"busy": 1}})
            assert (await client.get("/cgi-bin/token", params=CLASSIC)).json()["errcode"] == -1
            other = {**CLASSIC, "appid": OTHER, "secret": "secret-b2"}
            token_of((await client.get("/cgi-bin/token", params=other)).json())
            await client.post("/emulator/faults", json={"faults": {"http_5xx": 1}})
            assert (await client.get("/cgi-bin/token", params=other)).status_code == 502
            await client.post("/emulator/faults", json={"appid": APPID, "faults": None})
            assert (await client.get("/cgi-bin/token", params=CLASSIC)).status_code == 502

    async def test_revoke(self) -> None:
        """/emulator/revoke kills a grant's tokens; the next stable call issues a new one."""
        async with serving(make_config()) as (_, client):
            classic_token = token_of((await client.get("/cgi-bin/token", params=CLASSIC)).json())
            stable_token = token_of(
                (await client.post("/cgi-bin/stable_token", json=stable_body())).json()
            )
            for grant in ("classic", "stable"):
                revoked = await client.post(
                    "/emulator/revoke", json={"appid": APPID, "grant": grant}
                )
                assert revoked.json() == {"ok": True}
            for token in (classic_token, stable_token):
                check = await client.get("/cgi-bin/getcallbackip", params={"access_token": token})
                assert check.json()["errcode"] == 40001
            renewed = await client.post("/cgi-bin/stable_token", json=stable_body())
            assert token_of(renewed.json()) != stable_token

    async def test_ticket_round_trip(self) -> None:
        """getticket over HTTP: a new ticket per call, check-ticket, 40097 and 42001."""
        clock = FakeClock()
        async with serving(make_config(lifetime=60, grace=5), clock) as (_, client):
            token = token_of((await client.get("/cgi-bin/token", params=CLASSIC)).json())
            params = {"access_token": token, "type": "jsapi"}
            first = (await client.get("/cgi-bin/ticket/getticket", params=params)).json()
            second = (await client.get("/cgi-bin/ticket/getticket", params=params)).json()
            assert first["expires_in"] == second["expires_in"] == 60
            assert ticket_of(first) != ticket_of(second)
            checked = await client.get("/emulator/check-ticket", params={"ticket": first["ticket"]})
            assert checked.json() == {"valid": True, "appid": APPID, "type": "jsapi"}
            bad_type = {**params, "type": "wx-card"}
            reply = (await client.get("/cgi-bin/ticket/getticket", params=bad_type)).json()
            assert reply == {"errcode": 40097, "errmsg": "invalid args"}
            clock.advance(60)
            reply = (await client.get("/cgi-bin/ticket/getticket", params=params)).json()
            assert reply["errcode"] == 42001
            for ticket, reason in ((first, "invalidated"), (second, "expired")):
                query = {"ticket": ticket_of(ticket)}
                checked = await client.get("/emulator/check-ticket", params=query)
                assert checked.json() == {"valid": False, "reason": reason}
            stats = (await client.get("/emulator/stats")).json()["apps"][APPID]
            assert (stats["getticket"], stats["tickets_issued"]) == (4, 2)

    async def test_check_ticket_needs_a_ticket(self) -> None:
        """check-ticket without a ticket parameter is a 400, an unknown one is not valid."""
        async with serving(make_config()) as (_, client):
            missing = await client.get("/emulator/check-ticket")
            assert missing.status_code == 400
            assert missing.json() == {"error": "ticket is required"}
            unknown = await client.get("/emulator/check-ticket", params={"ticket": "x"})
            assert unknown.json() == {"valid": False, "reason": "unknown"}

    async def test_wecom_round_trip(self) -> None:
        """gettoken, getcallbackip and both WeCom ticket endpoints, counted under the corpid."""
        async with serving(make_wecom_config()) as (_, client):
            first = (await client.get("/cgi-bin/gettoken", params=WECOM)).json()
            again = (await client.get("/cgi-bin/gettoken", params=WECOM)).json()
            token = wecom_token_of(first)
            assert wecom_token_of(again) == token
            sibling = {**WECOM, "corpsecret": CORP_SECRET_2}
            assert (
                wecom_token_of((await client.get("/cgi-bin/gettoken", params=sibling)).json())
                != token
            )
            check = await client.get("/cgi-bin/getcallbackip", params={"access_token": token})
            assert check.json() == {"errcode": 0, "errmsg": "ok", "ip_list": ["127.0.0.1"]}
            corp = await client.get("/cgi-bin/get_jsapi_ticket", params={"access_token": token})
            params = {"access_token": token, "type": "agent_config"}
            agent = await client.get("/cgi-bin/ticket/get", params=params)
            for response, ticket_type in ((corp, "jsapi"), (agent, "agent_config")):
                ticket = ticket_of(response.json())
                checked = await client.get("/emulator/check-ticket", params={"ticket": ticket})
                assert checked.json() == {"valid": True, "appid": CORP, "type": ticket_type}
            wrong = await client.get("/cgi-bin/gettoken", params={**WECOM, "corpsecret": "no"})
            assert wrong.json()["errcode"] == 40001
            assert "from ip: 127.0.0.1" in wrong.json()["errmsg"]
            stats = (await client.get("/emulator/stats")).json()["apps"][CORP]
            assert stats == {
                **NO_CALLS,
                "gettoken": 4,
                "issued": 2,
                "getcallbackip": 1,
                "get_jsapi_ticket": 1,
                "ticket_get": 1,
                "tickets_issued": 2,
            }

    async def test_wecom_control(self) -> None:
        """/emulator/apps adds a WeCom application; /emulator/revoke kills the corp's tokens."""
        async with serving(make_config()) as (_, client):
            params = {"corpid": "wwnew", "corpsecret": "one"}
            refused = (await client.get("/cgi-bin/gettoken", params=params)).json()
            assert refused["errcode"] == 40013
            body = {"kind": "wecom", "corpid": "wwnew", "secret": "one"}
            assert (await client.post("/emulator/apps", json=body)).json() == {"ok": True}
            token = wecom_token_of((await client.get("/cgi-bin/gettoken", params=params)).json())
            body = {"appid": "wwnew", "grant": "wecom", "secret": "one"}
            assert (await client.post("/emulator/revoke", json=body)).json() == {"ok": True}
            check = await client.get("/cgi-bin/getcallbackip", params={"access_token": token})
            assert check.json()["errcode"] == 40001
            renewed = (await client.get("/cgi-bin/gettoken", params=params)).json()
            assert wecom_token_of(renewed) != token

    async def test_faults_on_ticket_and_gettoken(self) -> None:
        """An app's faults hijack its ticket calls; one WeCom application's faults only its own."""
        async with serving(make_wecom_config()) as (_, client):
            token = token_of((await client.get("/cgi-bin/token", params=CLASSIC)).json())
            await client.post("/emulator/faults", json={"appid": APPID, "faults": {"busy": 1}})
            params = {"access_token": token, "type": "jsapi"}
            busy = await client.get("/cgi-bin/ticket/getticket", params=params)
            assert busy.json() == {"errcode": -1, "errmsg": "system error"}
            faults = {"appid": CORP, "secret": CORP_SECRET, "faults": {"http_5xx": 1}}
            await client.post("/emulator/faults", json=faults)
            assert (await client.get("/cgi-bin/gettoken", params=WECOM)).status_code == 502
            sibling = {**WECOM, "corpsecret": CORP_SECRET_2}
            wecom_token_of((await client.get("/cgi-bin/gettoken", params=sibling)).json())
            stats = (await client.get("/emulator/stats")).json()["apps"]
            assert (stats[APPID]["faults"], stats[CORP]["faults"]) == (1, 1)
            assert stats[APPID]["tickets_issued"] == 0

    @pytest.mark.parametrize(
        ("path", "body", "message"),
        [
            ("/emulator/apps", b"{not json", "body must be a JSON object"),
            ("/emulator/apps", b'{"appid": "wx1"}', "secret must be a non-empty string"),
            ("/emulator/faults", b'{"faults": {"busy": 2}}', "faults.busy must be between"),
            ("/emulator/faults", b'{"appid": "wx1"}', "faults is required"),
            ("/emulator/revoke", b'{"appid": "wx1", "grant": "x"}', "grant must be"),
            ("/emulator/revoke", b'{"appid": "wxno", "grant": "stable"}', "unknown appid"),
            ("/emulator/apps", b'{"kind": "wecom", "corpid": "ww1"}', "secret must be"),
            ("/emulator/apps", b'{"kind": "wecom", "appid": "ww1", "secret": "s"}', "corpid"),
            ("/emulator/apps", b'{"kind": "qywx", "corpid": "ww1"}', "kind must be"),
            ("/emulator/revoke", b'{"appid": "wwno", "grant": "wecom"}', "unknown corpid"),
            (
                "/emulator/revoke",
                b'{"appid": "wx00000000000000a1", "grant": "classic", "secret": "s"}',
                "secret is only for grant",
            ),
            ("/emulator/revoke", b'{"appid": "wx1", "grant": "x"}', 'or "wecom"'),
            ("/emulator/faults", b'{"secret": "s", "faults": null}', "secret needs appid"),
            ("/emulator/faults", b'{"appid": "ww1", "secret": 1, "faults": null}', "secret must"),
        ],
    )
    async def test_control_rejects_bad_input(self, path: str, body: bytes, message: str) -> None:
        """Bad control requests get HTTP 400 with a message saying what is wrong."""
        async with serving(make_config()) as (_, client):
            response = await client.post(path, content=body)
            assert response.status_code == 400
            assert message in response.json()["error"]

    async def test_many_apps_at_once(self) -> None:
        """Hundreds of apps fetching concurrently all get distinct valid tokens."""
        apps = tuple(EmulatedApp(appid=f"wx{i:04d}", secret=f"s{i}") for i in range(300))
        async with serving(EmulatorConfig(apps=apps)) as (emulator, client):

            async def fetch(app: EmulatedApp) -> str:
                params = {**CLASSIC, "appid": app.appid, "secret": app.secret}
                return token_of((await client.get("/cgi-bin/token", params=params)).json())

            tokens = await asyncio.gather(*(fetch(app) for app in apps))
            assert len(set(tokens)) == len(apps)
            assert all(counts["issued"] == 1 for counts in emulator.state.stats().values())

    async def test_serve_on_given_socket_and_stop_on_cancel(self) -> None:
        """serve() accepts a bound socket, reports its URL and stops listening when cancelled."""
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        urls: list[str] = []
        ready = asyncio.Event()

        def on_ready(url: str) -> None:
            urls.append(url)
            ready.set()

        task = asyncio.create_task(Emulator(make_config()).serve(sock=sock, ready=on_ready))
        with anyio.fail_after(5):
            await ready.wait()
        assert urls == [f"http://127.0.0.1:{port}"]
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            assert (await client.get("/emulator/stats")).status_code == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=urls[0]) as client:
                await client.get("/emulator/stats")
