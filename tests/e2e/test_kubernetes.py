"""The service as a process with MOORAGE_SANDBOX=kubernetes, against the
recorded API contract (tests/kube_contract.py; no cluster runs here): real
clients, the real runner in the "pods", a real database. Checks the wiring
(backend selection, the proxy port, the start frame's model URL) and that a
suspended session's workspace survives though a pod's emptyDir does not."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_contract import ContractServer, ContractServerThread
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, events, free_port, result_of, run_service, tool_output, wait_suspended, wait_until

NS = "moorage-e2e"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ContractServer, Path]]:
    root = Path(tempfile.mkdtemp(prefix="moorage-kubelet-"))
    root.chmod(0o755)
    thread = ContractServerThread(NS, root)
    server = thread.start()
    yield server, thread.kubeconfig(tmp_path / "kubeconfig")
    thread.stop()
    shutil.rmtree(root, ignore_errors=True)
    assert server.violations == [], "requests outside the recorded contract"


async def test_session_runs_in_a_pod_and_its_workspace_survives_suspend(
    model: ScriptedModelServer, api: tuple[ContractServer, Path]
) -> None:
    """A session's turns run in a pod; after an idle suspend (pod deleted) a reconnect rehydrates its files."""
    server, kubeconfig = api
    settings = {
        "MOORAGE_SANDBOX": "kubernetes",
        "MOORAGE_K8S_NAMESPACE": NS,
        "MOORAGE_POD_IP": "127.0.0.1",
        "MOORAGE_PROXY_PORT": str(free_port()),
        "MOORAGE_REPLICA_ID": "moorage-e2e-0",
        "MOORAGE_WARM_SANDBOXES": "0",
        "MOORAGE_WARM_AGENTS": "0",
        "MOORAGE_IDLE_TIMEOUT_S": "1",
        "KUBECONFIG": str(kubeconfig),
    }
    with run_service(model.url, **settings) as svc:
        client = await Client.connect(svc)
        assert "pod-made" in tool_output(await client.turn("bash echo pod-made > notes.txt; cat notes.txt"))
        assert len(server.pods) == 1
        await client.close()
        await wait_suspended(svc, client.session_id)
        wait_until(lambda: not server.pods, 10, "the suspended session's pod to be deleted")
        assert events(svc, "workspace_fetched")

        again = await Client.connect(svc, client.session_id)
        assert again.first["state"] == "rehydrated"
        assert "pod-made" in tool_output(await again.turn("bash cat notes.txt"))
        assert result_of(await again.turn("say still here"))["result"] == "still here"
        await again.close()
    assert not server.pods, "the service's shutdown deleted its pods"
    assert server.seen.count("create_pod") == 2
