"""The scheduler's rules, table-driven, with pinned random sources and no sleeps."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from wxtokend.errors import (
    AdminWaitError,
    DailyQuotaError,
    FatalConfigError,
    MalformedResponse,
    MinuteQuotaError,
    TransientError,
    UnknownErrcodeError,
)
from wxtokend.schedule import (
    Policy,
    backoff,
    next_minute,
    next_quota_reset,
    refresh_at,
    retry_at,
    unchanged_retry_at,
)


class Pinned:
    """An rng whose uniform(a, b) always lands at the same fraction of [a, b]."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


LOW, MID, HIGH = Pinned(0.0), Pinned(0.5), Pinned(1.0)
POLICY = Policy()
T0 = 1_800_000_000.0


class TestClassicRefresh:
    """Classic tokens are replaced after 75-85 % of their lifetime."""

    @pytest.mark.parametrize(
        ("lifetime", "rng", "expected"),
        [
            (7200, LOW, 5400.0),
            (7200, MID, 5760.0),
            (7200, HIGH, 6120.0),
            (10, LOW, 7.5),
            (10, HIGH, 8.5),
        ],
    )
    def test_fraction_of_lifetime(self, lifetime: int, rng: Pinned, expected: float) -> None:
        """The refresh point is fetched_at plus the drawn fraction of the lifetime."""
        at = refresh_at(
            now=T0, fetched_at=T0, expires_at=T0 + lifetime, grant="classic", rng=rng, policy=POLICY
        )
        assert at == pytest.approx(T0 + expected)

    def test_past_refresh_point_means_now(self) -> None:
        """A token already past its refresh point (after a restart) is refreshed at once."""
        now = T0 + 7000
        at = refresh_at(
            now=now, fetched_at=T0, expires_at=T0 + 7200, grant="classic", rng=MID, policy=POLICY
        )
        assert at == now

    def test_jitter_spreads_apps(self) -> None:
        """With a real rng, 1,000 apps fetched together refresh over a wide spread."""
        rng = random.Random(7)
        points = [
            refresh_at(
                now=T0, fetched_at=T0, expires_at=T0 + 7200, grant="classic", rng=rng, policy=POLICY
            )
            for _ in range(1000)
        ]
        assert min(points) >= T0 + 5400
        assert max(points) <= T0 + 6120
        assert max(points) - min(points) > 600
        assert len({round(p) for p in points}) > 300

    def test_calls_per_lifetime_within_target(self) -> None:
        """The mean interval keeps upstream calls per lifetime at or under 1.3."""
        lo, hi = POLICY.classic_fraction
        assert 1 / ((lo + hi) / 2) <= 1.3


class TestStableRefresh:
    """Stable tokens are renewed just inside WeChat's renewal window."""

    @pytest.mark.parametrize(
        ("lifetime", "window", "rng", "expected_before_expiry"),
        [
            (7200, 300, LOW, 285.0),
            (7200, 300, HIGH, 225.0),
            (20, 3, LOW, 2.85),
            (10, 300, LOW, 4.75),  # window clamped to half the lifetime
        ],
    )
    def test_aims_inside_window(
        self, lifetime: int, window: float, rng: Pinned, expected_before_expiry: float
    ) -> None:
        """The call lands 5-25 % into the window, so the renewal answer is a new token."""
        at = refresh_at(
            now=T0,
            fetched_at=T0,
            expires_at=T0 + lifetime,
            grant="stable",
            rng=rng,
            policy=Policy(stable_window=window),
        )
        assert T0 + lifetime - at == pytest.approx(expected_before_expiry)

    def test_never_before_fetch(self) -> None:
        """Even for the shortest lifetimes the refresh point is after the fetch."""
        for lifetime in (10, 11, 30, 599, 600, 7200):
            at = refresh_at(
                now=T0,
                fetched_at=T0,
                expires_at=T0 + lifetime,
                grant="stable",
                rng=LOW,
                policy=POLICY,
            )
            assert T0 < at < T0 + lifetime

    @pytest.mark.parametrize(("window", "low", "high"), [(300, 5.0, 10.0), (3, 1.0, 1.0)])
    def test_unchanged_inside_window_retries_fast(
        self, window: float, low: float, high: float
    ) -> None:
        """Inside the window with the same token, the next try comes soon, never under 1 s."""
        policy = Policy(stable_window=window)
        now = T0 + 7200 - window / 2
        for rng, expected in ((LOW, low), (HIGH, high)):
            at = unchanged_retry_at(
                now=now, fetched_at=T0, expires_at=T0 + 7200, rng=rng, policy=policy
            )
            assert at - now == pytest.approx(expected)

    def test_unchanged_near_expiry_keeps_tries_in_hand(self) -> None:
        """With 6 s left and a 300 s window, the retry comes within a third of what is left."""
        now = T0 + 7200 - 6
        at = unchanged_retry_at(
            now=now, fetched_at=T0, expires_at=T0 + 7200, rng=HIGH, policy=POLICY
        )
        assert at - now == pytest.approx(2.0)
        late = T0 + 7200 - 1.5
        at = unchanged_retry_at(
            now=late, fetched_at=T0, expires_at=T0 + 7200, rng=HIGH, policy=POLICY
        )
        assert at - late == pytest.approx(1.0)  # never under the one-second floor

    def test_unchanged_before_window_aims_inside_it(self) -> None:
        """Same token before our window (clock ahead of WeChat's): aim inside the window."""
        now = T0 + 1000
        at = unchanged_retry_at(
            now=now, fetched_at=T0, expires_at=T0 + 7200, rng=LOW, policy=POLICY
        )
        assert T0 + 7200 - at == pytest.approx(285.0)


