"""The agents the operator marked for warm-up (warm_marks): parsing the setting, and what a read of
their current versions comes to. Pure."""

from __future__ import annotations

import pytest
from moorage.settings import Settings
from moorage.warm_marks import Found, Marked, Marks, choose, parse_marked
from pydantic import ValidationError

A = Marked("agent_aaaa", "acme")
B = Marked("agent_bbbb", "default")


def test_marks_name_the_agent_and_its_tenant_a_bare_id_is_the_open_tenants() -> None:
    assert parse_marked(" agent_aaaa@acme , agent_bbbb,,agent_aaaa@acme") == (A, B)
    assert parse_marked("") == ()
    assert str(A) == "agent_aaaa@acme"
    assert parse_marked("agent_aaaa@other") != (A,), "another tenant's agent of that id is another mark"


@pytest.mark.parametrize("text", ["agent_a@", "@acme", "agent a", "agent_a@acme@x", "agent_a@bad tenant"])
def test_a_bad_mark_is_refused_at_start_up_naming_its_entry(text: str) -> None:
    with pytest.raises(ValueError, match="MOORAGE_WARM_AGENT_IDS entry 2"):
        parse_marked(f"agent_ok,{text}")
    with pytest.raises(ValidationError):
        Settings(warm_agent_ids=text)


def test_the_current_version_of_each_mark_is_pinned() -> None:
    marks, said = choose((A, B), {A: Found(1, {"name": "a"}), B: Found(3, {"name": "b"})}, Marks())
    assert marks.versions == {A: Found(1, {"name": "a"}), B: Found(3, {"name": "b"})}
    assert said == [] and marks.skipped == {}


def test_a_new_version_replaces_the_old() -> None:
    before, _ = choose((A,), {A: Found(1, {"name": "a"})}, Marks())
    after, _ = choose((A,), {A: Found(2, {"name": "a2"})}, before)
    assert after.versions == {A: Found(2, {"name": "a2"})}


def test_an_unknown_or_archived_agent_is_skipped_and_said_once_per_reason() -> None:
    marks, said = choose((A, B), {A: None, B: Found(2, {}, archived=True)}, Marks())
    assert marks.versions == {} and said == [(A, "not_found"), (B, "archived")]
    again, said = choose((A, B), {A: None, B: Found(2, {}, archived=True)}, marks)
    assert again == marks and said == [], "not said every minute"
    created, said = choose((A, B), {A: Found(1, {}), B: Found(2, {}, archived=True)}, again)
    assert created.versions == {A: Found(1, {})} and said == []
    gone, said = choose((A, B), {A: None, B: Found(2, {}, archived=True)}, created)
    assert gone.versions == {} and said == [(A, "not_found")], "said again once it goes again"


def test_an_agent_archived_after_it_was_pinned_is_unpinned() -> None:
    pinned, _ = choose((A,), {A: Found(1, {})}, Marks())
    archived, said = choose((A,), {A: Found(1, {}, archived=True)}, pinned)
    assert archived.versions == {} and said == [(A, "archived")]


def test_a_mark_that_could_not_be_read_keeps_what_it_had() -> None:
    """The database down for a minute does not let the pool's agents go (nor say anything twice)."""
    marks, _ = choose((A, B), {A: Found(1, {}), B: None}, Marks())
    kept, said = choose((A, B), {}, marks)
    assert kept == marks and said == []


def test_a_mark_no_longer_configured_is_forgotten() -> None:
    marks, _ = choose((A, B), {A: Found(1, {}), B: None}, Marks())
    assert choose((), {}, marks) == (Marks(), [])
