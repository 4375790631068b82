"""Crash safety against the real daemon: kill -9 at random moments, then inspect the files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.crash import kill_loop

pytestmark = pytest.mark.e2e


class TestKillNine:
    """The benchmark's loop, small: 15 kills of a daemon with 5 apps."""

    def test_files_whole_and_no_restart_calls(self, tmp_path: Path) -> None:
        """No partial, empty or unparsable file, and no call for a valid token at restart."""
        result = kill_loop(tmp_path, kills=15, apps=5)
        assert result.kills == 15
        assert result.failures == []
        assert result.bare_other == 0
        assert result.premature == []
        assert result.safe_checked > 0
        assert result.final_invalid == 0
