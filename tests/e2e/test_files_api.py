"""The Files API driven by the official ``anthropic`` 2.10.0 client against the service as a
process: upload → list → retrieve → download byte-identical (text and a few MiB of random bytes),
delete; another tenant's file is a 404; over the size cap a 413 ``file_too_large`` (the service
still answers, nothing is kept); over the tenant's storage quota ``storage_quota_exceeded``;
``expires_in_seconds`` sets ``expires_at`` and an expired file is a 404 ``file_expired``; a
malformed form is a 400 ``invalid_request``; an upload's memory stays bounded whatever its size."""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import Iterator
from datetime import timedelta

import anthropic
import httpx2 as httpx
import pytest
from ma_client import ACME, GLOBEX, KEYS, PAGER, client, code
from moorage.testing.scripted_model import ScriptedModelServer
from support import Service, pg_available, pg_database, run_service

CAP = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(
        model.url,
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_FILE_MAX_BYTES=str(CAP),
        MOORAGE_WARM_SANDBOXES="0",
        MOORAGE_WARM_AGENTS="0",
    ) as service:
        yield service


def raw(svc: Service, token: str = ACME) -> httpx.Client:
    return httpx.Client(base_url=svc.url, headers={"authorization": f"Bearer {token}"}, timeout=60)


def assert_not_found(files: anthropic.resources.beta.Files, file_id: str) -> None:
    """Retrieve, download and delete all answer 404 ``file_not_found``."""
    for call in (files.retrieve_metadata, files.download, files.delete):
        with pytest.raises(anthropic.NotFoundError) as caught:
            call(file_id)
        assert code(caught.value) == "file_not_found"


def test_upload_list_retrieve_download_delete(svc: Service) -> None:
    files = client(svc).beta.files
    text = files.upload(file=("notes/report.md", b"# Report\n", "text/markdown"))
    assert text.id.startswith("file_") and text.type == "file"
    assert text.filename == "report.md"  # only the final path component is kept
    assert text.mime_type == "text/markdown" and text.size_bytes == 9
    assert text.downloadable is True and text.expires_at is None and text.scope is None

    data = os.urandom(3 * 1024 * 1024 + 517)  # several chunk rows, the last partial
    binary = files.upload(file=("blob.bin", io.BytesIO(data), "application/octet-stream"))
    assert binary.size_bytes == len(data)

    assert files.retrieve_metadata(text.id).to_dict() == text.to_dict()
    listed = [f.id for f in files.list()]
    assert listed[:2] == [binary.id, text.id]  # newest first
    assert [f.id for f in files.list(ids=[text.id, "file_unknown", text.id])] == [text.id]

    got = files.download(binary.id)
    assert got.read() == data
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-length"] == str(len(data))
    assert got.headers["content-disposition"] == "attachment; filename=\"blob.bin\"; filename*=UTF-8''blob.bin"
    assert got.headers["x-content-type-options"] == "nosniff"
    md = files.download(text.id)
    assert md.read() == b"# Report\n" and md.headers["content-type"] == "text/markdown"

    deleted = files.delete(text.id)
    assert deleted.id == text.id and deleted.type == "file_deleted"
    assert_not_found(files, text.id)
    assert text.id not in {f.id for f in files.list()}


def test_a_non_ascii_name_downloads_under_its_exact_name(svc: Service) -> None:
    files = client(svc).beta.files
    made = files.upload(file=('été "q".txt', b"x", "text/plain; charset=utf-8"))
    assert made.filename == 'été "q".txt' and made.mime_type == "text/plain; charset=utf-8"
    got = files.download(made.id)
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"_t_ _q_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9%20%22q%22.txt"
    )
    assert got.headers["content-type"] == "text/plain; charset=utf-8"


def test_another_tenants_file_is_not_found(svc: Service) -> None:
    mine = client(svc).beta.files.upload(file=("mine.txt", b"secret", "text/plain"))
    theirs = client(svc, GLOBEX).beta.files
    assert_not_found(theirs, mine.id)
    assert mine.id not in {f.id for f in theirs.list()}
    assert list(theirs.list(ids=[mine.id])) == []
    assert client(svc).beta.files.download(mine.id).read() == b"secret"


