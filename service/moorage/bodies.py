"""Checks shared by the Managed Agents request bodies (agents, environments), without I/O: each
raises :class:`BodyError` (HTTP 400, ``invalid_request``) with a message naming the field.
The limits on names, descriptions and metadata are the same for every resource."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import Code, MoorageError

MAX_NAME = 256
MAX_DESCRIPTION = 2048
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


class BodyError(MoorageError):
    """A request body the service does not accept (HTTP 400)."""

    code = Code.INVALID_REQUEST


def fail(message: str) -> BodyError:
    return BodyError(message)


def as_object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"{where} must be an object")
    return value


def as_list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(f"{where} must be an array")
    return value


def only(obj: Mapping[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise fail(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")


def text(value: object, where: str, limit: int, *, required: bool = False) -> str | None:
    if value is None or value == "":
        if required:
            raise fail(f"{where} is required and cannot be empty")
        return None
    if not isinstance(value, str):
        raise fail(f"{where} must be a string")
    if len(value) > limit:
        raise fail(f"{where} is longer than {limit} characters")
    return value


def metadata(value: object) -> dict[str, str]:
    pairs = as_object(value if value is not None else {}, "metadata")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise fail(f"metadata: more than {MAX_METADATA_PAIRS} pairs")
    for key, item in pairs.items():
        if not key or len(key) > MAX_METADATA_KEY:
            raise fail(f"metadata: keys must be 1-{MAX_METADATA_KEY} characters")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            raise fail(f"metadata[{key!r}] must be a string of at most {MAX_METADATA_VALUE} characters")
    return dict(pairs)


def patch_metadata(current: Mapping[str, str] | None, patch: object) -> dict[str, Any]:
    """``current`` with an update's ``metadata`` patch applied: a ``null`` value deletes its key."""
    changes = as_object(patch if patch is not None else {}, "metadata")
    merged: dict[str, Any] = dict(current or {})
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged
