"""A small terminal client: type a prompt, watch the session stream."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import websockets


def render(frame: dict[str, Any]) -> str | None:
    """One line for a frame a person wants to see, or None."""
    kind = frame.get("type")
    if kind == "session":
        return f"[session {frame['session_id']} {frame['state']}]"
    if kind == "assistant":
        parts = []
        for block in (frame.get("message") or {}).get("content") or []:
            if block.get("type") == "text":
                parts.append(block["text"])
            elif block.get("type") == "tool_use":
                parts.append(f"[{block.get('name')}] {json.dumps(block.get('input'))[:200]}")
        return "\n".join(parts) or None
    if kind == "user":
        for block in (frame.get("message") or {}).get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                return "  > " + str(block.get("content"))[:500].replace("\n", "\n  > ")
        return None
    if kind == "result":
        return f"[{frame.get('subtype')}: {frame.get('num_turns')} turns, ${frame.get('total_cost_usd', 0):.4f}]"
    if kind == "queued":
        return f"[queued: runs after the current turn, position {frame.get('position')}]"
    if kind == "error":
        return f"[error {frame.get('code')}: {frame.get('message')}]"
    if kind == "permission_request":
        return f"[approve? {frame.get('tool')} {json.dumps(frame.get('input'))[:300]}]  /allow or /deny [why]"
    if kind == "custom_tool_use":
        return f"[client tool {frame.get('name')} {json.dumps(frame.get('input'))[:300]}]  /result TEXT or /error TEXT"
    if kind == "permission_response":
        why = f": {frame['message']}" if frame.get("message") else ""
        return f"[{frame.get('behavior')} ({frame.get('source')}){why}]"
    if kind == "custom_tool_result":
        return f"[tool result sent ({frame.get('source')})]"
    return None


def answer(command: str, pending: dict[str, dict[str, Any]]) -> dict[str, Any] | str:
    """The frame for ``/allow``, ``/deny [why]``, ``/result TEXT`` or
    ``/error TEXT``: it answers the oldest pending request of its kind (a
    string: why there is nothing to send)."""
    verb, _, text = command.strip().partition(" ")
    want = "permission_request" if verb in ("/allow", "/deny") else "custom_tool_use"
    request_id = next((i for i, f in pending.items() if f.get("type") == want), None)
    if request_id is None:
        return f"no {want} is pending"
    if verb == "/allow":
        return {"type": "permission_response", "id": request_id, "behavior": "allow"}
    if verb == "/deny":
        return {"type": "permission_response", "id": request_id, "behavior": "deny", "message": text}
    content = [{"type": "text", "text": text}]
    return {"type": "custom_tool_result", "id": request_id, "content": content, "is_error": verb == "/error"}


async def chat(url: str, session_id: str | None, token: str | None = None) -> int:
    path = "/v1/sessions" + (f"/{session_id}" if session_id else "")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with websockets.connect(url + path, max_size=None, additional_headers=headers) as ws:
        idle = asyncio.Event()
        idle.set()
        pending: dict[str, dict[str, Any]] = {}  # requests waiting for an answer, oldest first

        async def show() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                line = render(frame)
                if line:
                    print(line, flush=True)
                if frame.get("type") in ("permission_request", "custom_tool_use"):
                    pending[str(frame.get("id"))] = frame
                elif frame.get("type") in ("permission_response", "custom_tool_result"):
                    pending.pop(str(frame.get("id")), None)
                if frame.get("type") == "result" or frame.get("fatal"):
                    idle.set()

        printer = asyncio.create_task(show())
        try:
            while True:
                prompt = await asyncio.to_thread(sys.stdin.readline)
                if not prompt:
                    return 0
                if prompt.strip() == "/interrupt":
                    await ws.send(json.dumps({"type": "interrupt"}))
                elif prompt.split(" ", 1)[0].strip() in ("/allow", "/deny", "/result", "/error"):
                    reply = answer(prompt, pending)
                    if isinstance(reply, str):
                        print(f"[{reply}]", flush=True)
                    else:
                        await ws.send(json.dumps(reply))
                elif prompt.strip():
                    await idle.wait()  # one turn at a time, as the service requires
                    idle.clear()
                    await ws.send(json.dumps({"type": "user", "message": {"role": "user", "content": prompt.strip()}}))
        finally:
            printer.cancel()


def run_chat(url: str, session_id: str | None, token: str | None = None) -> int:
    print(
        "type a prompt and press enter; /interrupt stops a turn; /allow, /deny [why] answer an approval; "
        "/result TEXT, /error TEXT answer a client tool; Ctrl-D quits",
        file=sys.stderr,
    )
    try:
        return asyncio.run(chat(url, session_id, token))
    except (KeyboardInterrupt, websockets.ConnectionClosed):
        return 0
    except websockets.InvalidStatus as exc:
        hint = " (pass --token)" if exc.response.status_code == 401 else ""
        print(f"refused by {url}: HTTP {exc.response.status_code}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
