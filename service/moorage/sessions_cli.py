"""``moorage sessions list | show | delete``: look at and delete sessions in the database.

Uses the service's own ``Settings`` like ``moorage tokens``. ``show`` prints one session's record
(state, agent, usage, storage, the last seq of its event log). ``delete`` removes a session and
everything it stored (record, transcripts, workspace) unless a running service holds its lease:
a live session is stopped by its service, so delete it there (``DELETE /v1/sessions/{id}``) or
once it is suspended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from typing import Any

from moorage_session_store import Database, MoorageStoreError, SessionEvents, SessionRecord, SessionRecords

from .settings import Settings


def add_parser(sub: Any) -> None:
    """Register ``sessions`` and its subcommands on the main parser's subparsers."""
    sessions = sub.add_parser("sessions", help="list sessions and delete them with everything they stored")
    actions = sessions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list sessions with the bytes their tenant stores")
    listing.add_argument("--tenant", default=None, help="only this tenant's sessions")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", help="one session's record: state, agent, turns, cost, tokens, storage")
    show.add_argument("id", help="the session id")
    show.add_argument("--json", action="store_true", help="one JSON object")
    delete = actions.add_parser("delete", help="delete a session: record, transcripts and workspace")
    delete.add_argument("id", help="the session id")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one ``sessions`` action; exit status 0 done, 1 not found or in use, 2 database down."""
    if not settings.database_url:
        settings.state_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives here
    try:
        return asyncio.run(_run(args, settings.database_url_or_default))
    except MoorageStoreError as exc:
        print(f"moorage sessions: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, url: str) -> int:
    db = await Database.connect(url)
    try:
        await db.migrate()
        records = SessionRecords(db)
        if args.action == "list":
            listed = await records.list(tenant=args.tenant)
            stored = {t: await records.tenant_storage_bytes(t) for t in sorted({r.tenant for r in listed})}
            rows = [
                {
                    "id": r.id,
                    "tenant": r.tenant,
                    "state": r.state,
                    "owner": r.owner,
                    "turns": r.turns,
                    "workspace_bytes": await records.workspace_bytes(r.id),
                    "created_at": _when(r.created_at),
                    "updated_at": _when(r.updated_at),
                }
                for r in listed
            ]
            _print(rows, as_json=args.json)
            for tenant, used in stored.items():
                print(f"tenant {tenant} stores {used} bytes", file=sys.stderr)
            return 0
        if args.action == "show":
            record = await records.get(args.id)
            if record is None:
                print(f"moorage sessions: no session {args.id!r}", file=sys.stderr)
                return 1
            last_seq = await SessionEvents(db).last_seq(record.id)
            shown = described(record, await records.workspace_bytes(record.id), last_seq)
            print(json.dumps(shown) if args.json else "\n".join(show_lines(shown)))
            return 0
        if await records.purge(args.id):
            print(f"deleted session {args.id} and everything it stored", file=sys.stderr)
            return 0
        record = await records.get(args.id)
        if record is None:
            print(f"moorage sessions: no session {args.id!r}", file=sys.stderr)
        else:
            print(
                f"moorage sessions: session {args.id} is live on {record.owner}: delete it through that "
                "service (DELETE /v1/sessions/ID) or once it is suspended",
                file=sys.stderr,
            )
        return 1
    finally:
        await db.close()


def described(record: SessionRecord, workspace_bytes: int, last_seq: int) -> dict[str, Any]:
    """What ``sessions show`` says of a session (its ``--json`` object)."""
    agent = None
    if record.agent_id is not None:
        agent = {"id": record.agent_id, "version": record.agent_version}
    return {
        "id": record.id,
        "tenant": record.tenant,
        "state": record.state,
        "owner": record.owner,
        "agent": agent,
        "turns": record.turns,
        "cost_usd": record.cost_usd,
        "tokens": {
            "input": record.input_tokens,
            "output": record.output_tokens,
            "cache_read": record.cache_read_tokens,
            "cache_creation": record.cache_creation_tokens,
        },
        "active_seconds": record.active_seconds,
        "created_at": _when(record.created_at),
        "updated_at": _when(record.updated_at),
        "last_active_at": _when(record.last_active_at),
        "archived_at": _when(record.archived_at),
        "workspace_bytes": workspace_bytes,
        "last_seq": last_seq,
    }


def show_lines(shown: dict[str, Any]) -> list[str]:
    """``described`` as aligned ``name  value`` lines for a person."""
    agent = shown["agent"]
    tokens = shown["tokens"]
    state = shown["state"] + (f" (on {shown['owner']})" if shown["owner"] else "")
    rows = [
        ("session", shown["id"]),
        ("tenant", shown["tenant"]),
        ("state", state + (", archived" if shown["archived_at"] else "")),
        ("agent", f"{agent['id']} version {agent['version']}" if agent else "the default agent"),
        ("turns", str(shown["turns"])),
        ("cost", f"${shown['cost_usd']:.4f}"),
        (
            "tokens",
            f"{tokens['input']} in, {tokens['output']} out, "
            f"{tokens['cache_read']} cache read, {tokens['cache_creation']} cache write",
        ),
        ("created", shown["created_at"] or "-"),
        ("updated", shown["updated_at"] or "-"),
        ("last active", shown["last_active_at"] or "-"),
        ("workspace", f"{shown['workspace_bytes']} bytes saved"),
        ("last seq", str(shown["last_seq"])),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name.ljust(width)}  {value}" for name, value in rows]


def _when(at: datetime | None) -> str | None:
    return None if at is None else at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _print(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    columns = ["id", "tenant", "state", "turns", "workspace_bytes", "updated_at"]
    table = [[c.upper() for c in columns]] + [
        [str(row[c] if row[c] is not None else "-") for c in columns] for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
