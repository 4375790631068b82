"""The files in systemd/: a unit systemd accepts and rates as well hardened,
sysusers/tmpfiles snippets that apply cleanly to a scratch root, and an example
config that uses only keys the daemon knows.

Everything runs against temporary copies or a scratch ``--root``: nothing here
touches the host's units, users or /etc.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from wxtokend.config import json_schema

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "wxtokend.service"
SYSUSERS = SYSTEMD / "sysusers.d" / "wxtokend.conf"
TMPFILES = SYSTEMD / "tmpfiles.d" / "wxtokend.conf"
EXAMPLE_CONFIG = SYSTEMD / "config.example.yaml"

INSTALLED_BINARY = "/opt/wxtokend/bin/wxtokend"
MAX_EXPOSURE = 1.5


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (tests/run installs the systemd package)")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)


def _service_settings() -> dict[str, list[str]]:
    """Every Key=value of the [Service] section, in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _setting(key: str) -> str:
    values = _service_settings().get(key)
    assert values, f"{UNIT.name} has no {key}="
    return values[-1]


def _wxtokend_script() -> str:
    beside = Path(sys.executable).parent / "wxtokend"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("wxtokend")
    assert found, "the wxtokend console script is not installed (pip install -e .)"
    return found


class TestUnit:
    def test_verify_is_clean(self, tmp_path: Path) -> None:
        """systemd-analyze verify accepts the unit without a word about it."""
        analyze = _tool("systemd-analyze")
        # verify checks that every Exec*= binary exists, so point ExecStart and
        # ExecReload at this checkout's console script instead of the /opt venv.
        text = UNIT.read_text().replace(INSTALLED_BINARY, _wxtokend_script())
        unit = tmp_path / UNIT.name
        unit.write_text(text)

        result = _run(analyze, "verify", "--man=no", str(unit))

        output = (result.stdout + result.stderr).splitlines()
        about_unit = [line for line in output if UNIT.name in line or str(tmp_path) in line]
        assert about_unit == [], "\n".join(about_unit)
        assert result.returncode == 0, "\n".join(output)

    def test_security_exposure_is_at_most_1_5(self) -> None:
        """systemd-analyze security rates the unit's exposure at most 1.5 (timesyncd: 2.3)."""
        analyze = _tool("systemd-analyze")
        result = _run(analyze, "security", "--offline=true", "--no-pager", str(UNIT))
        output = result.stdout + result.stderr
        found = re.search(rf"Overall exposure level for {re.escape(UNIT.name)}: (\d+\.\d+)", output)
        assert found, output
        exposed = "\n".join(line for line in output.splitlines() if line.startswith("✗"))
        assert float(found.group(1)) <= MAX_EXPOSURE, f"exposure {found.group(1)}:\n{exposed}"

    def test_runtime_directory_is_preserved(self) -> None:
        """Restarts reuse the tokens on disk; a wiped dir means refetching, invalidating classic."""
        assert _setting("RuntimeDirectoryPreserve") == "yes"

    def test_runtime_directory_is_run_wxtoken(self) -> None:
        """Consumers read /run/wxtoken/<name>; the config's output_dir points there."""
        assert _setting("RuntimeDirectory") == "wxtoken"
        assert _setting("RuntimeDirectoryMode") == "0750"

    def test_type_is_notify(self) -> None:
        """Units ordered After=wxtokend start only once READY=1 says the tokens are on disk."""
        assert _setting("Type") == "notify"
        assert _setting("NotifyAccess") == "main"

    def test_watchdog_is_set(self) -> None:
        """The daemon pings at half of WatchdogSec; without it a hung loop is never restarted."""
        assert re.fullmatch(r"\d+s?", _setting("WatchdogSec"))

    def test_chown_stays_allowed(self) -> None:
        """With file_group set the daemon fchown()s each token file; ~@privileged forbids it."""
        filters = _service_settings()["SystemCallFilter"]
        assert "~@privileged @resources" in filters
        assert "@chown" in filters[filters.index("~@privileged @resources") + 1 :]

    def test_runs_as_wxtokend_in_group_wxtoken(self) -> None:
        """The sysusers snippet makes exactly this user and group."""
        assert _setting("User") == "wxtokend"
        assert _setting("Group") == "wxtoken"


