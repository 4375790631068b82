"""Real processes for end-to-end tests: the emulator and ``wxtokend run``, over loopback."""

from __future__ import annotations

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

__all__ = ["DaemonProcess", "EmulatorProcess", "TestApp", "wait_for"]


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

    appid: str
    secret: str
    name: str
    grant: str = "stable"
    daemon_secret: str | None = None
    faults: dict[str, float] = field(default_factory=dict)


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "wxtokend", *args]


class EmulatorProcess:
    """``wxtokend emulate`` in a subprocess on a random loopback port."""

    def __init__(self, directory: Path, apps: Iterable[TestApp], **settings: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            **settings,
            "apps": [
                {"appid": a.appid, "secret": a.secret, **({"faults": a.faults} if a.faults else {})}
                for a in apps
            ],
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
        self.apps = list(apps)
        secrets_dir = directory / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True)
        entries = []
        for app in self.apps:
            (secrets_dir / app.name).write_text((app.daemon_secret or app.secret) + "\n")
            entries.append(
                {
                    "appid": app.appid,
                    "name": app.name,
                    "grant": app.grant,
                    "secret_file": f"secrets/{app.name}",
                }
            )
        config = {"output_dir": "tokens", "api_base": api_base, **settings, "apps": entries}
        self.config_path = directory / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.output_dir = directory / "tokens"
        self.log_path = directory / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> DaemonProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            _python("run", "-c", str(self.config_path), *extra),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

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


def temp_leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name] if directory.exists() else []


def environ_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
