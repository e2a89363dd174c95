"""What a person sees in Airflow's UI, in a real browser (Debian's headless chromium driven by selenium):
``airflow standalone`` with the example DAGs against a sandbox, one export run and one upsert run, then

- the export's and the upsert's task logs: a start line, progress lines with a rate (and, for the
  upsert, whose row count is known, the time left) and the summary table;
- the connection list: a Pipedrive connection made as the form makes it (no port), **Test** pressed,
  the success toast with the hook's message;
- a task's extra link: its target answers 200 and shows the list the task exported.

The sandbox answers slowly while the DAGs run (``latency_ms``) and holds more deals than by default,
so that the runs last long enough to log progress (one line every 10 s, common/progress.py).
Screenshots go to ``$CRM_SCREENSHOTS`` (default ``build/screenshots``) and are listed at the end.
``make browser`` runs this; ``make test`` leaves it out (marker ``browser``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from crm_sandbox.core import DEFAULT_PIPEDRIVE_TOKEN, DEFAULT_PIPEFY_TOKEN, SandboxConfig
from crm_sandbox.server import SandboxServer
from tests.e2e.conftest import REPO, StandaloneAirflow, sandbox_connections

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CHROMIUM = Path(os.environ.get("CRM_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CRM_CHROMEDRIVER", "/usr/bin/chromedriver"))
SHOTS = Path(os.environ.get("CRM_SCREENSHOTS", REPO / "build" / "screenshots"))
EXPORT = ("crm_nightly_exports", "export_deals")
UPSERT = ("crm_contacts_upsert", "upsert_persons")
# slow enough that both runs outlast a 10 s progress interval, quick enough for a short test
LATENCY_MS = 2000
DEALS = 8000
UI_CONN = "pipedrive_from_form"
SECRETS = (DEFAULT_PIPEDRIVE_TOKEN, DEFAULT_PIPEFY_TOKEN)
taken: list[Path] = []


class UI:
    def __init__(self, standalone: StandaloneAirflow, sandbox: SandboxServer, runs: dict[str, str]) -> None:
        self.standalone = standalone
        self.sandbox = sandbox
        self.runs = runs


def _api_headers(standalone: StandaloneAirflow) -> dict[str, str]:
    answer = requests.get(f"{standalone.api_url}/auth/token", timeout=10)
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> requests.Response:
    for _ in range(5):  # SQLite may be locked by the scheduler for a moment: a 500 "Database error"
        answer = requests.post(url, json=body, headers=headers, timeout=120)
        if answer.status_code != 500:
            return answer
        time.sleep(3)
    return answer


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    """Airflow and the sandbox, set up once; a failed set-up fails the other tests at once (pytest would
    otherwise start Airflow again for each)."""
    if _setup_failed:
        pytest.fail(f"set-up failed earlier: {_setup_failed[0]}")
    try:
        yield from _setup(tmp_path_factory)
    except BaseException as err:
        _setup_failed.append(repr(err)[:300])
        raise


_setup_failed: list[str] = []


def _setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver)")
    started = time.monotonic()
    root = tmp_path_factory.mktemp("browser")
    dags = root / "dags"
    shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    with SandboxServer(SandboxConfig(pipedrive_deals=DEALS)) as sandbox:
        env = {**sandbox_connections(sandbox.info()), "CRM_DEMO_OUTPUT": str(root / "output"),
               "AIRFLOW__CORE__TEST_CONNECTION": "Enabled"}
        with StandaloneAirflow(root, dags, env) as standalone:
            standalone.wait_for_dags(EXPORT[0], UPSERT[0])
            standalone.wait_for_api()
            print(f"\nAirflow up in {time.monotonic() - started:.0f}s at {standalone.api_url}")
            requests.patch(f"{sandbox.url}/_sandbox/config", json={"latency_ms": LATENCY_MS},
                           timeout=10).raise_for_status()
            runs = {}
            # the upsert (no schedule) is triggered; the nightly export's scheduled run starts on unpausing
            # (a manual run beside it would wait for it, max_active_runs=1, and find nothing left to export)
            assert standalone.cli("dags", "unpause", UPSERT[0]).returncode == 0
            # the CLI rather than the REST API: on a loaded machine the API's answer can take over 30 s
            proc = standalone.cli("dags", "trigger", UPSERT[0], "-o", "json")
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[UPSERT[0]] = json.loads(proc.stdout.strip().splitlines()[-1])[0]["dag_run_id"]
            assert standalone.cli("dags", "unpause", EXPORT[0]).returncode == 0
            deadline = time.monotonic() + 120
            while not (scheduled := [r for r in standalone.runs(EXPORT[0]) if r["run_type"] == "scheduled"]):
                assert time.monotonic() < deadline, standalone.tail()
                time.sleep(2)
            runs[EXPORT[0]] = scheduled[0]["run_id"]
            for dag_id, run_id in runs.items():
                run = standalone.wait_for_run(dag_id, run_id, timeout=300)
                task_id = EXPORT[1] if dag_id == EXPORT[0] else UPSERT[1]
                assert run["state"] == "success", standalone.task_log(dag_id, run_id, task_id)[-3000:]
            requests.patch(f"{sandbox.url}/_sandbox/config", json={"latency_ms": 0}, timeout=10)
            print(f"runs done after {time.monotonic() - started:.0f}s")
            # a connection made as the connection form makes it: no port (the form hides the field)
            headers = _api_headers(standalone)
            answer = _post(f"{standalone.api_url}/api/v2/connections", {
                "connection_id": UI_CONN, "conn_type": "pipedrive", "host": sandbox.info()["pipedrive_url"],
                "password": DEFAULT_PIPEDRIVE_TOKEN, "extra": json.dumps({"plan": "ultimate", "seats": 5}),
                "description": "made like the form makes it (no port)"}, headers)
            assert answer.status_code == 201, answer.text
            yield UI(standalone, sandbox, runs)


@pytest.fixture(scope="module")
def browser(ui: UI) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1500,1300", f"--user-data-dir={ui.standalone.root / 'chromium'}"):
        opts.add_argument(arg)
    opts.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        if taken:
            print("\nScreenshots:\n" + "\n".join(f"  {p}" for p in taken))


def _shot(driver: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    taken.append(path)
    return path


def _wait_for_text(driver: Any, *needles: str, timeout: float = 60) -> str:
    """The page's visible text once it holds every needle (a React page fills in after load)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = driver.find_element(By.TAG_NAME, "body").text
        except Exception:  # the page is being replaced
            text = ""
        if all(n in text for n in needles):
            return text
        time.sleep(1)
    raise AssertionError(f"never saw {needles} on {driver.current_url}; the page reads:\n{text[-3000:]}")


