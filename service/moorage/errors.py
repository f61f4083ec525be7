"""One rooted error tree. Every error carries a stable ``code`` that clients
see in ``error`` frames; ``fatal`` says whether the session is over."""

from __future__ import annotations

from dataclasses import dataclass
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
    QUEUE_FULL = "queue_full"
    NO_TURN_RUNNING = "no_turn_running"
    REQUEST_NOT_PENDING = "request_not_pending"
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
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    INVALID_REQUEST = "invalid_request"
    REQUEST_TOO_LARGE = "request_too_large"
    AGENT_NOT_FOUND = "agent_not_found"
    AGENT_ARCHIVED = "agent_archived"
    VERSION_CONFLICT = "version_conflict"
    ENVIRONMENT_NOT_FOUND = "environment_not_found"
    ENVIRONMENT_ARCHIVED = "environment_archived"
    ENVIRONMENT_NAME_TAKEN = "environment_name_taken"
    UNRESTRICTED_NETWORK_NOT_ALLOWED = "unrestricted_network_not_allowed"
    PACKAGES_NOT_SUPPORTED = "packages_not_supported"
    ENVIRONMENT_BUILD_FAILED = "environment_build_failed"
    WORKSPACE_FILE_NOT_FOUND = "workspace_file_not_found"
    NOT_SUPPORTED = "not_supported"
    INVALID_AFTER = "invalid_after"
    SESSION_ARCHIVED = "session_archived"
    FILE_NOT_FOUND = "file_not_found"
    FILE_EXPIRED = "file_expired"
    FILE_TOO_LARGE = "file_too_large"
    FILE_NOT_DOWNLOADABLE = "file_not_downloadable"
    WEBHOOK_NOT_FOUND = "webhook_not_found"
    WEBHOOK_URL_NOT_ALLOWED = "webhook_url_not_allowed"
    TOO_MANY_WEBHOOKS = "too_many_webhooks"
    VAULT_NOT_FOUND = "vault_not_found"
    VAULT_ARCHIVED = "vault_archived"
    CREDENTIAL_NOT_FOUND = "credential_not_found"
    CREDENTIAL_CONFLICT = "credential_conflict"
    CREDENTIAL_NOT_SUPPORTED = "credential_not_supported"
    SECRET_KEY_UNAVAILABLE = "secret_key_unavailable"
    RESOURCE_NOT_FOUND = "resource_not_found"
    RESOURCE_NOT_MOUNTED = "resource_not_mounted"
    OUTPUT_TOO_LARGE = "output_too_large"
    OUTPUT_NOT_STORED = "output_not_stored"
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


# WebSocket close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013


class Fatal(StrEnum):
    """Whether an error with this code ends the session: never, always, or
    only in some cases (the doc's "no / yes"; not fatal unless raised so)."""

    NO = "no"
    YES = "yes"
    SOMETIMES = "no / yes"


@dataclass(frozen=True)
class Spec:
    fatal: Fatal
    close: int | None  # WebSocket close code when fatal (None: never fatal)
    http: int  # HTTP status when an HTTP route or a handshake refuses with it


