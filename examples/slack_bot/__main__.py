"""``python -m slack_bot`` (from examples/): the bot on BOT_HOST:BOT_PORT, with a console "chat
platform" that prints what the bot posts and fetches attachments by URL (``file://`` too)."""

from __future__ import annotations

import asyncio
import urllib.request

import uvicorn

from .app import create_app
from .bot import BotSettings

MAX_ATTACHMENT_BYTES = 32 * 1024 * 1024


class ConsoleChat:
    async def post(self, thread: str, text: str) -> None:
        print(f"[{thread}] {text}", flush=True)

    async def fetch(self, url: str) -> bytes:
        def read() -> bytes:
            with urllib.request.urlopen(url, timeout=30) as got:
                data: bytes = got.read(MAX_ATTACHMENT_BYTES + 1)
            if len(data) > MAX_ATTACHMENT_BYTES:
                raise ValueError(f"{url}: over {MAX_ATTACHMENT_BYTES} bytes")
            return data

        return await asyncio.to_thread(read)


def main() -> None:
    settings = BotSettings.from_env()
    uvicorn.run(create_app(settings, ConsoleChat()), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
