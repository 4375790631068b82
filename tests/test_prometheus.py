"""deploy/prometheus (alert rules) and deploy/grafana (dashboard): checked with promtool,
held to the metrics the daemon really exports, and proven with a real Prometheus."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import DaemonFactory, EmulatorFactory
from harness import TestApp, free_port, wait_for

from wxtokend.metrics import Metrics
from wxtokend.proxy.metrics import ProxyMetrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "wxtokend-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "wxtokend-rules.test.yaml"
OPERATOR_RULES = ROOT / "deploy" / "prometheus" / "prometheusrule.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "wxtokend-dashboard.json"
_METRIC = re.compile(r"\bwxtokend_[a-z_]+\b")
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("promtool") or "promtool", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def exported() -> set[str]:
    """Every series name the daemon's registry can expose (counters with _total, ...)."""
    metrics = Metrics()
    ProxyMetrics(metrics.registry)
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in _SUFFIXES[family.type]
    }


def rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"])


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


class TestRules:
    """The rules are valid, each alert has firing and quiet cases, the two forms agree."""

    @needs_promtool
    def test_promtool_check_rules(self, tmp_path: Path) -> None:
        """promtool accepts the plain file and the PrometheusRule's groups."""
        spec = yaml.safe_load(OPERATOR_RULES.read_text(encoding="utf-8"))["spec"]
        extracted = tmp_path / "operator-rules.yaml"
        extracted.write_text(yaml.safe_dump(spec))
        for path in (RULES, extracted):
            result = promtool("check", "rules", str(path), cwd=tmp_path)
            assert result.returncode == 0, result.stdout + result.stderr

    @needs_promtool
    def test_promtool_test_rules(self) -> None:
        """promtool test rules: every alert on synthetic series, firing and not."""
        result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_every_alert_is_tested(self) -> None:
        """Each alert appears in the promtool tests, with and without firing."""
        alerts = {r["alert"] for g in rule_groups() for r in g["rules"]}
        cases = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
        checks = [c for t in cases for c in t["alert_rule_test"]]
        for alert in alerts:
            mine = [c for c in checks if c["alertname"] == alert]
            assert any(c["exp_alerts"] for c in mine), f"{alert} never fires in a test"
            assert any(not c["exp_alerts"] for c in mine), f"{alert} never stays quiet"

    def test_operator_rule_has_the_same_groups(self) -> None:
        """prometheusrule.yaml is the plain file's groups in a PrometheusRule."""
        doc = yaml.safe_load(OPERATOR_RULES.read_text(encoding="utf-8"))
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["kind"] == "PrometheusRule"
        assert doc["spec"]["groups"] == rule_groups()

    def test_rules_use_only_exported_metrics(self) -> None:
        """A renamed metric would leave an alert that can never fire."""
        names = {m for g in rule_groups() for r in g["rules"] for m in _METRIC.findall(r["expr"])}
        assert names
        assert names <= exported(), names - exported()

    def test_every_alert_says_what_to_do(self) -> None:
        """Severity, a summary naming what, a description saying where to look."""
        for rule in (r for g in rule_groups() for r in g["rules"]):
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            assert len(rule["annotations"]["description"]) > 40


class TestDashboard:
    """The Grafana dashboard loads and shows only what the daemon exports."""

    def test_uses_only_exported_metrics(self) -> None:
        """Every wxtokend_* series in a panel query is one the daemon exports."""
        names = {m for expr in dashboard_exprs() for m in _METRIC.findall(expr)}
        assert names <= exported(), names - exported()

    def test_covers_what_operators_watch(self) -> None:
        """Expiry countdown, refresh outcomes, upstream latency, fleet health, the proxy."""
        exprs = "\n".join(dashboard_exprs())
        for needed in (
            "wxtokend_token_expiry_timestamp_seconds",
            "wxtokend_refresh_total",
            "wxtokend_upstream_request_duration_seconds_bucket",
            "wxtokend_fleet_redis_up",
            "wxtokend_rejected_records_total",
            "wxtokend_proxy_requests_total",
        ):
            assert needed in exprs

    def test_structure(self) -> None:
        """Unique panel ids, a refId and expr per target, the datasource a variable."""
        board = dashboard()
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["gridPos"]["w"] <= 24
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
            assert all(t["expr"] for t in panel["targets"])


class Prometheus:
    """Debian's prometheus binary on a random loopback port, its data in a temp dir."""

    def __init__(self, directory: Path, *, target: str, rules: Path) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {"job_name": "wxtokend", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        self.log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                shutil.which("prometheus") or "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def firing(self) -> set[tuple[str, str]]:
        try:
            alerts = httpx.get(f"{self.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        except (httpx.HTTPError, ValueError, KeyError):
            return set()
        return {
            (a["labels"]["alertname"], a["labels"].get("app", ""))
            for a in alerts
            if a["state"] == "firing"
        }

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")
class TestRealPrometheus:
    """A real Prometheus scrapes a real daemon against the emulator and evaluates the rules."""

    def test_wrong_secret_fires_the_alerts(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """An app with a wrong secret: WxtokendRefreshFailing and WxtokendAppNotReady fire
        (their `for:` shortened to seconds), the healthy app's expiry alert does not."""
        good = TestApp(appid="wx00000000000000m1", secret="m" * 32, name="good")
        bad = TestApp(
            appid="wx00000000000000m2", secret="n" * 32, name="bad", daemon_secret="x" * 32
        )
        emu = emulator([good, bad], lifetime=3600)
        probe = f"127.0.0.1:{free_port()}"
        d = daemon(
            [good, bad],
            emu.base_url,
            admin={"listen": "127.0.0.1:0", "probe_listen": probe},
            retry={"min": "200ms", "max": "1s"},
        ).start()
        d.wait_for_tokens(["good"])
        quick = tmp_path / "rules.yaml"
        quick.write_text(re.sub(r"for: \d+[smh]", "for: 2s", RULES.read_text(encoding="utf-8")))
        prometheus = Prometheus(tmp_path, target=probe, rules=quick)
        try:
            expected = {("WxtokendRefreshFailing", "bad"), ("WxtokendAppNotReady", "")}
            wait_for(lambda: expected <= prometheus.firing(), timeout=60, what="the alerts to fire")
            firing = prometheus.firing()
            assert ("WxtokendRefreshFailing", "good") not in firing
            assert not any(name == "WxtokendTokenExpiresSoon" for name, _ in firing)
        finally:
            prometheus.close()
