"""The status page in a real browser (the system's Chromium through Selenium) against `sllm up`:
it asks for the admin key, then shows the instance a chat request started and counts the
request. `sllm status` reads the same snapshot from the command line.

Skipped where Chromium, its chromedriver or selenium is missing (`make test` installs the
browser with apt-get when it can). ``SLLM_STATUS_SCREENSHOT=<path>`` saves the page as a PNG.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .cluster import SLLM, UpCluster, up_cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HAS_BROWSER = os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    # Checked before the cluster starts (a module fixture), so the skip costs nothing.
    pytest.mark.skipif(
        not HAS_BROWSER,
        reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
    ),
]
ADMIN = "sk-admin-status-page"
INFER = "sk-infer-status-page"
WAIT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(
        tmp_path_factory.mktemp("status"), nodes=1, SLLM_API_KEYS=INFER, SLLM_ADMIN_KEYS=ADMIN
    ) as c:
        yield c


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=1400,1200",
    ):
        options.add_argument(flag)
    # An explicit driver: selenium-manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _status(cluster: UpCluster, key: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cluster.env, "SLLM_URL": cluster.base_url}
    if key:
        env["SLLM_API_KEY"] = key
    return subprocess.run(
        [SLLM, "status", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_status_page_shows_the_instance_and_counts_the_request(
    cluster: UpCluster, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.25)

    # Without the key the page says the router refused it.
    browser.get(cluster.base_url + "/ui")
    wait.until(lambda d: "refused the key" in d.find_element(By.ID, "banner").text)

    # ?key= is kept (localStorage) and dropped from the address bar.
    browser.get(f"{cluster.base_url}/?key={ADMIN}")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-deployment="demo"]'))
    assert "key=" not in browser.current_url
    assert not browser.find_element(By.ID, "banner").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, '[data-node="node-0"] [data-tier="dram"]')

    client = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key=INFER, timeout=180)
    answer = client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=8,
        temperature=0,
    )
    assert answer.choices[0].message.content

    def shown(d: Any) -> bool:
        ready = d.find_elements(By.CSS_SELECTOR, 'tr[data-model="demo"][data-status="ready"]')
        cells = d.find_elements(
            By.CSS_SELECTOR, 'tr[data-deployment="demo"] td[data-field="requests"]'
        )
        return bool(ready) and bool(cells) and int(cells[0].text or 0) >= 1

    wait.until(shown)
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-model="demo"][data-status="ready"]')
    assert "demo" in row.text
    assert "ready" in row.text
    events = browser.find_element(By.ID, "events").text
    assert "instance.ready" in events

    screenshot = os.environ.get("SLLM_STATUS_SCREENSHOT")
    if screenshot:
        browser.save_screenshot(screenshot)

    # `sllm status`: the same snapshot as tables; the key is needed.
    ok = _status(cluster, ADMIN)
    assert ok.returncode == 0, ok.stderr
    assert "node-0-w0" in ok.stdout
    assert any(line.split()[:2] == ["demo", "ready"] for line in ok.stdout.splitlines())
    refused = _status(cluster, INFER, "--json")
    assert refused.returncode == 4, refused.stderr
    assert "admin" in refused.stderr
