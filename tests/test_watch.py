"""The config watcher: which file-system events mean "look at the files again"."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from wxtokend.watch import ConfigWatcher


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def notifications(directory: Path, change: object, *, watched: str = "config.yaml") -> int:
    """How often the watcher calls back after ``change()`` touches the directory."""
    (directory / watched).write_text("a")
    hits: list[int] = []
    watcher = ConfigWatcher(asyncio.get_running_loop(), lambda: hits.append(1))
    watcher.watch([directory / watched])
    try:
        await asyncio.sleep(0.2)
        change()  # type: ignore[operator]
        await asyncio.sleep(0.4)
    finally:
        watcher.stop()
    return len(hits)


@pytest.mark.anyio
class TestConfigWatcher:
    """Changes to watched files are reported; reads and unrelated files are not."""

    async def test_rename_over(self, tmp_path: Path) -> None:
        """An editor's save (write a temp file, rename it over) is a change."""

        def save() -> None:
            (tmp_path / ".config.yaml.swp").write_text("b")
            os.replace(tmp_path / ".config.yaml.swp", tmp_path / "config.yaml")

        assert await notifications(tmp_path, save) >= 1

    async def test_rewrite_in_place(self, tmp_path: Path) -> None:
        """Writing the file in place is a change."""
        assert (
            await notifications(tmp_path, lambda: (tmp_path / "config.yaml").write_text("c")) >= 1
        )

    async def test_chmod(self, tmp_path: Path) -> None:
        """chmod (e.g. fixing an unreadable secret file) is a change."""
        assert await notifications(tmp_path, lambda: (tmp_path / "config.yaml").chmod(0o600)) >= 1

    async def test_reads_are_not_changes(self, tmp_path: Path) -> None:
        """Reading the file (as the daemon does at every reload) is not a change."""
        assert await notifications(tmp_path, lambda: (tmp_path / "config.yaml").read_text()) == 0

    async def test_other_files_are_ignored(self, tmp_path: Path) -> None:
        """A log or token file in the same directory is not a change."""
        assert await notifications(tmp_path, lambda: (tmp_path / "daemon.log").write_text("x")) == 0