def _no_secrets(driver: Any) -> None:
    source = driver.page_source
    assert not any(s in source for s in SECRETS), f"a token is on {driver.current_url}"


def _open_log(driver: Any, ui: UI, dag_id: str, task_id: str) -> str:
    run_id = ui.runs[dag_id]
    driver.get(f"{ui.standalone.api_url}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}")
    return _wait_for_text(driver, "Summary:", timeout=90)


def _log_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_export_log_reads_like_a_cli_tool(ui: UI, browser: Any):
    text = _open_log(browser, ui, *EXPORT)
    lines = _log_lines(text)
    start = [line for line in lines if "Exporting deals" in line]
    assert start and "rate limit: plan ultimate" in start[0], text[-3000:]
    progress = [line for line in lines if re.search(r"Progress: [\d,]+ deals, [\d,]+/s, elapsed \d", line)]
    assert progress, f"no progress line with a rate in the export's log:\n{text[-3000:]}"
    assert any(re.search(r"Done: [\d,]+ deals in \S+ \([\d,]+/s\)", line) for line in lines), text[-3000:]
    # the summary as a short table: one "name  value" line per item, not a dict's repr
    table = text[text.index("Summary:"):]
    assert re.search(r"\brecords\s+[\d,]+", table) and re.search(r"\bentity\s+deals", table), table[:1500]
    assert "{'entity'" not in text
    _no_secrets(browser)
    _shot(browser, "export-task-log")


