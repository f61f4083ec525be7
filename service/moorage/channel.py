"""The runner channel, without I/O: one typed, versioned definition of the
frames that cross a sandbox's stdio, and a strict parser for what the runner
sends.

Everything a runner writes is untrusted: the agent runs as the runner's own
uid inside the sandbox and can replace it. So a runner line is parsed into a
typed frame with a bounded size and nesting depth, strict JSON (no
NaN/Infinity, no unpaired surrogates), a kind from a fixed set and checked
field types, and ``RunnerChannel`` checks that frames come in an order the
real runner can produce. Anything else is a ``ChannelViolation`` with a
stable ``Reason``; the session ends (``sandbox_crashed``) and never echoes the
offending bytes. A line that is not meant as a frame at all (it does not
start with ``{``: a stray print) is ``Garbage`` and ignored.

The runner (``container/moorage_runner/channel.py``) carries its own copy of
the constants below; tests/unit/test_channel.py keeps the two equal.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Literal

from .session_paths import output_name_problem

# -- shared with container/moorage_runner/channel.py (kept equal by a test) --
# 2: approvals and custom tools (an older runner would ignore ``agent``);
# 3: files in (``put_file``) and out (``collect_outputs``) of /mnt/session;
# 4: ``prestart`` / ``prestarted`` (a warm pool starts the CLI before a session claims it).
CHANNEL_VERSION = 4
# A frame carries one SDK message; a Read of a large file can be big.
MAX_FRAME_BYTES = 32 * 1024 * 1024
# Objects and arrays inside one another, counting the frame itself. The real
# runner's deepest frame (an rpc append of a tool call's input) is ~10 plus
# the tool input's own depth; Python's parser fails near 1000.
MAX_DEPTH = 100
RUNNER_KINDS = frozenset(
    {
        "loaded",
        "prestarted",
        "ready",
        "sdk",
        "rpc",
        "error",
        "restored",
        "snapshot",
        "permission_request",
        "custom_tool_use",
        "file_put",
        "output",
        "outputs_done",
    }
)
SERVICE_KINDS = frozenset(
    {
        "prestart",
        "start",
        "user",
        "interrupt",
        "restore",
        "snapshot",
        "rpc_result",
        "rpc_error",
        "permission_response",
        "custom_tool_result",
        "put_file",
        "collect_outputs",
    }
)
# Raw bytes per ``put_file`` / ``output`` frame (base64 adds a third).
FILE_CHUNK_BYTES = 512 * 1024
SESSION_DIR = "/mnt/session"  # a sized tmpfs in every sandbox: uploads/ and outputs/
RPC_METHODS = frozenset({"store.append", "store.load", "store.list_subkeys"})
# -- end of the shared constants --

# JSON values in one frame (roughly: commas and brackets outside strings).
# Parsed, a value costs up to ~30x its bytes (``[[],[],…]``): this keeps a
# 32 MiB line of tiny values from becoming ~1 GB of Python objects. A real
# frame's bulk is strings (a file the agent read), which count once.
MAX_VALUES = 1_000_000
MAX_RPC_ID_CHARS = 64
MAX_TEXT_CHARS = 64 * 1024  # error / restore / snapshot messages (the session keeps less)
MAX_REQUEST_ID_CHARS = 128  # a permission request's or custom tool call's id (a tool_use id is ~30)
MAX_TOOL_NAME_CHARS = 256
MAX_PATH_CHARS = 1024  # a ``file_put``'s path (the service sent it: session_paths.MAX_MOUNT_PATH_CHARS)

RpcMethod = Literal["store.append", "store.load", "store.list_subkeys"]


class Reason(StrEnum):
    """Why a runner line was refused: stable, safe to log and to show."""

    TOO_LARGE = "frame_too_large"
    TOO_DEEP = "frame_too_deep"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_FINITE = "not_finite"
    NOT_OBJECT = "not_an_object"
    UNKNOWN_KIND = "unknown_kind"
    BAD_FIELD = "bad_field"
    OUT_OF_ORDER = "out_of_order"


class ChannelViolation(Exception):
    """The runner broke the channel protocol. ``detail`` is ours (a field
    name, a phase), never text the runner sent."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason
        self.detail = detail

    @property
    def message(self) -> str:
        """What a client is told."""
        return f"the sandbox broke the channel protocol ({self}); the session was stopped"


