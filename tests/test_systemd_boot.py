"""wxtokend under a real systemd: a Debian tree booted with systemd-nspawn.

The tree (debootstrap --variant=minbase of Debian bookworm, with systemd 252 and a
venv holding wxtokend's locked runtime dependencies) is built once and cached in
$WXTOKEND_TEST_CACHE (default /var/cache/wxtokend-test); each run boots it with a
throw-away overlay (--volatile=overlay) and this checkout bind-mounted at /src.
tests/systemd_boot/driver.sh then installs the unit as the README says and checks
start (Type=notify), group read access, journald priorities, a reload that
returns when done and a refused one that fails, and restart reuse.

Skipped, with the reason, where it cannot run: not root, no systemd-nspawn or
debootstrap, or a host that cannot boot a container.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from harness import TestApp

pytestmark = pytest.mark.e2e

# systemd's exit statuses for a sandboxing step it could not set up (226/NAMESPACE,
# 218/CAPABILITIES, 228/SECCOMP, ...): the host, not the unit, is at fault.
_SANDBOX_REFUSED = re.compile(r"status=2(0[0-9]|1[0-9]|2[0-9]|3[0-9]|4[0-3])/[A-Z_]+")
ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "systemd_boot"
CACHE = Path(os.environ.get("WXTOKEND_TEST_CACHE", "/var/cache/wxtokend-test"))
MIRROR = os.environ.get("WXTOKEND_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,procps,passwd"
SHOP = TestApp(appid="wx00000000000000b1", secret="b" * 32, name="shop")
BLOG = TestApp(appid="wx00000000000000b2", secret="c" * 32, name="blog")
BAD = TestApp(appid="wx00000000000000b3", secret="d" * 32, name="bad", daemon_secret="e" * 32)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {package})"
    return None


def _runtime_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(project["dependencies"])


def _tree_key() -> str:
    digest = hashlib.sha256()
    digest.update(PACKAGES.encode())
    digest.update("\n".join(_runtime_dependencies()).encode())
    digest.update((ROOT / "tests" / "constraints.txt").read_bytes())
    return digest.hexdigest()[:12]


def _nspawn(tree: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-nspawn", "--quiet", "--keep-unit", "--register=no", "-D", str(tree), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _debian() -> Path:
    """debootstrap's tree alone, cached apart: the venv on top changes more often."""
    base = CACHE / f"debian-{hashlib.sha256(PACKAGES.encode()).hexdigest()[:12]}"
    if not base.is_dir():
        partial = base.with_name(base.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={PACKAGES}",
                "bookworm",
                str(partial),
                MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        partial.rename(base)
    return base


def _build_tree(final: Path) -> None:
    """Debian with systemd and a venv with the locked runtime dependencies; built
    beside the cache and renamed into place, so a killed build leaves no half tree."""
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(["cp", "-a", str(_debian()), str(partial)], check=True, timeout=300)
    # Wheels fetched by this host's pip (the host may reach PyPI through a proxy or
    # CA the tree does not know), installed offline in the tree: same Debian, glibc
    # and CPython minor, so the same wheels fit.
    wheels = partial / "wheels"
    version = _nspawn(
        partial, "python3", "-c", "import platform; print(platform.python_version())", timeout=120
    )
    assert version.returncode == 0, version.stderr
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            # Markers as the tree's Python sees them (redis wants async-timeout < 3.11.3).
            f"--python-version={version.stdout.strip()}",
            "--only-binary=:all:",
            "--dest",
            str(wheels),
            "-c",
            str(ROOT / "tests" / "constraints.txt"),
            *_runtime_dependencies(),
            "async-timeout>=4.0.3",  # redis needs it below Python 3.11.3 (bookworm: 3.11.2)
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    shutil.copy(ROOT / "tests" / "constraints.txt", partial / "constraints.txt")
    venv = _nspawn(partial, "python3", "-m", "venv", "/opt/wxtokend", timeout=300)
    assert venv.returncode == 0, venv.stderr
    install = _nspawn(
        partial,
        "/opt/wxtokend/bin/pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links=/wheels",
        "-c",
        "/constraints.txt",
        *_runtime_dependencies(),
        timeout=900,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(wheels)
    site = next((partial / "opt" / "wxtokend" / "lib").glob("python3*/site-packages"))
    (site / "wxtokend-src.pth").write_text("/src\n")  # the checkout, bind-mounted
    script = partial / "opt" / "wxtokend" / "bin" / "wxtokend"
    script.write_text(
        "#!/opt/wxtokend/bin/python\nfrom wxtokend.cli import main\nraise SystemExit(main())\n"
    )
    script.chmod(0o755)
    partial.rename(final)


@pytest.fixture(scope="session")
def tree() -> Path:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    final = CACHE / f"bookworm-{_tree_key()}"
    if not final.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            _build_tree(final)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot build the Debian tree here: {exc}")
    return final


def _config(apps: list[TestApp], **extra: object) -> str:
    config = {
        "output_dir": "/run/wxtoken",
        "file_group": "wxtoken",
        "api_base": "http://127.0.0.1:18080",
        "admin": {"listen": "127.0.0.1:9735", "start_timeout": "5s"},
        "retry": {"min": "1s", "max": "5s"},
        "apps": [
            {
                "appid": a.appid,
                "name": a.name,
                "grant": "classic",
                "secret_file": f"/etc/wxtokend/secrets/{a.name}",
            }
            for a in apps
        ],
        **extra,
    }
    return yaml.safe_dump(config)


def _prepare(test: Path) -> None:
    test.mkdir()
    apps = [SHOP, BLOG, BAD]
    (test / "emulator.yaml").write_text(
        yaml.safe_dump(
            {"lifetime": 600, "apps": [{"appid": a.appid, "secret": a.secret} for a in apps]}
        )
    )
    for app in apps:
        (test / f"secret-{app.name}").write_text((app.daemon_secret or app.secret) + "\n")
    (test / "config.yaml").write_text(_config([SHOP, BAD]))
    (test / "config-blog.yaml").write_text(_config([SHOP, BAD, BLOG]))
    (test / "config-broken.yaml").write_text(_config([SHOP, BAD]).replace("classic", "clasic"))


class TestUnderSystemd:
    """The unit as shipped, under Debian's systemd 252, booted for real."""

    def test_start_reload_stop(self, tree: Path, tmp_path: Path) -> None:
        """notify start, group reads, journald priorities, waiting and failing reloads,
        restart reuse, stop: every step of the driver reports ok."""
        test, out = tmp_path / "test", tmp_path / "out"
        _prepare(test)
        out.mkdir()
        booted = _nspawn(
            tree,
            "--boot",
            "--volatile=overlay",
            "--console=pipe",
            f"--bind-ro={ROOT}:/src",
            f"--bind-ro={test}:/test",
            f"--bind={out}:/out",
            f"--bind-ro={HERE / 'wxtokend-test.service'}:/etc/systemd/system/wxtokend-test.service",
            "--",  # the rest is for systemd itself (PID 1): boot into the test unit
            "--unit=wxtokend-test.service",
            timeout=300,
        )
        report_path = out / "report"
        if not report_path.exists():
            pytest.skip(
                "systemd-nspawn could not boot the tree here (exit"
                f" {booted.returncode}): {(booted.stderr or booted.stdout)[-400:]}"
            )
        report = report_path.read_text().splitlines()
        log = (out / "log").read_text() if (out / "log").exists() else ""
        journal = (out / "journal").read_text() if (out / "journal").exists() else ""
        if "FAIL start" in report and _SANDBOX_REFUSED.search(journal):
            pytest.skip(
                "this host's kernel cannot apply the unit's sandboxing inside a container: "
                + _SANDBOX_REFUSED.search(journal).group(0)  # type: ignore[union-attr]
            )
        failed = [line for line in report if not line.startswith("ok ")]
        assert failed == ["done"], (
            f"{report}\n--- driver log\n{log[-4000:]}\n--- journal\n{journal[-6000:]}"
        )
        assert len(report) > 20
