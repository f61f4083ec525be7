"""The bot: chat messages in, Moorage sessions driven with the official client, the agent's
answers and files out. It holds no stream open: it sends a message and returns, and a signed
``session.status_idled`` webhook wakes it to read what is new."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anthropic
from anthropic.types.beta import BetaWebhookEvent
from anthropic.types.beta.sessions import (
    BetaManagedAgentsAgentMessageEvent,
    BetaManagedAgentsSessionEvent,
    BetaManagedAgentsTextBlock,
    BetaManagedAgentsTextBlockParam,
    BetaManagedAgentsUserMessageEventParams,
)

from .rules import ChatMessage, Mount, after, message_content, mount_path
from .store import Cursor, Store

log = logging.getLogger(__name__)


class ChatPlatform(Protocol):
    """What the bot needs of a chat platform (Slack: ``chat.postMessage`` and ``url_private``)."""

    async def post(self, thread: str, text: str) -> None: ...

    async def fetch(self, url: str) -> bytes: ...


@dataclass(frozen=True)
class BotSettings:
    moorage_url: str = "http://127.0.0.1:8080"
    moorage_token: str = "demo"  # `make demo` on loopback lets any token in as tenant "default"
    host: str = "127.0.0.1"
    port: int = 8090
    public_url: str = "http://127.0.0.1:8090"  # where Moorage and chat users reach this bot
    db_path: str = "slack_bot.sqlite3"
    webhook_secret: str | None = None  # whsec_…; None: the bot registers its own webhook
    agent_id: str | None = None  # None: the bot makes one
    environment_id: str | None = None
    model: str = "claude-opus-5"
    output_grace_s: float = 10.0  # outputs are listed a moment after the idle: look this long
    output_poll_s: float = 0.5

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> BotSettings:
        base = cls()
        return cls(
            moorage_url=env.get("BOT_MOORAGE_URL", base.moorage_url),
            moorage_token=env.get("BOT_MOORAGE_TOKEN", base.moorage_token),
            host=env.get("BOT_HOST", base.host),
            port=int(env.get("BOT_PORT", base.port)),
            public_url=env.get("BOT_PUBLIC_URL", base.public_url).rstrip("/"),
            db_path=env.get("BOT_DB", base.db_path),
            webhook_secret=env.get("BOT_WEBHOOK_SECRET") or None,
            agent_id=env.get("BOT_AGENT_ID") or None,
            environment_id=env.get("BOT_ENVIRONMENT_ID") or None,
            model=env.get("BOT_MODEL", base.model),
            output_grace_s=float(env.get("BOT_OUTPUT_GRACE_S", base.output_grace_s)),
        )


class Bot:
    def __init__(self, client: anthropic.AsyncAnthropic, store: Store, chat: ChatPlatform, settings: BotSettings):
        self.client, self.store, self.chat, self.settings = client, store, chat, settings
        self._locks: dict[str, asyncio.Lock] = {}  # per session: one reader of its events at a time
        self._watch_until: dict[str, float] = {}  # per session: look for new outputs until then
        self._tasks: set[asyncio.Task[None]] = set()

    # -- setup --------------------------------------------------------------------------

    async def setup(self) -> None:
        """The agent, the environment and the webhook, made once and remembered in the store."""
        beta = self.client.beta
        if self.settings.agent_id is None and self.store.get("agent_id") is None:
            agent = await beta.agents.create(
                name="Chat bot", model=self.settings.model, tools=[{"type": "agent_toolset_20260401"}]
            )
            self.store.put("agent_id", agent.id)
        if self.settings.environment_id is None and self.store.get("environment_id") is None:
            env = await beta.environments.create(name=f"slack-bot-{os.urandom(4).hex()}")
            self.store.put("environment_id", env.id)
        if self.settings.webhook_secret is None and self.store.get("webhook_secret") is None:
            hook = await beta.organization.webhooks.create(
                url=f"{self.settings.public_url}/moorage/webhook",
                enabled_events=["session.status_idled"],  # type: ignore[list-item]
                name="slack bot",
            )
            self.store.put("webhook_id", hook.id)
            self.store.put("webhook_secret", hook.signing_secret)  # shown this once

    def _config(self, key: str, given: str | None) -> str:
        value = given or self.store.get(key)
        assert value is not None, f"{key}: run setup() first"
        return value

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- a chat message -----------------------------------------------------------------

    async def on_message(self, message: ChatMessage) -> str:
        """Upload the attachments, send the message to the thread's session (made on its first
        message) and return its id. A thread silent for days needs nothing special: its session
        was suspended, and Moorage rehydrates it for this message."""
        mounts = [await self._upload(a.name, a.mime_type, a.url) for a in message.attachments]
        content = message_content(message.text, mounts)
        session_id = self.store.session_of(message.thread)
        if session_id is not None:
            try:
                for mount in mounts:
                    await self.client.beta.sessions.resources.add(
                        session_id, type="file", file_id=mount.file_id, mount_path=mount.path
                    )
                await self._send(session_id, content)
                return session_id
            except anthropic.NotFoundError:
                pass  # deleted since (e.g. Moorage's retention): the thread starts a new session
        session = await self.client.beta.sessions.create(
            agent=self._config("agent_id", self.settings.agent_id),
            environment_id=self._config("environment_id", self.settings.environment_id),
            title=f"chat thread {message.thread}"[:200],
            metadata={"chat_thread": message.thread[:200]},
            resources=[{"type": "file", "file_id": m.file_id, "mount_path": m.path} for m in mounts],
        )
        self.store.bind(message.thread, session.id)
        await self._send(session.id, content)
        return session.id

    async def _upload(self, name: str, mime_type: str, url: str) -> Mount:
        data = await self.chat.fetch(url)
        uploaded = await self.client.beta.files.upload(file=(name, data, mime_type))
        return Mount(uploaded.id, name, mount_path(uploaded.id, name))

    async def _send(self, session_id: str, content: list[BetaManagedAgentsTextBlockParam]) -> None:
        message: BetaManagedAgentsUserMessageEventParams = {"type": "user.message", "content": content}
        await self.client.beta.sessions.events.send(session_id, events=[message])

    # -- a webhook ----------------------------------------------------------------------

    def verify(self, body: str, headers: Mapping[str, str]) -> BetaWebhookEvent:
        """The delivery, if its Standard Webhooks signature holds (raises otherwise)."""
        secret = self._config("webhook_secret", self.settings.webhook_secret)
        return self.client.beta.webhooks.unwrap(body, headers=headers, key=secret)

    def wake(self, session_id: str) -> None:
        """Read the session's news in the background: the webhook is answered at once."""
        if self.store.thread_of(session_id) is not None:  # else: not one of this bot's threads
            self._spawn(self._on_idle(session_id))

    async def _on_idle(self, session_id: str) -> None:
        """The agent's words first, then its files: a turn's outputs are listed a moment after
        its idle (in Moorage as in the hosted service), so the bot looks for them for a while."""
        await self._catch_up(session_id)
        watching = session_id in self._watch_until
        self._watch_until[session_id] = asyncio.get_running_loop().time() + self.settings.output_grace_s
        if not watching:  # one watcher per session; a later idle extends its watch
            await self._watch_outputs(session_id)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        """A failed catch-up left the cursor where it was: the next wake posts what it missed."""
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("bot task failed: %r", error)

    async def _catch_up(self, session_id: str) -> None:
        """Post the agent's messages logged after the last one posted, in order."""
        thread = self.store.thread_of(session_id)
        assert thread is not None
        async with self._locks.setdefault(session_id, asyncio.Lock()):
            cursor = self.store.cursor(session_id)
            page = self.client.beta.sessions.events.list(
                session_id,
                types=["agent.message"],
                order="asc",
                limit=100,
                created_at_gte=cursor.at if cursor is not None else anthropic.omit,
            )
            events: list[BetaManagedAgentsSessionEvent] = [e async for e in page]
            for event in after(events, cursor.event_id if cursor is not None else None):
                if isinstance(event, BetaManagedAgentsAgentMessageEvent):
                    said = "".join(b.text for b in event.content if isinstance(b, BetaManagedAgentsTextBlock))
                    if said:
                        await self.chat.post(thread, said)
                    self.store.advance(session_id, Cursor(event.id, event.processed_at.isoformat()))

    async def _watch_outputs(self, session_id: str) -> None:
        """Post each new output as a link, looking again until the watch runs out."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._post_outputs(session_id)
                if loop.time() >= self._watch_until[session_id]:
                    return
                await asyncio.sleep(self.settings.output_poll_s)
        finally:
            self._watch_until.pop(session_id, None)

    async def _post_outputs(self, session_id: str) -> None:
        """New outputs as links, after the words of the turn that wrote them: a turn's outputs are
        stored after its messages are logged, so catching up first keeps the thread in order
        (this may run before that turn's webhook arrives)."""
        thread = self.store.thread_of(session_id)
        assert thread is not None
        new = [f async for f in self.client.beta.files.list(scope_id=session_id) if not self.store.posted(f.id)]
        if not new:
            return
        await self._catch_up(session_id)
        for file in reversed(new):  # the list is newest first
            link = f"{self.settings.public_url}/files/{file.id}"
            await self.chat.post(thread, f"{file.filename} ({file.size_bytes} bytes): {link}")
            self.store.mark_posted(file.id, session_id)

    # -- a download -----------------------------------------------------------------------

    def serves(self, file_id: str) -> bool:
        """Only files the bot posted are served (not every file of the tenant by id)."""
        return self.store.posted(file_id)