class TestBackoff:
    """Capped exponential backoff with full jitter and a one-second floor."""

    @pytest.mark.parametrize(
        ("attempt", "rng", "expected"),
        [
            (1, HIGH, 1.0),
            (2, HIGH, 2.0),
            (3, HIGH, 4.0),
            (7, HIGH, 60.0),
            (200, HIGH, 60.0),
            (5, MID, 8.0),
            (5, LOW, 1.0),
        ],
    )
    def test_table(self, attempt: int, rng: Pinned, expected: float) -> None:
        """The ceiling doubles per attempt up to the cap; the draw is floored at 1 s."""
        assert backoff(attempt, rng, base=1.0, cap=60.0, floor=1.0) == expected

    def test_full_jitter_spreads(self) -> None:
        """Draws cover the whole [floor, ceiling] range rather than clustering at the top."""
        rng = random.Random(3)
        draws = [backoff(6, rng, base=1.0, cap=60.0, floor=1.0) for _ in range(2000)]
        assert min(draws) == 1.0
        assert 30.0 < max(draws) <= 32.0
        assert 12 < sum(draws) / len(draws) < 20


class TestRetryAfterErrors:
    """Each error class waits as WeChat asks."""

    def test_transient_backs_off(self) -> None:
        """Transient failures use the exponential backoff."""
        at = retry_at(
            now=T0, error=TransientError("x"), attempt=3, rng=HIGH, policy=POLICY, expires_at=None
        )
        assert at - T0 == 4.0

    def test_malformed_is_transient(self) -> None:
        """A malformed answer is retried like any transient failure."""
        at = retry_at(
            now=T0,
            error=MalformedResponse("x"),
            attempt=1,
            rng=HIGH,
            policy=POLICY,
            expires_at=None,
        )
        assert at - T0 == 1.0

    def test_transient_keeps_tries_before_expiry(self) -> None:
        """Near expiry the wait shrinks to a quarter of the remaining life, never under 1 s."""
        at = retry_at(
            now=T0,
            error=TransientError("x"),
            attempt=10,
            rng=HIGH,
            policy=POLICY,
            expires_at=T0 + 20,
        )
        assert at - T0 == 5.0
        at = retry_at(
            now=T0,
            error=TransientError("x"),
            attempt=10,
            rng=HIGH,
            policy=POLICY,
            expires_at=T0 + 2,
        )
        assert at - T0 == 1.0

    def test_retry_min_lowers_only_transient_retries(self) -> None:
        """A low backoff floor (config retry.min) speeds up transient retries only: polling
        for an unchanged stable or WeCom token and minute-quota waits keep their 1 s floor."""
        policy = Policy(backoff_floor=0.05, backoff_base=0.05, backoff_cap=0.3)
        transient = retry_at(
            now=T0, error=TransientError("x"), attempt=1, rng=LOW, policy=policy, expires_at=None
        )
        assert transient - T0 == pytest.approx(0.05)
        late = T0 + 7200 - 1.5
        for grant in ("stable", "wecom"):
            at = unchanged_retry_at(
                now=late,
                fetched_at=T0,
                expires_at=T0 + 7200,
                rng=LOW,
                policy=policy,
                grant=grant,  # type: ignore[arg-type]
            )
            assert at - late >= 1.0
        minute = retry_at(
            now=T0, error=MinuteQuotaError("x"), attempt=1, rng=LOW, policy=policy, expires_at=None
        )
        assert minute - next_minute(T0) >= 1.0

    def test_never_tighter_than_one_second(self) -> None:
        """No error and no draw ever schedules a retry less than a second away."""
        errors = [TransientError("x"), UnknownErrcodeError("x"), MalformedResponse("x")]
        for error in errors:
            for attempt in (1, 2, 50):
                for expires_at in (None, T0 + 0.5, T0 + 3):
                    at = retry_at(
                        now=T0,
                        error=error,
                        attempt=attempt,
                        rng=LOW,
                        policy=POLICY,
                        expires_at=expires_at,
                    )
                    assert at - T0 >= 1.0

    def test_fatal_waits_ten_minutes(self) -> None:
        """Errors that need a human are retried at most every 10 minutes, expiry or not."""
        for rng in (LOW, HIGH):
            at = retry_at(
                now=T0,
                error=FatalConfigError("x", errcode=40125),
                attempt=1,
                rng=rng,
                policy=POLICY,
                expires_at=T0 + 5,
            )
            assert 600 <= at - T0 <= 660

    def test_minute_quota_waits_for_next_minute(self) -> None:
        """45011 waits past the next minute boundary."""
        now = 1_800_000_030.0  # 30 s into a minute
        at = retry_at(
            now=now, error=MinuteQuotaError("x"), attempt=1, rng=LOW, policy=POLICY, expires_at=None
        )
        assert at == next_minute(now) + 1.0
        assert next_minute(now) % 60 == 0
        assert next_minute(now) > now

    def test_daily_quota_waits_for_beijing_midnight(self) -> None:
        """45009 waits until 00:00 UTC+8, i.e. 16:00 UTC."""
        now = datetime(2026, 11, 21, 10, 0, tzinfo=UTC).timestamp()
        at = retry_at(
            now=now, error=DailyQuotaError("x"), attempt=1, rng=LOW, policy=POLICY, expires_at=None
        )
        assert datetime.fromtimestamp(at, UTC) == datetime(2026, 11, 21, 16, 0, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("utc", "reset"),
        [
            (datetime(2026, 11, 21, 15, 59, 59), datetime(2026, 11, 21, 16, 0)),
            (datetime(2026, 11, 21, 16, 0, 0), datetime(2026, 11, 22, 16, 0)),
            (datetime(2026, 11, 21, 23, 0, 0), datetime(2026, 11, 22, 16, 0)),
        ],
    )
    def test_quota_reset_boundaries(self, utc: datetime, reset: datetime) -> None:
        """The next reset is always strictly in the future and at 16:00 UTC."""
        now = utc.replace(tzinfo=UTC).timestamp()
        assert next_quota_reset(now) == reset.replace(tzinfo=UTC).timestamp()

    @pytest.mark.parametrize(
        ("wait", "rng", "expected"), [(600, LOW, 600), (3600, LOW, 3600), (86400, HIGH, 95040)]
    )
    def test_admin_waits_as_told(self, wait: float, rng: Pinned, expected: float) -> None:
        """89501/89503/89506/89507 wait the time the docs give, plus up to 10 %."""
        error = AdminWaitError("x", errcode=89506, fix="h", wait=wait)
        at = retry_at(now=T0, error=error, attempt=1, rng=rng, policy=POLICY, expires_at=None)
        assert at - T0 == pytest.approx(expected)

    def test_unknown_errcode_backs_off_slowly(self) -> None:
        """An unknown errcode starts at a 30 s ceiling and is capped at 10 minutes."""
        first = retry_at(
            now=T0,
            error=UnknownErrcodeError("x"),
            attempt=1,
            rng=HIGH,
            policy=POLICY,
            expires_at=None,
        )
        late = retry_at(
            now=T0,
            error=UnknownErrcodeError("x"),
            attempt=20,
            rng=HIGH,
            policy=POLICY,
            expires_at=None,
        )
        assert (first - T0, late - T0) == (30.0, 600.0)
