"""The toolbox (sandbox/toolbox.py): its key, what makes a path usable, the lock every backend
shares, and the build files that must name it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from moorage.sandbox.base import TOOL_ENV
from moorage.sandbox.toolbox import ToolboxError, candidate, check, parse_pyvenv, problem
from moorage.sandbox.toolbox_build import TOOLBOX_LINK, rewrite_prefix, toolbox_key

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "container" / "toolbox.txt"
CFG = "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n"
ASKED_FOR = {  # issue 17: what the agent reaches for
    "numpy", "pandas", "matplotlib", "scipy", "scikit-learn", "openpyxl", "pillow", "seaborn", "sympy", "requests",
}  # fmt: skip


def pins(path: Path) -> dict[str, str]:
    """name -> version of every requirement line (names normalized as pip does)."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[\w.]+", version.strip()), f"not an exact pin: {line!r}"
            found[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return found


def test_the_key_changes_with_the_lock_the_interpreter_its_version_and_the_machine() -> None:
    base = (b"numpy==2.4.6\n", "/usr/bin/python3.11", "3.11.2", "x86_64")
    key = toolbox_key(*base)
    assert re.fullmatch(r"[0-9a-f]{16}", key) and toolbox_key(*base) == key
    assert toolbox_key(b"numpy==2.4.7\n", *base[1:]) != key
    assert toolbox_key(base[0], "/opt/py/bin/python3.11", *base[2:]) != key
    assert toolbox_key(*base[:2], "3.11.3", base[3]) != key
    assert toolbox_key(*base[:3], "aarch64") != key
    # Parts are length-prefixed: moving bytes from one part to the next is a different key.
    assert toolbox_key(b"x", "ab", "c", "d") != toolbox_key(b"x", "a", "bc", "d")


def test_pyvenv_cfg_is_read_as_key_value_lines() -> None:
    assert parse_pyvenv(CFG + "Command = /usr/bin/python3 -m venv /x = y\n") == {
        "home": "/usr/bin",
        "include-system-site-packages": "false",
        "version": "3.11.2",
        "command": "/usr/bin/python3 -m venv /x = y",
    }


@pytest.mark.parametrize(
    ("path", "cfg", "has_python", "words"),
    [
        ("relative/toolbox", CFG, True, "not an absolute path"),
        ("/", CFG, True, "under /"),
        ("/workspace/tb", CFG, True, "under /workspace"),
        ("/mnt/session/outputs/tb", CFG, True, "under /mnt/session"),
        ("/opt/moorage/venv", CFG, True, "under /opt/moorage"),
        ("/proc/self", CFG, True, "under /proc"),
        ("/srv/tb", None, True, "not a venv (no pyvenv.cfg)"),
        ("/srv/tb", "home = /home/me/.pyenv/versions/3.12.1/bin\n", True, "which sandboxes do not mount"),
        ("/srv/tb", "version = 3.11.2\n", True, "(no home)"),
        ("/srv/tb", CFG, False, "bin/python3 is missing or broken"),
    ],
)
def test_an_unusable_toolbox_path_says_why(path: str, cfg: str | None, has_python: bool, words: str) -> None:
    why = problem(Path(path), cfg, has_python, "/usr")
    assert why is not None and words in why


def test_a_venv_of_the_services_base_python_is_a_toolbox_wherever_that_python_lives() -> None:
    assert problem(Path("/root/.cache/moorage/toolbox/abc"), CFG, True, "/usr") is None
    pyenv = "home = /root/.pyenv/versions/3.11.7/bin\n"
    assert problem(Path("/srv/tb"), pyenv, True, "/root/.pyenv/versions/3.11.7") is None


def test_a_venv_built_elsewhere_is_rewritten_for_its_final_path() -> None:
    """Shebangs, activate scripts and pyvenv.cfg name the final path; binaries and files that do
    not name the build path are left alone."""
    old, new = "/c/.k.tmp", "/c/k"
    script = b"#!/c/.k.tmp/bin/python3.11\nimport pip\n"
    assert rewrite_prefix(script, old, new) == b"#!/c/k/bin/python3.11\nimport pip\n"
    assert rewrite_prefix(b'VIRTUAL_ENV="/c/.k.tmp"\nexport VIRTUAL_ENV\n', old, new) == (
        b'VIRTUAL_ENV="/c/k"\nexport VIRTUAL_ENV\n'
    )
    assert rewrite_prefix(b"#!/usr/bin/python3\n", old, new) is None
    assert rewrite_prefix(b"\x7fELF\0\0/c/.k.tmp", old, new) is None


def test_the_setting_names_a_path_none_or_the_link_make_left(tmp_path: Path) -> None:
    """``auto``: the service venv's link, if there is one (a dangling one too: ``check`` then says
    why it is unusable, rather than sandboxes quietly going without)."""
    assert candidate("", str(tmp_path)) is None
    assert candidate(" /srv/tb ", str(tmp_path)) == Path("/srv/tb")
    assert candidate("auto", str(tmp_path)) is None
    (tmp_path / TOOLBOX_LINK).symlink_to(tmp_path / "gone")
    assert candidate("auto", str(tmp_path)) == tmp_path / TOOLBOX_LINK
    with pytest.raises(ToolboxError, match="not a venv"):
        check(tmp_path / TOOLBOX_LINK, "/usr")


def test_check_resolves_a_link_to_the_toolbox_it_names(tmp_path: Path) -> None:
    """The sandbox mounts the real directory (the path its scripts name), not the link."""
    venv = tmp_path / "tb"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {Path(sys.base_prefix) / 'bin'}\n")
    (venv / "bin" / "python3").symlink_to(sys.executable)
    (tmp_path / "link").symlink_to(venv)
    assert check(tmp_path / "link", sys.base_prefix) == venv.resolve()
    (venv / "bin" / "python3").unlink()
    (venv / "bin" / "python3").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ToolboxError, match="missing or broken"):
        check(tmp_path / "link", sys.base_prefix)


def test_the_lock_pins_everything_and_agrees_with_the_constraints() -> None:
    """Exact pins only (the toolbox installs it with --no-deps; `pip check` proves it whole), the
    packages asked for, and every version it shares with constraints.txt the same (the image's
    wheelhouse resolves both at once)."""
    lock = pins(LOCK)
    assert lock.keys() >= ASKED_FOR
    constraints = pins(ROOT / "constraints.txt")
    assert {n: (v, constraints[n]) for n, v in lock.items() if n in constraints and constraints[n] != v} == {}


def test_the_image_and_the_make_target_use_the_one_lock() -> None:
    """build-images.sh hashes and installs container/toolbox.txt; make toolbox builds from it;
    the image's ENV carries TOOL_ENV; the CLI tools are on the host's and the image's lists."""
    script = (ROOT / "container" / "build-images.sh").read_text()
    assert "cat constraints.txt container/toolbox.txt" in script
    assert "-r container/toolbox.txt" in script
    makefile = (ROOT / "Makefile").read_text()
    assert "TOOLBOX_LOCK := container/toolbox.txt" in makefile
    dockerfile = (ROOT / "container" / "Dockerfile").read_text()
    assert all(f"{name}={value}" in dockerfile for name, value in TOOL_ENV.items())
    apt = re.search(r"^APT_PACKAGES := (.*)$", makefile, re.M)
    base = re.search(r"^BASE_PACKAGES=(\S*)$", script, re.M)
    assert apt is not None and base is not None
    for tool in ("git", "curl", "jq", "ripgrep"):
        assert tool in apt.group(1).split() and tool in base.group(1).split(",")
