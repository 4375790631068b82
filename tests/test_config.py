"""load_config: defaults, secrets, durations, modes, groups, and one clear line per problem."""

from __future__ import annotations

import grp
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes import ScriptedWeChat, VirtualClock

from wxtokend import logs
from wxtokend.cli import main
from wxtokend.config import Config, load_config, parse_duration
from wxtokend.daemon import Daemon
from wxtokend.errors import ConfigError

APPID = "wx0123456789abcdef"
APPID2 = "wxfedcba9876543210"
FILE_SECRET = "f1le-s3cr3t-0123456789abcdef0123"
ENV_SECRET = "env-s3cr3t-0123456789abcdef01234"
INLINE_SECRET = "INLINE-s3cr3t-DO-NOT-PRINT-4242"
AS_ROOT = os.geteuid() == 0

FLEET_KEY = "k" * 16 + "0123456789abcdef"
MINIMAL = f"""\
apps:
  - appid: {APPID}
    secret_file: app.secret
"""


def yaml_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def write_config(directory: Path, text: str, *, mode: int = 0o600) -> Path:
    """config.yaml (mode ``mode``) plus app.secret beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.secret").write_text(FILE_SECRET + "\n")
    path = directory / "config.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def load(directory: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write_config(directory, text), environ=environ or {})


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


@pytest.fixture
def own_group() -> tuple[str, int]:
    gid = os.getgid()
    return grp.getgrgid(gid).gr_name, gid


class TestValidConfig:
    def test_minimal_config_gets_the_defaults(self, tmp_path: Path) -> None:
        """A config with one app and a secret file gets every documented default."""
        path = write_config(tmp_path, MINIMAL)
        config = load_config(path, environ={})
        assert config.path == path
        assert config.output_dir == Path("/run/wxtoken")
        assert config.file_mode == 0o640
        assert config.file_gid is None
        assert config.api_base == "https://api.weixin.qq.com"
        assert config.proxy is None
        assert config.max_concurrency == 16
        assert config.stable_renew_window == 300.0
        assert config.request_timeout == 10.0
        assert (config.retry_min, config.retry_max) == (1.0, 60.0)
        assert config.warnings == ()
        (app,) = config.apps
        assert (app.appid, app.name, app.grant) == (APPID, APPID, "stable")
        assert app.secret.reveal() == FILE_SECRET
        assert app.secret_source == "secret_file app.secret"

    def test_every_key_is_read(self, tmp_path: Path) -> None:
        """Every top-level and app key given in the file ends up in the Config."""
        config = load(
            tmp_path,
            yaml_text(f"""
                output_dir: /var/lib/wxtoken
                file_mode: "0600"
                file_group: 4242
                api_base: http://127.0.0.1:8080/wechat/
                proxy: http://proxy.internal:3128
                max_concurrency: 1024
                stable_renew_window: 2m
                request_timeout: 3s
                apps:
                  - appid: {APPID}
                    name: shop
                    grant: classic
                    secret_file: app.secret
                  - appid: {APPID2}
                    secret_env: WX_SECRET
            """),
            environ={"WX_SECRET": ENV_SECRET},
        )
        assert config.output_dir == Path("/var/lib/wxtoken")
        assert config.file_mode == 0o600
        assert config.file_gid == 4242
        assert config.api_base == "http://127.0.0.1:8080/wechat"
        assert config.proxy == "http://proxy.internal:3128"
        assert config.max_concurrency == 1024
        assert config.stable_renew_window == 120.0
        assert config.request_timeout == 3.0
        assert [(a.appid, a.name, a.grant) for a in config.apps] == [
            (APPID, "shop", "classic"),
            (APPID2, APPID2, "stable"),
        ]
        assert config.app("shop") is config.apps[0]
        assert config.app(APPID) is config.apps[0]
        assert config.app(APPID2) is config.apps[1]
        assert config.app("nope") is None

    def test_relative_paths_resolve_against_the_config_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Relative output_dir and secret_file are taken from the config's directory, not cwd."""
        confdir = tmp_path / "etc"
        (confdir / "secrets").mkdir(parents=True)
        (confdir / "secrets" / "shop").write_text("nested-secret\n")
        path = write_config(
            confdir,
            yaml_text(f"""
                output_dir: tokens
                apps:
                  - appid: {APPID}
                    secret_file: secrets/shop
            """),
        )
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        config = load_config(path, environ={})
        assert config.output_dir == confdir / "tokens"
        assert config.apps[0].secret.reveal() == "nested-secret"

    def test_absolute_secret_file_is_used_as_is(self, tmp_path: Path) -> None:
        """An absolute secret_file is read from where it says."""
        other = tmp_path / "vault" / "s"
        other.parent.mkdir()
        other.write_text("absolute-secret\n")
        config = load(
            tmp_path / "etc",
            f"apps:\n  - appid: {APPID}\n    secret_file: {other}\n",
        )
        assert config.apps[0].secret.reveal() == "absolute-secret"
        assert config.apps[0].secret_source == f"secret_file {other}"


class TestApiProxy:
    """api_proxy: off unless set; an address beyond loopback is warned about."""

    def test_off_by_default(self, tmp_path: Path) -> None:
        """No api_proxy section: no proxy listener."""
        assert load(tmp_path, MINIMAL).api_proxy is None

    def test_settings(self, tmp_path: Path) -> None:
        """Every setting is read; a unix socket counts as local."""
        config = load(
            tmp_path,
            top_with(
                "api_proxy: {listen: 'unix:/run/wxtoken/api.sock', replay_body_limit: 1024,"
                " max_connections: 8, request_timeout: 5}"
            ),
        )
        assert config.api_proxy is not None
        assert str(config.api_proxy.listen) == "unix:/run/wxtoken/api.sock"
        assert config.api_proxy.replay_body_limit == 1024
        assert config.api_proxy.max_connections == 8
        assert config.api_proxy.request_timeout == 5
        assert not [w for w in config.warnings if "api_proxy" in w]

    def test_beyond_loopback_warned(self, tmp_path: Path) -> None:
        """0.0.0.0 is allowed, with a warning naming the line, the risk and the fix."""
        config = load(tmp_path, top_with("api_proxy: {listen: '0.0.0.0:9736'}"))
        (warning,) = [w for w in config.warnings if "api_proxy" in w]
        assert ":1: api_proxy.listen: 0.0.0.0:9736 is beyond loopback" in warning
        assert "NetworkPolicy" in warning


