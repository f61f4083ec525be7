"""Starting a session's sandbox: take a warm one or start one, restore the
saved workspace into it, send ``start`` and wait for ``ready``.

Everything here runs before the session serves a turn, on the session's own
task; the channel's order is checked frame by frame (``channel.RunnerChannel``)
and every wait is bounded by ``sandbox_start_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .bounded import sdk_buffer_bytes
from .channel import (
    ChannelViolation,
    FilePut,
    Garbage,
    Phase,
    PutFile,
    Reason,
    Restore,
    Restored,
    Rpc,
    RunnerChannel,
    RunnerError,
    ServiceFrame,
    Start,
)
from .channel import Ready as ReadyFrame
from .egress_intercept import Grant
from .egress_policy import TUNNEL_BACKENDS, describe
from .egress_secrets import SecretsUnavailable
from .errors import STORE_ERRORS, Code, SandboxError, store_unavailable
from .packages import BuildFailed, sandbox_layer_problem, wanted
from .pool import start_loaded
from .resources import resources_of
from .sandbox.base import MODEL_SOCKET, TUNNEL_SOCKET
from .session_files import not_mounted, put_frames
from .settings import Settings
from .workspaces import restore_frames

if TYPE_CHECKING:
    from .egress import ModelProxy
    from .pending import AgentTools
    from .sessions import Session
    from .tunnel import Policy

MODEL_PROXY = f"unix:{MODEL_SOCKET}"  # where every backend mounts the proxy
_Want = TypeVar("_Want", ReadyFrame, Restored, FilePut)


async def start_sandbox(session: Session) -> float:
    """Bring ``session``'s sandbox up to ``ready``; the seconds it took.
    Raises ``SandboxError`` (``sandbox_start_failed``, ``store_unavailable``,
    ``sandbox_crashed`` for a broken channel)."""
    settings = session.settings
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    layer = await _packages_layer(session)
    claimed = session.claimed
    # A session with packages starts its own sandbox: pooled ones were started without its layer.
    loaded = claimed.loaded if claimed is not None else session.pool.take() if layer is None else None
    warm = session.pool_kind = "started" if claimed is not None else "warm" if loaded is not None else "cold"
    if claimed is not None:  # its runner answered ``prestart``: ``start`` comes next
        session.channel = RunnerChannel(Phase.PRESTARTED)
    if loaded is None:
        loaded = await start_loaded(
            session.backend,
            session.proxy,
            session.pool.workspaces,
            settings.sandbox_start_timeout_s,
            session.metrics,
            session.id,
            layer,
        )
    session.sandbox, session.sandbox_id, session.workspace = loaded.sandbox, loaded.sandbox_id, loaded.workspace
    if session.proxy.tunnel is not None:  # before its runner is started: it allowed nothing until now
        session.proxy.tunnel.allow(session.sandbox_id, session.egress)
    session.deps.accounting.ledgers[session.sandbox_id] = session.ledger
    session.deps.spans.register(session.sandbox_id, session.emit)
    handle = {**session.sandbox.handle, "workspace": str(session.workspace)}
    try:
        await session.records.update(session.id, state="active", sandbox=handle)
        proxied = await _grant_credentials(session)
        secrets = await _grant_secrets(session)
        if session.rehydrate:
            await _restore_workspace(session)
        record = await session.records.get(session.id)
    except STORE_ERRORS as exc:
        raise SandboxError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE) from exc
    await mount_resources(session, resources_of(record.api if record is not None else None))
    first = await _until(session, _start_frame(session, proxied, secrets), ReadyFrame)
    if not isinstance(first, ReadyFrame):
        detail = first.message if first is not None else "the runner exited before it was ready"
        raise SandboxError(f"sandbox did not start: {detail[:500]}", code=Code.SANDBOX_START_FAILED)
    started_s = loop.time() - t0
    session.metrics.sandbox_start_seconds.labels(session.backend.name, warm).observe(started_s)
    session.log.info(
        "session_ready",
        start_s=round(started_s, 3),
        warm=warm,
        sandbox_id=session.sandbox_id,
        rehydrated=session.rehydrate,
        environment_id=(session.environment or {}).get("id"),
        mcp_credentials=len(proxied),
        env_credentials=len(secrets.plan.issued) if secrets is not None else 0,
        **describe(session.egress),
    )
    return started_s


async def _packages_layer(session: Session) -> Path | None:
    """The session's environment packages layer (packages.py), built first if it must be (its
    clients see a ``building`` status meanwhile); None: the environment has none."""
    environment = session.environment or {}
    spec = environment.get("spec")
    if not wanted(spec) or (layers := session.deps.packages) is None:
        return None
    env_id = environment.get("id")
    why = sandbox_layer_problem(session.backend.name, wanted(spec))
    if why is not None:  # the server's backend changed since the session was made
        raise SandboxError(f"environment {env_id}: {why}", code=Code.PACKAGES_NOT_SUPPORTED)
    if not layers.built(spec):
        session.emit({"type": "status", "status": "building"}, durable=False)
    try:
        return await layers.ensure(spec)
    except BuildFailed as exc:
        raise SandboxError(
            f"environment {env_id}: its packages could not be built: {exc.message}", code=Code.ENVIRONMENT_BUILD_FAILED
        ) from None


async def _grant_credentials(session: Session) -> list[str]:
    """Grant the sandbox its session's MCP servers that a vault credential is for (vault_proxy.py):
    their names, for the runner to reach them through the model bridge."""
    mcp = session.proxy.mcp
    if mcp is None or not session.vault_ids:
        return []
    servers = [s for s in (session.agent or {}).get("mcp_servers") or [] if isinstance(s, dict)]
    return await mcp.grant(session.sandbox_id, session.tenant, session.vault_ids, servers, session.egress)


async def _grant_secrets(session: Session) -> Grant | None:
    """Placeholders for the session's ``environment_variable`` credentials and the sandbox's CA
    (egress_intercept.py). One that cannot be set (a reserved name, a name an earlier vault set, a
    backend whose sandboxes cannot reach the tunnel: added after the session was made) is a notice."""
    tunnel = session.proxy.tunnel
    interceptor = tunnel.interceptor if tunnel is not None else None
    if interceptor is None or not session.vault_ids:
        return None
    try:
        grant = await interceptor.grant(session.sandbox_id, session.tenant, session.vault_ids, session.id)
    except SecretsUnavailable as exc:
        raise SandboxError(
            f"the session's vault credentials cannot be read: {exc}", code=Code.STORE_UNAVAILABLE
        ) from exc
    for credential, why in grant.plan.skipped:
        session.notice_code(
            Code.CREDENTIAL_NOT_SUPPORTED, f"environment_variable credential {credential.id} is not set: {why}"
        )
    if grant.plan.issued and session.backend.name not in TUNNEL_BACKENDS:
        interceptor.forget(session.sandbox_id)
        session.notice_code(
            Code.CREDENTIAL_NOT_SUPPORTED,
            f"the {session.backend.name} sandbox backend cannot reach the egress tunnel, so the session's "
            "environment_variable credentials are not set: the agent's requests go out without them",
        )
        return None
    return grant


def through_tunnel(proxy: ModelProxy, egress: Policy) -> bool:
    """Whether a sandbox gets HTTPS_PROXY: only where the tunnel lets something through (its
    socket is there either way)."""
    return proxy.tunnel is not None and not egress.allows_nothing


def agent_field(agent: dict[str, Any] | None, tools: AgentTools) -> dict[str, Any] | None:
    """The start frame's ``agent``: the pinned agent version, else the operator's default tool
    policy (``tools``, parsed from ``MOORAGE_DEFAULT_AGENT``)."""
    return agent or tools.wire()


def _start_frame(session: Session, proxied: list[str], secrets: Grant | None = None) -> Start:
    return start_frame(
        session.settings,
        session.id,
        agent=agent_field(session.agent, session.agent_tools),
        tunnel=through_tunnel(session.proxy, session.egress),
        resume=session.resume,
        prior_cost_usd=session.prior_cost_usd,
        proxied=proxied,
        secrets=secrets,
    )


def start_frame(
    settings: Settings,
    session_id: str,
    *,
    agent: dict[str, Any] | None,
    tunnel: bool,
    resume: bool = False,
    prior_cost_usd: float = 0.0,
    proxied: Sequence[str] = (),
    secrets: Grant | None = None,
) -> Start:
    """The ``start`` frame of a session. Pure: a new session's frame (no resume, no vault
    credentials) is also what a warm pool's started agent of its spec was sent (``prestart``)."""
    options: dict[str, Any] = {"session_id": session_id, "max_turns": settings.max_turns, "resume": resume}
    # The SDK must carry any user message the service lets through (issue 10 item 10).
    options["max_buffer_size"] = sdk_buffer_bytes(settings.max_frame_bytes)
    if settings.max_budget_usd is not None and settings.max_budget_usd > prior_cost_usd:
        # The budget is per session, not per sandbox: pass what is left
        # (none left: the service refuses turns itself, see Session.submit).
        options["max_budget_usd"] = settings.max_budget_usd - prior_cost_usd
    if settings.model:
        options["model"] = settings.model
    if settings.stream_deltas:
        options["include_partial_messages"] = True
    if agent is not None and agent.get("max_turns"):
        options["max_turns"] = min(settings.max_turns, int(agent["max_turns"]))
    return Start(
        options,
        MODEL_PROXY,
        store=True,
        egress_proxy=f"unix:{TUNNEL_SOCKET}" if tunnel else None,
        agent=agent,
        mcp_proxy=tuple(proxied),
        env=secrets.plan.env if secrets is not None else {},
        egress_ca=secrets.ca_pem if secrets is not None else None,
    )


