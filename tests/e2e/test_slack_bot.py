"""The chat-bot example (examples/slack_bot) end to end: the service as a process (scripted model,
real sandboxes), the bot's Starlette app served by uvicorn in this process, and a fake chat
platform that records what the bot posts and serves attachments. The bot uses only the official
``anthropic`` client; it holds no stream open, so every answer posted here came through a signed
``session.status_idled`` webhook that the bot verified with ``client.beta.webhooks.unwrap``: a
thread message gets the agent's answer, a second one after its session was suspended goes to the
same session, an attachment is read by the agent where the bot said it is, an output comes back as
a link (after the words of its turn) that downloads the same bytes, and a forged delivery is
refused with 400 and posts nothing."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest
import uvicorn
from anthropic.types.beta.sessions import BetaManagedAgentsTextBlock
from ma_client import ACME, KEYS, client, text
from moorage.testing.scripted_model import ScriptedModelServer
from slack_bot.app import create_app
from slack_bot.bot import BotSettings
from standardwebhooks import Webhook
from support import Service, free_port, run_service, scaled, wait_suspended, wait_until

SERVICE_ENV = {
    "MOORAGE_API_KEYS": KEYS,
    "MOORAGE_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",  # the bot listens on loopback
    # Deliveries start up to a second after a turn ends, when its outputs are already listed: the
    # bot must still post a turn's words before its files.
    "MOORAGE_WEBHOOK_POLL_S": "1",
    "MOORAGE_WEBHOOK_BACKOFF_BASE_MS": "100",
    "MOORAGE_WEBHOOK_BACKOFF_MAX_S": "0.4",
    "MOORAGE_MAX_TURNS": "5",
    "MOORAGE_IDLE_TIMEOUT_S": "2",  # a thread silent for a while: its session is suspended
}
NUMBERS = "".join(f"{n}\n" for n in range(1, 20001)).encode()  # what `seq 1 20000` writes


class FakeChat:
    """The chat platform: what the bot posted, per thread, and attachments served from memory."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []
        self._files: dict[str, bytes] = {}
        self._ids = itertools.count(1)

    async def post(self, thread: str, text: str) -> None:
        self.posted.append((thread, text))

    async def fetch(self, url: str) -> bytes:
        return self._files[url]

    def attach(self, name: str, data: bytes, mime_type: str = "text/plain") -> dict[str, str]:
        url = f"fakechat://files/{next(self._ids)}/{name}"
        self._files[url] = data
        return {"name": name, "mime_type": mime_type, "url": url}

    def said(self, thread: str) -> list[str]:
        return [text for t, text in list(self.posted) if t == thread]


class RunningBot:
    """The bot's app under uvicorn in a thread of its own, on a free loopback port."""

    def __init__(self, svc: Service, db: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        self.chat = FakeChat()
        settings = BotSettings(
            moorage_url=svc.url,
            moorage_token=ACME,
            public_url=self.url,
            db_path=str(db),
            output_grace_s=scaled(30),
            output_poll_s=0.2,
        )
        config = uvicorn.Config(
            create_app(settings, self.chat), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)

    def start(self) -> RunningBot:
        self._thread.start()
        wait_until(lambda: self._server.started or not self._thread.is_alive(), 30, "the bot to listen")
        assert self._server.started, "the bot did not start (its setup against the service failed)"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=scaled(10))

    def config(self, key: str) -> str:
        with sqlite3.connect(self.db) as db:
            return str(db.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()[0])

    def message(self, thread: str, text: str, attachments: list[dict[str, str]] | None = None) -> str:
        """What the chat platform does for a new message: POST it to the bot; the session's id."""
        body = {"thread": thread, "text": text, "attachments": attachments or []}
        got = httpx.post(f"{self.url}/chat/events", json=body, timeout=scaled(60))
        assert got.status_code == 200, got.text
        return str(got.json()["session_id"])

    def await_post(self, thread: str, count: int) -> list[str]:
        wait_until(lambda: len(self.chat.said(thread)) >= count, 120, f"post {count} in {thread}")
        return self.chat.said(thread)


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(model.url, **SERVICE_ENV) as service:
        yield service


@pytest.fixture(scope="module")
def bot(svc: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBot]:
    running = RunningBot(svc, tmp_path_factory.mktemp("bot") / "bot.sqlite3").start()
    yield running
    running.stop()


def test_a_thread_is_one_session_and_the_webhook_brings_each_answer(svc: Service, bot: RunningBot) -> None:
    first = bot.message("thread-hello", "say hello from the agent")
    assert bot.await_post("thread-hello", 1) == ["hello from the agent"]
    # Days of silence, shortened: the session is suspended, its sandbox gone. The bot does
    # nothing special; Moorage rehydrates the session for the thread's next message.
    asyncio.run(wait_suspended(svc, first))
    second = bot.message("thread-hello", "say and again")
    assert second == first, "a second message of a thread goes to its session"
    assert bot.await_post("thread-hello", 2) == ["hello from the agent", "and again"]
    api = client(svc)
    session = api.beta.sessions.retrieve(first)
    assert session.metadata == {"chat_thread": "thread-hello"}
    said = [e for e in api.beta.sessions.events.list(first) if e.type == "user.message"]
    assert len(said) == 2
    # Another thread is another session.
    assert bot.message("thread-other", "say elsewhere") != first
    assert bot.await_post("thread-other", 1) == ["elsewhere"]
    assert bot.chat.said("thread-hello") == ["hello from the agent", "and again"]


