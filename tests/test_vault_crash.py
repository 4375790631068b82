"""kill -9 during refresh-token rotations never loses the refresh token (many times)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from wxtokend.platforms.vault import Vault

APPID = "wx00000000000000aa"
# A child rotating the token as fast as it can: it prints each value once save_grant
# returned (what the book would then use); the parent kills it at a random instant.
_ROTATOR = f"""
import sys, time
from pathlib import Path
from wxtokend.platforms.vault import Grant, Vault
vault = Vault(Path(sys.argv[1]))
vault.prepare()
start = int(sys.argv[2])
for i in range(start, start + 1_000_000):
    vault.save_grant(Grant(appid="{APPID}", refresh_token=f"REFRESH_{{i}}", updated_at=time.time()))
    print(i, flush=True)
"""


class TestKillDuringRotation:
    """Whatever instant the process dies, the vault holds the last confirmed or the next."""

    def test_many_kills(self, tmp_path: Path) -> None:
        directory = tmp_path / "state" / "agency"
        rng = random.Random(7)
        confirmed = -1
        for _ in range(30):
            child = subprocess.Popen(
                [sys.executable, "-c", _ROTATOR, str(directory), str(confirmed + 1)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None
            child.stdout.readline()  # it runs: at least one rotation happened
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(child.pid, signal.SIGKILL)
            out, _ = child.communicate()
            lines = [int(x) for x in out.split()]
            confirmed = max([confirmed, *lines]) if lines else confirmed + 1
            grants, problems = Vault(directory).grants()
            assert problems == []  # a torn line is never read as a grant
            assert len(grants) == 1
            held = int(grants[0].refresh_token.removeprefix("REFRESH_"))
            # The last value the child confirmed, or the one it was writing when killed.
            assert held in (confirmed, confirmed + 1)
            confirmed = held
        Vault(directory).prepare()  # the next start removes temp files a kill left
        assert not [p for p in directory.iterdir() if ".tmp-" in p.name]
