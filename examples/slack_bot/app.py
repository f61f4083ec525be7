"""The bot's HTTP side (Starlette): ``POST /chat/events`` from the chat platform,
``POST /moorage/webhook`` from Moorage, ``GET /files/{id}`` for the links it posts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


async def _body(request: Request) -> bytes | None:
    body = await request.body()
    return body if len(body) <= MAX_BODY_BYTES else None


def create_app(settings: BotSettings, chat: ChatPlatform) -> Starlette:
    bot: Bot | None = None

    def the_bot() -> Bot:
        assert bot is not None, "the app's lifespan has not started"
        return bot

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal bot
        client = anthropic.AsyncAnthropic(base_url=settings.moorage_url, api_key=settings.moorage_token)
        store = Store(settings.db_path)
        bot = Bot(client, store, chat, settings)
        try:
            await bot.setup()
            yield
        finally:
            await bot.close()
            await client.close()
            store.close()

    async def chat_event(request: Request) -> Response:
        body = await _body(request)
        try:
            message = parse_message(json.loads(body) if body is not None else None)
        except (ValueError, BadMessage) as exc:
            return JSONResponse({"error": str(exc) or "the body is too large"}, status_code=400)
        session_id = await the_bot().on_message(message)
        return JSONResponse({"ok": True, "session_id": session_id})

    async def moorage_webhook(request: Request) -> Response:
        body = await _body(request)
        try:
            event = the_bot().verify((body or b"").decode("utf-8", "replace"), request.headers)
        except (WebhookVerificationError, ValueError):
            return JSONResponse({"error": "the webhook signature does not verify"}, status_code=400)
        if event.data.type == "session.status_idled":
            the_bot().wake(event.data.id)
        return JSONResponse({"ok": True})

    async def download(request: Request) -> Response:
        file_id = request.path_params["file_id"]
        files = the_bot().client.beta.files
        if not the_bot().serves(file_id):
            return JSONResponse({"error": "no such file"}, status_code=404)
        try:
            meta = await files.retrieve_metadata(file_id)
        except anthropic.NotFoundError:
            return JSONResponse({"error": "no such file"}, status_code=404)

        async def stream() -> AsyncIterator[bytes]:
            async with files.with_streaming_response.download(file_id) as upstream:
                async for chunk in upstream.iter_bytes():
                    yield chunk

        name = meta.filename.rsplit("/", 1)[-1]
        return StreamingResponse(
            stream(),
            media_type=meta.mime_type,
            headers={
                "content-disposition": f"attachment; filename*=UTF-8''{quote(name)}",
                "content-length": str(meta.size_bytes),
            },
        )

    return Starlette(
        routes=[
            Route("/chat/events", chat_event, methods=["POST"]),
            Route("/moorage/webhook", moorage_webhook, methods=["POST"]),
            Route("/files/{file_id}", download, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
