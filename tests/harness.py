"""Real processes for end-to-end tests: the emulator and ``wxtokend run``, over loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

__all__ = ["FLEET_KEY", "DaemonProcess", "EmulatorProcess", "TestApp", "wait_for"]

# The key a test fleet shares unless a test gives fleet.key_file itself.
FLEET_KEY = "test-fleet-key-0123456789abcdef0123456789abcdef"


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


@dataclass
class TestApp:
    """One app as both sides see it: the emulator knows ``secret``, the daemon is given
    ``daemon_secret`` (the same unless a test wants a wrong one)."""

    __test__ = False  # not a pytest test class

    appid: str  # the corpid for kind="wecom"
    secret: str
    name: str
    grant: str = "stable"
    daemon_secret: str | None = None
    faults: dict[str, float] = field(default_factory=dict)
    kind: str = "official"
    tickets: list[str] = field(default_factory=list)
    agentid: int | None = None


def _emulated(app: TestApp) -> dict[str, Any]:
    ident = {"kind": "wecom", "corpid": app.appid} if app.kind == "wecom" else {"appid": app.appid}
    return {**ident, "secret": app.secret, **({"faults": app.faults} if app.faults else {})}


def _daemon_entry(app: TestApp) -> dict[str, Any]:
    if app.kind == "wecom":
        entry: dict[str, Any] = {"kind": "wecom", "corpid": app.appid, "name": app.name}
        if app.agentid is not None:
            entry["agentid"] = app.agentid
    else:
        entry = {"appid": app.appid, "name": app.name, "grant": app.grant}
    if app.tickets:
        entry["tickets"] = app.tickets
    return {**entry, "secret_file": f"secrets/{app.name}"}


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "wxtokend", *args]


class EmulatorProcess:
    """``wxtokend emulate`` in a subprocess on a random loopback port."""

    def __init__(self, directory: Path, apps: Iterable[TestApp], **settings: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            **settings,
            "apps": [_emulated(a) for a in apps],
        }
        self.config_path = directory / "emulator.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        port_file = directory / "emulator.port"
        self.log_path = directory / "emulator.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            _python(
                "emulate",
                "--config",
                str(self.config_path),
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        port = wait_for(
            lambda: port_file.exists() and port_file.read_text().strip(),
            timeout=20,
            what="the emulator to listen",
        )
        self.base_url = f"http://127.0.0.1:{int(port)}"
        self.http = httpx.Client(base_url=self.base_url, timeout=10)

    def stats(self) -> dict[str, dict[str, int]]:
        return dict(self.http.get("/emulator/stats").json()["apps"])

    def calls(self, appid: str, endpoint: str) -> int:
        return self.stats().get(appid, {}).get(endpoint, 0)

    def check_ticket(self, ticket: str) -> bool:
        return bool(
            self.http.get("/emulator/check-ticket", params={"ticket": ticket}).json()["valid"]
        )

    def check(self, token: str) -> int:
        """0 if the emulator accepts ``token`` now, else its errcode."""
        body = self.http.get("/cgi-bin/getcallbackip", params={"access_token": token}).json()
        return 0 if "ip_list" in body else int(body["errcode"])

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body)
        response.raise_for_status()
        return dict(response.json())

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class DaemonProcess:
    """``wxtokend run`` in a subprocess on a generated config pointing at the emulator."""

    def __init__(
        self,
        directory: Path,
        apps: Iterable[TestApp],
        api_base: str,
        **settings: Any,
    ) -> None:
        self.directory = directory
        self.api_base = api_base
        self.config_path = directory / "config.yaml"
        # settings may put the token files elsewhere, e.g. on a tmpfs like /run/wxtoken.
        self.output_dir = Path(settings.get("output_dir", directory / "tokens"))
        # Not beside the config: the daemon watches that directory, and a log line is an event.
        self.log_path = directory / "log" / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.configure(apps, **settings)

    def configure(self, apps: Iterable[TestApp], **settings: Any) -> None:
        """Write the secret files and the config (atomically, as editors and kubelet do)."""
        self.apps = list(apps)
        secrets_dir = self.directory / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True)
        entries = []
        for app in self.apps:
            secret = (app.daemon_secret or app.secret) + "\n"
            secret_path = secrets_dir / app.name
            if not secret_path.exists() or secret_path.read_text() != secret:
                _replace(secret_path, secret)
            entries.append(_daemon_entry(app))
        settings.setdefault("admin", {"listen": "127.0.0.1:0"})  # concurrent daemons never collide
        fleet = settings.get("fleet")
        if fleet is not None and "key_file" not in fleet:
            _replace(self.directory / "fleet.key", FLEET_KEY + "\n")
            settings["fleet"] = {**fleet, "key_file": "fleet.key"}
        config = {
            "output_dir": "tokens",
            "api_base": self.api_base,
            "wecom_api_base": self.api_base,
            **settings,
            "apps": entries,
        }
        _replace(self.config_path, yaml.safe_dump(config))

    def start(self, *extra: str, env: dict[str, str] | None = None) -> DaemonProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            _python("run", "-c", str(self.config_path), *extra),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A one-shot wxtokend command against this config (``check``, ``get``, ``run --once``)."""
        return subprocess.run(
            _python(*args, "-c", str(self.config_path)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def token(self, name: str) -> str | None:
        try:
            return (self.output_dir / name).read_text()
        except FileNotFoundError:
            return None

    def record(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.output_dir / f"{name}.json").read_text()))
        except FileNotFoundError:
            return None

    def wait_for_tokens(self, names: Iterable[str], *, timeout: float = 20) -> dict[str, str]:
        names = list(names)
        wait_for(
            lambda: all(self.token(n) for n in names),
            timeout=timeout,
            what=f"token files for {names}",
        )
        return {n: self.token(n) or "" for n in names}

    def admin_url(self, *, timeout: float = 20) -> str:
        """The admin listener's base URL, from the daemon's "started" event."""
        return self._started_url("admin", timeout=timeout)

    def proxy_url(self, *, timeout: float = 20) -> str:
        """The API proxy's base URL, from the daemon's "started" event."""
        return self._started_url("api_proxy", timeout=timeout)

    def _started_url(self, role: str, *, timeout: float) -> str:
        """The first address the "started" event gives for the listener ``role``."""

        def started() -> str | None:
            for event in self.events():
                if event.get("event") == "started" and event.get(role):
                    return str(event[role][0])
            return None

        return str(wait_for(started, timeout=timeout, what=f"the daemon's {role} listener"))

    def admin(self, *, timeout: float = 20) -> httpx.Client:
        """An HTTP client for the admin listener."""
        return httpx.Client(base_url=self.admin_url(timeout=timeout), timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 10) -> tuple[int, float]:
        """Signal the daemon; return (exit code, seconds it took to exit)."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        took = time.monotonic() - started
        self.process = None
        self._log.close()
        return code, took

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
            self._log.close()


def _replace(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    os.replace(temp, path)


def temp_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name] if directory.exists() else []


def environ_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


async def raw_post(url: str, path: str, body: bytes) -> tuple[int, bytes, float]:
    """One POST on its own connection, as an independent consumer sends it.

    (status, body, seconds). httpx's pool serialises a thousand concurrent requests
    on the client side; a bare socket per request measures the server instead.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    writer.write(request)
    await writer.drain()
    response = await reader.read()
    writer.close()
    elapsed = time.perf_counter() - started
    head, _, payload = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, payload, elapsed


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real redis-server on a random loopback port, stoppable and restartable."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--enable-debug-command",
                "local",  # DEBUG SLEEP: tests stall Redis
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=20, what="redis-server to answer")

    def _answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
