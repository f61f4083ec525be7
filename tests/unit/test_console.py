"""The console's assets as the service ships them (no browser: tests/e2e/test_console.py drives one)."""

from __future__ import annotations

import re

from moorage.console import ASSETS, CSP, console_routes
from starlette.applications import Starlette
from starlette.testclient import TestClient

client = TestClient(Starlette(routes=console_routes()))


def test_every_asset_the_page_loads_is_shipped() -> None:
    page = ASSETS["index.html"].body.decode()
    referenced = re.findall(r'(?:href|src)="/console/([^"]+)"', page)
    assert set(referenced) == {"console.css", "console.js", "icon.svg"}
    assert set(referenced) <= set(ASSETS)


def test_the_page_allows_nothing_but_its_own_origin() -> None:
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == CSP
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert directive in CSP
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"


def test_the_script_puts_no_text_into_the_page_as_markup() -> None:
    """Everything shown is set as text: the script never assigns HTML."""
    script = ASSETS["console.js"].body.decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script


def test_an_unchanged_asset_is_not_sent_again() -> None:
    first = client.get("/console/console.js")
    assert first.headers["content-type"] == "text/javascript; charset=utf-8"
    again = client.get("/console/console.js", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_only_shipped_files_are_served() -> None:
    assert client.get("/console/nothing.js").status_code == 404
    assert client.get("/console/..%2Fapp.py").status_code == 404
    assert client.post("/").status_code == 405
