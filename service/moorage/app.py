"""The Starlette application: routes, the WebSocket endpoint and the lifespan
that builds every shared object (nothing is created at import time)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from moorage_session_store import (
    Agents,
    Database,
    Files,
    MoorageStoreError,
    Replicas,
    SQLModelSessionStore,
    TenantSpend,
    Tokens,
    Vaults,
    WebhookOutbox,
)
from moorage_session_store.commands import COMMANDS_CHANNEL, DONE_CHANNEL, Command, SessionCommands
from moorage_session_store.events import EVENTS_CHANNEL, SessionEvents
from moorage_session_store.records import SessionRecord, SessionRecords
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from .accounting import Accounting
from .agents_api import routes as agents_routes
from .agents_api import session_agent
from .auth import AuthConfigError, Authenticator, credentials, is_loopback, parse_api_keys
from .bounded import ByteQueue, text_bytes
from .commands import CommandRouter
from .console import console_routes
from .edge import EdgeGuard, OriginPolicy
from .egress import ModelProxy, ProxyLimits
from .egress_intercept import Interceptor, upstream_context
from .environments_api import routes as environments_routes
from .errors import STORE_ERRORS, Code, MoorageError, ProtocolError, close_code, store_unavailable
from .events_api import routes as events_routes
from .events_api import run_command
from .file_blobs import BlobJanitor, blob_store
from .files_api import routes as files_routes
from .heartbeat import Heartbeat
from .http_api import api_routes
from .limits import TenantBuckets, TokenBucket
from .ma_views import Projections
from .manager import SessionManager
from .metrics import Metrics
from .notify import Notifications
from .packages import PackageLayers
from .packages import builder as package_builder
from .pool import WarmPool
from .protocol import (
    PingFrame,
    Subscriber,
    dumps,
    parse_client_frame,
)
from .replay import Plan, ReplayGate, parse_after, plan, replay
from .resources_api import mount_command
from .resources_api import routes as resources_routes
from .sandbox.base import SandboxBackend
from .sessions import Deps, Session
from .sessions_api import ACCEPT_WAIT_S
from .sessions_api import routes as sessions_routes
from .settings import Settings
from .sweep import socket_prefix
from .tunnel import Tunnel, parse_allowlist, parse_networks
from .vault_crypto import SecretBox
from .vault_proxy import McpProxy, StoreCredentials
from .vaults_api import routes as vaults_routes
from .warm_plan import Bounds
from .webhook_delivery import WebhookConfig, WebhookSender
from .webhook_events import announcements
from .webhooks_api import routes as webhooks_routes
from .workspace_files import routes as workspace_routes
from .ws_remote import apply_frame, deliver_frame, runs_elsewhere, serve_remote

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = 1
# Bytes of frames waiting for one slow client (MOORAGE_CLIENT_QUEUE_BYTES).
CLIENT_QUEUE_BYTES = 4 * 1024 * 1024
_CLOSE = object()


@dataclass
class Services:
    settings: Settings
    backend: SandboxBackend
    proxy: ModelProxy
    sessions: SessionManager
    db: Database
    metrics: Metrics
    auth: Authenticator
    turn_limits: TenantBuckets
    projections: Projections  # the HTTP view of session logs (ma_views.py)
    commands: CommandRouter  # requests for sessions another replica runs (commands.py)
    # Open connections that came in with a database token, by token id.
    token_conns: dict[WsConnection, str] = field(default_factory=dict)
    # Seals and opens vault credentials (MOORAGE_SECRET_KEY, vault_crypto.py); None: no key set.
    vault_box: SecretBox | None = None
    # Files, their bytes where MOORAGE_FILE_STORE says (file_blobs.py); None: in the database.
    files: Files | None = None

    def files_repo(self) -> Files:
        """The files repository every handler uses (one object store client, shared)."""
        return self.files if self.files is not None else Files(self.db)


async def cut_revoked(services: Services) -> None:
    """Every auth-cache period, close the connections whose database token
    was revoked (or expired) since they came in: a revocation ends access,
    not only new handshakes. One query for all open connections."""
    while True:
        await asyncio.sleep(services.settings.auth_cache_ttl_s)
        if not services.token_conns:
            continue
        try:
            gone = await Tokens(services.db).no_longer_valid(set(services.token_conns.values()))
        except STORE_ERRORS:
            continue  # checked again next period
        for conn, token_id in list(services.token_conns.items()):
            if token_id in gone:
                log.info("client_cut", reason="token_no_longer_valid", token_id=token_id)
                error = MoorageError("this connection's token was revoked or expired", code=Code.UNAUTHORIZED)
                error.fatal = True
                conn.offer(dumps(error.frame()))
                conn.close(close_code(Code.UNAUTHORIZED), Code.UNAUTHORIZED)
                services.token_conns.pop(conn, None)


def appended(sessions: SessionManager, payload: str) -> None:
    """A notification ``'<session id> <seq>'``: some replica wrote the session's log up to seq.
    Streams here read it, unless the session runs here (its own fan-out woke them already)."""
    session_id, _, seq = payload.partition(" ")
    if seq.isdigit() and not sessions.runs(session_id):
        sessions.deps.watch.appended(session_id, int(seq))


def sandbox_toolbox(settings: Settings, backend: SandboxBackend) -> Path | None:
    """The toolbox environment packages are built over: the local backend's own; for Docker,
    this host's (the image carries the same lock); none for Kubernetes (no layers there)."""
    if settings.sandbox == "docker":
        from .sandbox.toolbox import resolve

        with contextlib.suppress(MoorageError):  # no usable toolbox here: layers over the base Python
            return resolve(settings.sandbox_toolbox, sys.prefix, sys.base_prefix)
        return None
    if settings.sandbox == "local":
        from .sandbox.local import LocalBackend

        return backend.toolbox if isinstance(backend, LocalBackend) else None
    return None


