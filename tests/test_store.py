"""Token files: atomic, exact modes, never blank, readable back after a restart."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from wxtokend.errors import StateFileError
from wxtokend.store import Record, TokenStore, atomic_write
from wxtokend.wechat import Token


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def record(
    token: str = "TOKEN_A", *, name: str = "shop", expires_at: int = 1_700_000_000
) -> Record:
    return Record(
        appid="wx0123456789abcdef",
        name=name,
        grant="classic",
        access_token=token,
        expires_at=expires_at,
        fetched_at=expires_at - 7200,
        api_base="https://api.weixin.qq.com",
    )


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".tmp-" in p.name]


class TestAtomicWrite:
    """One file written the safe way."""

    def test_mode_exact_under_umask_077(self, tmp_path: Path, umask_077: None) -> None:
        """The configured mode is applied exactly, whatever the umask trims."""
        path = tmp_path / "shop"
        atomic_write(path, b"abc", mode=0o640)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        assert path.read_bytes() == b"abc"

    def test_identical_content_not_rewritten(self, tmp_path: Path) -> None:
        """Writing what is already there changes nothing on disk (same inode, same mtime)."""
        path = tmp_path / "shop"
        assert atomic_write(path, b"abc", mode=0o640) is True
        before = path.stat()
        assert atomic_write(path, b"abc", mode=0o640) is False
        after = path.stat()
        assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)

    def test_mode_change_rewrites(self, tmp_path: Path) -> None:
        """Same content with another configured mode is rewritten with the new mode."""
        path = tmp_path / "shop"
        atomic_write(path, b"abc", mode=0o600)
        assert atomic_write(path, b"abc", mode=0o640) is True
        assert stat.S_IMODE(path.stat().st_mode) == 0o640

    def test_failed_write_keeps_old_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If writing the temp file fails, the old file is intact and no temp file is left."""
        path = tmp_path / "shop"
        atomic_write(path, b"OLD", mode=0o640)

        def disk_full(fd: int, data: object) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", disk_full)
        with pytest.raises(OSError, match="No space"):
            atomic_write(path, b"NEW", mode=0o640)
        assert path.read_bytes() == b"OLD"
        assert temp_files(tmp_path) == []

    def test_failed_rename_keeps_old_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the final rename fails, the old file is intact and the temp file is removed."""
        path = tmp_path / "shop"
        atomic_write(path, b"OLD", mode=0o640)

        def refuse(src: object, dst: object, **_: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(os, "replace", refuse)
        with pytest.raises(PermissionError):
            atomic_write(path, b"NEW", mode=0o640)
        assert path.read_bytes() == b"OLD"
        assert temp_files(tmp_path) == []

    def test_group_applied(self, tmp_path: Path) -> None:
        """file_group's gid is given to the file (our own gid, which any user may set)."""
        path = tmp_path / "shop"
        atomic_write(path, b"abc", mode=0o640, gid=os.getgid())
        assert path.stat().st_gid == os.getgid()


