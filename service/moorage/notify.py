"""PostgreSQL ``LISTEN``: wakes this replica when any replica (this one included) appends a
session's events or sends or finishes a command (the channels of ``moorage_session_store``).

A notification is only a wake-up: whoever waits also polls, so nothing is lost while the listening
connection is down, only later. One dedicated asyncpg connection per replica (not one of the
SQLAlchemy pool's: a pooled connection is reset and handed to others, which would drop its
``LISTEN``); a task keeps it up, reconnecting with backoff when it is lost and then telling the
service (``on_reconnect``) to look for what it missed. On SQLite there is one replica and nothing
to listen to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import structlog
from moorage_session_store import Database

log = structlog.get_logger(__name__)

#: The listening connection's ``application_name`` (find it in ``pg_stat_activity``).
APPLICATION_NAME = "moorage-notify"
_FIRST_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
# A lost connection is usually seen at once (the socket closes); a ``SELECT 1`` this often finds
# one that went silently (a cut network), bounded by the same time.
_CHECK_EVERY_S = 5.0
_CONNECT_TIMEOUT_S = 10.0
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def backoff_s(failures: int) -> float:
    """How long to wait before the next connection attempt after ``failures`` failed ones:
    0.1 s, doubling, at most 5 s."""
    return float(min(_FIRST_BACKOFF_S * 2 ** min(failures, 16), _MAX_BACKOFF_S))


class Notifications:
    """Wakes this replica when another one (or this one) appends events or sends/finishes commands.

    ``handlers`` maps each channel to listen on to a callable that gets the payload; it runs on
    the event loop, must not block, and an exception it raises is logged, never fatal.
    ``on_reconnect`` is called after each connection but the one :meth:`start` made: what was
    notified in between was missed.
    """

    def __init__(
        self,
        db: Database,
        handlers: Mapping[str, Callable[[str], None]],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._handlers = dict(handlers)
        self._on_reconnect = on_reconnect
        self._conn: Any = None  # asyncpg.Connection while listening
        self._lost = asyncio.Event()  # set by the connection's termination listener
        self._task: asyncio.Task[None] | None = None
        self._listened = False  # once connected: later connections are reconnections

    @property
    def connected(self) -> bool:
        """Listening right now (always ``False`` on SQLite)."""
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """PostgreSQL: connect and listen (if that fails, the keeper task retries), and start the
        task that keeps the connection up. SQLite: nothing."""
        if self._db.dialect != "postgresql" or self._task is not None:
            return
        try:
            await self._connect()
        except _CONNECTION_ERRORS as exc:
            log.warning("notify_lost", reason=_reason(exc))
        self._task = asyncio.create_task(self._keep(), name="moorage-notify")

    async def close(self) -> None:
        """Stop the keeper task and close the connection."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        self._drop()

    async def _connect(self) -> None:
        url = self._db.url
        conn = await asyncpg.connect(
            host=url.host or "localhost",
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            database=url.database,
            timeout=_CONNECT_TIMEOUT_S,
            server_settings={"application_name": APPLICATION_NAME},
        )
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            for channel in self._handlers:
                await conn.add_listener(channel, self._dispatch)
        except BaseException:
            conn.terminate()
            raise
        self._conn, self._lost = conn, lost
        reconnected, self._listened = self._listened, True
        log.info("notify_reconnected" if reconnected else "notify_listening", channels=sorted(self._handlers))

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def _keep(self) -> None:
        """Forever: wait until the connection is lost, then reconnect with backoff and call
        ``on_reconnect``."""
        failures = 0
        while True:
            if self._conn is None:
                await asyncio.sleep(backoff_s(failures))
                try:
                    await self._connect()
                except _CONNECTION_ERRORS:
                    failures += 1
                    continue
                failures = 0
                self._call(self._on_reconnect, "on_reconnect")
            await self._watch()
            log.warning("notify_lost")
            self._drop()

    async def _watch(self) -> None:
        """Return once the connection is lost: closed (the termination listener) or not answering."""
        conn = self._conn
        while not conn.is_closed():
            try:
                await asyncio.wait_for(self._lost.wait(), _CHECK_EVERY_S)
                return
            except TimeoutError:
                pass
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), _CHECK_EVERY_S)
            except _CONNECTION_ERRORS:
                return

    def _dispatch(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        handler = self._handlers.get(channel)
        if handler is not None:
            self._call(lambda: handler(payload), channel)

    @staticmethod
    def _call(callback: Callable[[], None] | None, what: str) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("notify_handler_failed", handler=what)


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
