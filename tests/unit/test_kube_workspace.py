"""Unpacking a workspace fetched from a sandbox pod onto the service's host."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from moorage.sandbox.kube_sandbox import unpack_files


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


def test_files_and_directories_are_unpacked_with_safe_modes(tmp_path: Path) -> None:
    """Regular files and directories arrive with their content; setuid bits are dropped, exec bits kept."""
    data = archive(
        (entry("src", tarfile.DIRTYPE, 0o755), b""),
        (entry("src/run.sh", mode=0o4755), b"echo hi\n"),
        (entry("notes.txt"), b"n"),
    )
    assert unpack_files(data, tmp_path / "ws", 1024) == 2
    assert (tmp_path / "ws" / "src" / "run.sh").read_text() == "echo hi\n"
    assert (tmp_path / "ws" / "src" / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "ws" / "notes.txt").read_text() == "n"


def test_links_devices_and_escaping_names_are_skipped(tmp_path: Path) -> None:
    """Symlinks, hard links, devices, absolute names and '..' never reach the host."""
    outside = tmp_path / "outside"
    data = archive(
        (entry("escape", tarfile.SYMTYPE, link=str(tmp_path)), b""),
        (entry("hard", tarfile.LNKTYPE, link="/etc/passwd"), b""),
        (entry("dev", tarfile.CHRTYPE), b""),
        (entry(str(outside)), b"x"),
        (entry("../outside2"), b"x"),
        (entry("ok"), b"ok"),
    )
    assert unpack_files(data, tmp_path / "ws", 1024) == 1
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["ok"]
    assert not outside.exists() and not (tmp_path / "outside2").exists()


def test_unpacking_stops_at_the_size_limit(tmp_path: Path) -> None:
    """Past max_bytes nothing more is written."""
    data = archive((entry("a"), b"x" * 600), (entry("b"), b"y" * 600))
    assert unpack_files(data, tmp_path / "ws", 1000) == 1
    assert not (tmp_path / "ws" / "b").exists()
