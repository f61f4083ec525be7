"""The bubblewrap command line, built without starting anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from moorage.channel import Garbage, Sdk
from moorage.errors import SandboxError
from moorage.sandbox.base import MODEL_SOCKET, TOOL_ENV, SandboxSpec, decode_frame, encode_frame
from moorage.sandbox.local import Runtime, bwrap_argv
from moorage.sandbox.uids import UidPool


def argv(uid: int | None = 200_123, base_prefix: str = "/usr", toolbox: Path | None = None) -> list[str]:
    spec = SandboxSpec("sess-1", "sb-1", Path("/state/workspaces/sess-1"), Path("/state/egress/x.sock"))
    runtime = Runtime("/srv/venv/bin/python", "/srv/venv", base_prefix, "/srv/src/moorage_runner")
    return bwrap_argv(spec, runtime, uid, Path("/state/sandbox-etc"), toolbox=toolbox)


def env(args: list[str]) -> dict[str, str]:
    return {args[i + 1]: args[i + 2] for i, a in enumerate(args) if a == "--setenv"}


def inner(args: list[str]) -> list[str]:
    """The arguments of the sandbox's own bwrap (after any staging layer)."""
    return args[len(args) - args[::-1].index("bwrap") :]


def mounts(args: list[str], flag: str) -> dict[str, str]:
    """Sandbox path -> host path for every mount with this flag, through the stage."""
    outer = args[: len(args) - args[::-1].index("bwrap")]
    staged = {outer[i + 2]: outer[i + 1] for i, a in enumerate(outer) if a in ("--bind", "--ro-bind")}
    sandbox = inner(args)
    return {sandbox[i + 2]: staged.get(sandbox[i + 1], sandbox[i + 1]) for i, a in enumerate(sandbox) if a == flag}


def test_sandbox_runs_as_its_own_unprivileged_host_uid() -> None:
    """As root, the sandbox's bwrap runs through setpriv as the pool uid, no groups, no_new_privs."""
    args = argv()
    i = args.index("--reuid=200123") - 1
    assert args[i : i + 7] == [
        "setpriv",
        "--reuid=200123",
        "--regid=200123",
        "--clear-groups",
        "--no-new-privs",
        "--",
        "bwrap",
    ]


def test_staging_layer_only_adds_a_private_mount_namespace() -> None:
    """The root staging bwrap unshares nothing but mounts, and is absent when not root."""
    args = argv()
    assert args[:5] == ["setpriv", "--pdeathsig", "KILL", "--", "bwrap"]
    stage = args[: args.index("--reuid=200123")]
    assert not [a for a in stage if a.startswith("--unshare")]
    plain = argv(uid=None)
    assert plain[0] == "bwrap" and "setpriv" not in plain
    assert mounts(plain, "--bind") == mounts(args, "--bind")


def test_sandbox_unshares_every_namespace_and_clears_the_environment() -> None:
    """New user/pid/net/... namespaces, dies with the service, empty environment."""
    args = inner(argv())
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in args
    assert "--share-net" not in args
    assert args[args.index("--hostname") + 1] == "moorage-sandbox"


def test_only_the_workspace_is_writable_and_only_the_socket_leads_out() -> None:
    """Host dirs are read-only; the workspace is the one rw bind; the model socket is mounted."""
    args = argv()
    assert mounts(args, "--bind") == {"/workspace": "/state/workspaces/sess-1"}
    ro = mounts(args, "--ro-bind")
    assert ro[MODEL_SOCKET] == "/state/egress/x.sock"
    assert ro["/opt/moorage/venv"] == "/srv/venv"
    assert ro["/usr"] == "/usr"
    assert not set(ro.values()) & {"/", "/root", "/home", "/var", "/etc", "/state"}


def test_a_python_outside_usr_is_mounted_where_the_venv_expects_it() -> None:
    """A venv made from e.g. pyenv finds its base interpreter at the same path inside."""
    ro = mounts(argv(base_prefix="/root/.pyenv/versions/3.11.7"), "--ro-bind")
    assert ro["/root/.pyenv/versions/3.11.7"] == "/root/.pyenv/versions/3.11.7"


