"""The Kubernetes backend against the recorded API contract (no cluster runs
here): the real kubernetes_asyncio client, a real aiohttp server that answers
only the contract's requests (tests/kube_contract.py), and behind the attach
websocket the real agent runner reaching the scripted model through the
service's real model proxy on its TCP port."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from kube_contract import ContractServer
from kubernetes_asyncio import client as k8s
from moorage.channel import Loaded, Ready, RunnerFrame, Sdk, Snapshot
from moorage.egress import ModelProxy
from moorage.errors import SandboxError
from moorage.sandbox.base import SandboxSpec
from moorage.sandbox.kube_objects import REPLICA, PodConfig, label_value, pod_name
from moorage.sandbox.kube_sandbox import KubernetesSandbox
from moorage.sandbox.kubernetes import KubernetesBackend
from moorage.testing.scripted_model import ScriptedModelServer
from support import scaled

NS = "moorage-test"
REPLICA_ID = "moorage-0:abc"  # not a valid label value: the backend must hash it
REAL_KEY = "sk-ant-real-key-for-the-proxy-only"


def kubelet_root() -> Path:
    """Where the pods' volumes go: somewhere the pods' uid can reach (pytest's tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="moorage-kubelet-"))
    root.chmod(0o755)
    return root


@pytest.fixture
async def api() -> AsyncIterator[ContractServer]:
    root = kubelet_root()
    server = await ContractServer(NS, root).start()
    yield server
    await server.close()
    shutil.rmtree(root, ignore_errors=True)
    assert server.violations == [], "requests outside the recorded contract"


@pytest.fixture
async def proxy(model: ScriptedModelServer, tmp_path: Path) -> AsyncIterator[ModelProxy]:
    p = ModelProxy(tmp_path / "egress", model.url, REAL_KEY)
    await p.start()
    yield p
    await p.close()


def make_backend(api: ContractServer, start_timeout_s: float = 30.0) -> KubernetesBackend:
    config = PodConfig(
        namespace=NS,
        image="moorage-sandbox:0.1.0",
        replica=REPLICA_ID,
        memory_bytes=1024**3,
        cpus=1.0,
        workspace_bytes=64 * 1024**2,
        termination_grace_s=2,
    )
    return KubernetesBackend(
        config, scaled(start_timeout_s), "127.0.0.1", 0, api_config=k8s.Configuration(host=api.url)
    )


@pytest.fixture
async def backend(api: ContractServer, proxy: ModelProxy) -> AsyncIterator[KubernetesBackend]:
    b = make_backend(api)
    await b.check()
    await b.bind_proxy(proxy)
    yield b
    await b.close()


async def new_spec(proxy: ModelProxy, tmp_path: Path) -> SandboxSpec:
    sid = uuid.uuid4().hex[:12]
    return SandboxSpec(str(uuid.uuid4()), sid, tmp_path / "unused" / sid, await proxy.open(sid))


_F = TypeVar("_F", Ready, Sdk)


async def until_kind(sandbox: KubernetesSandbox, kind: type[_F]) -> _F:
    while True:
        frame = await asyncio.wait_for(sandbox.recv(), scaled(60))
        assert frame is not None, f"the channel ended before a {kind.__name__} frame"
        if isinstance(frame, kind):
            return frame


async def test_turn_over_attach_then_stop_deletes_the_pod(
    backend: KubernetesBackend, api: ContractServer, proxy: ModelProxy, model: ScriptedModelServer, tmp_path: Path
) -> None:
    """Start creates and attaches a pod; a turn runs via the proxy port; stop saves the workspace, deletes the pod."""
    spec = await new_spec(proxy, tmp_path)
    sandbox = await backend.start(spec)
    assert await asyncio.wait_for(sandbox.recv(), scaled(60)) == Loaded()
    # What sessions.py sends: the backend swaps the unix socket for the proxy port URL.
    await sandbox.send({"kind": "start", "options": {"max_turns": 2}, "model_proxy": "unix:/run/moorage/model.sock"})
    assert await until_kind(sandbox, Ready) == Ready()
    keys_before = len(model.model.api_keys)
    prompt = {"role": "user", "content": "bash echo hi > f; cat f"}
    await sandbox.send({"kind": "user", "message": {"type": "user", "message": prompt}})
    while True:
        frame = await until_kind(sandbox, Sdk)
        if frame.type == "result":
            break
    assert frame.message["subtype"] == "success"
    assert model.model.api_keys[keys_before:] and set(model.model.api_keys[keys_before:]) == {REAL_KEY}
    assert proxy.usage[spec.sandbox_id].requests >= 2, "the proxy metered this sandbox's requests"
    name = pod_name(spec.sandbox_id)
    assert (api.root / name / "workspace" / "f").read_text() == "hi\n"
    url = backend.proxy_url(spec.sandbox_id)

    # As a session does: a reader keeps draining the channel while stop runs.
    async def pump() -> list[RunnerFrame]:
        frames = []
        while (frame := await sandbox.recv()) is not None:
            frames.append(frame)
        return frames

    reader = asyncio.create_task(pump())
    assert await sandbox.stop(scaled(10)) == 0, "closing the attach ends the runner's input: a clean exit"
    assert all(not isinstance(f, Snapshot) for f in await asyncio.wait_for(reader, scaled(10)))
    assert (spec.workspace / "f").read_text() == "hi\n", "stop brought the pod's workspace to the host for suspend"
    assert name not in api.pods
    assert await sandbox.recv() is None
    assert api.seen[0] == "list_pods" and "create_pod" in api.seen and "attach_pod" in api.seen
    # Stop deletes, then reads until the pod is gone (more than one read when the kubelet is slow).
    after_delete = api.seen[len(api.seen) - api.seen[::-1].index("delete_pod") :]
    assert after_delete and set(after_delete) == {"read_pod"}, "stop deletes, then checks the pod is gone"
    assert await sandbox.stop(1) == 0  # idempotent
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/messages", json={}) as response:
        assert response.status == 403, "a stopped sandbox's proxy token is revoked"


async def test_handle_names_the_pod(
    backend: KubernetesBackend, api: ContractServer, proxy: ModelProxy, tmp_path: Path
) -> None:
    """The handle is plain JSON naming the backend, namespace, pod and sandbox; kill deletes the pod."""
    spec = await new_spec(proxy, tmp_path)
    sandbox = await backend.start(spec)
    assert sandbox.handle == {
        "backend": "kubernetes",
        "namespace": NS,
        "pod": pod_name(spec.sandbox_id),
        "sandbox_id": spec.sandbox_id,
    }
    await sandbox.kill()
    assert api.pods == {} and backend.live == {}, "kill deletes the pod at once"


async def test_restart_reaps_this_replicas_pods_only(api: ContractServer, proxy: ModelProxy) -> None:
    """A restarted replica deletes the sandbox pods labelled with its replica id, not another replica's."""
    ours = {"app.kubernetes.io/name": "moorage", "app.kubernetes.io/component": "sandbox"}
    api.seed("moorage-sandbox-old1", {**ours, REPLICA: label_value(REPLICA_ID)})
    api.seed("moorage-sandbox-old2", {**ours, REPLICA: label_value(REPLICA_ID)})
    api.seed("moorage-sandbox-other", {**ours, REPLICA: "moorage-1"})
    backend = make_backend(api)
    try:
        await backend.check()
        assert set(api.pods) == {"moorage-sandbox-other"}
        # A session record's handle from before the restart: reaping is idempotent.
        await backend.reap({"backend": "kubernetes", "namespace": NS, "pod": "moorage-sandbox-old1"})
        await backend.reap({"backend": "local", "uid": 1})
        assert set(api.pods) == {"moorage-sandbox-other"}
    finally:
        await backend.close()


async def test_pod_that_never_schedules_fails_with_the_schedulers_reason(
    api: ContractServer, proxy: ModelProxy, tmp_path: Path
) -> None:
    """A pod stuck Unschedulable fails the start at the deadline with the scheduler's message, and is deleted."""
    api.statuses = ["pending_unscheduled"]
    backend = make_backend(api, start_timeout_s=1.0)
    await backend.check()
    await backend.bind_proxy(proxy)
    try:
        spec = await new_spec(proxy, tmp_path)
        with pytest.raises(SandboxError) as failure:
            await backend.start(spec)
        assert failure.value.code == "sandbox_start_failed"
        assert "no node fits it" in failure.value.message and "Insufficient memory" in failure.value.message
        assert api.pods == {} and backend.live == {}
    finally:
        await backend.close()


async def test_image_pull_backoff_fails_at_once(
    backend: KubernetesBackend, api: ContractServer, proxy: ModelProxy, tmp_path: Path
) -> None:
    """ImagePullBackOff fails the start without waiting out the deadline, names the image, and deletes the pod."""
    api.statuses = ["pending_creating", "pending_image_pull_backoff"]
    spec = await new_spec(proxy, tmp_path)
    with pytest.raises(SandboxError) as failure:
        await asyncio.wait_for(backend.start(spec), scaled(10))
    assert "cannot be pulled" in failure.value.message and "ImagePullBackOff" in failure.value.message
    assert api.pods == {}


async def test_oom_killed_runner_is_a_limit_event(
    backend: KubernetesBackend, api: ContractServer, proxy: ModelProxy, tmp_path: Path
) -> None:
    """A runner the kubelet reports OOMKilled ends the channel, exits 137 and counts one oom kill."""
    api.oom_after_first_output = True
    spec = await new_spec(proxy, tmp_path)
    sandbox = await backend.start(spec)
    while await asyncio.wait_for(sandbox.recv(), scaled(60)) is not None:
        pass
    assert sandbox.limit_events() == {"oom_kills": 1, "pids_refusals": 0}
    assert sandbox.returncode == 137
    await sandbox.stop(1)
    assert api.pods == {}


async def test_forbidden_api_is_reported_by_ready_and_start(
    backend: KubernetesBackend, api: ContractServer, proxy: ModelProxy, tmp_path: Path
) -> None:
    """RBAC refusals surface as a readiness problem and a start failure with the API server's message."""
    assert await backend.ready() is None
    api.list_answer = "forbidden_list"
    problem = await backend.ready()
    assert problem is not None and "RBAC" in problem and "cannot list resource" in problem
    api.create_answer = "forbidden_create"
    with pytest.raises(SandboxError) as failure:
        await backend.start(await new_spec(proxy, tmp_path))
    assert "403" in failure.value.message and "cannot create resource" in failure.value.message


async def test_duplicate_pod_name_is_a_start_failure(
    backend: KubernetesBackend, api: ContractServer, proxy: ModelProxy, tmp_path: Path
) -> None:
    """A 409 AlreadyExists from create is a start failure that leaves the existing pod alone."""
    spec = await new_spec(proxy, tmp_path)
    api.seed(pod_name(spec.sandbox_id), {})
    with pytest.raises(SandboxError) as failure:
        await backend.start(spec)
    assert "409" in failure.value.message and "already exists" in failure.value.message
    assert pod_name(spec.sandbox_id) in api.pods


async def test_unknown_proxy_token_is_refused(backend: KubernetesBackend) -> None:
    """The proxy port refuses a request whose path token names no live sandbox."""
    assert backend.port is not None
    url = f"http://127.0.0.1:{backend.port.port}/s/not-a-token/v1/messages"
    async with aiohttp.ClientSession() as http, http.post(url, json={}) as response:
        assert response.status == 403
