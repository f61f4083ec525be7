"""Paths of files crossing the sandbox boundary, without I/O: where a session resource may be
put in the sandbox (a client's ``mount_path``) and what an output's name (the runner's, relative
to ``/mnt/session/outputs``) may be.

Both are checked as text, before anything is sent or stored: a resource lands only under
``/workspace/`` or ``/mnt/session/uploads/`` (never in ``outputs/``, never over the runner in
``/opt/moorage``, never anywhere else), and an output's name is a plain relative path that
becomes the stored file's ``filename``. Whatever the runner does with a path inside its own
sandbox stays inside it (it runs as the sandbox user); these checks keep the service's side
honest and the names clean.
"""

from __future__ import annotations

import unicodedata

SESSION_DIR = "/mnt/session"  # channel.SESSION_DIR (this module is below the channel's parser)
UPLOADS = f"{SESSION_DIR}/uploads/"
OUTPUTS = f"{SESSION_DIR}/outputs/"
WORKSPACE = "/workspace/"
#: Where a mount path may point (a prefix; the path must name something below it).
MOUNT_ROOTS = (WORKSPACE, UPLOADS)
MAX_MOUNT_PATH_CHARS = 1024
MAX_OUTPUT_NAME_CHARS = 1024
MAX_OUTPUT_DEPTH = 16  # directories below outputs/ (the runner walks no deeper)


def _controls(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def default_mount_path(file_id: str) -> str:
    return UPLOADS + file_id


def mount_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a resource's mount path, or None if it can."""
    if len(path) > MAX_MOUNT_PATH_CHARS:
        return f"mount_path is longer than {MAX_MOUNT_PATH_CHARS} characters"
    if _controls(path):
        return "mount_path holds a control character"
    if not path.startswith("/"):
        return "mount_path must be absolute"
    parts = path[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "mount_path must be normalized (no '.', '..', '//' or trailing '/')"
    if not any(path.startswith(root) for root in MOUNT_ROOTS):
        return f"mount_path must be under {WORKSPACE} or {UPLOADS}"
    return None


def output_name_problem(name: str) -> str | None:
    """Why ``name`` (from the runner) cannot be an output's name, or None if it can."""
    if not 0 < len(name) <= MAX_OUTPUT_NAME_CHARS:
        return "empty or too long"
    if _controls(name) or "\\" in name:
        return "a control character or backslash"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "not a normalized relative path"
    if len(parts) > MAX_OUTPUT_DEPTH + 1:
        return "nested too deeply"
    return None
