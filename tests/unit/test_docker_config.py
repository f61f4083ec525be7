"""The Docker backend's container spec (pure): confinement and labels."""

from __future__ import annotations

from pathlib import Path

from moorage.sandbox.base import MODEL_SOCKET, TUNNEL_SOCKET, SandboxSpec, write_etc
from moorage.sandbox.cgroups import Limits
from moorage.sandbox.docker import LABEL_OWNER, LABEL_SANDBOX, LABEL_SESSION, container_config

MIB = 1024 * 1024


def config(tunnel: Path | None = None) -> dict[str, object]:
    spec = SandboxSpec(
        "sess-1", "sbx1", Path("/state/workspaces/sbx1"), Path("/run/egress/a.sock"), tunnel_socket=tunnel
    )
    return container_config(spec, "moorage-sandbox:0.1.0", Limits(512 * MIB, 128, 1.5), "host:abc")


def test_the_container_has_no_network_privileges_or_writable_root() -> None:
    """No network, all capabilities dropped, no-new-privileges, read-only root, an unprivileged user."""
    c = config()
    host = c["HostConfig"]
    assert isinstance(host, dict)
    assert host["NetworkMode"] == "none" and c["NetworkDisabled"] is True
    assert host["CapDrop"] == ["ALL"] and "CapAdd" not in host
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True and "Privileged" not in host
    assert c["User"] == "1000:1000"
    assert host["LogConfig"] == {"Type": "none", "Config": {}}, "the channel must not be written to engine logs"


def test_limits_come_from_the_settings() -> None:
    """Memory (without swap), pids and CPUs are the configured per-sandbox limits."""
    host = config()["HostConfig"]
    assert isinstance(host, dict)
    assert host["Memory"] == host["MemorySwap"] == 512 * MIB
    assert host["PidsLimit"] == 128
    assert host["NanoCpus"] == 1_500_000_000


def test_only_the_workspace_and_the_model_socket_come_from_the_host() -> None:
    """Two bind mounts: the workspace read-write, the proxy socket read-only; everything else is tmpfs."""
    host = config()["HostConfig"]
    assert isinstance(host, dict)
    assert host["Mounts"] == [
        {"Type": "bind", "Source": "/state/workspaces/sbx1", "Target": "/workspace"},
        {"Type": "bind", "Source": "/run/egress/a.sock", "Target": MODEL_SOCKET, "ReadOnly": True},
    ]
    assert set(host["Tmpfs"]) == {"/tmp", "/home/agent", "/dev/shm", "/mnt/session"}
    assert all("size=268435456" in opts for opts in host["Tmpfs"].values()), "tmpfs is sized (memory-charged)"
    # The session's files (uploads/, outputs/) belong to the sandbox user.
    assert host["Tmpfs"]["/mnt/session"] == "rw,nosuid,nodev,size=268435456,uid=1000,gid=1000,mode=0700"
    assert "Binds" not in host and "Volumes" not in config()


def test_labels_name_the_owner_session_and_sandbox() -> None:
    """Labels let a restarted service find its containers; stdin stays open for the channel."""
    c = config()
    assert c["Labels"] == {LABEL_OWNER: "host:abc", LABEL_SESSION: "sess-1", LABEL_SANDBOX: "sbx1"}
    assert c["OpenStdin"] is True and c["StdinOnce"] is True and c["Tty"] is False


def test_the_egress_tunnel_is_mounted_only_when_configured() -> None:
    """With an egress allowlist the tunnel's socket is a third, read-only mount."""
    host = config(Path("/run/egress/t.sock"))["HostConfig"]
    assert isinstance(host, dict)
    assert host["Mounts"][-1] == {
        "Type": "bind",
        "Source": "/run/egress/t.sock",
        "Target": TUNNEL_SOCKET,
        "ReadOnly": True,
    }


def test_with_a_pool_uid_the_container_runs_as_it_and_knows_it_as_agent(tmp_path: Path) -> None:
    """A host uid of its own (no user of this host, no other sandbox shares it), named in passwd/group."""
    spec = SandboxSpec("sess-1", "sbx1", Path("/state/workspaces/sbx1"), Path("/run/egress/a.sock"))
    write_etc(tmp_path, 200_007)
    c = container_config(spec, "img:1", Limits(512 * MIB, 128, 1.0), "host:abc", uid=200_007, etc_dir=tmp_path)
    host = c["HostConfig"]
    assert isinstance(host, dict)
    assert c["User"] == "200007:200007"
    assert "uid=200007,gid=200007" in host["Tmpfs"]["/home/agent"]
    etc_mounts = [m for m in host["Mounts"] if m["Target"].startswith("/etc/")]
    assert etc_mounts == [
        {"Type": "bind", "Source": str(tmp_path / "passwd"), "Target": "/etc/passwd", "ReadOnly": True},
        {"Type": "bind", "Source": str(tmp_path / "group"), "Target": "/etc/group", "ReadOnly": True},
    ]
    assert "agent:x:200007:200007:" in (tmp_path / "passwd").read_text()
    assert "agent:x:200007:" in (tmp_path / "group").read_text()