class TestTokenStore:
    """The two files per app and the directory they live in."""

    def test_writes_bare_token_and_json(self, tmp_path: Path) -> None:
        """<name> holds the bare token with no newline; <name>.json holds the record."""
        store = TokenStore(directory=tmp_path, file_mode=0o640)
        store.save(record("TOKEN_A"))
        assert (tmp_path / "shop").read_bytes() == b"TOKEN_A"
        data = json.loads((tmp_path / "shop.json").read_text())
        assert data == {
            "appid": "wx0123456789abcdef",
            "name": "shop",
            "grant": "classic",
            "access_token": "TOKEN_A",
            "expires_at": 1_700_000_000,
            "fetched_at": 1_700_000_000 - 7200,
            "expired": False,
            "api_base": "https://api.weixin.qq.com",
            "refresh_started_at": None,
        }

    def test_round_trip(self, tmp_path: Path) -> None:
        """What save writes, load reads back identically."""
        store = TokenStore(directory=tmp_path, file_mode=0o640)
        store.save(record("TOKEN_A").as_expired())
        assert store.load("shop") == record("TOKEN_A").as_expired()

    def test_load_missing_is_none(self, tmp_path: Path) -> None:
        """No state file means no record, not an error."""
        assert TokenStore(directory=tmp_path, file_mode=0o640).load("shop") is None

    @pytest.mark.parametrize(
        "content",
        [
            b"",
            b"{not json",
            b"[]",
            b'{"appid": "wx1", "name": "shop", "grant": "classic", "expires_at": 1,'
            b' "fetched_at": 0}',
            json.dumps({**json.loads(record().to_json()), "access_token": "has space"}).encode(),
            json.dumps({**json.loads(record().to_json()), "grant": "other"}).encode(),
            json.dumps({**json.loads(record().to_json()), "expires_at": "soon"}).encode(),
            json.dumps({**json.loads(record().to_json()), "expires_at": 1.5}).encode(),
        ],
    )
    def test_corrupt_state_raises(self, tmp_path: Path, content: bytes) -> None:
        """A corrupt or half-valid state file is refused, never trusted."""
        (tmp_path / "shop.json").write_bytes(content)
        with pytest.raises(StateFileError):
            TokenStore(directory=tmp_path, file_mode=0o640).load("shop")

    def test_prepare_creates_dir_0750(self, tmp_path: Path, umask_077: None) -> None:
        """A missing output directory is created with mode 0750 exactly."""
        directory = tmp_path / "run" / "wxtoken"
        TokenStore(directory=directory, file_mode=0o640).prepare()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750

    def test_prepare_leaves_existing_dir_mode(self, tmp_path: Path) -> None:
        """An existing directory (e.g. systemd's RuntimeDirectory) keeps its mode."""
        directory = tmp_path / "out"
        directory.mkdir(mode=0o755)
        os.chmod(directory, 0o755)
        TokenStore(directory=directory, file_mode=0o640).prepare()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755

    def test_prepare_removes_crash_leftovers_only(self, tmp_path: Path) -> None:
        """Temp files from a crash are removed; tokens and foreign files stay."""
        store = TokenStore(directory=tmp_path, file_mode=0o640)
        store.save(record())
        (tmp_path / ".shop.tmp-deadbeef").write_bytes(b"TOK")
        (tmp_path / ".shop.json.tmp-cafe0001").write_bytes(b"{")
        (tmp_path / "notes.txt").write_bytes(b"x")
        assert sorted(store.prepare()) == [".shop.json.tmp-cafe0001", ".shop.tmp-deadbeef"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "shop", "shop.json"]

    def test_save_twice_rewrites_nothing(self, tmp_path: Path) -> None:
        """Saving the same record again is a no-op on disk."""
        store = TokenStore(directory=tmp_path, file_mode=0o640)
        assert store.save(record()) is True
        assert store.save(record()) is False

    def test_record_of_token_floors_expiry(self) -> None:
        """expires_at is floored so a consumer trusting it never overshoots."""
        token = Token(access_token="T", expires_in=10, fetched_at=100.7)
        rec = Record.of(token, appid="wx1", name="shop", grant="stable", api_base="http://x")
        assert (rec.fetched_at, rec.expires_at) == (100, 110)

    def test_repr_hides_token(self) -> None:
        """A record's repr (e.g. in a traceback's locals) never shows the token."""
        assert "TOKEN_A" not in repr(record("TOKEN_A"))
        assert "TOKEN_A" not in repr(Token(access_token="TOKEN_A", expires_in=1, fetched_at=0))

    def test_interrupted_marker(self) -> None:
        """A record marked refreshing after its fetch counts as an interrupted classic fetch."""
        rec = record()
        assert not rec.interrupted()
        assert rec.refreshing(rec.fetched_at + 5000).interrupted()
        loaded = Record.from_json(rec.refreshing(rec.fetched_at + 5000).to_json())
        assert loaded.interrupted()

    def test_remove(self, tmp_path: Path) -> None:
        """remove deletes both files and tolerates their absence."""
        store = TokenStore(directory=tmp_path, file_mode=0o640)
        store.save(record())
        store.remove("shop")
        store.remove("shop")
        assert list(tmp_path.iterdir()) == []


READER = textwrap.dedent(
    """
    import sys, time
    path, stop = sys.argv[1], sys.argv[2]
    import os
    reads = bad = 0
    while not os.path.exists(stop):
        with open(path, "rb") as f:
            data = f.read()
        reads += 1
        if not data.startswith(b"TOKEN_") or len(data) != 200:
            bad += 1
    print(reads, bad)
    """
)


class TestConcurrentReader:
    """A reader in another process never sees a partial or empty token."""

    def test_hundreds_of_rewrites(self, tmp_path: Path) -> None:
        """500 rewrites while a reader loops: every read is one complete token."""
        store = TokenStore(directory=tmp_path, file_mode=0o640)
        store.save(record("TOKEN_" + "0" * 194))
        stop = tmp_path / "stop"
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(tmp_path / "shop"), str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            for i in range(500):
                store.save(record(f"TOKEN_{i:0194d}"))
        finally:
            stop.touch()
            out, _ = reader.communicate(timeout=30)
        reads, bad = map(int, out.split())
        assert reads > 0
        assert bad == 0
        assert temp_files(tmp_path) == []
