"""``moorage tokens create | list | revoke``: issue and manage API tokens in the database.

Uses the service's own ``Settings`` (``MOORAGE_DATABASE_URL``, else the SQLite file in
``MOORAGE_STATE_DIR``) and migrates the schema first, so it works before the service ever ran.
``create`` prints the token — the only time it exists outside the caller — alone on stdout (so
``TOKEN=$(moorage tokens create --tenant acme)`` works) and what it made on stderr; ``list`` and
``revoke`` never print a secret or a digest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime, timedelta
from typing import Any

from moorage_session_store import Database, MoorageStoreError, TokenRecord, Tokens
from moorage_session_store.columns import utcnow

from .auth import TENANT_RE
from .settings import Settings


def add_parser(sub: Any) -> None:
    """Register ``tokens`` and its subcommands on the main parser's subparsers."""
    tokens = sub.add_parser("tokens", help="issue, list and revoke API tokens (stored hashed in the database)")
    actions = tokens.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="issue a token for a tenant; it is printed once, on stdout")
    create.add_argument("--tenant", required=True, help="the tenant this token acts as")
    create.add_argument("--name", default=None, help="a note saying who or what uses it")
    create.add_argument("--expires-in-days", type=float, default=None, help="expire after this many days")
    listing = actions.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--tenant", default=None, help="only this tenant's tokens")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser("revoke", help="revoke a token by id; new connections with it get 401")
    revoke.add_argument("id", help="the token id (the part after mrg_, as `list` shows it)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one ``tokens`` action; the exit status: 0 done, 1 not found, 2 bad input or database down."""
    if args.action == "create":
        if not TENANT_RE.match(args.tenant):
            print("moorage tokens: --tenant must be 1-63 of A-Z a-z 0-9 _ . - (starting alphanumeric)", file=sys.stderr)
            return 2
        if args.expires_in_days is not None and args.expires_in_days <= 0:
            print("moorage tokens: --expires-in-days must be positive", file=sys.stderr)
            return 2
    if not settings.database_url:
        settings.state_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives here
    try:
        return asyncio.run(_run(args, settings.database_url_or_default))
    except MoorageStoreError as exc:
        print(f"moorage tokens: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, url: str) -> int:
    db = await Database.connect(url)
    try:
        await db.migrate()
        tokens = Tokens(db)
        if args.action == "create":
            expires = None if args.expires_in_days is None else utcnow() + timedelta(days=args.expires_in_days)
            record, token = await tokens.create(args.tenant, args.name, expires)
            print(token)
            until = f", expires {_when(record.expires_at)}" if record.expires_at else ""
            print(
                f"created token {record.id} for tenant {record.tenant}{until}; it is shown only this once",
                file=sys.stderr,
            )
            return 0
        if args.action == "list":
            _print_list(await tokens.list(args.tenant), as_json=args.json)
            return 0
        revoked = await tokens.revoke(args.id)
        if revoked is None:
            print(f"moorage tokens: no token {args.id!r}", file=sys.stderr)
            return 1
        print(f"revoked {revoked.id} (tenant {revoked.tenant}) at {_when(revoked.revoked_at)}", file=sys.stderr)
        return 0
    finally:
        await db.close()


def _when(at: datetime | None) -> str | None:
    return None if at is None else at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_list(records: list[TokenRecord], *, as_json: bool) -> None:
    now = utcnow()
    rows = [
        {
            "id": r.id,
            "tenant": r.tenant,
            "name": r.name,
            "state": r.state(now),
            "created_at": _when(r.created_at),
            "expires_at": _when(r.expires_at),
            "revoked_at": _when(r.revoked_at),
            "last_used_at": _when(r.last_used_at),
        }
        for r in records
    ]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    columns = ["id", "tenant", "name", "state", "created_at", "expires_at", "last_used_at"]
    table = [[c.upper() for c in columns]] + [[str(row[c] or "-") for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