class TestSecrets:
    @pytest.mark.parametrize(
        "content",
        [f"{FILE_SECRET}\n", FILE_SECRET, f"{FILE_SECRET}\r\n", f"  {FILE_SECRET}\n\n"],
        ids=["newline", "no-newline", "crlf", "padded"],
    )
    def test_secret_file_is_stripped(self, tmp_path: Path, content: str) -> None:
        """The secret file's surrounding whitespace, e.g. a trailing newline, is dropped."""
        path = write_config(tmp_path, MINIMAL)
        (tmp_path / "app.secret").write_text(content, newline="")
        assert load_config(path, environ={}).apps[0].secret.reveal() == FILE_SECRET

    def test_secret_from_environment(self, tmp_path: Path) -> None:
        """secret_env reads the variable from the environ mapping given to load_config."""
        config = load(
            tmp_path,
            f"apps:\n  - appid: {APPID}\n    secret_env: WX_SECRET\n",
            environ={"WX_SECRET": ENV_SECRET},
        )
        assert config.apps[0].secret.reveal() == ENV_SECRET
        assert config.apps[0].secret_source == "secret_env WX_SECRET"

    def test_environ_mapping_replaces_os_environ(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With environ given, a variable that only os.environ has counts as unset."""
        monkeypatch.setenv("WX_SECRET", ENV_SECRET)
        path = write_config(tmp_path, f"apps:\n  - appid: {APPID}\n    secret_env: WX_SECRET\n")
        (problem,) = problems_of(path, environ={})
        assert "WX_SECRET is not set" in problem

    def test_without_environ_os_environ_is_used(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without an environ mapping, secret_env reads the process environment."""
        monkeypatch.setenv("WX_SECRET", ENV_SECRET)
        path = write_config(tmp_path, f"apps:\n  - appid: {APPID}\n    secret_env: WX_SECRET\n")
        assert load_config(path).apps[0].secret.reveal() == ENV_SECRET

    def test_inline_secret(self, tmp_path: Path) -> None:
        """An inline secret is used as is and its source says it sits in the config file."""
        config = load(tmp_path, f"apps:\n  - appid: {APPID}\n    secret: {INLINE_SECRET}\n")
        assert config.apps[0].secret.reveal() == INLINE_SECRET
        assert config.apps[0].secret_source == "secret: in the config file"

    def test_config_repr_hides_secrets(self, tmp_path: Path) -> None:
        """repr of the loaded Config shows no secret."""
        config = load(
            tmp_path,
            yaml_text(f"""
                apps:
                  - appid: {APPID}
                    secret: {INLINE_SECRET}
                  - appid: {APPID2}
                    secret_file: app.secret
            """),
        )
        assert INLINE_SECRET not in repr(config)
        assert FILE_SECRET not in repr(config)


class TestDurations:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            (300, 300.0),
            (2.5, 2.5),
            ("300", 300.0),
            ("15s", 15.0),
            ("5m", 300.0),
            ("1h", 3600.0),
            ("500ms", 0.5),
            ("1.5s", 1.5),
            (" 5m ", 300.0),
        ],
    )
    def test_parse_duration(self, value: object, seconds: float) -> None:
        """Numbers are seconds; strings may carry ms, s, m or h."""
        assert parse_duration(value) == seconds

    @pytest.mark.parametrize(
        "value",
        ["", "abc", "5d", "m", "-5s", "1e3", "0", "0s", 0, 0.0, -1, True, False, None, [5]],
    )
    def test_parse_duration_rejects(self, value: object) -> None:
        """Non-durations, zero and negative values are refused."""
        with pytest.raises(ValueError, match=r"duration|longer than zero"):
            parse_duration(value)

    @pytest.mark.parametrize(
        ("key", "text"),
        [
            ("stable_renew_window", "500ms"),
            ("stable_renew_window", "2h"),
            ("request_timeout", "1ms"),
            ("request_timeout", "10m"),
            ("request_timeout", ".inf"),
        ],
    )
    def test_duration_bounds(self, tmp_path: Path, key: str, text: str) -> None:
        """Durations outside sane bounds are refused at their key, with the fix."""
        path = write_config(tmp_path, f"{key}: {text}\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1: {key}: ")
        assert " — use e.g. " in problem

    def test_parse_duration_rejects_nan(self) -> None:
        """NaN is not a duration."""
        with pytest.raises(ValueError, match=r"duration|longer than zero"):
            parse_duration(float("nan"))

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("300", 300.0), ("15s", 15.0), ("5m", 300.0), ("1500ms", 1.5), ("2", 2.0)],
    )
    @pytest.mark.parametrize("key", ["stable_renew_window", "request_timeout"])
    def test_duration_keys(self, tmp_path: Path, key: str, text: str, seconds: float) -> None:
        """stable_renew_window and request_timeout accept the same duration forms."""
        config = load(tmp_path, f"{key}: {text}\n{MINIMAL}")
        assert getattr(config, key) == seconds


class TestRetry:
    """The backoff block: read as durations, and its bounds checked together."""

    def test_retry_block_is_read(self, tmp_path: Path) -> None:
        """retry.min and retry.max accept durations."""
        config = load(tmp_path, f"retry:\n  min: 50ms\n  max: 2s\n{MINIMAL}")
        assert (config.retry_min, config.retry_max) == (0.05, 2.0)

    def test_sub_second_retry_min_warns(self, tmp_path: Path) -> None:
        """retry.min under 1 s loads, with a warning that it is meant for the emulator."""
        path = write_config(tmp_path, f"retry:\n  min: 50ms\n{MINIMAL}")
        config = load_config(path, environ={})
        (warning,) = config.warnings
        assert warning.startswith(f"{path}:2: retry.min: 0.05 s is meant for compressed-time")
        assert warning.endswith(
            "— against WeChat keep it at 1 s or more: each failure costs a call"
        )

    def test_max_below_min_names_both(self, tmp_path: Path) -> None:
        """retry.max shorter than retry.min is refused at retry.max, with the fix."""
        path = write_config(tmp_path, f"retry:\n  min: 5s\n  max: 2s\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert problem == (
            f"{path}:3: retry.max: 2 s is shorter than retry.min (5 s)"
            " — make retry.max at least retry.min"
        )

    def test_retry_min_has_a_floor(self, tmp_path: Path) -> None:
        """A retry.min of a millisecond would hammer WeChat: refused, with an example."""
        path = write_config(tmp_path, f"retry:\n  min: 1ms\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:2: retry.min: ")
        assert problem.endswith("— use e.g. 1 or '1s'")


