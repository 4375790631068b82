"""Fixtures that start real processes and always clean them up."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DaemonProcess, EmulatorProcess, RedisServer, TestApp

from wxtokend import logs

EmulatorFactory = Callable[..., EmulatorProcess]


@pytest.fixture(autouse=True)
def fresh_logging() -> None:
    """Logging is process-global: a CLI test leaves it pointing at a closed capture stream."""
    logs.configure(level="debug", stream=io.StringIO(), json=True)


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorFactory]:
    started: list[EmulatorProcess] = []

    def start(apps: list[TestApp], **settings: Any) -> EmulatorProcess:
        proc = EmulatorProcess(tmp_path / f"emulator{len(started)}", apps, **settings)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonFactory]:
    made: list[DaemonProcess] = []

    def make(apps: list[TestApp], api_base: str, **settings: Any) -> DaemonProcess:
        proc = DaemonProcess(tmp_path / f"daemon{len(made)}", apps, api_base, **settings)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: tests/run installs it (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()
