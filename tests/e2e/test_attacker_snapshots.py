"""Snapshots under attack, end to end: the agent starts a racer in the
background inside its sandbox (through the real CLI's Bash tool) that keeps
swapping, with renameat2(RENAME_EXCHANGE), a regular file with a link to
/proc/self/environ, a directory with a link to /etc and another with a link
to / (several of the first two). The service checkpoints the workspace after every turn
(MOORAGE_WORKSPACE_CHECKPOINT_S=0) while the racer runs.

What a checkpoint stored is what a rehydration would bring back (after a
host crash, the last checkpoint is what the session resumes from), so every
archive the service stores is read back from the database and searched for
the service's API key (in its environment) and for /etc/shadow. The session
is then suspended and rehydrated, and a probe searches the rehydrated
/workspace for both. The suspension's own snapshot is taken after the
sandbox, and so the racer, has stopped: only the checkpoints are raced, which
is why each of them is checked.

The suspension must save the workspace itself: its archive helper runs as
the sandbox's uid, so it must not start before the sweep that kills what is
left of the sandbox as that uid is over (it once did: the helper was killed
and the session came back from its last, raced, checkpoint).

Controls: the racer's own files (a canary among them) are in every stored
archive and in the rehydrated workspace, the links are stored as links, and
a canary the final probe writes is found by its search.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import secrets
import sqlite3
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attacker_probes import run_probe
from moorage.testing.scripted_model import ScriptedModelServer
from support import REAL_KEY, Client, Service, events, result_of, run_service, tool_output, wait_suspended, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sandboxes run as host uids of their own)")

TURNS = 30
CHECKPOINTED = ("workspace_checkpointed", "workspace_checkpoint_failed")
# (name, its racing link's name, the link's target): regular files raced with
# the service's environment, directories with /etc and with /. Several of each,
# so one archive gives a following archiver several chances.
PAIRS = [
    *((f"file{n}", f"flink{n}", "/proc/self/environ") for n in range(6)),
    *((f"etc{n}", f"etclink{n}", "/etc") for n in range(3)),
    ("root", "rootlink", "/"),
]
LINKS = sorted(target for _name, _link, target in PAIRS)


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(
        model.url,
        MOORAGE_WORKSPACE_CHECKPOINT_S="0",
        MOORAGE_IDLE_TIMEOUT_S="1",
        MOORAGE_LOG_LEVEL="debug",  # workspace_checkpointed is a debug event
    ) as service:
        yield service


def halves(text: str) -> list[str]:
    return [text[: len(text) // 2], text[len(text) // 2 :]]


# The racer, run in the background as the sandbox's user. It swaps the pairs as
# fast as it can, and every few hundred rounds rewrites (in place, same size) a
# tick file so the workspace keeps changing and every turn checkpoints it.
RACER = """
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
ws = os.open("/workspace", os.O_RDONLY | os.O_DIRECTORY)
tick = os.open("/workspace/tick", os.O_WRONLY | os.O_CREAT, 0o644)
pairs = [(a.encode(), b.encode()) for a, b, _target in json.loads(sys.argv[1])]
rounds = 0
while True:
    for a, b in pairs:
        if libc.renameat2(ws, a, ws, b, 2) != 0:  # RENAME_EXCHANGE
            with open("/tmp/racer.err", "w") as f:
                f.write(os.strerror(ctypes.get_errno()))
            sys.exit(1)
    rounds += 1
    if rounds % 300 == 0:
        os.pwrite(tick, b"%020d" % rounds, 0)
        with open("/tmp/racer.rounds", "w") as f:
            f.write(str(rounds))
        if os.path.exists("/tmp/racer.stop"):
            break
"""

# Lay out the workspace and start the racer in a session of its own, so it
# outlives this Bash tool call. The regular file is exactly as long as the
# service's environment and the decoy shadow files as /etc/shadow, so a root
# archiver that followed a swapped-in link would store the whole of either.
START_RACER = """
import subprocess, time
ws = "/workspace"
for name, link, target in ARGS["pairs"]:
    if target == "/proc/self/environ":
        with open(ws + "/" + name, "wb") as f:
            f.write(b"i" * ARGS["environ_bytes"])
    else:
        os.mkdir(ws + "/" + name)
        with open(ws + "/" + name + "/shadow", "wb") as f:
            f.write(b"s" * ARGS["shadow_bytes"])
    os.symlink(target, ws + "/" + link)
with open(ws + "/canary.txt", "w") as f:
    f.write("x" + "".join(ARGS["canary"]) + "x")
with open("/tmp/racer.py", "w") as f:
    f.write(ARGS["racer"])
racer = subprocess.Popen(
    [sys.executable, "/tmp/racer.py", json.dumps(ARGS["pairs"])],
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    start_new_session=True,
)
deadline = time.monotonic() + 30
while not os.path.exists("/tmp/racer.rounds") and racer.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
error = open("/tmp/racer.err").read() if os.path.exists("/tmp/racer.err") else ""
done({"pid": racer.pid, "running": racer.poll() is None and os.path.exists("/tmp/racer.rounds"), "error": error})
"""

# Search every regular file under /workspace, following nothing (directories
# entered only when they are directories, files opened O_NOFOLLOW); a canary
# written first proves the search reads what is there.
SEARCH = """
open("/tmp/racer.stop", "w").close()  # a racer still running (none should be: this is a new sandbox)
os.makedirs("/workspace/control", exist_ok=True)
with open("/workspace/control/probe-canary.txt", "w") as f:
    f.write("y" + "".join(ARGS["probe_canary"]) + "y")
