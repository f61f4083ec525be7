"""One rooted error tree. Every error carries a stable ``code`` that clients
see in ``error`` frames; ``fatal`` says whether the session is over."""

from __future__ import annotations

from enum import StrEnum

from moorage_session_store.errors import MoorageStoreError
from sqlalchemy.exc import SQLAlchemyError


class Code(StrEnum):
    """Stable error codes of the wire protocol (docs/protocol.md)."""

    UNAUTHORIZED = "unauthorized"
    INVALID_JSON = "invalid_json"
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_FRAME_TYPE = "unknown_frame_type"
    UNSUPPORTED = "unsupported"
    TURN_IN_PROGRESS = "turn_in_progress"
    NO_TURN_RUNNING = "no_turn_running"
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_CLOSED = "session_closed"
    SANDBOX_START_FAILED = "sandbox_start_failed"
    SANDBOX_CRASHED = "sandbox_crashed"
    SANDBOX_OUT_OF_MEMORY = "sandbox_out_of_memory"
    SANDBOX_PIDS_EXHAUSTED = "sandbox_pids_exhausted"
    TURN_TIMEOUT = "turn_timeout"
    MAX_TURNS_EXCEEDED = "max_turns_exceeded"
    SLOW_CONSUMER = "slow_consumer"
    SESSION_LOCKED = "session_locked"
    SERVICE_DRAINING = "service_draining"
    TOO_MANY_SESSIONS = "too_many_sessions"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXCEEDED = "budget_exceeded"
    STORE_UNAVAILABLE = "store_unavailable"
    WORKSPACE_TOO_LARGE = "workspace_too_large"
    WORKSPACE_FULL = "workspace_full"
    WORKSPACE_NOT_RESTORED = "workspace_not_restored"
    STORAGE_QUOTA_EXCEEDED = "storage_quota_exceeded"
    SESSION_DELETED = "session_deleted"
    INTERNAL = "internal"


class MoorageError(Exception):
    """Base of every error the service raises on purpose."""

    code: Code = Code.INTERNAL
    fatal: bool = False

    def __init__(self, message: str, *, code: Code | None = None, fatal: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if fatal is not None:
            self.fatal = fatal

    def frame(self) -> dict[str, object]:
        return {"type": "error", "code": str(self.code), "message": self.message, "fatal": self.fatal}


class ProtocolError(MoorageError):
    """A client frame we cannot accept; the connection stays open."""

    code = Code.INVALID_FRAME


class SessionError(MoorageError):
    """A session-level problem (unknown id, closed, busy)."""

    code = Code.SESSION_NOT_FOUND


class SandboxError(MoorageError):
    """A sandbox failed to start or died; the session is over."""

    code = Code.SANDBOX_CRASHED
    fatal = True


# WebSocket close codes, decided in this one place.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
CLOSE_SERVICE_RESTART = 1012
CLOSE_INTERNAL = 1011
CLOSE_POLICY = 1008
CLOSE_CODES: dict[Code, int] = {
    Code.SESSION_NOT_FOUND: 4404,
    Code.SESSION_CLOSED: 4410,
    Code.SANDBOX_START_FAILED: 1011,
    Code.SANDBOX_CRASHED: 1011,
    Code.SANDBOX_OUT_OF_MEMORY: 1011,
    Code.TURN_TIMEOUT: 1011,
    Code.SLOW_CONSUMER: CLOSE_POLICY,
    Code.UNAUTHORIZED: CLOSE_POLICY,  # a token revoked while its connection was open
    Code.SESSION_LOCKED: 1013,
    Code.TOO_MANY_SESSIONS: 1013,
    Code.STORE_UNAVAILABLE: 1013,
    Code.SERVICE_DRAINING: CLOSE_SERVICE_RESTART,
    Code.STORAGE_QUOTA_EXCEEDED: CLOSE_POLICY,  # opening a session: retrying will not help, deleting will
    Code.SESSION_DELETED: 4410,
}


def close_code(code: Code) -> int:
    return CLOSE_CODES.get(code, CLOSE_NORMAL)


# What a database outage looks like from the service: the store's own errors,
# SQLAlchemy's, and the drivers' connection errors underneath.
STORE_ERRORS: tuple[type[BaseException], ...] = (MoorageStoreError, SQLAlchemyError, OSError)


def store_unavailable(exc: BaseException) -> str:
    """What a client (and the log) may hear of a database failure: its kind,
    never the driver's text, which can carry SQL and its parameters."""
    kind = type(exc.__cause__ or exc).__name__ if isinstance(exc, MoorageStoreError) else type(exc).__name__
    return f"the session store is unavailable ({kind}); try again"
