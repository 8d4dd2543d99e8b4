"""The web chat end to end: Playwright drives Debian's headless Chromium against the real server.

Chromium comes from Debian (`apt-get install chromium`, done by .ci/run when missing); Playwright's own
browser download is not used.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from gptrecipe.rm import read_rankings
from gptrecipe.serve.api import BackgroundServer, create_app
from tests.serve_util import tiny_checkpoint

CHROMIUM = os.environ.get("GPTRECIPE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

COUNT_STREAMING_UPDATES = """() => {
  window.__updates = 0;
  window.__sawStreaming = false;
  new MutationObserver((records) => {
    for (const r of records) {
      const msg = r.target.closest ? r.target.closest('[data-testid="assistant-message"]')
                                   : r.target.parentElement.closest('[data-testid="assistant-message"]');
      if (msg && msg.dataset.streaming === "true") { window.__sawStreaming = true; window.__updates++; }
    }
  }).observe(document.getElementById("messages"), {subtree: true, childList: true, characterData: true});
}"""


def wait_for_lines(path, n: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if len(lines) >= n:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"{path}: fewer than {n} lines after {timeout} s")


@pytest.fixture
def browser():
    assert CHROMIUM, "chromium is not installed: apt-get install -y chromium (.ci/run does it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_chat_page_streams_and_records_a_comparison(tmp_path, small_tok, browser):
    ckpt, _ = tiny_checkpoint(tmp_path / "sft", small_tok, block_size=128)
    feedback = tmp_path / "feedback.jsonl"
    with BackgroundServer(create_app(ckpt, feedback=feedback, device="cpu")) as server:
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        expect(page.get_by_test_id("model-name")).to_have_text("sft")
        page.get_by_test_id("toggle-settings").click()
        for field, value in (("seed", "1"), ("max-tokens", "24"), ("temperature", "1")):
            page.get_by_test_id(field).fill(value)
            page.get_by_test_id(field).dispatch_event("change")
        page.get_by_test_id("system-prompt").fill("")
        page.evaluate(COUNT_STREAMING_UPDATES)

        page.get_by_test_id("message-input").fill("Hello! How are you?")
        page.get_by_test_id("message-input").press("Enter")
        reply = page.get_by_test_id("assistant-message")
        expect(reply).to_have_attribute("data-streaming", "false", timeout=30_000)
        first = reply.locator(".text").text_content()
        assert first, "empty reply"
        assert page.evaluate("window.__sawStreaming") and page.evaluate("window.__updates") >= 2  # streamed

        page.get_by_test_id("thumbs-down").click()
        rating = wait_for_lines(tmp_path / "feedback.ratings.jsonl", 1)[0]
        assert (rating["prompt"], rating["response"], rating["rating"]) == ("Hello! How are you?", first, -1)

        page.get_by_test_id("regenerate").click()
        expect(page.get_by_test_id("compare")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("version-label")).to_have_text("2 / 2")
        second = reply.locator(".text").text_content()
        assert second and second != first
        page.get_by_test_id("choose-new").click()
        line = wait_for_lines(feedback, 1)[0]
        assert (line["prompt"], line["chosen"], line["rejected"], line["source"]) == (
            "Hello! How are you?", second, first, "regenerate")
        assert [(r.prompt, r.responses) for r in read_rankings(feedback)] == [("Hello! How are you?", [second, first])]
        expect(page.get_by_test_id("compare")).to_have_count(0)

        page.reload()  # the conversation is kept in the browser
        expect(page.get_by_test_id("conversation-item")).to_have_count(1)
        expect(page.get_by_test_id("conversation-item")).to_contain_text("Hello! How are you?")
        expect(page.get_by_test_id("assistant-message").locator(".text")).to_have_text(second)
        assert not errors, errors


def test_chat_page_asks_for_the_api_key(tmp_path, small_tok, browser):
    ckpt, _ = tiny_checkpoint(tmp_path / "sft", small_tok)
    with BackgroundServer(create_app(ckpt, api_key="sekrit", device="cpu")) as server:
        page = browser.new_page()
        page.goto(server.url + "/")
        expect(page.get_by_test_id("status")).to_contain_text("API key")
        page.get_by_test_id("api-key").fill("sekrit")
        page.get_by_test_id("api-key").dispatch_event("change")
        expect(page.get_by_test_id("model-name")).to_have_text("sft")
        page.get_by_test_id("message-input").fill("Hi")
        page.get_by_test_id("send").click()
        expect(page.get_by_test_id("assistant-message")).to_have_attribute("data-streaming", "false", timeout=30_000)
        expect(page.get_by_test_id("status")).to_have_text("")


def test_chat_page_continues_a_transcript_on_a_base_model(tmp_path, small_tok, browser):
    ckpt, _ = tiny_checkpoint(tmp_path / "pretrain", small_tok, stage="pretrain", block_size=128)
    with BackgroundServer(create_app(ckpt, device="cpu")) as server:
        page = browser.new_page()
        page.goto(server.url + "/")
        expect(page.get_by_test_id("model-name")).to_have_text("pretrain")
        expect(page.locator("#model-kind")).to_contain_text("base model")
        page.get_by_test_id("message-input").fill("Hello!")
        page.get_by_test_id("send").click()
        reply = page.get_by_test_id("assistant-message")
        expect(reply).to_have_attribute("data-streaming", "false", timeout=30_000)
        assert reply.locator(".text").text_content()
        expect(page.get_by_test_id("status")).to_have_text("")
