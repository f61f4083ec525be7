"""The sandbox Pod builder and the Pod status readers (pure; no cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from moorage.sandbox.base import SandboxSpec
from moorage.sandbox.kube_objects import (
    COMPONENT,
    REPLICA,
    SANDBOX,
    SESSION,
    PodConfig,
    is_running,
    label_value,
    make_pod,
    oom_killed,
    pod_name,
    replica_selector,
    start_failure,
    terminated,
    unschedulable,
)

SPEC = SandboxSpec("sess-1", "0123abcd4567", Path("/unused"), Path("/unused.sock"))
CONFIG = PodConfig(
    namespace="moorage",
    image="moorage-sandbox:0.1.0",
    replica="moorage-7f9c-abcde",
    memory_bytes=1024**3,
    cpus=0.5,
    workspace_bytes=256 * 1024**2,
)


def runner(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_pod_runs_as_non_root_with_a_read_only_root_and_no_capabilities() -> None:
    """The pod and its container run non-root, read-only, with ALL capabilities dropped and no escalation."""
    pod = make_pod(SPEC, CONFIG)
    pod_sc = pod["spec"]["securityContext"]
    sc = runner(pod)["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_pod_gets_no_token_no_service_links_and_no_host_namespaces() -> None:
    """No service-account token, no service env vars, no host network/pid/ipc, never restarted."""
    spec = make_pod(SPEC, CONFIG)["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["hostNetwork"] is False and spec["hostPID"] is False and spec["hostIPC"] is False
    assert spec["restartPolicy"] == "Never"
    assert "serviceAccountName" not in spec


def test_pod_carries_no_secret() -> None:
    """Nothing secret is in the pod: no env from secrets, no API key, no model URL or token."""
    pod = make_pod(SPEC, CONFIG)
    text = json.dumps(pod)
    assert "secretKeyRef" not in text and "envFrom" not in text and "secret" not in text.lower()
    assert "ANTHROPIC" not in text and "/s/" not in text
    names = {e["name"] for e in runner(pod)["env"]}
    assert names == {"HOME", "TMPDIR", "LANG", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "MPLBACKEND"}


def test_resources_come_from_the_sandbox_limits() -> None:
    """Memory and CPU limits equal requests (Guaranteed QoS) and come from the settings."""
    resources = runner(make_pod(SPEC, CONFIG))["resources"]
    assert resources["limits"] == {"memory": str(1024**3), "cpu": "500m"}
    assert resources["requests"] == resources["limits"]


def test_only_size_limited_empty_dirs_are_writable() -> None:
    """/workspace, HOME, /tmp and /mnt/session are emptyDirs with size limits; the workspace limit
    is the snapshot limit; /mnt/session (uploads, outputs) is memory-backed: it counts in the pod's
    memory limit, like the tmpfs of the other backends."""
    pod = make_pod(SPEC, CONFIG)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(volumes) == {"workspace", "home", "tmp", "session"}
    assert all(set(v) == {"name", "emptyDir"} for v in volumes.values())
    assert volumes["workspace"]["emptyDir"]["sizeLimit"] == str(256 * 1024**2)
    assert all("sizeLimit" in v["emptyDir"] for v in volumes.values())
    assert volumes["session"]["emptyDir"] == {"medium": "Memory", "sizeLimit": str(CONFIG.session_bytes)}
    mounts = {m["mountPath"] for m in runner(pod)["volumeMounts"]}
    assert mounts == {"/workspace", "/home/agent", "/tmp", "/mnt/session"}


def test_runner_stdin_is_open_for_one_attach_and_waits_for_it() -> None:
    """stdin is held for exactly one attach, no tty, and the runner starts only after the attach's first line."""
    container = runner(make_pod(SPEC, CONFIG))
    assert container["stdin"] is True and container["stdinOnce"] is True and container["tty"] is False
    assert container["args"][-1].startswith("read -r _ && exec ")
    assert "command" not in container, "the image's entrypoint (tini) stays pid 1"


def test_runtime_class_is_optional() -> None:
    """runtimeClassName appears only when configured (gVisor, Kata)."""
    assert "runtimeClassName" not in make_pod(SPEC, CONFIG)["spec"]
    gvisor = PodConfig(**{**CONFIG.__dict__, "runtime_class": "gvisor"})
    assert make_pod(SPEC, gvisor)["spec"]["runtimeClassName"] == "gvisor"


def test_the_owning_service_pod_is_named_so_its_sandboxes_go_with_it() -> None:
    """With the service pod known, sandbox pods carry an ownerReference to it (garbage-collected on rollout)."""
    assert "ownerReferences" not in make_pod(SPEC, CONFIG)["metadata"]
    owner = ("moorage-7f9c-abcde", "5d1c8a2e-0000-4000-8000-000000000001")
    owned = PodConfig(**{**CONFIG.__dict__, "owner_pod": owner})
    pod = make_pod(SPEC, owned)
    assert pod["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": "moorage-7f9c-abcde",
            "uid": "5d1c8a2e-0000-4000-8000-000000000001",
            "blockOwnerDeletion": False,
        }
    ]
    assert unknown_fields(pod, "V1Pod") == []


