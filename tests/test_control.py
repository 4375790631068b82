"""``wxtokend reload`` (ExecReload=) returns once the reload is done, and says how it went;
``wxtokend health`` (the image's HEALTHCHECK) says whether the daemon is healthy or ready."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DaemonFactory, EmulatorFactory
from fakes import ScriptedTickets, ScriptedWeChat, VirtualClock, daemon_config
from harness import TestApp, wait_for
from test_notify import Listener
from test_tickets import Upstream, official

from wxtokend.daemon import Daemon


def app(n: int, name: str) -> TestApp:
    return TestApp(appid=f"wx{n:016x}", secret=f"{n:x}" * 32, name=name)


def reload_cli(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("reload", "-c", str(config), *extra)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wxtokend", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.e2e
class TestReloadCommand:
    """The command asks the admin API, which answers when the reload is applied or refused."""

    def test_applied_before_it_returns(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """Under a fake systemd: when the command exits 0 the new app is in the daemon and
        RELOADING=1 / READY=1 were both sent: nothing runs ahead of the reload."""
        shop, blog = app(1, "shop"), app(2, "blog")
        emu = emulator([shop, blog], lifetime=120)
        sink = Listener(str(tmp_path / "notify.sock"))
        d = daemon([shop], emu.base_url).start(env={"NOTIFY_SOCKET": sink.address})
        d.wait_for_tokens(["shop"])
        wait_for(lambda: "READY=1" in sink.lines(), timeout=20, what="READY=1")
        admin = d.admin()
        d.configure([shop, blog])
        answer = admin.post("/v1/reload")  # at once: the file watcher's reload still settles
        assert answer.status_code == 200
        names = [a["name"] for a in admin.get("/v1/apps").json()["apps"]]
        assert names == ["shop", "blog"]
        lines = sink.lines()
        assert "RELOADING=1" in lines
        assert lines.count("READY=1") == 2
        done = reload_cli(d.config_path, "--admin", d.admin_url())
        assert done.returncode == 0, done.stderr
        assert done.stdout == "wxtokend: reload applied\n"  # forced: always a full cycle
        d.configure([shop])
        done = reload_cli(d.config_path, "--admin", d.admin_url())
        assert done.returncode == 0, done.stderr
        names = [a["name"] for a in admin.get("/v1/apps").json()["apps"]]
        assert names == ["shop"]
        sink.close()

    def test_refused_exits_1_with_the_problems(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A broken config: exit 1, the file:line problems on stderr, the daemon runs on."""
        shop = app(3, "shop")
        emu = emulator([shop], lifetime=120)
        d = daemon([shop], emu.base_url).start()
        token = d.wait_for_tokens(["shop"])["shop"]
        good = d.config_path.read_text()
        d.config_path.write_text(good.replace("grant: stable", "grant: stabel"))
        done = reload_cli(d.config_path, "--admin", d.admin_url())
        assert done.returncode == 1
        assert "reload failed, the daemon runs on the old config" in done.stderr
        assert f"{d.config_path}:" in done.stderr
        assert "apps[0].grant" in done.stderr
        assert d.process is not None
        assert d.process.poll() is None
        assert d.token("shop") == token
        d.config_path.write_text(good)
        assert reload_cli(d.config_path, "--admin", d.admin_url()).returncode == 0

    def test_admin_off_falls_back_to_sighup(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """admin.listen null: --pid sends SIGHUP and says it cannot wait; without it, exit 2."""
        shop, blog = app(4, "shop"), app(5, "blog")
        emu = emulator([shop, blog], lifetime=120)
        d = daemon([shop], emu.base_url, admin={"listen": None}).start()
        d.wait_for_tokens(["shop"])
        d.configure([shop, blog], admin={"listen": None})
        refused = reload_cli(d.config_path)
        assert refused.returncode == 2
        assert "--pid" in refused.stderr
        done = reload_cli(d.config_path, "--pid", str(d.pid))
        assert done.returncode == 0
        assert "sent SIGHUP" in done.stdout
        wait_for(lambda: d.token("blog"), timeout=15, what="the SIGHUP reload")

    def test_no_daemon(self, tmp_path: Path) -> None:
        """Nobody listening: exit 1 with what to check, not a traceback."""
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"admin": {"listen": "127.0.0.1:9"}, "apps": []}))
        done = reload_cli(config)
        assert done.returncode == 1
        assert "did not answer" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.e2e
class TestHealthCommand:
    """Exit 0 only when the daemon answers 200: healthy, or with --ready every token valid."""

    def test_healthy_and_ready(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """One app with a wrong secret: healthy (the daemon works) but not ready."""
        good = app(6, "good")
        bad = TestApp(appid=f"wx{7:016x}", secret="7" * 32, name="bad", daemon_secret="x" * 32)
        emu = emulator([good, bad], lifetime=120)
        d = daemon([good, bad], emu.base_url).start()
        d.wait_for_tokens(["good"])
        healthy = cli("health", "-c", str(d.config_path), "--admin", d.admin_url())
        assert healthy.returncode == 0, healthy.stderr
        ready = cli("health", "-c", str(d.config_path), "--admin", d.admin_url(), "--ready")
        assert ready.returncode == 1
        assert "bad" in ready.stdout
        d.configure([good])
        cli("reload", "-c", str(d.config_path), "--admin", d.admin_url())
        ready = cli("health", "-c", str(d.config_path), "--admin", d.admin_url(), "--ready")
        assert ready.returncode == 0, ready.stdout
        d.stop()
        gone = cli("health", "-c", str(d.config_path), "--admin", d.admin_url())
        assert gone.returncode == 1
        assert "did not answer" in gone.stderr


class TestFailedReloadStatus:
    """A failed reload leads STATUS= until a reload succeeds."""

    @pytest.mark.anyio
    async def test_status_line(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        wechat = ScriptedWeChat(clock, lifetime=7200)
        shop = official("shop", 1, ())
        config = daemon_config(tmp_path, (shop,))
        daemon = Daemon(
            config,
            source=Upstream(wechat, ScriptedTickets(clock, wechat, lifetime=7200)),
            clock=clock,
        )
        daemon.start()
        config.path.write_text("apps: [{appid: wx1, grant: stabel}]\n")
        assert not await daemon.reload(forced=True)
        line = daemon.status_line()
        assert line.startswith("reload failed, running on the old config: ")
        assert f"{config.path}:1" in line
        assert line == daemon.status_line()  # it stays: every periodic STATUS= says it
        secret = tmp_path / "shop.secret"
        secret.write_text("s" * 32)
        os.chmod(secret, 0o600)
        config.path.write_text(
            yaml.safe_dump(
                {
                    "output_dir": "tokens",
                    "apps": [{"appid": shop.appid, "name": "shop", "secret_file": "shop.secret"}],
                }
            )
        )
        assert await daemon.reload(forced=True)
        assert "reload failed" not in daemon.status_line()
        await daemon.aclose()
