"""The bot's HTTP side (Starlette): ``POST /chat/events`` from the chat platform,
``POST /moorage/webhook`` from Moorage, ``GET /files/{id}`` for the links it posts. The lifespan
builds the client, the store and the bot, and yields the bot as request state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict
from urllib.parse import quote

import anthropic
from standardwebhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .bot import Bot, BotSettings, ChatPlatform
from .rules import BadMessage, parse_message
from .store import Store

MAX_BODY_BYTES = 256 * 1024  # a chat event or a webhook; attachments come by URL


class State(TypedDict):
    bot: Bot


def _refused(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> bytes | None:
    body = await request.body()
    return body if len(body) <= MAX_BODY_BYTES else None


async def chat_event(request: Request) -> Response:
    """A message of a thread: passed on to its session, answered at once (the agent's answer
    comes later, through the webhook). A real platform's request would be authenticated here
    (Slack: ``X-Slack-Signature``)."""
    bot: Bot = request.state.bot
    body = await _body(request)
    try:
        message = parse_message(json.loads(body) if body is not None else None)
    except (ValueError, BadMessage) as exc:
        return _refused(str(exc) or "the body is too large", 400)
    try:
        session_id = await bot.on_message(message)
    except anthropic.APIError as exc:
        return _refused(f"moorage refused the message: {exc.message}", 502)
    return JSONResponse({"ok": True, "session_id": session_id})


async def moorage_webhook(request: Request) -> Response:
    """A delivery from Moorage: verified, then acknowledged; the bot reads the news in the background."""
    bot: Bot = request.state.bot
    body = await _body(request)
    try:
        event = bot.verify((body or b"").decode("utf-8", "replace"), request.headers)
    except (WebhookVerificationError, ValueError):
        return _refused("the webhook signature does not verify", 400)
    if event.data.type == "session.status_idled":
        bot.wake(event.data.id)
    return JSONResponse({"ok": True})


async def download(request: Request) -> Response:
    """A file the bot posted, streamed from Moorage."""
    bot: Bot = request.state.bot
    file_id = request.path_params["file_id"]
    if not bot.serves(file_id):
        return _refused("no such file", 404)
    files = bot.client.beta.files
    try:
        meta = await files.retrieve_metadata(file_id)
    except anthropic.NotFoundError:
        return _refused("no such file", 404)

    async def stream() -> AsyncIterator[bytes]:
        async with files.with_streaming_response.download(file_id) as upstream:
            async for chunk in upstream.iter_bytes():
                yield chunk

    name = meta.filename.rsplit("/", 1)[-1]
    headers = {"content-disposition": f"attachment; filename*=UTF-8''{quote(name)}"}
    headers["content-length"] = str(meta.size_bytes)
    return StreamingResponse(stream(), media_type=meta.mime_type, headers=headers)


def create_app(settings: BotSettings, chat: ChatPlatform) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        client = anthropic.AsyncAnthropic(base_url=settings.moorage_url, api_key=settings.moorage_token)
        store = Store(settings.db_path)
        bot = Bot(client, store, chat, settings)
        try:
            await bot.setup()
            yield {"bot": bot}
        finally:
            await bot.close()
            await client.close()
            store.close()

    return Starlette(
        routes=[
            Route("/chat/events", chat_event, methods=["POST"]),
            Route("/moorage/webhook", moorage_webhook, methods=["POST"]),
            Route("/files/{file_id}", download, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