async def make_backend(settings: Settings) -> SandboxBackend:
    if settings.sandbox == "local":
        from .sandbox.cgroups import Limits
        from .sandbox.local import LocalBackend, Runtime
        from .sandbox.toolbox import resolve

        limits = Limits(settings.sandbox_memory_bytes, settings.sandbox_pids, settings.sandbox_cpus)
        runtime = Runtime.discover()
        backend = LocalBackend(
            settings.state_dir,
            settings.sandbox_uid_base,
            settings.sandbox_uid_count,
            runtime=runtime,
            limits=limits,
            seccomp=settings.sandbox_seccomp,
            workspace_bytes=settings.workspace_max_bytes,
            tmp_bytes=settings.sandbox_tmp_bytes,
            start_timeout_s=settings.sandbox_start_timeout_s,
            session_bytes=settings.session_files_bytes,
            toolbox=resolve(settings.sandbox_toolbox, runtime.prefix, runtime.base_prefix),
        )
        await backend.check()
        return backend
    if settings.sandbox == "docker":
        from .sandbox.cgroups import Limits
        from .sandbox.docker import DockerBackend
        from .sandbox.uids import UidPool

        limits = Limits(settings.sandbox_memory_bytes, settings.sandbox_pids, settings.sandbox_cpus)
        # As root, a host uid of its own per container (locks shared with local sandboxes).
        uids = UidPool.shared(settings.sandbox_uid_base, settings.sandbox_uid_count) if os.geteuid() == 0 else None
        docker = DockerBackend(
            settings.docker_url,
            settings.sandbox_image,
            limits,
            settings.replica,
            settings.sandbox_tmp_bytes,
            uids,
            settings.state_dir,
            settings.workspace_max_bytes,
            settings.session_files_bytes,
        )
        await docker.check()
        return docker
    if settings.sandbox == "kubernetes":
        from .sandbox.kubernetes import from_settings

        kube = from_settings(settings)
        await kube.check()
        return kube
    raise MoorageError(f"MOORAGE_SANDBOX={settings.sandbox} is not available yet; use 'local'")


