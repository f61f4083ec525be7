"""The service on the Docker backend (``MOORAGE_SANDBOX=docker``): a
representative subset of the e2e suite, against a real engine, the real CLI
in the sandbox image, and the scripted model. Skipped, with the reason, where
no Docker engine runs (see container/dockerd.sh)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager

import aiodocker
import pytest
import websockets
from moorage.sandbox.docker import LABEL_OWNER, LABEL_SESSION
from moorage.testing.scripted_model import ScriptedModelServer
from support import (
    DOCKER_URL,
    Client,
    Service,
    docker_sandbox_image,
    docker_settings,
    events,
    result_of,
    run_service,
    scaled,
    tool_output,
    wait_suspended,
)

MIB = 1024 * 1024
FORK_UNTIL_REFUSED = (
    "import os, signal, time\n"
    "kids = []\n"
    "try:\n"
    "    while len(kids) < 1000:\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n"
    "            time.sleep(30)\n"
    "            os._exit(0)\n"
    "        kids.append(pid)\n"
    "except OSError:\n"
    '    print("refused after", len(kids))\n'
    "for pid in kids:\n"
    "    os.kill(pid, signal.SIGKILL)\n"
    "    os.waitpid(pid, 0)\n"
)


@pytest.fixture(scope="module")
def image() -> str:
    tag, why_not = docker_sandbox_image()
    if tag is None:
        pytest.skip(why_not)
    return tag


def docker_service(model: ScriptedModelServer, image: str, **overrides: str) -> AbstractContextManager[Service]:
    return run_service(model.url, **{**docker_settings(image), **overrides})


@pytest.fixture(scope="module")
def docker_svc(model: ScriptedModelServer, image: str) -> Iterator[Service]:
    with docker_service(model, image) as svc:
        yield svc


async def containers(**labels: str) -> list[dict[str, object]]:
    async with aiodocker.Docker(url=DOCKER_URL) as docker:
        found = await docker.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        return [await c.show() for c in found]


async def test_a_turn_with_a_tool_call_runs_in_a_confined_container(docker_svc: Service) -> None:
    """Bash runs in the session's container: its own host uid, no capabilities, no network, read-only root."""
    client = await Client.connect(docker_svc)
    script = (
        "id -u; id -un; hostname; pwd; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; ls /sys/class/net; "
        "touch /usr/x 2>/dev/null || echo root-read-only; echo data > out.txt; "
        "python3 -c 'import pandas, matplotlib, sklearn; print(\"stack-ok\")'"
    )
    frames = await client.turn(f"bash {script}", timeout=90)
    out = tool_output(frames).split()
    assert 200_000 <= int(out[0]) < 210_000, "a host uid from MOORAGE_SANDBOX_UID_BASE, not the image's 1000"
    assert out[1:4] == ["agent", "moorage-sandbox", "/workspace"]
    assert out[4:8] == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"]
    assert out[8:] == ["lo", "root-read-only", "stack-ok"], "only loopback; the data stack imports"
    assert result_of(frames)["subtype"] == "success"
    [info] = await containers(**{LABEL_SESSION: client.session_id})
    state = info["State"]
    assert isinstance(state, dict) and state["Running"] is True
    workspaces = docker_svc.state_dir / "workspaces"
    assert workspaces.stat().st_mode & 0o077 == 0, "host uid 1000 must not reach the workspaces"
    await client.close()


async def test_runner_crash_is_fatal_for_its_session_only(docker_svc: Service) -> None:
    """Killing a session's runner ends its container and gives that client a fatal sandbox_crashed."""
    victim = await Client.connect(docker_svc)
    bystander = await Client.connect(docker_svc)
    await victim.turn("say up")
    await victim.say("bash kill -9 $(pgrep -f moorage_runner)")
    error = (await victim.until("error", timeout=30))[-1]
    assert error["code"] == "sandbox_crashed" and error["fatal"] is True
    with pytest.raises(websockets.ConnectionClosed):
        await victim.recv(timeout=10)
    assert result_of(await bystander.turn("say unharmed"))["result"] == "unharmed"
    assert await containers(**{LABEL_SESSION: victim.session_id}) == [], "the crashed container is removed"
    await bystander.close()


