"""Replay on reconnect (issue 11 items 2 and 3): every durable frame carries ``seq``, the ``session``
frame carries ``last_seq``, and ``WS /v1/sessions/{id}?after=N`` gives a returning client exactly
what it missed (no duplicate, no gap), from before a ``kill -9`` of the service too. The service as
a process, the real CLI in real sandboxes, a real database."""

from __future__ import annotations

import json
import signal
import sqlite3
from typing import Any

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, result_of, run_service, scaled


def durable(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "seq" in f]


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in durable(frames)]


async def until_seq(client: Client, seq: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Frames up to and including the one with ``seq``."""
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1].get("seq") != seq:
        frames.append(await client.recv(timeout))
    return frames


async def test_a_client_that_leaves_mid_turn_gets_exactly_what_it_missed(model: ScriptedModelServer) -> None:
    with run_service(model.url) as svc:
        observer = await Client.connect(svc)  # attached throughout: sees every frame live
        assert observer.first["last_seq"] == 0
        leaving = await Client.connect(svc, observer.session_id)
        await leaving.say("bash python3 -c 'import time; time.sleep(2)'; echo after-the-nap")
        seen = await leaving.until("assistant", timeout=30)
        assert seqs(seen) == list(range(1, len(seqs(seen)) + 1)), "seqs start at 1 with no gap"
        assert seen[0]["type"] == "user_message" and seen[0]["seq"] == 1
        left_at = seqs(seen)[-1]
        await leaving.close()

        everything = await observer.until("result", timeout=60)
        back = await Client.connect(svc, observer.session_id, query=f"?after={left_at}")
        assert back.first["type"] == "session" and back.first["truncated"] is False
        last = back.first["last_seq"]
        assert last == seqs(everything)[-1]
        missed = await until_seq(back, last)
        assert seqs(missed) == list(range(left_at + 1, last + 1)), "no duplicate, no gap"
        assert durable(missed) == [f for f in durable(everything) if f["seq"] > left_at]
        assert "after-the-nap" in json.dumps(missed)

        # Then live, continuing right after the replay.
        frames = await back.turn("say still here")
        assert result_of(frames)["result"] == "still here"
        assert seqs(frames)[0] == last + 1 and seqs(frames) == list(range(last + 1, last + 1 + len(seqs(frames))))
        for client in (observer, back):
            await client.close()


async def test_without_after_a_client_gets_live_frames_only(model: ScriptedModelServer) -> None:
    with run_service(model.url) as svc:
        first = await Client.connect(svc)
        await first.turn("say one")
        live = await Client.connect(svc, first.session_id)
        assert live.first["last_seq"] > 0 and "truncated" not in live.first
        await live.send({"type": "ping", "id": 1})
        frames = await live.until("pong", timeout=10)
        assert frames == [{"type": "pong", "id": 1}], "nothing from before the attach, and a pong has no seq"
        for client in (first, live):
            await client.close()


@pytest.mark.parametrize("after", ["-1", "abc", "1.5", "99"])
async def test_a_bad_after_is_refused_with_invalid_after(model: ScriptedModelServer, after: str) -> None:
    with run_service(model.url) as svc:
        client = await Client.connect(svc)
        refused = await Client.connect(svc, client.session_id, query=f"?after={after}")
        assert refused.first["type"] == "error" and refused.first["code"] == "invalid_after"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await refused.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await client.close()


async def test_after_a_kill_9_and_restart_after_0_replays_the_whole_conversation(model: ScriptedModelServer) -> None:
    with run_service(model.url, MOORAGE_DATABASE_URL="") as first:
        client = await Client.connect(first)
        seen = await client.turn("say first turn")
        seen += await client.turn("bash echo second > two.txt")
        acknowledged = durable(seen)
        assert seqs(seen) == list(range(1, len(acknowledged) + 1))
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(scaled(10))
        state_dir = first.state_dir

    with run_service(model.url, MOORAGE_STATE_DIR=str(state_dir)) as second:
        again = await Client.connect(second, client.session_id, query="?after=0")
        assert again.first["state"] == "rehydrated" and again.first["truncated"] is False
        last = again.first["last_seq"]
        assert last >= len(acknowledged)
        replayed = await until_seq(again, last)
        assert seqs(replayed) == list(range(1, last + 1))
        assert durable(replayed)[: len(acknowledged)] == acknowledged, "the conversation as it was sent"
        prompts = [f["message"]["content"] for f in durable(replayed) if f["type"] == "user_message"]
        assert prompts == ["say first turn", "bash echo second > two.txt"]
        # The seq goes on where the dead process left it.
        frames = await again.turn("say after the restart")
        assert seqs(frames)[0] == last + 1
        await again.close()


async def test_a_replay_from_pruned_events_says_truncated_and_never_skips_silently(
    model: ScriptedModelServer,
) -> None:
    with run_service(model.url, MOORAGE_DATABASE_URL="") as svc:
        client = await Client.connect(svc)
        seen = await client.turn("say one")
        seen += await client.turn("say two")
        last = seqs(seen)[-1]
        with sqlite3.connect(svc.state_dir / "moorage.db") as db:  # what a retention of old events does
            db.execute("DELETE FROM session_events WHERE session_id = ? AND seq <= 3", (client.session_id,))
        back = await Client.connect(svc, client.session_id, query="?after=1")
        assert back.first["truncated"] is True and back.first["last_seq"] == last
        replayed = await until_seq(back, last)
        assert seqs(replayed) == list(range(4, last + 1))
        caught_up = await Client.connect(svc, client.session_id, query="?after=3")
        assert caught_up.first["truncated"] is False
        for c in (client, back, caught_up):
            await c.close()
