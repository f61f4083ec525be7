"""The runner's side of files in and out of /mnt/session (moorage_runner/files.py), on a
temporary directory: uploads land atomically and read-only; outputs are reported once, again
only when they change, without following a symlink, capped per file and per answer."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

from moorage_runner.channel import FILE_CHUNK_BYTES
from moorage_runner.files import MAX_DEPTH, Outputs, Uploads, changed, prepare, scan


def put(uploads: Uploads, path: Path, data: bytes, last: bool = True) -> dict[str, Any] | None:
    return uploads.feed({"kind": "put_file", "path": str(path), "data": base64.b64encode(data).decode(), "last": last})


def test_an_upload_is_renamed_into_place_read_only_and_dirs_are_made(tmp_path: Path) -> None:
    uploads = Uploads()
    target = tmp_path / "a" / "b" / "data.csv"
    assert put(uploads, target, b"x,y\n", last=False) is None
    assert not target.exists(), "nothing at the target before the last chunk"
    temp = [p for p in target.parent.iterdir()]
    assert len(temp) == 1 and temp[0].name.startswith(".data.csv")
    assert put(uploads, target, b"1,2\n") == {"kind": "file_put", "path": str(target), "ok": True, "message": ""}
    assert target.read_bytes() == b"x,y\n1,2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert list(target.parent.iterdir()) == [target]
    # Put again (a rehydrated workspace holds the old copy, read-only): replaced.
    assert put(uploads, target, b"new")["ok"] is True  # type: ignore[index]
    assert target.read_bytes() == b"new"


def test_an_upload_that_cannot_be_written_is_answered_not_ok(tmp_path: Path) -> None:
    uploads = Uploads()
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").mkdir()  # a directory where the file should go
    answer = put(uploads, tmp_path / "dir" / "x", b"data")
    assert answer is not None and answer["ok"] is False and answer["message"]
    assert put(uploads, Path("relative"), b"data") == {
        "kind": "file_put",
        "path": "relative",
        "ok": False,
        "message": "ValueError: not an absolute path",
    }
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["x"], "no temporary file left"


def test_prepare_makes_uploads_and_outputs(tmp_path: Path) -> None:
    prepare(str(tmp_path))
    assert (tmp_path / "uploads").is_dir() and (tmp_path / "outputs").is_dir()
    prepare(str(tmp_path / "missing" / "deeper"))  # an old backend without /mnt/session: no error


def test_changed_is_new_or_different_size_or_mtime() -> None:
    before = {"a": (1, 10), "b": (2, 20)}
    now = {"a": (1, 10), "b": (2, 21), "c": (0, 5)}
    assert changed(before, now) == ["b", "c"]
    assert changed(now, now) == []


def test_outputs_are_reported_once_and_again_when_changed(tmp_path: Path) -> None:
    (tmp_path / "report.csv").write_bytes(b"a,b\n")
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "q1.txt").write_bytes(b"")
    outputs = Outputs(str(tmp_path))
    frames = list(outputs.frames(100, 1000))
    assert frames == [
        {"kind": "output", "name": "charts/q1.txt", "size": 0, "data": "", "last": True},
        {"kind": "output", "name": "report.csv", "size": 4, "data": base64.b64encode(b"a,b\n").decode(), "last": True},
        {"kind": "outputs_done", "count": 2},
    ]
    assert list(outputs.frames(100, 1000)) == [{"kind": "outputs_done", "count": 0}]
    (tmp_path / "report.csv").write_bytes(b"a,b\n1,2\n")
    again = list(outputs.frames(100, 1000))
    assert [f.get("name") for f in again] == ["report.csv", None] and again[0]["size"] == 8


def test_a_large_output_comes_in_chunks(tmp_path: Path) -> None:
    data = os.urandom(FILE_CHUNK_BYTES * 2 + 7)
    (tmp_path / "big.bin").write_bytes(data)
    frames = list(Outputs(str(tmp_path)).frames(len(data), len(data)))
    chunks = [f for f in frames if f["kind"] == "output"]
    assert [f["last"] for f in chunks] == [False, False, True]
    assert b"".join(base64.b64decode(f["data"]) for f in chunks) == data
    assert all(f["size"] == len(data) for f in chunks)


def test_outputs_over_the_caps_are_too_large_without_data(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 6)
    (tmp_path / "b").write_bytes(b"x" * 11)
    (tmp_path / "c").write_bytes(b"x" * 6)
    frames = list(Outputs(str(tmp_path)).frames(10, 10))
    assert frames[0]["name"] == "a" and frames[0]["last"] is True
    assert frames[1] == {"kind": "output", "name": "b", "size": 11, "too_large": True}  # over the file cap
    assert frames[2] == {"kind": "output", "name": "c", "size": 6, "too_large": True}  # over what is left
    assert frames[3] == {"kind": "outputs_done", "count": 3}


def test_symlinks_and_special_files_are_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    root = tmp_path / "outputs"
    root.mkdir()
    (root / "link").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    (root / "real.txt").write_text("ok")
    assert set(scan(str(root))) == {"real.txt"}
    frames = list(Outputs(str(root)).frames(100, 100))
    assert [f.get("name") for f in frames] == ["real.txt", None]
    # The root itself a symlink: nothing is reported.
    (tmp_path / "swapped").symlink_to(root)
    assert scan(str(tmp_path / "swapped")) == {}


def test_the_walk_is_bounded_in_depth(tmp_path: Path) -> None:
    deep = tmp_path
    for _ in range(MAX_DEPTH + 2):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    (tmp_path / "d" / "shallow").write_text("y")
    assert set(scan(str(tmp_path))) == {"d/shallow"}