def test_upsert_log_shows_time_left(ui: UI, browser: Any):
    text = _open_log(browser, ui, *UPSERT)
    lines = _log_lines(text)
    assert any(line.startswith("Upserting") or "Upserting " in line for line in lines), text[-3000:]
    eta = [line for line in lines if re.search(r"Progress: \d+ rows of ~\d+ \(\d+%\), [\d,.]+/s, .*about \S+ left",
                                                 line)]
    assert eta, f"no progress line with the time left in the upsert's log:\n{text[-3000:]}"
    table = text[text.index("Summary:"):]
    assert re.search(r"\bcreated\s+\d+", table) and re.search(r"\bupdated\s+\d+", table), table[:1500]
    # a rejected row's reason on a line of its own, not a list of dicts running off the screen
    failed = re.search(r"\bfailed\s+(\d+)", table)
    assert failed and "{'row'" not in table, table[:1500]
    if int(failed.group(1)):
        assert re.search(r"row=\d+, error=", table), table[:1500]
    _no_secrets(browser)
    _shot(browser, "upsert-task-log")


def test_connection_test_button(ui: UI, browser: Any):
    from selenium.webdriver.common.by import By

    browser.get(f"{ui.standalone.api_url}/connections")
    _wait_for_text(browser, UI_CONN)
    row = browser.find_element(By.XPATH, f"//tr[.//*[text()='{UI_CONN}']]")
    row.find_element(By.XPATH, ".//button[@aria-label='Test Connection']").click()
    text = _wait_for_text(browser, "Test Connection Successful", timeout=60)
    assert "Connected to Pipedrive as" in text and "Bad Request" not in text, text[-2000:]
    _no_secrets(browser)
    _shot(browser, "connection-test-button")
    # the edit form: our labels, no literal "null" among the plan's choices
    row = browser.find_element(By.XPATH, f"//tr[.//*[text()='{UI_CONN}']]")
    row.find_element(By.XPATH, ".//button[@aria-label='Edit Connection']").click()
    _wait_for_text(browser, "API token")
    for toggle in browser.find_elements(By.XPATH, "//button[contains(., 'Extra Fields')]")[:1]:
        toggle.click()
    form = _wait_for_text(browser, "Pipedrive plan:", "Seats")
    assert "ultimate" in form and not re.search(r"\bnull\b", form), form[-2000:]
    _no_secrets(browser)
    _shot(browser, "connection-form")


def test_extra_link_opens_the_exported_list(ui: UI, browser: Any):
    from selenium.webdriver.common.by import By

    dag_id, task_id = EXPORT
    run_id = ui.runs[dag_id]
    browser.get(f"{ui.standalone.api_url}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}")
    _wait_for_text(browser, "Details", timeout=90)
    if "Pipedrive list" not in browser.find_element(By.TAG_NAME, "body").text:
        for tab in browser.find_elements(By.XPATH, "//*[text()='Details']")[:1]:
            tab.click()
    _wait_for_text(browser, "Pipedrive list", timeout=60)
    link = browser.find_element(By.XPATH, "//a[.//text()[contains(., 'Pipedrive list')]] | "
                                          "//a[contains(., 'Pipedrive list')]")
    href = link.get_attribute("href")
    _shot(browser, "task-extra-link")
    assert href and href.startswith(ui.sandbox.url), href
    assert requests.get(href, timeout=10).status_code == 200
    browser.get(href)
    page = _wait_for_text(browser, "Deals")
    live = [d for d in requests.get(f"{ui.sandbox.url}/pipedrive/_state/deals", timeout=10).json()
            if not d["is_deleted"]]
    assert f"{len(live)} deals" in page, page[:500]
    _shot(browser, "extra-link-target")
