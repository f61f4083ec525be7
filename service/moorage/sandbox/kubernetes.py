"""Kubernetes sandbox backend: one Pod per sandbox (``kube_objects.make_pod``).

The channel is the runner's own stdin/stdout, reached through the API
server's attach websocket (``v4.channel.k8s.io``: each binary message starts
with a channel byte, 0 stdin, 1 stdout, 2 stderr, 3 error). The pod keeps
stdin open for exactly one attach (``stdinOnce``), so when the service's
attach ends, by ``stop`` or because the service died, the runner reads end of
input and exits. A sandbox therefore never outlives its service's channel and
is never re-adopted: a restarted replica deletes every pod labelled with its
replica id (``check``) and the session rehydrates from the database.

The model is reached through the service's TCP proxy port with a
per-sandbox path token (``egress_port``); the URL goes to the runner in the
``start`` frame, never into the pod spec, and the API key never enters the
pod. NetworkPolicies (k8s/) let sandbox pods talk to the service pods' proxy
port and nothing else.

No cluster runs where this is developed: the code is exercised against a
recorded API contract (tests/contracts/kubernetes, tests/integration/
test_kubernetes_contract.py), see k8s/README.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.stream import WsApiClient

from ..egress import ModelProxy
from ..egress_port import ProxyPort
from ..errors import Code, SandboxError
from ..settings import Settings
from .base import SandboxSpec
from .kube_objects import (
    CONTAINER,
    PodConfig,
    is_running,
    make_pod,
    replica_selector,
    start_failure,
    unschedulable,
)
from .kube_sandbox import STDIN, KubernetesSandbox, delays

log = structlog.get_logger(__name__)
T = TypeVar("T")

API_TIMEOUT_S = 10.0  # one API call
GONE_TIMEOUT_S = 30.0  # a deleted pod's object disappearing
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace() -> str:
    """The namespace this service runs in (in a pod), else ``moorage``."""
    try:
        return NAMESPACE_FILE.read_text().strip() or "moorage"
    except OSError:
        return "moorage"


def describe(exc: ApiException) -> str:
    """The API server's own words: the ``message`` of its Status object."""
    message = ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = str(json.loads(exc.body or "{}").get("message", ""))
    return f"{exc.status} {exc.reason}: {message or 'no detail'}"[:500]


