"""Log lines as journald and people see them."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import TestApp, wait_for

from wxtokend import logs


class TestJsonLines:
    """JSON log lines keep non-ASCII text readable."""

    def test_chinese_hint_is_utf8(self) -> None:
        """A hint quoting the console's Chinese menu appears as UTF-8, not \\u escapes."""
        stream = io.StringIO()
        logs.configure(stream=stream, json=True)
        logs.get_logger().error("refresh", hint="设置与开发 → 基本配置 → IP白名单")
        line = stream.getvalue().strip()
        assert "设置与开发 → 基本配置 → IP白名单" in line
        assert "\\u" not in line
        assert json.loads(line)["hint"] == "设置与开发 → 基本配置 → IP白名单"

    def test_non_utf8_stream_escapes_instead_of_failing(self) -> None:
        """On a stream that cannot encode Chinese, the line is escaped, never an exception."""
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="ascii")
        logs.configure(stream=stream, json=True)
        logs.get_logger().error("refresh", hint="IP白名单")
        stream.flush()
        assert b"IP\\u767d" in raw.getvalue()


class TestJournalPriorities:
    """On journald's stream each line carries its syslog priority, elsewhere plain JSON."""

    @staticmethod
    def _journal_env(path: Path) -> dict[str, str]:
        found = os.stat(path)
        return {"JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"}

    def test_detects_its_own_stream_only(self, tmp_path: Path) -> None:
        """JOURNAL_STREAM must name this very file: an inherited one for another is ignored."""
        mine, other = tmp_path / "mine", tmp_path / "other"
        mine.touch()
        other.touch()
        with mine.open("w") as stream:
            assert logs.is_journal_stream(stream, self._journal_env(mine))
            assert not logs.is_journal_stream(stream, self._journal_env(other))
            assert not logs.is_journal_stream(stream, {"JOURNAL_STREAM": "x:y"})
            assert not logs.is_journal_stream(stream, {})
        assert not logs.is_journal_stream(io.StringIO(), self._journal_env(mine))

    def test_prefixes(self, tmp_path: Path) -> None:
        """<3> error, <4> warning, <6> info, <7> debug; the rest of the line is the JSON."""
        stream = io.StringIO()
        logs.configure(level="debug", stream=stream, json=True, journal=True)
        log = logs.get_logger()
        log.error("e")
        log.warning("w")
        log.info("i")
        log.debug("d")
        lines = stream.getvalue().splitlines()
        assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<7>"]
        assert [json.loads(line[3:])["event"] for line in lines] == ["e", "w", "i", "d"]

    @pytest.mark.e2e
    def test_real_daemon_under_journal_stream(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """The real daemon, its stdout being the stream JOURNAL_STREAM names: a wrong secret's
        error is <3>, start-up is <6>; with the variable naming another file, no prefix."""
        good = TestApp(appid="wx00000000000000j1", secret="j" * 32, name="good")
        bad = TestApp(
            appid="wx00000000000000j2", secret="k" * 32, name="bad", daemon_secret="x" * 32
        )
        emu = emulator([good, bad], lifetime=120)
        d = daemon([good, bad], emu.base_url)
        d.log_path.parent.mkdir(parents=True, exist_ok=True)
        d.log_path.touch()
        d.start(env=self._journal_env(d.log_path))
        d.wait_for_tokens(["good"])
        wait_for(lambda: '"outcome": "fatal"' in d.log_path.read_text(), timeout=20, what="failure")
        lines = d.log_path.read_text().splitlines()
        assert all(line[:3] in ("<3>", "<4>", "<6>") for line in lines), lines[:3]
        by_event = {json.loads(line[3:])["event"]: line[:3] for line in lines}
        assert by_event["started"] == "<6>"
        failed = [line for line in lines if '"outcome": "fatal"' in line]
        assert failed
        assert all(line.startswith("<3>") for line in failed)
        d.stop()
        other = d.directory / "elsewhere"
        other.touch()
        d.log_path.write_text("")
        d.start(env=self._journal_env(other))
        d.wait_for_tokens(["good"])
        wait_for(lambda: d.log_path.read_text().strip(), timeout=10, what="a log line")
        assert d.log_path.read_text().lstrip().startswith("{")
