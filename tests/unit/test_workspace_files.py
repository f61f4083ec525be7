"""Workspace files over HTTP, the deciding parts without I/O (workspace_files.py): which requested
paths can name a file, what a list says of each archive member, and reading one member of a
tar.gz like the ones the workspace archive helper writes."""

from __future__ import annotations

import io
import tarfile

import pytest
from moorage import workspace_files
from moorage.workspace_files import clean_path, listing, member_bytes


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("out/report.csv", "out/report.csv"),
        ("/workspace/out/report.csv", "out/report.csv"),
        ("/notes.txt", "notes.txt"),
        ("../etc/passwd", None),
        ("out/../../x", None),
        ("out//x", None),
        ("./x", None),
        ("", None),
        ("a\0b", None),
        ("x" * 5000, None),
    ],
)
def test_only_a_plain_relative_path_names_a_file(raw: str, want: str | None) -> None:
    assert clean_path(raw) == want


def archive(*members: tuple[str, bytes | str | None]) -> io.BytesIO:
    """A tar.gz: (name, bytes) a file, (name/, None) a directory, (name, "->target") a symlink."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_764_770_000
            if isinstance(data, bytes):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("->")
                tar.addfile(info)
            else:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
    out.seek(0)
    return out


def test_a_list_names_files_directories_and_symlinks_as_what_they_are() -> None:
    entries, truncated = listing(archive(("out/", None), ("out/r.csv", b"a,b\n"), ("leak", "->/etc/shadow")))
    assert not truncated
    assert [e.wire() for e in entries] == [
        {"path": "out", "type": "directory", "size": 0, "modified_at": "2025-12-03T13:53:20Z"},
        {"path": "out/r.csv", "type": "file", "size": 4, "modified_at": "2025-12-03T13:53:20Z"},
        {"path": "leak", "type": "symlink", "size": 0, "modified_at": "2025-12-03T13:53:20Z", "target": "/etc/shadow"},
    ]


def test_a_long_list_says_it_was_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workspace_files, "MAX_LISTED", 2)
    entries, truncated = listing(archive(("a", b"1"), ("b", b"2"), ("c", b"3")))
    assert [e.path for e in entries] == ["a", "b"] and truncated


def test_only_a_regular_file_is_read_and_a_symlink_never_followed() -> None:
    big = bytes(range(256)) * 4096  # more than one read
    members = (("out/", None), ("out/big.bin", big), ("leak", "->/etc/shadow"))
    assert b"".join(member_bytes(archive(*members), "out/big.bin")) == big
    for missing in ("leak", "out", "nope"):
        with pytest.raises(KeyError):
            b"".join(member_bytes(archive(*members), missing))
