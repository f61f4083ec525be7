"""The web console: a static page at ``/`` that chats with sessions through the public APIs only
(WebSocket v1 and the HTTP API), so it is also their reference client.

The assets live in the package (``moorage/web``); there is no build step and nothing comes from a
CDN. They are read once, at import, and served from memory with a strong ETag. Every answer
carries a Content-Security-Policy that allows scripts, styles and connections to this origin only
(images also from ``blob:``, for outputs the page fetched with its token), no framing, no forms
posting elsewhere: a message or a file the agent wrote is rendered as text, and even a bug that
put it into the page as markup could not run a script or send the token anywhere. The token
itself never goes into a URL: the page keeps it in ``sessionStorage`` and presents it as a header
(HTTP) or as the ``bearer.`` subprotocol (WebSocket); the service never logs either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of ``moorage/web`` by name (a flat directory: nothing else is reachable)."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("moorage").joinpath("web").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


ASSETS = load_assets()


def headers(asset: Asset) -> dict[str, str]:
    return {
        "content-type": asset.content_type,
        "etag": asset.etag,
        "cache-control": "no-cache",  # revalidated each load: a new release is seen at once
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
    }


def serve(name: str, request: Request) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        return Response("not found\n", status_code=404, media_type="text/plain")
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers={"etag": asset.etag, "cache-control": "no-cache"})
    return Response(asset.body, headers=headers(asset))


async def index(request: Request) -> Response:
    return serve("index.html", request)


async def asset(request: Request) -> Response:
    return serve(request.path_params["name"], request)


def console_routes() -> list[Route]:
    return [Route("/", index, methods=["GET", "HEAD"]), Route("/console/{name}", asset, methods=["GET", "HEAD"])]
