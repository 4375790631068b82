"""The SDK drop-in's wrong-credential limit: pure rules on an injected clock."""

from __future__ import annotations

import pytest

from wxtokend.ratelimit import FailureLimiter


class TestFailureLimiter:
    """N failures in a sliding minute block a client until the oldest is a minute old."""

    @pytest.mark.parametrize(
        ("failures", "asked_at", "expected"),
        [
            ([], 0.0, None),  # never failed
            ([0.0, 1.0], 2.0, None),  # under the limit
            ([0.0, 1.0, 2.0], 2.0, 60.0 - 2.0),  # at the limit: wait for the first to age
            ([0.0, 1.0, 2.0], 59.5, 0.5),
            ([0.0, 1.0, 2.0], 60.0, None),  # the first aged out: two left
            ([10.0, 30.0, 59.0], 65.0, 5.0),  # sliding, not a fixed minute
            ([0.0, 30.0, 59.0], 61.0, None),
            ([0.0, 1.0, 2.0, 3.0, 4.0], 4.0, 2.0 + 60.0 - 4.0),  # only the last `limit` kept
        ],
    )
    def test_retry_after(
        self, failures: list[float], asked_at: float, expected: float | None
    ) -> None:
        """retry_after is None under the limit, else the time until the oldest leaves."""
        limiter = FailureLimiter(limit=3, window=60.0)
        for t in failures:
            limiter.failed("peer", t)
        assert limiter.retry_after("peer", asked_at) == expected

    def test_clients_are_separate(self) -> None:
        """One client's failures never block another."""
        limiter = FailureLimiter(limit=2, window=60.0)
        limiter.failed("a", 0.0)
        limiter.failed("a", 0.0)
        assert limiter.retry_after("a", 1.0) == 59.0
        assert limiter.retry_after("b", 1.0) is None

    def test_table_is_capped(self) -> None:
        """At most max_clients are remembered; the one whose last failure is oldest goes."""
        limiter = FailureLimiter(limit=1, window=60.0, max_clients=3)
        for n, client in enumerate(["a", "b", "c"]):
            limiter.failed(client, float(n))
        limiter.failed("a", 3.0)  # a is now the most recent
        limiter.failed("d", 4.0)
        assert len(limiter) == 3
        assert limiter.retry_after("b", 5.0) is None  # forgotten
        assert [limiter.retry_after(c, 5.0) is not None for c in "acd"] == [True, True, True]

    def test_aged_out_clients_are_forgotten(self) -> None:
        """A client whose failures all left the window takes no memory once asked about."""
        limiter = FailureLimiter(limit=3, window=60.0)
        limiter.failed("a", 0.0)
        assert limiter.retry_after("a", 61.0) is None
        assert len(limiter) == 0
