"""WeChat's callback crypto and intake, checked against wechatpy's independent implementation."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import pytest
from fakes import VirtualClock
from wechatpy.crypto import WeChatCrypto as WechatpyCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WechatpyWorkCrypto

from wxtokend import logs
from wxtokend.callback.app import callback_app
from wxtokend.callback.crypto import Forged, MessageCrypto
from wxtokend.callback.events import (
    Authorized,
    CorpAuthorized,
    CorpCancelled,
    Event,
    Unauthorized,
    VerifyTicket,
    parse_event,
)
from wxtokend.callback.intake import Intake, Replayed
from wxtokend.errors import BadCallback

TOKEN = "wxtokendtesttoken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
COMPONENT = "wx0123456789abcdef"
SUITE = "ww0123456789abcdef"
AUTHORIZER = "wxfedcba9876543210"


def _crypto(receiver: str = COMPONENT, key: str = AES_KEY) -> MessageCrypto:
    return MessageCrypto(token=TOKEN, encoding_aes_key=key, receiver_id=receiver)


def _ticket_xml(ticket: str = "ticket@@@abc", created: int | None = None) -> str:
    created = created or int(time.time())
    return (
        f"<xml><AppId><![CDATA[{COMPONENT}]]></AppId><CreateTime>{created}</CreateTime>"
        "<InfoType><![CDATA[component_verify_ticket]]></InfoType>"
        f"<ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
    )


class TestAgainstWechatpy:
    """Our crypto and wechatpy's read each other's messages, both ways, both products."""

    @pytest.mark.parametrize(
        "message",
        [
            _ticket_xml(),
            "<xml><A>你好 企业微信</A></xml>",  # non-ASCII: lengths are in bytes
            "<xml><A>" + "x" * 5 + "</A></xml>",
            "<xml><A>" + "y" * 27 + "</A></xml>",  # around the 32-byte block
            "<xml><A>" + "z" * 1000 + "</A></xml>",
        ],
    )
    def test_open_platform_both_ways(self, message: str) -> None:
        ours, theirs = _crypto(), WechatpyCrypto(TOKEN, AES_KEY, COMPONENT)
        ts, nonce = str(int(time.time())), "nonce123"
        sealed = theirs.encrypt_message(message, nonce, ts)
        signature = _field(sealed, "MsgSignature")
        opened = ours.open(
            sealed.encode(), msg_signature=signature, timestamp=ts, nonce=nonce, now=time.time()
        )
        assert opened.decode() == message
        body, signature = ours.seal(message.encode(), timestamp=ts, nonce=nonce)
        assert theirs.decrypt_message(body.decode(), signature, ts, nonce) == message

    def test_wecom_both_ways(self) -> None:
        ours, theirs = _crypto(SUITE), WechatpyWorkCrypto(TOKEN, AES_KEY, SUITE)
        ts, nonce, message = str(int(time.time())), "n", "<xml><SuiteId>x</SuiteId></xml>"
        sealed = theirs.encrypt_message(message, nonce, ts)
        opened = ours.open(
            sealed.encode(),
            msg_signature=_field(sealed, "MsgSignature"),
            timestamp=ts,
            nonce=nonce,
            now=time.time(),
        )
        assert opened.decode() == message
        body, signature = ours.seal(message.encode(), timestamp=ts, nonce=nonce)
        assert theirs.decrypt_message(body.decode(), signature, ts, nonce) == message


def _field(xml: str, name: str) -> str:
    start = xml.index(f"<{name}>") + len(name) + 2
    value = xml[start : xml.index(f"</{name}>")]
    return value.removeprefix("<![CDATA[").removesuffix("]]>")


class TestRefusals:
    """Nothing unsigned, stale, replayed, undecryptable or foreign gets through."""

    def _sealed(self, crypto: MessageCrypto, message: str, ts: str) -> tuple[bytes, str]:
        return crypto.seal(message.encode(), timestamp=ts, nonce="n1")

    def test_bad_signature(self) -> None:
        ts = str(int(time.time()))
        body, _ = self._sealed(_crypto(), _ticket_xml(), ts)
        with pytest.raises(Forged, match="msg_signature"):
            _crypto().open(body, msg_signature="0" * 40, timestamp=ts, nonce="n1", now=time.time())

    @pytest.mark.parametrize("skew", [-400, 400])
    def test_stale_or_future_timestamp(self, skew: int) -> None:
        ts = str(int(time.time()) + skew)
        body, signature = self._sealed(_crypto(), _ticket_xml(), ts)
        with pytest.raises(Forged, match="timestamp"):
            _crypto().open(body, msg_signature=signature, timestamp=ts, nonce="n1", now=time.time())

    def test_foreign_receiver(self) -> None:
        ts = str(int(time.time()))
        body, signature = self._sealed(_crypto("wx1111111111111111"), _ticket_xml(), ts)
        with pytest.raises(Forged, match="receiver"):
            _crypto().open(body, msg_signature=signature, timestamp=ts, nonce="n1", now=time.time())

    def test_wrong_key(self) -> None:
        ts = str(int(time.time()))
        other = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210abcdefg"
        body, signature = self._sealed(_crypto(key=other), _ticket_xml(), ts)
        with pytest.raises(BadCallback):
            _crypto().open(body, msg_signature=signature, timestamp=ts, nonce="n1", now=time.time())

    @pytest.mark.parametrize(
        "encrypt", ["not base64!!", base64.b64encode(b"short").decode(), "", "QUJD"]
    )
    def test_garbage_ciphertext(self, encrypt: str) -> None:
        crypto, ts = _crypto(), str(int(time.time()))
        body = f"<xml><Encrypt>{encrypt}</Encrypt></xml>".encode()
        signature = crypto.signature(ts, "n1", encrypt)
        with pytest.raises(BadCallback):
            crypto.open(body, msg_signature=signature, timestamp=ts, nonce="n1", now=time.time())

    def test_entities_and_dtds_are_refused(self) -> None:
        bomb = (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]><xml><Encrypt>&lol2;</Encrypt></xml>'
        )
        with pytest.raises(BadCallback, match="DTD"):
            _crypto().open(
                bomb, msg_signature="x", timestamp=str(int(time.time())), nonce="n", now=time.time()
            )


class TestEvents:
    """Each event WeChat sends is read into its type; a bad value is named, not shown."""

    def test_open_platform_events(self) -> None:
        ticket = parse_event(_ticket_xml("T1", 1_700_000_000).encode(), product="open")
        assert ticket == VerifyTicket(
            receiver=COMPONENT, ticket="T1", created_at=1_700_000_000, product="open"
        )
        authorized = parse_event(
            (
                f"<xml><AppId>{COMPONENT}</AppId><CreateTime>1</CreateTime>"
                "<InfoType>updateauthorized</InfoType>"
                f"<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid>"
                "<AuthorizationCode>queryauthcode@@@x</AuthorizationCode>"
                "<AuthorizationCodeExpiredTime>1700003600</AuthorizationCodeExpiredTime>"
                "<PreAuthCode>preauthcode@@@y</PreAuthCode></xml>"
            ).encode(),
            product="open",
        )
        assert isinstance(authorized, Authorized)
        assert authorized.updated
        assert authorized.authorizer_appid == AUTHORIZER
        assert "queryauthcode" not in repr(authorized)
        gone = parse_event(
            (
                f"<xml><AppId>{COMPONENT}</AppId><InfoType>unauthorized</InfoType>"
                f"<AuthorizerAppid>{AUTHORIZER}</AuthorizerAppid></xml>"
            ).encode(),
            product="open",
        )
        assert gone == Unauthorized(receiver=COMPONENT, authorizer_appid=AUTHORIZER)
        other = (
            f"<xml><AppId>{COMPONENT}</AppId><InfoType>notify_third_fasteregister</InfoType></xml>"
        )
        assert parse_event(other.encode(), product="open") is None

    def test_wecom_events(self) -> None:
        def event(body: str) -> Event | None:
            return parse_event(
                f"<xml><SuiteId>{SUITE}</SuiteId>{body}</xml>".encode(), product="wecom"
            )

        assert isinstance(
            event(
                "<InfoType>suite_ticket</InfoType><TimeStamp>17</TimeStamp><SuiteTicket>S</SuiteTicket>"
            ),
            VerifyTicket,
        )
        assert event("<InfoType>create_auth</InfoType><AuthCode>A1</AuthCode>") == CorpAuthorized(
            receiver=SUITE, auth_code="A1"
        )
        assert event(
            "<InfoType>cancel_auth</InfoType><AuthCorpId>wwcorp000001</AuthCorpId>"
        ) == CorpCancelled(receiver=SUITE, corpid="wwcorp000001")

    @pytest.mark.parametrize(
        ("good", "bad", "field"),
        [
            ("[SECRET_TICKET]", "[SECRET TICKET with spaces]", "ComponentVerifyTicket"),
            ("<CreateTime>1700000000", "<CreateTime>soon", "CreateTime"),
            (f"[{COMPONENT}]", "[not-an-appid]", "AppId"),
        ],
    )
    def test_a_bad_value_is_named(self, good: str, bad: str, field: str) -> None:
        xml = _ticket_xml("SECRET_TICKET", 1_700_000_000)
        assert good in xml
        with pytest.raises(BadCallback, match=field) as caught:
            parse_event(xml.replace(good, bad).encode(), product="open")
        assert "SECRET" not in str(caught.value)


class TestIntake:
    """The intake checks the query, refuses replays and delivers the event."""

    def test_replay_is_refused(self) -> None:
        clock = VirtualClock(time.time())
        intake = Intake(_crypto(), product="open", clock=clock)
        ts = str(int(clock.now()))
        body, signature = _crypto().seal(_ticket_xml().encode(), timestamp=ts, nonce="n9")
        query = {"timestamp": ts, "nonce": "n9", "msg_signature": signature, "encrypt_type": "aes"}
        assert isinstance(intake.open(body, query), VerifyTicket)
        with pytest.raises(Replayed):
            intake.open(body, query)

    def test_query_must_be_complete(self) -> None:
        intake = Intake(_crypto(), product="open", clock=VirtualClock(time.time()))
        with pytest.raises(BadCallback, match="missing"):
            intake.open(b"<xml/>", {"timestamp": "1"})
        with pytest.raises(BadCallback, match="encrypt_type"):
            intake.open(b"<xml/>", {"msg_signature": "a", "nonce": "b", "encrypt_type": "raw"})


@pytest.mark.anyio
class TestListener:
    """Over HTTP: success for a good callback, 403 for forged ones, nothing else served."""

    async def test_http(self) -> None:
        stream = io.StringIO()
        logs.configure(level="debug", stream=stream, json=True)
        got: list[tuple[str, Any]] = []

        async def deliver(name: str, event: Event) -> None:
            got.append((name, event))

        clock = VirtualClock(time.time())
        counted: list[tuple[str, str]] = []
        app = callback_app(
            intakes={"agency": Intake(_crypto(), product="open", clock=clock)},
            deliver=deliver,
            count=lambda platform, result: counted.append((platform, result)),
        )
        ts = str(int(clock.now()))
        body, signature = _crypto().seal(
            _ticket_xml("TICKET_SECRET").encode(), timestamp=ts, nonce="n"
        )
        query = {"timestamp": ts, "nonce": "n", "msg_signature": signature, "encrypt_type": "aes"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cb") as http:
            ok = await http.post("/callback/agency", params=query, content=body)
            assert (ok.status_code, ok.text) == (200, "success")
            again = await http.post("/callback/agency", params=query, content=body)
            assert again.status_code == 403
            forged = await http.post(
                "/callback/agency", params={**query, "msg_signature": "0" * 40}, content=body
            )
            assert forged.status_code == 403
            assert (
                await http.post("/callback/other", params=query, content=body)
            ).status_code == 404
            assert (await http.get("/v1/apps")).status_code == 404
            malformed = await http.post("/callback/agency", params=query, content=b"<xml")
            assert malformed.status_code == 400
        assert [name for name, _ in got] == ["agency"]
        # The metric's counts; the unknown name is not one of its labels.
        assert counted == [
            ("agency", "accepted"),
            ("agency", "forged"),
            ("agency", "forged"),
            ("agency", "malformed"),
        ]
        assert "TICKET_SECRET" not in stream.getvalue()
        assert TOKEN not in stream.getvalue()
        assert AES_KEY not in stream.getvalue()
