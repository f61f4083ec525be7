"""A small terminal client: type a prompt, watch the session stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
from typing import Any

import websockets

# A sandbox's start, as the status frames tell it (ready, with its time: render).
STATUS_WORDS = {
    "restoring": "[restoring the workspace…]",
    "building": "[building the environment's packages…]",
}


def render(frame: dict[str, Any]) -> str | None:
    """One line for a frame a person wants to see, or None."""
    kind = frame.get("type")
    if kind == "session":
        return f"[session {frame['session_id']} {frame['state']}, last seq {frame.get('last_seq', 0)}]"
    if kind == "user_message":
        content = (frame.get("message") or {}).get("content")
        text = content if isinstance(content, str) else " ".join(b.get("text", "") for b in content or [])
        return f"> {text}"
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
    if kind == "status":  # the sandbox's start: progress
        if frame.get("status") == "ready":
            return f"[sandbox ready in {frame.get('start_s')}s ({frame.get('pool')})]"
        return STATUS_WORDS.get(str(frame.get("status")), "[starting the sandbox…]")
    if kind == "rescheduled":
        return "[the session was suspended: its sandbox starts again]"
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


RECONNECTS = 5  # tries after a dropped connection, with backoff
SESSION_OVER = {1000, 1008, 4401, 4404}  # closed on purpose (quit, refused, unknown): not retried


def session_path(session_id: str | None, after: int | None) -> str:
    """``/v1/sessions[/<id>][?after=N]``: a new session, or one to attach to, replaying what followed ``after``."""
    path = "/v1/sessions" + (f"/{session_id}" if session_id else "")
    return path + (f"?after={after}" if session_id and after is not None else "")


class Conversation:
    """What the client keeps across connections: the session, the last seq it showed, the requests
    waiting for an answer (oldest first). Reconnecting replays from ``last_seq``: nothing twice."""

    def __init__(self, session_id: str | None, after: int | None) -> None:
        self.session_id = session_id
        self.last_seq = after
        self.pending: dict[str, dict[str, Any]] = {}
        self.running = 0  # turns sent or accepted (user_message) without their result yet
        self.unechoed = 0  # prompts sent here whose user_message has not come back yet
        self.replay_to = 0  # the session frame's last_seq: what a replay shows before it is live
        # Set while no turn runs or waits and the replay is shown (known from the session frame on).
        self.settled = asyncio.Event()

    def take(self, frame: dict[str, Any]) -> str | None:
        """Note a frame; the line to show, or None."""
        kind = frame.get("type")
        if kind == "session":
            self.session_id = str(frame["session_id"])
            self.replay_to = int(frame.get("last_seq") or 0)
            if self.last_seq is None:
                self.last_seq = self.replay_to
        if isinstance(seq := frame.get("seq"), int):
            if self.last_seq is not None and seq <= self.last_seq:
                return None  # seen before this connection
            self.last_seq = seq
        if kind == "user_message":
            if self.unechoed:
                self.unechoed -= 1  # ours: counted when sent
            else:
                self.running += 1
        elif kind == "error" and not frame.get("fatal") and "seq" not in frame and self.unechoed:
            self.unechoed -= 1  # a refusal of our prompt (queue_full, rate_limited, …): it will not run
            self.running = max(0, self.running - 1)
        elif kind == "result" or frame.get("fatal"):
            self.running = 0 if frame.get("fatal") else max(0, self.running - 1)
            self.unechoed = 0 if frame.get("fatal") else self.unechoed
        if kind in ("permission_request", "custom_tool_use"):
            self.pending[str(frame.get("id"))] = frame
        elif kind in ("permission_response", "custom_tool_result"):
            self.pending.pop(str(frame.get("id")), None)
        self._settle()
        return render(frame)

    def sent(self) -> None:
        """A prompt went out: a turn to wait for before quitting."""
        self.unechoed += 1
        self.running += 1
        self._settle()

    def _settle(self) -> None:
        if self.running == 0 and (self.last_seq or 0) >= self.replay_to:
            self.settled.set()
        else:
            self.settled.clear()


def farewell(session_id: str) -> str:
    """What the client says on the way out: how to come back to the session."""
    return f"session {session_id}: reconnect with make chat SESSION={session_id}"


def _read_prompts(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Typed lines into ``lines``, then ``None`` at end of input. A daemon thread: one blocked in
    ``readline`` must not keep Ctrl-C (or the end of a conversation) from ending the process."""
    with contextlib.suppress(RuntimeError):  # the loop closed first: nobody is reading
        for line in iter(sys.stdin.readline, ""):
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)