# -- runner -> service ------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """Imports done; waiting for ``start`` (a warm pool may hold it here)."""

    version: int = CHANNEL_VERSION


@dataclass(frozen=True)
class Prestarted:
    """The answer to ``prestart``: the SDK client is connected with the options it named, and
    the runner waits for the ``start`` of the session that claims it (``put_file`` may come first)."""


@dataclass(frozen=True)
class Ready:
    """The SDK client is connected."""


@dataclass(frozen=True)
class Sdk:
    """One SDK message, the CLI's own stream-json object."""

    message: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.message["type"])


@dataclass(frozen=True)
class Rpc:
    """A SessionStore call, answered with ``RpcResult`` or ``RpcError``."""

    id: int | str
    method: RpcMethod
    params: dict[str, Any]


@dataclass(frozen=True)
class RunnerError:
    """The runner cannot go on; it exits next. ``message`` is runner text:
    shown to clients (bounded), never a metric label."""

    message: str


@dataclass(frozen=True)
class Restored:
    """The answer to the last ``restore`` frame."""

    ok: bool
    files: int
    message: str


@dataclass(frozen=True)
class Snapshot:
    """One chunk of a workspace snapshot the service asked for."""

    ok: bool
    data: str
    last: bool
    message: str


@dataclass(frozen=True)
class PermissionRequest:
    """The agent wants to run ``tool`` (an ``always_ask`` tool): a client
    answers with allow or deny (``PermissionResponse``)."""

    id: str
    tool: str
    input: dict[str, Any]


@dataclass(frozen=True)
class CustomToolUse:
    """The agent called a client-executed custom tool: a client answers
    with its result (``CustomToolResult``)."""

    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class FilePut:
    """The answer to a ``put_file`` whose ``last`` frame went out: the file is at ``path``
    (renamed into place, read-only), or not (``message`` says why: runner text)."""

    path: str
    ok: bool
    message: str


@dataclass(frozen=True)
class Output:
    """One chunk of a file under /mnt/session/outputs (``name``: relative to it, checked by
    ``session_paths.output_name_problem``), or, with ``too_large``, a file over the cap
    (no data). ``size`` is the runner's claim: the service counts the bytes itself."""

    name: str
    size: int
    data: str  # base64
    last: bool
    too_large: bool = False


@dataclass(frozen=True)
class OutputsDone:
    """The end of the answer to ``collect_outputs``: ``count`` files reported."""

    count: int


@dataclass(frozen=True)
class Garbage:
    """A line that is not meant as a frame (a stray print); ignored."""

    size: int


@dataclass(frozen=True)
class Violation:
    """What a backend's ``recv`` yields for a line that broke the protocol
    (``decode_frame`` never raises); the session ends on it."""

    reason: Reason
    detail: str = ""

    def error(self) -> ChannelViolation:
        return ChannelViolation(self.reason, self.detail)


RunnerFrame = (
    Loaded
    | Prestarted
    | Ready
    | Sdk
    | Rpc
    | RunnerError
    | Restored
    | Snapshot
    | PermissionRequest
    | CustomToolUse
    | FilePut
    | Output
    | OutputsDone
    | Garbage
    | Violation
)


# -- service -> runner ------------------------------------------------------


