"""A Kubernetes API server that knows only the recorded contract
(tests/contracts/kubernetes/core-v1-pods.json), for the Kubernetes backend's
tests: no cluster can run on these machines.

It is a real aiohttp server on 127.0.0.1:0 that the real kubernetes_asyncio
client talks to. Every request must match one request of the contract
(method, path, query, required body fields, websocket headers); any other is
answered 500 and recorded in ``violations``, which the tests assert empty.
Answers are the contract's recorded objects. Behind the attach websocket it
plays the kubelet: it runs the pod's own container command (the real agent
runner, from this venv) with the pod's env, its emptyDirs mapped to
temporary directories, and splices the process's stdio onto the channel
protocol (``v4.channel.k8s.io``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

CONTRACT = Path(__file__).parent / "contracts" / "kubernetes" / "core-v1-pods.json"
NOW = "2026-11-22T01:00:00Z"
TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # what the API server's ParseBool reads as true
FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass
class FakePod:
    body: dict[str, Any]
    statuses: list[str]  # what successive reads show until the runner runs
    status_name: str = "pending_creating"
    exit_code: int | None = None
    grace: int | None = None
    proc: asyncio.subprocess.Process | None = None
    attached: bool = False
    root: Path | None = None


@dataclass
class ContractServer:
    namespace: str
    root: Path
    # Test knobs: the status progression new pods show, and special answers.
    statuses: list[str] = field(default_factory=lambda: ["pending_creating", "running"])
    create_answer: str = "pod_created"
    list_answer: str = "pod_list"
    oom_after_first_output: bool = False
    pods: dict[str, FakePod] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)  # request ids, in order
    violations: list[str] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self.contract: dict[str, Any] = json.loads(CONTRACT.read_text())
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> ContractServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        for pod in self.pods.values():
            if pod.proc is not None and pod.proc.returncode is None:
                pod.proc.kill()
                await pod.proc.wait()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def seed(self, name: str, labels: dict[str, str]) -> None:
        """A pod that exists before the test (left by an earlier run)."""
        container = {"name": "runner", "image": "moorage-sandbox:0.1.0", "stdin": True, "stdinOnce": True}
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [container]},
        }
        self._admit(body, ["running"])

    # ---- matching requests against the contract ------------------------------

    def _match(self, request: web.Request) -> tuple[dict[str, Any], dict[str, str]] | None:
        for spec in self.contract["requests"]:
            if spec["method"] != request.method:
                continue
            pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[a-z0-9.-]+)", re.escape(spec["path"])) + "$"
            found = re.match(pattern, request.path)
            if found is None or found.group("ns") != self.namespace:
                continue
            return spec, found.groupdict()
        return None

    def _query_problem(self, spec: dict[str, Any], request: web.Request) -> str | None:
        query = {k: _bool(v) for k, v in request.query.items()}
        exact: dict[str, str] = spec.get("query") or {}
        required = set(spec.get("query_required", []))
        allowed = set(exact) | required | set(spec.get("query_allowed", []))
        if set(query) - allowed:
            return f"unexpected query {sorted(set(query) - allowed)}"
        if missing := (required | set(exact)) - set(query):
            return f"missing query {sorted(missing)}"
        wrong = {k: query[k] for k, v in exact.items() if query[k] != v}
        return f"query values {wrong} differ from the contract" if wrong else None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        matched = self._match(request)
        if matched is None:
            return self._violation(f"{request.method} {request.path_qs} is not in the contract")
        spec, params = matched
        problem = self._query_problem(spec, request)
        for header, value in (spec.get("headers") or {}).items():
            if value not in request.headers.get(header, "").lower():
                problem = f"header {header}: {request.headers.get(header)!r} is not {value!r}"
        if spec["method"] == "POST":
            body = await request.json()
            for path in spec.get("body_required", []):
                if _dig(body, path) is None:
                    problem = f"body lacks {path}"
        else:
            body = None
        if problem:
            return self._violation(f"{spec['id']}: {problem}")
        self.seen.append(spec["id"])
        handler = getattr(self, "_" + spec["id"])
        result: web.StreamResponse = await handler(request, params.get("name", ""), body)
        return result

    def _violation(self, message: str) -> web.Response:
        self.violations.append(message)
        return web.json_response({"kind": "Status", "status": "Failure", "message": message, "code": 500}, status=500)

    # ---- answers -------------------------------------------------------------

    def _answer(self, answer_id: str, name: str, pod: FakePod | None = None, **extra: Any) -> web.Response:
        answer = self.contract["answers"][answer_id]
        body: Any = answer.get("body")
        if body == "$pod":
            assert pod is not None
            body = self._pod_json(pod)
            body["metadata"].update(_fill(answer.get("metadata", {}), name, self.namespace, pod, extra))
            if "pod_status" in answer:  # a create answers before anything ran
                body["status"] = dict(answer["pod_status"])
        else:
            body = _fill(body, name, self.namespace, pod, extra)
        return web.json_response(body, status=answer["status"])

    def _pod_json(self, pod: FakePod) -> dict[str, Any]:
        body = json.loads(json.dumps(pod.body))
        name = body["metadata"]["name"]
        status = self.contract["pod_statuses"][pod.status_name]
        body["status"] = _fill(status, name, self.namespace, pod, {})
        return dict(body)

    def _admit(self, body: dict[str, Any], statuses: list[str]) -> FakePod:
        name = body["metadata"]["name"]
        meta = _fill(self.contract["server_metadata"], name, self.namespace, None, {})
        body["metadata"] = {**body["metadata"], **meta, "namespace": self.namespace}
        pod = FakePod(body, list(statuses))
        pod.status_name = pod.statuses[0] if len(pod.statuses) == 1 else "pending_creating"
        self.pods[name] = pod
        return pod

    async def _create_pod(self, request: web.Request, name: str, body: Any) -> web.Response:
        name = body["metadata"]["name"]
        if self.create_answer != "pod_created":
            return self._answer(self.create_answer, name)
        if name in self.pods:
            return self._answer("already_exists", name)
        pod = self._admit(body, self.statuses)
        response = self._answer("pod_created", name, pod)
        return response

    async def _read_pod(self, request: web.Request, name: str, body: Any) -> web.Response:
        pod = self.pods.get(name)
        if pod is None:
            return self._answer("not_found", name)
        if pod.statuses and not pod.attached:
            pod.status_name = pod.statuses.pop(0) if len(pod.statuses) > 1 else pod.statuses[0]
        return self._answer("pod", name, pod)

    async def _delete_pod(self, request: web.Request, name: str, body: Any) -> web.Response:
        pod = self.pods.get(name)
        if pod is None:
            return self._answer("not_found", name)
        grace = int(request.query.get("gracePeriodSeconds", "30"))
        pod.grace = grace
        response = self._answer("pod_deleting", name, pod, grace=grace)
        # The kubelet: SIGTERM, the grace period, SIGKILL; then the object goes.
        if pod.proc is not None and pod.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                pod.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(pod.proc.wait(), max(grace, 0.1))
            except TimeoutError:
                pod.proc.kill()
                await pod.proc.wait()
        del self.pods[name]
        return response

    async def _list_pods(self, request: web.Request, name: str, body: Any) -> web.Response:
        if self.list_answer != "pod_list":
            return self._answer(self.list_answer, "")
        wanted = {}
        for term in request.query["labelSelector"].split(","):
            key, op, value = term.partition("=")
            if not op or key.endswith("!"):
                self.violations.append(f"list_pods: selector {term!r} is not an equality")
            wanted[key] = value
        items = [
            self._pod_json(p)
            for p in self.pods.values()
            if all(p.body["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
        ]
        return self._answer("pod_list", "", None, pods=items[: int(request.query["limit"])])

    async def _attach_pod(self, request: web.Request, name: str, body: Any) -> web.StreamResponse:
        pod = self.pods.get(name)
        if pod is None or pod.status_name != "running" or pod.attached:
            return self._answer("attach_not_running", name)
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        if ws.ws_protocol != "v4.channel.k8s.io":
            self.violations.append("attach_pod: subprotocol v4.channel.k8s.io was not negotiated")
        pod.attached = True
        pod.proc = await self._run_container(pod)
        await self._splice(pod, ws)
        return ws

    # ---- the kubelet ---------------------------------------------------------

    async def _run_container(self, pod: FakePod) -> asyncio.subprocess.Process:
        container = pod.body["spec"]["containers"][0]
        pod.root = self.root / pod.body["metadata"]["name"]
        volumes = {}
        for mount in container["volumeMounts"]:
            volumes[mount["mountPath"]] = pod.root / mount["name"]
            volumes[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
        env = {e["name"]: volumes.get(e["value"], e["value"]) for e in container["env"]}
        env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
        # The pod's runAsUser (as root; otherwise this test's own uid is already not root).
        uid = pod.body["spec"]["securityContext"]["runAsUser"] if os.geteuid() == 0 else None
        for path in (pod.root, *volumes.values()):
            path.chmod(0o777)  # emptyDirs are world-writable, as a kubelet makes them
        return await asyncio.create_subprocess_exec(
            # The image's entrypoint (tini) is not here: run the container's command and args.
            *container.get("command", []),
            *container.get("args", []),
            cwd=volumes[container["workingDir"]],
            env={k: str(v) for k, v in env.items()},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            user=uid,
            group=uid,
            extra_groups=[] if uid is not None else None,
        )

    async def _splice(self, pod: FakePod, ws: web.WebSocketResponse) -> None:
        proc = pod.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        async def inbound() -> None:
            async for message in ws:
                if message.type == WSMsgType.BINARY and message.data[:1] == b"\x00":
                    with contextlib.suppress(ConnectionError):
                        stdin.write(message.data[1:])
                        await stdin.drain()
            stdin.close()  # stdinOnce: the attach ended, so does the runner's input

        async def outbound(stream: asyncio.StreamReader, channel: int) -> None:
            while chunk := await stream.read(65536):
                if channel == 1 and self.oom_after_first_output and proc.returncode is None:
                    # The kernel's OOM killer, as the kubelet reports it.
                    pod.status_name = "oom_killed"
                    proc.kill()
                if not ws.closed:
                    with contextlib.suppress(ConnectionError):
                        await ws.send_bytes(bytes([channel]) + chunk)

        reader = asyncio.create_task(inbound())
        self._tasks.add(reader)
        await asyncio.gather(outbound(stdout, 1), outbound(stderr, 2))
        code = await proc.wait()
        pod.exit_code = 137 if code < 0 else code
        if pod.status_name != "oom_killed":
            pod.status_name = "succeeded" if code == 0 else "failed"
        await ws.close()
        reader.cancel()


def _bool(value: str) -> str:
    return "true" if value in TRUE else "false" if value in FALSE else value


def _dig(body: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(body, dict):
            return None
        body = body.get(part)
    return body


def _fill(template: Any, name: str, ns: str, pod: FakePod | None, extra: dict[str, Any]) -> Any:
    """The contract's recorded object with this pod's values put in."""
    if isinstance(template, dict):
        return {k: _fill(v, name, ns, pod, extra) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, name, ns, pod, extra) for v in template]
    if isinstance(template, str):
        if template.startswith("$"):
            key = template[1:]
            if key == "exit":
                return pod.exit_code if pod is not None and pod.exit_code is not None else 0
            return extra[key]
        return (
            template.replace("{name}", name)
            .replace("{ns}", ns)
            .replace("{now}", NOW)
            .replace("{uid}", str(uuid.uuid5(uuid.NAMESPACE_DNS, name)))
            .replace("{ip}", "10.244.1.23")
        )
    return template


class ContractServerThread:
    """A ContractServer on an event loop of its own, for tests that block
    their own loop (the service as a process, ``run_service``)."""

    def __init__(self, namespace: str, root: Path) -> None:
        self.server = ContractServer(namespace, root)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="kube-contract")

    def start(self) -> ContractServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=10)
        return self.server

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that points kubernetes_asyncio at this server."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "contract", "cluster": {"server": self.server.url}}],
            "users": [{"name": "moorage", "user": {"token": "not-a-real-token"}}],
            "contexts": [{"name": "contract", "context": {"cluster": "contract", "user": "moorage"}}],
            "current-context": "contract",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path
