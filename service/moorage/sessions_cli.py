"""``moorage sessions list | delete``: look at and delete sessions in the database.

Uses the service's own ``Settings`` like ``moorage tokens``. ``delete`` removes a session and
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

from moorage_session_store import Database, MoorageStoreError, SessionRecords

from .settings import Settings


def add_parser(sub: Any) -> None:
    """Register ``sessions`` and its subcommands on the main parser's subparsers."""
    sessions = sub.add_parser("sessions", help="list sessions and delete them with everything they stored")
    actions = sessions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list sessions with the bytes their tenant stores")
    listing.add_argument("--tenant", default=None, help="only this tenant's sessions")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
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