# THE table: every code, its fatality, close code and HTTP status.
# docs/protocol.md's tables are held to it (tests/unit/test_error_table.py):
# a new code is one line here plus a row there.
CODES: dict[Code, Spec] = {
    Code.UNAUTHORIZED: Spec(Fatal.SOMETIMES, CLOSE_POLICY, 401),
    Code.INVALID_JSON: Spec(Fatal.NO, None, 400),
    Code.INVALID_FRAME: Spec(Fatal.NO, None, 400),
    Code.UNKNOWN_FRAME_TYPE: Spec(Fatal.NO, None, 400),
    Code.UNSUPPORTED: Spec(Fatal.NO, None, 400),
    Code.QUEUE_FULL: Spec(Fatal.NO, None, 429),
    Code.NO_TURN_RUNNING: Spec(Fatal.NO, None, 409),
    Code.REQUEST_NOT_PENDING: Spec(Fatal.NO, None, 409),
    Code.TURN_TIMEOUT: Spec(Fatal.SOMETIMES, CLOSE_INTERNAL, 504),
    Code.MAX_TURNS_EXCEEDED: Spec(Fatal.YES, CLOSE_INTERNAL, 500),
    Code.STORE_UNAVAILABLE: Spec(Fatal.SOMETIMES, CLOSE_TRY_AGAIN, 503),
    Code.WORKSPACE_TOO_LARGE: Spec(Fatal.NO, None, 413),
    Code.WORKSPACE_FULL: Spec(Fatal.NO, None, 507),
    Code.SERVICE_DRAINING: Spec(Fatal.SOMETIMES, CLOSE_SERVICE_RESTART, 503),
    Code.WORKSPACE_NOT_RESTORED: Spec(Fatal.NO, None, 500),
    Code.BUDGET_EXCEEDED: Spec(Fatal.NO, None, 402),
    Code.RATE_LIMITED: Spec(Fatal.NO, None, 429),
    Code.TOO_MANY_SESSIONS: Spec(Fatal.YES, CLOSE_TRY_AGAIN, 429),
    Code.SESSION_LOCKED: Spec(Fatal.YES, CLOSE_TRY_AGAIN, 409),
    Code.SESSION_NOT_FOUND: Spec(Fatal.YES, 4404, 404),
    Code.SESSION_CLOSED: Spec(Fatal.YES, 4410, 410),
    Code.SANDBOX_START_FAILED: Spec(Fatal.YES, CLOSE_INTERNAL, 503),
    Code.SANDBOX_CRASHED: Spec(Fatal.YES, CLOSE_INTERNAL, 500),
    Code.SANDBOX_OUT_OF_MEMORY: Spec(Fatal.SOMETIMES, CLOSE_INTERNAL, 500),
    Code.SANDBOX_PIDS_EXHAUSTED: Spec(Fatal.SOMETIMES, CLOSE_INTERNAL, 500),
    Code.SLOW_CONSUMER: Spec(Fatal.YES, CLOSE_POLICY, 429),
    Code.ORIGIN_NOT_ALLOWED: Spec(Fatal.NO, None, 403),
    # Opening a session over quota is fatal (retrying will not help, deleting
    # will); a rehydrated over-quota session is only told.
    Code.STORAGE_QUOTA_EXCEEDED: Spec(Fatal.SOMETIMES, CLOSE_POLICY, 400),
    Code.SESSION_DELETED: Spec(Fatal.YES, 4410, 410),
    # The agents API (HTTP); an agent that cannot be used ends a session's handshake.
    Code.INVALID_REQUEST: Spec(Fatal.SOMETIMES, CLOSE_POLICY, 400),
    Code.REQUEST_TOO_LARGE: Spec(Fatal.NO, None, 413),
    Code.AGENT_NOT_FOUND: Spec(Fatal.SOMETIMES, 4404, 404),
    Code.AGENT_ARCHIVED: Spec(Fatal.SOMETIMES, CLOSE_POLICY, 400),
    Code.VERSION_CONFLICT: Spec(Fatal.NO, None, 409),
    # The environments API (HTTP only, for now). The last two also refuse a session whose
    # environment this server cannot honour (egress_policy.py): fatal then.
    Code.ENVIRONMENT_NOT_FOUND: Spec(Fatal.NO, None, 404),
    Code.ENVIRONMENT_ARCHIVED: Spec(Fatal.NO, None, 400),
    Code.ENVIRONMENT_NAME_TAKEN: Spec(Fatal.NO, None, 409),
    Code.UNRESTRICTED_NETWORK_NOT_ALLOWED: Spec(Fatal.SOMETIMES, CLOSE_POLICY, 400),
    Code.PACKAGES_NOT_SUPPORTED: Spec(Fatal.SOMETIMES, CLOSE_POLICY, 400),
    # An environment's packages could not be built (packages.py): refuses a new session of it, or
    # ends a starting one, with pip's words.
    Code.ENVIRONMENT_BUILD_FAILED: Spec(Fatal.SOMETIMES, CLOSE_POLICY, 400),
    Code.NOT_SUPPORTED: Spec(Fatal.SOMETIMES, CLOSE_POLICY, 501),
    Code.INVALID_AFTER: Spec(Fatal.YES, CLOSE_POLICY, 400),
    # The sessions API (HTTP): an archived session is read-only.
    Code.SESSION_ARCHIVED: Spec(Fatal.NO, None, 400),
    # The Files API (HTTP).
    Code.FILE_NOT_FOUND: Spec(Fatal.NO, None, 404),
    Code.FILE_EXPIRED: Spec(Fatal.NO, None, 404),
    Code.FILE_TOO_LARGE: Spec(Fatal.NO, None, 413),
    Code.FILE_NOT_DOWNLOADABLE: Spec(Fatal.NO, None, 400),
    # The webhook endpoints API (HTTP only).
    Code.WEBHOOK_NOT_FOUND: Spec(Fatal.NO, None, 404),
    Code.WEBHOOK_URL_NOT_ALLOWED: Spec(Fatal.NO, None, 400),
    Code.TOO_MANY_WEBHOOKS: Spec(Fatal.NO, None, 400),
    # The vaults API (HTTP; vault_proxy.py). credential_not_supported also refuses a session whose
    # vaults hold a credential this backend cannot inject (environment_variable on Kubernetes), and is
    # a notice at a sandbox's start (that, or a variable that cannot be set: egress_secrets.py).
    Code.VAULT_NOT_FOUND: Spec(Fatal.NO, None, 404),
    Code.VAULT_ARCHIVED: Spec(Fatal.NO, None, 400),
    Code.CREDENTIAL_NOT_FOUND: Spec(Fatal.NO, None, 404),
    Code.CREDENTIAL_CONFLICT: Spec(Fatal.NO, None, 409),
    Code.CREDENTIAL_NOT_SUPPORTED: Spec(Fatal.NO, None, 501),
    Code.SECRET_KEY_UNAVAILABLE: Spec(Fatal.NO, None, 503),
    # Session resources (HTTP) and files in and out of a sandbox (notices on the session).
    Code.RESOURCE_NOT_FOUND: Spec(Fatal.NO, None, 404),
    Code.RESOURCE_NOT_MOUNTED: Spec(Fatal.NO, None, 500),
    Code.OUTPUT_TOO_LARGE: Spec(Fatal.NO, None, 413),
    Code.OUTPUT_NOT_STORED: Spec(Fatal.NO, None, 503),
    Code.WORKSPACE_FILE_NOT_FOUND: Spec(Fatal.NO, None, 404),
    Code.INTERNAL: Spec(Fatal.YES, CLOSE_INTERNAL, 500),
}


def close_code(code: Code) -> int:
    """The close code of a connection ended by ``code``."""
    return CODES[code].close or CLOSE_NORMAL


def http_status(code: Code) -> int:
    return CODES[code].http


def error_body(code: Code, message: str) -> dict[str, str]:
    """The JSON body of an HTTP refusal (a handshake's or a route's)."""
    return {"type": "error", "code": str(code), "message": message}


# What a database outage looks like from the service: the store's own errors,
# SQLAlchemy's, and the drivers' connection errors underneath.
STORE_ERRORS: tuple[type[BaseException], ...] = (MoorageStoreError, SQLAlchemyError, OSError)


def store_unavailable(exc: BaseException) -> str:
    """What a client (and the log) may hear of a database failure: its kind,
    never the driver's text, which can carry SQL and its parameters."""
    kind = type(exc.__cause__ or exc).__name__ if isinstance(exc, MoorageStoreError) else type(exc).__name__
    return f"the session store is unavailable ({kind}); try again"
