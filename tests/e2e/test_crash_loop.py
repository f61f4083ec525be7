"""A crash-looping host: the service is killed (-9) again and again with
sessions running and its warm pool full. Each restart sweeps what the
previous run left; a clean stop at the end leaves nothing; every session
still comes back with its files and its conversation. The service as a
process, real sandboxes, the real CLI; only the model is scripted."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from leaks import audit
from moorage.sweep import mount_points
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, events, prompts_seen, result_of, run_service, scaled, tool_output, wait_until

CYCLES = 3
POOL = 2


def _mounted_workspaces(svc: Service) -> int:
    return len(mount_points(Path("/proc/self/mountinfo").read_text(), svc.state_dir.resolve() / "workspaces"))


def _workspaces(svc: Service) -> int:
    return len(list((svc.state_dir / "workspaces").iterdir()))


async def test_a_crash_loop_leaves_nothing_behind_and_every_session_rehydrates(model: ScriptedModelServer) -> None:
    """N times: two sessions (one idle, one mid-turn) and a full warm pool, then kill -9 and restart."""
    services: list[Service] = []
    mounted: list[bool] = []  # did this host give each run's workspaces a tmpfs
    kept: dict[str, tuple[str, str]] = {}  # session id -> (file content, something it said)
    state: dict[str, str] = {"MOORAGE_WARM_SANDBOXES": str(POOL)}
    for cycle in range(CYCLES):
        with run_service(model.url, **state) as svc:
            services.append(svc)
            state["MOORAGE_STATE_DIR"] = str(svc.state_dir)
            idle = await Client.connect(svc)
            await idle.turn(f"bash echo idle-{cycle} > mark.txt")
            assert result_of(await idle.turn(f"say idle walrus {cycle}"))["result"] == f"idle walrus {cycle}"
            busy = await Client.connect(svc)
            await busy.turn(f"bash echo busy-{cycle} > mark.txt")
            assert result_of(await busy.turn(f"say busy walrus {cycle}"))["result"] == f"busy walrus {cycle}"
            await busy.say("bash python3 -c 'import time; time.sleep(120)'")
            await busy.until("assistant", timeout=30)  # mid-turn: its tool runs
            # Two sessions and a full pool: one workspace each (a tmpfs, where the host allows).
            await asyncio.to_thread(
                wait_until, lambda: _workspaces(svc) >= 2 + POOL, 60, "the warm pool to fill beside the sessions"
            )
            mounted.append(_mounted_workspaces(svc) > 0)
            kept[idle.session_id] = (f"idle-{cycle}", f"idle walrus {cycle}")
            kept[busy.session_id] = (f"busy-{cycle}", f"busy walrus {cycle}")
            svc.proc.send_signal(signal.SIGKILL)
            svc.proc.wait(scaled(10))
            await idle.close()
            await busy.close()

    with run_service(model.url, **state) as last:
        services.append(last)
        for session_id, (content, said) in kept.items():
            again = await Client.connect(last, session_id)
            assert again.first["state"] == "rehydrated", again.first
            assert content in tool_output(await again.turn("bash cat mark.txt")), f"{session_id} lost its files"
            assert said in prompts_seen(model), f"{session_id} lost its conversation"
            await again.close()
    # A clean stop after the crash loop: nothing of any run is left.
    await asyncio.to_thread(audit, services)  # bounded poll; names whatever is left
    # Each restart said, in one line, what it removed of the killed run.
    for restart in services[1:]:
        swept = events(restart, "state_swept")
        assert len(swept) == 1, "one line says what the start-up sweep removed"
        assert swept[0]["workspace"] >= POOL, f"the killed run's warm sandboxes are swept: {swept[0]}"
        if mounted[0]:
            assert swept[0]["mount"] >= 1, f"their tmpfs mounts are unmounted: {swept[0]}"
        assert swept[0]["socket_dir"] == 1, f"the killed run's socket directory is swept: {swept[0]}"
