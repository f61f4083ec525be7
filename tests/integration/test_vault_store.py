"""The vaults repository on SQLite and PostgreSQL: a vault holds one live credential per key (racing
creates get one winner; an archived one frees its key) and at most MAX_CREDENTIALS; an archived
vault takes none and lends none to sessions; a session's credentials come in vault_ids order;
tenants never meet; deleting a vault deletes its credentials."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from moorage_session_store import (
    MAX_CREDENTIALS,
    CredentialConflict,
    CredentialRecord,
    Database,
    VaultArchived,
    VaultFull,
    VaultNotFound,
    Vaults,
)


def draft(vault_id: str, key: str, tenant: str = "acme", kind: str = "static_bearer") -> CredentialRecord:
    now = datetime.now(UTC)
    return CredentialRecord(
        Vaults.new_credential_id(), vault_id, tenant, kind, key, {"auth": {}}, "v1.x.y", now, now, None
    )


async def test_one_live_credential_per_key_and_racing_creates_get_one_winner(db: Database) -> None:
    vaults = Vaults(db)
    vault = await vaults.create("acme", "Alice", {})
    results = await asyncio.gather(
        *(vaults.add_credential(draft(vault.id, "mcp:https://m/")) for _ in range(4)), return_exceptions=True
    )
    assert sum(isinstance(r, CredentialRecord) for r in results) == 1
    assert sum(isinstance(r, CredentialConflict) for r in results) == 3
    winner = next(r for r in results if isinstance(r, CredentialRecord))
    await vaults.archive_credential("acme", vault.id, winner.id)
    again = await vaults.add_credential(draft(vault.id, "mcp:https://m/"))  # the archived one freed its key
    assert [c.id for c in await vaults.live_credentials("acme", [vault.id])] == [again.id]
    assert len(await vaults.list_credentials("acme", vault.id, limit=10, include_archived=True)) == 2


async def test_a_vault_is_full_at_its_limit(db: Database) -> None:
    vaults = Vaults(db)
    vault = await vaults.create("acme", "Full", {})
    for n in range(MAX_CREDENTIALS):
        await vaults.add_credential(draft(vault.id, f"mcp:https://m/{n}"))
    with pytest.raises(VaultFull):
        await vaults.add_credential(draft(vault.id, "mcp:https://m/over"))


async def test_archived_and_foreign_vaults_lend_nothing_and_order_follows_vault_ids(db: Database) -> None:
    vaults = Vaults(db)
    first, second, archived = [await vaults.create("acme", n, {}) for n in ("a", "b", "c")]
    theirs = await vaults.create("globex", "theirs", {})
    b = await vaults.add_credential(draft(second.id, "mcp:https://m/"))
    a = await vaults.add_credential(draft(first.id, "mcp:https://m/"))
    await vaults.add_credential(draft(archived.id, "mcp:https://m/"))
    await vaults.add_credential(draft(theirs.id, "mcp:https://m/", tenant="globex"))
    await vaults.archive("acme", archived.id)
    ids = [first.id, second.id, archived.id, theirs.id]
    assert [c.id for c in await vaults.live_credentials("acme", ids)] == [a.id, b.id]
    assert [c.id for c in await vaults.live_credentials("acme", ids[::-1], "mcp:https://m/")] == [b.id, a.id]
    assert await vaults.live_credentials("acme", ids, "mcp:https://other/") == []
    assert await vaults.get("globex", first.id) is None and set(await vaults.get_many("acme", ids)) == set(ids[:3])
    with pytest.raises(VaultArchived):
        await vaults.add_credential(draft(archived.id, "mcp:https://n/"))
    with pytest.raises(VaultNotFound):
        await vaults.add_credential(draft(theirs.id, "mcp:https://n/"))  # acme's draft, globex's vault


async def test_updates_are_compare_and_set_and_delete_takes_the_credentials(db: Database) -> None:
    vaults = Vaults(db)
    vault = await vaults.create("acme", "v", {"k": "1"})
    made = await vaults.add_credential(draft(vault.id, "mcp:https://m/"))
    assert await vaults.any_credential()
    changed = await vaults.update_credential("acme", vault.id, made.id, made.updated_at, {"auth": {"n": 1}}, "v1.a.b")
    assert changed is not None and changed.sealed == "v1.a.b"
    stale = await vaults.update_credential("acme", vault.id, made.id, made.updated_at, {"auth": {}}, "v1.c.d")
    assert stale is None  # another writer changed it since: re-read
    renamed = await vaults.update("acme", vault.id, "w", {})
    assert (renamed.display_name, renamed.metadata) == ("w", {})
    assert await vaults.delete("acme", vault.id)
    assert await vaults.get_credential("acme", vault.id, made.id) is None and not await vaults.any_credential()
    assert not await vaults.delete("acme", vault.id)
