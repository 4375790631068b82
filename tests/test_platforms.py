"""Third-party platforms' parts, in process: the vault, due times, the verify ticket, the book."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fakes import T0, VirtualClock

from wxtokend import logs
from wxtokend.config import AppConfig
from wxtokend.errcodes import Errcode, error_for
from wxtokend.errors import ReauthorizationNeeded, StateFileError
from wxtokend.kinds.base import Call
from wxtokend.kinds.component import PLATFORM_ERRCODES
from wxtokend.platforms.authorizers import AuthorizerBook
from wxtokend.platforms.calls import Sender
from wxtokend.platforms.due import DueTimes
from wxtokend.platforms.vault import Grant, PushedTicket, Vault
from wxtokend.platforms.verify import VerifyTicket
from wxtokend.redact import Secret
from wxtokend.schedule import Policy
from wxtokend.status import AppStatus, Passive
from wxtokend.store import TokenStore

COMPONENT = "wxc0c0c0c0c0c0c0c0"
A1, A2, A3 = (f"wx{i:016x}" for i in (1, 2, 3))


def _app() -> AppConfig:
    return AppConfig(
        appid=COMPONENT,
        name="component_access_token",
        grant="classic",
        secret=Secret("COMPONENT_SECRET_0123456789abcdef"),
        secret_source="component_appsecret_file /etc/x",
    )


class FakeComponent:
    """The component loop as the book sees it (kinds.base.Dependency)."""

    def __init__(self) -> None:
        self.token = "COMPONENT_TOKEN_1"
        self.reports: list[str | None] = []

    @property
    def record(self) -> Any:
        return type("Held", (), {"access_token": self.token})()

    def has_valid_token(self) -> bool:
        return True

    def status(self) -> AppStatus:
        raise NotImplementedError

    async def until_valid(self, within: float | None) -> bool:
        return True

    async def report_rejected(
        self, *, token: str | None = None, allow_force: bool = True, internal: bool = False
    ) -> Passive:
        self.reports.append(token)
        self.token = "COMPONENT_TOKEN_2"
        return Passive(result="refreshed", status=None)  # type: ignore[arg-type]


class FakeWire:
    """api_authorizer_token as WeChat answers it; ``errcodes`` maps an appid to a refusal."""

    def __init__(self, clock: VirtualClock, *, rotate: bool = True) -> None:
        self.clock = clock
        self.rotate = rotate
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []
        self.errcodes: dict[str, int] = {}
        self.issued = 0
        self.before_reply: Any = None

    async def send(self, app: AppConfig, call: Call, table: Mapping[int, Errcode]) -> Any:
        body = dict(call.body or {})
        self.calls.append((call.endpoint, body))
        self.times.append(self.clock.now())
        appid = body.get("authorizer_appid", "")
        if appid in self.errcodes:
            raise error_for(self.errcodes[appid], "refused", app, table)
        self.issued += 1
        refresh = body["authorizer_refresh_token"]
        if self.rotate:
            refresh = f"REFRESH_{appid}_{self.issued}"
        if self.before_reply is not None:
            self.before_reply(appid)
        return {
            "authorizer_access_token": f"AUTH_TOKEN_{appid}_{self.issued}",
            "expires_in": 7200,
            "authorizer_refresh_token": refresh,
        }


def _book(
    tmp_path: Path, clock: VirtualClock, wire: FakeWire, component: FakeComponent | None = None
) -> tuple[AuthorizerBook, Vault, TokenStore]:
    vault = Vault(tmp_path / "state" / "agency")
    vault.prepare()
    store = TokenStore(directory=tmp_path / "out" / "agency", file_mode=0o640)
    store.ensure_directory()
    book = AuthorizerBook(
        sender=Sender(wire, _app()),
        component=component or FakeComponent(),
        vault=vault,
        store=store,
        clock=clock,
        rng=random.Random(1),
        policy=Policy(),
        semaphore=asyncio.Semaphore(4),
        log=logs.get_logger(),
        workers=2,
    )
    return book, vault, store


async def _run_until(book: AuthorizerBook, done: Any) -> None:
    """Run the book until ``done()``; virtual time jumps while it idles."""
    task = asyncio.create_task(book.run())
    for _ in range(200_000):
        await asyncio.sleep(0)
        if done():
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done(), "the book never got there"


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level="debug", stream=stream, json=True)
    return stream


class TestVault:
    """Refresh tokens and the ticket live in a 0700 directory, in 0600 files, checked on read."""

    def test_modes_and_round_trip(self, tmp_path: Path) -> None:
        """What is saved comes back; nobody but the owner can read it."""
        vault = Vault(tmp_path / "state" / "agency")
        vault.prepare()
        vault.save_grant(Grant(appid=A1, refresh_token="REFRESH_1", updated_at=T0))
        vault.save_ticket(PushedTicket(ticket="TICKET_1", created_at=T0))
        assert stat.S_IMODE(os.stat(vault.directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(vault.journal.path).st_mode) == 0o600
        grants, problems = vault.grants()
        assert [(g.appid, g.refresh_token) for g in grants] == [(A1, "REFRESH_1")]
        assert problems == []
        ticket = vault.load_ticket()
        assert ticket is not None
        assert ticket.ticket == "TICKET_1"

    @pytest.mark.parametrize(
        "content",
        [
            b"not json",
            b"[]",
            json.dumps({"appid": "wx/../x", "refresh_token": "R", "updated_at": 1}).encode(),
            json.dumps({"appid": A1, "refresh_token": "has space", "updated_at": 1}).encode(),
            json.dumps({"appid": A1, "refresh_token": "R", "updated_at": True}).encode(),
            b'{"appid": "' + b"x" * 3000 + b'"}',
        ],
    )
    def test_a_bad_line_is_refused_by_number(self, tmp_path: Path, content: bytes) -> None:
        """Garbage or a bad value: a problem line naming the line, never a secret; the
        lines around it still count."""
        vault = Vault(tmp_path / "agency")
        vault.prepare()
        vault.save_grant(Grant(appid=A1, refresh_token="GOOD_1", updated_at=T0))
        with vault.journal.path.open("ab") as journal:
            journal.write(content + b"\n")
        vault.save_grant(Grant(appid=A2, refresh_token="GOOD_2", updated_at=T0))
        grants, problems = Vault(tmp_path / "agency").grants()
        assert {g.appid: g.refresh_token for g in grants} == {A1: "GOOD_1", A2: "GOOD_2"}
        assert len(problems) == 1
        assert "grants.jsonl: line 2" in problems[0]
        assert "has space" not in problems[0]

    def test_a_bad_ticket_file_is_a_state_file_error(self, tmp_path: Path) -> None:
        vault = Vault(tmp_path / "agency")
        vault.prepare()
        (vault.directory / "component_verify_ticket.json").write_text('{"ticket": ""}')
        with pytest.raises(StateFileError, match="ticket"):
            vault.load_ticket()


@pytest.mark.anyio
class TestDueTimes:
    """Keys come out when due, each once, however often they were re-planned."""

    async def test_order_and_replans(self) -> None:
        clock = VirtualClock()
        due = DueTimes(clock=clock, workers=1)
        seen: list[tuple[str, float]] = []

        async def work(key: str, at: float) -> None:
            seen.append((key, clock.now()))

        due.plan("b", T0 + 20)
        due.plan("a", T0 + 10)
        due.plan("c", float("inf"))  # never
        task = asyncio.create_task(due.run(work))
        for _ in range(200):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [k for k, _ in seen[:2]] == ["a", "b"]
        assert "c" not in {k for k, _ in seen}
        assert seen[0][1] >= T0 + 10
        assert seen[1][1] >= T0 + 20


@pytest.mark.anyio
class TestVerifyTicket:
    """The newest pushed ticket is kept durably; a refused one is waited past."""

    async def test_newest_wins_and_refusal_waits_for_a_push(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        vault = Vault(tmp_path / "agency")
        vault.prepare()
        holder = VerifyTicket(
            vault, name="agency", component_appid=COMPONENT, clock=clock, log=None
        )
        assert not holder.has_valid_token()
        assert holder.accept(PushedTicket(ticket="T2", created_at=T0))
        assert not holder.accept(PushedTicket(ticket="T1", created_at=T0 - 600))  # older
        assert holder.has_valid_token()
        assert holder.record is not None
        assert holder.record.access_token == "T2"
        await holder.report_rejected(token="T2", internal=True)
        assert not holder.has_valid_token()
        assert holder.accept(PushedTicket(ticket="T3", created_at=T0 + 600))
        assert holder.has_valid_token()
        again = VerifyTicket(vault, name="agency", component_appid=COMPONENT, clock=clock, log=None)
        again.load()
        assert again.record is not None
        assert again.record.access_token == "T3"
        clock.t += 13 * 3600
        assert not again.has_valid_token()  # about 12 hours


@pytest.mark.anyio
class TestAuthorizerBook:
    """Refresh tokens are kept before anything else; one dead authorizer stops nobody."""

    async def test_refresh_rotates_and_keeps_the_refresh_token_first(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        book, vault, store = _book(tmp_path, clock, wire)
        vault.save_grant(Grant(appid=A1, refresh_token="REFRESH_A1_0", updated_at=T0))

        original_save = store.save

        def checked_save(record: Any) -> bool:
            grants, _ = vault.grants()
            assert {g.appid: g.refresh_token for g in grants}[record.appid] == book.entries[
                record.appid
            ].refresh_token
            return original_save(record)

        store.save = checked_save  # type: ignore[method-assign]
        book.adopt_stored(())
        on_disk = lambda: not (book.entries[A1].unsaved or book.entries[A1].unwritten)  # noqa: E731
        await _run_until(book, lambda: book.refreshes >= 3 and on_disk())
        grants, _ = vault.grants()
        assert grants[0].refresh_token == f"REFRESH_{A1}_{book.refreshes}"
        record = store.load(A1, now=clock.now())
        assert record is not None
        assert record.access_token == f"AUTH_TOKEN_{A1}_{book.refreshes}"
        gaps = [b - a for a, b in zip(wire.times, wire.times[1:], strict=False)]
        assert all(gap >= 0.75 * 7200 for gap in gaps)  # ahead of expiry, not a storm
        sent = [c[1]["authorizer_refresh_token"] for c in wire.calls]
        assert sent[1:] == [f"REFRESH_{A1}_{i}" for i in range(1, len(sent))]  # the newest

    async def test_61023_leaves_the_others_alone(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        book, vault, _ = _book(tmp_path, clock, wire)
        for appid in (A1, A2, A3):
            vault.save_grant(Grant(appid=appid, refresh_token=f"R_{appid}", updated_at=T0))
        wire.errcodes[A2] = 61023
        book.adopt_stored(())

        def calls_for_each() -> list[str]:
            return [c[1]["authorizer_appid"] for c in wire.calls]

        await _run_until(book, lambda: min(calls_for_each().count(a) for a in (A1, A3)) >= 4)
        calls_for = calls_for_each()
        assert calls_for.count(A2) == 1  # refused once, never retried
        assert calls_for.count(A1) >= 4
        assert calls_for.count(A3) >= 4
        assert isinstance(book.entries[A2].error, ReauthorizationNeeded)
        assert book.counts() == {"total": 3, "valid": 2, "needs_authorization": 1, "pending": 0}
        assert "needs re-authorization" in log_stream.getvalue()
        assert f"R_{A2}" not in log_stream.getvalue()

    async def test_a_rejected_component_token_is_reported_once(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        component = FakeComponent()
        book, vault, store = _book(tmp_path, clock, wire, component)
        vault.save_grant(Grant(appid=A1, refresh_token="R1", updated_at=T0))
        wire.errcodes[A1] = 42001
        book.adopt_stored(())
        await _run_until(book, lambda: component.reports)
        assert component.reports == ["COMPONENT_TOKEN_1"]
        del wire.errcodes[A1]
        await _run_until(book, lambda: book.refreshes >= 1)
        record = store.load(A1, now=clock.now())
        assert record is not None  # retried with the refreshed component token
        assert wire.calls[-1][0].endswith("api_authorizer_token")

    async def test_restart_with_valid_files_costs_no_call(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        book, vault, _ = _book(tmp_path, clock, wire)
        vault.save_grant(Grant(appid=A1, refresh_token="R1", updated_at=T0))
        book.adopt_stored(())
        await _run_until(book, lambda: book.refreshes == 1)
        assert len(wire.calls) == 1
        clock.t = wire.times[0] + 60
        again, _, _ = _book(tmp_path, clock, wire)
        again.adopt_stored(())
        assert len(wire.calls) == 1  # the file's token is still valid: adopted
        assert again.entries[A1].next_at > clock.now() + 3600
        assert again.counts()["valid"] == 1

    async def test_expected_authorizer_without_refresh_token_needs_authorization(
        self, tmp_path: Path
    ) -> None:
        clock = VirtualClock()
        book, _, _ = _book(tmp_path, clock, FakeWire(clock))
        book.adopt_stored((A3,))
        assert book.counts()["needs_authorization"] == 1


class TestErrcodes:
    """The platform's errcodes say what to do, and 61023 is its own kind of error."""

    @pytest.mark.parametrize("errcode", [61003, 61004, 61005, 61006, 61023])
    def test_each_has_a_fix(self, errcode: int) -> None:
        row = PLATFORM_ERRCODES[errcode]
        assert row.fix.strip()
        error = error_for(errcode, "msg", _app(), PLATFORM_ERRCODES)
        assert error.errcode == errcode
        assert "SECRET" not in str(error)
        assert error.hint
