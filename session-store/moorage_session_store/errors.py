"""The one rooted exception tree of the session store: every error carries a stable ``code``."""

from __future__ import annotations


class MoorageStoreError(Exception):
    """Base of every error this package raises on purpose. ``code`` is stable and machine-readable."""

    code: str = "store_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DatabaseUnavailable(MoorageStoreError):
    """The database cannot be reached or refused the operation (connection, lock, I/O).

    The message names the host:port/database or the SQLite path, never a password.
    """

    code = "store_unavailable"


class SessionNotFound(MoorageStoreError):
    """A session record that must exist does not (``update``, ``add_usage``, ``save_workspace``)."""

    code = "session_not_found"


class InvalidRecord(MoorageStoreError, ValueError):
    """A caller passed a value the records table does not accept (unknown field, unknown state)."""

    code = "invalid_record"


class UnsupportedDatabaseURL(MoorageStoreError, ValueError):
    """The URL names a database other than SQLite or PostgreSQL, or cannot be parsed."""

    code = "store_config"


class SessionExists(MoorageStoreError):
    """``SessionRecords.create`` was given an id that is already taken."""

    code = "session_exists"


class AgentNotFound(MoorageStoreError):
    """No agent of that id (and version) for that tenant."""

    code = "agent_not_found"


class AgentArchived(MoorageStoreError):
    """The agent is archived: it is read-only."""

    code = "agent_archived"


class VersionConflict(MoorageStoreError):
    """``Agents.update`` was given a base version that is no longer the agent's current one."""

    code = "version_conflict"


class EnvironmentNotFound(MoorageStoreError):
    """No environment of that id for that tenant."""

    code = "environment_not_found"


class EnvironmentArchived(MoorageStoreError):
    """The environment is archived: it is read-only."""

    code = "environment_archived"


class EnvironmentNameTaken(MoorageStoreError):
    """Another environment of the tenant already has that name."""

    code = "environment_name_taken"


class RevisionConflict(MoorageStoreError):
    """``Environments.update`` was given a base revision that is no longer the environment's."""

    code = "revision_conflict"


class FileNotFound(MoorageStoreError):
    """No complete file of that id for that tenant (or it was deleted while it was read)."""

    code = "file_not_found"


class FileTooLarge(MoorageStoreError):
    """``Files.put`` received more than its ``max_bytes`` (``limit``); nothing of it was kept."""

    code = "file_too_large"

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class VaultNotFound(MoorageStoreError):
    """No vault (or credential) of that id for that tenant."""

    code = "vault_not_found"


class VaultArchived(MoorageStoreError):
    """The vault (or credential) is archived: it is read-only."""

    code = "vault_archived"


class CredentialConflict(MoorageStoreError):
    """The vault already holds a live credential for that MCP server URL (or secret name)."""

    code = "credential_conflict"


class VaultFull(MoorageStoreError):
    """The vault holds its limit of live credentials."""

    code = "vault_full"