async def load_api_config() -> k8s.Configuration:
    """The in-cluster service account when running in a pod, else kubeconfig."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except ConfigException:
        await k8s_config.load_kube_config(client_configuration=configuration)
    return configuration


async def _bounded(call: Awaitable[T], timeout_s: float = API_TIMEOUT_S) -> T:
    return await asyncio.wait_for(call, timeout_s)


class KubernetesBackend:
    """Starts sandbox pods through the Kubernetes API; see the module docstring."""

    name = "kubernetes"

    def __init__(
        self,
        config: PodConfig,
        start_timeout_s: float,
        proxy_host: str,
        proxy_port: int,
        api_config: k8s.Configuration | None = None,
    ) -> None:
        self.config = config
        self.start_timeout_s = start_timeout_s
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self._api_config = api_config
        self._api: k8s.ApiClient | None = None
        self._ws_api: WsApiClient | None = None
        self.port: ProxyPort | None = None
        self.live: dict[str, KubernetesSandbox] = {}

    @property
    def core(self) -> k8s.CoreV1Api:
        assert self._api is not None, "call check() first"
        return k8s.CoreV1Api(self._api)

    async def check(self) -> None:
        """Connect, check access, and delete the pods an earlier run of this
        replica left (their runners lost their channel when it ended)."""
        if self._api is None:
            configuration = self._api_config or await load_api_config()
            self._api = k8s.ApiClient(configuration)
            self._ws_api = WsApiClient(configuration)
        problem = await self._access_problem()
        if problem:
            raise SandboxError(f"cannot use Kubernetes: {problem}", code=Code.SANDBOX_START_FAILED)
        await self.reap_replica()

    async def bind_proxy(self, proxy: ModelProxy) -> None:
        """Serve the model proxy on the TCP port pods are allowed to reach."""
        self.port = ProxyPort(proxy, self.proxy_host, self.proxy_port, self.proxy_host)
        await self.port.start()

    def proxy_url(self, sandbox_id: str) -> str:
        if self.port is None:
            raise SandboxError("the model proxy port is not started", code=Code.SANDBOX_START_FAILED)
        return self.port.open(sandbox_id)

    async def start(self, spec: SandboxSpec) -> KubernetesSandbox:
        self.proxy_url(spec.sandbox_id)  # fail before creating anything
        body: Any = make_pod(spec, self.config)  # the client serializes plain JSON as it is
        name = body["metadata"]["name"]
        try:
            await _bounded(self.core.create_namespaced_pod(self.config.namespace, body))
        except ApiException as exc:
            self.release(spec.sandbox_id)
            raise SandboxError(
                f"cannot create the sandbox pod: {describe(exc)}", code=Code.SANDBOX_START_FAILED
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.release(spec.sandbox_id)
            raise SandboxError("the Kubernetes API server is unreachable", code=Code.SANDBOX_START_FAILED) from exc
        try:
            await self._wait_running(name)
            ws = await self._attach(name)
            # The pod's command starts the runner after this line: its
            # output from then on reaches us.
            await ws.send_bytes(bytes([STDIN]) + b"\n")
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.delete_pod(name, 0))
            self.release(spec.sandbox_id)
            raise
        sandbox = KubernetesSandbox(self, spec, name, ws)
        self.live[spec.sandbox_id] = sandbox
        log.info("sandbox_started", sandbox_id=spec.sandbox_id, pod=name, namespace=self.config.namespace)
        return sandbox

    async def _wait_running(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        waiting_for = "no status yet"
        for delay in delays():
            pod = await self.read_pod(name)
            if pod is None:
                raise SandboxError("the sandbox pod was deleted while starting", code=Code.SANDBOX_START_FAILED)
            if is_running(pod):
                return
            failure = start_failure(pod)
            if failure:
                raise SandboxError(f"sandbox did not start: {failure}", code=Code.SANDBOX_START_FAILED)
            reason = unschedulable(pod)
            waiting_for = f"no node fits it ({reason})" if reason else str((pod.get("status") or {}).get("phase"))
            if loop.time() + delay > deadline:
                raise SandboxError(
                    f"the sandbox pod did not start within {self.start_timeout_s:g}s: {waiting_for}",
                    code=Code.SANDBOX_START_FAILED,
                )
            await asyncio.sleep(delay)

    async def _attach(self, name: str) -> aiohttp.ClientWebSocketResponse:
        assert self._ws_api is not None
        try:
            pending: Any = await k8s.CoreV1Api(self._ws_api).connect_get_namespaced_pod_attach(
                name,
                self.config.namespace,
                container=CONTAINER,
                stdin=True,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
            )
            ws: aiohttp.ClientWebSocketResponse = await _bounded(pending)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SandboxError(f"cannot attach to the sandbox pod: {exc}", code=Code.SANDBOX_START_FAILED) from exc
        return ws

    async def read_pod(self, name: str) -> dict[str, Any] | None:
        """The pod as JSON, or None once it is gone. API trouble is retried by
        the caller's loop (a blip must not fail a start), so it reads as
        an empty status here."""
        try:
            pod = await _bounded(self.core.read_namespaced_pod(name, self.config.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            log.warning("sandbox_pod_read_failed", pod=name, error=describe(exc))
            return {}
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("sandbox_pod_read_failed", pod=name, error=type(exc).__name__)
            return {}
        assert self._api is not None
        return dict(self._api.sanitize_for_serialization(pod))

    async def delete_pod(self, name: str, grace_s: int) -> None:
        """Delete; idempotent (a pod already gone is fine)."""
        try:
            await _bounded(self.core.delete_namespaced_pod(name, self.config.namespace, grace_period_seconds=grace_s))
        except ApiException as exc:
            if exc.status != 404:
                log.warning("sandbox_pod_delete_failed", pod=name, error=describe(exc))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("sandbox_pod_delete_failed", pod=name, error=type(exc).__name__)

    async def wait_gone(self, name: str, timeout_s: float = GONE_TIMEOUT_S) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for delay in delays():
            if await self.read_pod(name) is None:
                return True
            if loop.time() + delay > deadline:
                return False
            await asyncio.sleep(delay)
        return False  # pragma: no cover (the delays never end)

    def release(self, sandbox_id: str) -> None:
        self.live.pop(sandbox_id, None)
        if self.port is not None:
            self.port.close_sandbox(sandbox_id)

    async def _access_problem(self) -> str | None:
        try:
            await _bounded(
                self.core.list_namespaced_pod(
                    self.config.namespace, label_selector=replica_selector(self.config.replica), limit=1
                ),
                5.0,
            )
        except ApiException as exc:
            if exc.status in (401, 403):
                return f"not allowed to list pods in namespace {self.config.namespace!r} (RBAC): {describe(exc)}"
            return describe(exc)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return "the Kubernetes API server is unreachable"
        return None

    async def ready(self) -> str | None:
        if self.port is None:
            return "the model proxy port is not started"
        return await self._access_problem()

    async def reap_replica(self) -> int:
        """Delete this replica's sandbox pods that no live sandbox owns."""
        ours = {s.name for s in self.live.values()}
        names: list[str] = []
        cont: str | None = None
        selector = replica_selector(self.config.replica)
        while True:
            if cont:
                listing = self.core.list_namespaced_pod(
                    self.config.namespace, label_selector=selector, limit=200, _continue=cont
                )
            else:
                listing = self.core.list_namespaced_pod(self.config.namespace, label_selector=selector, limit=200)
            page = await _bounded(listing)
            names += [p.metadata.name for p in page.items if p.metadata.name not in ours]
            cont = page.metadata._continue if page.metadata is not None else None
            if not cont:
                break
        for name in names:
            await self.delete_pod(name, 0)
        if names:
            log.info("sandbox_pods_reaped", count=len(names))
        return len(names)

    async def reap(self, handle: dict[str, Any]) -> None:
        """Delete the pod a previous run of the service recorded for a session."""
        name = handle.get("pod")
        if handle.get("backend") != "kubernetes" or not isinstance(name, str):
            return
        if name in {s.name for s in self.live.values()}:
            return
        await self.delete_pod(name, 0)

    async def close(self) -> None:
        await asyncio.gather(*(s.stop(2.0) for s in list(self.live.values())), return_exceptions=True)
        if self.port is not None:
            await self.port.close()
        for api in (self._api, self._ws_api):
            if api is not None:
                await api.close()


