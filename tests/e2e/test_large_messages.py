"""Any client frame the service accepts works end to end (issue 10 item 10):
the real CLI and SDK carry a user message right up to
``MOORAGE_MAX_FRAME_BYTES``; one byte more closes the connection with 1009."""

from __future__ import annotations

import json

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, result_of

MAX_FRAME_BYTES = 1024 * 1024  # the service's default (the `service` fixture runs with it)


def user_frame(total_bytes: int, alphabet: str) -> str:
    """A ``user`` frame of exactly ``total_bytes`` UTF-8 bytes, its text made of ``alphabet``."""
    template = json.dumps({"type": "user", "message": {"role": "user", "content": "{}"}}, ensure_ascii=False)
    room = total_bytes - len(template.encode()) + 2
    text = alphabet * (room // len(alphabet.encode()))
    text += "x" * (room - len(text.encode()))
    frame = template.replace('"{}"', json.dumps(text, ensure_ascii=False))
    assert len(frame.encode()) == total_bytes
    return frame


async def test_a_user_message_just_under_the_frame_limit_gets_a_result(
    service: Service, model: ScriptedModelServer
) -> None:
    """A ~1 MiB user message (the largest frame the service accepts) gets a
    normal result, its text reaches the model whole, and the session goes on;
    the SDK's default 1 MiB line buffer killed such a session (sandbox_crashed).
    ASCII text: the SDK measures a line in characters, and one byte of the
    frame is at most one character of the CLI's line."""
    client = await Client.connect(service)
    frame = user_frame(MAX_FRAME_BYTES - 16, "x")
    await client.send(frame)
    frames = await client.until("result", "error", timeout=120)
    assert frames[-1]["type"] == "result", frames[-1]
    assert result_of(frames)["subtype"] == "success"
    sent = json.loads(frame)["message"]["content"]
    bodies = (json.dumps(r.get("messages"), ensure_ascii=False) for r in model.model.requests)
    assert any(json.dumps(sent, ensure_ascii=False) in body for body in bodies), "the model did not get it whole"
    assert result_of(await client.turn("say still here"))["result"] == "still here"
    await client.close()


async def test_a_frame_one_byte_over_the_limit_closes_with_1009(service: Service) -> None:
    """One byte over MOORAGE_MAX_FRAME_BYTES: close 1009, as docs/protocol.md says."""
    client = await Client.connect(service)
    await client.send(user_frame(MAX_FRAME_BYTES + 1, "x"))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
