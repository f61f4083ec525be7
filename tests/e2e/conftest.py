"""The leak audit, for every e2e test (see tests/leaks.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from leaks import FAILED_TESTS, audit_stopped
from ma_client import close_all


@pytest.fixture(scope="session", autouse=True)
def leak_audit_at_the_end() -> Iterator[None]:
    """Services that outlive a test (the shared ``service``, module-scoped
    ones) are audited once they stop: at the latest, here."""
    yield
    audit_stopped()


@pytest.fixture(autouse=True)
def leak_audit(leak_audit_at_the_end: None) -> Iterator[None]:
    """After each test: every service that has stopped by now (the test's
    own, and any module-scoped one torn down before it) left nothing."""
    yield
    audit_stopped()


@pytest.fixture(autouse=True)
def close_clients(leak_audit: None) -> Iterator[None]:
    """The official clients a test opened (``ma_client.client``) are closed after it, before
    the leak audit looks."""
    yield
    close_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Note a failed test, so its services' state dirs (their logs) stay for a look."""
    outcome = yield
    if outcome.get_result().failed:  # type: ignore[attr-defined]
        FAILED_TESTS.add(item.nodeid)
