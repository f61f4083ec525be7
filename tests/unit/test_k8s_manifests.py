"""The kustomize manifests in k8s/, rendered by the real ``kubectl kustomize``
for base, dev and prod, checked object by object: kinds, probes, security
contexts, pinned images, RBAC scope, Secrets, and the NetworkPolicies evaluated
as a small connectivity matrix. No cluster runs here; rendering is the check."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml
from moorage.sandbox.base import SandboxSpec
from moorage.sandbox.kube_objects import PodConfig, make_pod
from moorage.settings import Settings
from moorage_session_store.database import async_url

K8S = Path(__file__).resolve().parents[2] / "k8s"
OVERLAYS = ("base", "overlays/dev", "overlays/prod")
KUBECTL = shutil.which("kubectl")
SERVICE = {"app.kubernetes.io/name": "moorage", "app.kubernetes.io/component": "service"}
SANDBOX = {"app.kubernetes.io/name": "moorage", "app.kubernetes.io/component": "sandbox"}
DATABASE = {"app.kubernetes.io/name": "moorage", "app.kubernetes.io/component": "database"}
# Oldest and newest Kubernetes minor versions the manifests are checked against.
KUBERNETES_VERSIONS = ("1.29.0", "1.32.0")
# Kinds from CRDs, which have no upstream schema (the Prometheus Operator's).
CRD_KINDS = {"ServiceMonitor"}
PINNED = re.compile(r"^[a-z0-9./_-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$")

pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (apt-get install kubectl, or kubernetes-client)"
)

Obj = dict[str, Any]


def render(overlay: str) -> list[Obj]:
    """Every object ``kubectl kustomize`` renders for one overlay."""
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objs: list[Obj]) -> set[str]:
    return {o["kind"] for o in objs}


def pod_specs(objs: list[Obj]) -> list[tuple[str, Obj]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objs if "template" in o.get("spec", {})]


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def config_data(objs: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = one(objs, "ConfigMap")["data"]
    return data


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are used here"
    wanted: dict[str, str] = selector.get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_match_the_kubernetes_schema(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Every object is valid under the strict Kubernetes schema (no unknown field) of the oldest and newest version."""
    objs = [o for o in rendered[overlay] if o["kind"] not in CRD_KINDS]
    if overlay.endswith("prod"):
        objs.append(yaml.safe_load((K8S / "overlays/prod/hpa.yaml").read_text()))
    for obj in objs:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): {exc}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_labelled_and_namespaced(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Every rendered object carries the app label and the overlay's one namespace."""
    objs = rendered[overlay]
    assert objs
    for obj in objs:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "moorage", obj["metadata"]["name"]
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {"moorage-dev" if overlay.endswith("dev") else "moorage"}


def test_kinds_per_overlay(rendered: dict[str, list[Obj]]) -> None:
    """Base has the shared objects; dev adds PostgreSQL and a Secret; prod a ServiceMonitor and no Secret."""
    shared = {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert kinds(rendered["base"]) == shared
    assert kinds(rendered["overlays/dev"]) == shared | {"Namespace", "Secret", "StatefulSet"}
    assert kinds(rendered["overlays/prod"]) == shared | {"Namespace", "ServiceMonitor"}
    for overlay in ("overlays/dev", "overlays/prod"):
        ns = one(rendered[overlay], "Namespace")["metadata"]["labels"]
        assert ns["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_deployment_probes_ports_and_replicas(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Liveness /healthz on 8080, readiness /readyz on the metrics port; 2+ replicas (3+ in prod), no outage."""
    deploy = one(rendered[overlay], "Deployment", "moorage")
    assert deploy["spec"]["replicas"] >= (3 if overlay.endswith("prod") else 2)
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deploy["spec"]["selector"]["matchLabels"] == SERVICE
    assert matches(deploy["spec"]["selector"], deploy["spec"]["template"]["metadata"]["labels"])
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "model-proxy": 8081, "metrics": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    config = config_data(rendered[overlay])
    assert (config["MOORAGE_HOST"], config["MOORAGE_PORT"], config["MOORAGE_PROXY_PORT"]) == ("0.0.0.0", "8080", "8081")
    # /metrics and /readyz only on their own listener, which the pod IP must serve (probes, scrapes).
    assert (config["MOORAGE_METRICS_PORT"], config["MOORAGE_METRICS_HOST"]) == ("9090", "0.0.0.0")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_non_root_read_only_without_capabilities(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Every pod template: non-root, seccomp RuntimeDefault, no privilege escalation, read-only root, drop ALL."""
    specs = pod_specs(rendered[overlay])
    assert specs
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] > 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "privileged" not in sc, name
            assert container["resources"]["requests"]["cpu"], name
            assert container["resources"]["requests"]["memory"], name
            assert container["resources"]["limits"]["memory"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Every image, and the sandbox image handed to the backend, has an explicit tag or digest, never latest."""
    images = [c["image"] for _, spec in pod_specs(rendered[overlay]) for c in spec["containers"]]
    images.append(config_data(rendered[overlay])["MOORAGE_SANDBOX_IMAGE"])
    for image in images:
        assert PINNED.match(image), image
        assert not image.endswith(":latest"), image


def test_prod_pulls_from_a_registry_and_the_sandbox_image_matches(rendered: dict[str, list[Obj]]) -> None:
    """Prod rewrites both images to the registry (kustomize images:) and hands the same sandbox image to the backend."""
    entries = {e["name"]: e for e in yaml.safe_load((K8S / "overlays/prod/kustomization.yaml").read_text())["images"]}
    assert set(entries) == {"moorage-service", "moorage-sandbox"}
    for entry in entries.values():
        assert "/" in entry["newName"]
        assert entry.get("digest") or entry["newTag"] not in ("", "latest")
    (container,) = one(rendered["overlays/prod"], "Deployment")["spec"]["template"]["spec"]["containers"]
    service = entries["moorage-service"]
    assert container["image"] == f"{service['newName']}:{service['newTag']}"
    sandbox = entries["moorage-sandbox"]
    assert (
        config_data(rendered["overlays/prod"])["MOORAGE_SANDBOX_IMAGE"] == f"{sandbox['newName']}:{sandbox['newTag']}"
    )
    assert config_data(rendered["overlays/dev"])["MOORAGE_SANDBOX_IMAGE"] == "moorage-sandbox:0.1.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_limited_to_sandbox_pods(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """A Role (never a ClusterRole) on pods, attach, logs and events, bound to the Deployment's service account."""
    objs = rendered[overlay]
    assert not kinds(objs) & {"ClusterRole", "ClusterRoleBinding"}
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in one(objs, "Role")["rules"]}
    assert rules == {
        (("",), ("pods",)): {"create", "get", "list", "watch", "delete"},
        (("",), ("pods/attach",)): {"create", "get"},
        (("",), ("pods/log",)): {"get"},
        (("",), ("events",)): {"list"},
    }
    binding = one(objs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "moorage-sandboxes"}
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    account = one(objs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": account["namespace"]}
    ]
    assert account["name"] == pod["serviceAccountName"]
    for name, spec in pod_specs(objs):
        if name != "moorage":
            assert spec["automountServiceAccountToken"] is False, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replica_identity_comes_from_the_downward_api(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Replica id is the pod name, the proxy address the pod IP, the namespace the pod's own."""
    (container,) = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert all("valueFrom" in e for e in env.values()), "literal values belong in the ConfigMap"
    refs = {name: e["valueFrom"] for name, e in env.items()}
    fields = {name: ref["fieldRef"]["fieldPath"] for name, ref in refs.items() if "fieldRef" in ref}
    assert fields == {
        "MOORAGE_REPLICA_ID": "metadata.name",
        "MOORAGE_POD_IP": "status.podIP",
        "MOORAGE_POD_NAME": "metadata.name",
        "MOORAGE_POD_UID": "metadata.uid",
        "MOORAGE_K8S_NAMESPACE": "metadata.namespace",
    }
    secrets = {name: ref["secretKeyRef"]["key"] for name, ref in refs.items() if "secretKeyRef" in ref}
    assert secrets == {
        "ANTHROPIC_API_KEY": "anthropic-api-key",
        "MOORAGE_DATABASE_URL": "database-url",
        "MOORAGE_API_KEYS": "api-keys",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_names_real_settings(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Every MOORAGE_ variable the manifests set is a Settings field, and Settings accepts the values."""
    objs = rendered[overlay]
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    values = dict(config_data(objs))
    values.update(
        {
            "MOORAGE_REPLICA_ID": "moorage-7d9f-abcde",
            "MOORAGE_POD_IP": "10.0.0.7",
            "MOORAGE_POD_NAME": "moorage-7d9f-abcde",
            "MOORAGE_POD_UID": "5d1c8a2e-0000-4000-8000-000000000001",
            "MOORAGE_K8S_NAMESPACE": "moorage",
            "MOORAGE_DATABASE_URL": "postgresql://moorage@db/moorage",
            "MOORAGE_API_KEYS": "dev:token",
        }
    )
    assert set(env_of(container)) - {"ANTHROPIC_API_KEY"} <= set(values)
    fields = {name.removeprefix("MOORAGE_").lower(): value for name, value in values.items()}
    unknown = set(fields) - set(Settings.model_fields)
    assert not unknown, f"not Settings fields (a typo is silently ignored): {sorted(unknown)}"
    settings = Settings.model_validate(fields)
    assert settings.sandbox == "kubernetes"
    assert settings.replica == "moorage-7d9f-abcde"
    if overlay != "base":  # the options an overlay documents in comments, e.g. the RuntimeClass
        text = (K8S / overlay / "kustomization.yaml").read_text()
        documented = {n.removeprefix("MOORAGE_").lower() for n in re.findall(r"#\s*-\s*(MOORAGE_[A-Z0-9_]+)=", text)}
        assert documented <= set(Settings.model_fields)


def test_secrets_are_fake_in_dev_and_absent_elsewhere(rendered: dict[str, list[Obj]]) -> None:
    """Base and prod render no Secret; dev's generated one holds only obvious placeholders the pods can use."""
    assert "Secret" not in kinds(rendered["base"]) | kinds(rendered["overlays/prod"])
    objs = rendered["overlays/dev"]
    secret = one(objs, "Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"anthropic-api-key", "database-url", "api-keys", "postgres-password"}
    assert "placeholder-not-a-real-key" in data["anthropic-api-key"]
    assert all("dev" in value for value in data.values())
    for _, spec in pod_specs(objs):
        for container in spec["containers"]:
            refs = [
                e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            for ref in refs:
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in data
    url = async_url(data["database-url"])
    assert url.drivername == "postgresql+asyncpg"
    assert url.password == data["postgres-password"]
    database = one(objs, "Service", "moorage-postgres")
    assert url.host == database["metadata"]["name"] and url.port == database["spec"]["ports"][0]["port"]
    postgres = one(objs, "StatefulSet", "moorage-postgres")["spec"]["template"]
    assert matches({"matchLabels": database["spec"]["selector"]}, postgres["metadata"]["labels"])
    assert env_of(postgres["spec"]["containers"][0])["POSTGRES_USER"]["value"] == url.username


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_and_monitor_select_the_service_pods(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """The Service (no affinity), the PDB and the ServiceMonitor reach the service pods; scrapes use the metrics port"""
    objs = rendered[overlay]
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objs, "Service", "moorage")
    assert service["spec"]["selector"] == SERVICE and matches({"matchLabels": service["spec"]["selector"]}, pod_labels)
    assert service["spec"].get("sessionAffinity", "None") == "None"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
    ]
    pdb = one(objs, "PodDisruptionBudget")
    assert matches(pdb["spec"]["selector"], pod_labels) and pdb["spec"]["maxUnavailable"] == 1
    if overlay.endswith("prod"):
        monitor = one(objs, "ServiceMonitor")
        assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
        assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]


def test_prod_spreads_replicas_and_the_optional_hpa_targets_them(rendered: dict[str, list[Obj]]) -> None:
    """Prod spreads replicas over zones and nodes; hpa.yaml (opt-in) scales that Deployment from 3."""
    deploy = one(rendered["overlays/prod"], "Deployment")
    spread = deploy["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(c["labelSelector"]["matchLabels"] == SERVICE for c in spread)
    hpa = yaml.safe_load((K8S / "overlays/prod/hpa.yaml").read_text())
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "moorage"}
    assert hpa["spec"]["minReplicas"] == deploy["spec"]["replicas"]


# --- NetworkPolicy as a connectivity matrix ---------------------------------
# A peer is a pod (its labels; NAMESPACE names another namespace than the
# policies' own) or an address outside the cluster (None). Enough of the
# NetworkPolicy semantics for these manifests.

Peer = dict[str, str] | None
OUTSIDE: Peer = None
NAMESPACE = "@namespace"  # a pseudo-label: the peer pod's namespace, when not the policies' own
MONITORING: Peer = {NAMESPACE: "monitoring", "app.kubernetes.io/name": "prometheus"}
ELSEWHERE: Peer = {NAMESPACE: "someone-elses", "app.kubernetes.io/name": "prometheus"}


def _peer_matches(entries: list[Obj] | None, peer: Peer) -> bool:
    if entries is None:  # no from/to: every peer
        return True
    for entry in entries:
        if "ipBlock" in entry and peer is None:
            return True
        if peer is None:
            continue
        if "namespaceSelector" in entry:
            # Another namespace, by its automatic name label; a podSelector beside it narrows further.
            namespace = {"kubernetes.io/metadata.name": peer[NAMESPACE]} if NAMESPACE in peer else None
            in_namespace = namespace is not None and matches(entry["namespaceSelector"], namespace)
            if in_namespace and ("podSelector" not in entry or matches(entry["podSelector"], peer)):
                return True
        elif "podSelector" in entry and NAMESPACE not in peer and matches(entry["podSelector"], peer):
            return True
    return False


def _port_matches(ports: list[Obj] | None, port: int, protocol: str) -> bool:
    return ports is None or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)


def allowed(policies: list[Obj], src: Peer, dst: Peer, port: int, protocol: str = "TCP") -> bool:
    """Whether src may open port on dst under these policies (both directions must allow it)."""

    def side(pod: Peer, direction: str, other: Peer) -> bool:
        if pod is None or NAMESPACE in pod:  # these policies select pods of their own namespace only
            return True
        selecting = [p["spec"] for p in policies if matches(p["spec"]["podSelector"], pod)]
        isolating = [s for s in selecting if direction in s["policyTypes"]]
        if not isolating:
            return True
        key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        return any(
            _peer_matches(rule.get(peers), other) and _port_matches(rule.get("ports"), port, protocol)
            for spec in isolating
            for rule in spec.get(key, [])
        )

    return side(src, "Egress", dst) and side(dst, "Ingress", src)


@pytest.mark.parametrize("overlay", ("overlays/dev", "overlays/prod"))
def test_network_policies_confine_sandboxes_to_the_model_proxy(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Sandboxes reach only the service's proxy port; nothing reaches them; the service reaches what it needs."""
    policies = [o for o in rendered[overlay] if o["kind"] == "NetworkPolicy"]
    other_pod = {"app.kubernetes.io/name": "something-else"}
    # Sandbox pods: one way out, the model proxy of a service pod.
    assert allowed(policies, SANDBOX, SERVICE, 8081)
    assert not allowed(policies, SANDBOX, SERVICE, 8080)
    assert not allowed(policies, SANDBOX, OUTSIDE, 443)
    assert not allowed(policies, SANDBOX, OUTSIDE, 53, "UDP")
    assert not allowed(policies, SANDBOX, DATABASE, 5432)
    assert not allowed(policies, SANDBOX, SANDBOX, 8081)
    assert not allowed(policies, SANDBOX, other_pod, 80)
    # Nothing opens a connection to a sandbox (the service uses the API server's attach).
    for src in (SERVICE, SANDBOX, OUTSIDE, other_pod):
        assert not allowed(policies, src, SANDBOX, 8080)
    # Service pods: clients in, metrics only for the monitoring namespace, the proxy only for sandboxes.
    assert allowed(policies, OUTSIDE, SERVICE, 8080)
    assert allowed(policies, MONITORING, SERVICE, 9090)
    for src in (OUTSIDE, ELSEWHERE, other_pod, SANDBOX):
        assert not allowed(policies, src, SERVICE, 9090)
    assert not allowed(policies, OUTSIDE, SERVICE, 8081)
    assert not allowed(policies, other_pod, SERVICE, 8081)
    for port, protocol in ((53, "UDP"), (443, "TCP"), (6443, "TCP"), (5432, "TCP")):
        assert allowed(policies, SERVICE, OUTSIDE, port, protocol)
    assert not allowed(policies, SERVICE, OUTSIDE, 22)
    # Database (dev): only the service.
    if overlay.endswith("dev"):
        assert allowed(policies, SERVICE, DATABASE, 5432)
        assert not allowed(policies, other_pod, DATABASE, 5432)
        assert not allowed(policies, DATABASE, OUTSIDE, 443)
    # Anything else in the namespace is denied by default.
    assert not allowed(policies, other_pod, OUTSIDE, 443)


@pytest.mark.parametrize("overlay", ("overlays/dev", "overlays/prod"))
def test_sandbox_pods_the_backend_builds_fit_these_manifests(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """A sandbox pod as the backend builds it from this config: schema-valid, Pod Security restricted, confined."""
    objs = rendered[overlay]
    config = config_data(objs)
    namespace = one(objs, "Namespace")["metadata"]["name"]
    pod = make_pod(
        SandboxSpec("sess-1", "0123abcd4567", Path("/unused"), Path("/unused.sock")),
        PodConfig(
            namespace=namespace,
            image=config["MOORAGE_SANDBOX_IMAGE"],
            replica="moorage-7d9f-abcde",
            memory_bytes=int(config["MOORAGE_SANDBOX_MEMORY_BYTES"]),
            cpus=float(config["MOORAGE_SANDBOX_CPUS"]),
            workspace_bytes=256 * 1024**2,
            runtime_class="gvisor",
        ),
    )
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    # Pod Security "restricted" (the namespace enforces it): non-root, seccomp, no escalation, drop ALL.
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert not container.get("ports"), "nothing connects to a sandbox"
    assert all(set(volume) <= {"name", "emptyDir"} for volume in spec["volumes"])
    # The policies written for sandbox pods select this one, and confine it.
    labels = pod["metadata"]["labels"]
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert matches(one(objs, "NetworkPolicy", "moorage-sandbox")["spec"]["podSelector"], labels)
    assert allowed(policies, labels, SERVICE, 8081)
    assert not allowed(policies, labels, OUTSIDE, 443)
    assert not allowed(policies, OUTSIDE, labels, 8080)
