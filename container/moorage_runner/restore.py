"""Restoring a workspace snapshot inside the sandbox.

The service streams a tar.gz (base64 chunks in ``restore`` frames) before
``start``. Extraction happens here, as the sandbox user, so whatever the
archive holds can only land inside the sandbox; members with absolute paths,
``..`` components or device nodes are skipped anyway.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile


class Restore:
    def __init__(self) -> None:
        self._buffer = io.BytesIO()

    def feed(self, chunk_b64: str) -> None:
        self._buffer.write(base64.b64decode(chunk_b64))

    def extract(self, dest: str) -> int:
        """Unpack into ``dest``; returns the number of members restored."""
        self._buffer.seek(0)
        count = 0
        with tarfile.open(fileobj=self._buffer, mode="r:gz") as tar:
            for member in tar:
                name = member.name
                if name.startswith("/") or ".." in name.split("/") or member.isdev():
                    continue
                if member.islnk() and (member.linkname.startswith("/") or ".." in member.linkname.split("/")):
                    continue
                member.uid = member.gid = os.getuid()
                tar.extract(member, dest, set_attrs=True, numeric_owner=True)
                count += 1
        self._buffer = io.BytesIO()
        return count