def test_auto_pagination_walks_every_page(svc: Service) -> None:
    files = client(svc, PAGER).beta.files
    made = [files.upload(file=(f"f{n}.txt", b"n", "text/plain")).id for n in range(5)]
    first = files.list(limit=2)
    assert len(first.data) == 2 and first.next_page and first.next_page.startswith("page_")
    assert [f.id for f in files.list(limit=2)] == list(reversed(made))


def test_over_the_size_cap_is_413_nothing_is_kept_and_the_service_answers(svc: Service) -> None:
    files = client(svc, GLOBEX).beta.files
    before = [f.id for f in files.list()]
    for size in (CAP + 1, CAP + 3 * 1024 * 1024):  # found while streaming; refused by Content-Length
        with pytest.raises(anthropic.APIStatusError) as caught:
            files.upload(file=("big.bin", b"\0" * size, "application/octet-stream"))
        assert caught.value.status_code == 413 and code(caught.value) == "file_too_large"
        assert "MOORAGE_FILE_MAX_BYTES" in caught.value.message
    assert files.upload(file=("exact.bin", b"\1" * CAP, "application/octet-stream")).size_bytes == CAP
    assert len([f.id for f in files.list()]) == len(before) + 1
    with sqlite3.connect(svc.state_dir / "moorage.db", timeout=10) as db:
        incomplete = db.execute("SELECT count(*) FROM files WHERE complete = 0").fetchone()[0]
    assert incomplete == 0


def test_expires_in_seconds_sets_expiry_and_an_expired_file_is_gone(svc: Service) -> None:
    files = client(svc).beta.files
    made = files.upload(file=("soon.txt", b"tick", "text/plain"), expires_in_seconds=3600)
    assert made.expires_at is not None
    assert abs(made.expires_at - made.created_at - timedelta(seconds=3600)) < timedelta(seconds=2)
    for bad in (10, 7_776_001):
        with pytest.raises(anthropic.BadRequestError) as caught:
            files.upload(file=("x.txt", b"x", "text/plain"), expires_in_seconds=bad)
        assert code(caught.value) == "invalid_request" and "expires_in_seconds" in caught.value.message

    with sqlite3.connect(svc.state_dir / "moorage.db", timeout=10) as db:  # its hour has passed
        db.execute("UPDATE files SET expires_at = '2001-01-01 00:00:00.000000' WHERE id = ?", (made.id,))
    for call in (lambda: files.retrieve_metadata(made.id), lambda: files.download(made.id)):
        with pytest.raises(anthropic.NotFoundError) as expired:
            call()
        assert code(expired.value) == "file_expired"
    assert made.id not in {f.id for f in files.list()}


def test_a_file_that_is_not_downloadable_keeps_its_metadata_but_not_its_bytes(svc: Service) -> None:
    """(Session outputs may be stored so; an upload never is.)"""
    files = client(svc).beta.files
    made = files.upload(file=("kept.txt", b"kept", "text/plain"))
    with sqlite3.connect(svc.state_dir / "moorage.db", timeout=10) as db:
        db.execute("UPDATE files SET downloadable = 0 WHERE id = ?", (made.id,))
    assert files.retrieve_metadata(made.id).downloadable is False
    with pytest.raises(anthropic.BadRequestError) as caught:
        files.download(made.id)
    assert code(caught.value) == "file_not_downloadable"