async def _send(session: Session, frame: ServiceFrame) -> None:
    assert session.sandbox is not None
    session.channel.sent(frame)
    await session.sandbox.send(frame.wire())


async def _until(session: Session, frame: ServiceFrame, want: type[_Want]) -> _Want | RunnerError | None:
    """Send ``frame``, then answer rpc frames until a ``want`` frame (or an
    error, or the end) arrives; bounded by the start timeout. A frame that
    breaks the channel protocol ends the session (``sandbox_crashed``)."""
    sandbox = session.sandbox
    assert sandbox is not None
    try:
        async with asyncio.timeout(session.settings.sandbox_start_timeout_s):
            await _send(session, frame)
            while (reply := await sandbox.recv()) is not None:
                reply = session.channel.received(reply, False)
                if isinstance(reply, Rpc):
                    await session.relay.answer(sandbox, reply)
                elif isinstance(reply, (want, RunnerError)):
                    return reply
                elif not isinstance(reply, Garbage):  # the channel's order allows nothing else
                    raise ChannelViolation(Reason.OUT_OF_ORDER, f"{type(reply).__name__.lower()} while starting")
    except ChannelViolation as exc:
        session.violated(exc)
        raise SandboxError(exc.message, code=Code.SANDBOX_CRASHED) from None
    except (TimeoutError, SandboxError) as exc:
        raise SandboxError(f"sandbox did not start: {exc or 'timed out'}", code=Code.SANDBOX_START_FAILED) from exc
    return None


