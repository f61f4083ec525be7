"""What a replica decides about a request for a session another replica runs (``commands.py``):
whether someone else runs it, and what the sender does next while it waits for the owner."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from moorage.commands import CLAIM_WAIT_S, Step, decide, error_result, owned_elsewhere, refusal
from moorage.errors import Code
from moorage.http_api import ApiError
from moorage_session_store import SessionRecord
from moorage_session_store.commands import Command

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
RECORD = SessionRecord(
    id="s1",
    tenant="t",
    state="active",
    created_at=NOW,
    updated_at=NOW,
    last_active_at=NOW,
    turns=1,
    cost_usd=0.0,
    options={},
    sandbox=None,
    owner="replica-a",
    lease_expires_at=NOW + timedelta(seconds=20),
)
SENT = Command(1, "s1", "t", {"events": []}, "replica-b", NOW, None, None, None)
CLAIMED = replace(SENT, claimed_by="replica-a")
DONE = replace(CLAIMED, done_at=NOW, result={"data": []})
DEADLINE = 70.0


def test_a_session_runs_elsewhere_only_while_another_replica_holds_an_unexpired_lease() -> None:
    assert owned_elsewhere(RECORD, "replica-b", NOW)
    assert not owned_elsewhere(RECORD, "replica-a", NOW)  # ours
    assert not owned_elsewhere(replace(RECORD, owner=None, lease_expires_at=None), "replica-b", NOW)
    assert not owned_elsewhere(RECORD, "replica-b", NOW + timedelta(seconds=21))  # its owner is gone
    assert not owned_elsewhere(replace(RECORD, state="suspended"), "replica-b", NOW)


@pytest.mark.parametrize(
    ("command", "owner_runs_it", "waited", "step"),
    [
        (DONE, True, 0.1, Step.DONE),
        (DONE, False, DEADLINE + 1, Step.DONE),  # an answer is an answer, however late
        (None, True, 0.1, Step.GONE),  # deleted with its session
        (SENT, True, 0.1, Step.WAIT),
        (SENT, False, 0.1, Step.TAKE_BACK),  # the owner let the session go before claiming it
        (SENT, True, CLAIM_WAIT_S, Step.GIVE_UP),  # the owner does not claim: safe to retry
        (CLAIMED, False, CLAIM_WAIT_S + 1, Step.WAIT),  # claimed: the owner may be starting a sandbox
        (CLAIMED, True, DEADLINE, Step.UNCONFIRMED),  # claimed, never answered: unknown outcome
    ],
)
def test_the_sender_waits_for_the_answer_takes_back_what_nobody_claimed_or_gives_up(
    command: Command | None, owner_runs_it: bool, waited: float, step: Step
) -> None:
    assert decide(command, owner_runs_it, waited, DEADLINE) is step


def test_the_owners_refusal_reaches_the_client_as_the_owner_would_have_said_it() -> None:
    said = ApiError("slow down", code=Code.RATE_LIMITED, headers={"retry-after": "3"})
    again = refusal(error_result(said)["error"])
    assert (again.code, again.message, again.headers) == (Code.RATE_LIMITED, "slow down", {"retry-after": "3"})
    assert refusal({"code": "no_such_code", "message": "?"}).code is Code.INTERNAL