needles = {name: "".join(parts).encode() for name, parts in ARGS["needles"].items()}
hits = {name: [] for name in needles}
entries = []
def walk(path):
    with os.scandir(path) as it:
        for entry in it:
            if entry.is_symlink():
                entries.append(["l", entry.path, os.readlink(entry.path)])
            elif entry.is_dir(follow_symlinks=False):
                entries.append(["d", entry.path])
                walk(entry.path)
            elif entry.is_file(follow_symlinks=False):
                entries.append(["f", entry.path])
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd, "rb") as f:
                    data = f.read()
                for name, needle in needles.items():
                    if needle in data:
                        hits[name].append(entry.path)
walk("/workspace")
done({"hits": hits, "entries": entries})
"""


def stored_archive(db: Path, session_id: str) -> tuple[int, bytes] | None:
    """(generation, tar.gz) of the session's current stored workspace, read in one transaction."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        conn.execute("BEGIN")
        row = conn.execute("SELECT generation FROM workspaces WHERE session_id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        chunks = conn.execute(
            "SELECT data FROM workspace_chunks WHERE session_id = ? AND generation = ? ORDER BY seq",
            (session_id, row[0]),
        ).fetchall()
        return int(row[0]), b"".join(bytes(c[0]) for c in chunks)
    finally:
        conn.close()


def check_archive(data: bytes, secrets_: dict[str, bytes], canary: bytes) -> list[str]:
    """Assert no secret is in the archive; the targets of the links it holds."""
    raw = gzip.decompress(data)
    for name, needle in secrets_.items():
        assert needle not in raw, f"{name} leaked into a stored workspace snapshot"
    assert canary in raw  # control: the archive carries the workspace's file contents
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return [m.linkname for m in tar if m.issym()]


def host_files(svc: Service) -> tuple[bytes, bytes]:
    """The service's environment and the host's /etc/shadow: what a following archiver would store."""
    return Path(f"/proc/{svc.proc.pid}/environ").read_bytes(), Path("/etc/shadow").read_bytes()


def checkpoints(svc: Service, session_id: str) -> int:
    return sum(len(events(svc, event, session_id)) for event in CHECKPOINTED)


async def test_racing_links_never_bring_host_secrets_into_a_stored_or_rehydrated_workspace(svc: Service) -> None:
    environ, shadow = host_files(svc)
    assert REAL_KEY.encode() in environ  # what a followed /proc/self/environ would yield
    assert shadow.startswith(b"root:"), "needs a host /etc/shadow to look for"
    # root's line and the start of the next: found on this host only.
    needles = {"api_key": REAL_KEY.encode(), "shadow": b"\n".join(shadow.split(b"\n", 2)[:2])[:60]}
    canary = "canary-" + secrets.token_hex(8)

    client = await Client.connect(svc)
    session_id = client.session_id
    started = await run_probe(
        client,
        START_RACER,
        environ_bytes=len(environ),
        shadow_bytes=len(shadow),
        canary=halves(canary),
        racer=RACER,
        pairs=PAIRS,
    )
    assert started["running"], started
    db = svc.state_dir / "moorage.db"
    generations: set[int] = set()
    links: list[str] = []

    async def next_checkpoint(after: int) -> None:
        """Wait for the checkpoint the last turn started, then check what it stored."""
        await asyncio.to_thread(
            wait_until, lambda: checkpoints(svc, session_id) > after, 30, "the turn's workspace checkpoint"
        )
        stored = await asyncio.to_thread(stored_archive, db, session_id)
        if stored is not None and stored[0] not in generations:
            generations.add(stored[0])
            links.extend(check_archive(stored[1], needles, canary.encode()))

    await next_checkpoint(0)
    for n in range(TURNS):
        before = checkpoints(svc, session_id)
        assert result_of(await client.turn(f"say turn {n}"))["result"] == f"turn {n}"
        await next_checkpoint(before)

    status = tool_output(await client.turn(f"bash cat /tmp/racer.rounds; echo; kill -0 {started['pid']} && echo alive"))
    assert "alive" in status, f"the racer must run through every checkpoint: {status}"
    saved = len(events(svc, "workspace_checkpointed", session_id))
    assert len(generations) >= TURNS * 2 // 3 and saved >= len(generations), (saved, len(generations))
    # Control: the raced names were archived, the links as links (a name caught
    # mid-swap may be left out of one archive, never followed).
    assert set(links) == set(LINKS) and len(links) >= len(generations), links

    await client.close()
    await wait_suspended(svc, session_id)
    # The suspension saved the workspace (as the sandbox's uid, after its processes were swept):
    # what comes back is that save, not the last checkpoint.
    assert events(svc, "workspace_not_saved", session_id) == []
    assert events(svc, "session_suspended", session_id)[0]["workspace_bytes"] > 0
    back = await Client.connect(svc, session_id)
    assert back.first["state"] == "rehydrated"
    probe_canary = "probe-canary-" + secrets.token_hex(8)
    found = await run_probe(
        back,
        SEARCH,
        needles={
            **{name: halves(needle.decode()) for name, needle in needles.items()},
            "canary": halves(canary),
            "probe_canary": halves(probe_canary),
        },
        probe_canary=halves(probe_canary),
    )
    await back.close()
    hits: dict[str, Any] = found["hits"]
    assert hits["api_key"] == [] and hits["shadow"] == [], json.dumps(found)[:3000]
    # Controls: the search reads what is there (the probe's own canary), and the
    # restore brought the racer's files back.
    assert hits["probe_canary"] == ["/workspace/control/probe-canary.txt"]
    assert hits["canary"] == ["/workspace/canary.txt"]
    restored_links = [entry[2] for entry in found["entries"] if entry[0] == "l"]
    assert sorted(restored_links) == LINKS, found["entries"]
    print(f"{saved} checkpoints saved, {len(generations)} stored archives checked, racer: {status.strip()}")
