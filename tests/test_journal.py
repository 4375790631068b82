"""The refresh-token journal and group commit: one fsync per batch, nothing lost, nothing torn."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from fakes import T0, VirtualClock
from test_platforms import A1, A2, A3, FakeWire, _book, _run_until

from wxtokend import logs
from wxtokend.platforms import commit
from wxtokend.platforms.authorizers import Authorizer
from wxtokend.platforms.commit import GroupCommit, each
from wxtokend.platforms.listing import save_held, unsaved
from wxtokend.platforms.vault import Grant, Vault


def _vault(tmp_path: Path) -> Vault:
    vault = Vault(tmp_path / "state" / "agency")
    vault.prepare()
    return vault


def _held(vault: Vault) -> dict[str, str]:
    grants, problems = Vault(vault.directory).grants()  # a fresh reader, as a restart is
    assert problems == []
    return {g.appid: g.refresh_token for g in grants}


class TestJournal:
    """Appends are durable and validated; a torn tail is ignored and never glued to."""

    def test_newest_wins_and_removals_stick(self, tmp_path: Path) -> None:
        vault = _vault(tmp_path)
        vault.save_grants(
            [Grant(appid=a, refresh_token=f"R0_{a}", updated_at=T0) for a in (A1, A2)]
        )
        vault.save_grant(Grant(appid=A1, refresh_token="R1_A1", updated_at=T0 + 1))
        vault.remove_grant(A2, T0 + 2)
        assert _held(vault) == {A1: "R1_A1"}

    def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(
        self, tmp_path: Path
    ) -> None:
        """A kill halfway through an append: the line was never confirmed, so it is as if
        it was never written; the next append does not merge into it."""
        vault = _vault(tmp_path)
        vault.save_grant(Grant(appid=A1, refresh_token="R_OLD", updated_at=T0))
        with vault.journal.path.open("ab") as journal:
            journal.write(b'{"appid": "' + A1.encode() + b'", "refresh_tok')
        assert _held(vault) == {A1: "R_OLD"}
        again = Vault(vault.directory)
        again.save_grant(Grant(appid=A2, refresh_token="R_A2", updated_at=T0))
        assert _held(vault) == {A1: "R_OLD", A2: "R_A2"}
        assert vault.journal.path.read_bytes().count(b"\n") == 2

    def test_compaction_keeps_exactly_the_live_grants(self, tmp_path: Path) -> None:
        vault = _vault(tmp_path)
        for i in range(1500):  # past twice the live grants plus the slack: compacted
            vault.save_grant(Grant(appid=A1, refresh_token=f"R_{i}", updated_at=T0 + i))
        vault.save_grant(Grant(appid=A2, refresh_token="R_A2", updated_at=T0))
        assert _held(vault) == {A1: "R_1499", A2: "R_A2"}
        assert vault.journal.path.read_bytes().count(b"\n") < 1100
        assert not [p for p in vault.directory.iterdir() if ".tmp-" in p.name]
        assert oct(os.stat(vault.journal.path).st_mode & 0o777) == "0o600"

    def test_a_symlink_at_the_journal_is_refused(self, tmp_path: Path) -> None:
        vault = _vault(tmp_path)
        target = tmp_path / "elsewhere"
        target.write_text("")
        vault.journal.path.symlink_to(target)
        with pytest.raises(OSError, match=r"grants\.jsonl"):
            vault.save_grant(Grant(appid=A1, refresh_token="R", updated_at=T0))
        assert target.read_text() == ""

    def test_secrets_stay_out_of_errors(self, tmp_path: Path) -> None:
        vault = _vault(tmp_path)
        vault.journal.path.write_text('{"appid": "bad id", "refresh_token": "SECRET_R"}\n')
        _, problems = vault.grants()
        assert problems
        assert "SECRET_R" not in " ".join(problems)


@pytest.mark.anyio
class TestGroupCommit:
    """Concurrent saves share writer calls, and each caller gets its own outcome."""

    async def test_saves_are_batched(self) -> None:
        batches: list[list[int]] = []

        def write(items: list[int]) -> list[OSError | None]:
            batches.append(items)
            return [OSError(5, "bad disk") if i == 7 else None for i in items]

        group: GroupCommit[int] = GroupCommit(write)
        results = await asyncio.gather(*(group.save(i) for i in range(50)), return_exceptions=True)
        assert sorted(i for b in batches for i in b) == list(range(50))
        assert len(batches) < 50  # the first write went alone, the rest waited together
        assert [i for i, r in enumerate(results) if r is not None] == [7]
        assert isinstance(results[7], OSError)

    async def test_a_failing_batch_fails_each_caller(self) -> None:
        def write(items: list[int]) -> list[OSError | None]:
            raise OSError(28, "No space left on device")

        group: GroupCommit[int] = GroupCommit(write)
        results = await asyncio.gather(*(group.save(i) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, OSError) for r in results)

    async def test_a_cancelled_caller_is_still_written(self) -> None:
        written: list[int] = []
        group: GroupCommit[int] = GroupCommit(each(written.append))
        task = asyncio.create_task(group.save(1))
        await asyncio.sleep(0)
        task.cancel()
        await group.save(2)
        assert written == [1, 2]

    async def test_batches_are_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(commit, "_MAX_BATCH", 3)
        sizes: list[int] = []
        group: GroupCommit[int] = GroupCommit(
            lambda items: sizes.append(len(items)) or [None] * len(items)
        )
        await asyncio.gather(*(group.save(i) for i in range(10)))
        assert max(sizes) <= 3
        assert sum(sizes) == 10


@pytest.mark.anyio
class TestListedGrants:
    """Refresh tokens from WeChat's list are held in memory until their first refresh saves
    the rotated one: a fresh start does not write every grant twice."""

    async def test_first_refresh_saves_the_rotated_grant(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        book, vault, _ = _book(tmp_path, clock, wire)
        for appid in (A1, A2, A3):
            assert book.adopt_listed(appid, f"LISTED_{appid}")
        assert not book.adopt_listed(A1, f"LISTED_{A1}")  # the same again: nothing new
        assert _held(vault) == {}
        assert unsaved(book.entries)
        await _run_until(
            book,
            lambda: all(book.entries[a].token for a in (A1, A2, A3)) and not unsaved(book.entries),
        )
        held = _held(vault)
        assert set(held) == {A1, A2, A3}
        assert all(not v.startswith("LISTED_") for v in held.values())  # the rotated ones

    async def test_a_dead_listed_grant_is_not_unsaved(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        wire.errcodes[A2] = 61023
        book, _, _ = _book(tmp_path, clock, wire)
        book.adopt_listed(A1, "LISTED_1")
        book.adopt_listed(A2, "LISTED_2")
        a1, a2 = book.entries[A1], book.entries[A2]
        await _run_until(book, lambda: not a1.unsaved and a2.error is not None)
        assert a2.unsaved  # its listed grant was never saved: WeChat refused it
        assert not unsaved(book.entries)

    async def test_a_valid_accounts_listed_grant_is_saved_at_once(self, tmp_path: Path) -> None:
        """No refresh is due for hours, so the sync saves it itself (one batch)."""
        clock = VirtualClock()
        book, vault, _ = _book(tmp_path, clock, FakeWire(clock))
        book.entries[A1] = Authorizer(appid=A1, token="T", expires_at=clock.now() + 3600)
        book.adopt_listed(A1, "LISTED_NEWER")
        assert unsaved(book.entries)
        await save_held(book.entries, vault, clock.now(), logs.get_logger())
        assert not unsaved(book.entries)
        assert _held(vault) == {A1: "LISTED_NEWER"}

    def test_unsaved_shrinks_and_forgets_removed_accounts(self) -> None:
        """Looking again among an earlier answer: saved ones and removed ones drop out."""
        entries = {a: Authorizer(appid=a, refresh_token="R", unsaved=True) for a in (A1, A2, A3)}
        first = unsaved(entries)
        assert {e.appid for e in first} == {A1, A2, A3}
        entries[A1].unsaved = False  # its first refresh saved it
        del entries[A2]  # it unauthorized the platform meanwhile
        entries[A2] = Authorizer(appid=A2, refresh_token="R2")  # authorized again: new, saved
        assert [e.appid for e in unsaved(entries, first)] == [A3]
        entries[A3].unsaved = False
        assert unsaved(entries, first) == []

    def test_listed_marker_round_trip(self, tmp_path: Path) -> None:
        vault = _vault(tmp_path)
        assert not vault.listed()
        vault.save_listed(T0)
        assert Vault(vault.directory).listed()
        (vault.directory / "authorizer_list.json").write_text('{"listed_at": true}')
        assert not vault.listed()  # refused: read the list again, which loses nothing


@pytest.mark.anyio
class TestFailedWrites:
    """A write that fails is retried alone: never another call (a rotation, quota spent)."""

    async def test_token_files_are_written_again_without_a_call(self, tmp_path: Path) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        book, vault, store = _book(tmp_path, clock, wire)
        vault.save_grant(Grant(appid=A1, refresh_token="R1", updated_at=T0))
        original, failures = store.save, [2]

        def failing_save(record: Any) -> bool:
            if failures[0]:
                failures[0] -= 1
                raise OSError(28, "No space left on device")
            return original(record)

        store.save = failing_save  # type: ignore[method-assign]
        book.adopt_stored(())
        await _run_until(book, lambda: store.load(A1, now=clock.now()) is not None)
        assert len(wire.calls) == 1
        assert failures == [0]

    async def test_a_grant_is_written_again_without_a_call(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        clock = VirtualClock()
        wire = FakeWire(clock)
        book, vault, _ = _book(tmp_path, clock, wire)
        vault.save_grant(Grant(appid=A1, refresh_token="R1", updated_at=T0))
        original, failures = vault.save_grants, [1]

        def failing(grants: list[Grant]) -> None:
            if failures[0]:
                failures[0] -= 1
                raise OSError(30, "Read-only file system")
            original(grants)

        monkeypatch.setattr(vault, "save_grants", failing)
        book.adopt_stored(())
        rotated = lambda: _held(vault).get(A1, "R1") != "R1"  # noqa: E731
        await _run_until(book, lambda: rotated() and not book.entries[A1].unsaved)
        assert len(wire.calls) == 1
        assert _held(vault)[A1] == book.entries[A1].refresh_token
