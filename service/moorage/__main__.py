"""``python -m moorage serve``: run the service with uvicorn."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from .logs import configure
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moorage")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the service (settings from MOORAGE_* environment variables)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        settings = Settings()
        configure(settings.log_level)
        from .app import create_app

        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
            ws_max_size=settings.max_frame_bytes,
            lifespan="on",
            timeout_graceful_shutdown=30,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
