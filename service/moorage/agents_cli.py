"""``moorage agents list | create``: the stored, versioned agents of ``POST /v1/agents``, from the shell.

Uses the service's own ``Settings`` like ``moorage tokens``. ``create`` builds the spec with the
API's own rules (``agents.create_spec``: the same defaults, limits and refusals) and stores it
with the API's repository, so an agent made here is the agent ``POST /v1/agents`` would have
made; it prints the new id alone on stdout (``AGENT=$(moorage agents create …)``). Agents belong
to a tenant: ``--tenant`` (default ``default``, the tenant of a loopback service without tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from moorage_session_store import AgentRecord, Agents, Database, MoorageStoreError

from .agents import AgentError, create_spec
from .agents_api import to_object
from .auth import OPEN_TENANT, TENANT_RE
from .settings import Settings

PAGE = 100


def add_parser(sub: Any) -> None:
    """Register ``agents`` and its subcommands on the main parser's subparsers."""
    agents = sub.add_parser("agents", help="list and create stored agents (as POST /v1/agents makes them)")
    actions = agents.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="a tenant's agents, newest first (current versions)")
    listing.add_argument("--tenant", default=OPEN_TENANT, help=f"whose agents (default {OPEN_TENANT})")
    listing.add_argument("--archived", action="store_true", help="archived agents too")
    listing.add_argument("--json", action="store_true", help="one agent object per line, as GET /v1/agents")
    create = actions.add_parser("create", help="a new agent at version 1; prints its id")
    create.add_argument("--name", required=True, help="the agent's name")
    create.add_argument("--model", required=True, help="the model id, e.g. claude-opus-4-5")
    create.add_argument("--system", default=None, help="the system prompt")
    create.add_argument("--tenant", default=OPEN_TENANT, help=f"whose agent (default {OPEN_TENANT})")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one ``agents`` action; exit status 0 done, 2 bad input or database down."""
    if not TENANT_RE.match(args.tenant):
        print("moorage agents: --tenant must be 1-63 of A-Z a-z 0-9 _ . - (starting alphanumeric)", file=sys.stderr)
        return 2
    spec: dict[str, Any] | None = None
    if args.action == "create":
        body: dict[str, Any] = {"name": args.name, "model": args.model}
        if args.system is not None:
            body["system"] = args.system
        try:
            spec = create_spec(body)
        except AgentError as exc:
            print(f"moorage agents: {exc.message}", file=sys.stderr)
            return 2
    if not settings.database_url:
        settings.state_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives here
    try:
        return asyncio.run(_run(args, settings.database_url_or_default, spec))
    except MoorageStoreError as exc:
        print(f"moorage agents: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, url: str, spec: dict[str, Any] | None) -> int:
    db = await Database.connect(url)
    try:
        await db.migrate()
        agents = Agents(db)
        if spec is not None:
            record = await agents.create(args.tenant, spec)
            print(record.id)
            print(f"created agent {record.id} (version 1) for tenant {record.tenant}", file=sys.stderr)
            return 0
        listed = await _all(agents, args.tenant, args.archived)
        if args.json:
            for record in listed:
                print(json.dumps(to_object(record)))
        else:
            print("\n".join(table(listed)))
        return 0
    finally:
        await db.close()


async def _all(agents: Agents, tenant: str, archived: bool) -> list[AgentRecord]:
    found: list[AgentRecord] = []
    while True:
        after = (found[-1].created_at, found[-1].id) if found else None
        page = await agents.list(tenant, limit=PAGE, after=after, include_archived=archived)
        found += page
        if len(page) < PAGE:
            return found


def table(records: list[AgentRecord]) -> list[str]:
    """Aligned lines: a header, then one agent per line."""
    rows = [["ID", "VERSION", "NAME", "MODEL", "CREATED_AT", "ARCHIVED_AT"]]
    for r in records:
        model = r.spec.get("model")
        rows.append(
            [
                r.id,
                str(r.version),
                str(r.spec.get("name") or "-"),
                str(model.get("id") if isinstance(model, dict) else model or "-"),
                r.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                r.archived_at.strftime("%Y-%m-%dT%H:%M:%SZ") if r.archived_at else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
