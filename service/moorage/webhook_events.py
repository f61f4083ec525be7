"""Which logged frames a webhook announces, without I/O (docs/managed-agents.md, "Webhooks").

The session's log writer hands each batch to :func:`announcements` inside the transaction that
stores the batch (``SessionEvents(db, announce=…)``), so a status change is in the webhook outbox
exactly when it is in the log. The mapping is per frame and needs no state, so any replica, any
restart and any batch split give the same events: it follows the frames the Managed Agents
projection (``ma_events.Projector``) turns into status events.

| logged frame | webhook event (``data.type``) |
|---|---|
| ``system`` ``init`` (a turn starts) | ``session.status_run_started`` |
| ``rescheduled`` (a suspended session's sandbox starts again) | ``session.status_rescheduled`` |
| ``result`` (a turn ended) | ``session.status_idled`` |
| ``permission_request``, ``custom_tool_use`` (waits for a client) | ``session.requires_action`` |
| ``error`` with ``fatal: true``, except ``service_draining`` | ``session.status_terminated`` |

A fatal error ends the session's run and its sandbox (the next message rehydrates it, announced by
``status_run_started`` again); a drain is not one (the session is suspended and goes on
elsewhere). ``session.created``, ``session.archived`` and ``session.deleted`` come from the
session record's own transactions (``SessionRecords``). The payload is thin (the hosted shape):
the event type and the session id; a receiver reads the rest through the API. The webhook
``session.status_idled`` type carries no stop reason in the official client, so none is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from moorage_session_store import Announcement

from .errors import Code
from .ma_events import Logged

#: Every webhook event type this server sends (an endpoint's ``enabled_events`` may name others:
#: they are accepted and never sent).
SESSION_EVENT_TYPES = (
    "session.created",
    "session.status_run_started",
    "session.status_rescheduled",
    "session.status_idled",
    "session.requires_action",
    "session.status_terminated",
    "session.archived",
    "session.deleted",
)


def webhook_type(kind: str, body: Mapping[str, Any]) -> str | None:
    """The webhook event type one logged frame announces, if any (the table above)."""
    match kind:
        case "system" if body.get("subtype") == "init":
            return "session.status_run_started"
        case "result":
            return "session.status_idled"
        case "rescheduled":
            return "session.status_rescheduled"
        case "permission_request" | "custom_tool_use":
            return "session.requires_action"
        case "error" if body.get("fatal") is True and body.get("code") != Code.SERVICE_DRAINING:
            return "session.status_terminated"
    return None


def announcements(session_id: str, events: Sequence[Logged]) -> list[Announcement]:
    """What a batch of ``session_id``'s log announces, in log order."""
    out = []
    for event in events:
        kind = webhook_type(event.type, event.body)
        if kind is not None:
            out.append(Announcement(kind, session_id, event.created_at))
    return out
