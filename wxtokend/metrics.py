"""Prometheus metrics: what operators alert on.

One registry per daemon (not prometheus-client's global one), so tests and
embedded daemons never share counters. Labels are app names, grants, outcomes
and errcodes only: never a token, a fingerprint or a secret.
"""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The daemon's metrics, with one method per thing that happens."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._refresh = Counter(
            "wxtokend_refresh",
            "Refresh attempts by outcome (ok, reused, unchanged, transient, fatal, ...);"
            " grant is the token's grant, or jsapi_ticket, wx_card_ticket, agent_config_ticket.",
            ["app", "grant", "outcome", "errcode"],
            registry=r,
        )
        self._upstream = Counter(
            "wxtokend_upstream_requests",
            "HTTP requests sent to WeChat's token endpoints.",
            ["app", "endpoint"],
            registry=r,
        )
        self._duration = Histogram(
            "wxtokend_upstream_request_duration_seconds",
            "Duration of requests to WeChat's token endpoints.",
            ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self._expiry = Gauge(
            "wxtokend_token_expiry_timestamp_seconds",
            "When the token on disk expires (unix seconds).",
            ["app"],
            registry=r,
        )
        self._ticket_expiry = Gauge(
            "wxtokend_ticket_expiry_timestamp_seconds",
            "When a ticket on disk expires (unix seconds).",
            ["app", "ticket"],
            registry=r,
        )
        self._last_success = Gauge(
            "wxtokend_last_success_timestamp_seconds",
            "When the last refresh succeeded (unix seconds).",
            ["app"],
            registry=r,
        )
        self._failures = Gauge(
            "wxtokend_consecutive_failures",
            "Failed refresh attempts since the last success.",
            ["app"],
            registry=r,
        )
        self._ticket_failures = Gauge(
            "wxtokend_ticket_consecutive_failures",
            "Failed ticket refresh attempts since the last success.",
            ["app", "ticket"],
            registry=r,
        )
        self._write_errors = Counter(
            "wxtokend_file_write_errors", "Token files that could not be written.", registry=r
        )
        self._passive = Counter(
            "wxtokend_passive_refresh",
            "Passive refresh reports (a consumer saw the token rejected) by result.",
            ["app", "result"],
            registry=r,
        )
        self._ready = Gauge(
            "wxtokend_apps_ready", "Apps whose token on disk is valid right now.", registry=r
        )
        self._apps = Gauge("wxtokend_apps", "Apps configured.", registry=r)
        self._rejected = Counter(
            "wxtokend_rejected_records",
            "Tokens or tickets refused where they entered, by source: fleet (a record in Redis"
            " unsigned, wrongly signed, for another key or invalid), state_file.",
            ["source"],
            registry=r,
        )
        self._authorizers = Gauge(
            "wxtokend_platform_authorizers",
            "Authorizers of a third-party platform by state: ok, pending, needs_authorization"
            " (61023: its administrator must authorize again).",
            ["platform", "state"],
            registry=r,
        )
        self._authorizer_refresh = Counter(
            "wxtokend_platform_authorizer_refreshes",
            "Authorizer token refreshes of a platform by outcome (no per-authorizer label).",
            ["platform", "outcome"],
            registry=r,
        )
        self._callbacks = Counter(
            "wxtokend_platform_callbacks",
            "Callbacks a platform's listener (or the admin forwarding endpoint) received, by"
            " result: accepted, forged (bad signature, replayed, stale, another appid),"
            " malformed. Forged ones in numbers mean someone other than WeChat is calling.",
            ["platform", "result"],
            registry=r,
        )
        self._fleet_up = Gauge(
            "wxtokend_fleet_redis_up", "1 while the fleet's Redis answers, else 0.", registry=r
        )

    def refresh(self, app: str, grant: str, outcome: str, errcode: int | None) -> None:
        errcode_label = "" if errcode is None else str(errcode)
        self._refresh.labels(app, grant, outcome, errcode_label).inc()

    def upstream(self, app: str, endpoint: str, seconds: float) -> None:
        self._upstream.labels(app, endpoint).inc()
        self._duration.labels(endpoint).observe(seconds)

    def token(
        self,
        app: str,
        *,
        expires_at: float,
        fetched: float | None = None,
        kind: str = "access_token",
    ) -> None:
        if kind != "access_token":
            self._ticket_expiry.labels(app, kind).set(expires_at)
            return
        self._expiry.labels(app).set(expires_at)
        if fetched is not None:
            self._last_success.labels(app).set(fetched)

    def failures(self, app: str, count: int, *, kind: str = "access_token") -> None:
        if kind == "access_token":
            self._failures.labels(app).set(count)
        else:
            self._ticket_failures.labels(app, kind).set(count)

    def write_error(self) -> None:
        self._write_errors.inc()

    def passive(self, app: str, result: str) -> None:
        self._passive.labels(app, result).inc()

    def rejected(self, source: str) -> None:
        self._rejected.labels(source).inc()

    def apps(self, *, configured: int, ready: int) -> None:
        self._apps.set(configured)
        self._ready.set(ready)

    def authorizers(self, platform: str, counts: dict[str, int]) -> None:
        self._authorizers.labels(platform, "ok").set(counts["valid"])
        self._authorizers.labels(platform, "pending").set(counts["pending"])
        self._authorizers.labels(platform, "needs_authorization").set(counts["needs_authorization"])

    def authorizer_refresh(self, platform: str, outcome: str) -> None:
        self._authorizer_refresh.labels(platform, outcome).inc()

    def callback(self, platform: str, result: str) -> None:
        """Only for configured platforms' names: an unknown name is never a label."""
        self._callbacks.labels(platform, result).inc()

    def fleet_up(self, up: bool) -> None:
        self._fleet_up.set(1 if up else 0)

    def forget(self, app: str) -> None:
        """Drop a removed app's per-app gauges (its counters stay, as counters do)."""
        for gauge in (self._expiry, self._last_success, self._failures):
            with contextlib.suppress(KeyError):
                gauge.remove(app)
        for kind in ("jsapi", "wx_card", "agent_config"):
            self.forget_ticket(app, kind)

    def forget_ticket(self, app: str, kind: str) -> None:
        for gauge in (self._ticket_expiry, self._ticket_failures):
            with contextlib.suppress(KeyError):
                gauge.remove(app, kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)
