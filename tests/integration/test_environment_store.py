"""The environments repository on SQLite and PostgreSQL: names are unique per tenant (racing creates
get one winner), updates replace the spec in place (compare-and-set: one winner), archive is
read-only, delete removes, lists page by keyset, tenants never meet."""

from __future__ import annotations

import asyncio

import pytest
from moorage_session_store import (
    Database,
    EnvironmentArchived,
    EnvironmentNameTaken,
    EnvironmentNotFound,
    Environments,
    RevisionConflict,
)


def spec(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "config": {"type": "cloud"}, **extra}


async def test_create_get_update_in_place(db: Database) -> None:
    envs = Environments(db)
    made = await envs.create("acme", spec("one"))
    assert made.id.startswith("env_") and made.archived_at is None
    got = await envs.get("acme", made.id)
    assert got is not None and got.spec == spec("one") and got.created_at == made.created_at
    changed = await envs.update("acme", made.id, 1, spec("two", description="d"))
    assert changed.spec == spec("two", description="d") and changed.updated_at >= made.updated_at
    assert changed.created_at == made.created_at and changed.revision == 2
    again = await envs.get("acme", made.id)
    assert again is not None and again.spec == changed.spec


async def test_racing_updates_from_one_read_have_exactly_one_winner(db: Database) -> None:
    envs = Environments(db)
    made = await envs.create("acme", spec("a"))
    results = await asyncio.gather(
        *(envs.update("acme", made.id, 1, spec("a", description=f"w{n}")) for n in range(4)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1 and winners[0].revision == 2
    assert all(isinstance(r, RevisionConflict) for r in results if isinstance(r, BaseException))
    current = await envs.get("acme", made.id)
    assert current is not None and current.spec == winners[0].spec


async def test_names_are_unique_per_tenant_with_one_winner_in_a_race(db: Database) -> None:
    envs = Environments(db)
    results = await asyncio.gather(*(envs.create("acme", spec("same")) for _ in range(4)), return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, EnvironmentNameTaken) for r in results if isinstance(r, BaseException))
    other = await envs.create("globex", spec("same"))  # another tenant may use the name
    assert other.id != winners[0].id
    second = await envs.create("acme", spec("second"))
    with pytest.raises(EnvironmentNameTaken):
        await envs.update("acme", second.id, 1, spec("same"))
    assert await envs.delete("acme", winners[0].id)
    await envs.create("acme", spec("same"))  # a deleted one frees its name


async def test_another_tenant_sees_nothing_and_changes_nothing(db: Database) -> None:
    envs = Environments(db)
    made = await envs.create("acme", spec("mine"))
    assert await envs.get("zeta", made.id) is None
    assert await envs.list("zeta", limit=10) == []
    with pytest.raises(EnvironmentNotFound):
        await envs.update("zeta", made.id, 1, spec("theirs"))
    assert await envs.archive("zeta", made.id) is None
    assert not await envs.delete("zeta", made.id)
    still = await envs.get("acme", made.id)
    assert still is not None and still.spec == spec("mine") and still.archived_at is None


async def test_archive_is_idempotent_and_read_only_and_delete_removes(db: Database) -> None:
    envs = Environments(db)
    made = await envs.create("acme", spec("a"))
    archived = await envs.archive("acme", made.id)
    assert archived is not None and archived.archived_at is not None
    again = await envs.archive("acme", made.id)
    assert again is not None and again.archived_at == archived.archived_at
    with pytest.raises(EnvironmentArchived):
        await envs.update("acme", made.id, 1, spec("b"))
    assert await envs.delete("acme", made.id)
    assert await envs.get("acme", made.id) is None
    assert not await envs.delete("acme", made.id)
    with pytest.raises(EnvironmentNotFound):
        await envs.update("acme", made.id, 1, spec("c"))


async def test_list_is_newest_first_paged_by_keyset_and_filtered(db: Database) -> None:
    envs = Environments(db)
    made = [await envs.create("acme", spec(f"e{n}")) for n in range(5)]
    await envs.archive("acme", made[0].id)
    seen: list[str] = []
    after = None
    while page := await envs.list("acme", limit=2, after=after):
        seen += [e.id for e in page]
        after = (page[-1].created_at, page[-1].id)
    assert seen == [e.id for e in reversed(made[1:])]  # the archived one is left out
    everything = await envs.list("acme", limit=10, include_archived=True)
    assert [e.id for e in everything] == [e.id for e in reversed(made)]
