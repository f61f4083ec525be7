"""Taking a workspace snapshot inside the sandbox, for backends whose
workspace is not on the service's filesystem (Kubernetes: a pod's emptyDir).

The service asks with ``{"kind": "snapshot", "max_bytes": N}`` before it
stops the sandbox; the runner answers with ``snapshot`` frames carrying a
tar.gz of /workspace in base64 chunks (``last`` on the final one), or one
frame with ``ok: false`` and the reason. Symlinks are stored as links, never
followed.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
from collections.abc import Iterator
from typing import Any

CHUNK_BYTES = 512 * 1024


def _size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                try:
                    total += os.lstat(full).st_size
                except FileNotFoundError:
                    continue
    return total


def snapshot_frames(path: str, max_bytes: int) -> Iterator[dict[str, Any]]:
    size = _size(path)
    if size > max_bytes:
        yield {"kind": "snapshot", "ok": False, "message": f"the workspace holds {size} bytes, over {max_bytes}"}
        return
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for entry in sorted(os.listdir(path)):
            tar.add(os.path.join(path, entry), arcname=entry, recursive=True)
    data = buffer.getvalue()
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    for n, chunk in enumerate(chunks):
        yield {"kind": "snapshot", "ok": True, "data": base64.b64encode(chunk).decode(), "last": n == len(chunks) - 1}
