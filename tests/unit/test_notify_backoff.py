"""The notification listener's reconnect backoff (``moorage.notify.backoff_s``)."""

from __future__ import annotations

from moorage.notify import backoff_s


def test_reconnect_backoff_doubles_from_a_tenth_of_a_second_to_five() -> None:
    assert [backoff_s(n) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff_s(10_000) == 5.0
