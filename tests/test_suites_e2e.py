"""WeCom third-party apps end to end: the real daemon, the emulator pushing suite tickets.

suite_ticket pushed over HTTP → suite_access_token → a corp installs the app
(create_auth pushed) → its permanent code kept in the vault, its token a file,
refreshed with get_corp_token each lifetime; a restart costs nothing; an
uninstall (cancel_auth) removes its files; a revoked permanent code (40084)
stops that corp only, loudly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, EmulatorProcess, free_port, wait_for
from thirdparty import ThirdParty, ready

SUITE = "wwsuite0123456789"
SECRET = "SUITE_SECRET_0123456789abcdef"
TOKEN = "wxtokendsuitetoken"
AES_KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg"
CRM = ThirdParty(
    name="crm", appid=SUITE, secret=SECRET, crypto_token=TOKEN, aes_key=AES_KEY, suite=True
)


def _start(
    emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path, **emulated: Any
) -> tuple[EmulatorProcess, DaemonProcess, Path]:
    port = free_port()
    suite = {
        "suite_id": SUITE,
        "suite_secret": SECRET,
        "token": TOKEN,
        "encoding_aes_key": AES_KEY,
        "callback_url": f"http://127.0.0.1:{port}/callback/crm",
        "ticket_push_interval": 2.0,
        "suite_token_lifetime": 10,
        "corp_token_lifetime": 6,
        **emulated,
    }
    emu = emulator([], grace=2, suites=[suite])
    directory = tmp_path / "daemon0"
    proc = daemon(
        [],
        emu.base_url,
        state_dir="state",
        callback={"listen": f"127.0.0.1:{port}"},
        admin={"listen": f"127.0.0.1:{free_port()}"},
        retry={"min": "50ms", "max": "1s"},
        suites=[CRM.entry(directory)],
    )
    return emu, proc, directory


def _stats(emu: EmulatorProcess) -> dict[str, Any]:
    return dict(emu.http.get("/emulator/suites").json()["suites"][SUITE])


class TestSuiteChain:
    """From a pushed suite_ticket to each installed corp's token file, kept valid."""

    def test_ticket_to_corp_tokens(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        emu, proc, directory = _start(emulator, daemon, tmp_path)
        proc.start()
        wait_for(lambda: CRM.token(proc, "suite_access_token"), timeout=20, what="suite token")
        installs = [emu.post(f"/emulator/suites/{SUITE}/create-auth", {}) for _ in range(2)]
        assert all(i["pushed"] for i in installs)
        corps = [i["corpid"] for i in installs]
        wait_for(lambda: all(CRM.token(proc, c) for c in corps), timeout=20, what="corp tokens")
        # Several corp-token lifetimes: every file stays valid, each refreshed ~once each.
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            for corpid in corps:
                token = CRM.token(proc, corpid)
                assert token is not None
                assert emu.check(token) == 0, f"{corpid}'s token is not valid"
            time.sleep(0.5)
        refreshes = _stats(emu)["refreshes"]
        for corpid in corps:
            assert 2 <= refreshes.get(corpid, 0) <= 4, refreshes  # ~14 s / (6 s * 0.8)
        record = json.loads((proc.output_dir / "crm" / f"{corps[0]}.json").read_text())
        assert record["appid"] == corps[0]
        got = proc.run("get", f"crm/{corps[0]}")
        assert got.returncode == 0, got.stderr
        with proc.admin() as admin:
            summary = admin.get("/v1/platforms/crm").json()
            assert summary["authorizers"]["valid"] == 2
            assert admin.get("/readyz").status_code == 200
        # Permanent codes are secrets: in the vault, never in the log.
        journal = directory / "state" / "crm" / "grants.jsonl"
        codes = {json.loads(line)["refresh_token"] for line in journal.read_text().splitlines()}
        assert len(codes) == 2
        log = proc.log_text()
        for secret in (SECRET, TOKEN, AES_KEY, *codes):
            assert secret not in log
        checked = proc.run("check")
        assert checked.returncode == 0, checked.stderr
        assert "crm/: WeCom suite" in checked.stdout
        assert "suite_ticket: received" in checked.stdout
        assert "accounts: 2 with permanent codes in" in checked.stdout
        assert "2 with a valid token file" in checked.stdout
        assert not [c for c in codes if c in checked.stdout]
        # An uninstall: WeCom pushes cancel_auth, that corp's files go.
        emu.post(f"/emulator/suites/{SUITE}/cancel-auth", {"corpid": corps[1]})
        wait_for(lambda: CRM.token(proc, corps[1]) is None, timeout=10, what="files removed")
        assert CRM.token(proc, corps[0]) is not None

    def test_restart_with_valid_tokens_costs_no_call(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        emu, proc, _ = _start(
            emulator, daemon, tmp_path, suite_token_lifetime=120, corp_token_lifetime=120
        )
        proc.start()
        wait_for(lambda: CRM.token(proc, "suite_access_token"), timeout=20, what="suite token")
        corpid = emu.post(f"/emulator/suites/{SUITE}/create-auth", {})["corpid"]
        wait_for(lambda: CRM.token(proc, corpid), timeout=20, what="the corp's token")
        before = _stats(emu)["counts"]
        proc.stop()
        proc.start()
        with proc.admin() as admin:
            wait_for(lambda: ready(admin), timeout=20, what="ready after restart")
        time.sleep(1)
        assert _stats(emu)["counts"] == before  # no suite, permanent-code or corp call
        assert CRM.token(proc, corpid) is not None

    def test_a_revoked_permanent_code_stops_that_corp_only(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, tmp_path: Path
    ) -> None:
        emu, proc, _ = _start(emulator, daemon, tmp_path)
        proc.start()
        wait_for(lambda: CRM.token(proc, "suite_access_token"), timeout=20, what="suite token")
        corps = [emu.post(f"/emulator/suites/{SUITE}/create-auth", {})["corpid"] for _ in range(2)]
        wait_for(lambda: all(CRM.token(proc, c) for c in corps), timeout=20, what="corp tokens")
        emu.post(f"/emulator/suites/{SUITE}/revoke-permanent-code", {"corpid": corps[0]})
        with proc.admin() as admin:
            wait_for(
                lambda: (
                    admin.get("/v1/platforms/crm").json()["authorizers"]["needs_authorization"] == 1
                ),
                timeout=20,
                what="40084 noticed",
            )
            assert admin.get("/readyz").status_code == 503
        calls = _stats(emu)["refreshes"].get(corps[0], 0)
        time.sleep(7)  # more than a lifetime: the other corp refreshes, the dead one is left
        assert _stats(emu)["refreshes"].get(corps[0], 0) == calls
        token = CRM.token(proc, corps[1])
        assert token is not None
        assert emu.check(token) == 0
