"""Screenshots of the provider in Airflow's UI, taken with headless Chromium (Debian's chromium and
chromium-driver, plus `pip install selenium`), against an Airflow you run. `make browser`
(tests/browser) starts its own Airflow, runs DAGs and asserts on what the pages show.

Usage: python scripts/ui_screenshots.py http://127.0.0.1:8080 docs/screenshots [DAG_ID RUN_ID TASK_ID]
Expects connections ``pipefy_sandbox`` and ``pipedrive_sandbox`` (no port needed: see docs/connections.md)
in an Airflow started with AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True and
AIRFLOW__CORE__TEST_CONNECTION=Enabled.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def browser() -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1300,1500", f"--user-data-dir={tempfile.mkdtemp()}"):
        opts.add_argument(arg)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def row_button(driver: webdriver.Chrome, conn_id: str, label: str) -> None:
    row = driver.find_element(By.XPATH, f"//tr[.//*[text()='{conn_id}']]")
    row.find_element(By.XPATH, f".//button[@aria-label='{label}']").click()


def task_instance(driver: webdriver.Chrome, base: str, out: Path, dag_id: str, run_id: str, task_id: str) -> list[str]:
    """Screenshot a task instance page; return the extra links it shows."""
    driver.set_window_size(1300, 900)
    driver.get(f"{base}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}")
    time.sleep(6)
    for tab in driver.find_elements(By.XPATH, "//*[text()='Details']")[:1]:  # extra links live on this tab
        tab.click()
        time.sleep(3)
    driver.save_screenshot(str(out / "task-instance-extra-link.png"))
    links = driver.find_elements(By.XPATH, "//a[contains(@href, 'pipefy.com') or contains(@href, 'pipedrive.com')]")
    return [f"{a.text} -> {a.get_attribute('href')}" for a in links]


def main(base: str, out: Path, task: list[str] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    driver = browser()
    try:
        for conn_id, name in (("pipefy_sandbox", "pipefy"), ("pipedrive_sandbox", "pipedrive")):
            driver.get(f"{base}/connections")
            time.sleep(4)
            if not driver.find_elements(By.XPATH, f"//*[text()='{conn_id}']"):
                print(f"no connection {conn_id}: skipping its screenshots")
                continue
            row_button(driver, conn_id, "Edit Connection")
            time.sleep(3)
            for toggle in driver.find_elements(By.XPATH, "//button[contains(., 'Extra Fields')]")[:1]:
                toggle.click()
                time.sleep(1)
            driver.save_screenshot(str(out / f"{name}-connection-form.png"))
            driver.get(f"{base}/connections")
            time.sleep(4)
            row_button(driver, conn_id, "Test Connection")
            time.sleep(4)
            driver.save_screenshot(str(out / f"{name}-connection-test.png"))
        if task:
            print("\n".join(task_instance(driver, base, out, *task)) or "no extra links found")
    finally:
        driver.quit()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:6] or None)
