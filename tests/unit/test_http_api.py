"""The Managed Agents HTTP API's shared pure parts (``http_api``): cursors, timestamps, the error envelope."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from moorage.errors import Code
from moorage.http_api import ApiError, decode_page, encode_page, timestamp
from moorage.http_api import error_response as _error


def test_a_cursor_round_trips_and_is_opaque() -> None:
    key = ["2026-12-02T01:02:03.456789+00:00", "agent_abc"]
    cursor = encode_page(key)
    assert cursor.startswith("page_") and "agent_abc" not in cursor
    assert decode_page(cursor) == key
    assert decode_page(encode_page([7])) == [7]
    assert decode_page(None) is None and decode_page("") is None


@pytest.mark.parametrize("raw", ["nope", "page_", "page_!!!", "page_" + "A" * 600, "page_eyJhIjoxfQ"])
def test_a_cursor_we_did_not_give_out_is_invalid_request(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_page(raw)
    assert caught.value.code is Code.INVALID_REQUEST


def test_timestamps_are_utc_with_z() -> None:
    moment = datetime(2026, 12, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert timestamp(moment) == "2026-12-02T01:04:05Z"
    assert timestamp(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00Z"


def test_the_error_envelope_carries_the_code_type_and_request_id() -> None:
    response = _error("req_1", Code.VERSION_CONFLICT, "stale", {"x-should-retry": "false"})
    assert response.status_code == 409
    assert response.headers["request-id"] == "req_1" and response.headers["x-should-retry"] == "false"
    assert json.loads(bytes(response.body)) == {
        "type": "error",
        "error": {"type": "conflict_error", "message": "stale", "details": {"error_code": "version_conflict"}},
        "request_id": "req_1",
    }
    assert _error("r", Code.AGENT_NOT_FOUND, "m").status_code == 404
    assert _error("r", Code.REQUEST_TOO_LARGE, "m").status_code == 413
