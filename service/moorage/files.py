"""The Files API's rules (pure): what an upload's parts may say, what limit an upload streams
under, the FileMetadata object (../shared/MANAGED_AGENTS.md §8.3) and the download's headers.

Filenames: only the final path component of the part's ``filename`` is kept (``/`` and ``\\`` are
separators, so a stored name never names a directory); an absent, empty, ``.`` or ``..`` name
becomes ``unnamed`` plus the extension of its content type when one is known (what the official
client documents). A name with a control character (C0, DEL, C1) or over
:data:`MAX_FILENAME_BYTES` UTF-8 bytes is refused: it would be mangled by every shell, log or
header it later passes through, and the caller can fix it.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from moorage_session_store import FileRecord

from .errors import Code, MoorageError
from .http_api import invalid, timestamp

__all__ = [
    "EXPIRES_MAX_S",
    "EXPIRES_MIN_S",
    "MAX_FILENAME_BYTES",
    "UploadLimit",
    "clean_filename",
    "clean_mime_type",
    "content_disposition",
    "download_headers",
    "expires_at",
    "file_object",
    "quota_refusal",
    "upload_limit",
]

MAX_FILENAME_BYTES = 255
EXPIRES_MIN_S = 3600
EXPIRES_MAX_S = 7_776_000  # ninety days
DEFAULT_MIME_TYPE = "application/octet-stream"
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_MIME = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;\s*[\x20-\x7e]*)?")
_MAX_MIME_BYTES = 255


def _controls(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def clean_mime_type(raw: str | None) -> str:
    """The part's content type as it will be served back (``application/octet-stream`` if none)."""
    if raw is None or not raw:
        return DEFAULT_MIME_TYPE
    if len(raw) > _MAX_MIME_BYTES or not _MIME.fullmatch(raw):
        raise invalid("the file part's Content-Type is not a MIME type (type/subtype)")
    kind, _, params = raw.partition(";")
    return kind.strip().lower() + (";" + params if params else "")


def clean_filename(raw: str | None, mime_type: str) -> str:
    """The name a file is stored under (see the module's doc)."""
    name = re.split(r"[/\\]", raw or "")[-1]
    if name in ("", ".", ".."):
        return "unnamed" + (mimetypes.guess_extension(mime_type.partition(";")[0]) or "")
    if _controls(name):
        raise invalid("the filename has a control character")
    if len(name.encode()) > MAX_FILENAME_BYTES:
        raise invalid(f"the filename is over {MAX_FILENAME_BYTES} bytes (UTF-8)")
    return name


def expires_at(raw: str, now: datetime) -> datetime:
    """``expires_in_seconds`` (from 3600 to 7776000) from ``now``."""
    text = raw.strip()
    if not text.isdigit() or not EXPIRES_MIN_S <= int(text) <= EXPIRES_MAX_S:
        raise invalid(f"expires_in_seconds must be an integer from {EXPIRES_MIN_S} to {EXPIRES_MAX_S}")
    return now + timedelta(seconds=int(text))


@dataclass(frozen=True)
class UploadLimit:
    """How many bytes an upload may store, and whether the tenant's quota (not the file size cap)
    is what sets it."""

    max_bytes: int
    by_quota: bool

    def refusal(self, file_max: int, quota: int) -> MoorageError:
        """What an upload that went past ``max_bytes`` is told."""
        if self.by_quota:
            return MoorageError(
                f"this upload would take the tenant past its storage quota of {quota} bytes "
                "(MOORAGE_TENANT_STORAGE_BYTES): delete files or sessions to make room",
                code=Code.STORAGE_QUOTA_EXCEEDED,
            )
        return MoorageError(
            f"the file is over the largest upload this server takes: {file_max} bytes (MOORAGE_FILE_MAX_BYTES)",
            code=Code.FILE_TOO_LARGE,
        )


def upload_limit(file_max: int, quota: int, used: int) -> UploadLimit | None:
    """The limit of an upload by a tenant that stores ``used`` bytes under ``quota`` (0:
    unlimited); ``None``: the tenant is at or over its quota, nothing may be uploaded."""
    if quota <= 0:
        return UploadLimit(file_max, by_quota=False)
    room = quota - used
    if room <= 0:
        return None
    return UploadLimit(room, by_quota=True) if room < file_max else UploadLimit(file_max, by_quota=False)


def quota_refusal(quota: int, used: int) -> MoorageError:
    return MoorageError(
        f"this tenant stores {used} bytes, at or over its quota of {quota} (MOORAGE_TENANT_STORAGE_BYTES): "
        "delete files or sessions to make room",
        code=Code.STORAGE_QUOTA_EXCEEDED,
    )


def file_object(record: FileRecord) -> dict[str, Any]:
    """The FileMetadata object of §8.3."""
    scope = None if record.scope_session_id is None else {"type": "session", "id": record.scope_session_id}
    return {
        "type": "file",
        "id": record.id,
        "filename": record.filename,
        "mime_type": record.mime_type,
        "size_bytes": record.size_bytes,
        "created_at": timestamp(record.created_at),
        "downloadable": record.downloadable,
        "expires_at": None if record.expires_at is None else timestamp(record.expires_at),
        "scope": scope,
    }


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` (RFC 6266) and the exact UTF-8 name in
    ``filename*`` (RFC 5987)."""
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def download_headers(record: FileRecord) -> dict[str, str]:
    """The headers of a file's bytes: its type and size, and never rendered by a browser in the
    service's origin (an attachment, no sniffing, a sandbox with nothing allowed)."""
    return {
        "content-type": record.mime_type,
        "content-length": str(record.size_bytes),
        "content-disposition": content_disposition(record.filename),
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; sandbox",
        "cache-control": "private, no-store",
    }
