"""The web console in a real browser: Debian's Chromium driven by Playwright, against the real
service, real sandboxes and the real CLI (only the model is scripted).

Each test saves a screenshot of where it ended (``test-artifacts/console/``). Every test also
fails on any error the page logs: a Content-Security-Policy violation (a blocked WebSocket, a
blocked image) is one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from moorage.testing.scripted_model import ScriptedModelServer
from support import Cuttable, Service, run_service, scaled, session_pids

playwright = pytest.importorskip("playwright.async_api")
from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MOORAGE_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")) / "console"
TOKEN = "console-test-token-0123456789abcdef"
# A 1x1 PNG: an image output the page must show inline.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed: apt-get install chromium"
)


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    """An open loopback service that streams text deltas, with a tiny budget per session."""
    with run_service(model.url, MOORAGE_STREAM_DELTAS="true") as service:
        yield service


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    expect.set_options(timeout=scaled(30) * 1000)
    async with async_playwright() as p:
        # --no-sandbox: the tests run as root, where Chromium's own sandbox refuses to start.
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


class Console:
    """One page of the console and every error it logged."""

    def __init__(self, page: Page, base: str, name: str) -> None:
        self.page = page
        self.base = base
        self.name = name
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def open(self, path: str = "/") -> None:
        await self.page.goto(self.base + path)

    async def new_session(self, agent: str = "") -> str:
        await self.page.click(f'#agents button[data-agent="{agent}"]')
        await expect(self.page.locator("#chat-state")).to_have_text("connected")
        await self.page.wait_for_url("**/#/sessions/*")
        return self.page.url.rsplit("/", 1)[1]

    async def say(self, text: str) -> None:
        await self.page.fill("#message", text)
        await self.page.press("#message", "Enter")

    def users(self, text: str | None = None) -> Any:
        found = self.page.locator('li[data-kind="user"]')
        return found.filter(has_text=text) if text else found

    def answers(self, text: str | None = None) -> Any:
        found = self.page.locator('li[data-kind="assistant"]')
        return found.filter(has_text=text) if text else found

    def results(self) -> Any:
        return self.page.locator('li[data-kind="result"]')

    async def shot(self, what: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-{what}.png"), full_page=True)

    def clean(self) -> None:
        assert not self.errors, f"the page logged errors: {self.errors}"


async def console(browser: Browser, svc: Service | str, name: str, path: str = "/") -> Console:
    page = await browser.new_page(accept_downloads=True)
    c = Console(page, svc if isinstance(svc, str) else svc.url, name)
    await c.open(path)
    return c


def post_json(svc: Service, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        svc.url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return dict(json.loads(r.read()))


async def test_chat_streams_the_answer_and_counts_tokens_and_cost(svc: Service, browser: Browser) -> None:
    """Open the page, start a session, chat: the answer shows, the turn's tokens and cost are
    under it, and the session is in the list with its state."""
    page = await browser.new_page()
    # Note every text delta the page shows while the answer streams in (the service sends
    # stream_event frames: MOORAGE_STREAM_DELTAS=true).
    await page.add_init_script(
        "window.streamed = [];"
        "new MutationObserver(() => { const s = document.querySelector('.streaming');"
        " if (s) window.streamed.push(s.textContent); })"
        ".observe(document, {subtree: true, childList: true, characterData: true});"
    )
    c = Console(page, svc.url, "chat")
    await c.open()
    await expect(c.page.locator("#who")).to_contain_text("open service")
    session = await c.new_session()
    await c.say("say hello from the model")
    await expect(c.users("say hello from the model")).to_have_count(1)
    await expect(c.answers("hello from the model")).to_have_count(1)
    assert "hello from the model" in await page.evaluate("window.streamed.join('|')")
    await expect(c.page.locator(".streaming")).to_have_count(0)  # replaced by the whole message
    await expect(c.results()).to_have_count(1)
    await expect(c.results()).to_contain_text("in / 7 out tokens")
    await expect(c.page.locator("#chat-totals")).to_contain_text("1 turn")
    await expect(c.page.locator(f'#sessions button[data-session="{session}"]')).to_be_visible()
    for idle in ("#working", "#interrupt", "#banner", "#home", "#sign-out", "#sign-in"):
        await expect(c.page.locator(idle)).to_be_hidden()
    await c.shot("answered")
    c.clean()


async def test_a_tool_call_is_a_collapsible_block_with_its_result(svc: Service, browser: Browser) -> None:
    c = await console(browser, svc, "tool")
    await c.new_session()
    await c.say("bash echo console-tool-ok")
    await expect(c.answers("tool said: console-tool-ok")).to_have_count(1)
    block = c.page.locator('details.tool[data-tool="Bash"]')
    await expect(block).to_have_count(1)
    await expect(block.locator("summary")).to_have_text("Bash: echo console-tool-ok")
    await expect(block.locator(".result")).to_be_hidden()  # collapsed until opened
    await block.locator("summary").click()
    await expect(block.locator(".result")).to_contain_text("console-tool-ok")
    await c.shot("tool-open")
    c.clean()


async def test_an_approval_is_answered_in_the_page(svc: Service, browser: Browser) -> None:
    """A stored agent asks before Bash: the page shows the request, Allow runs the command,
    Deny does not, and both cards say how they were settled."""
    agent = post_json(
        svc,
        "/v1/agents",
        {
            "name": "Careful",
            "model": "claude-sonnet-4-5",
            "tools": [
                {
                    "type": "agent_toolset_20260401",
                    "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}],
                },
                {
                    "type": "custom",
                    "name": "weather",
                    "description": "The weather in a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            ],
        },
    )
    c = await console(browser, svc, "approval")
    await c.new_session(agent["id"])
    await expect(c.page.locator("#chat-title")).to_contain_text("Careful v1")
    await c.say("bash echo approved-run")
    card = c.page.locator("li[data-request]")
    await expect(card).to_have_count(1)
    await expect(card).to_contain_text("Allow Bash?")
    await c.shot("asked")
    await card.get_by_role("button", name="Allow").click()
    await expect(card.locator("[data-settled]")).to_have_text("Allowed (client)")
    await expect(c.answers("tool said: approved-run")).to_have_count(1)

    await c.say("bash echo must-not-run")
    second = c.page.locator("li[data-request]").nth(1)
    await second.get_by_role("button", name="Deny").click()
    await expect(second.locator("[data-settled]")).to_contain_text("Denied (client)")
    await expect(c.results()).to_have_count(2)
    await expect(c.answers("tool said: must-not-run")).to_have_count(0)

    await c.say('tool mcp__client__weather {"city": "Oslo"}')
    call = c.page.locator("li[data-request]").nth(2)
    await expect(call).to_contain_text("The agent calls your tool weather")
    await expect(call).to_contain_text('"city": "Oslo"')
    await call.locator("textarea").fill("9C and clear")
    await call.get_by_role("button", name="Send result").click()
    await expect(call.locator("[data-settled]")).to_have_text("Answered (client)")
    await expect(c.answers("tool said: 9C and clear")).to_have_count(1)
    await c.shot("settled")
    c.clean()


async def test_a_message_sent_during_a_turn_is_shown_queued_until_it_runs(svc: Service, browser: Browser) -> None:
    c = await console(browser, svc, "queued")
    await c.new_session()
    await c.say("sleep 2")
    await expect(c.users("sleep 2")).to_have_count(1)
    await c.say("say after the wait")
    badge = c.users("say after the wait").locator('[data-badge="queued"]')
    await expect(badge).to_have_text("queued #1")
    await c.shot("queued")
    await expect(c.answers("after the wait")).to_have_count(1)
    await expect(badge).to_have_count(0)  # it ran
    await expect(c.results()).to_have_count(2)
    c.clean()


async def test_upload_a_file_then_download_and_see_outputs(svc: Service, browser: Browser, tmp_path: Path) -> None:
    """A file attached in the page reaches the sandbox; what the agent writes to outputs/ comes
    back as a download, and an image output is shown inline."""
    c = await console(browser, svc, "files")
    await c.new_session()
    upload = tmp_path / "data.csv"
    upload.write_text("alpha,beta\n")
    await c.page.set_input_files("#file", str(upload))
    chip = c.page.locator(".chip[data-path]")
    await expect(chip).to_have_attribute("data-path", "/mnt/session/uploads/data.csv")
    await expect(c.page.locator("#message")).to_have_value("(file: /mnt/session/uploads/data.csv)\n")
    await c.say(
        "bash cp /mnt/session/uploads/data.csv /mnt/session/outputs/copy.csv && "
        f"echo {PNG} | base64 -d > /mnt/session/outputs/chart.png && echo stored"
    )
    await expect(c.results()).to_have_count(1)
    copy = c.page.locator('li[data-output="copy.csv"]')
    await expect(copy).to_contain_text("Download copy.csv (11 B)")
    async with c.page.expect_download() as waiting:
        await copy.get_by_role("button").click()
    download = await waiting.value
    assert download.suggested_filename == "copy.csv"
    saved = await download.path()
    assert await asyncio.to_thread(Path(saved).read_text) == "alpha,beta\n"
    image = c.page.locator('li[data-output="chart.png"] img')
    await expect(image).to_be_visible()
    assert await image.evaluate("img => img.complete && img.naturalWidth") == 1
    await c.shot("outputs")
    c.clean()


async def test_a_reload_mid_turn_shows_the_turn_complete_once(svc: Service, browser: Browser) -> None:
    """Reloading while a turn runs: the page replays the session from its log and then goes on
    live; every message, answer and result is there exactly once."""
    c = await console(browser, svc, "reload")
    await c.new_session()
    await c.say("say before the reload")
    await expect(c.results()).to_have_count(1)
    await c.say("sleep 2")
    await expect(c.users("sleep 2")).to_have_count(1)
    await expect(c.page.locator("#working")).to_be_visible()
    await expect(c.page.locator("#interrupt")).to_be_visible()
    await c.page.reload()
    await expect(c.answers("slept")).to_have_count(1)
    await expect(c.results()).to_have_count(2)
    await expect(c.users()).to_have_count(2)
    await expect(c.answers()).to_have_count(2)
    await expect(c.answers("before the reload")).to_have_count(1)
    await c.shot("after-reload")
    c.clean()


async def test_a_network_drop_mid_turn_reconnects_and_misses_nothing(svc: Service, browser: Browser) -> None:
    """The connection is cut while a turn runs (a proxy between page and service drops every
    socket): the page says so, reconnects from its last seq, and the turn ends once."""
    proxy = Cuttable(("127.0.0.1", svc.port))
    proxy.restore()
    try:
        c = await console(browser, f"http://127.0.0.1:{proxy.port}", "drop")
        await c.new_session()
        await c.say("sleep 2")
        await expect(c.users("sleep 2")).to_have_count(1)
        proxy.cut()
        await expect(c.page.locator("#banner")).to_contain_text("Connection lost")
        await c.shot("cut")
        proxy.restore()
        await expect(c.answers("slept")).to_have_count(1)
        await expect(c.results()).to_have_count(1)
        await expect(c.page.locator("#chat-state")).to_have_text("connected")
        await c.say("say still here")
        await expect(c.answers("still here")).to_have_count(1)
        await expect(c.users()).to_have_count(2)
        await c.shot("reconnected")
        # The proxy's origin is not the service's: the page still works because a browser
        # sends the origin it loaded from, and the service checks Origin against Host.
        c.clean()
    finally:
        proxy.cut()


async def test_a_crashed_sandbox_is_explained_and_reconnect_resumes(svc: Service, browser: Browser) -> None:
    c = await console(browser, svc, "crash")
    session = await c.new_session()
    await c.say("bash echo kept > kept.txt && echo saved")
    await expect(c.results()).to_have_count(1)
    await c.say("bash python3 -c 'import time; time.sleep(120)'")
    await expect(c.page.locator('details.tool[data-tool="Bash"]')).to_have_count(2)
    await expect(c.page.locator("#working")).to_be_visible()  # mid-turn
    for pid in session_pids(session):
        os.kill(pid, signal.SIGKILL)
    banner = c.page.locator("#banner")
    await expect(banner).to_contain_text("The sandbox crashed")
    await c.shot("crashed")
    await banner.get_by_role("button", name="Reconnect").click()
    await expect(c.page.locator("#chat-state")).to_have_text("connected")
    await c.say("bash cat kept.txt")
    await expect(c.answers("tool said: kept")).to_have_count(1)
    # Reloaded, the crash is history: a line in the conversation, not the page's state.
    await c.page.reload()
    await expect(c.answers("tool said: kept")).to_have_count(1)
    await expect(c.page.locator('li.notice[data-code="sandbox_crashed"]')).to_have_count(1)
    await expect(banner).to_be_hidden()
    await expect(c.page.locator("#chat-state")).to_have_text("connected")
    c.errors = [e for e in c.errors if "WebSocket" not in e]  # the killed socket is logged by the browser
    c.clean()


async def test_a_spent_budget_and_rate_limits_are_shown(model: ScriptedModelServer, browser: Browser) -> None:
    limits = {"MOORAGE_MAX_BUDGET_USD": "0.000001", "MOORAGE_FRAMES_PER_S": "1", "MOORAGE_FRAMES_BURST": "2"}
    with run_service(model.url, **limits) as s:
        c = await console(browser, s, "budget")
        await c.new_session()
        await c.say("say spend it")
        await expect(c.results()).to_have_count(1)
        await expect(c.page.locator('li.notice[data-code="budget_exceeded"]')).to_contain_text("budget is spent")
        for n in range(4):  # past the burst
            await c.say(f"say {n}")
        await expect(c.page.locator("#banner")).to_contain_text("Too fast")
        await c.shot("limits")
        await expect(c.page.locator("#banner")).to_be_hidden()  # a passing notice, not a standing state
        c.clean()


async def test_a_token_is_asked_for_kept_out_of_urls_and_logs(model: ScriptedModelServer, browser: Browser) -> None:
    with run_service(model.url, MOORAGE_API_KEYS=f"acme:{TOKEN}") as s:
        c = await console(browser, s, "sign-in")
        await expect(c.page.locator("#sign-in")).to_be_visible()
        await c.page.fill("#token", "wrong-token-wrong-token")
        await c.page.click("#sign-in-form button")
        await expect(c.page.locator("#sign-in-error")).to_have_text("That token was refused.")
        await c.page.fill("#token", TOKEN)
        await c.page.click("#sign-in-form button")
        await expect(c.page.locator("#app")).to_be_visible()
        urls: list[str] = []
        c.page.on("request", lambda r: urls.append(r.url))
        c.page.on("websocket", lambda ws: urls.append(ws.url))
        await c.new_session()
        await c.say("say signed in")
        await expect(c.answers("signed in")).to_have_count(1)
        await c.page.reload()  # the tab keeps its token
        await expect(c.answers("signed in")).to_have_count(1)
        await c.shot("signed-in")
        await c.page.click("#sign-out")
        await expect(c.page.locator("#sign-in")).to_be_visible()
        assert urls and not [u for u in urls if TOKEN in u]
        assert TOKEN not in s.logs()
        c.errors = [e for e in c.errors if "401" not in e]  # the refused token's request
        c.clean()


async def test_the_page_is_served_with_a_strict_policy(svc: Service) -> None:
    def get(path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(svc.url + path, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    status, headers, body = await asyncio.to_thread(get, "/")
    assert status == 200 and b"/console/console.js" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, _ = await asyncio.to_thread(get, "/console/console.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert (await asyncio.to_thread(get, "/console/../app.py"))[0] == 404
    assert (await asyncio.to_thread(get, "/console/nothing.js"))[0] == 404
