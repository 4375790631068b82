"""The disk fights back: full, read-only, symlinks, a directory in the way, unsafe modes.

Each attack keeps every token a consumer holds: the old file stays whole, the
daemon says why in /readyz and its log, counts it, and recovers by itself.
The store-level tests run anywhere; the filesystem ones mount a small tmpfs and
need root (CI runs as root), and skip with the reason otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, TestApp, temp_leftovers, wait_for

from wxtokend.errors import OutputDirError, StateFileError
from wxtokend.store import Record, TokenStore, UnsafeDirectoryError, check_directory

TOKEN_A = "TOKEN_A_0123456789"


def record(token: str = TOKEN_A, name: str = "shop") -> Record:
    return Record(
        appid="wx0123456789abcdef",
        name=name,
        grant="classic",
        access_token=token,
        expires_at=2_000_000_000,
        fetched_at=2_000_000_000 - 7200,
    )


def snapshot(path: Path) -> tuple[bytes, int, int]:
    """What a victim file outside output_dir looks like: content, inode, mtime."""
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside output_dir that a planted symlink points at."""
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"do not touch")
    return victim


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "tokens"
    directory.mkdir(mode=0o750)
    return directory


class TestPlantedSymlinks:
    """A symlink at a token, JSON or temp name is replaced or avoided, never written through."""

    @pytest.mark.parametrize("planted", ["shop", "shop.json"])
    def test_link_at_file_name_is_replaced(self, out: Path, outside: Path, planted: str) -> None:
        """The rename replaces the link itself; its target keeps its bytes, inode and mtime."""
        before = snapshot(outside)
        (out / planted).symlink_to(outside)
        TokenStore(directory=out, file_mode=0o640).save(record())
        assert snapshot(outside) == before
        assert not (out / planted).is_symlink()
        assert stat.S_ISREG((out / planted).lstat().st_mode)
        assert (out / "shop").read_bytes() == TOKEN_A.encode()
        assert json.loads((out / "shop.json").read_bytes())["access_token"] == TOKEN_A

    def test_link_to_identical_content_is_still_replaced(self, out: Path, outside: Path) -> None:
        """A link to a file already holding the token is not taken as "already written"."""
        outside.write_bytes(TOKEN_A.encode())
        os.chmod(outside, 0o640)
        (out / "shop").symlink_to(outside)
        assert TokenStore(directory=out, file_mode=0o640).save(record()) is True
        assert not (out / "shop").is_symlink()

    def test_planted_temp_name_is_skipped(
        self, out: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A link at the next temp name is never opened: another random name is used."""
        names = iter(["deadbeef", "deadbeef", "cafe0001", "cafe0002"])
        monkeypatch.setattr(secrets, "token_hex", lambda _: next(names))
        (out / ".shop.json.tmp-deadbeef").symlink_to(outside)
        before = snapshot(outside)
        TokenStore(directory=out, file_mode=0o640).save(record())
        assert snapshot(outside) == before
        assert (out / ".shop.json.tmp-deadbeef").is_symlink()  # not ours: left alone
        assert json.loads((out / "shop.json").read_bytes())["access_token"] == TOKEN_A

    def test_every_temp_name_taken_fails_cleanly(
        self, out: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If every temp name tried is taken, the write fails naming the file; nothing changes."""
        store = TokenStore(directory=out, file_mode=0o640)
        store.save(record("OLD_TOKEN"))
        monkeypatch.setattr(secrets, "token_hex", lambda _: "deadbeef")
        (out / ".shop.json.tmp-deadbeef").symlink_to(outside)
        before = snapshot(outside)
        with pytest.raises(FileExistsError) as caught:
            store.save(record())
        assert caught.value.filename == str(out / "shop.json")
        assert snapshot(outside) == before
        assert (out / "shop").read_bytes() == b"OLD_TOKEN"

    def test_load_refuses_a_linked_state_file(self, out: Path, tmp_path: Path) -> None:
        """A <name>.json linking to a valid record elsewhere is not read, let alone trusted."""
        foreign = tmp_path / "foreign.json"
        foreign.write_bytes(record("FOREIGN_TOKEN").to_json())
        (out / "shop.json").symlink_to(foreign)
        with pytest.raises(StateFileError, match="symlink"):
            TokenStore(directory=out, file_mode=0o640).load("shop")

    def test_load_refuses_a_fifo_without_hanging(self, out: Path) -> None:
        """A FIFO at <name>.json is refused at once (opened non-blocking, not a regular file)."""
        os.mkfifo(out / "shop.json")
        with pytest.raises(StateFileError, match="not a regular file"):
            TokenStore(directory=out, file_mode=0o640).load("shop")

    def test_load_refuses_an_oversized_state_file(self, out: Path) -> None:
        """A multi-megabyte <name>.json is not read into memory."""
        (out / "shop.json").write_bytes(b" " * 1_000_000)
        with pytest.raises(StateFileError, match="larger than"):
            TokenStore(directory=out, file_mode=0o640).load("shop")

    def test_prepare_removes_temp_named_links_not_targets(self, out: Path, outside: Path) -> None:
        """Crash leftovers include links with temp names: the link goes, its target stays."""
        (out / ".shop.tmp-0badf00d").symlink_to(outside)
        before = snapshot(outside)
        assert TokenStore(directory=out, file_mode=0o640).prepare() == [".shop.tmp-0badf00d"]
        assert snapshot(outside) == before
        assert list(out.iterdir()) == []

    def test_directory_swapped_for_a_link_is_not_followed(self, out: Path, tmp_path: Path) -> None:
        """output_dir replaced by a symlink while running: writes fail, the target stays empty."""
        store = TokenStore(directory=out, file_mode=0o640)
        store.save(record("OLD_TOKEN"))
        elsewhere = tmp_path / "elsewhere-dir"
        elsewhere.mkdir()
        out.rename(tmp_path / "moved")
        out.symlink_to(elsewhere)
        with pytest.raises(OSError, match="is a symlink now") as caught:
            store.save(record())
        assert caught.value.errno == errno.ELOOP
        assert caught.value.filename == str(out)
        assert list(elsewhere.iterdir()) == []


class TestDirectoryInTheWay:
    """A directory where a token file belongs: the write fails naming it; nothing is deleted."""

    def test_save_names_the_directory(self, out: Path) -> None:
        """EISDIR names <name>.json; the JSON (written first) is the one refused."""
        (out / "shop.json").mkdir()
        with pytest.raises(IsADirectoryError) as caught:
            TokenStore(directory=out, file_mode=0o640).save(record())
        assert caught.value.filename == str(out / "shop.json")
        assert temp_leftovers(out) == []

    def test_remove_leaves_a_directory_alone(self, out: Path) -> None:
        """Removing an app's files (a reload dropped it) skips a directory at its name."""
        store = TokenStore(directory=out, file_mode=0o640)
        store.save(record())
        (out / "shop").unlink()
        (out / "shop").mkdir()
        store.remove("shop")
        assert sorted(p.name for p in out.iterdir()) == ["shop"]


class TestDirectoryModes:
    """check_directory refuses what others could tamper with and warns on a foreign owner."""

    def test_private_directory_is_fine(self, out: Path) -> None:
        """0750, owned by the daemon's user: no refusal, no warning."""
        assert check_directory(out) == []

    def test_world_writable_without_sticky_is_refused(self, out: Path) -> None:
        """Mode 0777: anyone could rename a file over a token: refused, with the chmod."""
        os.chmod(out, 0o777)
        with pytest.raises(
            UnsafeDirectoryError, match=r"\(mode 0777\) without the sticky bit.*chmod o-w"
        ):
            check_directory(out)

    def test_world_writable_with_sticky_is_accepted(self, out: Path) -> None:
        """Mode 1777 (a tmpfs, Kubernetes' memory emptyDir): others cannot replace our files."""
        os.chmod(out, 0o1777)
        assert check_directory(out) == []

    def test_symlink_is_refused(self, out: Path, tmp_path: Path) -> None:
        """output_dir itself a symlink: refused, naming its target."""
        link = tmp_path / "link"
        link.symlink_to(out)
        with pytest.raises(UnsafeDirectoryError, match=f"symlink \\(to {out}\\)"):
            check_directory(link)

    def test_regular_file_is_refused(self, tmp_path: Path) -> None:
        """A file where the directory belongs is an error, not a refusal to warn about."""
        path = tmp_path / "file"
        path.write_text("x")
        with pytest.raises(OutputDirError, match="not a directory"):
            check_directory(path)

    @pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
    def test_foreign_owner_warns(self, out: Path) -> None:
        """Owned by another (non-root) user: usable, with a warning naming the uid."""
        os.chown(out, 54321, -1)
        (warning,) = check_directory(out)
        assert "owned by uid 54321" in warning


# -- against the real daemon ------------------------------------------------------------


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}): run as root")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs as output_dir, unmounted afterwards even if the test failed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    path = tmp_path / "tokens-tmpfs"
    mount_tmpfs(path, "256k")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte; the filler file."""
    filler = directory / "filler"
    block = b"\0" * 4096
    with filler.open("wb", buffering=0) as f:
        while _written(f.write, block):
            pass
    return filler


def _written(write: Callable[[bytes], object], data: bytes) -> bool:
    """Write; False once the filesystem is full."""
    try:
        write(data)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False
    return True


def app(n: int, name: str, grant: str = "classic") -> TestApp:
    return TestApp(appid=f"wx{n:016x}", secret=f"{n:032x}", name=name, grant=grant)


def write_errors(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("wxtokend_file_write_errors_total"):
            return float(line.split()[-1])
    raise AssertionError("no wxtokend_file_write_errors_total in /metrics")


def not_ready_because(client: httpx.Client, name: str, words: str) -> str | None:
    response = client.get("/readyz")
    detail = response.json().get("apps", {})
    if response.status_code == 503 and isinstance(detail, dict) and words in detail.get(name, ""):
        return str(detail[name])
    return None


def files(d: DaemonProcess, name: str) -> tuple[bytes, bytes]:
    return (d.output_dir / name).read_bytes(), (d.output_dir / f"{name}.json").read_bytes()


def break_then_heal(
    emulator: EmulatorFactory,
    daemon: DaemonFactory,
    output_dir: Path,
    *,
    breaks: Callable[[], object],
    heals: Callable[[], object],
    words: str,
) -> None:
    """Start, break the disk, ask for new tokens, check nothing was lost, heal, check recovery.

    shop (classic) must not fetch at all while it cannot write: a new classic token
    would kill the one consumers hold. mini (stable) fetches a token it cannot write,
    keeps it in memory and writes it once the disk is back, with no second fetch.
    """
    shop, mini = app(1, "shop"), app(7, "mini", "stable")
    emu = emulator([shop, mini], lifetime=600, grace=300)
    d = daemon([shop, mini], emu.base_url, output_dir=str(output_dir)).start()
    old = d.wait_for_tokens(["shop", "mini"])
    client = d.admin()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=20, what="ready")
    before = {name: files(d, name) for name in old}
    calls = {"shop": emu.calls(shop.appid, "token"), "mini": emu.calls(mini.appid, "stable_token")}
    breaks()
    for name, token in old.items():  # passive reports: each asks for a new token now
        client.post(f"/v1/apps/{name}/refresh", json={"access_token": token})
    for name in old:
        detail = wait_for(
            lambda n=name: not_ready_because(client, n, words),
            timeout=20,
            what=f"readyz for {name}: {words}",
        )
        assert str(output_dir / f"{name}.json") in detail
    assert "fetch deferred" in client.get("/readyz").json()["apps"]["shop"]
    assert {name: files(d, name) for name in old} == before  # not truncated, blanked, mixed
    assert write_errors(client) >= 2
    assert emu.calls(shop.appid, "token") == calls["shop"]
    assert emu.check(old["shop"]) == 0  # the classic token consumers hold still works
    mini_calls = emu.calls(mini.appid, "stable_token")
    assert mini_calls > calls["mini"]

    heals()
    new = {
        name: wait_for(
            lambda n=name: (d.token(n) or old[n]) != old[n] and d.token(n),
            timeout=45,
            what=f"{name}'s new token on disk once the disk is back",
        )
        for name in old
    }
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=20, what="ready again")
    for name, token in new.items():
        assert (d.record(name) or {}).get("access_token") == token
        assert emu.check(token) == 0
    assert emu.calls(shop.appid, "token") == calls["shop"] + 1  # the deferred fetch, once
    assert emu.calls(mini.appid, "stable_token") == mini_calls  # written from memory
    assert temp_leftovers(output_dir) == []
    assert d.process is not None
    assert d.process.poll() is None  # it never gave up


@pytest.mark.e2e
class TestDiskFull:
    """output_dir on a tiny tmpfs that fills up (ENOSPC)."""

    def test_old_token_kept_reported_and_recovered(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmpfs: Path
    ) -> None:
        """Old files intact, readyz says "No space left", counted; written once space is back."""
        filler: list[Path] = []
        break_then_heal(
            emulator,
            daemon,
            tmpfs,
            breaks=lambda: filler.append(fill(tmpfs)),
            heals=lambda: filler[0].unlink(),
            words="No space left on device",
        )


@pytest.mark.e2e
class TestReadOnly:
    """output_dir remounted read-only while the daemon runs."""

    def test_old_token_kept_reported_and_recovered(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmpfs: Path
    ) -> None:
        """Old files intact, readyz says "Read-only file system"; written once remounted rw."""

        def remount(mode: str) -> None:
            subprocess.run(["mount", "-o", f"remount,{mode}", str(tmpfs)], check=True)

        break_then_heal(
            emulator,
            daemon,
            tmpfs,
            breaks=lambda: remount("ro"),
            heals=lambda: remount("rw"),
            words="Read-only file system",
        )


@pytest.mark.e2e
class TestDirectoryAtTokenPath:
    """A directory where one app's token file belongs."""

    def test_named_in_readyz_others_unaffected_recovers(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """readyz names the path and the fix; the other app is served; removing it heals."""
        shop, mini = app(2, "shop"), app(3, "mini")
        emu = emulator([shop, mini], lifetime=600, grace=300)
        d = daemon([shop, mini], emu.base_url)
        d.output_dir.mkdir(mode=0o750)
        (d.output_dir / "shop.json").mkdir()
        d.start()
        d.wait_for_tokens(["mini"])
        client = d.admin()
        detail = wait_for(
            lambda: not_ready_because(client, "shop", "Is a directory"),
            timeout=20,
            what="readyz naming the directory",
        )
        assert str(d.output_dir / "shop.json") in detail
        assert "remove it" in detail
        assert list(client.get("/readyz").json()["apps"]) == ["shop"]  # mini is ready
        assert any(
            e.get("event") == "write failed" and "Is a directory" in e.get("error", "")
            for e in d.events()
        )
        assert d.token("shop") is None
        (d.output_dir / "shop.json").rmdir()
        wait_for(lambda: d.token("shop"), timeout=45, what="shop's token once the dir is gone")
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=20, what="ready")
        assert emu.calls(shop.appid, "token") == 1  # the token it held was written, not refetched


