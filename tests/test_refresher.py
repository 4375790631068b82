"""One app's refresh loop, driven on a virtual clock against scripted WeChat answers."""

from __future__ import annotations

import asyncio
import io
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import T0, ScriptedWeChat, VirtualClock

from wxtokend import logs
from wxtokend.clock import SystemClock
from wxtokend.config import AppConfig, Grant
from wxtokend.errors import FatalConfigError, TransientError
from wxtokend.redact import Secret, fingerprint
from wxtokend.refresher import Refresher
from wxtokend.schedule import Policy
from wxtokend.store import Record, TokenStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level="debug", stream=stream, json=True)
    return stream


API_BASE = "https://api.weixin.qq.com"


def make_app(grant: Grant = "classic", name: str = "shop") -> AppConfig:
    return AppConfig(
        api_base=API_BASE,
        appid="wx0123456789abcdef",
        name=name,
        grant=grant,
        secret=Secret("SECRET_0123456789abcdef0123456789"),
        secret_source="secret_file /etc/wxtokend/secrets/shop",
    )


def make_refresher(
    tmp_path: Path,
    clock: VirtualClock,
    source: ScriptedWeChat,
    *,
    grant: Grant = "classic",
    window: float = 300,
    semaphore: asyncio.Semaphore | None = None,
) -> tuple[Refresher, TokenStore]:
    store = TokenStore(directory=tmp_path, file_mode=0o640)
    refresher = Refresher(
        make_app(grant),
        source=source,
        store=store,
        clock=clock,
        rng=random.Random(1),
        policy=Policy(stable_window=window),
        semaphore=semaphore or asyncio.Semaphore(4),
    )
    return refresher, store


async def run_until(refresher: Refresher, done: Callable[[], bool]) -> None:
    """Run the loop until ``done()``; the virtual clock makes each turn instant.

    Turns are bounded in real time too: file writes finish in a worker thread.
    """
    task = asyncio.create_task(refresher.run())
    deadline = time.monotonic() + 30
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 - a clock turn
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done(), "the loop never reached the expected state"


