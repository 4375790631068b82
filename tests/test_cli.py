"""The wxtokend command on bad input and its options, in-process through main()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import TestApp

from wxtokend.cli import _parser, main

SECRET = "0123456789abcdef0123456789abcdef"


def write_config(tmp_path: Path, apps: str, *, mode: int = 0o600) -> Path:
    (tmp_path / "app.secret").write_text(SECRET)
    path = tmp_path / "config.yaml"
    path.write_text(f"output_dir: tokens\napps:\n{apps}")
    path.chmod(mode)
    return path


OFFICIAL = (
    "  - {appid: wx0123456789abcdef, name: shop, secret_file: app.secret, tickets: [jsapi]}\n"
)
WECOM = "  - {kind: wecom, corpid: ww0123456789abcdef, name: hr, secret_file: app.secret}\n"


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


class TestDemoDirectory:
    """An unusable demo directory is a bad command line: one line, exit 2."""

    def test_directory_that_cannot_be_created(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A directory under /proc cannot be made: exit 2, saying so."""
        assert main(["demo", "/proc/wxtokend-demo"]) == 2
        line = one_line(capsys.readouterr().err)
        assert "cannot use /proc/wxtokend-demo as the demo directory" in line
        assert "wxtokend demo DIR" in line

    def test_regular_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A regular file in the directory's place: exit 2, and the file is untouched."""
        occupied = tmp_path / "notes.txt"
        occupied.write_text("mine")
        assert main(["demo", str(occupied)]) == 2
        assert "is not a directory" in one_line(capsys.readouterr().err)
        assert occupied.read_text() == "mine"


class TestEmulateBadInput:
    """emulate with a bad --config or --port-file is a message and exit 2."""

    def test_port_file_in_a_missing_directory(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A port file that cannot be written: exit 2 naming --port-file, not a listen error."""
        assert main(["emulate", "--port-file", "/proc/wxtokend/port"]) == 2
        line = one_line(capsys.readouterr().err)
        assert "--port-file /proc/wxtokend/port: No such file or directory" in line
        assert "listen" not in line

    def test_not_utf8(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A file that is not UTF-8 text: exit 2 with the file named."""
        path = tmp_path / "emulator.yaml"
        path.write_bytes(b"\xff\xfe lifetime: 5")
        assert main(["emulate", "--config", str(path)]) == 2
        assert f"{path}: cannot read: not UTF-8 text" in one_line(capsys.readouterr().err)


class TestSignAgent:
    """sign --agent is WeCom's wx.agentConfig: official apps are told so, not given a bad fix."""

    def test_official_app(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An official app: --agent is for WeCom apps only; no tickets: [agent_config] advice."""
        path = write_config(tmp_path, OFFICIAL)
        assert main(["sign", "shop", "--url", "https://a/", "--agent", "-c", str(path)]) == 2
        line = one_line(capsys.readouterr().err)
        assert "shop is not a WeCom app: --agent (wx.agentConfig) is for WeCom apps only" in line
        assert "agent_config" not in line

    def test_wecom_app_without_the_ticket(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A WeCom app without the ticket: add tickets: [agent_config] and agentid:."""
        path = write_config(tmp_path, WECOM)
        assert main(["sign", "hr", "--url", "https://a/", "--agent", "-c", str(path)]) == 2
        line = one_line(capsys.readouterr().err)
        assert "hr keeps no agent_config ticket: add tickets: [agent_config]" in line
        assert "agentid:" in line


class TestLogLevel:
    """--log-level goes before or after the command, defaults to info, and has help."""

    @pytest.mark.parametrize(
        "argv",
        [
            ["--log-level", "debug", "run", "-c", "x"],
            ["run", "-c", "x", "--log-level", "debug"],
        ],
    )
    def test_either_order(self, argv: list[str]) -> None:
        """Both orders parse to the same level."""
        assert _parser().parse_args(argv).log_level == "debug"

    def test_after_wins(self) -> None:
        """Given twice, the one after the command counts."""
        args = _parser().parse_args(["--log-level", "debug", "check", "--log-level", "error"])
        assert args.log_level == "error"

    def test_default_info(self) -> None:
        """Not given: info."""
        assert _parser().parse_args(["get", "shop"]).log_level == "info"

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Both the top-level and the command help describe it."""
        for argv in (["--help"], ["run", "--help"]):
            with pytest.raises(SystemExit):
                _parser().parse_args(argv)
            assert "debug, info (default), warning or error" in capsys.readouterr().out

    @pytest.mark.parametrize("before", [True, False])
    def test_applies(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], before: bool
    ) -> None:
        """error, in either place, silences check's warning about a readable inline secret."""
        path = write_config(
            tmp_path,
            f"  - {{appid: wx0123456789abcdef, name: shop, secret: {SECRET}}}\n",
            mode=0o644,
        )
        level = ["--log-level", "error"]
        command = ["check", "-c", str(path)]
        assert main([*level, *command] if before else [*command, *level]) == 0
        assert "chmod 600" not in capsys.readouterr().err
        assert main(command) == 0
        assert "chmod 600" in capsys.readouterr().err


@pytest.mark.e2e
class TestCheckOnline:
    """check --online claims nothing before asking, sums up, and prints fixes, not retry plans."""

    def test_one_failing_app(self, emulator: Any, daemon: Any) -> None:
        """A wrong secret: no OK header, the fix without 'retrying', a FAILED summary, exit 1."""
        good = TestApp(appid=f"wx{0xD1:016x}", secret=f"{0xD1:032x}", name="mini")
        bad = TestApp(
            appid=f"wx{0xD2:016x}", secret=f"{0xD2:032x}", name="bad", daemon_secret="f" * 32
        )
        emu = emulator([good, bad], lifetime=120)
        d = daemon([good, bad], emu.base_url)
        result = d.run("check", "--online")
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].endswith(f"config valid — 2 app(s), token files in {d.output_dir}")
        assert "OK" not in lines[0]
        failed = next(i for i, line in enumerate(lines) if line.startswith("  bad: FAILED"))
        assert lines[failed + 1].startswith("    fix: copy ")
        assert "retrying" not in result.stdout
        assert any(line.startswith("  mini: OK") for line in lines)
        assert lines[-1] == "online: 1 of 2 apps FAILED"

    def test_all_ok(self, emulator: Any, daemon: Any) -> None:
        """Every app answered: the summary says all are OK, and counts a skipped classic app."""
        apps = [
            TestApp(appid=f"wx{0xD3:016x}", secret=f"{0xD3:032x}", name="mini"),
            TestApp(appid=f"wx{0xD4:016x}", secret=f"{0xD4:032x}", name="shop", grant="classic"),
        ]
        emu = emulator(apps, lifetime=120)
        result = daemon(apps, emu.base_url).run("check", "--online")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1] == "online: all 1 OK (1 skipped)"
