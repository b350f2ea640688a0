"""The chat page in headless Chromium: type an instruction, watch the reply stream in.

Needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver).
The screenshot lands in artifacts/serve/ at the repository root.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "serve"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver: apt-get install -y chromium chromium-driver",
)

# Counts every change to the reply's text, so the test can tell streaming from one final write.
WATCH_REPLY = """
window.__updates = 0;
new MutationObserver(() => { window.__updates += 1; })
  .observe(document.getElementById('transcript'), {subtree: true, characterData: true, childList: true});
"""


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="alpaca-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--window-size=1200,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_instruction_reply_streams_into_the_page(browser, serve_factory) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with serve_factory(max_new_tokens=256) as running:
        browser.get(running.base_url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-name"), "tiny-llama"))
        assert "chat prompts" in browser.find_element(By.ID, "model-name").text

        browser.find_element(By.ID, "instruction").send_keys("Give three tips for staying healthy.")
        browser.find_element(By.ID, "input").send_keys("For someone who works at a desk.")
        max_tokens = browser.find_element(By.ID, "max-tokens")
        max_tokens.clear()
        max_tokens.send_keys("40")
        browser.execute_script(WATCH_REPLY)
        browser.find_element(By.ID, "send").click()

        wait.until(ec.text_to_be_present_in_element((By.ID, "usage"), "completion"))
        reply = browser.find_element(By.CSS_SELECTOR, ".turn.assistant .text").text
        usage = browser.find_element(By.ID, "usage").text
        user_turn = browser.find_element(By.CSS_SELECTOR, ".turn.user").text
        updates = browser.execute_script("return window.__updates")

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "chat_page.png"))

    assert reply.strip(), "the reply should have text"
    assert "40 completion" in usage and "prompt" in usage
    assert "Give three tips" in user_turn and "works at a desk" in user_turn
    assert updates > 5, f"the reply should arrive piece by piece, saw {updates} updates"
    assert (ARTIFACTS / "chat_page.png").stat().st_size > 10_000