class WsConnection:
    """One client socket: an outbound queue bounded in bytes (``queue_bytes``,
    MOORAGE_CLIENT_QUEUE_BYTES), drained by one writer. A frame that does not
    fit means the client is not keeping up: ``offer`` says so and the session
    drops it (``slow_consumer``). Broadcast texts are one ``str`` shared by
    every connection's queue, never copied per client."""

    def __init__(
        self, ws: WebSocket, metrics: Metrics, bucket: TokenBucket, queue_bytes: int = CLIENT_QUEUE_BYTES
    ) -> None:
        self.ws = ws
        self.metrics = metrics
        self.bucket = bucket
        self.queue: ByteQueue[object] = ByteQueue(queue_bytes)
        self.close_with: tuple[int, str] | None = None
        self.overflowed = False  # a frame did not fit: the client is not keeping up

    def offer(self, text: str) -> bool:
        if self.close_with is not None:
            return True
        if not self.queue.offer(text, text_bytes(text)):
            self.overflowed = True
        return not self.overflowed

    async def put(self, text: str) -> None:
        """Queue ``text``, waiting for room (a replay: backpressure instead of ``slow_consumer``)."""
        if self.close_with is None:
            await self.queue.put(text, text_bytes(text))

    def close(self, code: int, reason: str) -> None:
        if self.close_with is not None:
            return
        self.close_with = (code, reason)
        if self.overflowed:  # a slow consumer loses its backlog, not its close
            self.queue.clear()
        self.queue.force(_CLOSE)

    async def receive(self) -> str | bytes | None:
        """The client's next frame, counted (``None``: it disconnected)."""
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        self.metrics.frames.labels("in").inc()
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def write(self) -> None:
        while (item := await self.queue.get()) is not _CLOSE:
            assert isinstance(item, str)
            await self.ws.send_text(item)
            self.metrics.frames.labels("out").inc()
        code, reason = self.close_with or (1000, "")
        if self.ws.application_state == WebSocketState.CONNECTED:
            await self.ws.close(code, reason[:120])


async def _dispatch(services: Services, session: Session, conn: WsConnection, raw: str | bytes) -> None:
    if wait := conn.bucket.take(time.monotonic()):
        raise ProtocolError(f"too many frames: retry in {wait:.1f}s", code=Code.RATE_LIMITED)
    frame = parse_client_frame(raw)
    if isinstance(frame, PingFrame):
        session.emit({"type": "pong", "id": frame.id}, durable=False, to=conn)
    else:
        await deliver_frame(services, session, frame)


async def apply_command(services: Services, command: Command) -> dict[str, Any]:
    """A command another replica took for a session that runs here (commands.py): a WebSocket
    client's frame (ws_remote.py) or a ``POST …/events`` body (events_api.py)."""
    if "frame" in command.body:
        return await apply_frame(services, command)
    if "mount_resource" in command.body:
        return await mount_command(services, command)
    return await run_command(services, command)


async def _read(services: Services, session: Session, conn: WsConnection) -> None:
    while (raw := await conn.receive()) is not None:
        try:
            await _dispatch(services, session, conn, raw)
        except MoorageError as exc:
            session.emit(exc.frame(), durable=False, to=conn)  # a reply to this connection only
            if exc.fatal:
                conn.close(close_code(exc.code), exc.code)
                return
        except TimeoutError:
            error = MoorageError("the sandbox did not become ready in time", code=Code.SANDBOX_START_FAILED, fatal=True)
            session.emit(error.frame(), durable=False, to=conn)


async def session_socket(ws: WebSocket) -> None:
    services: Services = ws.app.state.services
    creds = credentials(ws)
    try:
        verdict = await services.auth.verdict(creds.token)
    except STORE_ERRORS as exc:
        # Cannot tell who this is: refuse, retryably, and let nobody in by default.
        services.metrics.errors.labels(str(Code.STORE_UNAVAILABLE)).inc()
        error = exc.message if isinstance(exc, MoorageStoreError) else type(exc).__name__
        log.warning("client_refused", reason="store_unavailable", error=error)
        body = {"type": "error", "code": str(Code.STORE_UNAVAILABLE), "message": "cannot check tokens: try again"}
        await ws.send_denial_response(JSONResponse(body, status_code=503, headers={"retry-after": "5"}))
        return
    tenant = verdict.tenant
    if tenant is None:
        # Refused at the handshake, before any sandbox is touched.
        services.metrics.errors.labels(str(Code.UNAUTHORIZED)).inc()
        log.info("client_refused", reason="unauthorized", detail=verdict.reason, token_id=verdict.token_id)
        body = {"type": "error", "code": str(Code.UNAUTHORIZED), "message": "a valid bearer token is required"}
        await ws.send_denial_response(JSONResponse(body, status_code=401, headers={"www-authenticate": "Bearer"}))
        return
    if services.sessions.draining:
        body = {"type": "error", "code": str(Code.SERVICE_DRAINING), "message": "the service is restarting"}
        await ws.send_denial_response(JSONResponse(body, status_code=503, headers={"retry-after": "1"}))
        return
    await ws.accept(subprotocol=creds.subprotocol)
    conn = WsConnection(
        ws,
        services.metrics,
        TokenBucket(services.settings.frames_per_s, services.settings.frames_burst),
        services.settings.client_queue_bytes,
    )
    services.metrics.ws_connections_active.inc()
    if verdict.token_id is not None:
        services.token_conns[conn] = verdict.token_id
    try:
        await _serve(services, conn, tenant)
    finally:
        services.token_conns.pop(conn, None)
        services.metrics.ws_connections_active.dec()