def test_no_secret_reaches_the_sandbox_environment() -> None:
    """Only a fixed set of variables is set inside; no API key, no database URL."""
    args = argv()
    names = [args[i + 1] for i, a in enumerate(args) if a == "--setenv"]
    assert not [n for n in names if "KEY" in n or "TOKEN" in n or "DATABASE" in n or "ANTHROPIC" in n]
    assert args[-3:] == ["/opt/moorage/venv/bin/python", "-m", "moorage_runner"]


TOOLBOX = Path("/root/.cache/moorage/toolbox/0123456789abcdef")


@pytest.mark.parametrize("uid", [200_123, None])
def test_the_toolbox_is_mounted_read_only_where_its_scripts_say_and_first_on_path(uid: int | None) -> None:
    """The toolbox venv is a read-only bind at /opt/moorage/toolbox, the path its scripts name (as
    root through the stage), never at its host path (whose parents, /root/.cache/…, would appear
    in the sandbox); its bin/ before the system's on PATH; the runner keeps the service venv's."""
    args = argv(uid=uid, toolbox=TOOLBOX)
    assert mounts(args, "--ro-bind")["/opt/moorage/toolbox"] == str(TOOLBOX)
    sandbox_paths = [*mounts(args, "--ro-bind"), *mounts(args, "--bind")]
    assert not [p for p in sandbox_paths if p.startswith("/root")], sandbox_paths
    assert "/opt/moorage/toolbox" not in mounts(args, "--bind") and "/workspace" in mounts(args, "--bind")
    assert env(args)["PATH"] == "/opt/moorage/toolbox/bin:/usr/local/bin:/usr/bin:/bin"
    assert args[-3:] == ["/opt/moorage/venv/bin/python", "-m", "moorage_runner"]


def test_without_a_toolbox_the_path_is_the_systems_and_nothing_more_is_mounted() -> None:
    args = argv()
    assert env(args)["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert mounts(args, "--ro-bind").keys() == mounts(argv(toolbox=TOOLBOX), "--ro-bind").keys() - {
        "/opt/moorage/toolbox"
    }


def test_matplotlib_draws_to_files_in_every_sandbox() -> None:
    """MPLBACKEND=Agg (base.TOOL_ENV), with or without a toolbox: no display is ever tried."""
    assert TOOL_ENV == {"MPLBACKEND": "Agg"}
    assert env(argv())["MPLBACKEND"] == env(argv(toolbox=TOOLBOX))["MPLBACKEND"] == "Agg"


def test_uid_pool_never_hands_out_a_live_uid_twice() -> None:
    """Uids come back to the pool only when released, and the pool can run dry."""
    pool = UidPool(500, 2)
    a, b = pool.take(), pool.take()
    assert {a, b} == {500, 501}
    with pytest.raises(SandboxError):
        pool.take()
    pool.give_back(a)
    assert pool.take() == a
    pool.give_back(b)
    pool.give_back(a)
    assert pool.take() == b, "the least recently freed uid comes first"


def test_uid_pools_of_two_services_never_share_a_uid(tmp_path: Path) -> None:
    """Overlapping ranges on one host: the second pool skips uids the first holds."""
    first = UidPool(700, 3, tmp_path)
    second = UidPool(700, 3, tmp_path)
    a = first.take()
    b = second.take()
    assert a != b
    first.give_back(a)
    assert second.take() == a, "a uid freed by one service is free for the other"


def test_channel_frames_round_trip_and_garbage_is_contained() -> None:
    """A line not meant as a frame (a stray print) becomes a harmless Garbage frame."""
    message: dict[str, Any] = {"type": "assistant", "text": "é"}
    assert decode_frame(encode_frame({"kind": "sdk", "message": message})) == Sdk(message)
    assert decode_frame(b"Traceback (most recent call last):\n") == Garbage(35)
    assert decode_frame(b"[1]\n") == Garbage(4)
