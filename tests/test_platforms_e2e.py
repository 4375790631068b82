"""The Open Platform chain end to end: the real daemon, the emulator pushing real callbacks.

Ticket pushed over HTTP → component token → authorizers (from the list at a fresh
start, and from an authorization event) → one file each; refreshed once per
lifetime, restarts cost nothing, 61023 stops one authorizer only, and kill -9
during refresh-token rotations never loses a refresh token.
"""

from __future__ import annotations

import json
import os
import random
import stat
import time
from pathlib import Path
from typing import Any

from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, EmulatorProcess, free_port, wait_for
from thirdparty import ThirdParty, ready

from wxtokend.redact import fingerprint

COMPONENT = "wx00c0c0c0c0c0c0c0"
SECRET = "COMPONENT_SECRET_0123456789abcdef"
TOKEN = "wxtokendplatformtoken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
PREAUTHORIZED = [f"wxa{i:015x}" for i in range(3)]
AGENCY = ThirdParty(
    name="agency", appid=COMPONENT, secret=SECRET, crypto_token=TOKEN, aes_key=AES_KEY
)


def _start(
    emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path, **emulated: Any
) -> tuple[EmulatorProcess, DaemonProcess, Path]:
    port = free_port()
    platform = {
        "component_appid": COMPONENT,
        "component_appsecret": SECRET,
        "token": TOKEN,
        "encoding_aes_key": AES_KEY,
        "callback_url": f"http://127.0.0.1:{port}/callback/agency",
        "ticket_push_interval": 2.0,
        "component_token_lifetime": 10,
        "authorizer_token_lifetime": 6,
        "authorizers": 3,
        "refresh_grace": 30.0,
        **emulated,
    }
    emu = emulator([], grace=2, platforms=[platform])
    directory = tmp_path / "daemon0"
    proc = daemon(
        [],
        emu.base_url,
        state_dir="state",
        callback={"listen": f"127.0.0.1:{port}"},
        admin={"listen": f"127.0.0.1:{free_port()}"},  # the same across restarts
        retry={"min": "50ms", "max": "1s"},
        platforms=[AGENCY.entry(directory)],
    )
    return emu, proc, directory


def _stats(emu: EmulatorProcess) -> dict[str, Any]:
    return dict(emu.http.get("/emulator/platforms").json()["platforms"][COMPONENT])