@pytest.mark.anyio
class TestSteadyState:
    """Healthy apps are refreshed ahead of expiry, about once per lifetime."""

    async def test_classic_calls_per_lifetime(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """Over 200 lifetimes a classic app makes 1.15-1.3 calls per lifetime."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, _ = make_refresher(tmp_path, clock, wechat)
        await run_until(refresher, lambda: clock.now() >= T0 + 200 * 7200)
        ratio = len(wechat.calls) / 200
        assert 1.15 <= ratio <= 1.3

    async def test_stable_calls_per_lifetime(self, tmp_path: Path, log_stream: io.StringIO) -> None:
        """A stable app calls about once per lifetime (minimum is 1)."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, _ = make_refresher(tmp_path, clock, wechat, grant="stable")
        await run_until(refresher, lambda: clock.now() >= T0 + 200 * 7200)
        ratio = len(wechat.calls) / 200
        assert 1.0 <= ratio <= 1.1

    @pytest.mark.parametrize("grant", ["classic", "stable"])
    async def test_file_always_holds_unexpired_token(
        self, tmp_path: Path, log_stream: io.StringIO, grant: Grant
    ) -> None:
        """At every instant the loop wakes, the file's token has life left."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock, lifetime=20, window=3)
        refresher, _ = make_refresher(tmp_path, clock, wechat, grant=grant, window=3)
        seen = set()

        def check_file() -> bool:
            path = tmp_path / "shop"
            if path.exists():
                token = path.read_text()
                assert clock.now() < wechat.expiry[token], "the file's token expired"
                seen.add(token)
            return clock.now() >= T0 + 100 * 20

        await run_until(refresher, check_file)
        assert len(seen) >= 90

    async def test_stable_unchanged_retries_fast(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """If WeChat has not renewed yet inside the window, the next call comes within seconds."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock, window=200)  # WeChat's real window smaller than ours
        refresher, _ = make_refresher(tmp_path, clock, wechat, grant="stable", window=300)
        await run_until(refresher, lambda: len(wechat.calls) >= 3)
        gaps = [b - a for a, b in zip(wechat.calls[1:], wechat.calls[2:], strict=False)]
        assert all(1.0 <= gap <= 10.0 for gap in gaps)
        assert refresher.record is not None
        assert refresher.record.access_token == wechat.current


@pytest.mark.anyio
class TestFailures:
    """Failures back off by class and never touch a valid token file."""

    async def test_transient_backs_off_and_keeps_file(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """Transient errors after the first token leave the file as it was, then recover."""
        clock = VirtualClock()
        failures = {n: TransientError("HTTP 502 from WeChat") for n in range(2, 6)}
        wechat = ScriptedWeChat(clock, failures=failures)
        refresher, _ = make_refresher(tmp_path, clock, wechat)
        await run_until(refresher, lambda: len(wechat.calls) >= 2)
        first = (tmp_path / "shop").read_bytes()
        await run_until(refresher, lambda: len(wechat.calls) >= 5)
        assert (tmp_path / "shop").read_bytes() == first
        assert refresher.failures == 4
        gaps = [b - a for a, b in zip(wechat.calls[1:], wechat.calls[2:], strict=False)]
        assert all(gap >= 1.0 for gap in gaps)
        await run_until(refresher, lambda: refresher.failures == 0)
        assert (tmp_path / "shop").read_bytes() != first

    async def test_fatal_waits_ten_minutes(self, tmp_path: Path, log_stream: io.StringIO) -> None:
        """A wrong secret is retried at most every 10 minutes, with the hint in the log."""
        clock = VirtualClock()
        bad = FatalConfigError("errcode 40125", errcode=40125, fix="copy the AppSecret")
        wechat = ScriptedWeChat(clock, failures={n: bad for n in range(1, 10)})
        refresher, _ = make_refresher(tmp_path, clock, wechat)
        await run_until(refresher, lambda: len(wechat.calls) >= 4)
        gaps = [b - a for a, b in zip(wechat.calls, wechat.calls[1:], strict=False)]
        assert all(gap >= 600 for gap in gaps)
        events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
        fatal = [e for e in events if e.get("outcome") == "fatal"]
        assert fatal
        assert fatal[0]["hint"] == "copy the AppSecret; retrying every 10 min"
        assert fatal[0]["errcode"] == 40125
        assert not (tmp_path / "shop").exists()

    async def test_expired_token_stays_and_is_marked(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """A token that expires without replacement stays on disk; its JSON says expired."""
        clock = VirtualClock()
        bad = FatalConfigError("errcode 40164", errcode=40164, fix="whitelist 1.2.3.4")
        wechat = ScriptedWeChat(clock, lifetime=60, failures={n: bad for n in range(2, 100)})
        refresher, store = make_refresher(tmp_path, clock, wechat)
        await run_until(refresher, lambda: clock.now() > T0 + 120)
        token = (tmp_path / "shop").read_text()
        assert token.startswith("TOKEN_000001")
        saved = store.load("shop", now=clock.now())
        assert saved is not None
        assert saved.expired is True
        assert refresher.status().state == "expired"
        assert "token expired without a replacement" in log_stream.getvalue()


@pytest.mark.anyio
class TestRestart:
    """A token left by an earlier run is reused without calling WeChat."""

    async def test_reuses_valid_token_with_zero_calls(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """Before its refresh point, a stored token is adopted and nothing is fetched."""
        clock = VirtualClock()
        store = TokenStore(directory=tmp_path, file_mode=0o640)
        store.save(
            Record(
                appid="wx0123456789abcdef",
                name="shop",
                grant="classic",
                access_token="TOKEN_OLD",
                expires_at=int(T0) + 6000,
                fetched_at=int(T0) - 1200,
                api_base=API_BASE,
            )
        )
        wechat = ScriptedWeChat(clock)
        refresher, _ = make_refresher(tmp_path, clock, wechat)
        assert refresher.adopt_stored() is True
        await run_until(refresher, lambda: bool(wechat.calls))
        # Nothing until the refresh point: 75-85 % of the lifetime after the old fetch.
        assert wechat.calls[0] >= T0 - 1200 + 0.75 * 7200
        assert '"outcome": "reused"' in log_stream.getvalue()

    @pytest.mark.parametrize(
        ("change", "message", "kept"),
        [
            ({"appid": "wx_other"}, "state file removed", False),
            ({"grant": "stable"}, "state file not reused", True),
            ({"api_base": "http://127.0.0.1:1"}, "state file not reused", True),
            ({}, "state file not reused", True),  # written before api_base was recorded
        ],
    )
    async def test_foreign_state_not_adopted(
        self,
        tmp_path: Path,
        log_stream: io.StringIO,
        change: dict[str, str],
        message: str,
        kept: bool,
    ) -> None:
        """Another appid's token is removed; another grant's or API's is replaced, not reused."""
        base = {
            "appid": "wx0123456789abcdef",
            "name": "shop",
            "grant": "classic",
            "access_token": "TOKEN_OLD",
            "expires_at": int(T0) + 6000,
            "fetched_at": int(T0) - 1200,
        }
        if change:
            base["api_base"] = API_BASE
        (tmp_path / "shop.json").write_text(json.dumps({**base, **change}))
        (tmp_path / "shop").write_text("TOKEN_OLD")
        refresher, _ = make_refresher(tmp_path, VirtualClock(), ScriptedWeChat(VirtualClock()))
        assert refresher.adopt_stored() is False
        assert message in log_stream.getvalue()
        assert (tmp_path / "shop").exists() is kept
        assert (tmp_path / "shop.json").exists() is kept

    async def test_interrupted_classic_fetch_refreshes_now(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """A classic fetch cut short may have killed the stored token: refresh at once."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, store = make_refresher(tmp_path, clock, wechat)
        await refresher.refresh()
        assert refresher.record is not None
        clock.t += 6000  # past the refresh point: the next fetch is being made...
        wechat.gate = asyncio.Event()  # ...and hangs until the process is killed
        task = asyncio.create_task(refresher.refresh())
        await asyncio.sleep(0.01)
        saved = store.load("shop", now=clock.now())
        assert saved is not None
        assert saved.interrupted()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        restarted, _ = make_refresher(tmp_path, clock, wechat)
        assert restarted.adopt_stored() is True
        assert restarted.next_at == clock.now()

    async def test_clean_stop_is_not_interrupted(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """After a completed classic refresh the stored record carries no interruption mark."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, store = make_refresher(tmp_path, clock, wechat)
        await refresher.refresh()
        clock.t += 6000
        await refresher.refresh()
        saved = store.load("shop", now=clock.now())
        assert saved is not None
        assert not saved.interrupted()

    async def test_corrupt_state_ignored(self, tmp_path: Path, log_stream: io.StringIO) -> None:
        """A corrupt state file is ignored with a warning, and then replaced."""
        (tmp_path / "shop.json").write_text("{garbage")
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, store = make_refresher(tmp_path, clock, wechat)
        assert refresher.adopt_stored() is False
        assert "state file ignored" in log_stream.getvalue()
        await run_until(refresher, lambda: bool(wechat.calls))
        assert store.load("shop", now=clock.now()) is not None

    @pytest.mark.parametrize(
        ("token", "fetched_at", "expires_at"),
        [
            ("evil token\nwith newline", 0, 7200),
            ("T" * 613, 0, 7200),
            ("TOKEN_FAR", 0, 10**15),
            ("TOKEN_SOON", 3600, 10800),
        ],
    )
    async def test_invalid_state_file_refused(
        self, tmp_path: Path, token: str, fetched_at: int, expires_at: int
    ) -> None:
        """A state file failing the one token check is never served: counted, then replaced."""
        body = {"appid": make_app("classic").appid, "name": "shop", "grant": "classic"}
        body |= {"access_token": token, "fetched_at": int(T0) + fetched_at}
        body |= {"expires_at": expires_at if expires_at > 10**12 else int(T0) + expires_at}
        (tmp_path / "shop.json").write_text(json.dumps(body))
        (tmp_path / "shop").write_text(token)
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, store = make_refresher(tmp_path, clock, wechat)
        assert refresher.adopt_stored() is False
        metric = refresher._metrics.registry.get_sample_value(
            "wxtokend_rejected_records_total", {"source": "state_file"}
        )
        assert metric == 1
        await run_until(refresher, lambda: bool(wechat.calls))
        saved = store.load("shop", now=clock.now())
        assert saved is not None
        assert saved.access_token != token
        assert (tmp_path / "shop").read_text() == saved.access_token

    async def test_expired_state_not_adopted(self, tmp_path: Path, log_stream: io.StringIO) -> None:
        """An expired stored token is not adopted: the first step fetches."""
        store = TokenStore(directory=tmp_path, file_mode=0o640)
        store.save(
            Record(
                appid="wx0123456789abcdef",
                name="shop",
                grant="classic",
                access_token="TOKEN_OLD",
                expires_at=int(T0) - 1,
                fetched_at=int(T0) - 7201,
                api_base=API_BASE,
            )
        )
        refresher, _ = make_refresher(tmp_path, VirtualClock(), ScriptedWeChat(VirtualClock()))
        assert refresher.adopt_stored() is False


@pytest.mark.anyio
class TestConcurrency:
    """One fetch in flight per app; the semaphore bounds the whole daemon."""

    async def test_one_fetch_in_flight_per_app(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """Ten concurrent refresh() calls for one app never overlap upstream."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        wechat.gate = asyncio.Event()
        refresher, _ = make_refresher(tmp_path, clock, wechat)
        tasks = [asyncio.create_task(refresher.refresh()) for _ in range(10)]
        await asyncio.sleep(0.01)
        wechat.gate.set()
        await asyncio.gather(*tasks)
        assert wechat.max_in_flight == 1

    async def test_semaphore_bounds_apps(self, tmp_path: Path, log_stream: io.StringIO) -> None:
        """Twenty apps sharing a semaphore of 3 never have more than 3 calls in flight."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        wechat.gate = asyncio.Event()
        semaphore = asyncio.Semaphore(3)
        refreshers = [
            Refresher(
                make_app(name=f"app{i}"),
                source=wechat,
                store=TokenStore(directory=tmp_path, file_mode=0o640),
                clock=clock,
                rng=random.Random(i),
                policy=Policy(),
                semaphore=semaphore,
            )
            for i in range(20)
        ]
        tasks = [asyncio.create_task(r.refresh()) for r in refreshers]
        await asyncio.sleep(0.01)
        assert wechat.in_flight == 3
        wechat.gate.set()
        await asyncio.gather(*tasks)
        assert wechat.max_in_flight == 3
        assert len(wechat.calls) == 20


@pytest.mark.anyio
class TestWritesOffTheLoop:
    """File writes run in a thread; the schedule and readiness still follow them exactly."""

    async def test_passive_refresh_replans_the_sleeping_loop(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """After a passive refresh the loop sleeps to the new token's refresh point, not the
        old one (a fetch at the old one would kill the token just issued)."""
        clock = SystemClock()  # real time: the loop must sleep while the report arrives
        wechat = ScriptedWeChat(clock, lifetime=4)  # type: ignore[arg-type]
        refresher, _ = make_refresher(tmp_path, clock, wechat)  # type: ignore[arg-type]
        task = asyncio.create_task(refresher.run())
        try:
            start = clock.now()
            while not wechat.calls:  # noqa: ASYNC110 - real time, a few ms
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            assert refresher.record is not None
            answer = await refresher.report_rejected(token=refresher.record.access_token)
            assert answer.result == "refreshed"
            # The old refresh point was 3.0-3.4 s after the start, the new one is >= 3.5 s.
            await asyncio.sleep(max(0.0, start + 3.45 - clock.now()))
            assert len(wechat.calls) == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def test_ready_only_once_written(self, tmp_path: Path, log_stream: io.StringIO) -> None:
        """A fetched token counts as on disk only after its files are written."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, store = make_refresher(tmp_path, clock, wechat)
        gate = threading.Event()
        real_save = store.save

        def slow_save(record: Record) -> bool:
            gate.wait(5)
            return real_save(record)

        store.save = slow_save  # type: ignore[method-assign]
        fetch = asyncio.create_task(refresher.refresh())
        while refresher.record is None:  # noqa: ASYNC110 - until the fetch is back
            await asyncio.sleep(0.001)
        assert refresher.has_valid_token()
        assert not refresher.on_disk()
        gate.set()
        assert await fetch
        assert refresher.on_disk()

    async def test_cancelled_twice_still_waits_for_the_write(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """Cancelling a writer (even twice) returns only after its thread has finished."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, store = make_refresher(tmp_path, clock, wechat)
        gate, finished = threading.Event(), threading.Event()
        real_save = store.save

        def slow_save(record: Record) -> bool:
            gate.wait(5)
            result = real_save(record)
            finished.set()
            return result

        store.save = slow_save  # type: ignore[method-assign]
        fetch = asyncio.create_task(refresher.refresh())
        while refresher.record is None:  # noqa: ASYNC110 - until the write has started
            await asyncio.sleep(0.001)
        for _ in range(2):
            fetch.cancel()
            await asyncio.sleep(0.01)
        assert not fetch.done()  # still waiting for the thread
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        assert finished.is_set()

    async def test_a_hanging_write_is_stuck(self, tmp_path: Path, log_stream: io.StringIO) -> None:
        """A file write that hangs (a stalled disk) is reported by stuck(), for /healthz."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, store = make_refresher(tmp_path, clock, wechat)
        gate = threading.Event()
        store.save = lambda record: gate.wait(5)  # type: ignore[method-assign, assignment, return-value]
        fetch = asyncio.create_task(refresher.refresh())
        while refresher.writing_since is None:  # noqa: ASYNC110 - until the write has started
            await asyncio.sleep(0.001)
        assert refresher.stuck(fetch_limit=10) is None
        clock.t += 100
        assert refresher.stuck(fetch_limit=10) == "a file write has been running for 100 s"
        gate.set()
        await fetch


class SteppingClock(VirtualClock):
    """A wall clock that an administrator steps back one hour during the first sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.stepped = False

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        if not self.stepped and seconds > 0:
            self.stepped = True
            self.t -= 3600


@pytest.mark.anyio
class TestClockSteps:
    """A wall-clock step during a sleep neither stretches nor shrinks the wait."""

    async def test_backward_step_does_not_delay_refresh(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """Stepping the clock back an hour mid-sleep still refreshes after the planned wait."""
        clock = SteppingClock()
        wechat = ScriptedWeChat(clock)
        refresher, _ = make_refresher(tmp_path, clock, wechat)
        await refresher.refresh()
        planned_wait = refresher.next_at - clock.now()
        await run_until(refresher, lambda: len(wechat.calls) >= 2)
        # The second call happened one planned wait later in real (monotonic) time,
        # which the stepped wall clock shows as an hour earlier.
        assert wechat.calls[1] - wechat.calls[0] == pytest.approx(planned_wait - 3600)


@pytest.mark.anyio
class TestWriteFailures:
    """A token that can't be written is kept and the write retried, never refetched."""

    async def test_retry_write_without_refetch(
        self, tmp_path: Path, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After a failed write the loop rewrites the same token; WeChat is not called again."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, store = make_refresher(tmp_path, clock, wechat)
        real_save = store.save
        attempts = []

        def flaky_save(record: Record) -> bool:
            attempts.append(record.access_token)
            if len(attempts) < 3:
                raise OSError(28, "No space left on device", str(tmp_path / "shop"))
            return real_save(record)

        monkeypatch.setattr(store, "save", flaky_save)
        await run_until(refresher, lambda: len(attempts) >= 3)
        assert len(wechat.calls) == 1
        assert len(set(attempts)) == 1
        assert (tmp_path / "shop").read_text() == attempts[0]
        events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
        assert [e["outcome"] for e in events if e["event"] == "refresh"] == ["unsaved"]
        assert "No space left on device" in events[0]["error"]


@pytest.mark.anyio
class TestNoLeaks:
    """Secrets and tokens never reach the logs; fingerprints do."""

    async def test_logs_carry_fingerprints_only(
        self, tmp_path: Path, log_stream: io.StringIO
    ) -> None:
        """After fetches, failures and expiry, no token or secret appears in any log line."""
        clock = VirtualClock()
        failures = {
            3: TransientError("connection failed"),
            4: FatalConfigError("errcode 40001", errcode=40001, fix="fix"),
        }
        wechat = ScriptedWeChat(clock, lifetime=60, failures=failures)
        refresher, _ = make_refresher(tmp_path, clock, wechat)
        await run_until(refresher, lambda: len(wechat.calls) >= 6)
        text = log_stream.getvalue()
        assert wechat.expiry
        for token in wechat.expiry:
            assert token not in text
        assert "SECRET_0123456789abcdef0123456789" not in text
        assert fingerprint(next(iter(wechat.expiry))) in text

    async def test_redactor_catches_a_slip(self, tmp_path: Path, log_stream: io.StringIO) -> None:
        """A token passed into a log call by mistake is replaced before rendering."""
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock)
        refresher, _ = make_refresher(tmp_path, clock, wechat)
        await refresher.refresh()
        token = wechat.current
        assert token is not None
        logs.get_logger().info("oops", detail=f"sent access_token={token}&x=1")
        assert token not in log_stream.getvalue()
        assert "access_token=<token>&x=1" in log_stream.getvalue()
