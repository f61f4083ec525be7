"""A real local S3-compatible server for the tests of the object file store: moto's server
(``moto[server]``, Werkzeug on a thread), and buckets on it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from moorage_session_store import S3Blobs, parse_location
from moto.server import ThreadedMotoServer

#: The smallest multipart part S3 (and moto) accept: tests use it to make multipart uploads cheap.
TEST_PART_BYTES = 5 * 1024 * 1024
REGION = "us-east-1"
#: moto takes any credentials; the tests pass these explicitly (never the environment's).
ACCESS_KEY_ID, SECRET_ACCESS_KEY = "moorage-test", "moorage-test-secret"


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on a free loopback port, for the ``with`` block: its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def bucket_name() -> str:
    return f"moorage-{uuid.uuid4().hex[:12]}"


async def new_bucket(endpoint: str, *, prefix: str = "files", part_bytes: int = TEST_PART_BYTES) -> S3Blobs:
    """A started :class:`S3Blobs` on a new, empty bucket of the server (the caller closes it)."""
    bucket = bucket_name()
    blobs = S3Blobs(
        parse_location(f"s3://{bucket}/{prefix}"),
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        part_bytes=part_bytes,
    )
    await blobs.start()
    await blobs.client.create_bucket(Bucket=bucket)
    return blobs


async def keys(blobs: S3Blobs) -> list[str]:
    """Every key under the store's prefix."""
    return [key async for key, _ in blobs.listing()]