@dataclass(frozen=True)
class Start:
    options: dict[str, Any]
    model_proxy: str
    store: bool = True
    egress_proxy: str | None = None
    # The session's agent (``agents.runner_agent``: id, version, the stored spec and its tool
    # policy ``ask_tools``/``custom_tools``, pending.AgentTools); None: the operator's default.
    agent: dict[str, Any] | None = None
    # The agent's MCP servers to reach through the model bridge at ``/mcp/<name>`` (their vault
    # credential is added outside the sandbox: vault_proxy.py), by name; the others go direct.
    mcp_proxy: tuple[str, ...] = ()
    # Variables for the CLI and its tools: the placeholders of the session's environment_variable
    # vault credentials (egress_secrets.py), never a secret.
    env: dict[str, str] = field(default_factory=dict)
    # The PEM certificate of the sandbox's own egress CA, for its trust bundle (egress_ca.py).
    egress_ca: str | None = None

    def wire(self, kind: Literal["start", "prestart"] = "start") -> dict[str, Any]:
        frame: dict[str, Any] = {
            "kind": kind,
            "version": CHANNEL_VERSION,
            "options": self.options,
            "model_proxy": self.model_proxy,
            "store": self.store,
        }
        if self.egress_proxy is not None:
            frame["egress_proxy"] = self.egress_proxy
        if self.agent is not None:
            frame["agent"] = self.agent
        if self.mcp_proxy:
            frame["mcp_proxy"] = list(self.mcp_proxy)
        if self.env:
            frame["env"] = dict(self.env)
        if self.egress_ca is not None:
            frame["egress_ca"] = self.egress_ca
        return frame


@dataclass(frozen=True)
class Prestart:
    """Start the SDK client now with ``start``'s options, for a session not made yet (a warm
    pool's started agent). The runner answers ``prestarted``; the ``start`` that follows is
    served by that client when it is the same frame (else the runner starts a new one)."""

    start: Start

    def wire(self) -> dict[str, Any]:
        return self.start.wire("prestart")


@dataclass(frozen=True)
class User:
    message: dict[str, Any]  # a stream-json user line

    def wire(self) -> dict[str, Any]:
        return {"kind": "user", "message": self.message}


@dataclass(frozen=True)
class Interrupt:
    def wire(self) -> dict[str, Any]:
        return {"kind": "interrupt"}


@dataclass(frozen=True)
class Restore:
    data: str  # base64
    last: bool

    def wire(self) -> dict[str, Any]:
        return {"kind": "restore", "data": self.data, "last": self.last}


@dataclass(frozen=True)
class SnapshotRequest:
    max_bytes: int

    def wire(self) -> dict[str, Any]:
        return {"kind": "snapshot", "max_bytes": self.max_bytes}


@dataclass(frozen=True)
class RpcResult:
    id: int | str
    result: Any
    more: bool = False

    def wire(self) -> dict[str, Any]:
        frame: dict[str, Any] = {"kind": "rpc_result", "id": self.id, "result": self.result}
        if self.more:
            frame["more"] = True
        return frame


@dataclass(frozen=True)
class RpcError:
    id: int | str
    message: str

    def wire(self) -> dict[str, Any]:
        return {"kind": "rpc_error", "id": self.id, "message": self.message}


@dataclass(frozen=True)
class PermissionResponse:
    id: str
    behavior: Literal["allow", "deny"]
    message: str = ""

    def wire(self) -> dict[str, Any]:
        return {"kind": "permission_response", "id": self.id, "behavior": self.behavior, "message": self.message}


@dataclass(frozen=True)
class CustomToolResult:
    id: str
    content: list[dict[str, Any]]
    is_error: bool = False

    def wire(self) -> dict[str, Any]:
        return {"kind": "custom_tool_result", "id": self.id, "content": self.content, "is_error": self.is_error}


@dataclass(frozen=True)
class PutFile:
    """One chunk (``FILE_CHUNK_BYTES`` raw at most) of a file for the sandbox, at ``path``
    (absolute, checked by ``session_paths.mount_path_problem``); ``last`` asks for ``file_put``."""

    path: str
    data: str  # base64
    last: bool

    def wire(self) -> dict[str, Any]:
        return {"kind": "put_file", "path": self.path, "data": self.data, "last": self.last}


@dataclass(frozen=True)
class CollectOutputs:
    """Report the files under /mnt/session/outputs that are new or changed since the last
    report: each up to ``max_bytes`` (else ``too_large``), ``max_total_bytes`` in all."""

    max_bytes: int
    max_total_bytes: int

    def wire(self) -> dict[str, Any]:
        return {"kind": "collect_outputs", "max_bytes": self.max_bytes, "max_total_bytes": self.max_total_bytes}


