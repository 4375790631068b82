"""Hot reload with the real daemon: config edits, secret changes, ConfigMap swaps."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import DaemonFactory, EmulatorFactory
from harness import EmulatorProcess, TestApp, wait_for

pytestmark = pytest.mark.e2e


def app(n: int, name: str, grant: str = "stable") -> TestApp:
    return TestApp(
        appid=f"wx{0xC000 + n:016x}", secret=f"{0xC000 + n:032x}", name=name, grant=grant
    )


def calls(emu: EmulatorProcess, a: TestApp) -> int:
    stats = emu.stats().get(a.appid, {})
    return stats.get("token", 0) + stats.get("stable_token", 0)


def reloaded(text: str, count: int = 1) -> bool:
    return text.count('"event": "reloaded"') >= count


class TestReload:
    """Config and secret changes apply without a restart; unchanged apps are untouched."""

    def test_add_and_remove_apps(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """An added app starts, a removed one stops but keeps its files, the rest make no call."""
        shop, mini, blog = app(1, "shop", "classic"), app(2, "mini"), app(3, "blog")
        emu = emulator([shop, mini, blog], lifetime=120)
        d = daemon([shop, mini], emu.base_url).start()
        before = d.wait_for_tokens(["shop", "mini"])
        baseline = {a.name: calls(emu, a) for a in (shop, mini)}

        d.configure([shop, blog])
        wait_for(lambda: d.token("blog"), timeout=15, what="the added app's token")
        wait_for(lambda: reloaded(d.log_text()), timeout=15, what="the reload")
        assert d.token("mini") == before["mini"]  # consumers keep a valid token
        assert d.token("shop") == before["shop"]
        assert calls(emu, shop) == baseline["shop"]
        assert calls(emu, mini) == baseline["mini"]
        assert emu.check(d.token("blog") or "") == 0

    def test_removed_files_go_when_they_expire(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A removed app's files stay while its token is valid and are deleted once it expires."""
        shop, mini = app(12, "shop"), app(13, "mini")
        emu = emulator([shop, mini], lifetime=10)
        d = daemon([shop, mini], emu.base_url, stable_renew_window=1).start()
        d.wait_for_tokens(["shop", "mini"])
        d.configure([shop], stable_renew_window=1)
        wait_for(lambda: reloaded(d.log_text()), timeout=15, what="the reload")
        record = d.record("mini")
        assert record is not None
        assert time.time() < record["expires_at"]
        gone = lambda: d.token("mini") is None and d.record("mini") is None  # noqa: E731
        wait_for(gone, timeout=30, what="the expired files to go")
        assert time.time() >= record["expires_at"]
        assert d.token("shop")

    def test_remove_files_on_removal(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """With remove_files_on_removal: true a removed app's files go at once."""
        shop, mini = app(14, "shop"), app(15, "mini")
        emu = emulator([shop, mini], lifetime=120)
        d = daemon([shop, mini], emu.base_url, remove_files_on_removal=True).start()
        d.wait_for_tokens(["shop", "mini"])
        d.configure([shop], remove_files_on_removal=True)
        gone = lambda: d.token("mini") is None and d.record("mini") is None  # noqa: E731
        wait_for(gone, timeout=15, what="the removed app's files to go")
        assert d.token("shop")

    def test_changed_secret_is_refetched(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A new secret in the secret file triggers one fetch with it; other apps make none."""
        shop, mini = app(4, "shop", "classic"), app(5, "mini")
        emu = emulator([shop, mini], lifetime=120)
        d = daemon([shop, mini], emu.base_url).start()
        before = d.wait_for_tokens(["shop", "mini"])
        rotated = TestApp(appid=shop.appid, secret="e" * 32, name="shop", grant="classic")
        emu.post("/emulator/apps", {"appid": shop.appid, "secret": rotated.secret})
        mini_calls = calls(emu, mini)

        d.configure([rotated, mini])
        wait_for(lambda: d.token("shop") != before["shop"], timeout=15, what="a refetch")
        assert emu.check(d.token("shop") or "") == 0
        assert calls(emu, shop) == 2
        assert calls(emu, mini) == mini_calls
        assert d.token("mini") == before["mini"]
        assert "e" * 32 not in d.log_text()

    def test_invalid_config_keeps_the_old_one(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A broken edit is logged with the usual message; the daemon runs on, then recovers."""
        shop, blog = app(6, "shop"), app(7, "blog")
        emu = emulator([shop, blog], lifetime=120)
        d = daemon([shop], emu.base_url).start()
        token = d.wait_for_tokens(["shop"])["shop"]
        good = d.config_path.read_text()
        d.config_path.write_text(good.replace("grant: stable", "grant: stabel"))
        wait_for(lambda: "reload failed" in d.log_text(), timeout=15, what="the reload error")
        event = next(e for e in d.events() if e.get("event", "").startswith("reload failed"))
        assert any("apps[0].grant" in p and "stable" in p for p in event["problems"])
        assert d.process is not None
        assert d.process.poll() is None
        assert d.token("shop") == token
        assert d.admin().get("/readyz").status_code == 200

        d.configure([shop, blog])
        wait_for(lambda: d.token("blog"), timeout=15, what="recovery with the fixed config")

    def test_configmap_symlink_swap(self, emulator: EmulatorFactory, tmp_path: Path) -> None:
        """A Kubernetes-style update (the ..data symlink swapped) is noticed and applied."""
        from harness import DaemonProcess

        shop, blog = app(8, "shop"), app(9, "blog")
        emu = emulator([shop, blog], lifetime=120)
        d = DaemonProcess(tmp_path / "d", [shop, blog], emu.base_url)  # writes secrets for both
        volume = tmp_path / "configmap"
        volume.mkdir()

        generated = d.config_path

        def publish(version: str, apps: list[TestApp]) -> None:
            d.config_path = generated
            d.configure(apps)
            data = yaml.safe_load(generated.read_text())
            data["output_dir"] = str(d.output_dir)
            for entry in data["apps"]:
                entry["secret_file"] = str(d.directory / "secrets" / entry["name"])
            (volume / version).mkdir()
            (volume / version / "config.yaml").write_text(yaml.safe_dump(data))
            (volume / "..data_tmp").symlink_to(version)
            os.replace(volume / "..data_tmp", volume / "..data")  # what kubelet does
            d.config_path = volume / "config.yaml"

        publish("..v1", [shop])
        (volume / "config.yaml").symlink_to("..data/config.yaml")
        d.start()
        try:
            d.wait_for_tokens(["shop"])
            time.sleep(0.5)
            publish("..v2", [shop, blog])
            wait_for(lambda: d.token("blog"), timeout=15, what="the swapped-in app")
        finally:
            d.kill()

    def test_sighup_reloads(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """SIGHUP applies the config on disk right away."""
        shop, blog = app(10, "shop"), app(11, "blog")
        emu = emulator([shop, blog], lifetime=120)
        d = daemon([shop], emu.base_url).start()
        d.wait_for_tokens(["shop"])
        d.send(signal.SIGHUP)
        wait_for(lambda: reloaded(d.log_text()), timeout=15, what="the SIGHUP reload")
        event = next(e for e in d.events() if e.get("event") == "reloaded")
        assert (event["added"], event["removed"], event["refetched"]) == ([], [], [])
