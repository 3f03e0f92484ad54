"""The web chat page in headless Chromium (Debian's `chromium`, driven by Playwright): type, see a streamed answer,
see tool calls and their results. Skips with a reason where Chromium or Playwright is missing."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi", reason="the serving extras (fastapi) are not installed")
from conftest import PLAIN_REPLY, endless_model, scripted_model, serve_in_thread

from chatforge.serving.engine import Engine
from chatforge.serving.server import create_app
from chatforge.serving.toolbox import load_tools

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (apt-get install chromium; `make test` does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _page(browser):
    """A page whose waits allow for a loaded CI machine (the default 30 s timed out once while the suite ran)."""
    page = browser.new_page()
    page.set_default_timeout(120_000)
    return page


def test_page_streams_a_multi_turn_answer(browser, tiny_tok):
    model, tok = scripted_model("plain")
    with serve_in_thread(create_app(Engine(model, tok, "chatml"), "tiny")) as base:
        page = _page(browser)
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('status').textContent === 'ready'")
        page.fill("#system", "Answer briefly.")
        page.fill("#input", "What is the capital of France?")
        page.press("#input", "Enter")
        answer = page.locator(".msg.assistant .body").first
        page.wait_for_function("!document.getElementById('send').disabled && document.querySelector('.msg.assistant')")
        assert answer.inner_text() == PLAIN_REPLY
        # Second turn: the history goes back to the server, and the page shows both exchanges.
        page.fill("#input", "And again?")
        page.press("#input", "Enter")
        page.wait_for_function(
            "document.querySelectorAll('.msg.assistant').length === 2 && !document.getElementById('send').disabled"
        )
        assert page.locator(".msg.user").count() == 2
        assert page.locator(".msg.assistant .body").nth(1).inner_text() == PLAIN_REPLY

    # Streaming is visible: with a long answer, text is on the page while the request is still running.
    engine = Engine(endless_model(tiny_tok), tiny_tok, "chatml")
    with serve_in_thread(create_app(engine, "tiny")) as base:
        page = _page(browser)
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('status').textContent === 'ready'")
        page.fill("#max_tokens", "400")
        page.fill("#input", "Tell me a long story")
        page.press("#input", "Enter")
        page.wait_for_function(
            "(() => { const b = document.querySelector('.msg.assistant .body');"
            " return b && b.textContent.length > 0 && document.getElementById('send').disabled; })()"
        )
        page.click("#stop")  # aborting the fetch disconnects; the server drops the sequence
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'")


def test_page_shows_tool_calls_and_results(browser, tmp_path):
    tools_file = tmp_path / "mytools.py"
    tools_file.write_text(
        "def search_hotels(city: str) -> dict:\n"
        '    """Search hotels in a city.\n\n    Args:\n        city: the city\n    """\n'
        '    return {"city": city, "total": 2}\n'
    )
    model, tok = scripted_model("tool")
    app = create_app(Engine(model, tok, "chatml"), "tiny", toolbox=load_tools(str(tools_file)))
    with serve_in_thread(app) as base:
        page = _page(browser)
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('status').textContent === 'ready'")
        assert page.is_checked("#use_tools")
        page.fill("#input", "Find a hotel in Beijing")
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.tool")
        call = page.locator(".call").first.inner_text()
        assert call.startswith("\u2192 search_hotels(") and '"city": "Beijing"' in call
        assert (
            page.locator(".msg.tool .body").first.inner_text() == 'search_hotels \u2192 {"city": "Beijing", "total": 2}'
        )
