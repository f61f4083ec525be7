"""Sandbox uids on one host shared by several Moorage services: two services
(here: two processes, each with its own pool over the same range and the
same host-wide lock dir) never hold the same uid at once, and no service
hands out a uid that something still runs as."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from moorage.sandbox.uids import UidPool, pids_of_uid
from support import scaled, wait_until

BASE = 230_000  # far from the service's default range and from other tests


def test_two_services_never_hold_the_same_uid_at_once(tmp_path: Path) -> None:
    """Each process takes and gives back uids of the same 3-uid range as fast as it can;
    a claim is an O_EXCL marker file made while the uid is held, so any overlap fails it."""
    locks, claims = tmp_path / "locks", tmp_path / "claims"
    locks.mkdir()
    claims.mkdir()
    worker = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from moorage.errors import MoorageError
        from moorage.sandbox.uids import UidPool
        pool = UidPool({BASE}, 3, Path({str(locks)!r}))
        taken = 0
        for _ in range(1500):
            try:
                uid = pool.take()
            except MoorageError:
                continue  # all three held elsewhere right now
            fd = os.open(f"{claims}/{{uid}}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # raises on overlap
            taken += 1
            os.close(fd)
            os.unlink(f"{claims}/{{uid}}")
            pool.give_back(uid)
        print(taken)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", worker], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=scaled(120))
        assert proc.returncode == 0, err.decode()[-2000:]
        assert int(out) > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another uid")
def test_a_uid_something_still_runs_as_is_not_handed_out(tmp_path: Path) -> None:
    """A sandbox that outlived its service (a Docker container, a leftover process) holds no
    lock but still runs as its uid: another service must not hand that uid out."""
    busy = BASE + 10
    leftover = subprocess.Popen(
        ["setpriv", f"--reuid={busy}", f"--regid={busy}", "--clear-groups", "sleep", "300"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: bool(pids_of_uid(busy)), 10, "the leftover process to run as its uid")
        pool = UidPool(busy, 2, tmp_path)
        assert pool.take() == busy + 1
        with pytest.raises(Exception, match="no free sandbox uid"):
            pool.take()
    finally:
        leftover.kill()
        leftover.wait()
    wait_until(lambda: not pids_of_uid(busy), 10, "the leftover process to be gone")
    assert pool.take() == busy, "once nothing runs as it, the uid is handed out again"