async def _converse(ws: Any, talk: Conversation, lines: asyncio.Queue[str | None]) -> bool:
    """Show frames and send what is typed until stdin ends and every turn has its result (True),
    or the connection ends (False). So ``echo 'hi' | moorage chat`` prints the answer, then quits."""

    async def show() -> None:
        async for raw in ws:
            if line := talk.take(json.loads(raw)):
                print(line, flush=True)

    printer = asyncio.create_task(show())
    try:
        while True:
            reading = asyncio.create_task(lines.get())
            done, _ = await asyncio.wait({printer, reading}, return_when=asyncio.FIRST_COMPLETED)
            if printer in done:
                reading.cancel()
                printer.result()  # a closed connection raises here
                return False
            prompt = reading.result()
            if prompt is None:
                settled = asyncio.create_task(talk.settled.wait())
                await asyncio.wait({printer, settled}, return_when=asyncio.FIRST_COMPLETED)
                settled.cancel()
                return talk.settled.is_set()
            if prompt.strip() == "/interrupt":
                await ws.send(json.dumps({"type": "interrupt"}))
            elif prompt.split(" ", 1)[0].strip() in ("/allow", "/deny", "/result", "/error"):
                reply = answer(prompt, talk.pending)
                if isinstance(reply, str):
                    print(f"[{reply}]", flush=True)
                else:
                    await ws.send(json.dumps(reply))
            elif prompt.strip():  # sent at once: the service queues it behind a running turn
                await ws.send(json.dumps({"type": "user", "message": {"role": "user", "content": prompt.strip()}}))
                talk.sent()
    finally:
        printer.cancel()


async def chat(url: str, session_id: str | None, token: str | None = None, after: int | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    talk = Conversation(session_id, after)
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_read_prompts, args=(asyncio.get_running_loop(), lines), daemon=True).start()
    tries = 0
    try:
        while True:
            path = session_path(talk.session_id, talk.last_seq)
            try:
                async with websockets.connect(url + path, max_size=None, additional_headers=headers) as ws:
                    tries = 0
                    if await _converse(ws, talk, lines):
                        return 0
            except websockets.ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code in SESSION_OVER:
                    return 0
            except OSError:
                if talk.session_id is None:
                    raise
            tries += 1
            if talk.session_id is None or tries > RECONNECTS:
                return 1
            print(f"[connection lost; reconnecting from seq {talk.last_seq}]", file=sys.stderr, flush=True)
            await asyncio.sleep(min(0.5 * 2**tries, 8))
    finally:  # every way out (end of input, Ctrl-C, a closed session, a failure) says how to come back
        if talk.session_id is not None:
            print(farewell(talk.session_id), file=sys.stderr, flush=True)


def run_chat(url: str, session_id: str | None, token: str | None = None, after: int | None = None) -> int:
    print(
        "type a prompt and press enter (it queues behind a running turn); /interrupt stops a turn; "
        "/allow, /deny [why] answer an approval; "
        "/result TEXT, /error TEXT answer a client tool; Ctrl-D quits",
        file=sys.stderr,
    )
    # Ctrl-C quits even if this process was started with SIGINT ignored (as a command started with
    # `&` by a non-interactive shell is: a script, a CI job), which asyncio would then leave alone.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(chat(url, session_id, token, after))
    except (KeyboardInterrupt, websockets.ConnectionClosed):
        return 0
    except websockets.InvalidStatus as exc:
        hint = " (pass --token)" if exc.response.status_code == 401 else ""
        print(f"refused by {url}: HTTP {exc.response.status_code}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
