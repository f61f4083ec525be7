"""The agent runner: one ClaudeSDKClient, driven over the sandbox channel.

Lifecycle: send ``loaded`` (the SDK is imported; a warm pool can keep us
here) -> read ``start`` -> open the model bridge -> connect the SDK client
(which spawns the bundled CLI) -> send ``ready``. A warm pool may send
``prestart`` first (the same fields as ``start``, for a session not made
yet): the client connects then, ``prestarted`` answers, and the session's
``start`` finds it ready (or, if it differs, starts it again) -> relay commands in and SDK
messages out -> on end of input (or SIGTERM) disconnect the client with a
deadline and exit 0. If the CLI dies underneath it the runner reports an
``error`` frame and exits 1; the service turns that into a client error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import sys
import tarfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, SessionStore

from .agent import agent_options
from .approvals import Approvals, Asks
from .bridge import ModelBridge
from .channel import CHANNEL_VERSION, MAX_FRAME_BYTES, ChannelOut, open_stdin, read_frame, start_agent
from .files import Outputs, Uploads, prepare
from .restore import Restore
from .snapshot import snapshot_frames
from .store import ChannelSessionStore, Rpc

# The sandbox never holds the real key; the proxy swaps this one out.
PLACEHOLDER_API_KEY = "sk-ant-moorage-sandbox-placeholder"
DISCONNECT_DEADLINE_S = 10.0
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
# Where the system's CA bundle is (Debian, then Red Hat, then whatever OpenSSL was built with).
SYSTEM_CA_FILES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    ssl.get_default_verify_paths().cafile or "",
)

AGENT_PYTHONPATH = "MOORAGE_AGENT_PYTHONPATH"  # the service's sandbox.base.AGENT_PYTHONPATH

# Quiet the CLI: no telemetry, updates or other traffic (there is no network).
CLI_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


def agent_pythonpath(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The PYTHONPATH of the agent's commands: the environment's packages (the service names
    them in ``MOORAGE_AGENT_PYTHONPATH``), given to the CLI and what it runs, never to this
    process, whose own imports a package the environment pins must not replace."""
    path = environ.get(AGENT_PYTHONPATH, "")
    return {"PYTHONPATH": path} if path else {}


def build_options(
    start: dict[str, Any],
    base_url: str,
    store: SessionStore | None,
    extra_env: dict[str, str] | None = None,
    approvals: Approvals | None = None,
) -> ClaudeAgentOptions:
    """SDK options from the service's ``start`` frame (a fixed allowlist), then the
    session's agent over them (``agent.agent_options``) and its tool policy
    (``approvals``: always_ask tools, custom tools)."""
    opts = start.get("options") or {}
    agent = start_agent(start)
    options = ClaudeAgentOptions(
        session_store=store,
        # Eager: entries reach the service's database as they happen, not
        # only at the end of a turn, so a crash mid-turn loses little.
        session_store_flush="eager",
        resume=opts.get("session_id") if opts.get("resume") else None,
        cwd=os.getcwd(),
        permission_mode="bypassPermissions",
        session_id=None if opts.get("resume") else opts.get("session_id"),
        max_turns=opts.get("max_turns"),
        max_budget_usd=opts.get("max_budget_usd"),
        model=opts.get("model"),
        system_prompt=opts.get("system_prompt"),
        include_partial_messages=bool(opts.get("include_partial_messages", False)),
        # The SDK's limit on one line of the CLI's output (its default, 1 MiB,
        # is below what a user message the service accepts can grow to).
        max_buffer_size=_buffer_size(opts.get("max_buffer_size")),
        env={
            **CLI_ENV,
            **agent_pythonpath(os.environ),
            **(extra_env or {}),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": PLACEHOLDER_API_KEY,
        },
    )
    if agent is not None:
        proxied = start.get("mcp_proxy")
        names = [n for n in proxied if isinstance(n, str)] if isinstance(proxied, list) else []
        options = replace(options, **agent_options(agent, base_url, names))
    if approvals is not None:
        extra = approvals.options()
        extra["mcp_servers"] = {**cast(dict[str, Any], options.mcp_servers), **extra["mcp_servers"]}
        options = replace(options, **extra)
    return options


def placeholders(start: dict[str, Any]) -> dict[str, str]:
    """The vault placeholders the service sent (``env``): names that are variable names and that
    the runner does not set itself (its own variables are merged over these anyway)."""
    given = start.get("env")
    if not isinstance(given, dict):
        return {}
    return {
        k: v
        for k, v in given.items()
        if isinstance(k, str) and isinstance(v, str) and ENV_NAME.match(k) and k not in CLI_ENV and k != "PATH"
    }


