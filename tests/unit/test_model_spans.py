"""Model request spans routed to their session's log (service/moorage/model_spans.py)."""

from __future__ import annotations

import itertools
from typing import Any

from moorage.egress import RequestObserver
from moorage.model_spans import SPAN_PREFIX, ModelSpans, end_frame, new_span_id

ZERO = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


class Log:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def emit(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


def spans() -> ModelSpans:
    counter = itertools.count(1)
    return ModelSpans(lambda: f"mreq_{next(counter)}")


def test_a_request_is_a_start_and_an_end_with_what_was_metered() -> None:
    observer: RequestObserver = (s := spans())  # the seam the proxy holds
    log = Log()
    s.register("sb-1", log.emit)
    span = observer.started("sb-1")
    assert span == "mreq_1" and log.frames == [{"type": "model_request_start", "id": "mreq_1"}]
    observer.metered(span, {"input_tokens": 11, "cache_read_input_tokens": 3, "output_tokens": 1})
    observer.metered(span, {"output_tokens": 6})
    observer.ended(span, False)
    assert log.frames[1] == {
        "type": "model_request_end",
        "id": "mreq_1",
        "usage": {**ZERO, "input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 3},
        "is_error": False,
    }
    assert s.open_spans("sb-1") == 0


def test_spans_go_to_the_session_that_owned_the_sandbox_when_the_request_arrived() -> None:
    s, a, b = spans(), Log(), Log()
    assert s.started("warm") is None  # no session owns it: nothing to tell
    s.register("sb-a", a.emit)
    s.register("sb-b", b.emit)
    first, second = s.started("sb-a"), s.started("sb-b")
    assert first is not None and second is not None
    s.ended(second, True)
    s.ended(first, False)
    assert [f["id"] for f in a.frames] == ["mreq_1", "mreq_1"] and [f["id"] for f in b.frames] == ["mreq_2"] * 2
    assert b.frames[1]["is_error"] is True and b.frames[1]["usage"] == ZERO


def test_a_session_that_ends_closes_its_open_spans_and_later_news_is_dropped() -> None:
    s, log, other = spans(), Log(), Log()
    s.register("sb", log.emit)
    s.register("sb-other", other.emit)
    draining = s.started("sb")
    elsewhere = s.started("sb-other")
    assert draining is not None and elsewhere is not None
    s.metered(draining, {"input_tokens": 100})
    s.unregister("sb")
    assert log.frames[-1] == end_frame(draining, {"input_tokens": 100}, True)
    s.metered(draining, {"output_tokens": 12})  # the drain goes on: charged, no longer logged
    s.ended(draining, False)
    assert len(log.frames) == 2
    assert s.started("sb") is None and s.open_spans("sb-other") == 1  # the other session is untouched
    s.unregister("sb")  # twice: nothing more
    assert len(log.frames) == 2


def test_span_ids_are_unguessable_and_distinct() -> None:
    ids = {new_span_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith(SPAN_PREFIX) and len(i) == len(SPAN_PREFIX) + 24 for i in ids)
