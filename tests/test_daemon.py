"""Settings the daemon hands to every refresh loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fakes import ScriptedWeChat, VirtualClock, daemon_config
from test_admin import SHOP

from wxtokend.daemon import Daemon
from wxtokend.errors import TransientError


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
class TestRetrySettings:
    """retry.min and retry.max bound the waits after transient failures."""

    async def test_backoff_between_the_configured_floor_and_cap(self, tmp_path: Path) -> None:
        """Every wait after a 502 lies within [retry.min, retry.max], and grows past the floor."""
        clock = VirtualClock()
        failures = {n: TransientError("HTTP 502 from WeChat") for n in range(1, 100)}
        wechat = ScriptedWeChat(clock, failures=failures)
        config = dataclasses.replace(
            daemon_config(tmp_path, (SHOP,)), retry_min=0.05, retry_max=0.2
        )
        refresher = Daemon(config, source=wechat, clock=clock).refreshers["shop"]
        waits = []
        for _ in range(30):
            assert not await refresher.refresh()
            waits.append(refresher.next_at - clock.now())
        assert all(0.05 - 1e-6 <= wait <= 0.2 + 1e-6 for wait in waits)  # float clock
        assert max(waits) > 0.1
