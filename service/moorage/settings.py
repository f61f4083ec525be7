"""One typed Settings object, loaded once in ``main`` and passed in.

Names come from ARCHITECTURE.md; nothing else in the service reads
``os.environ``.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any, Literal

from moorage_session_store.blobs import parse_location
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .accounting import DEFAULT_PRICES
from .pending import AgentTools
from .tunnel import parse_networks
from .warm_marks import parse_marked


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOORAGE_", extra="ignore")

    anthropic_api_key: SecretStr = Field(default=SecretStr(""), validation_alias=AliasChoices("ANTHROPIC_API_KEY"))
    anthropic_base_url: str = Field(
        default="https://api.anthropic.com", validation_alias=AliasChoices("ANTHROPIC_BASE_URL")
    )
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = Path("var")
    database_url: str = ""
    sandbox: Literal["local", "docker", "kubernetes"] = "local"
    max_turns: int = Field(default=50, ge=1)
    # User messages a session holds while a turn runs (``queue_full`` beyond).
    max_queued_turns: int = Field(default=8, ge=0, le=1000)
    max_budget_usd: float | None = None
    # The CLI's partial-message deltas (``stream_event`` frames): WebSocket clients get them, and
    # HTTP streams with ``event_deltas[]`` turn them into ``event_start``/``event_delta`` previews.
    stream_deltas: bool = False
    # Per tenant per UTC day, across its sessions (enforced at the model proxy).
    tenant_daily_budget_usd: float | None = None
    # USD per million tokens by model family: {"claude-opus": {"input": 5, ...}}.
    prices: dict[str, dict[str, float]] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    turn_timeout_s: float = Field(default=600.0, gt=0)
    idle_timeout_s: float = Field(default=600.0, gt=0)
    # Save a changed workspace to the database after a turn at most this
    # often (0: after every turn that changed it), so a host crash loses at
    # most this much of a live session's files; suspension always saves.
    workspace_checkpoint_s: float = Field(default=60.0, ge=0)
    # How long an interrupted turn may take to wind down before its sandbox
    # is killed (wall-clock guard and max-turns backstop).
    interrupt_grace_s: float = Field(default=10.0, gt=0)
    # On SIGTERM: how long running turns may take to finish before their
    # sessions are suspended anyway (keep it under the orchestrator's own
    # grace period, e.g. Kubernetes' terminationGracePeriodSeconds).
    drain_grace_s: float = Field(default=30.0, ge=0)
    # Sandboxes kept started and loaded ahead of demand (0: always cold).
    warm_sandboxes: int = Field(default=2, ge=0)
    # Started agents: warm sandboxes whose CLI already runs for one agent spec (pool.py,
    # warm_plan.py): at most this many in all (0: none), this many per spec, and an
    # unpinned spec's let go after this long without a new session of it.
    warm_agents: int = Field(default=2, ge=0)
    warm_agents_per_spec: int = Field(default=2, ge=1)
    warm_agent_idle_s: float = Field(default=600.0, ge=0)
    # What all started agents may hold in memory together (0: no budget, the count only): the pool
    # keeps no more than fit, at what it measured one to hold (else about 200 MiB each).
    warm_agents_memory_bytes: int = Field(default=0, ge=0)
    # Agents marked for warm-up: "agent_id@tenant,…" (a bare agent_id: tenant "default"). Each
    # one's current version is pinned like the default spec (warm_marks.py); re-read every minute.
    warm_agent_ids: str = ""
    sandbox_start_timeout_s: float = Field(default=60.0, gt=0)
    model: str | None = None
    # Per-sandbox limits (cgroups): memory, processes+threads, CPUs.
    sandbox_memory_bytes: int = Field(default=1024**3, ge=64 * 1024**2)
    sandbox_pids: int = Field(default=256, ge=32)
    sandbox_cpus: float = Field(default=1.0, gt=0)
    # The system call filter (sandbox/seccomp.py); turn off only to debug.
    sandbox_seccomp: bool = True
    # Opt-in HTTPS egress from sandboxes, through the service's tunnel:
    # "pypi.org,files.pythonhosted.org,*.github.com,host:8443" (tunnel.py).
    egress_allow: str = ""
    # Non-public networks the tunnel may still reach (an internal mirror):
    # "10.1.0.0/16". Public addresses need no entry; everything else is refused.
    egress_allow_networks: str = ""
    # A PEM file of CAs the tunnel also trusts, besides the system's, when it connects on to a host
    # an environment_variable vault credential is for (an internal server, tests).
    egress_upstream_ca_file: str = ""
    # The key that seals vault credentials at rest (vault_crypto.py): 32 random bytes, base64.
    # Without it no credential can be created, and the service refuses to start once any exists.
    secret_key: SecretStr = SecretStr("")
    # Whether a tenant's environment may ask for unrestricted networking
    # (environments.py); off: only "limited" with allowed_hosts.
    allow_unrestricted_network: bool = False
    # Size of each of the sandbox's tmpfs (/tmp, HOME, /dev/shm, /run).
    sandbox_tmp_bytes: int = Field(default=256 * 1024**2, ge=16 * 1024**2)
    # Size of every sandbox's /mnt/session (a tmpfs: uploads/ holds the session's file
    # resources, outputs/ what the agent leaves for the client). Like every tmpfs, what it
    # holds counts toward the sandbox's memory limit.
    session_files_bytes: int = Field(default=256 * 1024**2, ge=1024**2)
    # Outputs (/mnt/session/outputs -> session-scoped files): the largest one kept (bigger:
    # an output_too_large notice), and the most one turn's outputs may hold in all.
    output_max_bytes: int = Field(default=100 * 1024**2, ge=1)
    output_turn_max_bytes: int = Field(default=256 * 1024**2, ge=1)
    # Local backend: the toolbox venv (container/toolbox.txt; sandbox/toolbox.py) mounted
    # read-only into every sandbox, its bin/ first on PATH: a path, "" (none: the host's bare
    # python3), or "auto" (the one `make toolbox` linked from the service venv, if any).
    sandbox_toolbox: str = "auto"
    # Environment packages (packages.py): where built layers live (one directory per set, shared
    # by every service on the host), the index pip builds them from ("" = pip's own configuration:
    # PIP_INDEX_URL, pip.conf, else PyPI) and how long one build may take.
    package_cache_dir: Path = Path.home() / ".cache" / "moorage" / "packages"
    package_index_url: str = ""
    package_build_timeout_s: float = Field(default=600.0, gt=0)
    package_npm_registry: str = ""  # npm packages' registry ("" = npm's own configuration)
    # Docker and Kubernetes backends: the sandbox image (container/build-images.sh builds it).
    sandbox_image: str = "moorage-sandbox:0.1.0"
    # Docker backend: the engine's API ("" = DOCKER_HOST or /var/run/docker.sock).
    docker_url: str = ""
    # Kubernetes backend: where sandbox pods go ("" = this pod's own namespace,
    # else "moorage"), and an optional RuntimeClass (gvisor, kata) for them.
    k8s_namespace: str = ""
    k8s_runtime_class: str | None = None
    # Kubernetes backend: the model proxy's TCP port, served on this replica's
    # pod IP (downward API status.podIP) and handed to its sandbox pods.
    proxy_port: int = Field(default=8081, ge=0, le=65535)
    pod_ip: str = ""
    # Kubernetes backend: this replica's own pod (downward API metadata.name /
    # metadata.uid). Sandbox pods name it as their owner, so the cluster's
    # garbage collector deletes them when a replaced replica's pod goes.
    pod_name: str = ""
    pod_uid: str = ""
    # Host uids handed to local sandboxes, one per live sandbox.
    sandbox_uid_base: int = Field(default=200_000, ge=1000)
    sandbox_uid_count: int = Field(default=10_000, ge=1)
    # Live sessions (sandboxes) allowed at once, per node and per tenant on it.
    max_sessions_per_node: int = Field(default=64, ge=1)
    max_sessions_per_tenant: int = Field(default=16, ge=1)
    # Sandboxes starting at once (starting is CPU-bound, ~1-2 CPU-seconds each);
    # more new sessions wait their turn, at most sandbox_start_timeout_s.
    max_starting_sandboxes: int = Field(default=4, ge=1)
    # Client frames per second per connection, and user turns per minute per tenant.
    frames_per_s: float = Field(default=20.0, gt=0)
    frames_burst: int = Field(default=40, ge=1)
    turns_per_minute_per_tenant: float = Field(default=120.0, gt=0)
    # tenant:token,… — empty: no authentication (loopback binds only).
    api_keys: str = ""
    # How long a valid table token (moorage tokens) is trusted without a database read:
    # the most a revocation can lag on a replica.
    auth_cache_ttl_s: float = Field(default=5.0, ge=0, le=60)
    # Largest client frame accepted (bigger: close 1009). At most 8 MiB: the
    # SDK's line buffer is sized 4x this, within the channel's 32 MiB lines.
    max_frame_bytes: int = Field(default=1024 * 1024, ge=1024, le=8 * 1024 * 1024)
    # The workspace's size: as root, a sized filesystem of its own (writes
    # past it fail with ENOSPC); the largest workspace a suspension saves.
    workspace_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    # Who holds a session's lease: stable across restarts of this service
    # (default: host name + state dir), unique per replica.
    replica_id: str = ""
    lease_ttl_s: float = Field(default=30.0, gt=1)
    # Attaching to a session another replica runs: ask it to hand the session
    # over (it does once no client uses it there) and wait this long for it.
    handover_wait_s: float = Field(default=15.0, ge=0)
    # storage: what a tenant may keep in the database (workspace snapshots +
    # transcripts + event logs + files; 0 = unlimited). Over it, new sessions are refused and a
    # workspace save that would grow it is skipped (the last save is kept).
    tenant_storage_bytes: int = Field(default=10 * 1024**3, ge=0)
    # files (POST /v1/files): the largest upload, in bytes (413 file_too_large past it).
    # Files count toward MOORAGE_TENANT_STORAGE_BYTES too.
    file_max_bytes: int = Field(default=100 * 1024**2, ge=1)
    # Where files' bytes go: "" = the database (file_chunks rows), or "s3://bucket[/prefix]"
    # for an S3-compatible object store (metadata stays in the database; file_blobs.py). The
    # endpoint (empty: AWS itself), region and credentials; credentials left empty come from
    # botocore's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
    # ~/.aws, an instance or pod role). The secret is never logged.
    file_store: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    # Objects of deleted files go within this long (the deletion outbox is drained); objects
    # with no files row (a crash mid-way) are looked for this often and deleted once older than
    # the grace period.
    file_store_drain_s: float = Field(default=10.0, gt=0)
    file_store_sweep_s: float = Field(default=3600.0, gt=0)
    file_store_orphan_grace_s: float = Field(default=3600.0, ge=0)
    # storage: sessions suspended longer than this are deleted with all they
    # stored (0 = keep forever).
    session_retention_days: float = Field(default=30.0, ge=0)
    # snapshots: the longest a workspace snapshot (archive helper + database
    # writes) may take before it is abandoned and the helper killed.
    workspace_snapshot_timeout_s: float = Field(default=300.0, gt=0)
    # model proxy: the largest request body a sandbox may send the model (a
    # long conversation is large), open connections per sandbox socket (and
    # per pod on the Kubernetes proxy port), how long a request's head and
    # then its body may take to arrive, and how long a response is still read
    # (and metered) after its sandbox hung up.
    model_request_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024 * 1024)
    model_proxy_connections_per_sandbox: int = Field(default=32, ge=2)
    model_proxy_request_timeout_s: float = Field(default=30.0, gt=0)
    model_proxy_drain_timeout_s: float = Field(default=600.0, gt=0)
    # --- edges: the public listener, browsers, the metrics listener ---
    # Open client connections at most (HTTP and WebSocket; never more than
    # a quarter of the open-file limit): past it a new connection is closed at once.
    max_connections: int = Field(default=1024, ge=1)
    # A client must send a request's complete headers (a WebSocket's whole
    # handshake request) within this long of connecting, or of its last response.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # Browser origins allowed to open sessions, besides the service's own:
    # "https://console.example.com,http://localhost:3000". Requests without an
    # Origin header (non-browser clients) are not affected.
    allowed_origins: str = ""
    # A separate listener for /metrics and /readyz (0: none; they stay on the
    # main port). When set, the main port no longer serves them.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # -- memory (issue 10 item 4) --
    # Bytes of outbound frames one client connection may have waiting; a
    # client further behind is closed (slow_consumer) and may reconnect.
    # One frame larger than this is still sent, alone.
    client_queue_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    # -- approvals and custom tools (issue 11 items 6, 7) --
    # A permission request or custom tool call no client answers within this
    # long is denied (an error result for a custom tool), with that reason.
    permission_timeout_s: float = Field(default=300.0, gt=0)
    # The operator's default agent's tool policy, until stored agents land:
    # '{"ask_tools": ["Bash"], "custom_tools": [{"name", "description", "input_schema"}]}'.
    default_agent: dict[str, Any] = Field(default_factory=dict)
    # -- webhooks (issue 13 item 4; webhook_delivery.py) --
    # Non-public networks webhook targets may resolve to, where plain http:// is
    # also allowed: "127.0.0.0/8" for a receiver on this host. Public addresses
    # need no entry (and https://); everything else is refused.
    webhook_allow_networks: str = ""
    # Attempts per event and endpoint; the wait before attempt n+1 is
    # base * 2^(n-1), at most webhook_backoff_max_s, with jitter (50-100 %).
    webhook_max_attempts: int = Field(default=5, ge=1, le=100)
    webhook_backoff_base_ms: int = Field(default=5000, ge=1)
    webhook_backoff_max_s: float = Field(default=120.0, gt=0)
    # Events in a row that could not be delivered before the endpoint is disabled.
    webhook_disable_after: int = Field(default=5, ge=1)
    # One attempt: connect + send + status line, at most this long.
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # How often each replica looks for due deliveries (and at most this much
    # later than due an attempt starts); a claim holds a row this long.
    webhook_poll_s: float = Field(default=1.0, gt=0)
    # Delivered, failed and dropped deliveries are deleted after this long.
    webhook_keep_s: float = Field(default=7 * 24 * 3600.0, ge=0)
    log_level: str = "info"

    @field_validator("default_agent")
    @classmethod
    def _agent_tools(cls, value: dict[str, Any]) -> dict[str, Any]:
        AgentTools.parse(value)  # a ValueError names the bad field at start-up
        return value

    @field_validator("warm_agent_ids")
    @classmethod
    def _warm_agent_ids(cls, value: str) -> str:
        parse_marked(value)  # a ValueError names the bad entry at start-up
        return value

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)  # a ValueError names the bad CIDR at start-up
        return value

    @field_validator("file_store")
    @classmethod
    def _file_store(cls, value: str) -> str:
        if value:
            parse_location(value)  # a ValueError names the bad location at start-up
        return value

    @property
    def replica(self) -> str:
        if self.replica_id:
            return self.replica_id
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]
        return f"{socket.gethostname()}:{digest}"

    @property
    def database_url_or_default(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'moorage.db').resolve()}"
