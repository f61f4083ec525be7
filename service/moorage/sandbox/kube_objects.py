"""Kubernetes objects for sandbox pods, and how to read their status (pure).

Nothing here does I/O: ``make_pod`` builds the Pod the Kubernetes backend
creates for one sandbox, the selectors find a replica's pods again, and the
status readers turn a Pod (as the API returns it, camelCase JSON) into what
the backend needs to decide: running, still coming, or failed and why.

A sandbox pod runs the agent runner as a non-root uid with a read-only root
filesystem, no capabilities, no privilege escalation, the runtime's default
seccomp profile and no service-account token; its only writable places are
size-limited emptyDirs (/workspace, HOME, /tmp). The runner's stdin is kept
open for one attach (``stdinOnce``): the service's attach websocket is the
channel, and when that attach ends the runner sees end of input and exits.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .base import SESSION_DIR, SESSION_FILES_BYTES, TOOL_ENV, SandboxSpec

NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
SESSION = "moorage.dev/session-id"
SANDBOX = "moorage.dev/sandbox-id"
REPLICA = "moorage.dev/replica"
CONTAINER = "runner"
SANDBOX_UID = 1000
HOME = "/home/agent"
# The runner starts only once the service has attached and sent one line:
# output written before an attach exists is not delivered to it, so the
# runner's ``loaded`` frame must not be written earlier. These are the
# container's args: the image's entrypoint (tini, which reaps orphans) stays.
RUNNER_ARGS = ["/bin/sh", "-c", "read -r _ && exec python3 -m moorage_runner"]
SCRATCH_BYTES = 512 * 1024 * 1024  # each of HOME and /tmp
# Waiting reasons after which a container will not start by waiting longer.
FATAL_WAITING = {
    "ErrImagePull": "the sandbox image cannot be pulled",
    "ImagePullBackOff": "the sandbox image cannot be pulled",
    "InvalidImageName": "the sandbox image name is invalid",
    "ErrImageNeverPull": "the sandbox image is not on the node and imagePullPolicy is Never",
    "CreateContainerConfigError": "the sandbox container's configuration is invalid",
    "CreateContainerError": "the sandbox container could not be created",
    "RunContainerError": "the sandbox container could not be run",
    "CrashLoopBackOff": "the sandbox container keeps crashing",
}
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class PodConfig:
    """What every sandbox pod of one service replica shares (from Settings)."""

    namespace: str
    image: str
    replica: str
    memory_bytes: int
    cpus: float
    workspace_bytes: int
    runtime_class: str | None = None
    termination_grace_s: int = 5
    image_pull_policy: str = "IfNotPresent"
    # The service pod that owns the sandboxes (name, uid), when known.
    owner_pod: tuple[str, str] | None = None
    # /mnt/session (uploads/, outputs/): memory-backed, so it counts toward memory_bytes.
    session_bytes: int = SESSION_FILES_BYTES


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a stable digest of it
    (a replica id such as ``host:1a2b`` has a colon, which labels refuse)."""
    if _LABEL_VALUE.match(text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def pod_name(sandbox_id: str) -> str:
    return f"moorage-sandbox-{label_value(sandbox_id).lower().replace('_', '-').replace('.', '-')}"[:63]


def sandbox_labels(spec: SandboxSpec, replica: str) -> dict[str, str]:
    return {
        NAME: "moorage",
        COMPONENT: "sandbox",
        SESSION: label_value(spec.session_id),
        SANDBOX: label_value(spec.sandbox_id),
        REPLICA: label_value(replica),
    }


def replica_selector(replica: str) -> str:
    """The label selector for every sandbox pod one replica started."""
    return f"{NAME}=moorage,{COMPONENT}=sandbox,{REPLICA}={label_value(replica)}"


def cpu_quantity(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


def make_pod(spec: SandboxSpec, config: PodConfig) -> dict[str, Any]:
    """The Pod for one sandbox. It carries no secret: the model is reached
    through the service's proxy, named in the ``start`` frame, not here."""
    resources = {"memory": str(config.memory_bytes), "cpu": cpu_quantity(config.cpus)}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": RUNNER_ARGS,
        "workingDir": "/workspace",
        "stdin": True,
        "stdinOnce": True,
        "tty": False,
        "env": [
            {"name": "HOME", "value": HOME},
            {"name": "TMPDIR", "value": "/tmp"},
            {"name": "LANG", "value": "C.UTF-8"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            *({"name": name, "value": value} for name, value in TOOL_ENV.items()),
        ],
        # requests == limits: Guaranteed QoS, the last class the kubelet evicts.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "workspace", "mountPath": "/workspace"},
            {"name": "home", "mountPath": HOME},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "session", "mountPath": SESSION_DIR},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    workspace: dict[str, Any] = {}
    if config.workspace_bytes > 0:
        workspace["sizeLimit"] = str(config.workspace_bytes)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        # Nothing to resolve: the model proxy is addressed by IP.
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["127.0.0.1"]},
        "terminationGracePeriodSeconds": config.termination_grace_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "fsGroup": SANDBOX_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "workspace", "emptyDir": workspace},
            {"name": "home", "emptyDir": {"sizeLimit": str(SCRATCH_BYTES)}},
            {"name": "tmp", "emptyDir": {"sizeLimit": str(SCRATCH_BYTES)}},
            {"name": "session", "emptyDir": {"medium": "Memory", "sizeLimit": str(config.session_bytes)}},
        ],
    }
    if config.runtime_class:
        pod_spec["runtimeClassName"] = config.runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec.sandbox_id),
            "namespace": config.namespace,
            "labels": sandbox_labels(spec, config.replica),
            # Labels may have been hashed; the annotations keep the real ids.
            "annotations": {SESSION: spec.session_id, SANDBOX: spec.sandbox_id, REPLICA: config.replica},
            **({"ownerReferences": [owner_reference(*config.owner_pod)]} if config.owner_pod else {}),
        },
        "spec": pod_spec,
    }


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """The service pod as a sandbox pod's owner: when a rollout replaces the
    replica (a new pod, a new replica id, so no restart reaps them), the
    garbage collector deletes its sandbox pods. Not a controller reference:
    the service, not a controller, manages them while it lives."""
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "blockOwnerDeletion": False}