def test_a_thread_whose_session_was_deleted_gets_a_new_one(svc: Service, bot: RunningBot) -> None:
    first = bot.message("thread-gone", "say before")
    assert bot.await_post("thread-gone", 1) == ["before"]
    client(svc).beta.sessions.delete(first)  # as retention would, after long enough
    notes = bot.chat.attach("notes.txt", b"still here")
    second = bot.message("thread-gone", "bash cat /mnt/session/uploads/*/notes.txt", [notes])
    assert second != first
    assert bot.await_post("thread-gone", 2) == ["before", "tool said: still here"]


def test_attachments_are_mounted_and_the_agent_reads_them(svc: Service, bot: RunningBot) -> None:
    notes = bot.chat.attach("notes.txt", b"remember the milk")
    session_id = bot.message("thread-files", "bash cat /mnt/session/uploads/*/notes.txt", [notes])
    assert bot.await_post("thread-files", 1) == ["tool said: remember the milk"]
    # Later in the thread (its session is live): added to the running session.
    table = bot.chat.attach("my table.csv", b"city,temp\nOslo,3\n", "text/csv")
    assert bot.message("thread-files", "bash cat /mnt/session/uploads/*/my_table.csv", [table]) == session_id
    assert bot.await_post("thread-files", 2)[1] == "tool said: city,temp\nOslo,3"
    mounted = [str(r.mount_path) for r in client(svc).beta.sessions.resources.list(session_id)]
    assert len(mounted) == 2 and mounted[0].endswith("/notes.txt") and mounted[1].endswith("/my_table.csv")
    # The agent was told where they are (the note is the message's first block).
    messages = [e for e in client(svc).beta.sessions.events.list(session_id) if e.type == "user.message"]
    note = messages[0].content[0]
    assert isinstance(note, BetaManagedAgentsTextBlock) and mounted[0] in note.text


def test_an_output_comes_back_as_a_link_that_downloads_the_same_bytes(svc: Service, bot: RunningBot) -> None:
    write = "bash mkdir -p /mnt/session/outputs && seq 1 20000 > /mnt/session/outputs/numbers.txt && echo written"
    bot.message("thread-out", "say ready")
    assert bot.await_post("thread-out", 1) == ["ready"]
    # The bot still looks for the first turn's outputs when the second one writes one: the link
    # comes after the words of the turn that wrote it all the same.
    bot.message("thread-out", write)
    said = bot.await_post("thread-out", 3)
    assert said[1] == "tool said: written"
    link = re.fullmatch(rf"numbers\.txt \({len(NUMBERS)} bytes\): (http://\S+)", said[2])
    assert link is not None, said
    got = httpx.get(link.group(1), timeout=scaled(60))
    assert got.status_code == 200 and got.content == NUMBERS
    assert got.headers["content-type"].startswith("text/plain")
    assert "numbers.txt" in got.headers["content-disposition"]
    # The bot serves only what it posted: another file of the tenant is not reachable through it.
    other = client(svc).beta.files.upload(file=("private.txt", b"not for the chat", "text/plain"))
    assert httpx.get(f"{bot.url}/files/{other.id}", timeout=scaled(30)).status_code == 404


def signed(secret: str, payload: str, msg_id: str = "msg_forged") -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, payload),
        "content-type": "application/json",
    }


def answers(api: anthropic.Anthropic, session_id: str) -> list[str]:
    return [text(e) for e in api.beta.sessions.events.list(session_id, types=["agent.message"])]


def test_a_forged_webhook_is_refused_and_posts_nothing(svc: Service, bot: RunningBot) -> None:
    api = client(svc)
    session_id = bot.message("thread-forged", "say first")
    assert bot.await_post("thread-forged", 1) == ["first"]
    # Moorage stops telling the bot (its endpoint is deleted); the next answer waits unposted.
    api.beta.organization.webhooks.delete(bot.config("webhook_id"))
    bot.message("thread-forged", "say unposted")
    wait_until(lambda: "unposted" in answers(api, session_id), 120, "the second turn's answer")
    payload = json.dumps(
        {
            "type": "event",
            "id": "wevt_forged",
            "created_at": datetime.now(UTC).isoformat(),
            "data": {"type": "session.status_idled", "id": session_id, "organization_id": "acme"},
        }
    )
    hook = f"{bot.url}/moorage/webhook"
    forger = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # not the endpoint's secret
    secret = bot.config("webhook_secret")
    tampered = payload.replace("wevt_forged", "wevt_other")
    refusals = [
        (payload, signed(forger, payload)),  # a signature made with another key
        (tampered, signed(secret, payload)),  # the right key over another body
        (payload, {"content-type": "application/json"}),  # no signature at all
    ]
    for body, headers in refusals:
        got = httpx.post(hook, content=body, headers=headers, timeout=scaled(30))
        assert got.status_code == 400, (headers, got.text)
    assert bot.chat.said("thread-forged") == ["first"], "a refused delivery posted something"
    # The same delivery signed with the endpoint's secret is taken: the answer is posted once.
    assert httpx.post(hook, content=payload, headers=signed(secret, payload), timeout=scaled(30)).status_code == 200
    assert bot.await_post("thread-forged", 2) == ["first", "unposted"]
    with pytest.raises(anthropic.NotFoundError):  # the endpoint is gone for good
        api.beta.organization.webhooks.retrieve(bot.config("webhook_id"))
