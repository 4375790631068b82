"""Listening addresses and sockets for the admin API."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from wxtokend.asgi import Listen, bind, parse_listen


class TestParseListen:
    """The address forms admin.listen accepts."""

    @pytest.mark.parametrize(
        ("text", "expected", "loopback"),
        [
            ("127.0.0.1:9735", Listen(host="127.0.0.1", port=9735), True),
            ("[::1]:9735", Listen(host="::1", port=9735), True),
            ("localhost:1", Listen(host="localhost", port=1), True),
            ("0.0.0.0:9736", Listen(host="0.0.0.0", port=9736), False),
            ("unix:/run/wxtoken/admin.sock", Listen(path=Path("/run/wxtoken/admin.sock")), True),
        ],
    )
    def test_accepted(self, text: str, expected: Listen, loopback: bool) -> None:
        """Each form parses, knows whether it is loopback and prints back as written."""
        parsed = parse_listen(text)
        assert parsed == expected
        assert parsed.is_loopback is loopback
        assert str(parsed) == text

    @pytest.mark.parametrize("text", ["9735", ":9735", "host:", "host:99999", "unix:rel.sock"])
    def test_refused(self, text: str) -> None:
        """Anything else is refused with the accepted forms in the message."""
        with pytest.raises(ValueError, match="host:port"):
            parse_listen(text)


class TestUnixSocket:
    """The admin unix socket: its mode, a stale one, a live one."""

    def test_mode_0660(self, tmp_path: Path) -> None:
        """The socket is 0660 whatever the umask, so the consumers' group can connect."""
        path = tmp_path / "admin.sock"
        sock = bind(Listen(path=path))
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
        finally:
            sock.close()

    def test_stale_socket_is_replaced(self, tmp_path: Path) -> None:
        """A socket file left by a dead process is removed and bound again."""
        path = tmp_path / "admin.sock"
        bind(Listen(path=path)).close()  # closed: nobody listens, the file stays
        assert path.is_socket()
        bind(Listen(path=path)).close()

    def test_live_socket_is_not_stolen(self, tmp_path: Path) -> None:
        """A socket another daemon listens on is refused, not unlinked under it."""
        path = tmp_path / "admin.sock"
        live = bind(Listen(path=path))
        try:
            with pytest.raises(OSError, match="another process"):
                bind(Listen(path=path))
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(path))  # the first daemon still answers
            client.close()
        finally:
            live.close()