async def _serve(services: Services, conn: WsConnection, tenant: str) -> None:
    ws = conn.ws
    writer = asyncio.create_task(conn.write())
    session_id = ws.path_params.get("session_id")
    sub: Subscriber = conn
    replaying: asyncio.Task[None] | None = None
    remote: SessionRecord | None = None
    try:
        after = parse_after(ws.query_params.get("after"))  # before any session is touched
        if session_id is None:
            query = ws.query_params
            agent = await session_agent(Agents(services.db), tenant, query.get("agent"), query.get("version"))
            session, state = await services.sessions.create(tenant, agent), "new"
        else:
            remote = await runs_elsewhere(services, session_id, tenant)
            if remote is not None and await services.sessions.ask_handover(remote):
                remote = None  # its owner was not using it: run it here, next to its client
            if remote is None:
                session, state = await services.sessions.attach(session_id, tenant)
        if remote is None:
            sub, p = await _attach(session, conn, state, after)
    except MoorageError as exc:
        services.metrics.errors.labels(str(exc.code)).inc()
        conn.offer(dumps(exc.frame()))
        conn.close(close_code(exc.code), exc.code)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, 5)
        return
    if remote is not None:  # another replica runs it: follow it from here (ws_remote.py)
        try:
            await serve_remote(services, conn, writer, remote, after)
        finally:
            await _finish(conn, writer)
        return
    if p is not None and isinstance(sub, ReplayGate):
        replaying = asyncio.create_task(_replay(session, conn, sub, p))
    reader = asyncio.create_task(_read(services, session, conn))
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        session.detach(sub)
        if replaying is not None:
            replaying.cancel()
        reader.cancel()
        await _finish(conn, writer)


async def _finish(conn: WsConnection, writer: asyncio.Task[None]) -> None:
    """Close the connection (if nothing closed it yet) once its queue is sent (bounded)."""
    conn.close(1000, "")
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(writer, 5)
    writer.cancel()


async def _attach(
    session: Session, conn: WsConnection, state: str, after: int | None
) -> tuple[Subscriber, Plan | None]:
    """Send the ``session`` frame (with ``last_seq``) and attach the connection: directly (live
    only), or behind a ``ReplayGate`` when it asked to replay from ``after``. The ``last_seq`` is
    read in the same step as the attach, so the replay and the live frames meet exactly there."""
    try:
        await session.events.open()  # the log's last seq, from the store (after a restart too)
        first = (await session.events.store.bounds(session.id))[0] if after is not None else 0
    except STORE_ERRORS as exc:
        raise MoorageError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True) from exc
    # No await from here on: nothing is broadcast between reading last_seq and attaching.
    upto = session.events.last_seq
    p = plan(after, first, upto) if after is not None else None
    frame: dict[str, object] = {
        "type": "session",
        "session_id": session.id,
        "state": state,
        "protocol": PROTOCOL_VERSION,
        "last_seq": upto,
        # Its sandbox: "starting" (a ``status`` frame says when it is ready) or "ready".
        "sandbox": "ready" if session.ready.is_set() else "starting",
    }
    if p is not None:
        frame["truncated"] = p.truncated
    if session.agent is not None:
        frame["agent"] = {"id": session.agent["id"], "version": session.agent["version"]}
    conn.offer(dumps(frame))
    sub: Subscriber = conn if p is None else ReplayGate(conn, conn.queue.budget.limit)
    session.attach(sub, replaying=p is not None)
    return sub, p


async def _replay(session: Session, conn: WsConnection, gate: ReplayGate, p: Plan) -> None:
    """Send the frames the client missed from the store, then let the live ones through."""
    try:
        last = await replay(session.events.store, session.id, p, conn.put)
    except STORE_ERRORS as exc:
        error = MoorageError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True)
        conn.offer(dumps(error.frame()))
        conn.close(close_code(error.code), error.code)
        return
    gate.release(last)