class TestChain:
    """From a pushed ticket to every authorizer's token file, kept valid."""

    def test_ticket_to_tokens(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        emu, proc, directory = _start(emulator, daemon, tmp_path)
        proc.start()
        wait_for(lambda: AGENCY.token(proc, "component_access_token"), timeout=20, what="component")
        AGENCY.wait_for_accounts(proc, PREAUTHORIZED)
        for appid in PREAUTHORIZED:
            token = AGENCY.token(proc, appid)
            assert token is not None
            assert emu.check(token) == 0, f"{appid}'s token is not valid"
            record = json.loads((AGENCY.files(proc) / f"{appid}.json").read_text())
            assert record["appid"] == appid
        # An account authorizes now: WeChat pushes the event, the daemon trades the code.
        answer = emu.post(f"/emulator/platforms/{COMPONENT}/authorize", {})
        assert answer["pushed"] is True
        new = answer["authorizer_appid"]
        wait_for(lambda: AGENCY.token(proc, new), timeout=20, what="the new authorizer's token")
        got = proc.run("get", f"agency/{new}")
        assert got.returncode == 0, got.stderr
        assert got.stdout == AGENCY.token(proc, new)
        # The private state: refresh tokens where consumers cannot read them.
        state = directory / "state" / "agency"
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        journal = state / "grants.jsonl"
        assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600
        # The list was read once for good: later starts trust the vault.
        wait_for((state / "authorizer_list.json").exists, timeout=5, what="the list marker")
        refresh_tokens = [
            json.loads(line)["refresh_token"] for line in journal.read_text().splitlines()
        ]
        # Over several lifetimes every file stays valid, each refreshed about once each.
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            for appid in [*PREAUTHORIZED, new]:
                token = AGENCY.token(proc, appid)
                assert token is not None
                assert emu.check(token) == 0
            time.sleep(0.5)
        refreshes = _stats(emu)["refreshes"]
        for appid in PREAUTHORIZED:
            assert 2 <= refreshes.get(appid, 0) <= 4, refreshes  # ~14 s / (6 s * 0.8)
        with proc.admin() as admin:
            ready = admin.get("/readyz")
            assert ready.status_code == 200, ready.text
            listing = admin.get("/v1/platforms/agency/authorizers", params={"limit": 2}).json()
            assert listing["total"] == 4
            assert len(listing["authorizers"]) == 2
            metrics = admin.get("/metrics").text
            assert 'wxtokend_platform_authorizers{platform="agency",state="ok"} 4.0' in metrics
            assert (
                'wxtokend_platform_callbacks_total{platform="agency",result="accepted"}' in metrics
            )
        log = proc.log_text()
        for secret in (SECRET, TOKEN, AES_KEY, *refresh_tokens):
            assert secret not in log

    def test_restart_with_valid_tokens_costs_no_call(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        emu, proc, directory = _start(
            emulator, daemon, tmp_path, component_token_lifetime=120, authorizer_token_lifetime=120
        )
        proc.start()
        AGENCY.wait_for_accounts(proc, PREAUTHORIZED)
        # Once every listed grant is saved the daemon says so; a stop before that would
        # make the next start read the list again (one call per 500 accounts, nothing lost).
        marker = directory / "state" / "agency" / "authorizer_list.json"
        wait_for(marker.exists, timeout=5, what="the list marker")
        before = _stats(emu)["counts"]
        proc.stop()
        proc.start()
        with proc.admin() as admin:
            wait_for(lambda: ready(admin), timeout=20, what="ready")
        time.sleep(1)
        assert _stats(emu)["counts"] == before  # no component, list or authorizer call

    def test_a_start_stopped_before_the_list_was_saved_reads_it_again(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        """No marker (a stop halfway through a first start): the list is read once more,
        the grants kept are not lost, and valid tokens are not fetched again."""
        emu, proc, directory = _start(
            emulator, daemon, tmp_path, component_token_lifetime=120, authorizer_token_lifetime=120
        )
        proc.start()
        marker = directory / "state" / "agency" / "authorizer_list.json"
        wait_for(marker.exists, timeout=20, what="the list marker")
        proc.stop()
        marker.unlink()
        before = _stats(emu)["counts"]
        proc.start()
        wait_for(marker.exists, timeout=20, what="the list marker again")
        with proc.admin() as admin:
            wait_for(lambda: ready(admin), timeout=20, what="ready")
        after = _stats(emu)["counts"]
        assert after["api_get_authorizer_list"] == before["api_get_authorizer_list"] + 1
        assert after.get("api_authorizer_token") == before.get("api_authorizer_token")

    def test_61023_leaves_the_others_alone(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        emu, proc, _ = _start(emulator, daemon, tmp_path)
        proc.start()
        AGENCY.wait_for_accounts(proc, PREAUTHORIZED)
        dead = PREAUTHORIZED[1]
        emu.post(
            f"/emulator/platforms/{COMPONENT}/revoke-refresh-token", {"authorizer_appid": dead}
        )
        with proc.admin() as admin:

            def refused() -> Any:
                body = admin.get("/v1/platforms/agency").json()
                return body["authorizers"]["needs_authorization"] == 1 and body

            summary = wait_for(refused, timeout=20, what="61023 noticed")
            assert "re-authorization" in " ".join(summary["problems"])
            ready = admin.get("/readyz")
            assert ready.status_code == 503
            assert "re-authorization" in ready.json()["apps"]["platform/agency"]
            calls = _stats(emu)["refreshes"].get(dead, 0)
            time.sleep(8)  # more than a lifetime: the others refresh, the dead one is left
            assert _stats(emu)["refreshes"].get(dead, 0) == calls
            for appid in (PREAUTHORIZED[0], PREAUTHORIZED[2]):
                token = AGENCY.token(proc, appid)
                assert token is not None
                assert emu.check(token) == 0
        assert "needs re-authorization" in proc.log_text()


class TestCheck:
    """`wxtokend check` summarises each platform from its files, and never shows a secret."""

    def test_before_the_first_start_and_after(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        emu, proc, directory = _start(emulator, daemon, tmp_path)
        first = proc.run("check")
        assert first.returncode == 0, first.stderr
        assert "1 platform(s)" in first.stdout
        assert "component_verify_ticket: none received yet" in first.stdout
        assert "callback.listen" in first.stdout
        assert "component_access_token: no token file yet" in first.stdout
        assert "accounts: 0 with refresh tokens" in first.stdout
        proc.start()
        AGENCY.wait_for_accounts(proc, PREAUTHORIZED)
        proc.stop()
        calls = _stats(emu)["counts"]
        later = proc.run("check", "--online")
        assert later.returncode == 0, later.stderr
        assert "component_verify_ticket: received" in later.stdout
        component = AGENCY.token(proc, "component_access_token")
        assert component is not None
        assert f"component_access_token: token {fingerprint(component)} valid for" in later.stdout
        assert "accounts: 3 with refresh tokens in" in later.stdout
        assert "3 with a valid token file" in later.stdout
        assert "agency/: not asked online" in later.stdout
        journal = (directory / "state" / "agency" / "grants.jsonl").read_text().splitlines()
        ticket = json.loads(
            (directory / "state" / "agency" / "component_verify_ticket.json").read_text()
        )
        secrets = [json.loads(line)["refresh_token"] for line in journal]
        secrets += [ticket["ticket"], component, SECRET, TOKEN, AES_KEY]
        secrets += [t for t in (AGENCY.token(proc, a) for a in PREAUTHORIZED) if t]
        shown = first.stdout + first.stderr + later.stdout + later.stderr
        assert [s for s in secrets if s in shown] == []
        assert _stats(emu)["counts"] == calls  # nothing asked of WeChat for the platform
        ticket_file = directory / "state" / "agency" / "component_verify_ticket.json"
        ticket["created_at"] = time.time() - 13 * 3600  # the pushes stopped half a day ago
        ticket_file.write_text(json.dumps(ticket))
        stale = proc.run("check")
        assert "component_verify_ticket: the newest is 13 h old, past its 12 h" in stale.stdout
        assert "check that the callback URL reaches callback.listen" in stale.stdout


class TestCrashSafety:
    """kill -9 at any instant of refresh-token rotation never loses a refresh token."""

    def test_kills_during_rotation(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        # A rotated-out refresh token dies at once: a lost answer cannot be papered over.
        emu, proc, _ = _start(
            emulator, daemon, tmp_path, authorizer_token_lifetime=2, refresh_grace=0.0
        )
        rng = random.Random(3)
        proc.start()
        AGENCY.wait_for_accounts(proc, PREAUTHORIZED)
        for _ in range(10):
            time.sleep(rng.uniform(0.2, 2.5))  # refreshes (and rotations) every ~1.6 s
            proc.kill()
            proc.start()
        with proc.admin() as admin:
            wait_for(lambda: ready(admin), timeout=30, what="every authorizer valid again")
            summary = admin.get("/v1/platforms/agency").json()
        assert summary["authorizers"]["needs_authorization"] == 0
        # And they go on rotating: each refresh token the daemon holds still works.
        before = _stats(emu)["refreshes"]
        wait_for(
            lambda: all(
                _stats(emu)["refreshes"].get(a, 0) > before.get(a, 0) for a in PREAUTHORIZED
            ),
            timeout=20,
            what="another rotation each",
        )
        assert "needs re-authorization" not in proc.log_text()
