"""Where a file's bytes live when they are not ``file_chunks`` rows: an S3-compatible bucket.

:class:`S3Blobs` keeps each file as one object, ``<prefix><tenant>/<file id>`` (the tenant
percent-encoded, so a tenant is exactly one path segment and two tenants never share a key).
Uploads stream: up to :data:`PART_BYTES` is buffered; a file that fits is one ``PutObject``, a
larger one a multipart upload of ``PART_BYTES`` parts (aborted on any error), so memory stays
bounded by one part. Downloads stream ``GetObject``'s body :data:`READ_BYTES` at a time.

The client is ``aiobotocore`` (async botocore over aiohttp), imported only when a bucket is
configured. Credentials come from the settings when given, else from botocore's own chain (the
standard ``AWS_*`` variables, the shared config files, an instance or pod role); they are never
logged. Which object to delete is decided by :class:`moorage_session_store.Files` (the outbox
and the reconciliation sweep); this module only moves bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote, unquote

__all__ = ["PART_BYTES", "READ_BYTES", "BlobLocation", "BlobMissing", "BlobStore", "S3Blobs", "parse_location"]

#: Bytes per multipart part (S3's minimum part is 5 MiB; the last may be smaller).
PART_BYTES = 8 * 1024 * 1024
#: Bytes per piece of a download.
READ_BYTES = 1024 * 1024
#: Keys per ``DeleteObjects`` request (S3's maximum).
DELETE_BATCH = 1000


class BlobMissing(Exception):
    """The object is not there (deleted, or never written)."""


class BlobStore(Protocol):
    """What :class:`~moorage_session_store.Files` needs of an object store."""

    def key(self, tenant: str, file_id: str) -> str: ...

    def file_id(self, key: str) -> str | None: ...

    async def write(self, key: str, chunks: AsyncIterable[bytes], on_part: Callable[[int], Any]) -> None: ...

    def read(self, key: str) -> AsyncIterator[bytes]: ...

    async def delete(self, keys: Sequence[str]) -> None: ...

    def listing(self) -> AsyncIterator[tuple[str, datetime]]: ...


@dataclass(frozen=True, slots=True)
class BlobLocation:
    """A bucket and the key prefix under it (``""`` or ending in ``/``)."""

    bucket: str
    prefix: str


def parse_location(url: str) -> BlobLocation:
    """``s3://bucket`` or ``s3://bucket/some/prefix`` -> its bucket and prefix; ``ValueError`` if
    it is not one."""
    scheme, sep, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not sep or not bucket or any(c in bucket for c in "?#"):
        raise ValueError(f"not an s3://bucket[/prefix] location: {url!r}")
    prefix = prefix.strip("/")
    return BlobLocation(bucket, f"{prefix}/" if prefix else "")


async def _regroup(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """``chunks`` as pieces of exactly ``size`` bytes and a last shorter one (only if there are
    bytes left over; an empty source is one empty piece)."""
    buffer = bytearray()
    sent = False
    async for piece in chunks:
        buffer += piece
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
            sent = True
    if buffer or not sent:
        yield bytes(buffer)


class S3Blobs:
    """Files' bytes in an S3-compatible bucket. :meth:`start` opens the client, :meth:`close`
    closes it; safe to share between tasks."""

    def __init__(
        self,
        location: BlobLocation,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_bytes: int = PART_BYTES,
    ) -> None:
        self.location = location
        self._config = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
        }
        self._part_bytes = part_bytes
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    def __repr__(self) -> str:  # never the credentials
        return f"S3Blobs(s3://{self.location.bucket}/{self.location.prefix})"

    async def start(self) -> None:
        from aiobotocore.config import AioConfig  # only when a bucket is configured
        from aiobotocore.session import get_session

        options = {k: v for k, v in self._config.items() if v is not None}
        # Checksums only where S3 requires them: several S3-compatible servers refuse the
        # trailing CRC32 botocore adds to every upload by default.
        config = AioConfig(request_checksum_calculation="when_required", response_checksum_validation="when_required")
        client = get_session().create_client("s3", config=config, **options)
        self._client = await self._stack.enter_async_context(client)

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Blobs.start() was not awaited")
        return self._client

    def key(self, tenant: str, file_id: str) -> str:
        return f"{self.location.prefix}{quote(tenant, safe='')}/{file_id}"

    def file_id(self, key: str) -> str | None:
        """The file id a key of ours names; ``None`` for any other key under the prefix."""
        if not key.startswith(self.location.prefix):
            return None
        tenant, sep, file_id = key[len(self.location.prefix) :].partition("/")
        if not sep or not tenant or not file_id or "/" in file_id or quote(unquote(tenant), safe="") != tenant:
            return None
        return file_id

    async def write(self, key: str, chunks: AsyncIterable[bytes], on_part: Callable[[int], Any]) -> None:
        """Store ``chunks`` as the object ``key``; ``await on_part(n)`` after each ``n`` bytes
        are stored (the caller counts them). On any error no object and no upload remain."""
        bucket, client = self.location.bucket, self.client
        parts = _regroup(chunks, self._part_bytes)
        first = await anext(parts)
        if len(first) < self._part_bytes:  # all of it: one request
            await client.put_object(Bucket=bucket, Key=key, Body=first)
            await on_part(len(first))
            return
        upload = (await client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        try:
            done: list[dict[str, Any]] = []
            part: bytes | None = first
            while part is not None:
                number = len(done) + 1
                answer = await client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=part)
                done.append({"PartNumber": number, "ETag": answer["ETag"]})
                await on_part(len(part))
                part = await anext(parts, None)
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            raise

    async def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, at most ``READ_BYTES`` at a time; :class:`BlobMissing` if absent."""
        client = self.client
        try:
            answer = await client.get_object(Bucket=self.location.bucket, Key=key)
        except client.exceptions.NoSuchKey:
            raise BlobMissing(key) from None
        async with answer["Body"] as body:
            while data := await body.read(READ_BYTES):
                yield data

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the objects (absent ones are no error)."""
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            answer = await self.client.delete_objects(
                Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if answer.get("Errors"):
                raise OSError(f"object store refused {len(answer['Errors'])} deletions")

    async def listing(self) -> AsyncIterator[tuple[str, datetime]]:
        """Every key under the prefix with its last-modified time."""
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self.location.prefix):
            for item in page.get("Contents", ()):
                yield item["Key"], item["LastModified"]