# ---- reading a Pod's status -------------------------------------------------


def _runner_status(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return dict(status)
    return {}


def is_running(pod: dict[str, Any]) -> bool:
    """The runner container has started (its stdin can be attached)."""
    state = _runner_status(pod).get("state") or {}
    return (pod.get("status") or {}).get("phase") == "Running" and "running" in state


def start_failure(pod: dict[str, Any]) -> str | None:
    """Why this pod will never run the runner, or None while it still may."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        ended = terminated(pod)
        reason = ended[1] if ended else status.get("reason") or status.get("phase")
        return f"the sandbox pod ended before it was attached ({reason})"
    waiting = (_runner_status(pod).get("state") or {}).get("waiting") or {}
    reason = str(waiting.get("reason", ""))
    if reason in FATAL_WAITING:
        detail = str(waiting.get("message", ""))[:300]
        return f"{FATAL_WAITING[reason]} ({reason}{': ' + detail if detail else ''})"
    return None


def unschedulable(pod: dict[str, Any]) -> str | None:
    """The scheduler's reason while the pod fits no node (it may still fit
    later, e.g. after a node is added), else None."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return str(condition.get("message") or "no node fits the sandbox pod")[:300]
    return None


def terminated(pod: dict[str, Any]) -> tuple[int, str] | None:
    """(exit code, reason) once the runner container has ended."""
    status = _runner_status(pod)
    for key in ("state", "lastState"):
        ended = (status.get(key) or {}).get("terminated")
        if ended:
            return int(ended.get("exitCode", -1)), str(ended.get("reason", ""))
    return None


def oom_killed(pod: dict[str, Any]) -> bool:
    ended = terminated(pod)
    return ended is not None and ended[1] == "OOMKilled"
