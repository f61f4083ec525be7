"""Building the toolbox (``make toolbox``: ``python -m moorage.sandbox.toolbox_build build``).

What it makes and why: toolbox.py. This module needs nothing but the standard library, so the
no-op ``make`` pays on every ``make run``/``make test`` once the toolbox exists is an interpreter
start and a stat, not the service's imports.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

TOOLBOX_LINK = "moorage-toolbox"  # in the service venv: what `make toolbox` built
LOCK_COPY = "toolbox.txt"  # the lock a toolbox was built from, kept inside it
RECIPE = b"moorage-toolbox 2"  # part of every key: bump it when ``build`` changes what it makes
# Where every sandbox sees the toolbox, whatever its host path (a host path such as /root/.cache/…
# would bring its parent directories into the sandbox): its scripts and compiled files name this.
SANDBOX_PATH = "/opt/moorage/toolbox"


class BuildError(Exception):
    """A step of the build failed; the message carries its output."""


def toolbox_key(lock: bytes, base_python: str, python_version: str, machine: str) -> str:
    """What a toolbox's directory is named: a hash of everything that decides its content."""
    digest = hashlib.sha256()
    for part in (RECIPE, base_python.encode(), python_version.encode(), machine.encode(), lock):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:16]


def rewrite_prefix(data: bytes, old: str, new: str) -> bytes | None:
    """A script, activate or pyvenv.cfg file of a venv built at ``old``, for ``new``; None: not
    one to touch (a binary, or a file that does not name ``old``)."""
    if b"\0" in data or old.encode() not in data:
        return None
    return data.replace(old.encode(), new.encode())


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv[:4])} … failed:\n{(done.stdout + done.stderr).strip()[-3000:]}")


def remove_built(path: Path, ignore_errors: bool = True) -> None:
    """Remove a (possibly read-only) tree this module or packages.py was building."""
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=ignore_errors)


def readonly(root: Path) -> None:
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(top) / name
            if not p.is_symlink():
                p.chmod((p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0)) & ~0o222)


def build(lock: Path, root: Path, python: str = sys.executable) -> Path:
    """The toolbox for ``lock`` under ``root``: found, or built once (see the module docstring).
    ``python`` is an interpreter of the base Python (a venv's is fine: venv uses its base)."""
    text = lock.read_bytes()
    probe = "import platform, sys; print(sys._base_executable); print(platform.python_version())"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    base_python, version = os.path.realpath(out[0]), out[1]
    final = root.resolve() / toolbox_key(text, base_python, version, platform.machine())
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # two builds at once (CI and a developer): one builds
        if final.is_dir():
            return final
        tmp = final.with_name(f".{final.name}.tmp")
        if tmp.exists():  # an interrupted build
            remove_built(tmp, ignore_errors=False)
        print(f"building the sandbox toolbox {final} (a few minutes the first time)", file=sys.stderr)
        try:
            _run([base_python, "-m", "venv", "--prompt", "toolbox", str(tmp)])
            pip = [str(tmp / "bin" / "python3"), "-m", "pip", "-q", "--disable-pip-version-check"]
            # Every dependency is pinned in the lock: --no-deps installs exactly it, `pip check` proves it whole.
            _run([*pip, "install", "--no-deps", "--no-compile", "--only-binary=:all:", "-r", str(lock)])
            _run([*pip, "check"])
            for script in [*(tmp / "bin").iterdir(), tmp / "pyvenv.cfg"]:
                if script.is_file() and not script.is_symlink():
                    new = rewrite_prefix(script.read_bytes(), str(tmp), SANDBOX_PATH)
                    if new is not None:
                        script.write_bytes(new)
            # Compiled now (-f: pip's own too), named for where sandboxes see them (tracebacks
            # show real files): sandboxes cannot write .pyc files, and compiling pandas at every
            # import would cost seconds.
            _run([str(tmp / "bin" / "python3"), "-m", "compileall", "-q", "-f", "-j", "0",
                  "-s", str(tmp), "-p", SANDBOX_PATH, str(tmp / "lib")])  # fmt: skip
            (tmp / LOCK_COPY).write_bytes(text)
            readonly(tmp)
            tmp.rename(final)
        except BaseException:
            remove_built(tmp)
            raise
    return final


def link_to(link: Path, target: Path) -> None:
    """Point ``link`` at ``target``, replacing what was there in one rename."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.rename(link)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moorage.sandbox.toolbox_build", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build it once (quick when it exists); prints its path")
    b.add_argument("--lock", type=Path, required=True, help="the lock (container/toolbox.txt)")
    b.add_argument("--root", type=Path, required=True, help="where toolboxes live, one directory per key")
    b.add_argument("--link", type=Path, default=None, help="a symlink to point at it (the service venv's)")
    args = parser.parse_args(argv)
    try:
        path = build(args.lock, args.root)
    except BuildError as exc:
        print(f"moorage toolbox: {exc}", file=sys.stderr)
        return 1
    if args.link is not None:
        link_to(args.link, path)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
