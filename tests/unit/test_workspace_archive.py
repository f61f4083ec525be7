"""The one workspace archiver (container/moorage_runner/snapshot.py): an fd-relative walk that never
follows a link, whatever a sandbox swaps in while it runs."""

from __future__ import annotations

import base64
import gzip
import io
import os
import socket
import tarfile
from pathlib import Path

import pytest
from moorage import workspace_archive
from moorage.workspaces import helper_argv, reader_uid, signature, workspace_size
from moorage_runner import snapshot

SECRET = b"root-only-secret-content"


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def contents(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar:
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
    return out


def archive_of(path: Path, max_bytes: int = 10**8) -> bytes:
    root = snapshot.open_root(str(path))
    try:
        return b"".join(snapshot.targz_stream(root, max_bytes))
    finally:
        os.close(root)


def test_the_service_runs_the_runners_archiver_byte_for_byte() -> None:
    """One implementation: the service's copy (its image carries no runner) is the runner's file."""
    assert Path(workspace_archive.__file__).read_bytes() == Path(snapshot.__file__).read_bytes()


def test_symlinks_are_stored_as_links_and_specials_skipped(tmp_path: Path) -> None:
    """A link (to a file, a dir, /etc/shadow) is a link in the archive; fifos and sockets are not archived."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    ws = tmp_path / "ws"
    (ws / "dir").mkdir(parents=True)
    (ws / "dir" / "f").write_bytes(b"data")
    (ws / "to-secret").symlink_to(secret)
    (ws / "to-dir").symlink_to(tmp_path)
    (ws / "to-shadow").symlink_to("/etc/shadow")
    os.mkfifo(ws / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(ws / "sock"))
        data = archive_of(ws)
    found = members(data)
    assert sorted(found) == ["dir", "dir/f", "to-dir", "to-secret", "to-shadow"]
    assert found["to-secret"].issym() and found["to-secret"].linkname == str(secret)
    assert found["to-dir"].issym() and found["to-shadow"].linkname == "/etc/shadow"
    assert contents(data) == {"dir/f": b"data"}
    assert SECRET not in gzip.decompress(data)


def test_the_size_cap_stops_the_walk(tmp_path: Path) -> None:
    """Past max_bytes of file data the archive is abandoned, whatever was written so far."""
    (tmp_path / "a").write_bytes(b"x" * 600)
    (tmp_path / "b").write_bytes(b"y" * 600)
    assert len(contents(archive_of(tmp_path, 1200))) == 2
    with pytest.raises(snapshot.TooLarge):
        archive_of(tmp_path, 1199)


def test_a_name_swapped_for_a_symlink_mid_walk_is_never_followed(tmp_path: Path) -> None:
    """Between the directory listing and the open, a file becomes a link to a secret and a
    directory a link to a secret's directory: each is archived as the link it now is."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_bytes(SECRET)
    ws = tmp_path / "ws"
    (ws / "b-dir").mkdir(parents=True)
    (ws / "b-dir" / "inner").write_bytes(b"inner")
    (ws / "a-first").write_bytes(b"first")
    (ws / "c-file").write_bytes(b"innocent")
    root = snapshot.open_root(str(ws))
    try:
        pieces = snapshot.tar_stream(root, 10**8)
        raw = [next(pieces)]  # a-first's header: the listing is taken, nothing else opened yet
        (ws / "b-dir" / "inner").unlink()
        (ws / "b-dir").rmdir()
        (ws / "b-dir").symlink_to(outside)
        (ws / "c-file").unlink()
        (ws / "c-file").symlink_to(outside / "shadow")
        raw += list(pieces)
    finally:
        os.close(root)
    data = b"".join(raw)
    assert SECRET not in data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        found = {m.name: m for m in tar}
    assert sorted(found) == ["a-first", "b-dir", "c-file"]
    assert found["b-dir"].issym() and found["c-file"].issym()


def test_a_file_that_changes_size_while_read_keeps_the_archive_valid(tmp_path: Path) -> None:
    """Shrunk: zero-padded to the size it had; grown: cut there. The archive stays readable."""
    (tmp_path / "shrinks").write_bytes(b"s" * 5000)
    (tmp_path / "grows").write_bytes(b"g" * 10)
    root = snapshot.open_root(str(tmp_path))
    try:
        pieces = snapshot.tar_stream(root, 10**8)
        raw = [next(pieces)]  # grows' header (sorted first), its size fixed at 10
        with open(tmp_path / "grows", "ab") as f:
            f.write(b"G" * 100)
        raw.append(next(pieces))  # grows' data
        raw.append(next(pieces))  # grows' padding
        raw.append(next(pieces))  # shrinks' header: 5000 bytes
        os.truncate(tmp_path / "shrinks", 100)
        raw += list(pieces)
    finally:
        os.close(root)
    with tarfile.open(fileobj=io.BytesIO(b"".join(raw))) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    assert got == {"grows": b"g" * 10, "shrinks": b"s" * 100 + bytes(4900)}


def test_runner_frames_stream_in_bounded_chunks_and_report_the_cap(tmp_path: Path) -> None:
    """Kubernetes' in-sandbox path: bounded base64 frames, the last marked; over the cap one ok:false frame."""
    (tmp_path / "blob").write_bytes(os.urandom(1_300_000))
    frames = list(snapshot.snapshot_frames(str(tmp_path), 10**8))
    assert [f["last"] for f in frames] == [False, False, True]
    data = b"".join(base64.b64decode(f["data"]) for f in frames)
    assert all(len(base64.b64decode(f["data"])) <= snapshot.CHUNK_BYTES for f in frames)
    assert len(contents(data)["blob"]) == 1_300_000
    refused = list(snapshot.snapshot_frames(str(tmp_path), 1000))
    assert refused[-1]["ok"] is False and "over 1000 bytes" in refused[-1]["message"]


def test_metadata_walks_never_follow_links(tmp_path: Path) -> None:
    """The service's own size and change signature count the link, not what it points at."""
    (tmp_path / "big").write_bytes(b"x" * 10_000)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f").write_bytes(b"12345")
    (ws / "to-dir").symlink_to(tmp_path)
    (ws / "to-big").symlink_to(tmp_path / "big")
    assert workspace_size(ws) == 5
    assert signature(ws)[0] == 3 and signature(ws)[1] < 10_000


def test_the_helper_drops_to_the_workspace_owner_only_as_root() -> None:
    """As root: the owner's uid, with no new privileges and no groups; a root-owned (service-written)
    workspace and a non-root service: no drop. Always -I -S, the fd and the cap as arguments."""
    assert reader_uid(200_001, euid=0) == 200_001
    assert reader_uid(0, euid=0) is None
    assert reader_uid(1000, euid=1000) is None
    argv = helper_argv("/usr/bin/python3.11", 200_001, 7, 999, "SRC")
    assert argv == [
        "setpriv",
        "--reuid=200001",
        "--regid=200001",
        "--clear-groups",
        "--no-new-privs",
        "--",
        "/usr/bin/python3.11",
        "-I",
        "-S",
        "-c",
        "SRC",
        "7",
        "999",
    ]
    assert helper_argv("/usr/bin/python3", None, 7, 999, "SRC")[:3] == ["/usr/bin/python3", "-I", "-S"]
