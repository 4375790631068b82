"""The emulator's WeCom suite part: its config is checked, its rules hold in process."""

from __future__ import annotations

import pytest

from wxtokend.emulator.suite_config import suite_from
from wxtokend.emulator.wecom_suite import WeComSuites

GOOD = {
    "suite_id": "wwsuite0123456789",
    "suite_secret": "S",
    "token": "tok",
    "encoding_aes_key": "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg",
}


class TestSuiteConfig:
    """Each bad entry names where it is and what is wrong."""

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"nope": 1}, "unknown key 'nope'"),
            ({"suite_id": "a/b"}, "suite_id is not"),
            ({"corp_token_lifetime": "60"}, "corp_token_lifetime: must be a number"),
            ({"suite_secret": 5}, "suite_secret: must be text"),
            ({"ticket_push_interval": 0}, "ticket_push_interval must be > 0"),
        ],
    )
    def test_refused(self, change: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message) as caught:
            suite_from({**GOOD, **change}, "suites[0]")
        assert str(caught.value).startswith("suites[0]")


class TestSuiteRules:
    """Tickets, suite tokens, codes and permanent codes behave as WeCom documents."""

    def test_chain(self) -> None:
        suites = WeComSuites((suite_from(GOOD, "s"),), grace=2)
        sid = GOOD["suite_id"]
        assert suites.suite_token({"suite_id": sid, "suite_secret": "S"}, 0)["errcode"] == 40085
        suites.new_ticket(sid, 0)
        ticket = suites.platforms[sid].tickets[-1][0]
        wrong = suites.suite_token(
            {"suite_id": sid, "suite_secret": "x", "suite_ticket": ticket}, 1
        )
        assert wrong["errcode"] == 40125
        body = {"suite_id": sid, "suite_secret": "S", "suite_ticket": ticket}
        token = suites.suite_token(body, 1)["suite_access_token"]
        assert suites.suite_token(body, 1801)["errcode"] == 40085  # the ticket's 30 minutes
        suite, _ = suites.suite_error(token, 2)
        assert suite is not None
        corpid, code, _ = suites.create_auth(sid, 2)
        granted = suites.permanent_code(suite, {"auth_code": code}, 3)
        assert granted["auth_corp_info"]["corpid"] == corpid
        assert suites.permanent_code(suite, {"auth_code": code}, 3)["errcode"] == 40078  # once
        permanent = granted["permanent_code"]
        corp = suites.corp_token(suite, {"auth_corpid": corpid, "permanent_code": permanent}, 4)
        assert suites.check_corp_token(corp["access_token"], 5) == {
            "errcode": 0,
            "ip_list": ["127.0.0.1"],
        }
        suites.revoke_permanent_code(sid, corpid)
        again = suites.corp_token(suite, {"auth_corpid": corpid, "permanent_code": permanent}, 6)
        assert again["errcode"] == 40084
        _, refused = suites.suite_error(token, 7201)
        assert refused["errcode"] == 42009
