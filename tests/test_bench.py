"""Small, fast versions of the benchmark's figures 1 and 4, as correctness tests.

They run the benchmark's own code (bench/) with fewer apps and shorter lifetimes
and assert the counts, never the times. Figure 6 (kill -9) is tests/test_crash.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.baselines import baselines
from bench.figures import Figure
from bench.lifetimes import calls_per_lifetime
from bench.storm import passive_storm

pytestmark = pytest.mark.e2e


def values(figures: list[Figure]) -> dict[str, str]:
    return {f.name: f.value for f in figures}


class TestCallsPerLifetime:
    """Figure 1: about one upstream call per lifetime, no consumer ever rejected."""

    def test_wxtokend(self, tmp_path: Path) -> None:
        """Classic ~1.25 and stable ~1.2 calls per lifetime; every consumer read valid."""
        found = values(calls_per_lifetime(tmp_path, lifetimes=3, apps_per_grant=5, lifetime=5))
        assert 1.0 <= float(found["upstream calls per app per lifetime (classic)"]) <= 1.35
        assert 1.0 <= float(found["upstream calls per app per lifetime (stable)"]) <= 1.35
        assert found["wxtokend's consumers: rejected or unreadable reads"].startswith("0 of ")

    def test_ttl_cache_in_four_workers_storms(self, tmp_path: Path) -> None:
        """The SDK pattern it replaces: many calls per lifetime and rejected uses."""
        figures = baselines(tmp_path, pattern="ttl-cache", lifetimes=2, lifetime=5)
        found = values(figures)
        assert float(found["TTL cache in 4 workers: upstream calls per app per lifetime"]) > 5
        rejections = "TTL cache in 4 workers: 40001/42001 rejections seen per app per lifetime"
        assert float(found[rejections]) > 1


class TestPassiveStorm:
    """Figure 4: a storm of reports of one stale token makes one upstream call."""

    def test_one_call_for_three_hundred_reports(self, tmp_path: Path) -> None:
        """300 concurrent reports, each on its own connection: 1 upstream call, all answered."""
        (figure,) = passive_storm(tmp_path, n=300)
        assert figure.value == "1"
        assert "'refreshed': 300" in figure.detail
