"""systemd notification: the protocol itself, and the daemon speaking it for real."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import TestApp, wait_for

from wxtokend.notify import Notifier


class Listener:
    """A fake systemd: a datagram socket collecting notifications."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def lines(self) -> list[str]:
        return [line for message in self.drain() for line in message.splitlines()]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
    else:
        address = f"@wxtokend-test-{uuid.uuid4().hex}"
    sink = Listener(address)
    yield sink
    sink.close()


class TestNotifier:
    """The datagrams Notifier sends."""

    def test_messages(self, listener: Listener) -> None:
        """Each call sends its protocol lines, to path and abstract sockets alike."""
        notifier = Notifier(listener.address)
        notifier.ready("2 apps, all tokens valid")
        notifier.reloading()
        notifier.watchdog()
        notifier.status("hello")
        notifier.stopping()
        messages = listener.drain()
        assert messages[0] == "READY=1\nSTATUS=2 apps, all tokens valid"
        assert messages[1].startswith("RELOADING=1\nMONOTONIC_USEC=")
        usec = int(messages[1].split("MONOTONIC_USEC=")[1])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 5_000_000
        assert messages[2:] == ["WATCHDOG=1", "STATUS=hello", "STOPPING=1"]

    def test_without_socket_is_silent(self) -> None:
        """With no NOTIFY_SOCKET nothing is sent and nothing fails."""
        notifier = Notifier.from_environ({})
        assert not notifier.enabled
        notifier.ready("x")
        notifier.watchdog()
        assert notifier.watchdog_interval is None

    def test_gone_socket_never_raises(self, tmp_path: Path) -> None:
        """A socket that vanished (systemd restarting) is ignored."""
        Notifier(str(tmp_path / "gone.sock")).ready("x")

    @pytest.mark.parametrize(
        ("env", "interval"),
        [
            ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}, 15.0),
            ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
            ({"NOTIFY_SOCKET": "/x"}, None),
            ({"WATCHDOG_USEC": "30000000"}, None),
        ],
    )
    def test_watchdog_interval(self, env: dict[str, str], interval: float | None) -> None:
        """Pings at half WATCHDOG_USEC, only for the process WATCHDOG_PID names."""
        if "WATCHDOG_PID" in env and env["WATCHDOG_PID"] == str(os.getpid()):
            pytest.skip("this test process happens to be pid 1")
        assert Notifier.from_environ(env).watchdog_interval == interval


@pytest.mark.e2e
class TestDaemonNotifies:
    """The real daemon under a fake systemd."""

    def test_lifecycle(
        self, listener: Listener, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """READY after the tokens, WATCHDOG pings, RELOADING/READY on SIGHUP, STOPPING on stop."""
        apps = [TestApp(appid="wx00000000000000a1", secret="a" * 32, name="shop")]
        emu = emulator(apps, lifetime=120)
        d = daemon(apps, emu.base_url).start(
            env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
        )
        wait_for(lambda: "READY=1" in listener.lines(), timeout=20, what="READY=1")
        assert d.token("shop"), "READY=1 came before the token file"
        ready = next(m for m in listener.messages if m.startswith("READY=1"))
        assert "STATUS=1 apps, all tokens valid" in ready
        wait_for(lambda: listener.lines().count("WATCHDOG=1") >= 2, timeout=10, what="pings")
        d.send(signal.SIGHUP)
        wait_for(
            lambda: any(m.startswith("RELOADING=1") for m in listener.drain()),
            timeout=10,
            what="RELOADING=1",
        )
        wait_for(lambda: listener.lines().count("READY=1") >= 2, timeout=10, what="READY again")
        code, _ = d.stop(signal.SIGTERM)
        assert code == 0
        lines = listener.lines()
        assert lines[-1] == "STOPPING=1"
        order = [
            line.split("=")[0] for line in lines if line in ("READY=1", "RELOADING=1", "STOPPING=1")
        ]
        assert order == ["READY", "RELOADING", "READY", "STOPPING"]
        reloading = next(m for m in listener.messages if m.startswith("RELOADING=1"))
        assert "MONOTONIC_USEC=" in reloading

    def test_fixed_secret_makes_ready_at_once(
        self, listener: Listener, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """An app failing at start, fixed by a reload before start_timeout: READY follows its
        token, the replaced loop is not waited for."""
        good = TestApp(appid="wx00000000000000b3", secret="e" * 32, name="good")
        bad = TestApp(
            appid="wx00000000000000b4", secret="f" * 32, name="bad", daemon_secret="0" * 32
        )
        emu = emulator([good, bad], lifetime=120)
        admin = {"listen": "127.0.0.1:0", "start_timeout": 60}
        d = daemon([good, bad], emu.base_url, admin=admin)
        d.start(env={"NOTIFY_SOCKET": listener.address})
        d.wait_for_tokens(["good"])
        fixed = TestApp(appid=bad.appid, secret=bad.secret, name="bad")
        started = time.monotonic()
        d.configure([good, fixed], admin=admin)
        wait_for(lambda: "READY=1" in listener.lines(), timeout=20, what="READY=1")
        assert time.monotonic() - started < 20  # not start_timeout (60 s)
        ready = next(m for m in listener.messages if m.startswith("READY=1"))
        assert "2 apps, all tokens valid" in ready

    def test_ready_after_start_timeout_names_missing(
        self, listener: Listener, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """With an app that cannot get a token, READY comes at start_timeout, naming it."""
        good = TestApp(appid="wx00000000000000b1", secret="b" * 32, name="good")
        bad = TestApp(
            appid="wx00000000000000b2", secret="c" * 32, name="bad", daemon_secret="d" * 32
        )
        emu = emulator([good, bad], lifetime=120)
        d = daemon([good, bad], emu.base_url, admin={"listen": "127.0.0.1:0", "start_timeout": 2})
        d.start(env={"NOTIFY_SOCKET": listener.address})
        wait_for(lambda: "READY=1" in listener.lines(), timeout=20, what="READY=1")
        ready = next(m for m in listener.messages if m.startswith("READY=1"))
        assert "STATUS=1/2 apps have a valid token; waiting for bad" in ready
        assert "40001" in ready
