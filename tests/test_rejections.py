"""Compare-and-refresh of a platform account's token for the API proxy (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import VirtualClock
from test_platforms import FakeWire, _book, _run_until

from wxtokend.platforms.authorizers import Authorizer
from wxtokend.platforms.rejections import MIN_INTERVAL, Rejections

A1 = "wxa000000000000001"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Book:
    """The part of AuthorizerBook used: entries, and plans that a worker carries out."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.entries = {
            A1: Authorizer(appid=A1, refresh_token="R", token="OLD", expires_at=clock.now() + 600)
        }
        self.plans: list[str] = []
        self.refreshes = 0
        self.answer = True  # whether a planned refresh brings a new token

    def plan(self, entry: Authorizer, at: float) -> None:
        self.plans.append(entry.appid)
        asyncio.get_running_loop().call_soon(self._refresh, entry)

    def _refresh(self, entry: Authorizer) -> None:
        self.refreshes += 1
        if self.answer:
            entry.token = f"NEW{self.refreshes}"


class TestRejections:
    """A rejected token is replaced once, for every caller, within a budget."""

    async def test_concurrent_callers_share_one_refresh(self) -> None:
        """Ten callers with the same rejected token: one plan, all get the new token."""
        clock = VirtualClock()
        book = Book(clock)
        rejections = Rejections(book, clock=clock)
        got = await asyncio.gather(*(rejections.rejected(A1, "OLD") for _ in range(10)))
        assert got == ["NEW1"] * 10
        assert book.plans == [A1]

    async def test_an_already_replaced_token_costs_nothing(self) -> None:
        """The caller's token is not the account's any more: the current one, no plan."""
        clock = VirtualClock()
        book = Book(clock)
        book.entries[A1].token = "CURRENT"
        assert await Rejections(book, clock=clock).rejected(A1, "OLD") == "CURRENT"
        assert book.plans == []

    async def test_one_forced_refresh_a_minute(self) -> None:
        """WeChat refusing the new token too: no second refresh within MIN_INTERVAL."""
        clock = VirtualClock()
        book = Book(clock)
        rejections = Rejections(book, clock=clock)
        assert await rejections.rejected(A1, "OLD") == "NEW1"
        assert await rejections.rejected(A1, "NEW1") is None  # budget spent
        assert book.plans == [A1]
        clock.t += MIN_INTERVAL
        assert await rejections.rejected(A1, "NEW1") == "NEW2"
        assert book.plans == [A1, A1]

    async def test_no_new_token_in_time_is_none(self) -> None:
        """A refresh that fails leaves the caller with WeChat's answer, after a bounded wait."""
        clock = VirtualClock()
        book = Book(clock)
        book.answer = False
        started = clock.now()
        assert await Rejections(book, clock=clock).rejected(A1, "OLD") is None
        assert 0 < clock.now() - started <= 16

    async def test_unknown_or_dead_accounts_are_none(self) -> None:
        """No entry, or one needing re-authorization: nothing planned."""
        clock = VirtualClock()
        book = Book(clock)
        rejections = Rejections(book, clock=clock)
        assert await rejections.rejected("wxa999999999999999", "OLD") is None
        book.entries[A1].refresh_token = None
        assert await rejections.rejected(A1, "OLD") is None
        assert book.plans == []


class TestGivingUpEarly:
    """Callers get WeChat's answer at once where no new token can come in time."""

    async def test_a_failing_account_keeps_its_backoff(self) -> None:
        """An account already failing is not hurried by a refusal: nothing planned."""
        clock = VirtualClock()
        book = Book(clock)
        entry = book.entries[A1]
        entry.failures, entry.next_at = 2, clock.now() + 30
        assert await Rejections(book, clock=clock).rejected(A1, "OLD") is None
        assert book.plans == []

    @pytest.mark.parametrize(
        "meanwhile",
        [
            # A fleet member whose turn it is not re-plans in 30-60 s: no 15 s stall.
            pytest.param(
                lambda b, c: setattr(b.entries[A1], "next_at", c.now() + 45), id="re-planned"
            ),
            pytest.param(lambda b, c: b.entries.pop(A1), id="unauthorized"),
        ],
    )
    async def test_the_wait_ends_when_no_token_can_come(
        self, meanwhile: Callable[[Book, VirtualClock], object]
    ) -> None:
        """Re-planned past the wait, or removed, while the caller waits: the wait ends."""
        clock = VirtualClock()
        book = Book(clock)
        book.answer = False
        rejections = Rejections(book, clock=clock)
        started = clock.now()

        async def change() -> None:
            await asyncio.sleep(0)
            meanwhile(book, clock)

        _, got = await asyncio.gather(change(), rejections.rejected(A1, "OLD"))
        assert got is None
        assert clock.now() - started < 1


class TestTheBookRefreshesARefusal:
    """The real AuthorizerBook: a refused token is refreshed even with writes pending."""

    async def test_pending_writes_do_not_stop_the_refresh(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        book, _, _ = _book(tmp_path, clock, wire)
        assert book.adopt_listed(A1, "LISTED")
        await _run_until(book, lambda: book.entries[A1].token is not None)
        entry = book.entries[A1]
        refused = entry.token
        assert refused is not None
        entry.unwritten = True  # a token file write failed: normally only that is retried
        calls = len(wire.calls)
        task = asyncio.create_task(book.run())
        got = await Rejections(book, clock=clock).rejected(A1, refused)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert got is not None
        assert got != refused
        assert len(wire.calls) == calls + 1
        assert entry.rejected is None