def test_malformed_forms_are_400_with_a_stable_code(svc: Service) -> None:
    form = "multipart/form-data; boundary=XyZ"
    cases: list[tuple[str, bytes]] = [
        ("application/json", b"{}"),  # not a form
        ("multipart/form-data", b"--XyZ--\r\n"),  # no boundary
        (form, b"garbage"),  # no part at all
        (form, b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc'),  # cut short
        (form, b'--XyZ\r\nContent-Disposition: form-data; name="other"\r\n\r\nv\r\n--XyZ--\r\n'),  # no file
        (form, b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a\x01b"\r\n\r\nabc\r\n--XyZ--\r\n'),
        (form, b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\nContent-Type: nope\r\n\r\n'),
    ]
    with raw(svc) as http:
        for content_type, body in cases:
            answer = http.post("/v1/files", content=body, headers={"content-type": content_type})
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["error"]["details"]["error_code"] == "invalid_request", body
        late = (
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nabc\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="expires_in_seconds"\r\n\r\n3600\r\n--XyZ--\r\n'
        )
        answer = http.post("/v1/files", content=late, headers={"content-type": form})
        assert answer.status_code == 400 and "before the file" in answer.json()["error"]["message"]
        ok = (
            b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nignored\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="../../etc/passwd"\r\n\r\n'
            b"root\r\n--XyZ--\r\n"
        )
        answer = http.post("/v1/files", content=ok, headers={"content-type": form})
        assert answer.status_code == 200 and answer.json()["filename"] == "passwd"
        assert answer.json()["mime_type"] == "application/octet-stream"
    with sqlite3.connect(svc.state_dir / "moorage.db", timeout=10) as db:
        assert db.execute("SELECT count(*) FROM files WHERE complete = 0").fetchone()[0] == 0


def test_list_parameters_are_checked(svc: Service) -> None:
    with raw(svc) as http:
        many = "&".join(f"ids[]=file_{n}" for n in range(101))
        for query in (many, "ids[]=file_a&page=page_x", "limit=0", "limit=1001", "page=nope"):
            answer = http.get(f"/v1/files?{query}")
            assert answer.status_code == 400, query
            assert answer.json()["error"]["details"]["error_code"] == "invalid_request"


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class Source(io.RawIOBase):
    """``size`` bytes read a block at a time: the client never holds the file either."""

    def __init__(self, size: int) -> None:
        self.block, self.left = os.urandom(1024 * 1024), size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), len(self.block), self.left)
        buffer[:n] = self.block[:n]
        self.left -= n
        return n


def round_trip(files: anthropic.resources.beta.Files, size: int) -> None:
    made = files.upload(file=("big.bin", io.BufferedReader(Source(size)), "application/octet-stream"))
    assert made.size_bytes == size
    with files.with_streaming_response.download(made.id) as answer:
        assert sum(len(piece) for piece in answer.iter_bytes()) == size


def test_upload_and_download_memory_stays_bounded(model: ScriptedModelServer) -> None:
    """A 96 MiB file in and out through the service (on PostgreSQL, which keeps no cache in the
    service's process; SQLite's page cache, bounded by ``cache_size`` per pooled connection, would
    blur the measure) grows its peak resident memory by less than a sixth of the file's size."""
    if not pg_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    mib = 1024 * 1024
    with (
        pg_database("files") as name,
        run_service(
            model.url,
            MOORAGE_API_KEYS=KEYS,
            MOORAGE_WARM_SANDBOXES="0",
            MOORAGE_WARM_AGENTS="0",
            MOORAGE_FILE_MAX_BYTES=str(256 * mib),
            MOORAGE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{name}",
        ) as service,
    ):
        files = client(service).beta.files
        round_trip(files, 2 * mib)  # first-use allocations
        before = peak_rss_kib(service.proc.pid)
        round_trip(files, 96 * mib)
        grown = peak_rss_kib(service.proc.pid) - before
        assert grown < 16 * 1024, f"peak RSS grew by {grown} KiB for a 96 MiB upload and download"


def test_storage_quota_counts_files(model: ScriptedModelServer) -> None:
    """Under a 2 MB quota: a 1.5 MB file fits, a second 1 MB one is refused while it streams
    (nothing kept), and fits again once the first is deleted."""
    with run_service(
        model.url,
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_TENANT_STORAGE_BYTES="2000000",
        MOORAGE_WARM_SANDBOXES="0",
        MOORAGE_WARM_AGENTS="0",
    ) as service:
        files = client(service).beta.files
        first = files.upload(file=("a.bin", b"a" * 1_500_000, "application/octet-stream"))
        with pytest.raises(anthropic.BadRequestError) as caught:
            files.upload(file=("b.bin", b"b" * 1_000_000, "application/octet-stream"))
        assert code(caught.value) == "storage_quota_exceeded"
        assert "MOORAGE_TENANT_STORAGE_BYTES" in caught.value.message
        assert [f.id for f in files.list()] == [first.id]
        files.delete(first.id)
        assert files.upload(file=("b.bin", b"b" * 1_000_000, "application/octet-stream")).size_bytes == 1_000_000
        other = client(service, GLOBEX).beta.files  # another tenant's quota is its own
        assert other.upload(file=("c.bin", b"c" * 1_500_000, "application/octet-stream")).size_bytes == 1_500_000
