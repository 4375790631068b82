"""The proxy's metrics, on the daemon's registry: requests, recoveries, upstream latency.

Labels are configured app names, API roots and errcodes only. Errcodes come from
upstream, so at most :data:`MAX_ERRCODES` distinct ones become labels (then "other"):
a misbehaving upstream cannot grow the series without bound.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["MAX_ERRCODES", "ProxyMetrics"]

MAX_ERRCODES: Final = 64


class ProxyMetrics:
    """One method per thing a proxied call does."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests = Counter(
            "wxtokend_proxy_requests",
            "Calls through the API proxy by app, API root (cgi-bin, wxa, ...) and WeChat's"
            ' errcode ("" when the reply had none, e.g. media; "refused" when the proxy answered'
            ' itself; "unreachable" when WeChat could not be reached).',
            ["app", "group", "errcode"],
            registry=registry,
        )
        self._recoveries = Counter(
            "wxtokend_proxy_recoveries",
            "Calls WeChat rejected for their token (40001/40014/42001), by what the proxy did:"
            " replayed (with a new token), not_replayable (body too large to hold), kept"
            " (no newer token: WeChat's answer returned).",
            ["app", "result"],
            registry=registry,
        )
        self._latency = Histogram(
            "wxtokend_proxy_upstream_duration_seconds",
            "Time from sending a proxied call to WeChat until its reply's headers arrived.",
            ["app"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self._errcodes: set[str] = set()

    def request(self, app: str, group: str, errcode: int | str | None) -> None:
        self._requests.labels(app, group, self._errcode_label(errcode)).inc()

    def recovery(self, app: str, result: str) -> None:
        self._recoveries.labels(app, result).inc()

    def upstream(self, app: str, seconds: float) -> None:
        self._latency.labels(app).observe(seconds)

    def _errcode_label(self, errcode: int | str | None) -> str:
        label = "" if errcode is None else str(errcode)
        if label in self._errcodes:
            return label
        if len(self._errcodes) >= MAX_ERRCODES:
            return "other"
        self._errcodes.add(label)
        return label