def from_settings(settings: Settings) -> KubernetesBackend:
    """The backend as MOORAGE_* settings describe it."""
    address = settings.pod_ip or settings.host
    if address in ("", "0.0.0.0", "::"):
        raise SandboxError(
            "MOORAGE_POD_IP is needed: sandbox pods reach the model proxy on this replica's pod IP "
            "(set it from the downward API, status.podIP)",
            code=Code.SANDBOX_START_FAILED,
        )
    namespace = settings.k8s_namespace or default_namespace()
    # An owner must live in its dependents' namespace: the garbage collector
    # deletes a pod whose owner it cannot find there.
    own = (settings.pod_name, settings.pod_uid) if settings.pod_name and settings.pod_uid else None
    config = PodConfig(
        namespace=namespace,
        image=settings.sandbox_image,
        replica=settings.replica,
        memory_bytes=settings.sandbox_memory_bytes,
        cpus=settings.sandbox_cpus,
        workspace_bytes=settings.workspace_max_bytes,
        session_bytes=settings.session_files_bytes,
        runtime_class=settings.k8s_runtime_class or None,
        owner_pod=own if own is not None and namespace == default_namespace() else None,
    )
    return KubernetesBackend(config, settings.sandbox_start_timeout_s, address, settings.proxy_port)