@pytest.mark.e2e
class TestSymlinksAgainstTheDaemon:
    """Links planted in output_dir before start: replaced, their targets never modified."""

    def test_planted_links_replaced_targets_untouched(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, outside: Path, tmp_path: Path
    ) -> None:
        """Links at <name> and <name>.json (the latter to a valid record) are not trusted."""
        shop = app(4, "shop")
        emu = emulator([shop], lifetime=600, grace=300)
        d = daemon([shop], emu.base_url)
        d.output_dir.mkdir(mode=0o750)
        foreign = tmp_path / "foreign.json"
        forged = Record(
            appid=shop.appid,
            name="shop",
            grant="classic",
            access_token="FORGED_TOKEN",
            expires_at=2_000_000_000,
            fetched_at=1_999_999_000,
            api_base=emu.base_url,
        )
        foreign.write_bytes(forged.to_json())
        (d.output_dir / "shop").symlink_to(outside)
        (d.output_dir / "shop.json").symlink_to(foreign)
        victims = snapshot(outside), snapshot(foreign)
        d.start()
        wait_for(
            lambda: not (d.output_dir / "shop").is_symlink(), timeout=20, what="the link replaced"
        )
        token = d.wait_for_tokens(["shop"])["shop"]
        assert token != "FORGED_TOKEN"
        assert emu.check(token) == 0
        assert (snapshot(outside), snapshot(foreign)) == victims
        assert not (d.output_dir / "shop").is_symlink()
        assert not (d.output_dir / "shop.json").is_symlink()
        assert any(e.get("event") == "state file ignored" for e in d.events())


