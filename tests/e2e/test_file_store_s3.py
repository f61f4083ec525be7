"""Files' bytes in an S3-compatible bucket (``MOORAGE_FILE_STORE=s3://…``), a real local server
(moto's) and the unmodified official ``anthropic`` 2.10.0 client against the service as a process:
an upload past a multipart part is stored as one object under the tenant's prefix (no chunk rows in
the database) and downloads byte-identical; deleting the file deletes its object; what an agent
writes to /mnt/session/outputs is an object too, and deleting the session deletes it (the cascade
names it in the outbox, the service drains it). Credentials come from the standard AWS variables."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator

import anthropic
import pytest
from ma_client import KEYS, TOOLSET, client, say, until
from moorage.testing.scripted_model import ScriptedModelServer
from moorage_session_store import S3Blobs, parse_location
from s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, keys, moto_s3, new_bucket
from support import Service, run_service, wait_until


class Bucket:
    """The bucket the service stores files in, seen from the test."""

    def __init__(self, endpoint: str, location: str) -> None:
        self.endpoint, self.location = endpoint, location

    def objects(self) -> list[str]:
        async def listed() -> list[str]:
            blobs = S3Blobs(
                parse_location(self.location),
                endpoint_url=self.endpoint,
                region=REGION,
                access_key_id=ACCESS_KEY_ID,
                secret_access_key=SECRET_ACCESS_KEY,
            )
            await blobs.start()
            try:
                return await keys(blobs)
            finally:
                await blobs.close()

        return asyncio.run(listed())

    def of(self, file_id: str) -> list[str]:
        return [key for key in self.objects() if key.endswith(f"/{file_id}")]


@pytest.fixture(scope="module")
def stored(model: ScriptedModelServer) -> Iterator[tuple[Service, Bucket]]:
    with moto_s3() as endpoint:

        async def made() -> str:
            blobs = await new_bucket(endpoint, prefix="moorage")
            await blobs.close()
            return f"s3://{blobs.location.bucket}/moorage"

        location = asyncio.run(made())
        with run_service(
            model.url,
            MOORAGE_API_KEYS=KEYS,
            MOORAGE_FILE_STORE=location,
            MOORAGE_S3_ENDPOINT_URL=endpoint,
            MOORAGE_S3_REGION=REGION,
            MOORAGE_FILE_STORE_DRAIN_S="0.2",
            AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,  # botocore's own chain: the standard variables
            AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        ) as service:
            yield service, Bucket(endpoint, location)


def chunk_rows(svc: Service) -> int:
    with sqlite3.connect(svc.state_dir / "moorage.db") as db:
        return int(db.execute("select count(*) from file_chunks").fetchone()[0])


def test_upload_download_delete_through_the_bucket(stored: tuple[Service, Bucket]) -> None:
    svc, bucket = stored
    files = client(svc).beta.files
    data = os.urandom(9 * 1024 * 1024 + 517)  # past one 8 MiB part: a multipart upload
    made = files.upload(file=("big.bin", data, "application/octet-stream"))
    assert made.size_bytes == len(data)
    assert bucket.of(made.id) == [f"moorage/acme/{made.id}"]  # under the tenant's prefix
    assert chunk_rows(svc) == 0  # the bytes are not in the database
    assert files.download(made.id).read() == data

    assert files.delete(made.id).id == made.id
    wait_until(lambda: bucket.of(made.id) == [], 10, "the deleted file's object to go")
    with pytest.raises(anthropic.NotFoundError):
        files.download(made.id)


def test_a_deleted_sessions_outputs_objects_go(stored: tuple[Service, Bucket]) -> None:
    svc, bucket = stored
    api = client(svc)
    agent = api.beta.agents.create(name="Outputs", model="claude-opus-5", tools=[TOOLSET])
    env = api.beta.environments.create(name=f"s3-{time.monotonic_ns()}")
    session = api.beta.sessions.create(agent=agent.id, environment_id=env.id)
    with api.beta.sessions.events.stream(session.id) as stream:
        api.beta.sessions.events.send(session.id, events=[say("bash printf 'a,b\\n' > /mnt/session/outputs/r.csv")])
        until(stream, "session.status_idle", timeout=120)
    wait_until(lambda: bool(list(api.beta.files.list(scope_id=session.id))), 10, "the output to be listed")
    (output,) = list(api.beta.files.list(scope_id=session.id))
    assert api.beta.files.download(output.id).read() == b"a,b\n"
    assert bucket.of(output.id) == [f"moorage/acme/{output.id}"]

    api.beta.sessions.delete(session.id)
    wait_until(lambda: bucket.of(output.id) == [], 10, "the deleted session's output object to go")
