"""Command line: ``moorage serve | demo | chat | tokens | sessions | agents``."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import uvicorn
from pydantic import SecretStr

from . import agents_cli, sessions_cli, tokens
from .logs import configure
from .sandbox import toolbox
from .server import connection_cap, guarded_protocol, raise_nofile_limit
from .settings import Settings


async def _check_database(settings: Settings, need_tokens: bool) -> str | None:
    """Connect once (exit 2 early when the database is unreachable) and migrate; why not to start,
    if anything: another replica on this SQLite database (``heartbeat.join``), with
    ``need_tokens`` no API token issued yet, or vault credentials stored and no key to open them."""
    from moorage_session_store import Database, Tokens, Vaults

    from .heartbeat import join

    db = await Database.connect(settings.database_url_or_default)
    try:
        await db.migrate()
        if (refusal := await join(db, settings.replica, settings.lease_ttl_s, datetime.now(UTC))) is not None:
            return refusal
        if need_tokens and not await Tokens(db).any():
            return (
                f"refusing to serve {settings.host} without authentication: set "
                "MOORAGE_API_KEYS (tenant:token,...), issue a token with `moorage tokens create --tenant T`, "
                "or bind to a loopback address"
            )
        if not settings.secret_key.get_secret_value().strip() and await Vaults(db).any_credential():
            return (
                "vault credentials are stored in this database but MOORAGE_SECRET_KEY is not set: "
                "set the key they were sealed with (32 bytes, base64; see the README)"
            )
        return None
    finally:
        await db.close()


def serve(settings: Settings) -> None:
    configure(settings.log_level)
    from moorage_session_store import MoorageStoreError

    from .app import create_app
    from .auth import AuthConfigError, is_loopback
    from .vault_crypto import SecretKeyError

    try:
        app = create_app(settings)
    except (AuthConfigError, SecretKeyError) as exc:
        print(f"moorage: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    # A bad toolbox is a start-up error, not broken sessions ("auto" finding none: a log line).
    if settings.sandbox == "local" and (path := toolbox.candidate(settings.sandbox_toolbox, sys.prefix)):
        try:
            toolbox.check(path, sys.base_prefix)
        except toolbox.ToolboxError as exc:
            print(f"moorage: cannot start: {exc}", file=sys.stderr)
            sys.exit(2)
    if settings.metrics_port and settings.metrics_port == settings.port:
        print("moorage: cannot start: MOORAGE_METRICS_PORT must differ from MOORAGE_PORT", file=sys.stderr)
        sys.exit(2)
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # the default SQLite file lives here
    # Never open beyond loopback: with no MOORAGE_API_KEYS, a non-loopback
    # bind needs at least one issued token, or nobody could ever get in.
    need_tokens = not settings.api_keys.strip() and not is_loopback(settings.host)
    try:
        refusal = asyncio.run(_check_database(settings, need_tokens))
    except MoorageStoreError as exc:
        print(f"moorage: cannot start: the database is unreachable: {exc}", file=sys.stderr)
        sys.exit(2)
    if refusal is not None:
        print(f"moorage: cannot start: {refusal}", file=sys.stderr)
        sys.exit(2)

    nofile, _hard = raise_nofile_limit()
    max_connections = connection_cap(settings.max_connections, nofile)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=guarded_protocol(max_connections, settings.header_timeout_s),
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        lifespan="on",
        timeout_graceful_shutdown=30,
        # uvicorn's own 503 for HTTP requests in flight; the guarded protocol
        # caps connections (WebSockets included) before they cost more.
        limit_concurrency=max_connections + 1,
        # asyncio accepts up to `backlog` connections per wakeup before the cap
        # sees them, and one takes three loop turns (transport, connection_made,
        # close) to be released: under a flood a few batches are in flight, so
        # descriptors peak at a small multiple of the cap (server.connection_cap).
        backlog=max_connections,
    )
    sockets = [config.bind_socket()]
    if settings.metrics_port:
        # /metrics and /readyz on a listener of their own (edge.listener_serves).
        metrics = uvicorn.Config(app, host=settings.metrics_host, port=settings.metrics_port)
        sockets.append(metrics.bind_socket())
    DrainingServer(config, app).run(sockets=sockets)


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT starting a drain (``SessionManager.drain``:
    turns finish, sessions suspend) before the server itself stops; the
    process then exits 0. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Future[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after
        # shutting down, and the process would die of it instead of exit 0.
        services = getattr(self.app.state, "services", None)
        if self._drain is not None or self._loop is None or services is None:
            self.should_exit = True
            self.force_exit = self._drain is not None
            return
        self._drain = asyncio.Future(loop=self._loop)  # a placeholder until the task starts
        self._loop.call_soon_threadsafe(self._start_drain, services)

    def _start_drain(self, services: Any) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit(services))

    async def _drain_then_exit(self, services: Any) -> None:
        try:
            await services.sessions.drain(services.settings.drain_grace_s)
        finally:
            self.should_exit = True


def banner(host: str, port: int, model_url: str) -> str:
    """Where to connect to a demo service, for a person (printed before the JSON logs)."""
    where = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    where = f"[{where}]" if ":" in where else where
    return "\n".join(
        [
            f"Moorage demo: the scripted model on {model_url} stands in for Claude (no API key needed)",
            f"  console    http://{where}:{port}/",
            f"  WebSocket  ws://{where}:{port}/v1/sessions",
            "  chat       make chat   (in another terminal; make chat SESSION=<id> reconnects)",
            "  try        say hello, or bash ls -la",
            "",
        ]
    )


def demo(settings: Settings) -> None:
    """The service against the scripted model: try it with no API key."""
    from .testing.scripted_model import ScriptedModelServer

    model = ScriptedModelServer().start()
    print(banner(settings.host, settings.port, model.url), file=sys.stderr, flush=True)
    try:
        serve(settings.model_copy(update={"anthropic_base_url": model.url, "anthropic_api_key": SecretStr("demo")}))
    finally:
        model.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moorage", description="Claude Agent SDK sessions over WebSocket")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the service (settings from MOORAGE_* environment variables)")
    sub.add_parser("demo", help="run the service against the built-in scripted model")
    chat = sub.add_parser("chat", help="a terminal client for a running service")
    chat.add_argument("--url", default=None, help="ws://host:port (default from MOORAGE_HOST/MOORAGE_PORT)")
    chat.add_argument("--session", default=None, help="attach to this session id")
    chat.add_argument(
        "--after",
        type=int,
        default=None,
        help="with --session: first replay the frames after this seq (0: the whole conversation)",
    )
    chat.add_argument("--token", default=None, help="bearer token (from MOORAGE_API_KEYS or `moorage tokens create`)")
    tokens.add_parser(sub)
    sessions_cli.add_parser(sub)
    agents_cli.add_parser(sub)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        serve(settings)
    elif args.command == "demo":
        demo(settings)
    elif args.command == "chat":
        from .chat import run_chat

        return run_chat(args.url or f"ws://{settings.host}:{settings.port}", args.session, args.token, args.after)
    elif args.command == "tokens":
        return tokens.run(args, settings)
    elif args.command == "sessions":
        return sessions_cli.run(args, settings)
    elif args.command == "agents":
        return agents_cli.run(args, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