@pytest.mark.e2e
class TestUnsafeOutputDir:
    """An output_dir others could tamper with stops the daemon at start with exit 2."""

    def test_world_writable_refused(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """Mode 0777 without the sticky bit: exit 2, the message names the mode and the fix."""
        shop = app(5, "shop")
        emu = emulator([shop], lifetime=600)
        d = daemon([shop], emu.base_url)
        d.output_dir.mkdir()
        os.chmod(d.output_dir, 0o777)
        result = d.run("run")
        assert result.returncode == 2
        assert f"output_dir: {d.output_dir} is writable by every user" in result.stderr
        assert "chmod o-w" in result.stderr
        assert emu.calls(shop.appid, "token") == 0
        assert list(d.output_dir.iterdir()) == []

    def test_symlinked_output_dir_refused(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """output_dir itself a symlink: exit 2 naming the target; nothing written there."""
        shop = app(6, "shop")
        emu = emulator([shop], lifetime=600)
        real = tmp_path / "real-tokens"
        real.mkdir(mode=0o750)
        d = daemon([shop], emu.base_url)
        d.output_dir.symlink_to(real)
        result = d.run("run")
        assert result.returncode == 2
        assert f"is a symlink (to {real})" in result.stderr
        assert list(real.iterdir()) == []
