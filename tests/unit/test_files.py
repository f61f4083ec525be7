"""The Files API's pure rules (files.py) and the streaming form reader (multipart.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from moorage.errors import Code, MoorageError
from moorage.files import (
    clean_filename,
    clean_mime_type,
    content_disposition,
    download_headers,
    expires_at,
    file_object,
    upload_limit,
)
from moorage.multipart import FormReader, MalformedForm, PartData, PartEnd, PartStart, boundary_of
from moorage_session_store import FileRecord

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def refused(call: object) -> str:
    assert callable(call)
    with pytest.raises(MoorageError) as caught:
        call()
    assert caught.value.code == Code.INVALID_REQUEST
    return caught.value.message


def test_filenames_keep_the_final_component_and_refuse_what_cannot_be_kept() -> None:
    assert clean_filename("report.md", "text/markdown") == "report.md"
    assert clean_filename("../../etc/passwd", "x/y") == "passwd"
    assert clean_filename("C:\\Users\\me\\a b.txt", "x/y") == "a b.txt"
    assert clean_filename("été ✓.txt", "x/y") == "été ✓.txt"
    assert clean_filename(None, "application/pdf") == "unnamed.pdf"
    assert clean_filename("dir/", "text/plain; charset=utf-8") == "unnamed.txt"
    assert clean_filename("..", "x/unknown") == "unnamed"
    assert "control" in refused(lambda: clean_filename("a\x00b", "x/y"))
    assert "control" in refused(lambda: clean_filename("a\nb", "x/y"))
    assert "control" in refused(lambda: clean_filename("a\x85b", "x/y"))  # C1
    assert clean_filename("é" * 127, "x/y") == "é" * 127  # 254 bytes
    assert "255" in refused(lambda: clean_filename("é" * 128, "x/y"))


def test_mime_types_are_checked_and_normalised() -> None:
    assert clean_mime_type(None) == clean_mime_type("") == "application/octet-stream"
    assert clean_mime_type("Text/Markdown") == "text/markdown"
    assert clean_mime_type("text/plain; charset=utf-8") == "text/plain; charset=utf-8"
    for bad in ("nope", "text/", "a/b c", "text/plain; x=\x7f", "a/" + "b" * 300):
        refused(lambda bad=bad: clean_mime_type(bad))


def test_expiry_is_an_integer_from_an_hour_to_ninety_days() -> None:
    assert expires_at("3600", NOW) == NOW + timedelta(hours=1)
    assert expires_at(" 7776000 ", NOW) == NOW + timedelta(days=90)
    for bad in ("3599", "7776001", "-3600", "1e4", "", "3600.0"):
        assert "expires_in_seconds" in refused(lambda bad=bad: expires_at(bad, NOW))


def test_the_upload_limit_is_the_cap_or_the_room_left_under_the_quota() -> None:
    cap = 100
    unlimited = upload_limit(cap, 0, 10**12)
    assert unlimited is not None and unlimited.max_bytes == cap and not unlimited.by_quota
    roomy = upload_limit(cap, 1000, 500)
    assert roomy is not None and roomy.max_bytes == cap and not roomy.by_quota
    tight = upload_limit(cap, 1000, 960)
    assert tight is not None and tight.max_bytes == 40 and tight.by_quota
    assert upload_limit(cap, 1000, 1000) is None and upload_limit(cap, 1000, 2000) is None
    assert tight.refusal(cap, 1000).code == Code.STORAGE_QUOTA_EXCEEDED
    assert roomy.refusal(cap, 1000).code == Code.FILE_TOO_LARGE


def test_the_file_object_and_its_download_headers() -> None:
    record = FileRecord("file_1", "acme", 'a "b".txt', "text/plain", 5, NOW, NOW + timedelta(hours=1), "s1", True)
    assert file_object(record) == {
        "type": "file",
        "id": "file_1",
        "filename": 'a "b".txt',
        "mime_type": "text/plain",
        "size_bytes": 5,
        "created_at": "2026-12-02T12:00:00Z",
        "downloadable": True,
        "expires_at": "2026-12-02T13:00:00Z",
        "scope": {"type": "session", "id": "s1"},
    }
    headers = download_headers(record)
    assert headers["content-length"] == "5" and headers["content-type"] == "text/plain"
    assert headers["content-disposition"] == "attachment; filename=\"a _b_.txt\"; filename*=UTF-8''a%20%22b%22.txt"
    assert content_disposition("€\\%;.pdf") == (
        "attachment; filename=\"___;.pdf\"; filename*=UTF-8''%E2%82%AC%5C%25%3B.pdf"
    )


FORM = (
    b"--B\r\n"
    b'Content-Disposition: form-data; name="expires_in_seconds"\r\n\r\n'
    b"3600\r\n"
    b"--B\r\n"
    b'Content-Disposition: form-data; name="file"; filename="dir/%22x%22.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
    b"\x00\r\n--B-\r\nbinary\r\n"
    b"--B--\r\n"
)


def events(reader: FormReader, data: bytes, step: int) -> list[object]:
    out: list[object] = []
    for start in range(0, len(data), step):
        out += reader.feed(data[start : start + step])
    reader.finish()
    merged: list[object] = []
    for event in out:  # data slices depend on how the bytes were cut: join them
        if isinstance(event, PartData) and merged and isinstance(merged[-1], PartData):
            merged[-1] = PartData(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, len(FORM)])
def test_the_form_reader_gives_the_same_parts_however_the_bytes_are_cut(step: int) -> None:
    assert events(FormReader(b"B", 16), FORM, step) == [
        PartStart("expires_in_seconds", None, None),
        PartData(b"3600"),
        PartEnd(),
        PartStart("file", 'dir/"x".bin', "application/octet-stream"),
        PartData(b"\x00\r\n--B-\r\nbinary"),
        PartEnd(),
    ]


def test_malformed_forms_are_refused() -> None:
    assert boundary_of("multipart/form-data; boundary=abc") == b"abc"
    for header in (None, "application/json", "multipart/form-data", "multipart/mixed; boundary=a"):
        with pytest.raises(MalformedForm):
            boundary_of(header)
    with pytest.raises(MalformedForm, match="closing boundary"):
        events(FormReader(b"B", 16), FORM[:-9], 64)
    with pytest.raises(MalformedForm, match="parts"):
        FormReader(b"B", 1).feed(FORM)
    with pytest.raises(MalformedForm, match="name"):
        FormReader(b"B", 16).feed(b"--B\r\nContent-Disposition: attachment\r\n\r\nx")
    with pytest.raises(MalformedForm, match="UTF-8"):
        FormReader(b"B", 16).feed(b'--B\r\nContent-Disposition: form-data; name="f"; filename="\xff"\r\n\r\nx')
    with pytest.raises(MalformedForm):
        FormReader(b"B", 16).feed(b"--B\r\n" + b"X-Long: " + b"a" * 10_000 + b"\r\n")
