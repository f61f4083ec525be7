"""Agents the operator marked for warm-up (``MOORAGE_WARM_AGENT_IDS``). Pure: no I/O.

An agent belongs to one tenant and is read by (tenant, id), like every agent read (agents.py in
the session store), so a mark names both: ``agent_id@tenant``; a bare ``agent_id`` is the open
tenant's (``default``: a loopback service without keys, ``make run``). The manager reads each
marked agent's current version at start and then every minute, and the warm pool pins the spec a
new session of that version would have (warm_plan: pinned specs are kept warm). ``choose`` decides
from what was read which versions to pin and what to log: a mark whose agent does not exist (or
is another tenant's) or is archived is skipped and said once, not every minute; a mark that could
not be read just now (the database down) keeps the version it had, so an outage does not let the
pool's agents go. A new version replaces the old one: the old spec is no longer pinned and goes
like any unpinned spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .auth import OPEN_TENANT, TENANT_RE

AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # new_agent_id: agent_ and 24 hex characters
Skipped = Literal["not_found", "archived"]


@dataclass(frozen=True, order=True)
class Marked:
    agent_id: str
    tenant: str

    def __str__(self) -> str:
        return f"{self.agent_id}@{self.tenant}"


def parse_marked(text: str) -> tuple[Marked, ...]:
    """``agent_id[@tenant],…`` in order, without repeats; ValueError names a bad entry."""
    marks: list[Marked] = []
    for n, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        agent_id, at, tenant = entry.partition("@")
        tenant = tenant if at else OPEN_TENANT
        if not AGENT_ID_RE.match(agent_id) or not TENANT_RE.match(tenant):
            raise ValueError(f"MOORAGE_WARM_AGENT_IDS entry {n}: expected agent_id or agent_id@tenant")
        if (mark := Marked(agent_id, tenant)) not in marks:
            marks.append(mark)
    return tuple(marks)


@dataclass(frozen=True)
class Found:
    """A marked agent's current version as the store has it."""

    version: int
    spec: dict[str, Any]
    archived: bool = False


@dataclass(frozen=True)
class Marks:
    """What the marks came to: the version of each to keep warm, and why the others are skipped
    (what the log has said already)."""

    versions: dict[Marked, Found] = field(default_factory=dict)
    skipped: dict[Marked, Skipped] = field(default_factory=dict)


def choose(
    marked: tuple[Marked, ...], read: dict[Marked, Found | None], before: Marks
) -> tuple[Marks, list[tuple[Marked, Skipped]]]:
    """The marks after a read (``read``: what the store answered for each mark it could be asked
    about; None: no such agent), and the skips to log (those not logged for that reason before)."""
    versions: dict[Marked, Found] = {}
    skipped: dict[Marked, Skipped] = {}
    for mark in marked:
        if mark not in read:  # not read this time: as it was
            if mark in before.versions:
                versions[mark] = before.versions[mark]
            if mark in before.skipped:
                skipped[mark] = before.skipped[mark]
            continue
        found = read[mark]
        if found is None:
            skipped[mark] = "not_found"
        elif found.archived:
            skipped[mark] = "archived"
        else:
            versions[mark] = found
    news = [(mark, why) for mark, why in skipped.items() if before.skipped.get(mark) != why]
    return Marks(versions, skipped), news