class TestSysusersAndTmpfiles:
    def test_sysusers_makes_user_and_group(self, tmp_path: Path) -> None:
        """systemd-sysusers --root makes a no-login wxtokend whose primary group is wxtoken."""
        sysusers = _tool("systemd-sysusers")
        (tmp_path / "etc").mkdir()

        result = _run(sysusers, f"--root={tmp_path}", str(SYSUSERS))

        assert result.returncode == 0, result.stderr
        users = {e[0]: e for e in _entries(tmp_path / "etc" / "passwd")}
        groups = {e[0]: e for e in _entries(tmp_path / "etc" / "group")}
        assert users["wxtokend"][3] == groups["wxtoken"][2]  # primary gid
        assert users["wxtokend"][6].endswith("nologin")
        assert "wxtokend" in groups["wxtoken"][3].split(",")

    def test_tmpfiles_makes_private_config_dirs(self, tmp_path: Path) -> None:
        """systemd-tmpfiles --root makes wxtokend/ root:wxtoken 0750, secrets/ wxtokend 0700."""
        sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
        if os.geteuid() != 0:
            pytest.skip("systemd-tmpfiles needs root to chown inside the scratch root")
        (tmp_path / "etc").mkdir()
        assert _run(sysusers, f"--root={tmp_path}", str(SYSUSERS)).returncode == 0

        result = _run(tmpfiles, f"--root={tmp_path}", "--create", str(TMPFILES))

        assert result.returncode == 0, result.stderr
        uid = int(next(e for e in _entries(tmp_path / "etc/passwd") if e[0] == "wxtokend")[2])
        gid = int(next(e for e in _entries(tmp_path / "etc/group") if e[0] == "wxtoken")[2])
        config_dir = (tmp_path / "etc/wxtokend").stat()
        secrets_dir = (tmp_path / "etc/wxtokend/secrets").stat()
        assert (config_dir.st_uid, config_dir.st_gid, config_dir.st_mode & 0o7777) == (
            0,
            gid,
            0o750,
        )
        assert (secrets_dir.st_uid, secrets_dir.st_mode & 0o7777) == (uid, 0o700)


def _entries(path: Path) -> list[list[str]]:
    return [line.split(":") for line in path.read_text().splitlines() if line]


class TestExampleConfig:
    def test_uses_only_keys_the_daemon_knows(self) -> None:
        """Every key, example apps uncommented, is in wxtokend's schema or is admin.listen."""
        config = _example_with_apps()
        schema = json_schema()
        app_ref = schema["properties"]["apps"]["items"]["$ref"]  # "#/$defs/<model>"
        app_keys = set(schema["$defs"][app_ref.rsplit("/", 1)[-1]]["properties"])
        assert set(config) <= set(schema["properties"]) | {"admin"}
        assert set(config["admin"]) <= {"listen"}
        assert len(config["apps"]) == 2
        for app in config["apps"]:
            assert set(app) <= app_keys
            assert app["secret_file"].startswith("/etc/wxtokend/secrets/")

    def test_matches_the_unit(self) -> None:
        """Tokens go where RuntimeDirectory= points, readable by the wxtoken group only."""
        config = _example_with_apps()
        assert config["output_dir"] == f"/run/{_setting('RuntimeDirectory')}"
        assert config["file_group"] == _setting("Group")
        assert config["file_mode"] == "0640"
        assert config["admin"]["listen"] == "unix:/run/wxtoken/admin.sock"


def _example_with_apps() -> dict[str, Any]:
    """The example config with the commented example apps uncommented."""
    lines = EXAMPLE_CONFIG.read_text().splitlines()
    start = lines.index("apps:")
    apps = [re.sub(r"^  # ?", "  ", line) for line in lines[start + 1 :]]
    config = yaml.safe_load("\n".join([*lines[: start + 1], *apps]))
    assert isinstance(config, dict)
    return config
