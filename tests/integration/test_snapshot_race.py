"""Snapshots under attack: while the service archives a workspace again and again, a process running
as the sandbox's own host uid swaps (renameat2 RENAME_EXCHANGE, atomic) a regular file with a link
to /proc/self/environ, a directory with a link to /etc, and another with a link to /. No archive may
ever hold the service's environment or /etc/shadow; links are archived as links.

The service is a child process here (started with a canary secret first in its environment, where
/proc/self/environ shows it) that runs ``moorage.workspaces.archive`` as root with a real uid pool
uid, the way checkpoints and suspensions do."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from moorage.sandbox.uids import UidPool
from support import scaled

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv (a real sandbox uid)"
)

SNAPSHOTS = 300
CANARY = "moorage-canary-secret-0123456789abcdef"
FILE_BYTES = 64  # the regular file's size: what a followed link would yield of environ

RACER = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(sys.argv[1])
    pairs = [(b"file", b"flink"), (b"d", b"dlink"), (b"r", b"rlink")]
    print("racing", flush=True)
    while True:
        for a, b in pairs:
            libc.renameat2(fd, a, fd, b, 2)  # RENAME_EXCHANGE
    """
)

SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from moorage.workspaces import archive, MoorageError

    async def main(ws, out, count):
        failed = 0
        for n in range(count):
            try:
                async with archive(Path(ws), 10**8, 60.0) as chunks:
                    data = b"".join([c async for c in chunks])
            except MoorageError:
                failed += 1
                continue
            (Path(out) / f"{n}.tgz").write_bytes(data)
        print("failed", failed, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


@pytest.fixture
def sandbox_uid() -> Iterator[int]:
    pool = UidPool.shared(200_000, 10_000)  # the uids sandboxes use, flocked host-wide
    uid = pool.take()
    try:
        yield uid
    finally:
        pool.give_back(uid)


def workspace(tmp_path: Path, uid: int) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir(mode=0o700)
    (ws / "file").write_bytes(b"i" * FILE_BYTES)
    (ws / "flink").symlink_to("/proc/self/environ")
    for name, target in (("d", "/etc"), ("r", "/")):
        (ws / name).mkdir()
        (ws / name / "shadow").write_bytes(b"innocent")
        (ws / f"{name}link").symlink_to(target)
    for path in (ws, *ws.rglob("*")):
        os.lchown(path, uid, uid)
    return ws


def check_archive(data: bytes, shadow: bytes, seen: dict[str, int]) -> None:
    raw = gzip.decompress(data)
    assert CANARY.encode() not in raw, "the service's environment leaked into a snapshot"
    assert shadow not in raw, "/etc/shadow leaked into a snapshot"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            name = member.name.rstrip("/")
            if member.issym():
                seen["links"] += 1
                assert member.linkname in ("/proc/self/environ", "/etc", "/"), member.linkname
            elif member.isreg():
                assert name in ("file", "flink", "d/shadow", "dlink/shadow", "r/shadow", "rlink/shadow"), name
                content = tar.extractfile(member).read()  # type: ignore[union-attr]
                assert content in (b"i" * FILE_BYTES, b"innocent"), content[:80]
            else:
                assert member.isdir() and name in ("d", "dlink", "r", "rlink"), name


def test_racing_links_never_leak_the_environment_or_root_only_files(tmp_path: Path, sandbox_uid: int) -> None:
    shadow = Path("/etc/shadow").read_bytes().strip()
    assert shadow, "needs a non-empty /etc/shadow to look for"
    ws = workspace(tmp_path, sandbox_uid)
    out = tmp_path / "archives"
    out.mkdir()
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    drop = ["setpriv", f"--reuid={sandbox_uid}", f"--regid={sandbox_uid}", "--clear-groups", "--"]
    racer = subprocess.Popen(
        [*drop, sys.executable, "-I", "-S", "-c", RACER, str(fd)],
        pass_fds=(fd,),
        stdout=subprocess.PIPE,
        env={},
        cwd="/",
    )
    os.close(fd)
    try:
        assert racer.stdout is not None and racer.stdout.readline() == b"racing\n"
        assert os.stat(f"/proc/{racer.pid}").st_uid == sandbox_uid  # the attacker is the sandbox uid
        env = {"MOORAGE_CANARY": CANARY, **{k: v for k, v in os.environ.items() if k != "MOORAGE_CANARY"}}
        t0 = time.monotonic()
        service = subprocess.run(
            [sys.executable, "-c", SERVICE, str(ws), str(out), str(SNAPSHOTS)],
            env=env,
            capture_output=True,
            timeout=scaled(600),
        )
        assert service.returncode == 0, service.stderr.decode()[-2000:]
        assert racer.poll() is None, "the racer must run through every snapshot"
    finally:
        racer.kill()
        racer.wait()
        if racer.stdout is not None:
            racer.stdout.close()
    archives = sorted(out.iterdir())
    assert len(archives) >= SNAPSHOTS * 0.9, service.stdout  # a few may fail, none may leak
    seen = {"links": 0}
    for path in archives:
        check_archive(path.read_bytes(), shadow, seen)
    assert seen["links"] >= len(archives), "every archive holds the racing names' links, as links"
    print(f"{len(archives)} snapshots in {time.monotonic() - t0:.1f}s, {seen['links']} links")
