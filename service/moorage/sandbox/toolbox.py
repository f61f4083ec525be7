"""The toolbox: the Python data stack a local sandbox's ``python3`` and ``pip`` are.

Docker and Kubernetes sandboxes carry the stack in their image
(``/opt/moorage/venv``, container/build-images.sh). The local backend binds a
read-only venv built on this host from the same lock (``container/toolbox.txt``)
by ``make toolbox`` (``moorage toolbox build``):

- It lives at ``<root>/<key>``, the key a hash of the lock, the base
  interpreter and its version (``toolbox_key``): a changed lock or Python is
  a new directory, an unchanged one is found and nothing is done.
- It is made from the base interpreter the service venv was made from (the
  sandbox mounts only ``/usr`` and that base prefix), built in a temporary
  directory, written for its final path (script shebangs, compiled files),
  made read-only and renamed into place: a toolbox directory is complete or
  absent.
- ``--link`` points a symlink at it: ``make`` puts one in the service venv
  (``TOOLBOX_LINK``), where ``MOORAGE_SANDBOX_TOOLBOX=auto`` finds it.

The sandbox mounts it read-only at the same absolute path (the venv's
scripts name their interpreter by that path) and puts its ``bin/`` first on
PATH. Only the agent's commands use it: the runner runs on the service venv's
interpreter, by its full path.
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

import structlog

from ..errors import Code, SandboxError
from .base import SESSION_DIR

log = structlog.get_logger(__name__)

TOOLBOX_LINK = "moorage-toolbox"  # in the service venv: what `make toolbox` built
LOCK_COPY = "toolbox.txt"  # the lock a toolbox was built from, kept inside it
# Sandbox paths a toolbox may not sit under: what the sandbox mounts there is its own (the
# workspace, the session's files, the runner), or special.
RESERVED = ("/proc", "/dev", "/workspace", SESSION_DIR, "/opt/moorage")


class ToolboxError(SandboxError):
    """A toolbox that cannot be used or built; the service refuses to start."""

    code = Code.SANDBOX_START_FAILED


def toolbox_key(lock: bytes, base_python: str, python_version: str, machine: str) -> str:
    """What a toolbox's directory is named: a hash of everything that decides its content."""
    digest = hashlib.sha256()
    for part in (b"moorage-toolbox 1", base_python.encode(), python_version.encode(), machine.encode(), lock):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()[:16]


def parse_pyvenv(text: str) -> dict[str, str]:
    """A venv's ``pyvenv.cfg``: ``key = value`` lines."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


def problem(path: Path, pyvenv: str | None, has_python: bool, base_prefix: str) -> str | None:
    """Why ``path`` (resolved) cannot be a sandbox's toolbox, or None (pure).

    ``pyvenv`` is its pyvenv.cfg's text (None: there is none); ``has_python``
    whether its ``bin/python3`` leads to an interpreter."""
    if not path.is_absolute():
        return f"{path} is not an absolute path"
    reserved = next((r for r in RESERVED if path == Path(r) or path.is_relative_to(r)), None)
    if path == Path("/") or reserved is not None:
        return f"{path} is under {reserved or '/'}, which the sandbox mounts itself"
    if pyvenv is None:
        return f"{path} is not a venv (no pyvenv.cfg); build one with `make toolbox`"
    home = parse_pyvenv(pyvenv).get("home", "")
    if not (Path(home).is_relative_to("/usr") or Path(home).is_relative_to(base_prefix)):
        return (
            f"{path} was made from the Python in {home or '(no home)'}, which sandboxes do not mount: "
            f"build it from the service's own ({base_prefix})"
        )
    if not has_python:
        return f"{path}/bin/python3 is missing or broken"
    return None


def check(path: Path, base_prefix: str) -> Path:
    """``path`` resolved, if it is a usable toolbox (else ``ToolboxError`` saying why)."""
    resolved = path.resolve()
    cfg = resolved / "pyvenv.cfg"
    text = cfg.read_text(errors="replace") if cfg.is_file() else None
    python = resolved / "bin" / "python3"
    why = problem(resolved, text, python.exists() and os.access(python, os.X_OK), base_prefix)
    if why is not None:
        raise ToolboxError(f"MOORAGE_SANDBOX_TOOLBOX: {why}")
    return resolved


def candidate(setting: str, venv_prefix: str) -> Path | None:
    """The path ``setting`` (MOORAGE_SANDBOX_TOOLBOX) names: a path; none for ""; for ``auto`` the
    link ``make toolbox`` left in the service venv, if there is one."""
    setting = setting.strip()
    if setting == "auto":
        link = Path(venv_prefix) / TOOLBOX_LINK
        return link if link.is_symlink() or link.exists() else None
    return Path(setting) if setting else None


def resolve(setting: str, venv_prefix: str, base_prefix: str) -> Path | None:
    """The toolbox local sandboxes get (``candidate``, ``check``ed): a path that is not a usable
    toolbox raises ``ToolboxError`` (a start-up error), so sessions never find a half-mounted one;
    ``auto`` finding none logs so, and sandboxes have the host's bare Python."""
    path = candidate(setting, venv_prefix)
    if path is None:
        if setting.strip() == "auto":
            log.warning(
                "sandbox_toolbox_absent",
                detail=f"no {Path(venv_prefix) / TOOLBOX_LINK}: local sandboxes get the host's bare python3 "
                "(run `make toolbox`, or set MOORAGE_SANDBOX_TOOLBOX)",
            )
        return None
    return check(path, base_prefix)