async def healthz(request: Request) -> JSONResponse:
    """The process is alive (liveness)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready for new sessions: the database answers and the backend can sandbox."""
    services: Services = request.app.state.services
    if services.sessions.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    failed: dict[str, str] = {}
    try:
        await services.db.ping(timeout_s=2.0)
    except STORE_ERRORS as exc:
        failed["database"] = type(exc).__name__
    problem = await services.backend.ready()
    if problem:
        failed["sandbox"] = problem
    if failed:
        return JSONResponse({"status": "not ready", "failed": failed}, status_code=503)
    return JSONResponse({"status": "ready"})


async def metrics_endpoint(request: Request) -> Response:
    registry = request.app.state.services.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings) -> Starlette:
    keys = parse_api_keys(settings.api_keys)  # AuthConfigError before anything starts
    box = SecretBox.from_setting(settings.secret_key.get_secret_value())  # SecretKeyError, likewise
    try:
        origins = OriginPolicy.build(settings.allowed_origins, settings.host, settings.port)
    except ValueError as exc:
        raise AuthConfigError(str(exc)) from exc

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        db = await Database.connect(settings.database_url_or_default)
        # This replica's heartbeat (heartbeat.py): from start until the clean stop, which leaves.
        heartbeat = Heartbeat(Replicas(db), settings.replica, settings.lease_ttl_s / 3)
        blobs = blob_store(settings)  # files' bytes: the database, or an object store
        janitor: BlobJanitor | None = None
        try:
            await db.migrate()
            await heartbeat.start()
            loopback = is_loopback(settings.host)
            auth = Authenticator(keys, Tokens(db), allow_open=loopback, cache_ttl_s=settings.auth_cache_ttl_s)
            if await auth.open():
                log.warning(
                    "auth_disabled",
                    detail="no MOORAGE_API_KEYS and no issued tokens: every local client is tenant 'default'. "
                    "Loopback only; `moorage tokens create` turns authentication on.",
                )
            backend = await make_backend(settings)
            proxy = ModelProxy(
                None,
                settings.anthropic_base_url,
                settings.anthropic_api_key.get_secret_value(),
                ProxyLimits.from_settings(settings),
                prefix=socket_prefix(settings.state_dir),  # found again by the next start's sweep
            )
            metrics = Metrics(tuple(settings.prices))
            metrics.zero_http(api_routes(app.routes))
            accounting = Accounting(metrics, settings.prices, settings.max_budget_usd, settings.tenant_daily_budget_usd)
            proxy.meter = accounting
            accounting.spend = TenantSpend(db)
            with contextlib.suppress(*STORE_ERRORS):
                await accounting.sync()  # today's tenant totals, before the first request
            spend_sync = asyncio.create_task(accounting.sync_forever())
            await proxy.start()
            # Every sandbox gets a tunnel socket that allows nothing until its session sets its
            # policy (egress_policy.py): the environment's hosts, or MOORAGE_EGRESS_ALLOW.
            proxy.tunnel = Tunnel(
                proxy.socket_dir,
                lambda _sandbox, ok: metrics.egress_connections.labels("allowed" if ok else "refused").inc(),
                parse_networks(settings.egress_allow_networks),
                proxy.limits.connections_per_sandbox,
                proxy.limits.request_timeout_s,
            )
            # A session's MCP servers with a vault credential, reached through its model socket.
            proxy.mcp = McpProxy(
                StoreCredentials(Vaults(db), box),
                parse_networks(settings.egress_allow_networks),
                proxy.limits.request_max_bytes,
                proxy.limits.request_timeout_s,
                lambda outcome: metrics.vault_requests.labels(outcome).inc(),
            )
            await proxy.mcp.start()
            if box is not None:  # environment_variable credentials: TLS terminated for their hosts
                proxy.tunnel.interceptor = Interceptor(
                    StoreCredentials(Vaults(db), box),
                    upstream_context(settings.egress_upstream_ca_file),
                    box.mac,
                    lambda outcome: metrics.vault_requests.labels(outcome).inc(),
                )
            if rules := parse_allowlist(settings.egress_allow):
                log.info("egress_allowlist", hosts=[f"{r.host}:{r.port}" for r in rules])
            await backend.bind_proxy(proxy)  # kubernetes: the proxy's TCP port for pods
            workspaces = settings.state_dir.resolve() / "workspaces"
            pool = WarmPool(
                backend,
                proxy,
                workspaces,
                settings.warm_sandboxes,
                settings.sandbox_start_timeout_s,
                metrics,
                Bounds(
                    settings.warm_agents,
                    settings.warm_agents_per_spec,
                    settings.warm_agent_idle_s,
                    memory_bytes=settings.warm_agents_memory_bytes,
                ),
            )
            records = SessionRecords(db)
            if blobs is not None:
                await blobs.start()
                log.info("file_store", location=repr(blobs))
            files = Files(db, blobs)
            janitor = BlobJanitor(files, settings, metrics)  # deleted files' objects go
            janitor.start()
            toolbox = sandbox_toolbox(settings, backend)
            builder = package_builder(
                toolbox, settings.package_index_url, settings.package_build_timeout_s, settings.package_npm_registry
            )
            layers = PackageLayers(settings.package_cache_dir, builder, metrics)  # environments' packages
            deps = Deps(
                settings,
                backend,
                proxy,
                pool,
                records,
                SQLModelSessionStore(db),
                settings.replica,
                metrics,
                accounting,
                # A batch's webhook events go into the outbox in the batch's own transaction.
                SessionEvents(db, announce=announcements),
                files=files,  # the expiry sweep; resources in, outputs out (session_files.py)
                packages=layers,
                agents=Agents(db),  # the agents marked for warm-up (MOORAGE_WARM_AGENT_IDS)
            )
            proxy.observer = deps.spans  # each model request in its session's log
            sessions = SessionManager(deps)
            await sessions.start()  # recovery first: it may reap what a crashed run left
            pool.refill()
            turn_limits = TenantBuckets(settings.turns_per_minute_per_tenant / 60, settings.turns_per_minute_per_tenant)
            projections = Projections(deps.events)
            commands = CommandRouter(
                SessionCommands(db),
                records,
                settings.replica,
                sessions.runs,
                settings.sandbox_start_timeout_s + ACCEPT_WAIT_S,  # the owner may be starting it
            )
            app.state.services = services = Services(
                settings,
                backend,
                proxy,
                sessions,
                db,
                metrics,
                auth,
                turn_limits,
                projections,
                commands,
                vault_box=box,
                files=files,
            )
            commands.start(functools.partial(apply_command, services))
            # PostgreSQL: other replicas' appends wake this one's streams, commands wake owners
            # and senders (the notifications are wake-ups: everyone polls as well).
            notifications = Notifications(
                db,
                {
                    EVENTS_CHANNEL: functools.partial(appended, sessions),
                    COMMANDS_CHANNEL: commands.wake,
                    DONE_CHANNEL: commands.answered,
                },
                on_reconnect=deps.watch.everyone,
            )
            await notifications.start()
            revocations = asyncio.create_task(cut_revoked(services))
            webhooks = WebhookSender(WebhookOutbox(db), WebhookConfig.of(settings), settings.replica, metrics)
            webhooks.start()
            log.info(
                "service_started",
                backend=backend.name,
                host=settings.host,
                port=settings.port,
                replica=settings.replica,
            )
            try:
                yield
            finally:
                revocations.cancel()
                await webhooks.close()
                await notifications.close()
                await commands.close()
                await pool.close()
                await sessions.close()
                await layers.close()
                spend_sync.cancel()
                with contextlib.suppress(*STORE_ERRORS):
                    await accounting.sync()  # what this replica metered last
                await proxy.close()
                await backend.close()
                log.info("service_stopped")
        finally:
            if janitor is not None:
                await janitor.close()
            if blobs is not None:
                await blobs.close()
            await heartbeat.stop()
            await db.close()

    def refused(code: Code) -> None:
        if (services := app.state.services if hasattr(app.state, "services") else None) is not None:
            services.metrics.errors.labels(str(code)).inc()

    app = Starlette(
        middleware=[Middleware(EdgeGuard, policy=origins, metrics_port=settings.metrics_port, on_refused=refused)],
        routes=[
            *console_routes(),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            WebSocketRoute("/v1/sessions", session_socket),
            WebSocketRoute("/v1/sessions/{session_id}", session_socket),
            *sessions_routes(),
            *workspace_routes(),
            *events_routes(),
            *agents_routes(),
            *environments_routes(),
            *resources_routes(),
            *files_routes(),
            *webhooks_routes(),
            *vaults_routes(),
        ],
        lifespan=lifespan,
    )
    return app
