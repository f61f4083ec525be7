"""Building a toolbox for real (toolbox_build.py), from a lock with nothing in it: no network,
but the whole recipe: a venv of the base Python with its pip, built aside and renamed into place,
written for its final path, read-only, found again without a rebuild, linked."""

from __future__ import annotations

import marshal
import os
import stat
import subprocess
import sys
from pathlib import Path

from moorage.sandbox.toolbox import check
from moorage.sandbox.toolbox_build import LOCK_COPY, SANDBOX_PATH, build, link_to


def test_a_toolbox_is_built_once_for_its_final_path_and_read_only(tmp_path: Path) -> None:
    lock = tmp_path / "toolbox.txt"
    lock.write_text("# nothing pinned: the recipe without the network\n")
    root = tmp_path / "toolboxes"
    try:
        built(lock, root, tmp_path)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)  # so tmp_path can be removed


def built(lock: Path, root: Path, tmp_path: Path) -> None:
    path = build(lock, root)
    assert path.parent == root.resolve() and [p.name for p in root.iterdir() if p.name != ".lock"] == [path.name]
    assert (path / LOCK_COPY).read_text() == lock.read_text()

    # Nothing names the directory it was built in, nor its host path: scripts, pyvenv.cfg and
    # compiled files name where sandboxes see it (SANDBOX_PATH).
    pip = path / "bin" / "pip"
    assert pip.read_text().startswith(f"#!{SANDBOX_PATH}/bin/python")
    assert ".tmp" not in (path / "pyvenv.cfg").read_text() and str(path) not in (path / "pyvenv.cfg").read_text()
    compiled = next((path / "lib").rglob("pip/__pycache__/__init__.*.pyc"))
    assert marshal.loads(compiled.read_bytes()[16:]).co_filename.startswith(f"{SANDBOX_PATH}/")
    # Its interpreter runs from wherever it is (a venv finds itself by its pyvenv.cfg).
    out = subprocess.run([str(path / "bin" / "python3"), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    assert out.strip() == str(path)

    # Read-only, for everyone; readable and walkable by everyone (a sandbox's own uid).
    for top, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            p = Path(top) / name
            if not p.is_symlink():
                mode = stat.S_IMODE(p.stat().st_mode)
                assert mode & 0o222 == 0 and mode & 0o444 == 0o444, (p, oct(mode))

    # Found again, not rebuilt; usable as the service would check it; linked in one rename.
    before = path.stat().st_mtime_ns
    assert build(lock, root) == path and path.stat().st_mtime_ns == before
    assert check(path, sys.base_prefix) == path
    link = tmp_path / "venv-link"
    link_to(link, path)
    link_to(link, path)
    assert link.resolve() == path and check(link, sys.base_prefix) == path

    # Another lock is another toolbox beside it.
    lock.write_text("# still nothing, but other bytes\n")
    assert build(lock, root) != path
