"""The sandbox uid pool's reservation: a stopped sandbox's uid stays taken
while its workspace (which that uid owns, and which is archived as it) is
still on disk, and comes back once the workspace is gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from moorage.errors import SandboxError
from moorage.sandbox.uids import UidPool


def test_a_uid_is_not_handed_out_again_while_its_workspace_exists(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("still being saved")
    pool = UidPool(600, 1)
    uid = pool.take()
    pool.give_back(uid, once_gone=workspace)
    with pytest.raises(SandboxError):
        pool.take()
    assert pool.held == {uid}
    shutil.rmtree(workspace)
    assert pool.take() == uid


def test_a_parked_uid_stays_parked_while_any_entry_remains_at_the_path(tmp_path: Path) -> None:
    """A dangling link left where the workspace was still counts (lexists, never followed)."""
    workspace = tmp_path / "workspace"
    workspace.symlink_to(tmp_path / "nowhere")
    pool = UidPool(600, 1)
    uid = pool.take()
    pool.give_back(uid, once_gone=workspace)
    with pytest.raises(SandboxError):
        pool.take()
    workspace.unlink()
    assert pool.take() == uid


def test_a_uid_whose_workspace_is_already_gone_comes_back_at_once(tmp_path: Path) -> None:
    pool = UidPool(600, 2)
    a, b = pool.take(), pool.take()
    pool.give_back(a, once_gone=tmp_path / "never-made")
    assert pool.take() == a
    pool.give_back(b, once_gone=None)
    assert pool.take() == b


def test_a_parked_uid_keeps_its_host_wide_lock_until_its_workspace_is_gone(tmp_path: Path) -> None:
    """Another service on the host (another pool on the same lock directory) cannot take it either."""
    locks = tmp_path / "locks"
    locks.mkdir()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    mine, theirs = UidPool(700, 1, locks), UidPool(700, 1, locks)
    uid = mine.take()
    mine.give_back(uid, once_gone=workspace)
    assert not mine.available()
    with pytest.raises(SandboxError):
        theirs.take()
    workspace.rmdir()
    assert mine.available()  # the owner notices, and lets the lock go
    assert theirs.take() == uid
    with pytest.raises(SandboxError):
        mine.take()


def test_giving_a_parked_uid_back_plainly_frees_it(tmp_path: Path) -> None:
    """Parking is not a second hold: a give_back without a workspace ends it."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    pool = UidPool(600, 1)
    uid = pool.take()
    pool.give_back(uid, once_gone=workspace)
    pool.give_back(uid)
    assert pool.take() == uid
    pool.give_back(uid)
    workspace.rmdir()
    assert pool.take() == uid  # the old reservation does not free it a second time
    with pytest.raises(SandboxError):
        pool.take()