class TestFileModeAndGroup:
    @pytest.mark.parametrize(
        ("text", "mode"),
        [
            ('"0640"', 0o640),
            ('"640"', 0o640),
            ('"0o640"', 0o640),
            ("'0600'", 0o600),
            ('"0400"', 0o400),
            ('"0660"', 0o660),
            ('"0644"', 0o644),
        ],
    )
    def test_file_mode_accepted(self, tmp_path: Path, text: str, mode: int) -> None:
        """Octal modes written as strings (or YAML octal) are read as octal."""
        assert load(tmp_path, f"file_mode: {text}\n{MINIMAL}").file_mode == mode

    @pytest.mark.parametrize("text", ["440", "0640", "416"])
    def test_unquoted_file_mode_is_refused(self, tmp_path: Path, text: str) -> None:
        """Unquoted modes are refused: YAML reads 0640 as octal but 440 as decimal (0o670)."""
        path = write_config(tmp_path, f"file_mode: {text}\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1: file_mode: ")
        assert 'write it quoted, e.g. file_mode: "0640"' in problem

    def test_file_group_by_name(self, tmp_path: Path, own_group: tuple[str, int]) -> None:
        """A group name that exists becomes its gid."""
        name, gid = own_group
        assert load(tmp_path, f'file_group: "{name}"\n{MINIMAL}').file_gid == gid

    @pytest.mark.parametrize(("text", "gid"), [("4242", 4242), ('"4242"', 4242), ("0", 0)])
    def test_file_group_by_number(self, tmp_path: Path, text: str, gid: int) -> None:
        """A numeric file_group (int or digit string) is used as the gid."""
        assert load(tmp_path, f"file_group: {text}\n{MINIMAL}").file_gid == gid

    @pytest.mark.parametrize("text", ["no", "yes"])
    def test_file_group_boolean_is_refused(self, tmp_path: Path, text: str) -> None:
        """A YAML boolean is not a group: file_group: no must not mean gid 0."""
        path = write_config(tmp_path, f"file_group: {text}\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert ": file_group: " in problem

    def test_file_group_of_wrong_type_is_one_problem(self, tmp_path: Path) -> None:
        """file_group: [a, b] gives one problem at file_group with its line."""
        path = write_config(tmp_path, f"file_group: [a, b]\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1: file_group: ")


@dataclass(frozen=True)
class Bad:
    """One invalid input: the problem must sit at ``line`` under ``key`` and mention ``fix``."""

    id: str
    text: str
    key: str
    line: int | None
    fix: str
    environ: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None
    root_can_read: bool = False


def app_with(*lines: str, appid: str = APPID) -> str:
    """A config with one app: its appid on line 2, then ``lines`` from line 3."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"apps:\n  - appid: {appid}\n{body}"


def top_with(line: str) -> str:
    """A valid config with ``line`` as line 1."""
    return f"{line}\n{MINIMAL}"


def chmod_000(directory: Path) -> None:
    (directory / "locked.secret").write_text("x\n")
    (directory / "locked.secret").chmod(0)


def make_dir(directory: Path) -> None:
    (directory / "dir.secret").mkdir()


def write(name: str, content: bytes) -> Callable[[Path], None]:
    def setup(directory: Path) -> None:
        (directory / name).write_bytes(content)

    return setup


NAME_FIX = "use 1-128 letters, digits, '_' or '-'"

BAD_INPUTS = [
    Bad(
        "unknown-app-key",
        app_with("secrt: app.secret"),
        "apps[0].secrt",
        3,
        "did you mean 'secret'?",
    ),
    Bad(
        "unknown-top-key",
        top_with("outptu_dir: /srv/x"),
        "outptu_dir",
        1,
        "did you mean 'output_dir'?",
    ),
    Bad(
        "bad-grant",
        app_with("grant: fast", "secret_file: app.secret"),
        "apps[0].grant",
        3,
        "grant: stable",
    ),
    *[
        Bad(
            f"name-{label}",
            app_with(f"name: {value}", "secret_file: app.secret"),
            "apps[0].name",
            3,
            NAME_FIX,
        )
        for label, value in [
            ("slash", '"a/b"'),
            ("dotdot", '".."'),
            ("leading-dot", '".hidden"'),
            ("control-char", '"a\\x07b"'),
            ("tab", '"a\\tb"'),
            ("empty", '""'),
            ("spaces", '"my shop"'),
            ("too-long", "a" * 129),
        ]
    ],
    Bad(
        "appid-with-space",
        app_with("secret_file: app.secret", appid='"wx0123 456789abcdef"'),
        "apps[0].appid",
        2,
        "copy the AppID",
    ),
    Bad(
        "appid-empty",
        app_with("secret_file: app.secret", appid='""'),
        "apps[0].appid",
        2,
        "copy the AppID",
    ),
    Bad(
        "appid-not-a-file-name",
        app_with("secret_file: app.secret", appid="wx/0123"),
        "apps[0].appid",
        2,
        "set name: for this app",
    ),
    Bad(
        "duplicate-appid",
        yaml_text(f"""
            apps:
              - appid: {APPID}
                name: one
                secret_file: app.secret
              - appid: {APPID}
                name: two
                secret_file: app.secret
        """),
        "apps[1].appid",
        5,
        "give every app its own appid",
    ),
    Bad(
        "duplicate-name",
        yaml_text(f"""
            apps:
              - appid: {APPID}
                name: shop
                secret_file: app.secret
              - appid: {APPID2}
                name: shop
                secret_file: app.secret
        """),
        "apps[1].name",
        6,
        "give every app its own name",
    ),
    Bad(
        "duplicate-yaml-key",
        f"apps:\n  - appid: {APPID}\n    appid: {APPID2}\n    secret_file: app.secret\n",
        "apps[0].appid",
        3,
        "appears twice in one mapping (first on line 2) — keep one of them",
    ),
    Bad(
        "duplicate-top-yaml-key",
        f"output_dir: /a\noutput_dir: /b\n{MINIMAL}",
        "output_dir",
        2,
        "appears twice in one mapping (first on line 1) — keep one of them",
    ),
    Bad(
        "missing-secret",
        app_with("grant: classic"),
        "apps[0]",
        2,
        "set exactly one of secret_file, secret_env or secret",
    ),
    Bad(
        "two-secret-sources",
        app_with("secret_file: app.secret", "secret_env: WX_SECRET"),
        "apps[0]",
        2,
        "set exactly one of secret_file, secret_env or secret",
        environ={"WX_SECRET": ENV_SECRET},
    ),
    Bad(
        "missing-secret-file",
        app_with("secret_file: nope.secret"),
        "apps[0].secret_file",
        3,
        "create it holding only the AppSecret",
    ),
    Bad(
        "unreadable-secret-file",
        app_with("secret_file: locked.secret"),
        "apps[0].secret_file",
        3,
        "let the user wxtokend runs as read it, and nobody else",
        setup=chmod_000,
        root_can_read=True,
    ),
    Bad(
        "secret-file-is-a-directory",
        app_with("secret_file: dir.secret"),
        "apps[0].secret_file",
        3,
        "let the user wxtokend runs as read it, and nobody else",
        setup=make_dir,
    ),
    Bad(
        "secret-file-not-utf8",
        app_with("secret_file: bin.secret"),
        "apps[0].secret_file",
        3,
        "let the user wxtokend runs as read it, and nobody else",
        setup=write("bin.secret", b"\xff\xfe\xfd\n"),
    ),
    Bad(
        "empty-secret-file",
        app_with("secret_file: empty.secret"),
        "apps[0].secret_file",
        3,
        "put the AppSecret from the WeChat console there",
        setup=write("empty.secret", b"\n"),
    ),
    Bad(
        "secret-file-two-lines",
        app_with("secret_file: two.secret"),
        "apps[0].secret_file",
        3,
        "it must hold only the AppSecret",
        setup=write("two.secret", b"first\nsecond\n"),
    ),
    Bad(
        "secret-env-unset",
        app_with("secret_env: WX_SECRET"),
        "apps[0].secret_env",
        3,
        "export WX_SECRET=<AppSecret>",
    ),
    Bad(
        "secret-env-empty",
        app_with("secret_env: WX_SECRET"),
        "apps[0].secret_env",
        3,
        "export WX_SECRET=<AppSecret>",
        environ={"WX_SECRET": ""},
    ),
    Bad(
        "inline-secret-with-space",
        app_with('secret: "two words"'),
        "apps[0].secret",
        3,
        "it must hold only the AppSecret",
    ),
    Bad(
        "file-mode-world-writable",
        top_with('file_mode: "0777"'),
        "file_mode",
        1,
        "world-writable",
    ),
    Bad(
        "file-mode-owner-cannot-read",
        top_with('file_mode: "0200"'),
        "file_mode",
        1,
        "owner read",
    ),
    Bad(
        "file-mode-unquoted-decimal",
        top_with("file_mode: 640"),
        "file_mode",
        1,
        'write it quoted, e.g. file_mode: "0640"',
    ),
    Bad(
        "file-mode-not-octal",
        top_with('file_mode: "rw-r-----"'),
        "file_mode",
        1,
        'quoted string, e.g. "0640"',
    ),
    Bad(
        "max-concurrency-0",
        top_with("max_concurrency: 0"),
        "max_concurrency",
        1,
        "use a whole number from 1 to 1024",
    ),
    Bad(
        "max-concurrency-5000",
        top_with("max_concurrency: 5000"),
        "max_concurrency",
        1,
        "use a whole number from 1 to 1024",
    ),
    Bad(
        "api-base-ftp",
        top_with("api_base: ftp://x"),
        "api_base",
        1,
        "http:// or https:// URL",
    ),
    Bad(
        "api-base-query",
        top_with('api_base: "https://api.weixin.qq.com/?x=1"'),
        "api_base",
        1,
        "http:// or https:// URL",
    ),
    Bad(
        "proxy-socks",
        top_with("proxy: socks5://proxy:1080"),
        "proxy",
        1,
        "http:// or https:// URL",
    ),
    Bad("apps-empty", "apps: []\n", "apps", 1, "list at least one app under apps:"),
    Bad("apps-missing", "output_dir: /srv/x\n", "apps", None, "list at least one app under apps:"),
    Bad("apps-mapping", f"apps: {{appid: {APPID}}}\n", "apps", 1, "list at least one app"),
    Bad(
        "unknown-file-group",
        top_with("file_group: no-such-group-wxtokend"),
        "file_group",
        1,
        "groupadd --system no-such-group-wxtokend",
    ),
    Bad(
        "renew-window-not-a-duration",
        top_with("stable_renew_window: soon"),
        "stable_renew_window",
        1,
        "a duration such as 300, '15s'",
    ),
    Bad(
        "request-timeout-zero",
        top_with("request_timeout: 0"),
        "request_timeout",
        1,
        "longer than zero",
    ),
]


def bad_params() -> list[Any]:
    params = []
    for bad in BAD_INPUTS:
        marks: list[Any] = []
        if bad.root_can_read:
            marks.append(pytest.mark.skipif(AS_ROOT, reason="root can read any file"))
        params.append(pytest.param(bad, id=bad.id, marks=marks))
    return params


def prepare(directory: Path, bad: Bad) -> Path:
    path = write_config(directory, bad.text)
    if bad.setup is not None:
        bad.setup(directory)
    return path


class TestProblems:
    @pytest.mark.parametrize("bad", bad_params())
    def test_one_problem_naming_file_line_key_and_fix(self, tmp_path: Path, bad: Bad) -> None:
        """Each invalid input gives exactly one line: FILE[:LINE]: KEY: problem, with the fix."""
        path = prepare(tmp_path, bad)
        (problem,) = problems_of(path, bad.environ)
        where = f"{path}:{bad.line}" if bad.line else str(path)
        assert problem.startswith(f"{where}: {bad.key}: "), problem
        assert bad.fix in problem
        assert "\n" not in problem

    @pytest.mark.parametrize("bad", bad_params())
    def test_problem_has_documented_shape(self, tmp_path: Path, bad: Bad) -> None:
        """Each problem line has the documented shape FILE[:LINE]: KEY.PATH: problem — fix."""
        path = prepare(tmp_path, bad)
        (problem,) = problems_of(path, bad.environ)
        pattern = rf"{re.escape(str(path))}(:\d+)?: {re.escape(bad.key)}: \S.* \u2014 \S.*"
        assert re.fullmatch(pattern, problem), problem

    def test_missing_secret_file_names_the_resolved_path(self, tmp_path: Path) -> None:
        """A missing secret file is reported with the path that was actually tried."""
        path = write_config(tmp_path, app_with("secret_file: sub/nope.secret"))
        (problem,) = problems_of(path)
        assert f"{tmp_path / 'sub' / 'nope.secret'}: no such file" in problem

    def test_key_paths_carry_the_line_of_that_app(self, tmp_path: Path) -> None:
        """Problems in the third app name apps[2].KEY and the line of that key."""
        path = write_config(
            tmp_path,
            yaml_text(f"""
                apps:
                  - appid: {APPID}
                    secret_file: app.secret
                  - appid: {APPID2}
                    secret_file: app.secret
                  - appid: wx1111111111111111
                    grant: classic
                    secret_file: missing.secret
            """),
        )
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:8: apps[2].secret_file: ")

    def test_schema_errors_carry_the_line_of_that_app(self, tmp_path: Path) -> None:
        """A shape error in the third app names apps[2].grant at its own line."""
        path = write_config(
            tmp_path,
            yaml_text(f"""
                apps:
                  - appid: {APPID}
                    secret_file: app.secret
                  - appid: {APPID2}
                    secret_file: app.secret
                  - appid: wx1111111111111111
                    secret_file: app.secret
                    grant: fastest
            """),
        )
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:8: apps[2].grant: ")

    def test_all_problems_are_reported_at_once(self, tmp_path: Path) -> None:
        """Independent problems in several apps all come back in one ConfigError."""
        path = write_config(
            tmp_path,
            yaml_text(f"""
                file_group: no-such-group-wxtokend
                apps:
                  - appid: {APPID}
                    secret_file: missing.secret
                  - appid: {APPID2}
                    secret_env: WX_SECRET
            """),
        )
        problems = problems_of(path)
        assert [p.split(": ")[1] for p in problems] == [  # in the file's order
            "file_group",
            "apps[0].secret_file",
            "apps[1].secret_env",
        ]


FILE_LEVEL = [
    pytest.param(
        "- appid: x\n- appid: y\n",
        r"",
        "not a YAML mapping — start it with output_dir: and apps: keys",
        True,
        id="top-level-list",
    ),
    pytest.param("just a string\n", r"", "YAML mapping", True, id="top-level-scalar"),
    pytest.param("", r"", "YAML mapping", True, id="empty-file"),
    pytest.param(
        f"apps:\n  - appid: {APPID}\n   secret_file: app.secret\n",
        r":3:4",
        "invalid YAML",
        False,
        id="bad-indentation",
    ),
    pytest.param(
        f'apps:\n  - appid: "{APPID}\n', r":3:1", "invalid YAML", False, id="unterminated-quote"
    ),
]


class TestFileLevelProblems:
    @pytest.mark.parametrize(("text", "where", "problem", "no_fix"), FILE_LEVEL)
    def test_file_problem(
        self, tmp_path: Path, text: str, where: str, problem: str, no_fix: bool
    ) -> None:
        """A file that is not a usable YAML mapping gives one line with file (and line:column)."""
        path = write_config(tmp_path, text)
        (line,) = problems_of(path)
        assert re.match(rf"{re.escape(str(path))}{where}: ", line), line
        assert problem in line

    @pytest.mark.parametrize(
        ("text", "where"),
        [
            pytest.param(
                "- a\n",
                r"",
                id="top-level-list",
            ),
            pytest.param("a: [\n", r":2:1", id="invalid-yaml"),
        ],
    )
    def test_file_problem_shape(self, tmp_path: Path, text: str, where: str) -> None:
        """File-level problems also read FILE[:LINE:COL]: problem — fix."""
        path = write_config(tmp_path, text)
        (line,) = problems_of(path)
        assert re.fullmatch(rf"{re.escape(str(path))}{where}: \S.* \u2014 \S.*", line), line

    def test_missing_config_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is one problem telling to pass -c."""
        path = tmp_path / "nope.yaml"
        (line,) = problems_of(path)
        assert line == f"{path}: no such config file \u2014 pass the right path with -c"

    def test_yaml_merge_keys_work(self, tmp_path: Path) -> None:
        """Anchors with merge keys, valid YAML that SafeLoader accepts, load."""
        config = load(
            tmp_path,
            yaml_text(f"""
                apps:
                  - &base
                    appid: {APPID}
                    grant: classic
                    secret_file: app.secret
                  - <<: *base
                    appid: {APPID2}
            """),
        )
        assert [a.grant for a in config.apps] == ["classic", "classic"]


class TestInlineSecretStaysSecret:
    @pytest.mark.parametrize(
        "text",
        [
            app_with(f"secret: {INLINE_SECRET}", "grant: bogus", "name: a/b"),
            app_with(f"secret: {INLINE_SECRET}", "secret_file: app.secret"),
            app_with(f"secret: {INLINE_SECRET}", "secrt: typo"),
            app_with(f"secret: {INLINE_SECRET}", f"secret: {INLINE_SECRET}"),
            app_with(f'secret: "{INLINE_SECRET} tail"'),
            app_with(f"secret: [{INLINE_SECRET}]"),
            app_with(f"secret: {INLINE_SECRET}", appid="bad appid"),
            f"apps:\n  - appid: {APPID}\n    secret: {INLINE_SECRET}\n  - appid: {APPID}\n"
            f"    secret: {INLINE_SECRET}\n",
        ],
        ids=[
            "other-keys-wrong",
            "two-sources",
            "unknown-key",
            "duplicate-yaml-key",
            "secret-with-space",
            "secret-of-wrong-type",
            "bad-appid",
            "duplicate-appid",
        ],
    )
    def test_problems_never_quote_the_inline_secret(self, tmp_path: Path, text: str) -> None:
        """No problem line quotes an inline secret, whatever else is wrong."""
        path = write_config(tmp_path, text)
        problems = problems_of(path)
        assert problems
        for problem in problems:
            assert INLINE_SECRET not in problem
            assert "DO-NOT-PRINT" not in problem

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
    def test_readable_config_with_inline_secret_warns(self, tmp_path: Path, mode: int) -> None:
        """An inline secret in a config others can read yields a warning naming chmod 600."""
        path = write_config(tmp_path, app_with(f"secret: {INLINE_SECRET}"), mode=mode)
        (warning,) = load_config(path, environ={}).warnings
        assert warning.startswith(f"{path}:3: apps[0].secret: ")
        assert f"chmod 600 {path}" in warning
        assert f"{mode:04o}" in warning
        assert INLINE_SECRET not in warning

    @pytest.mark.parametrize("mode", [0o600, 0o400])
    def test_private_config_with_inline_secret_does_not_warn(
        self, tmp_path: Path, mode: int
    ) -> None:
        """An inline secret in a config only its owner can read gives no warning."""
        path = write_config(tmp_path, app_with(f"secret: {INLINE_SECRET}"), mode=mode)
        assert load_config(path, environ={}).warnings == ()

    def test_readable_config_without_inline_secret_does_not_warn(self, tmp_path: Path) -> None:
        """A world-readable config whose secrets live elsewhere gives no warning."""
        path = write_config(tmp_path, MINIMAL, mode=0o644)
        assert load_config(path, environ={}).warnings == ()


class TestCli:
    def test_check_invalid_config(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """check on an invalid config exits 2 and prints the problem, not a traceback."""
        path = write_config(tmp_path, app_with("grant: fast", "secret_file: app.secret"))
        assert main(["check", "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}:3: apps[0].grant: " in err
        assert "Traceback" not in err

    def test_check_missing_config(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """check on a config path that does not exist exits 2 with a message."""
        path = tmp_path / "nope.yaml"
        assert main(["check", "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}: no such config file" in err
        assert "Traceback" not in err

    def test_check_valid_config(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """check on a valid config exits 0 and summarises each app without its secret."""
        path = write_config(tmp_path, f"output_dir: out\n{MINIMAL}")
        assert main(["check", "-c", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"{path}: config valid — 1 app(s)" in out
        assert APPID in out
        assert FILE_SECRET not in out

    def test_check_warns_about_readable_inline_secret(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """check logs the inline-secret warning, still exits 0, and never prints the secret."""
        path = write_config(
            tmp_path, f"output_dir: out\n{app_with(f'secret: {INLINE_SECRET}')}", mode=0o644
        )
        assert main(["check", "-c", str(path)]) == 0
        captured = capsys.readouterr()
        assert "chmod 600" in captured.err
        assert INLINE_SECRET not in captured.out + captured.err

    def test_schema(self, capsys: pytest.CaptureFixture[str]) -> None:
        """schema prints a JSON Schema with apps among its properties."""
        assert main(["schema"]) == 0
        schema = json.loads(capsys.readouterr().out)
        assert "apps" in schema["properties"]
        assert {"required": ["apps"]} in schema["anyOf"]  # or platforms:


class TestEnvironmentChecks:
    """Checks that depend on the host: groups, URLs, odd YAML."""

    def test_group_the_process_cannot_use(
        self, tmp_path: Path, own_group: tuple[str, int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A file_group this (non-root) process is not in is refused with how to fix it."""
        name, gid = own_group
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        monkeypatch.setattr(os, "getegid", lambda: gid + 1)
        monkeypatch.setattr(os, "getgroups", lambda: [gid + 1])
        path = write_config(tmp_path, f"file_group: {name}\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1: file_group: this process (uid 1000) is not in group")
        assert "SupplementaryGroups=" in problem

    def test_group_not_checked_for_readers(
        self, tmp_path: Path, own_group: tuple[str, int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Loading without secrets (wxtokend get) needs neither the secret nor the group."""
        name, gid = own_group
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        monkeypatch.setattr(os, "getegid", lambda: gid + 1)
        monkeypatch.setattr(os, "getgroups", lambda: [gid + 1])
        path = write_config(tmp_path, f"file_group: {name}\n{MINIMAL}")
        (tmp_path / "app.secret").unlink()
        config = load_config(path, secrets=False)
        assert config.file_gid == gid
        assert config.apps[0].secret.reveal() == ""

    @pytest.mark.parametrize(
        "url", ["http://127.0.0.1:99999", "http://a:b:c", "https://host:0x50", "http://[::1"]
    )
    def test_api_base_with_bad_port(self, tmp_path: Path, url: str) -> None:
        """An api_base that httpx cannot use is a config error, not a crash loop later."""
        path = write_config(tmp_path, f"api_base: '{url}'\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1: api_base: ")

    def test_unhashable_yaml_key(self, tmp_path: Path) -> None:
        """A list used as a key is reported with its position, not a TypeError."""
        path = write_config(tmp_path, f"? [a]\n: 1\n{MINIMAL}")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1:")
        assert "plain word" in problem

    def test_app_entry_not_a_mapping(self, tmp_path: Path) -> None:
        """An app given as a bare value says what an app entry looks like."""
        path = write_config(tmp_path, "apps: [1]\n")
        (problem,) = problems_of(path)
        assert "apps[0]: is not a mapping — each app is a mapping with appid:" in problem


class TestWeComAndTickets:
    """kind: wecom entries and tickets: lists."""

    def test_wecom_application(self, tmp_path: Path) -> None:
        """A WeCom entry: corpid, required name, the qyapi base, grant wecom, its tickets."""
        config = load(
            tmp_path,
            yaml_text("""
                apps:
                  - kind: wecom
                    corpid: ww0123456789abcdef
                    name: hr-app
                    agentid: 1000002
                    tickets: [jsapi, agent_config]
                    secret_file: app.secret
                  - appid: wx0123456789abcdef
                    tickets: [jsapi, wx_card, jsapi]
                    secret_file: app.secret
            """),
        )
        hr, shop = config.apps
        assert (hr.kind, hr.appid, hr.grant, hr.agentid) == (
            "wecom",
            "ww0123456789abcdef",
            "wecom",
            1000002,
        )
        assert hr.api_base == "https://qyapi.weixin.qq.com"
        assert hr.tickets == ("jsapi", "agent_config")
        assert shop.tickets == ("jsapi", "wx_card")  # duplicates dropped, order kept
        assert shop.api_base == "https://api.weixin.qq.com"

    def test_two_applications_of_one_corp(self, tmp_path: Path) -> None:
        """One corpid may appear with different secrets (several applications)."""
        (tmp_path / "b.secret").write_text("other-secret\n")
        config = load(
            tmp_path,
            yaml_text("""
                apps:
                  - {kind: wecom, corpid: ww1, name: a, secret_file: app.secret}
                  - {kind: wecom, corpid: ww1, name: b, secret_file: b.secret}
            """),
        )
        assert [a.name for a in config.apps] == ["a", "b"]

    @pytest.mark.parametrize(
        ("entry", "key", "fix"),
        [
            ("{kind: wecom, corpid: ww1, secret_file: app.secret}", "apps[0].name", "add name:"),
            (
                "{kind: wecom, appid: wx1, name: a, secret_file: app.secret}",
                "apps[0].appid",
                "write corpid: instead",
            ),
            (
                "{kind: wecom, corpid: ww1, name: a, grant: classic, secret_file: app.secret}",
                "apps[0].grant",
                "remove grant:",
            ),
            ("{kind: wecom, name: a, secret_file: app.secret}", "apps[0].corpid", "add corpid:"),
            ("{appid: wx1, corpid: ww1, secret_file: app.secret}", "apps[0].corpid", "kind: wecom"),
            ("{name: a, secret_file: app.secret}", "apps[0].appid", "add appid:"),
            (
                "{appid: wx1, tickets: [agent_config], secret_file: app.secret}",
                "apps[0].tickets[0]",
                "use jsapi or wx_card",
            ),
            (
                "{kind: wecom, corpid: ww1, name: a, tickets: [wx_card], secret_file: app.secret}",
                "apps[0].tickets[0]",
                "use agent_config or jsapi",
            ),
        ],
    )
    def test_invalid_entries(self, tmp_path: Path, entry: str, key: str, fix: str) -> None:
        """Each wrong combination is one problem at its key, with the fix."""
        path = write_config(tmp_path, f"apps:\n  - {entry}\n")
        (problem,) = problems_of(path)
        assert f": {key}: " in problem
        assert fix in problem

    def test_same_application_twice(self, tmp_path: Path) -> None:
        """The same corpid with the same secret twice is one application listed twice."""
        path = write_config(
            tmp_path,
            yaml_text("""
                apps:
                  - {kind: wecom, corpid: ww1, name: a, secret_file: app.secret}
                  - {kind: wecom, corpid: ww1, name: b, secret_file: app.secret}
            """),
        )
        (problem,) = problems_of(path)
        assert "apps[1]: corpid 'ww1' with the same secret as apps[0]" in problem

    def test_applications_of_one_corp_load_without_secrets(self, tmp_path: Path) -> None:
        """get and sign load without secrets: one corp's applications are not duplicates then."""
        (tmp_path / "b.secret").write_text("other-secret\n")
        path = write_config(
            tmp_path,
            yaml_text("""
                apps:
                  - {kind: wecom, corpid: ww1, name: a, secret_file: app.secret}
                  - {kind: wecom, corpid: ww1, name: b, secret_file: b.secret}
            """),
        )
        assert [a.name for a in load_config(path, secrets=False).apps] == ["a", "b"]

    def test_agent_config_needs_agentid(self, tmp_path: Path) -> None:
        """wx.agentConfig names the application: the agent_config ticket requires agentid."""
        path = write_config(
            tmp_path,
            "apps:\n  - {kind: wecom, corpid: ww1, name: a, tickets: [agent_config],"
            " secret_file: app.secret}\n",
        )
        (problem,) = problems_of(path)
        assert ": apps[0].agentid: is required for the agent_config ticket" in problem


class TestFleetConfig:
    """The fleet block."""

    def test_redis_url_from_a_file(self, tmp_path: Path) -> None:
        """redis_file keeps the password out of the config file."""
        (tmp_path / "redis.url").write_text("redis://:pw@redis.internal:6379/0\n")
        (tmp_path / "fleet.key").write_text(FLEET_KEY + "\n")
        config = load(
            tmp_path,
            f"fleet: {{redis_file: redis.url, key_file: fleet.key, role: follower}}\n{MINIMAL}",
        )
        assert config.fleet is not None
        assert config.fleet.redis_url == "redis://:pw@redis.internal:6379/0"
        assert config.fleet.role == "follower"
        assert config.fleet.key.reveal() == FLEET_KEY
        assert FLEET_KEY not in repr(config)

    @pytest.mark.parametrize(
        ("fleet", "problem"),
        [
            ("{key_file: fleet.key}", "needs exactly one of redis or redis_file"),
            ("{redis: 'http://x', key_file: fleet.key}", "must be a redis://"),
            ("{redis_file: missing.url, key_file: fleet.key}", "cannot read it"),
            ("{redis: 'redis://x', key_file: fleet.key, role: leader}", "member"),
        ],
    )
    def test_invalid(self, tmp_path: Path, fleet: str, problem: str) -> None:
        """Each mistake is one line naming fleet's key; a URL is never echoed."""
        path = write_config(tmp_path, f"fleet: {fleet}\n{MINIMAL}")
        (tmp_path / "fleet.key").write_text(FLEET_KEY)
        (line,) = problems_of(path)
        assert ": fleet" in line
        assert problem in line


# Wording that is pydantic's, not ours: none of it may reach a user.
INTERNAL_WORDS = (
    "Model",
    "instance of",
    "Input should",
    "String should",
    "Value error",
    "valid dictionary",
    "pydantic",
    "Keys should",
    "Field required",
    "Extra inputs",
    "For further information",
)

BROKEN_CONFIGS = {
    "admin-null": "admin: null",
    "admin-list": "admin: [1, 2]",
    "admin-text": "admin: off",
    "admin-unknown-key": "admin: {lisen: 127.0.0.1:9735}",
    "admin-listen-number": "admin: {listen: 9735}",
    "admin-limit-float": "admin: {passive_daily_limit: 1.5}",
    "admin-limit-huge": "admin: {passive_daily_limit: 100000}",
    "admin-timeout-small": "admin: {start_timeout: 10ms}",
    "api-proxy-empty": "api_proxy: {}",
    "api-proxy-listen-number": "api_proxy: {listen: 9736}",
    "api-proxy-listen-text": "api_proxy: {listen: nowhere}",
    "api-proxy-unknown-key": "api_proxy: {lisen: 127.0.0.1:9736}",
    "api-proxy-limit-negative": "api_proxy: {listen: '127.0.0.1:9736', replay_body_limit: -1}",
    "api-proxy-limit-huge": "api_proxy: {listen: '127.0.0.1:9736', replay_body_limit: 1e12}",
    "retry-number": "retry: 5",
    "retry-unknown-key": "retry: {mn: 1s}",
    "retry-max-text": "retry: {max: soon}",
    "fleet-list": "fleet: [redis]",
    "fleet-prefix": "fleet: {redis: 'redis://x', key_prefix: 'a b'}",
    "fleet-role": "fleet: {redis: 'redis://x', role: 3}",
    "fleet-ttl-huge": "fleet: {redis: 'redis://x', lock_ttl: 1h}",
    "output-dir-list": "output_dir: [a]",
    "max-concurrency-text": "max_concurrency: many",
    "max-concurrency-float": "max_concurrency: 2.5",
    "number-key": "1: x",
    "null-key": "null: x",
    "apps-null": "apps: null",
    "apps-text": "apps: shop",
    "app-null": "apps: [null]",
    "app-list": "apps: [[appid, wx1]]",
    "app-appid-number": "apps: [{appid: 12, secret_file: app.secret}]",
    "app-appid-list": "apps: [{appid: [wx1], secret_file: app.secret}]",
    "app-kind": "apps: [{kind: mp, appid: wx1, secret_file: app.secret}]",
    "app-agentid-text": "apps: [{kind: wecom, corpid: ww1, name: a, agentid: x, secret: s}]",
    "app-agentid-float": "apps: [{kind: wecom, corpid: ww1, name: a, agentid: 1.5, secret: s}]",
    "app-tickets-text": "apps: [{appid: wx1, tickets: jsapi, secret_file: app.secret}]",
    "app-ticket-unknown": "apps: [{appid: wx1, tickets: [jsapl], secret_file: app.secret}]",
    "app-ticket-mapping": "apps: [{appid: wx1, tickets: {jsapi: 1}, secret_file: app.secret}]",
    "app-secret-list": "apps: [{appid: wx1, secret: [s]}]",
    "app-secret-file-number": "apps: [{appid: wx1, secret_file: 5}]",
    "app-secret-env-shape": "apps: [{appid: wx1, secret_env: 'no such'}]",
    "app-number-key": "apps: [{appid: wx1, 7: x, secret_file: app.secret}]",
    "app-bool-key": "apps: [{appid: wx1, yes: x, secret_file: app.secret}]",
    "app-date": "apps: [{appid: wx1, name: 2024-01-01, secret_file: app.secret}]",
    "app-api-base-number": "apps: [{appid: wx1, api_base: 8080, secret_file: app.secret}]",
}


def broken(text: str) -> str:
    """``text`` as line 1 of a config, with a valid app after it unless it is about apps."""
    return f"{text}\n" if text.startswith("apps:") else f"{text}\n{MINIMAL}"


class TestPlainWords:
    """Every problem is in wxtokend's words: file, line, key path, what is wrong and the fix."""

    @pytest.mark.parametrize("text", BROKEN_CONFIGS.values(), ids=BROKEN_CONFIGS.keys())
    def test_no_internal_wording(self, tmp_path: Path, text: str) -> None:
        """No message quotes pydantic or its classes; each has a line and a fix."""
        path = write_config(tmp_path, broken(text))
        problems = problems_of(path)
        assert problems
        for problem in problems:
            assert not [w for w in INTERNAL_WORDS if w in problem], problem
            assert re.fullmatch(rf"{re.escape(str(path))}:\d+: \S+: \S.* \u2014 \S.*", problem), (
                problem
            )

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "admin: null",
                "admin: must be a mapping (key: value lines), not null (nothing) — write admin:"
                " as a mapping, e.g. admin: {listen: 127.0.0.1:9735}; to turn the admin API off"
                " write admin: {listen: null}",
            ),
            ("retry: 5", "retry: must be a mapping (key: value lines), not a number — write"),
            ("fleet: [redis]", "fleet: must be a mapping (key: value lines), not a list — write"),
            ("apps: [null]", "apps[0]: is not a mapping — each app is a mapping with appid:"),
            ("apps: shop", "apps: must be a list of apps, not text — list at least one app"),
            ("admin: {passive_daily_limit: 1.5}", "must be a whole number, not a decimal number"),
            ("admin: {start_timeout: 10ms}", "start_timeout: must be at least 1 s — use e.g. 60"),
            ("max_concurrency: many", "must be a whole number, not text — use a whole number"),
        ],
    )
    def test_says_what_is_expected(self, tmp_path: Path, text: str, expected: str) -> None:
        """A value of the wrong type says what the key takes and how to write it."""
        path = write_config(tmp_path, broken(text))
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1: ")
        assert expected in problem

    def test_unknown_key_in_a_section_suggests_that_sections_key(self, tmp_path: Path) -> None:
        """A misspelt admin key is matched against admin's keys, not the top level's."""
        path = write_config(tmp_path, broken("admin: {lisen: 127.0.0.1:9735}"))
        (problem,) = problems_of(path)
        assert problem == f"{path}:1: admin.lisen: unknown key — did you mean 'listen'?"


class TestLinesOfAbsentKeys:
    """A problem about a key that is not in the file takes the line of its nearest parent."""

    def test_wecom_app_without_name(self, tmp_path: Path) -> None:
        """A WeCom app missing name: is reported at that app's line."""
        path = write_config(
            tmp_path,
            f"{MINIMAL}  - kind: wecom\n    corpid: ww1\n    secret_file: app.secret\n",
        )
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:4: apps[1].name: is required for WeCom apps")

    def test_official_app_without_appid(self, tmp_path: Path) -> None:
        """An app missing appid: is reported at that app's line."""
        path = write_config(tmp_path, f"{MINIMAL}  - name: shop\n    secret_file: app.secret\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:4: apps[1].appid: is required but missing")

    def test_fleet_without_redis(self, tmp_path: Path) -> None:
        """A fleet section with neither redis nor redis_file is reported at fleet's line."""
        (tmp_path / "fleet.key").write_text(FLEET_KEY)
        path = write_config(tmp_path, f"{MINIMAL}fleet:\n  role: follower\n  key_file: fleet.key\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:4: fleet: needs exactly one of redis or redis_file")

    def test_key_from_a_merge_takes_the_apps_line(self, tmp_path: Path) -> None:
        """A bad value merged in with <<: *base is reported at the app that merges it."""
        path = write_config(
            tmp_path,
            yaml_text(f"""
                apps:
                  - &base
                    appid: {APPID}
                    secret_file: app.secret
                  - <<: *base
                    name: two
                  - <<: *base
                    appid: {APPID2}
            """),
        )
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:5: apps[1].appid: appid '{APPID}' is already used")


class TestAllProblemsAtOnce:
    """Shape errors, secrets, duplicates, group and fleet come back together in one error."""

    def test_schema_secret_duplicate_and_section(self, tmp_path: Path) -> None:
        """A bad app, a missing secret file, a duplicate name and a bad admin: four lines."""
        path = write_config(
            tmp_path,
            yaml_text(f"""
                admin: null
                apps:
                  - appid: wx1111111111111111
                    grant: fast
                    secret_file: app.secret
                  - appid: {APPID}
                    name: shop
                    secret_file: missing.secret
                  - appid: {APPID2}
                    name: shop
                    secret_file: app.secret
            """),
        )
        problems = problems_of(path)
        assert [p.split(" ")[0] for p in problems] == [
            f"{path}:1:",
            f"{path}:4:",
            f"{path}:8:",
            f"{path}:10:",
        ]
        assert [p.split(": ")[1] for p in problems] == [
            "admin",
            "apps[0].grant",
            "apps[1].secret_file",
            "apps[2].name",
        ]
        assert "name 'shop' is already used by apps[1]" in problems[3]

    def test_settings_and_group_and_fleet_beside_a_broken_app(self, tmp_path: Path) -> None:
        """A broken app does not hide a bad file_group, a bad retry or an unreadable redis_file."""
        (tmp_path / "fleet.key").write_text(FLEET_KEY)
        path = write_config(
            tmp_path,
            yaml_text("""
                file_group: no-such-group-wxtokend
                retry: {min: 5s, max: 2s}
                fleet: {redis_file: missing.url, key_file: fleet.key}
                request_timeout: forever
                apps:
                  - [not, an, app]
            """),
        )
        assert [p.split(": ")[1] for p in problems_of(path)] == [
            "file_group",
            "retry.max",
            "fleet.redis_file",
            "request_timeout",
            "apps[0]",
        ]

    def test_duplicate_yaml_keys_do_not_stop_the_rest(self, tmp_path: Path) -> None:
        """A key written twice is one problem; the first is kept and the file still checked."""
        path = write_config(
            tmp_path,
            yaml_text(f"""
                apps:
                  - appid: {APPID}
                    secret_file: missing.secret
                    secret_file: app.secret
                  - appid: {APPID2}
                    grant: fast
            """),
        )
        assert [p.split(": ")[0:2] for p in problems_of(path)] == [
            [f"{path}:3", "apps[0].secret_file"],
            [f"{path}:4", "apps[0].secret_file"],
            [f"{path}:6", "apps[1].grant"],
        ]

    def test_indices_survive_broken_apps(self, tmp_path: Path) -> None:
        """Apps after broken ones keep their own index and line in messages."""
        path = write_config(
            tmp_path,
            yaml_text(f"""
                apps:
                  - 1
                  - {{appid: {APPID}, grant: 2, secret_file: app.secret}}
                  - {{appid: {APPID2}, secret_env: MISSING_VAR}}
            """),
        )
        assert [p.split(": ")[0:2] for p in problems_of(path)] == [
            [f"{path}:2", "apps[0]"],
            [f"{path}:3", "apps[1].grant"],
            [f"{path}:4", "apps[2].secret_env"],
        ]


NOBODY = 65534


def main_as_nobody(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` in a forked child that dropped root for nobody: (exit code, stderr).

    As root os.access and the kernel let everything through, so the only way to see
    what an unprivileged daemon sees is to become one; fork keeps the loaded modules
    (the venv under /root is not readable by nobody).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            os.close(read)
            sys.stderr = os.fdopen(write, "w")
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        err = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may read (tmp_path is root's alone), removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="wxtokend-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def output_dir_config(directory: Path, output_dir: Path | str) -> Path:
    """A valid config (readable by all, admin API off) whose output_dir is ``output_dir``."""
    path = write_config(
        directory, f"output_dir: {output_dir}\nadmin: {{listen: null}}\n{MINIMAL}", mode=0o644
    )
    (directory / "app.secret").chmod(0o644)
    return path


class TestOutputDirCheck:
    """check and run refuse an output_dir run could not use: exit 2, the config's line, the fix."""

    @pytest.mark.parametrize("command", ["check", "run"])
    def test_output_dir_is_a_file(
        self, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """output_dir naming a regular file is refused before anything starts."""
        (tmp_path / "tokens").write_text("not a directory\n")
        path = output_dir_config(tmp_path, "tokens")
        assert main([command, "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert (
            f"{path}:1: output_dir: {tmp_path / 'tokens'} is a file, not a directory"
            " — point output_dir at a directory"
        ) in err
        assert "Traceback" not in err

    @pytest.mark.parametrize("command", ["check", "run"])
    def test_ancestor_is_a_file(
        self, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An output_dir that cannot be created because a parent is a file is refused."""
        (tmp_path / "file").write_text("x\n")
        path = output_dir_config(tmp_path, "file/tokens")
        assert main([command, "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert (
            f"{path}:1: output_dir: {tmp_path / 'file' / 'tokens'} cannot be created:"
            f" {tmp_path / 'file'} is a file"
        ) in err

    @pytest.mark.parametrize("command", ["check", "run"])
    def test_world_writable_is_refused(
        self, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An output_dir anyone may write in (no sticky bit) is refused by check as by run."""
        (tmp_path / "tokens").mkdir()
        os.chmod(tmp_path / "tokens", 0o777)
        path = output_dir_config(tmp_path, "tokens")
        assert main([command, "-c", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"{path}:1: output_dir: {tmp_path / 'tokens'} is writable by every user" in err
        assert "chmod o-w" in err

    def test_symlinked_output_dir_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An output_dir that is a symlink to a directory is refused by check too."""
        (tmp_path / "real").mkdir()
        (tmp_path / "tokens").symlink_to(tmp_path / "real")
        path = output_dir_config(tmp_path, "tokens")
        assert main(["check", "-c", str(path)]) == 2
        assert "is a symlink (to" in capsys.readouterr().err

    def test_dangling_symlink(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A symlink to nothing as output_dir is refused by check."""
        (tmp_path / "tokens").symlink_to(tmp_path / "gone")
        path = output_dir_config(tmp_path, "tokens")
        assert main(["check", "-c", str(path)]) == 2
        assert f"{path}:1: output_dir: {tmp_path / 'tokens'} is a symlink to nothing" in (
            capsys.readouterr().err
        )

    def test_creatable_output_dir_passes_and_is_not_created(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing output_dir under a writable directory is fine; check does not create it."""
        path = output_dir_config(tmp_path, "a/b/tokens")
        assert main(["check", "-c", str(path)]) == 0
        assert f"{path}: config valid" in capsys.readouterr().out
        assert not (tmp_path / "a").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["app.secret", "config.yaml"]

    @pytest.mark.parametrize(
        ("layout", "problem"),
        [
            ("existing", "{out} is not writable by this user (uid {uid}): Permission denied"),
            (
                "missing",
                "{out} cannot be created: this user (uid {uid}) cannot write in {parent}:"
                " Permission denied",
            ),
        ],
    )
    def test_not_writable_for_this_user(
        self,
        shared_dir: Path,
        layout: str,
        problem: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A directory this user may not write in is refused, naming the uid and the fix."""
        parent = shared_dir / "locked"
        parent.mkdir(mode=0o755)
        out = parent if layout == "existing" else parent / "tokens"
        path = output_dir_config(shared_dir, out)
        argv = ["check", "-c", str(path)]
        if AS_ROOT:  # root may write anywhere: ask as nobody, for whom 0755 root:root is closed
            code, err = main_as_nobody(argv)
            uid = NOBODY
        else:
            parent.chmod(0o555)
            code, err = main(argv), capsys.readouterr().err
            uid = os.geteuid()
        assert code == 2, err
        expected = problem.format(out=out, uid=uid, parent=parent)
        assert f"{path}:1: output_dir: {expected} — create it for the user wxtokend runs as" in err
        assert f"install -d -o {uid} -m 0750 {out}" in err

    def test_consumers_do_not_check_it(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """get runs as a consumer that only reads: it does not judge output_dir as a config."""
        (tmp_path / "tokens").write_text("not a directory\n")
        path = output_dir_config(tmp_path, "tokens")
        assert main(["get", APPID, "-c", str(path)]) == 1
        err = capsys.readouterr().err
        assert "invalid config" not in err
        assert "output_dir:" not in err


def alias_bomb(levels: int, width: int = 9) -> str:
    """'Billion laughs': each level a list of ``width`` aliases of the level below."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + f"\napps: [*l{levels}]\n"


def limited_check(path: Path) -> subprocess.CompletedProcess[str]:
    """``wxtokend check -c path`` in a process held to 500 MB of address space and 20 s."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (500 << 20, 500 << 20))

    return subprocess.run(
        [sys.executable, "-m", "wxtokend", "check", "-c", str(path)],
        preexec_fn=limit_memory,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def many_apps(n: int) -> str:
    """n apps with every per-app key a real fleet uses: the largest sane config per app."""
    return "apps:\n" + "".join(
        f"  - {{kind: wecom, corpid: ww{i:016x}, agentid: {1000000 + i}, name: app{i},"
        f" tickets: [jsapi, agent_config], api_base: 'http://127.0.0.1:9/x',"
        f" secret_file: secrets/app{i}}}\n"
        for i in range(n)
    )


class TestBoundedLoading:
    """Any file is judged quickly in little memory: bombs, huge and deep documents are refused."""

    def test_billion_laughs_is_refused_by_check(self, tmp_path: Path) -> None:
        """Nine levels of nine aliases: exit 2 at the first level past the limit (l5, line 6),
        within 500 MB and 20 s."""
        path = write_config(tmp_path, alias_bomb(9))
        result = limited_check(path)
        assert result.returncode == 2, result.stderr
        assert (
            f"{path}:6: aliases here expand the document past 500,000 values (an alias bomb?)"
            " — write the repeated parts out, or alias only small parts such as <<: *defaults"
        ) in result.stderr
        assert "Traceback" not in result.stderr

    def test_large_node_aliased_many_times(self, tmp_path: Path) -> None:
        """Few aliases of one big list also count as every copy: refused at the alias past it."""
        big = ", ".join(["jsapi"] * 10_000)
        aliases = "".join(f"  - {{appid: wx{i:016x}, tickets: *t, secret: s}}\n" for i in range(60))
        path = write_config(tmp_path, f"x: &t [{big}]\napps:\n{aliases}")
        (problem,) = problems_of(path)
        assert re.match(rf"{re.escape(str(path))}:(\d+): aliases here expand", problem)
        # The list and 49 aliases of it, the 49th app's on line 2 + 49, pass 500,000 values.
        assert int(problem.split(":")[1]) == 2 + 49

    def test_many_small_aliases_load(self, tmp_path: Path) -> None:
        """Thousands of <<: *defaults merges, the normal use of aliases, load."""
        apps = "".join(f"  - {{<<: *base, appid: wx{i:016x}, name: a{i}}}\n" for i in range(3000))
        config = load(
            tmp_path, f"apps:\n  - &base {{appid: {APPID}, grant: classic, secret: s}}\n{apps}"
        )
        assert len(config.apps) == 3001
        assert {a.grant for a in config.apps} == {"classic"}

    def test_many_anchors_load(self, tmp_path: Path) -> None:
        """Thousands of distinct anchors, each aliased by the next app, load."""
        apps = "".join(
            f"  - {{appid: wx{i:016x}, tickets: &t{i} [jsapi], secret: s}}\n"
            f"  - {{appid: wx{i + 10**6:016x}, tickets: *t{i}, secret: s}}\n"
            for i in range(2000)
        )
        config = load(tmp_path, f"apps:\n{apps}")
        assert len(config.apps) == 4000
        assert {a.tickets for a in config.apps} == {("jsapi",)}

    def test_alias_inside_its_own_anchor(self, tmp_path: Path) -> None:
        """A self-referencing alias (an endless structure) is refused, not recursed into."""
        path = write_config(tmp_path, "apps: &a [*a]\n")
        (problem,) = problems_of(path)
        assert problem == (
            f"{path}:1: alias *a is inside the node &a it names, an endless loop"
            " — move the alias out of its anchor's node"
        )

    def test_huge_file(self, tmp_path: Path) -> None:
        """A file over 8 MB is refused without being parsed."""
        path = write_config(tmp_path, MINIMAL + "#" * (8 << 20) + "\n")
        (problem,) = problems_of(path)
        assert problem == (
            f"{path}: larger than 8 MB, the limit for a config file — check that -c names the"
            " config (10,000 apps take about 1.3 MB)"
        )

    def test_too_many_values(self, tmp_path: Path) -> None:
        """More than 500,000 values written out (no alias) are refused at the value past it."""
        path = write_config(tmp_path, "apps: [" + "0, " * 500_000 + "]\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1: the document holds more than 500,000 values — ")

    @pytest.mark.parametrize(
        ("text", "line"),
        [
            ("apps: " + "[" * 65 + "]" * 65 + "\n", 1),
            ("apps: " + "[" * 990 + "]" * 990 + "\n", 1),  # was a RecursionError
            ('{"apps": ' + '{"a": ' * 990 + "1" + "}" * 991 + "\n", 1),  # JSON
            ("".join(" " * i + f"k{i}:\n" for i in range(100)) + " " * 100 + "v\n", 65),
        ],
        ids=["flow-65", "flow-990", "json-990", "block-100"],
    )
    def test_deep_nesting(self, tmp_path: Path, text: str, line: int) -> None:
        """Lists and mappings nested past 64 levels: one message with the line, no traceback."""
        path = write_config(tmp_path, text)
        (problem,) = problems_of(path)
        assert problem.startswith(
            f"{path}:{line}: lists and mappings nested more than 64 deep — a config needs 4 levels"
        )

    def test_nesting_up_to_the_limit_is_parsed(self, tmp_path: Path) -> None:
        """64 levels are read and then judged as a config (here: an app that is a list)."""
        path = write_config(tmp_path, "apps: " + "[" * 63 + "]" * 63 + "\n")
        (problem,) = problems_of(path)
        assert problem.startswith(f"{path}:1: apps[0]: is not a mapping")

    def test_ten_thousand_full_apps_load(self, tmp_path: Path) -> None:
        """10,000 apps with every per-app key stay well inside the limits."""
        text = many_apps(10_000)
        assert len(text) < (8 << 20) // 4
        config = load_config(write_config(tmp_path, text), secrets=False)
        assert len(config.apps) == 10_000
        assert config.apps[-1].tickets == ("jsapi", "agent_config")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
class TestReloadOfAnUnreadableConfig:
    """A hot reload of a bomb or a too-deep file is refused: the running apps stay."""

    @pytest.mark.parametrize(
        "text",
        [alias_bomb(5), "apps: " + "[" * 100 + "]" * 100 + "\n"],  # l5 is 9**6 = 531,441 values
        ids=["alias-bomb", "deep"],
    )
    async def test_reload_keeps_the_old_config(self, tmp_path: Path, text: str) -> None:
        """Daemon.reload() logs the problem and keeps the old config and its refreshers."""
        path = write_config(tmp_path, f"output_dir: out\n{MINIMAL}")
        log = io.StringIO()
        logs.configure(level="debug", stream=log, json=True)
        clock = VirtualClock()
        daemon = Daemon(load_config(path, environ={}), source=ScriptedWeChat(clock), clock=clock)
        before = daemon.config
        path.write_text(text)
        assert await daemon.reload(forced=True) is False
        assert daemon.config is before
        assert list(daemon.refreshers) == [APPID]
        events = [json.loads(line) for line in log.getvalue().splitlines()]
        (event,) = [e for e in events if e["event"].startswith("reload failed")]
        (problem,) = event["problems"]
        assert problem.startswith(f"{path}:")
        assert "alias bomb" in problem or "nested more than 64 deep" in problem


class TestFleetKey:
    """fleet.key_file: required, read at start, never echoed."""

    @pytest.mark.parametrize(
        ("content", "problem"),
        [
            (None, "cannot read: No such file or directory"),
            ("", "at least 32 visible ASCII characters (it holds 0 characters)"),
            ("short-key", "(it holds 9 characters)"),
            ("a" * 20 + " " + "b" * 20, "one line of at least 32"),
            ("a" * 20 + "\n" + "b" * 20, "one line of at least 32"),
            ("\u00e9" * 40, "visible ASCII"),
        ],
    )
    def test_bad_key_file(self, tmp_path: Path, content: str | None, problem: str) -> None:
        """A missing, short or malformed key file is one error naming fleet.key_file."""
        path = write_config(tmp_path, f"fleet: {{redis: 'redis://x', key_file: k}}\n{MINIMAL}")
        if content is not None:
            (tmp_path / "k").write_text(content)
        (line,) = problems_of(path)
        assert ": fleet.key_file: " in line
        assert problem in line
        assert "openssl rand -hex 32" in line
        if content:
            assert content.strip() not in line

    def test_unreadable_key_file(self, tmp_path: Path) -> None:
        """A key file that is not UTF-8 text is refused, not a traceback."""
        path = write_config(tmp_path, f"fleet: {{redis: 'redis://x', key_file: k}}\n{MINIMAL}")
        (tmp_path / "k").write_bytes(b"\xff" * 40)
        (line,) = problems_of(path)
        assert "fleet.key_file: " in line
        assert "cannot read: not UTF-8 text" in line

    def test_required_with_migration_hint(self, tmp_path: Path) -> None:
        """A fleet without key_file does not start: the error says why and how to add one."""
        path = write_config(tmp_path, f"fleet: {{redis: 'redis://x'}}\n{MINIMAL}")
        (line,) = problems_of(path)
        assert ": fleet.key_file: is missing: fleet records are signed" in line
        assert "give every member and follower the same file" in line
        assert "older, unsigned members are then never adopted" in line

    def test_surrounding_whitespace_ignored(self, tmp_path: Path) -> None:
        """A trailing newline (echo, editors) is not part of the key."""
        (tmp_path / "k").write_text(f"  {FLEET_KEY}\n\n")
        config = load(tmp_path, f"fleet: {{redis: 'redis://x', key_file: k}}\n{MINIMAL}")
        assert config.fleet is not None
        assert config.fleet.key.reveal() == FLEET_KEY

    def test_not_read_without_secrets(self, tmp_path: Path) -> None:
        """Commands consumers run (get) need no key: the key file is not read."""
        path = write_config(tmp_path, f"fleet: {{redis: 'redis://x', key_file: k}}\n{MINIMAL}")
        config = load_config(path, environ={}, secrets=False)
        assert config.fleet is not None
        assert config.fleet.key.reveal() == ""