async def _restore_workspace(session: Session) -> None:
    """Stream the stored archive from the database into ``restore`` frames."""
    session.emit({"type": "status", "status": "restoring"}, durable=False)  # the workspace: progress
    last: Restore | None = None
    size = 0
    try:
        async with asyncio.timeout(session.settings.sandbox_start_timeout_s):
            async with contextlib.aclosing(session.records.load_workspace_stream(session.id)) as chunks:
                async for frame in restore_frames(chunks):
                    size += len(frame.data) * 3 // 4
                    if frame.last:
                        last = frame
                    else:
                        await _send(session, frame)
    except (TimeoutError, SandboxError) as exc:
        raise SandboxError(f"sandbox did not start: {exc or 'timed out'}", code=Code.SANDBOX_START_FAILED) from exc
    if last is None:
        return
    restored = await _until(session, last, Restored)
    if not isinstance(restored, Restored) or not restored.ok:
        detail = restored.message if restored is not None else "no answer"
        session.log.error("workspace_restore_failed", error=str(detail)[:300])
        session.notice_code(Code.WORKSPACE_NOT_RESTORED, f"the saved workspace could not be restored: {detail}")
    else:
        session.log.info("workspace_restored", files=restored.files, bytes=size)


async def mount_resources(session: Session, resources: list[dict[str, Any]]) -> None:
    """Put every resource of the session into the sandbox, before ``start`` (a new session, a
    rehydrated one, a warm sandbox alike). One that cannot be put is a notice."""
    files = session.deps.files
    if files is None:
        return
    for resource in resources:
        path = str(resource["mount_path"])
        last: PutFile | None = None
        try:
            async with asyncio.timeout(session.settings.sandbox_start_timeout_s):
                async for frame in put_frames(files, session.tenant, str(resource["file_id"]), path):
                    if frame.last:
                        last = frame
                    else:
                        await _send(session, frame)
        except STORE_ERRORS as exc:  # the file is gone (deleted since), or the database is
            session.notice(not_mounted(resource, type(exc).__name__))
            continue
        except (TimeoutError, SandboxError) as exc:
            raise SandboxError(f"sandbox did not start: {exc or 'timed out'}", code=Code.SANDBOX_START_FAILED) from exc
        assert last is not None
        put = await _until(session, last, FilePut)
        if not isinstance(put, FilePut) or not put.ok:
            why = put.message if put is not None else "the runner exited"
            session.notice(not_mounted(resource, why[:300] or "refused"))
        else:
            session.log.info("resource_mounted", file_id=resource.get("file_id"), live=False)
