"""What the tests of the Managed Agents API share: the tenants' tokens, the official ``anthropic``
client opened against a running service (closed after each test by ``close_all``), and the stable
Moorage code of an API error (``error.details.error_code``)."""

from __future__ import annotations

import anthropic
from support import Service

ACME = "tok-acme-0123456789abcdef"
GLOBEX = "tok-globex-0123456789abcdef"
PAGER = "tok-pager-0123456789abcdef"
KEYS = f"acme:{ACME},globex:{GLOBEX},pager:{PAGER}"

_OPEN: list[anthropic.Anthropic] = []


def client(svc: Service, token: str = ACME) -> anthropic.Anthropic:
    api = anthropic.Anthropic(base_url=svc.url, api_key=token, max_retries=2)
    _OPEN.append(api)
    return api


def close_all() -> None:
    while _OPEN:
        _OPEN.pop().close()


def code(error: anthropic.APIStatusError) -> str:
    return str(error.body["error"]["details"]["error_code"])  # type: ignore[index]
