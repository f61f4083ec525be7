"""Session resources, without I/O (../shared/MANAGED_AGENTS.md §5.1, §8.1): the ``resources``
of a session's create body and of ``POST /v1/sessions/{id}/resources`` parsed, and the
resource objects built from what the session's record keeps.

Only ``file`` resources exist here (a file of the Files API put into the sandbox at its
``mount_path``, default ``/mnt/session/uploads/<file_id>``, read-only). A resource is stored
in the session record's ``api`` fields (``api["resources"]``: a list of
``{"id","type","file_id","mount_path","created_at","updated_at"}``), so it lives and dies with
the session and changes under the record's compare-and-set (``SessionRecords.change_api``).
``github_repository`` and ``memory_store`` resources are refused (``not_supported``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .bodies import as_list, as_object, fail, only
from .errors import Code, MoorageError
from .session_paths import default_mount_path, mount_path_problem

Json = dict[str, Any]
ID_PREFIX = "sesrsc_"
MAX_RESOURCES = 100  # per session
MAX_FILE_ID_CHARS = 128


@dataclass(frozen=True)
class FileResource:
    file_id: str
    mount_path: str


def new_resource_id() -> str:
    return ID_PREFIX + secrets.token_hex(12)


def parse_resource(value: object, where: str) -> FileResource:
    """One resource param: ``{"type": "file", "file_id", "mount_path"?}``."""
    obj = as_object(value, where)
    kind = obj.get("type")
    if kind in ("github_repository", "memory_store"):
        raise MoorageError(f"{where}: {kind} resources are not supported by this server", code=Code.NOT_SUPPORTED)
    if kind != "file":
        raise fail(f"{where}.type must be 'file'")
    only(obj, {"type", "file_id", "mount_path"}, where)
    file_id = obj.get("file_id")
    if not isinstance(file_id, str) or not 0 < len(file_id) <= MAX_FILE_ID_CHARS or not file_id.isprintable():
        raise fail(f"{where}.file_id must be a file's id")
    path = obj.get("mount_path")
    if path is None:
        path = default_mount_path(file_id)
    if not isinstance(path, str):
        raise fail(f"{where}.mount_path must be a string")
    if (problem := mount_path_problem(path)) is not None:
        raise fail(f"{where}: {problem}")
    return FileResource(file_id, path)


def parse_resources(value: object) -> tuple[FileResource, ...]:
    """A create body's ``resources``: each checked, no two on one path, at most ``MAX_RESOURCES``."""
    items = as_list(value, "resources")
    resources = tuple(parse_resource(item, f"resources[{i}]") for i, item in enumerate(items))
    check_can_add([], resources)
    return resources


def check_can_add(existing: Sequence[Mapping[str, Any]], new: Sequence[FileResource]) -> None:
    """Refuses resources past ``MAX_RESOURCES`` or on a path another resource has."""
    if len(existing) + len(new) > MAX_RESOURCES:
        raise fail(f"resources: at most {MAX_RESOURCES} per session")
    taken = {str(item.get("mount_path")) for item in existing}
    for resource in new:
        if resource.mount_path in taken:
            raise fail(f"resources: two resources on {resource.mount_path}")
        taken.add(resource.mount_path)


def stored(resource: FileResource, now: str) -> Json:
    """What the record keeps (and the API returns) for a new resource; ``now``: a timestamp."""
    return {
        "id": new_resource_id(),
        "type": "file",
        "file_id": resource.file_id,
        "mount_path": resource.mount_path,
        "created_at": now,
        "updated_at": now,
    }


def resources_of(api: Mapping[str, Any] | None) -> list[Json]:
    """The resources a record's ``api`` fields keep (the API's objects, in order of adding)."""
    items = (api or {}).get("resources")
    return [dict(item) for item in items if isinstance(item, dict)] if isinstance(items, list) else []