ServiceFrame = (
    Start
    | Prestart
    | User
    | Interrupt
    | Restore
    | SnapshotRequest
    | RpcResult
    | RpcError
    | PermissionResponse
    | CustomToolResult
    | PutFile
    | CollectOutputs
)


# -- the strict parser ------------------------------------------------------


class _NotFinite(ValueError):
    pass


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NotFinite(token[:0])
    return value


def _constant(token: str) -> Any:
    raise _NotFinite(token[:0])


# One JSON string (unrolled, so linear on long strings).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _values(text: str) -> int:
    """An upper bound of the values in ``text``, counting brackets and commas."""
    return text.count(",") + text.count("[") + text.count("{")


# An escaped UTF-16 surrogate (\\ud800-\\udfff): unpaired, it cannot be re-encoded.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _decode(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_FRAME_BYTES:
        raise ChannelViolation(Reason.TOO_LARGE)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ChannelViolation(Reason.NOT_UTF8) from None
    # Cheap bound first: a line with fewer brackets than the limit cannot nest deeper.
    shallow = text.count("[") + text.count("{") <= MAX_DEPTH
    if _values(text) > MAX_VALUES and _values(_STRING.sub("", text)) > MAX_VALUES:
        raise ChannelViolation(Reason.TOO_LARGE, "too many values")
    try:
        data = json.loads(text, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise ChannelViolation(Reason.TOO_DEEP) from None
    except _NotFinite:
        raise ChannelViolation(Reason.NOT_FINITE) from None
    except ValueError:  # also: an integer too long to convert
        raise ChannelViolation(Reason.NOT_JSON) from None
    if not isinstance(data, dict):
        raise ChannelViolation(Reason.NOT_OBJECT)
    if not shallow and _depth_exceeds(data, MAX_DEPTH):
        raise ChannelViolation(Reason.TOO_DEEP)
    if _SURROGATE_ESCAPE.search(text) and _has_surrogate(data):
        raise ChannelViolation(Reason.NOT_UTF8, "unpaired surrogate")
    return data


def _field(data: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    """``data[name]`` if it has one of ``kinds`` (bool is not an int here);
    ``default`` when absent and a default is given."""
    if name not in data:
        if default is not None:
            return default
        raise ChannelViolation(Reason.BAD_FIELD, f"{data.get('kind')}.{name} is missing")
    value = data[name]
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ChannelViolation(Reason.BAD_FIELD, f"{data.get('kind')}.{name} has the wrong type")
    if not isinstance(value, kinds):
        raise ChannelViolation(Reason.BAD_FIELD, f"{data.get('kind')}.{name} has the wrong type")
    return value


def _text(data: dict[str, Any], name: str) -> str:
    value: str = _field(data, name, str, "")
    if len(value) > MAX_TEXT_CHARS:
        raise ChannelViolation(Reason.BAD_FIELD, f"{data.get('kind')}.{name} is too long")
    return value


def _rpc_id(data: dict[str, Any]) -> int | str:
    value: int | str = _field(data, "id", (int, str))
    if isinstance(value, str) and not 0 < len(value) <= MAX_RPC_ID_CHARS:
        raise ChannelViolation(Reason.BAD_FIELD, "rpc.id is empty or too long")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ChannelViolation(Reason.BAD_FIELD, "rpc.id is out of range")
    return value


def _bounded(data: dict[str, Any], name: str, limit: int) -> str:
    value: str = _field(data, name, str)
    if not 0 < len(value) <= limit:
        raise ChannelViolation(Reason.BAD_FIELD, f"{data.get('kind')}.{name} is empty or too long")
    return value


def parse_runner_line(line: bytes) -> RunnerFrame:
    """One line from a runner as a typed frame; ``ChannelViolation`` if it
    breaks the protocol. Never returns ``Violation`` (``decode_frame`` does)."""
    if not line.lstrip().startswith(b"{"):
        if len(line) > MAX_FRAME_BYTES:
            raise ChannelViolation(Reason.TOO_LARGE)
        return Garbage(len(line))
    data = _decode(line)
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in RUNNER_KINDS:
        raise ChannelViolation(Reason.UNKNOWN_KIND)
    if kind == "loaded":
        version: int = _field(data, "version", int, 1)  # a runner built before versioning speaks 1
        return Loaded(version)
    if kind == "ready":
        return Ready()
    if kind == "prestarted":
        return Prestarted()
    if kind == "sdk":
        message: dict[str, Any] = _field(data, "message", dict)
        if not isinstance(message.get("type"), str):
            raise ChannelViolation(Reason.BAD_FIELD, "sdk.message.type is not a string")
        return Sdk(message)
    if kind == "rpc":
        rpc_id = _rpc_id(data)
        method = _field(data, "method", str)
        if method not in RPC_METHODS:
            raise ChannelViolation(Reason.BAD_FIELD, "rpc.method is not a store method")
        params: dict[str, Any] = _field(data, "params", dict)
        return Rpc(rpc_id, method, params)
    if kind == "error":
        return RunnerError(_text(data, "message"))
    if kind in ("permission_request", "custom_tool_use"):
        request_id = _bounded(data, "id", MAX_REQUEST_ID_CHARS)
        tool_input: dict[str, Any] = _field(data, "input", dict)
        if kind == "permission_request":
            return PermissionRequest(request_id, _bounded(data, "tool", MAX_TOOL_NAME_CHARS), tool_input)
        return CustomToolUse(request_id, _bounded(data, "name", MAX_TOOL_NAME_CHARS), tool_input)
    if kind in ("file_put", "output", "outputs_done"):
        return _file_frame(kind, data)
    if kind == "restored":
        ok: bool = _field(data, "ok", bool)
        files: int = _field(data, "files", int, 0)
        return Restored(ok, files, _text(data, "message"))
    # snapshot
    ok = _field(data, "ok", bool)
    data_b64: str = _field(data, "data", str, "")
    if len(data_b64) > MAX_FRAME_BYTES:
        raise ChannelViolation(Reason.TOO_LARGE)
    last: bool = _field(data, "last", bool, False)
    return Snapshot(ok, data_b64, last, _text(data, "message"))


def _count(data: dict[str, Any], name: str) -> int:
    value: int = _field(data, name, int)
    if not 0 <= value < 2**63:
        raise ChannelViolation(Reason.BAD_FIELD, f"{data.get('kind')}.{name} is out of range")
    return value


def _file_frame(kind: str, data: dict[str, Any]) -> FilePut | Output | OutputsDone:
    if kind == "outputs_done":
        return OutputsDone(_count(data, "count"))
    if kind == "file_put":
        return FilePut(_bounded(data, "path", MAX_PATH_CHARS), _field(data, "ok", bool), _text(data, "message"))
    name: str = _field(data, "name", str)
    if (problem := output_name_problem(name)) is not None:
        raise ChannelViolation(Reason.BAD_FIELD, f"output.name: {problem}")
    chunk: str = _field(data, "data", str, "")
    if len(chunk) > MAX_FRAME_BYTES:
        raise ChannelViolation(Reason.TOO_LARGE)
    too_large: bool = _field(data, "too_large", bool, False)
    if too_large and chunk:
        raise ChannelViolation(Reason.BAD_FIELD, "output: a too_large output carries no data")
    return Output(name, _count(data, "size"), chunk, _field(data, "last", bool, False), too_large)


def decode_frame(line: bytes) -> RunnerFrame:
    """``parse_runner_line`` for a backend's ``recv``: a violation becomes a
    ``Violation`` frame instead of an exception."""
    try:
        return parse_runner_line(line)
    except ChannelViolation as exc:
        return Violation(exc.reason, exc.detail)


def encode_frame(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# -- order ------------------------------------------------------------------


class Phase(Enum):
    LOADING = "loading"  # started, before ``loaded``
    LOADED = "loaded"  # waiting for ``start`` (restore frames may come first)
    PRESTARTING = "prestarting"  # ``prestart`` went out: ``prestarted`` next
    PRESTARTED = "prestarted"  # the CLI runs for a session not made yet: waiting for ``start``
    RESTORING = "restoring"  # the last ``restore`` frame went out: ``restored`` next
    STARTING = "starting"  # ``start`` went out: store calls, then ``ready``
    READY = "ready"


class RunnerChannel:
    """Which runner frame may come next, given what the service sent. Pure:
    feed it every frame both ways; ``received`` raises ``ChannelViolation``
    (``OUT_OF_ORDER``) for a frame the real runner never sends at that point."""

    def __init__(self, phase: Phase = Phase.LOADING) -> None:
        self.phase = phase
        self.puts: set[str] = set()  # paths whose last ``put_file`` went out: a ``file_put`` each
        self.collects = 0  # ``collect_outputs`` sent and not yet answered with ``outputs_done``

    def sent(self, frame: ServiceFrame) -> None:
        if isinstance(frame, PutFile) and frame.last:
            self.puts.add(frame.path)
        elif isinstance(frame, CollectOutputs):
            self.collects += 1
        elif isinstance(frame, Restore) and frame.last and self.phase is Phase.LOADED:
            self.phase = Phase.RESTORING
        elif isinstance(frame, Prestart) and self.phase is Phase.LOADED:
            self.phase = Phase.PRESTARTING
        elif isinstance(frame, Start) and self.phase in (Phase.LOADED, Phase.PRESTARTED):
            self.phase = Phase.STARTING

    def received(self, frame: RunnerFrame, turn_running: bool = False) -> RunnerFrame:
        """``frame``, if it may come now. ``turn_running``: a user turn is
        under way (a ``result`` outside one is out of order)."""
        if isinstance(frame, Violation):
            raise frame.error()
        if isinstance(frame, (Garbage, RunnerError)):
            return frame
        if isinstance(frame, (FilePut, Output, OutputsDone)):
            return self._file_frame(frame)
        expected = {
            Loaded: (Phase.LOADING,),
            Prestarted: (Phase.PRESTARTING,),
            Restored: (Phase.RESTORING,),
            Ready: (Phase.STARTING,),
            Rpc: (Phase.STARTING, Phase.READY),
            Sdk: (Phase.READY,),
            PermissionRequest: (Phase.READY,),
            CustomToolUse: (Phase.READY,),
        }.get(type(frame), ())  # Snapshot: never unasked (backends take the ones they asked for)
        if self.phase not in expected:
            raise ChannelViolation(Reason.OUT_OF_ORDER, f"{type(frame).__name__.lower()} while {self.phase.value}")
        if isinstance(frame, Sdk) and frame.type == "result" and not turn_running:
            raise ChannelViolation(Reason.OUT_OF_ORDER, "result outside a turn")
        if isinstance(frame, (PermissionRequest, CustomToolUse)) and not turn_running:
            raise ChannelViolation(Reason.OUT_OF_ORDER, f"{type(frame).__name__.lower()} outside a turn")
        if isinstance(frame, Loaded):
            if frame.version != CHANNEL_VERSION:
                raise ChannelViolation(Reason.BAD_FIELD, "unsupported channel version")
            self.phase = Phase.LOADED
        elif isinstance(frame, Restored):
            self.phase = Phase.LOADED
        elif isinstance(frame, Prestarted):
            self.phase = Phase.PRESTARTED
        elif isinstance(frame, Ready):
            self.phase = Phase.READY
        return frame

    def _file_frame(self, frame: FilePut | Output | OutputsDone) -> FilePut | Output | OutputsDone:
        """``file_put`` only for a put that was sent; ``output``/``outputs_done`` only while a
        ``collect_outputs`` is unanswered (the runner answers them in order, one at a time)."""
        if isinstance(frame, FilePut):
            if frame.path not in self.puts:
                raise ChannelViolation(Reason.OUT_OF_ORDER, "file_put for no put_file")
            self.puts.discard(frame.path)
        elif self.collects <= 0 or self.phase is not Phase.READY:
            raise ChannelViolation(Reason.OUT_OF_ORDER, f"{type(frame).__name__.lower()} unasked")
        elif isinstance(frame, OutputsDone):
            self.collects -= 1
        return frame
