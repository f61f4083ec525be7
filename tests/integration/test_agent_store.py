"""The agents repository on SQLite and PostgreSQL: versions are immutable, updates are
compare-and-set (one winner), archive is read-only, lists page by keyset, tenants never meet."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from moorage_session_store import AgentArchived, AgentNotFound, Agents, Database, VersionConflict


def spec(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "model": {"id": "claude-opus-5"}, **extra}


async def test_create_get_update_keeps_every_version(db: Database) -> None:
    agents = Agents(db)
    made = await agents.create("acme", spec("one"))
    assert made.id.startswith("agent_") and made.version == 1 and made.archived_at is None
    second = await agents.update("acme", made.id, 1, spec("two"))
    assert second.version == 2 and second.created_at == made.created_at and second.updated_at >= made.updated_at
    current = await agents.get("acme", made.id)
    assert current is not None and current.version == 2 and current.spec == spec("two") and current.latest == 2
    first = await agents.get("acme", made.id, version=1)
    assert first is not None and first.spec == spec("one") and first.latest == 2  # never changed
    assert await agents.get("acme", made.id, version=3) is None
    versions = await agents.versions("acme", made.id, limit=10)
    assert versions is not None and [v.version for v in versions] == [2, 1]
    page = await agents.versions("acme", made.id, limit=1, before=2)
    assert page is not None and [v.version for v in page] == [1]


async def test_another_tenant_sees_nothing_and_changes_nothing(db: Database) -> None:
    agents = Agents(db)
    made = await agents.create("acme", spec("mine"))
    assert await agents.get("zeta", made.id) is None
    assert await agents.versions("zeta", made.id, limit=10) is None
    assert await agents.list("zeta", limit=10) == []
    with pytest.raises(AgentNotFound):
        await agents.update("zeta", made.id, 1, spec("theirs"))
    assert await agents.archive("zeta", made.id) is None
    still = await agents.get("acme", made.id)
    assert still is not None and still.version == 1 and still.archived_at is None


async def test_stale_base_version_conflicts(db: Database) -> None:
    agents = Agents(db)
    made = await agents.create("acme", spec("a"))
    await agents.update("acme", made.id, 1, spec("b"))
    with pytest.raises(VersionConflict):
        await agents.update("acme", made.id, 1, spec("c"))
    current = await agents.get("acme", made.id)
    assert current is not None and current.spec == spec("b")


async def test_racing_updates_from_one_version_have_exactly_one_winner(db: Database) -> None:
    agents = Agents(db)
    made = await agents.create("acme", spec("a"))
    results = await asyncio.gather(
        *(agents.update("acme", made.id, 1, spec(f"w{n}")) for n in range(4)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, VersionConflict) for r in results if isinstance(r, BaseException))
    versions = await agents.versions("acme", made.id, limit=10)
    assert versions is not None and [v.version for v in versions] == [2, 1]


async def test_archive_is_idempotent_and_read_only(db: Database) -> None:
    agents = Agents(db)
    made = await agents.create("acme", spec("a"))
    archived = await agents.archive("acme", made.id)
    assert archived is not None and archived.archived_at is not None
    again = await agents.archive("acme", made.id)
    assert again is not None and again.archived_at == archived.archived_at
    with pytest.raises(AgentArchived):
        await agents.update("acme", made.id, 1, spec("b"))


async def test_list_is_newest_first_paged_by_keyset_and_filtered(db: Database) -> None:
    agents = Agents(db)
    made = [await agents.create("acme", spec(f"a{n}")) for n in range(5)]
    await agents.archive("acme", made[0].id)
    seen: list[str] = []
    after = None
    while page := await agents.list("acme", limit=2, after=after):
        seen += [a.id for a in page]
        after = (page[-1].created_at, page[-1].id)
    assert seen == [a.id for a in reversed(made[1:])]  # the archived one is left out
    everything = await agents.list("acme", limit=10, include_archived=True)
    assert [a.id for a in everything] == [a.id for a in reversed(made)]
    since = await agents.list("acme", limit=10, created_gte=made[3].created_at)
    assert {a.id for a in since} == {made[3].id, made[4].id}
    until = await agents.list("acme", limit=10, created_lte=made[1].created_at - timedelta(microseconds=0))
    assert {a.id for a in until} == {made[1].id}
