"""Crash safety against the real daemon: kill -9 at random moments, then inspect the files."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import TestApp, temp_leftovers, wait_for

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


class TestKilledBetweenTheRenames:
    """The state a kill between the JSON's rename and the bare file's leaves behind."""

    def test_start_repairs_the_bare_file_without_a_call(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """JSON names the new token, the bare file the old, a temp file lingers: the next
        start writes the JSON's token to the bare file, removes the temp, asks WeChat nothing."""
        shop = TestApp(appid="wx00000000000000c1", secret="c1" * 16, name="shop", grant="classic")
        emu = emulator([shop], lifetime=600, grace=300)
        d = daemon([shop], emu.base_url).start()
        token = d.wait_for_tokens(["shop"])["shop"]
        code, _ = d.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL
        calls = emu.calls(shop.appid, "token")
        (d.output_dir / "shop").write_text("THE_PREVIOUS_TOKEN")
        (d.output_dir / ".shop.tmp-0123abcd").write_text(token[:5])  # the bare write, cut short
        d.start()
        wait_for(lambda: d.token("shop") == token, timeout=20, what="the bare file repaired")
        assert temp_leftovers(d.output_dir) == []
        assert (d.record("shop") or {}).get("access_token") == token
        assert emu.calls(shop.appid, "token") == calls
        assert emu.check(token) == 0