async def test_idle_session_suspends_and_rehydrates_into_a_new_container(
    model: ScriptedModelServer, image: str
) -> None:
    """After the idle timeout the container goes; reconnecting rehydrates files and history into a fresh one."""
    with docker_service(model, image, MOORAGE_IDLE_TIMEOUT_S="1") as svc:
        client = await Client.connect(svc)
        await client.turn("bash echo kept-across-suspend > notes.txt")
        await client.close()
        await wait_suspended(svc, client.session_id)
        assert await containers(**{LABEL_SESSION: client.session_id}) == []
        again = await Client.connect(svc, client.session_id)
        assert again.first["state"] == "rehydrated"
        assert "kept-across-suspend" in tool_output(await again.turn("bash cat notes.txt"))
        await again.close()


async def test_a_memory_bomb_is_killed_and_the_session_goes_on(model: ScriptedModelServer, image: str) -> None:
    """Past the container's memory limit the hog is OOM-killed and the client hears sandbox_out_of_memory."""
    with docker_service(model, image, MOORAGE_SANDBOX_MEMORY_BYTES=str(768 * MIB)) as svc:
        client = await Client.connect(svc)
        await client.say("bash python3 -c 'a = bytearray(3 * 1024**3); print(len(a))'; echo exit=$?")
        frames = await client.until("result", timeout=60)
        assert "exit=137" in tool_output(frames)
        notice = (await client.until("error", timeout=10))[-1]
        assert notice["code"] == "sandbox_out_of_memory" and notice["fatal"] is False
        assert result_of(await client.turn("say survived"))["result"] == "survived"
        await client.close()


async def test_a_restarted_service_removes_the_containers_it_left(model: ScriptedModelServer, image: str) -> None:
    """kill -9 of the service leaves its containers running; the next start of that replica removes them."""
    replica = f"docker-e2e-{uuid.uuid4().hex[:8]}"
    with docker_service(model, image, MOORAGE_REPLICA_ID=replica) as svc:
        client = await Client.connect(svc)
        await client.turn("say hi")
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait(scaled(10))
        left = {str(c["Id"]) for c in await containers(**{LABEL_OWNER: replica})}
        assert left, "sandboxes outlive a killed service"
    with docker_service(model, image, MOORAGE_REPLICA_ID=replica) as again:
        assert events(again, "sandbox_orphans_reaped")
        now = {str(c["Id"]) for c in await containers(**{LABEL_OWNER: replica})}
        assert not left & now, "every container of the killed service is removed"


async def test_a_fork_bomb_hits_the_containers_process_limit(model: ScriptedModelServer, image: str) -> None:
    """Forks past PidsLimit are refused in the container; the client hears sandbox_pids_exhausted and goes on."""
    with docker_service(model, image, MOORAGE_SANDBOX_PIDS="128") as svc:
        client = await Client.connect(svc)
        # Fork until refused, then let the children go at once: the CLI (its
        # threads count too) must not be left without a pid for long.
        await client.say(f"bash python3 -c '{FORK_UNTIL_REFUSED}'")
        frames = await client.until("result", timeout=60)
        assert "refused after" in tool_output(frames)
        notice = (await client.until("error", timeout=10))[-1]
        assert notice["code"] == "sandbox_pids_exhausted" and notice["fatal"] is False
        assert result_of(await client.turn("say fine"))["result"] == "fine"
        await client.close()


async def test_a_disk_filler_fills_only_its_own_sized_workspace(model: ScriptedModelServer, image: str) -> None:
    """The container's /workspace is a filesystem of MOORAGE_WORKSPACE_MAX_BYTES, not the host's disk:
    past it writes fail with ENOSPC, the client hears workspace_full, the session goes on."""
    with docker_service(model, image, MOORAGE_WORKSPACE_MAX_BYTES=str(32 * MIB)) as svc:
        if events(svc, "workspace_quota_unavailable"):
            pytest.skip("this host does not let the service mount a sized workspace")
        client = await Client.connect(svc)
        await client.say("bash head -c 100000000 /dev/zero > /workspace/fill; echo ws=$?; df -k /workspace")
        frames = await client.until("result", timeout=60)
        output = tool_output(frames)
        assert "No space left on device" in output and "ws=1" in output
        notice = (await client.until("error", timeout=10))[-1]
        assert notice["code"] == "workspace_full" and notice["fatal"] is False
        after = await client.turn("bash rm /workspace/fill && echo small > /workspace/kept && echo freed")
        assert "freed" in tool_output(after)
        await client.close()