def test_labels_name_the_sandbox_session_and_replica() -> None:
    """Sandbox pods carry the app, component, session, sandbox and replica labels the NetworkPolicies select."""
    meta = make_pod(SPEC, CONFIG)["metadata"]
    assert meta["name"] == pod_name("0123abcd4567") == "moorage-sandbox-0123abcd4567"
    assert meta["namespace"] == "moorage"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "moorage",
        COMPONENT: "sandbox",
        SESSION: "sess-1",
        SANDBOX: "0123abcd4567",
        REPLICA: "moorage-7f9c-abcde",
    }
    assert replica_selector(CONFIG.replica) == (
        "app.kubernetes.io/name=moorage,app.kubernetes.io/component=sandbox,moorage.dev/replica=moorage-7f9c-abcde"
    )


def test_invalid_label_values_become_stable_digests() -> None:
    """A replica id with a colon (host:digest) becomes a stable valid label value; the annotation keeps the id."""
    value = label_value("host-1:1a2b3c")
    assert value == label_value("host-1:1a2b3c") and value.startswith("h-") and len(value) <= 63
    assert label_value("") == ""  # a warm sandbox has no session yet
    config = PodConfig(**{**CONFIG.__dict__, "replica": "host-1:1a2b3c"})
    meta = make_pod(SPEC, config)["metadata"]
    assert meta["labels"][REPLICA] == value
    assert meta["annotations"][REPLICA] == "host-1:1a2b3c"
    assert replica_selector("host-1:1a2b3c").endswith(f"{REPLICA}={value}")


def status(phase: str, state: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    statuses = [{"name": "runner", "state": state}] if state is not None else []
    return {"status": {"phase": phase, "containerStatuses": statuses, **extra}}


def test_running_means_the_runner_container_runs() -> None:
    """A pod is attachable once its phase is Running and the runner container is running."""
    assert is_running(status("Running", {"running": {"startedAt": "2026-01-01T00:00:00Z"}}))
    assert not is_running(status("Pending", {"waiting": {"reason": "ContainerCreating"}}))
    assert not is_running({})


def test_image_pull_failures_are_fatal_with_a_clear_reason() -> None:
    """ImagePullBackOff ends a start at once, naming the image problem; ContainerCreating does not."""
    pulling = status("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}})
    failure = start_failure(pulling)
    assert failure is not None and "cannot be pulled" in failure and "ImagePullBackOff" in failure
    assert start_failure(status("Pending", {"waiting": {"reason": "ContainerCreating"}})) is None


def test_unschedulable_is_reported_with_the_schedulers_message() -> None:
    """PodScheduled=False/Unschedulable yields the scheduler's message; a scheduled pod yields None."""
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: cpu"}
    assert unschedulable(status("Pending", conditions=[condition])) == "0/3 nodes: cpu"
    assert unschedulable(status("Pending", conditions=[{"type": "PodScheduled", "status": "True"}])) is None


def test_oom_killed_and_exit_codes_come_from_the_terminated_state() -> None:
    """terminated() reads the exit code and reason; OOMKilled is recognised; an ended pod is a start failure."""
    oom = status("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    assert terminated(oom) == (137, "OOMKilled") and oom_killed(oom)
    done = status("Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed"}})
    assert terminated(done) == (0, "Completed") and not oom_killed(done)
    assert "OOMKilled" in (start_failure(oom) or "")
    assert terminated(status("Running", {"running": {}})) is None


def unknown_fields(value: Any, type_name: str, path: str = "") -> list[str]:
    """Keys of ``value`` that the Kubernetes API's schema (as kubernetes_asyncio
    generates it from the OpenAPI spec) does not define for ``type_name``."""
    if type_name.startswith("list["):
        return [bad for i, item in enumerate(value) for bad in unknown_fields(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict(") or type_name in ("str", "int", "bool", "float", "object"):
        return []
    model = getattr(k8s, type_name)
    by_json = {json_key: model.openapi_types[attr] for attr, json_key in model.attribute_map.items()}
    found = []
    for key, item in value.items():
        if key not in by_json:
            found.append(f"{path}.{key}")
        else:
            found += unknown_fields(item, by_json[key], f"{path}.{key}")
    return found


def test_every_pod_field_is_in_the_api_schema() -> None:
    """The built Pod uses only field names the Pod schema defines (a typo would be silently dropped)."""
    gvisor = PodConfig(**{**CONFIG.__dict__, "runtime_class": "gvisor"})
    assert unknown_fields(make_pod(SPEC, gvisor), "V1Pod") == []
    assert unknown_fields({"spec": {"containers": [{"stdinOnc": True}]}}, "V1Pod") == [".spec.containers[0].stdinOnc"]
