"""The bubblewrap command line, built without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from moorage.errors import SandboxError
from moorage.sandbox.base import SandboxSpec, decode_frame, encode_frame
from moorage.sandbox.local import MODEL_SOCKET, Runtime, UidPool, bwrap_argv


def argv() -> list[str]:
    spec = SandboxSpec("sess-1", "sb-1", Path("/state/workspaces/sess-1"), Path("/state/egress/x.sock"))
    runtime = Runtime(python="/srv/venv/bin/python", prefix="/srv/venv", runner_pkg="/srv/src/moorage_runner")
    return bwrap_argv(spec, runtime, 200_123, Path("/state/sandbox-etc"))


def pairs(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == flag]


def test_sandbox_runs_as_its_own_unprivileged_host_uid() -> None:
    """bwrap is started through setpriv as the pool uid with no groups and no_new_privs."""
    args = argv()
    assert args[:6] == ["setpriv", "--reuid=200123", "--regid=200123", "--clear-groups", "--no-new-privs", "--"]
    assert args[6] == "bwrap"


def test_sandbox_unshares_every_namespace_and_clears_the_environment() -> None:
    """New user/pid/net/... namespaces, dies with the service, empty environment."""
    args = argv()
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in args
    assert "--share-net" not in args
    assert args[args.index("--hostname") + 1] == "moorage-sandbox"


def test_only_the_workspace_is_writable_and_only_the_socket_leads_out() -> None:
    """Host dirs are read-only; the workspace is the one rw bind; the model socket is mounted."""
    args = argv()
    assert pairs(args, "--bind") == [("/state/workspaces/sess-1", "/workspace")]
    ro = dict(pairs(args, "--ro-bind"))
    assert ro["/state/egress/x.sock"] == MODEL_SOCKET
    assert ro["/srv/venv"] == "/opt/moorage/venv"
    assert not any(src in ("/", "/root", "/home", "/var", "/etc") for src in ro)


def test_no_secret_reaches_the_sandbox_environment() -> None:
    """Only a fixed set of variables is set inside; no API key, no database URL."""
    args = argv()
    names = [args[i + 1] for i, a in enumerate(args) if a == "--setenv"]
    assert not [n for n in names if "KEY" in n or "TOKEN" in n or "DATABASE" in n or "ANTHROPIC" in n]
    assert args[-3:] == ["/opt/moorage/venv/bin/python", "-m", "moorage_runner"]


def test_uid_pool_never_hands_out_a_live_uid_twice() -> None:
    """Uids come back to the pool only when released, and the pool can run dry."""
    pool = UidPool(500, 2)
    a, b = pool.take(), pool.take()
    assert {a, b} == {500, 501}
    with pytest.raises(SandboxError):
        pool.take()
    pool.give_back(a)
    assert pool.take() == a


def test_channel_frames_round_trip_and_garbage_is_contained() -> None:
    """A line that is not a JSON object becomes a harmless 'garbage' frame."""
    frame = {"kind": "sdk", "message": {"type": "assistant", "text": "é"}}
    assert decode_frame(encode_frame(frame)) == frame
    assert decode_frame(b"Traceback (most recent call last):\n")["kind"] == "garbage"
    assert decode_frame(b"[1]\n")["kind"] == "garbage"
