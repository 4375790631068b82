"""End to end: the real ``wxtokend`` processes against the emulator over loopback HTTP.

Lifetimes are seconds, so hours of WeChat behaviour pass in a test run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, EmulatorProcess, TestApp, temp_leftovers, wait_for

pytestmark = pytest.mark.e2e


def app(n: int, grant: str = "stable", **kw: object) -> TestApp:
    return TestApp(
        appid=f"wx{n:016x}",
        secret=f"{n:032x}",
        name=kw.pop("name", f"app{n}"),  # type: ignore[arg-type]
        grant=grant,
        **kw,  # type: ignore[arg-type]
    )


def consume(
    emu: EmulatorProcess, daemon: DaemonProcess, names: list[str], seconds: float
) -> tuple[dict[str, set[str]], list[str]]:
    """Read every token file in a loop, validating each read; return tokens seen and failures."""
    seen: dict[str, set[str]] = {n: set() for n in names}
    failures = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name in names:
            token = daemon.token(name)
            if not token:
                failures.append(f"{name}: empty or missing file")
                continue
            errcode = emu.check(token)
            if errcode:
                failures.append(f"{name}: token rejected with {errcode}")
            seen[name].add(token)
        time.sleep(0.05)
    return seen, failures


def assert_no_secrets(text: str, apps: list[TestApp], tokens: set[str]) -> None:
    for a in apps:
        assert (a.daemon_secret or a.secret) not in text
    for token in tokens:
        assert token not in text


class TestAlwaysValid:
    """Consumers reading the files at any moment always hold a token WeChat accepts."""

    def test_tokens_rotate_before_expiry(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """Over several 6 s lifetimes both grants rotate and every read validates."""
        apps = [app(1, "classic", name="shop"), app(2, "stable", name="mini")]
        emu = emulator(apps, lifetime=6, grace=2, stable_window=2)
        d = daemon(apps, emu.base_url, stable_renew_window=2).start()
        d.wait_for_tokens(["shop", "mini"])
        started = time.monotonic()
        seen, failures = consume(emu, d, ["shop", "mini"], seconds=20)
        elapsed = time.monotonic() - started
        assert failures == []
        assert len(seen["shop"]) >= 4
        assert len(seen["mini"]) >= 4
        classic_calls = emu.calls(apps[0].appid, "token")
        assert classic_calls <= elapsed / (0.75 * 6) + 2
        all_tokens = seen["shop"] | seen["mini"]
        assert_no_secrets(d.log_text(), apps, all_tokens)

    def test_faulty_upstream_never_reaches_consumers(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """With 30 % of calls failing (5xx, -1, garbage), reads stay valid and files whole."""
        faults = {"http_5xx": 0.1, "busy": 0.1, "garbage": 0.1}
        apps = [app(3, "classic", name="shop", faults=faults)]
        emu = emulator(apps, lifetime=20, grace=3, seed=11)
        d = daemon(apps, emu.base_url).start()
        d.wait_for_tokens(["shop"])
        seen, failures = consume(emu, d, ["shop"], seconds=18)
        assert failures == []
        assert len(seen["shop"]) >= 2
        assert emu.stats()[apps[0].appid]["faults"] >= 1 or len(seen["shop"]) >= 2
        assert temp_leftovers(d.output_dir) == []


class TestRestart:
    """Restarting the daemon reuses the token on disk: zero upstream calls."""

    def test_restart_reuses_token(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """SIGTERM stops within a second; the next start makes no call and keeps the token."""
        apps = [app(4, "classic", name="shop"), app(5, "stable", name="mini")]
        emu = emulator(apps, lifetime=60, grace=5)
        d = daemon(apps, emu.base_url).start()
        before = d.wait_for_tokens(["shop", "mini"])
        code, took = d.stop(signal.SIGTERM)
        assert code == 0
        assert took < 2.0
        assert temp_leftovers(d.output_dir) == []
        stats = emu.stats()

        d.start()
        wait_for(lambda: d.log_text().count('"outcome": "reused"') >= 2, timeout=15, what="reuse")
        time.sleep(1.0)
        assert emu.stats() == stats
        assert {n: d.token(n) for n in before} == before
        assert all(emu.check(t) == 0 for t in before.values())
        code, _ = d.stop(signal.SIGINT)
        assert code == 0


class TestBadApps:
    """A misconfigured app neither disturbs the others nor burns its quota."""

    def test_wrong_secret_is_isolated(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """The bad app gets one call and a clear hint; the good ones keep rotating."""
        bad = app(8, "stable", name="bad", daemon_secret="f" * 32)
        apps = [app(6, "classic", name="good1"), app(7, "stable", name="good2"), bad]
        emu = emulator(apps, lifetime=4, grace=2, stable_window=1)
        d = daemon(apps, emu.base_url, stable_renew_window=1).start()
        d.wait_for_tokens(["good1", "good2"])
        seen, failures = consume(emu, d, ["good1", "good2"], seconds=10)
        assert failures == []
        assert len(seen["good1"]) >= 2
        assert emu.calls(bad.appid, "stable_token") == 1
        assert d.token("bad") is None
        errors = [e for e in d.events() if e.get("app") == "bad" and e.get("outcome") == "fatal"]
        assert errors
        assert errors[0]["errcode"] == 40001
        assert "secrets/bad" in errors[0]["hint"]
        assert_no_secrets(d.log_text(), apps, seen["good1"] | seen["good2"])

    def test_ip_whitelist_names_the_ip(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """40164 is reported with the offending IP and where to whitelist it."""
        apps = [app(9, "classic", name="shop")]
        emu = emulator(apps, lifetime=60, ip_whitelist=["10.20.30.40"])
        d = daemon(apps, emu.base_url)
        result = d.run("run", "--once")
        assert result.returncode == 1
        output = result.stdout + result.stderr
        assert "add 127.0.0.1 to the IP whitelist" in output
        assert "Traceback" not in output


class TestOnce:
    """``run --once``: for init containers and cron."""

    def test_once_fetches_then_reuses(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """The first run fetches every app and exits 0; the second reuses, calling nothing."""
        apps = [app(10, "classic", name="shop"), app(11, "stable", name="mini")]
        emu = emulator(apps, lifetime=120)
        d = daemon(apps, emu.base_url)
        assert d.run("run", "--once").returncode == 0
        tokens = d.wait_for_tokens(["shop", "mini"], timeout=1)
        stats = emu.stats()
        assert d.run("run", "--once").returncode == 0
        assert emu.stats() == stats
        assert {n: d.token(n) for n in tokens} == tokens

    def test_once_fails_without_token(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """An app that gets no token makes --once exit 1, naming it; the good one is written."""
        apps = [
            app(12, "stable", name="good"),
            app(13, "stable", name="bad", daemon_secret="0" * 32),
        ]
        emu = emulator(apps, lifetime=120)
        d = daemon(apps, emu.base_url)
        result = d.run("run", "--once")
        assert result.returncode == 1
        assert d.token("good")
        assert d.token("bad") is None
        assert "no valid token" in result.stdout


class TestCommands:
    """get, check and the config error path, as a user runs them."""

    def test_get_prints_token(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """get prints exactly the file's token; an app without one fails with a hint."""
        apps = [app(14, "stable", name="shop")]
        emu = emulator(apps, lifetime=120)
        d = daemon(apps, emu.base_url)
        missing = d.run("get", "shop")
        assert missing.returncode == 1
        assert "no token file yet" in missing.stderr
        assert d.run("run", "--once").returncode == 0
        got = d.run("get", "shop")
        assert got.returncode == 0
        assert got.stdout == d.token("shop")
        unknown = d.run("get", "nope")
        assert unknown.returncode == 2
        assert "no app named 'nope'" in unknown.stderr

    def test_check_online(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """check --online asks WeChat for stable apps and skips classic ones unless forced."""
        apps = [app(15, "classic", name="shop"), app(16, "stable", name="mini")]
        emu = emulator(apps, lifetime=120)
        d = daemon(apps, emu.base_url)
        result = d.run("check", "--online")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "shop: skipped" in result.stdout
        assert "mini: OK" in result.stdout
        assert emu.calls(apps[0].appid, "token") == 0
        forced = d.run("check", "--online", "--force")
        assert forced.returncode == 0
        assert emu.calls(apps[0].appid, "token") == 1
        token = d.token("shop")
        assert token
        assert emu.check(token) == 0

    def test_get_needs_no_secret(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """Consumers run get without access to the AppSecret."""
        apps = [app(17, "stable", name="shop")]
        emu = emulator(apps, lifetime=120)
        d = daemon(apps, emu.base_url)
        assert d.run("run", "--once").returncode == 0
        (d.directory / "secrets" / "shop").unlink()
        got = d.run("get", "shop")
        assert got.returncode == 0, got.stderr
        assert got.stdout == d.token("shop")

    def test_unusable_output_dir(self, tmp_path: Path) -> None:
        """An output_dir that cannot be created is a config error: one line, exit 2."""
        (tmp_path / "s").write_text("secret\n")
        (tmp_path / "file").write_text("")
        path = tmp_path / "config.yaml"
        path.write_text("output_dir: file/tokens\napps:\n  - appid: wx1\n    secret_file: s\n")
        result = subprocess.run(
            [sys.executable, "-m", "wxtokend", "run", "--once", "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2
        assert (
            f"{path}:1: output_dir: {tmp_path / 'file' / 'tokens'} cannot be created:"
            f" {tmp_path / 'file'} is a file — point output_dir at a directory"
        ) in result.stderr
        assert "Traceback" not in result.stderr

    def test_bad_config_exit_2(self, tmp_path: Path) -> None:
        """A bad config gives one clear line per problem and exit 2, never a traceback."""
        path = tmp_path / "config.yaml"
        path.write_text("apps:\n  - appid: wx1\n    secret_file: /nonexistent/secret\n")
        result = subprocess.run(
            [sys.executable, "-m", "wxtokend", "run", "-c", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2
        assert f"{path}:3: apps[0].secret_file: /nonexistent/secret: no such file" in result.stderr
        assert "Traceback" not in result.stderr


class TestScale:
    """Many apps at once."""

    def test_thousand_apps_get_first_tokens(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """1,000 apps all get a token file, with exactly one upstream call each."""
        apps = [app(1000 + i, "classic" if i % 2 else "stable", name=f"a{i}") for i in range(1000)]
        emu = emulator(apps, lifetime=3600)
        d = daemon(apps, emu.base_url).start()
        started = time.monotonic()
        wait_for(
            lambda: (
                len(list(d.output_dir.glob("a*.json"))) == 1000 if d.output_dir.exists() else False
            ),
            timeout=120,
            what="1,000 token files",
            step=0.1,
        )
        print(f"1,000 apps: first tokens in {time.monotonic() - started:.2f} s (incl. start-up)")
        stats = emu.stats()
        calls = [stats[a.appid]["token"] + stats[a.appid]["stable_token"] for a in apps]
        assert calls == [1] * 1000


class TestDemo:
    """The README's first command."""

    def test_demo_writes_valid_tokens(self, tmp_path: Path) -> None:
        """demo starts emulator and daemon, tokens appear and validate, Ctrl-C stops both."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "wxtokend", "demo", "demo"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            tokens = tmp_path / "demo" / "tokens"
            wait_for(
                lambda: (tokens / "shop").exists() and (tokens / "mini").exists(),
                timeout=20,
                what="demo token files",
            )
            import yaml

            api_base = yaml.safe_load((tmp_path / "demo" / "config.yaml").read_text())["api_base"]
            import httpx

            for name in ("shop", "mini"):
                body = httpx.get(
                    f"{api_base}/cgi-bin/getcallbackip",
                    params={"access_token": (tokens / name).read_text()},
                ).json()
                assert "ip_list" in body
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, out
        assert "cat demo/tokens/shop" in out
