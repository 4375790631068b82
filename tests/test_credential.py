"""One validator for every token and ticket: the same table refused on every way in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wxtokend.credential import InvalidCredential, check
from wxtokend.errors import MalformedResponse, StateFileError
from wxtokend.fleet import RejectedRecord, Shared
from wxtokend.store import Record
from wxtokend.wechat import parse_token

NOW = 1_700_000_000
KEY = b"k" * 32
CREDENTIAL = "wx0123456789abcdef:classic"
EVIL = "evil token\nwith newline and \u00fcn\u00efcode"

GOOD: list[tuple[str, int, int]] = [
    ("T" * 40, NOW, NOW + 7200),
    ("a", NOW, NOW + 1),  # shortest token, shortest lifetime
    ("!" + "~" * 511, NOW - 86400, NOW),  # longest token, a day's lifetime, already expired
    ("T", NOW + 300, NOW + 7500),  # another host's clock five minutes ahead
]
BAD_TOKENS: list[object] = [
    "",
    "A" * 513,
    "A" * 613,
    EVIL,
    "a b",
    "tab\there",
    "del\x7f",
    "caf\u00e9",
    12345,
    None,
]
# (token, fetched_at, expires_at): each breaks one rule.
BAD: list[tuple[object, object, object]] = [(t, NOW, NOW + 7200) for t in BAD_TOKENS] + [
    ("T", NOW, 10**15),  # expires in 27 million years
    ("T", NOW, NOW),  # lifetime 0
    ("T", NOW, NOW - 10),  # expires before it was fetched
    ("T", NOW, NOW + 86401),  # longer than a day
    ("T", NOW + 301, NOW + 7501),  # fetched in the future
    ("T", NOW + 10**9, NOW + 10**9 + 7200),
    ("T", True, NOW + 7200),
    ("T", NOW, "1700007200"),
    ("T", None, NOW + 7200),
]
NOT_FINITE: list[tuple[object, object, object]] = [
    ("T", float("nan"), NOW + 7200),
    ("T", NOW, float("inf")),
    ("T", float("-inf"), NOW),
]


class TestCheck:
    """The validator itself."""

    @pytest.mark.parametrize(("token", "fetched_at", "expires_at"), GOOD)
    def test_good(self, token: str, fetched_at: int, expires_at: int) -> None:
        """1-512 visible ASCII, a lifetime of 1 s to a day, fetched at most 5 min ahead."""
        check(token, fetched_at=fetched_at, expires_at=expires_at, now=NOW)

    @pytest.mark.parametrize(("token", "fetched_at", "expires_at"), BAD + NOT_FINITE)
    def test_bad(self, token: object, fetched_at: object, expires_at: object) -> None:
        """Each broken field is refused, and the message never quotes the token."""
        with pytest.raises(InvalidCredential) as info:
            check(token, fetched_at=fetched_at, expires_at=expires_at, now=NOW)
        if isinstance(token, str) and token:
            assert token not in str(info.value)

    def test_float_rounding_of_a_one_second_lifetime(self) -> None:
        """fetched_at + 1 - fetched_at is not exactly 1 in floats: still a valid lifetime."""
        fetched = 1_733_351_234.123_457
        check("T", fetched_at=fetched, expires_at=fetched + 1, now=fetched)


def state_file(token: object, fetched_at: object, expires_at: object) -> bytes:
    body = {"appid": "wx0123456789abcdef", "name": "shop", "grant": "classic"}
    body |= {"access_token": token, "fetched_at": fetched_at, "expires_at": expires_at}
    return json.dumps(body).encode()


def fleet_record(token: Any, fetched_at: Any, expires_at: Any, *, key: bytes = KEY) -> str:
    """A record signed with ``key``: only its content can make it fail."""
    shared = Shared(
        credential=CREDENTIAL, token=token, expires_at=expires_at, fetched_at=fetched_at, version=7
    )
    return shared.to_json(key)


class TestEveryWayIn:
    """WeChat replies, state files and fleet records all pass the same check."""

    @pytest.mark.parametrize(("token", "fetched_at", "expires_at"), GOOD)
    def test_good_accepted_everywhere(self, token: str, fetched_at: int, expires_at: int) -> None:
        """What the validator accepts is accepted from every source."""
        reply = {"access_token": token, "expires_in": expires_at - fetched_at}
        assert parse_token(reply, fetched_at=fetched_at).access_token == token
        record = Record.from_json(state_file(token, fetched_at, expires_at), now=NOW)
        assert record.access_token == token
        raw = fleet_record(token, float(fetched_at), float(expires_at))
        shared = Shared.from_json(raw, credential=CREDENTIAL, key=KEY, now=NOW)
        assert (shared.token, shared.version) == (token, 7)

    @pytest.mark.parametrize(("token", "fetched_at", "expires_at"), BAD)
    def test_state_file(self, token: object, fetched_at: object, expires_at: object) -> None:
        """A state file holding it is refused: the daemon fetches instead of serving it."""
        with pytest.raises(StateFileError):
            Record.from_json(state_file(token, fetched_at, expires_at), now=NOW)

    @pytest.mark.parametrize(("token", "fetched_at", "expires_at"), BAD + NOT_FINITE)
    def test_signed_fleet_record(
        self, token: object, fetched_at: object, expires_at: object
    ) -> None:
        """Even correctly signed (a member's bug), such a record is never adopted."""
        raw = fleet_record(token, fetched_at, expires_at)
        with pytest.raises(RejectedRecord):
            Shared.from_json(raw, credential=CREDENTIAL, key=KEY, now=NOW)

    @pytest.mark.parametrize("token", BAD_TOKENS)
    def test_wechat_reply(self, token: object) -> None:
        """A WeChat reply with such a token is malformed: retried, never written."""
        with pytest.raises(MalformedResponse):
            parse_token({"access_token": token, "expires_in": 7200}, fetched_at=NOW)

    @pytest.mark.parametrize("expires_in", [86401, 10**15 - NOW])
    def test_wechat_lifetime(self, expires_in: int) -> None:
        """A WeChat reply promising more than a day is malformed."""
        with pytest.raises(MalformedResponse):
            parse_token({"access_token": "T", "expires_in": expires_in}, fetched_at=NOW)


def signed(**change: Any) -> dict[str, Any]:
    data = json.loads(fleet_record("TOKEN_A", float(NOW), float(NOW + 7200)))
    return dict(data | change)


class TestFleetSignature:
    """Only a record signed with the fleet key, for the key it sits under, is adopted."""

    def test_signed_round_trip(self) -> None:
        """The fleet's own record reads back as written."""
        shared = Shared.from_json(json.dumps(signed()), credential=CREDENTIAL, key=KEY, now=NOW)
        assert (shared.token, shared.expires_at, shared.version) == ("TOKEN_A", NOW + 7200, 7)

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            ("{garbage", "not valid JSON"),
            ("[1, 2]", "not a JSON object"),
            (b"\xff\xfe", "not valid JSON"),
            ('{"token": "T", "expires_at": 1, "fetched_at": 0, "version": 9}', "unsigned"),
            (json.dumps({k: v for k, v in signed().items() if k != "sig"}), "unsigned"),
            (json.dumps(signed(extra=1)), "its fields are not"),
            (json.dumps(signed(sig="0" * 64)), "signature is wrong"),
            (json.dumps(signed(sig=None)), "signature is wrong"),
            (json.dumps(signed(token="TOKEN_B")), "signature is wrong"),
            (json.dumps(signed(version=8)), "signature is wrong"),
            (json.dumps(signed(expires_at=NOW + 7201.0)), "signature is wrong"),
            (json.dumps(signed(credential="wxother:classic")), "signature is wrong"),
            (json.dumps(signed(version=True)), "version is not a positive integer"),
            (json.dumps(signed(version="7")), "version is not a positive integer"),
            (json.dumps(signed(fetched_at="0")), "not unix times"),
            (json.dumps(signed(token=["x"])), "not strings"),
        ],
    )
    def test_refused(self, raw: str | bytes, reason: str) -> None:
        """Garbage, unsigned, tampered or mistyped records are refused, saying why."""
        with pytest.raises(RejectedRecord, match=reason) as info:
            Shared.from_json(raw, credential=CREDENTIAL, key=KEY, now=NOW)
        assert "TOKEN" not in str(info.value)

    def test_another_key(self) -> None:
        """A record signed with another fleet's key (or forged without one) is refused."""
        raw = fleet_record("TOKEN_A", float(NOW), float(NOW + 7200), key=b"x" * 32)
        with pytest.raises(RejectedRecord, match="signature is wrong"):
            Shared.from_json(raw, credential=CREDENTIAL, key=KEY, now=NOW)

    def test_copied_to_another_key(self) -> None:
        """A valid record of one app copied under another app's key is refused."""
        raw = fleet_record("TOKEN_A", float(NOW), float(NOW + 7200))
        with pytest.raises(RejectedRecord, match="signed for another credential"):
            Shared.from_json(raw, credential="wxfedcba9876543210:classic", key=KEY, now=NOW)
        with pytest.raises(RejectedRecord, match="signed for another credential"):
            Shared.from_json(raw, credential=f"{CREDENTIAL}:jsapi", key=KEY, now=NOW)

    def test_token_not_in_repr(self) -> None:
        """A record's repr never shows its token."""
        shared = Shared.from_json(json.dumps(signed()), credential=CREDENTIAL, key=KEY, now=NOW)
        assert "TOKEN_A" not in repr(shared)
