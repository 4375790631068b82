"""How many wrong credentials a client may send before it has to wait.

Pure rules on an injected clock reading (monotonic seconds): the SDK drop-in
records each failed credential per client and asks before checking one. A
client with ``limit`` failures inside the last ``window`` seconds is refused
until the oldest of them is ``window`` old. Memory is bounded twice: at most
``limit`` timestamps per client, at most ``max_clients`` clients (the one
whose last failure is oldest goes first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

__all__ = ["FailureLimiter"]


@dataclass
class FailureLimiter:
    """Per-client failure counts over a sliding window."""

    limit: int = 10
    window: float = 60.0
    max_clients: int = 4096
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict, repr=False)

    def retry_after(self, client: str, now: float) -> float | None:
        """Seconds ``client`` must wait before its next attempt counts, or None if it may try."""
        recent = self._recent(client, now)
        if recent is None or len(recent) < self.limit:
            return None
        return recent[0] + self.window - now

    def failed(self, client: str, now: float) -> None:
        """Note one wrong credential from ``client`` at ``now``."""
        recent = self._recent(client, now)
        if recent is None:
            recent = deque(maxlen=self.limit)
            self._failures[client] = recent
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        recent.append(now)
        self._failures.move_to_end(client)

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, client: str, now: float) -> deque[float] | None:
        """The client's failures still inside the window; a client with none is forgotten."""
        recent = self._failures.get(client)
        if recent is None:
            return None
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        if not recent:
            del self._failures[client]
            return None
        return recent
