"""The SQLite single-replica guard's decision (``moorage.heartbeat.sqlite_refusal``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from moorage.heartbeat import sqlite_refusal

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def test_no_other_replica_no_refusal() -> None:
    assert sqlite_refusal([], NOW) is None


def test_the_refusal_names_the_most_recent_other_replica_how_long_ago_and_the_way_out() -> None:
    message = sqlite_refusal([("host-b:1234", NOW - timedelta(seconds=7.4)), ("host-c:9", NOW - timedelta(20))], NOW)
    assert message is not None
    assert message.startswith("replica host-b:1234 uses this SQLite database (seen 7s ago); SQLite serves one replica")
    assert "MOORAGE_DATABASE_URL=postgresql://" in message


def test_a_heartbeat_from_a_clock_slightly_ahead_reads_as_zero_seconds_ago() -> None:
    message = sqlite_refusal([("b", NOW + timedelta(seconds=2))], NOW)
    assert message is not None and "(seen 0s ago)" in message