# -- building (``moorage toolbox build``; `make toolbox` runs it) ------------------------------


def rewrite_prefix(data: bytes, old: str, new: str) -> bytes | None:
    """A script, activate or pyvenv.cfg file of a venv built at ``old``, for ``new``; None: not
    one to touch (a binary, or a file that does not name ``old``)."""
    if b"\0" in data or old.encode() not in data:
        return None
    return data.replace(old.encode(), new.encode())


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ToolboxError(f"{' '.join(argv[:4])} … failed:\n{(done.stdout + done.stderr).strip()[-3000:]}")


def _readonly(root: Path) -> None:
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
            subprocess.run(["chmod", "-R", "u+w", str(tmp)], check=False)
            shutil.rmtree(tmp)
        print(f"building the sandbox toolbox {final} (a few minutes the first time)", file=sys.stderr)
        try:
            _run([base_python, "-m", "venv", "--prompt", "toolbox", str(tmp)])
            pip = [str(tmp / "bin" / "python3"), "-m", "pip", "-q", "--disable-pip-version-check"]
            # Every dependency is pinned in the lock: --no-deps installs exactly it, `pip check` proves it whole.
            _run([*pip, "install", "--no-deps", "--no-compile", "--only-binary=:all:", "-r", str(lock)])
            _run([*pip, "check"])
            for script in [*(tmp / "bin").iterdir(), tmp / "pyvenv.cfg"]:
                if script.is_file() and not script.is_symlink():
                    new = rewrite_prefix(script.read_bytes(), str(tmp), str(final))
                    if new is not None:
                        script.write_bytes(new)
            # Compiled now (-f: pip's own too), named for the final path (tracebacks show real
            # files): sandboxes cannot write .pyc files, and compiling pandas at every import
            # would cost seconds.
            _run([str(tmp / "bin" / "python3"), "-m", "compileall", "-q", "-f", "-j", "0",
                  "-s", str(tmp), "-p", str(final), str(tmp / "lib")])  # fmt: skip
            (tmp / LOCK_COPY).write_bytes(text)
            _readonly(tmp)
            tmp.rename(final)
        except BaseException:
            subprocess.run(["chmod", "-R", "u+w", str(tmp)], check=False)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def link_to(link: Path, target: Path) -> None:
    """Point ``link`` at ``target``, replacing what was there in one rename."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.rename(link)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("toolbox", help="build the local sandboxes' toolbox venv (`make toolbox`)")
    actions = cmd.add_subparsers(dest="toolbox_command", required=True)
    b = actions.add_parser("build", help="build it once (quick when it exists); prints its path")
    b.add_argument("--lock", type=Path, required=True, help="the lock (container/toolbox.txt)")
    b.add_argument("--root", type=Path, required=True, help="where toolboxes live, one directory per key")
    b.add_argument("--link", type=Path, default=None, help="a symlink to point at it (the service venv's)")


def run(args: argparse.Namespace) -> int:
    try:
        path = build(args.lock, args.root)
    except ToolboxError as exc:
        print(f"moorage toolbox: {exc}", file=sys.stderr)
        return 1
    if args.link is not None:
        link_to(args.link, path)
    print(path)
    return 0
