"""The list filters of ``GET /v1/sessions/{id}/events``, without I/O: ``types[]``,
``created_at[gt|gte|lt|lte]`` (compared with ``processed_at``) and ``order`` (MANAGED_AGENTS.md
§6.1), over the events ``ma_events.Projector`` made. Bad values raise ``ValueError`` with a
message that names the parameter (the endpoint turns it into a 400)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from .ma_events import MaEvent

Order = Literal["asc", "desc"]
_BOUNDS = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``created_at[gt|gte|lt|lte]``, compared with ``processed_at``."""

    gt: datetime | None = None
    gte: datetime | None = None
    lt: datetime | None = None
    lte: datetime | None = None

    def holds(self, at: datetime) -> bool:
        at = _aware(at)
        return (
            (self.gt is None or at > self.gt)
            and (self.gte is None or at >= self.gte)
            and (self.lt is None or at < self.lt)
            and (self.lte is None or at <= self.lte)
        )


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def time_range(query: Mapping[str, str]) -> TimeRange:
    """From ``created_at[gt]`` … query parameters; ``ValueError`` naming a bad one. A time
    without an offset (the client sends naive datetimes so) is UTC."""
    bounds: dict[str, datetime] = {}
    for bound in _BOUNDS:
        raw = query.get(f"created_at[{bound}]")
        if raw is None:
            continue
        try:
            bounds[bound] = _aware(datetime.fromisoformat(raw))
        except ValueError:
            raise ValueError(f"created_at[{bound}] must be an ISO 8601 time, not {raw[:40]!r}") from None
    return TimeRange(**bounds)


def order_of(raw: str | None) -> Order:
    if raw is None or raw == "asc":
        return "asc"
    if raw == "desc":
        return "desc"
    raise ValueError(f"order must be 'asc' or 'desc', not {raw[:20]!r}")


def select(
    events: Iterable[MaEvent],
    types: Sequence[str] = (),
    when: TimeRange | None = None,
    order: Order = "asc",
) -> list[MaEvent]:
    """The events of ``types`` (all if empty) within ``when``, oldest first or newest first."""
    wanted = frozenset(types)
    span = when or TimeRange()
    chosen = [e for e in events if (not wanted or e.type in wanted) and span.holds(e.at)]
    return chosen[::-1] if order == "desc" else chosen
