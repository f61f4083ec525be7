"""What the Docker backend adds to the sandbox contract, on a real engine:
a restarted service removes the containers it left behind, and only its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest
from moorage.channel import Loaded
from moorage.egress import ModelProxy
from moorage.sandbox.base import SandboxSpec
from moorage.sandbox.cgroups import Limits
from moorage.sandbox.docker import LABEL_OWNER, DockerBackend, DockerSandbox
from moorage.testing.scripted_model import ScriptedModelServer
from support import DOCKER_URL, docker_sandbox_image, scaled

LIMITS = Limits(1024**3, 256, 1.0)


@pytest.fixture
def image() -> str:
    tag, why_not = docker_sandbox_image()
    if tag is None:
        pytest.skip(why_not)
    return tag


@pytest.fixture
async def proxy(model: ScriptedModelServer, tmp_path: Path) -> AsyncIterator[ModelProxy]:
    p = ModelProxy(tmp_path / "egress", model.url, "sk-real")
    await p.start()
    yield p
    await p.close()


async def loaded(backend: DockerBackend, proxy: ModelProxy, tmp_path: Path) -> DockerSandbox:
    sid = uuid.uuid4().hex[:12]
    spec = SandboxSpec(str(uuid.uuid4()), sid, tmp_path / sid, await proxy.open(sid))
    sandbox = await backend.start(spec)
    assert await asyncio.wait_for(sandbox.recv(), scaled(60)) == Loaded()
    return sandbox


async def labelled(owner: str) -> list[str]:
    async with aiodocker.Docker(url=DOCKER_URL) as docker:
        found = await docker.containers.list(all=True, filters={"label": [f"{LABEL_OWNER}={owner}"]})
        return [c.id for c in found]


async def test_a_restarted_service_removes_only_its_own_orphans(image: str, proxy: ModelProxy, tmp_path: Path) -> None:
    """Containers labelled with this service's owner id are removed at start; another owner's are left alone."""
    owner, other = f"test-{uuid.uuid4().hex[:8]}", f"test-{uuid.uuid4().hex[:8]}"
    crashed, neighbour = (
        DockerBackend(DOCKER_URL, image, LIMITS, owner),
        DockerBackend(DOCKER_URL, image, LIMITS, other),
    )
    try:
        orphan = await loaded(crashed, proxy, tmp_path)
        survivor = await loaded(neighbour, proxy, tmp_path)
        assert await labelled(owner) == [orphan.container_id]

        restarted = DockerBackend(DOCKER_URL, image, LIMITS, owner)
        await restarted.check()  # what the service does at start
        await restarted.close()

        assert await labelled(owner) == []
        assert await asyncio.wait_for(orphan.recv(), scaled(10)) is None, "the orphan's channel ends"
        assert await labelled(other) == [survivor.container_id]
    finally:
        await crashed.close()
        await neighbour.close()
    assert await labelled(other) == []


async def test_reap_removes_the_container_a_persisted_handle_names(
    image: str, proxy: ModelProxy, tmp_path: Path
) -> None:
    """``reap`` with a handle from a previous run removes that container; a second reap is a no-op."""
    owner = f"test-{uuid.uuid4().hex[:8]}"
    first = DockerBackend(DOCKER_URL, image, LIMITS, owner)
    try:
        sandbox = await loaded(first, proxy, tmp_path)
        handle = sandbox.handle
        later = DockerBackend(DOCKER_URL, image, LIMITS, f"{owner}-later")
        await later.reap(handle)
        await later.reap(handle)
        await later.close()
        assert await labelled(owner) == []
    finally:
        await first.close()
