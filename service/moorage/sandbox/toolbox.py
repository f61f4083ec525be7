"""The toolbox: the Python data stack a local sandbox's ``python3`` and ``pip`` are.

Docker and Kubernetes sandboxes carry the stack in their image
(``/opt/moorage/venv``, container/build-images.sh). The local backend binds a
read-only venv built on this host from the same lock (``container/toolbox.txt``)
by ``make toolbox`` (toolbox_build.py):

- It lives at ``<root>/<key>``, the key a hash of the lock, the base
  interpreter and its version (``toolbox_build.toolbox_key``): a changed lock or Python is
  a new directory, an unchanged one is found and nothing is done.
- It is made from the base interpreter the service venv was made from (the
  sandbox mounts only ``/usr`` and that base prefix), built in a temporary
  directory, written for the path sandboxes see it at (``SANDBOX_PATH``,
  /opt/moorage/toolbox: script shebangs, pyvenv.cfg, compiled files), made
  read-only and renamed into place: a toolbox directory is complete or absent.
- ``--link`` points a symlink at it: ``make`` puts one in the service venv
  (``TOOLBOX_LINK``), where ``MOORAGE_SANDBOX_TOOLBOX=auto`` finds it.

The sandbox mounts it read-only at ``SANDBOX_PATH`` — never at its host
path, whose parents (``/root/.cache/…``) would then appear in the sandbox —
and puts its ``bin/`` first on PATH. Its scripts name that path, so they run
inside sandboxes, not on the host (nothing on the host needs them). Only
the agent's commands use it: the runner runs on the service venv's
interpreter, by its full path.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from ..errors import Code, SandboxError
from .base import SESSION_DIR
from .toolbox_build import SANDBOX_PATH, TOOLBOX_LINK

log = structlog.get_logger(__name__)

# Sandbox paths a toolbox may not sit under: what the sandbox mounts there is its own (the
# workspace, the session's files, the runner), or special.
RESERVED = ("/proc", "/dev", "/workspace", SESSION_DIR, "/opt/moorage")
__all__ = ["SANDBOX_PATH", "ToolboxError", "candidate", "check", "parse_pyvenv", "problem", "resolve"]


class ToolboxError(SandboxError):
    """A toolbox that cannot be used; the service refuses to start."""

    code = Code.SANDBOX_START_FAILED


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