def trust_bundle(ca_pem: str, home: Path | None = None) -> dict[str, str]:
    """Write the system CAs plus the sandbox's egress CA to ``~/.moorage/``; the variables that
    point TLS clients (OpenSSL, Python, requests and pip, curl, git, Node) at them."""
    folder = (home or Path.home()) / ".moorage"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    system = next((Path(p) for p in SYSTEM_CA_FILES if p and Path(p).is_file()), None)
    own = folder / "egress-ca.pem"
    own.write_text(ca_pem)
    bundle = folder / "ca-bundle.pem"
    bundle.write_text((system.read_text() if system is not None else "") + "\n" + ca_pem)
    names = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")
    return {**{name: str(bundle) for name in names}, "NODE_EXTRA_CA_CERTS": str(own)}


def _buffer_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_FRAME_BYTES)
    return MAX_FRAME_BYTES // 4


def same_start(prestart: dict[str, Any], start: dict[str, Any]) -> bool:
    """Whether a ``start`` asks for exactly what its ``prestart`` started (kind aside)."""
    return {k: v for k, v in prestart.items() if k != "kind"} == {k: v for k, v in start.items() if k != "kind"}


async def _one(message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield message


class Runner:
    def __init__(self, out: ChannelOut, stdin: asyncio.StreamReader) -> None:
        self.out = out
        self.stdin = stdin
        self.rpc = Rpc(out)
        self.asks = Asks(out)
        self.client: ClaudeSDKClient | None = None
        self.bridge: ModelBridge | None = None
        self.tunnel: ModelBridge | None = None
        self.commands: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.uploads = Uploads()
        self.outputs = Outputs()
        self._collecting = asyncio.Lock()  # one ``collect_outputs`` answer at a time, in order
        self._tasks: set[asyncio.Task[None]] = set()

    async def _before_start(self) -> dict[str, Any] | None:
        """Frames before ``start``: workspace restore chunks, then the session's files. Returns ``start``."""
        restore = Restore()
        while (frame := await read_frame(self.stdin)) is not None:
            kind = frame.get("kind")
            if kind in ("start", "prestart"):
                return frame
            if kind == "put_file":
                await self._put_file(frame)
            elif kind == "restore":
                restore.feed(str(frame.get("data", "")))
                if frame.get("last"):
                    try:
                        count = await asyncio.to_thread(restore.extract, os.getcwd())
                    except (OSError, EOFError, tarfile.TarError) as exc:
                        await self.out.send({"kind": "restored", "ok": False, "message": str(exc)[:500]})
                    else:
                        await self.out.send({"kind": "restored", "ok": True, "files": count})
        return None

    async def _read(self) -> None:
        """Route every frame from the service: rpc answers to their callers,
        commands to the command queue (in order)."""
        try:
            while (frame := await read_frame(self.stdin)) is not None:
                if frame.get("kind") in ("rpc_result", "rpc_error"):
                    self.rpc.resolve(frame)
                elif frame.get("kind") in ("permission_response", "custom_tool_result"):
                    self.asks.resolve(frame)  # not queued: a waiting tool call holds the command loop
                elif frame.get("kind") == "put_file":
                    await self._put_file(frame)  # not queued: a turn may be running
                elif frame.get("kind") == "collect_outputs":
                    self._spawn(self._collect(int(frame.get("max_bytes", 0)), int(frame.get("max_total_bytes", 0))))
                else:
                    self.commands.put_nowait(frame)
        finally:
            self.commands.put_nowait(None)

    async def run(self) -> int:
        prepare()  # /mnt/session/{uploads,outputs}
        # Imports are done: say so, so a warm pool can hold us until needed.
        await self.out.send({"kind": "loaded", "version": CHANNEL_VERSION})
        start = await self._before_start()
        prestart: dict[str, Any] | None = None
        if start is not None and start.get("kind") == "prestart":
            # A warm pool's started agent: the CLI starts now, for a session not made yet.
            prestart = start
            if not await self._connect(prestart):
                return 1
            await self.out.send({"kind": "prestarted"})
            start = await self._before_start()
        if start is None:
            await self.shutdown()
            return 0
        reader = asyncio.create_task(self._read())
        if prestart is not None and not same_start(prestart, start):
            # Claimed by a session that wants other options: start the CLI again with them.
            print("runner: the start differs from the prestart; restarting the agent", file=sys.stderr)
            await self.shutdown()
            prestart = None
        if prestart is None and not await self._connect(start):
            reader.cancel()
            return 1
        await self.out.send({"kind": "ready"})
        pump = asyncio.create_task(self._pump())
        commands = asyncio.create_task(self._commands())
        done, _ = await asyncio.wait({pump, commands}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if pump in done and not commands.done():
            # The CLI went away while the service still talks to us.
            failure = pump.exception()
            message = "agent process ended unexpectedly" + (f": {failure}" if failure else "")
            await self.out.send({"kind": "error", "code": "cli_exited", "message": message})
            code = 1
        for task in (pump, commands, reader, *self._tasks):
            task.cancel()
        await self.shutdown()
        return code

    async def _connect(self, start: dict[str, Any]) -> bool:
        """Open the bridges and connect the SDK client (which spawns the CLI) for ``start``. On a
        failure, report it (``error``), shut down and return False."""
        session_id = (start.get("options") or {}).get("session_id")
        if session_id:
            # Inherited by the CLI and its tools: operators can find a session's processes.
            os.environ["MOORAGE_SESSION_ID"] = str(session_id)
        if start.get("model_url"):
            # Kubernetes: the proxy is reachable over the pod network; no bridge.
            base_url = str(start["model_url"])
        else:
            self.bridge = ModelBridge(str(start["model_proxy"]))
            base_url = f"http://127.0.0.1:{await self.bridge.start()}"
        store = cast(SessionStore, ChannelSessionStore(self.rpc)) if start.get("store") else None
        approvals = Approvals(start.get("agent"), self.asks)
        self.client = ClaudeSDKClient(build_options(start, base_url, store, await self._egress_env(start), approvals))
        try:
            await self.client.connect()
        except Exception as exc:  # the CLI failed to start: report, then exit
            await self.out.send({"kind": "error", "code": "cli_start_failed", "message": str(exc)[:2000]})
            await self.shutdown()
            return False
        return True

    async def _pump(self) -> None:
        assert self.client is not None and self.client._query is not None
        # The raw stream keeps each message exactly as the CLI wrote it (the
        # typed API would drop fields); this is the wire shape we promise.
        async for data in self.client._query.receive_messages():
            await self.out.send({"kind": "sdk", "message": data})

    async def _commands(self) -> None:
        assert self.client is not None
        while (frame := await self.commands.get()) is not None:
            kind = frame.get("kind")
            if kind == "user":
                await self.client.query(_one(frame["message"]))
            elif kind == "interrupt":
                self._spawn(self.client.interrupt())
            elif kind == "snapshot":
                self._spawn(self._snapshot(int(frame.get("max_bytes", 0))))
            else:
                print(f"runner: ignoring channel frame kind={kind!r}", file=sys.stderr)

    async def _snapshot(self, max_bytes: int) -> None:
        """The workspace, for a backend that cannot read it from outside."""
        try:
            frames = await asyncio.to_thread(lambda: list(snapshot_frames(os.getcwd(), max_bytes)))
        except (OSError, tarfile.TarError) as exc:
            frames = [{"kind": "snapshot", "ok": False, "message": str(exc)[:500]}]
        for frame in frames:
            await self.out.send(frame)

    async def _put_file(self, frame: dict[str, Any]) -> None:
        if (answer := await asyncio.to_thread(self.uploads.feed, frame)) is not None:
            await self.out.send(answer)

    async def _collect(self, max_bytes: int, max_total_bytes: int) -> None:
        """The new or changed files under /mnt/session/outputs, read one chunk at a time."""
        async with self._collecting:
            frames = self.outputs.frames(max_bytes, max_total_bytes)
            while (frame := await asyncio.to_thread(next, frames, None)) is not None:
                await self.out.send(frame)

    async def _egress_env(self, start: dict[str, Any]) -> dict[str, str]:
        """With an egress allowlist, the service's tunnel is the HTTPS proxy
        for the CLI and every tool it runs (the model stays direct); with vault
        placeholders, those too, and a trust bundle holding the sandbox's own
        egress CA (the tunnel terminates TLS for the hosts they are for)."""
        if not start.get("egress_proxy"):
            return placeholders(start)
        self.tunnel = ModelBridge(str(start["egress_proxy"]))
        url = f"http://127.0.0.1:{await self.tunnel.start()}"
        env = {name: url for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}
        env |= {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        if isinstance(start.get("egress_ca"), str):
            env |= await asyncio.to_thread(trust_bundle, start["egress_ca"])
        return {**placeholders(start), **env}

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        """Staged: the SDK closes the CLI's stdin, waits, terminates, kills.
        Pending transcript entries are flushed to the store on the way."""
        if self.client is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(self.client.disconnect(), DISCONNECT_DEADLINE_S)
            self.client = None
        for bridge in (self.bridge, self.tunnel):
            if bridge is not None:
                await bridge.close()
        self.bridge = self.tunnel = None


async def amain() -> int:
    out = ChannelOut.claim_stdout()
    stdin = await open_stdin()
    runner = Runner(out, stdin)
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        return await runner.run()
    except asyncio.CancelledError:
        await runner.shutdown()
        return 0


def main() -> None:
    sys.exit(asyncio.run(amain()))
