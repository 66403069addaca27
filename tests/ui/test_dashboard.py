"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by Selenium through Debian's
`chromedriver`; no browser download) against the real API, a real worker and the fake Tinker. A user logs in,
opens a running training job, and sees the loss chart gain points and the status turn to succeeded without
reloading the page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_training_jobs import make_dataset, submit
from tests.integration.test_training_resume import StartWorker, workers  # noqa: F401 - fixture
from tests.support import Stack, wait_until

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not CHROMEDRIVER.exists(),
    reason="the dashboard's browser test needs Debian's chromium and chromium-driver packages "
           "(apt-get install -y chromium chromium-driver); they are not installed here")

if CHROMIUM is not None and CHROMEDRIVER.exists():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def api_key(client: httpx.Client) -> str:
    return client.headers["authorization"].removeprefix("Bearer ")


def chart_points(browser: WebDriver, series: str = "data-points") -> int:
    return int(browser.find_element(By.ID, "loss-chart").get_attribute(series) or 0)


def read_all(browser: WebDriver, selector: str, name: str) -> list[str]:
    """An attribute (or else a property) of every element the selector finds, read in one go: live lists redraw
    themselves, so elements found one call earlier may be gone."""
    return list(browser.execute_script("return [...document.querySelectorAll(arguments[0])]"
                                       ".map((el) => el.getAttribute(arguments[1]) ?? el[arguments[1]])",
                                       selector, name))


def click(browser: WebDriver, selector: str) -> None:
    """Click what the selector finds now, in one step (a live list may redraw between a find and a click)."""
    browser.execute_script("document.querySelector(arguments[0]).click()", selector)


def status(browser: WebDriver) -> str | None:
    return browser.find_element(By.ID, "job-status").get_attribute("data-status")


def test_a_running_training_job_shows_its_loss_and_end_live(
        stack: Stack, workers: StartWorker, client: httpx.Client,  # noqa: F811 - fixture
        browser: WebDriver, tmp_path: Path) -> None:
    workers(latency={"forward_backward": 0.3})  # 20 steps: several seconds to watch
    dataset = make_dataset(client)
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    try:
        browser.get(f"{stack.base_url}/ui")
        browser.find_element(By.ID, "api-key").send_keys(api_key(client))
        browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        wait.until(ready.presence_of_element_located((By.ID, "job-rows")))

        job = submit(client, dataset, validation_artifact=dataset["validation_artifact"])
        wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", 30,
                   "the training job to start")
        # The list refreshes itself: the new job appears, running, without a reload.
        row = f'tr[data-job-id="{job["id"]}"]'
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, f'{row} [data-status="running"]')))
        click(browser, f"{row} a")
        browser.execute_script("window.sameDocument = true")  # gone if the page reloaded

        wait.until(ready.presence_of_element_located((By.ID, "loss-chart")))
        [seen] = wait.until(lambda b: status(b) == "running" and (chart_points(b),))  # drawn while it runs
        wait.until(lambda b: chart_points(b) > seen)  # and more arrive
        wait.until(lambda b: status(b) == "succeeded")
        wait.until(lambda b: chart_points(b) == 20 and chart_points(b, "data-val-points") == 5)

        assert browser.execute_script("return window.sameDocument") is True
        assert browser.find_element(By.ID, "job-progress").get_attribute("value") == "20"
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#checkpoint-rows .copy-field")) >= 7)
        paths = read_all(browser, "#checkpoint-rows .copy-field", "value")
        assert all(p.startswith("tinker://") for p in paths)
        assert browser.find_elements(By.CSS_SELECTOR, '#events li[data-type="succeeded"]')
        assert browser.find_element(By.ID, "cancel").get_attribute("disabled") is not None
    finally:
        browser.save_screenshot(str(tmp_path / "dashboard.png"))


def log_in(browser: WebDriver, base_url: str, key: str) -> None:
    browser.get(f"{base_url}/ui")
    field = browser.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()


def test_a_wrong_key_is_refused_and_a_filtered_list_pages_and_a_row_renders(
        stack: Stack, client: httpx.Client, browser: WebDriver, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    try:
        log_in(browser, stack.base_url, "tq_not_a_real_key")
        note = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "#login .error")))
        assert "unknown or revoked" in note.text  # the server's own message

        for _ in range(30):  # more than a page; only these carry the label
            r = client.post("/v1/jobs", json={"kind": "test", "labels": {"suite": "ui-paging"},
                                              "spec": {"steps": 0}})
            assert r.status_code == 201, r.text
        client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 0}})
        dataset = make_dataset(client, rows=6, validation_rows=0)
        made_by = client.get(f"/v1/artifacts/{dataset['train_artifact']}").json()["job_id"]

        log_in(browser, stack.base_url, api_key(client))
        label = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".filters input[name=label]")))
        label.send_keys("suite:ui-paging")
        browser.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
        rows = "#job-rows tr[data-job-id]"
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, rows)) == 25
                   and not b.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{made_by}"]'))
        first_page = set(read_all(browser, rows, "data-job-id"))
        click(browser, ".next-page")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, rows)) == 5)
        second_page = set(read_all(browser, rows, "data-job-id"))
        assert not first_page & second_page

        browser.get(f"{stack.base_url}/ui#/jobs/{made_by}")  # the dataset job's page: its output can be rendered
        artifact = f'li[data-artifact-id="{dataset["train_artifact"]}"]'
        render = f'//li[@data-artifact-id="{dataset["train_artifact"]}"]//button[text()="Render"]'
        wait.until(ready.element_to_be_clickable((By.XPATH, render))).click()
        trained = wait.until(lambda b: read_all(b, f"{artifact} .tok.trained", "textContent"))
        untrained = read_all(browser, f"{artifact} .tok:not(.trained)", "textContent")
        assert trained and untrained  # the reply is trained on, the prompt is not
        assert "Think about" in "".join(trained) and "Explain" in "".join(untrained)
    finally:
        browser.save_screenshot(str(tmp_path / "dashboard.png"))


def test_cancel_and_resume_buttons_stop_a_job_and_run_it_again_on_the_same_page(
        stack: Stack, client: httpx.Client, browser: WebDriver, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    try:
        job = client.post("/v1/jobs", json={"kind": "test", "spec": {"steps": 40, "step_seconds": 0.1}}).json()
        log_in(browser, stack.base_url, api_key(client))
        wait.until(ready.presence_of_element_located((By.ID, "job-rows")))
        browser.get(f"{stack.base_url}/ui#/jobs/{job['id']}")
        wait.until(lambda b: status(b) == "running" and b.find_elements(By.CSS_SELECTOR, '#events [data-type="progress"]'))
        browser.execute_script("window.sameDocument = true")

        wait.until(ready.element_to_be_clickable((By.ID, "cancel"))).click()
        wait.until(lambda b: status(b) == "cancelled")
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, '#events [data-type="cancelled"]')))
        wait.until(ready.element_to_be_clickable((By.ID, "resume"))).click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, '#events [data-type="resumed"]')))
        wait.until(lambda b: status(b) == "succeeded")
        assert browser.execute_script("return window.sameDocument") is True
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    finally:
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
