from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))  # examples/slack_bot

from moorage.testing.scripted_model import ScriptedModelServer
from support import Service, run_service


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs_sandbox = shutil.which("bwrap") is None or shutil.which("setpriv") is None
    for item in items:
        sandboxed = "e2e" in item.path.parts or ("integration" in item.path.parts and "store" not in item.path.name)
        if needs_sandbox and sandboxed:
            item.add_marker(pytest.mark.skip(reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap"))


@pytest.fixture(scope="session")
def model() -> Iterator[ScriptedModelServer]:
    server = ScriptedModelServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service(model: ScriptedModelServer) -> Iterator[Service]:
    """One service for the e2e tests that need no special settings."""
    with run_service(model.url) as svc:
        yield svc
