"""Headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
scripts/install-deploy-tools.sh) driven by Selenium, with the flags this machine needs, and
full-page screenshots of what the operator sees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path(os.environ.get("QUOTAFLOW_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("QUOTAFLOW_CHROMEDRIVER", "/usr/bin/chromedriver"))
# Where the run keeps its screenshots besides the test's own directory; README shows the
# copies committed under docs/console/.
SCREENSHOTS_DIR = Path(os.environ.get("QUOTAFLOW_CONSOLE_SCREENSHOTS", ".quotaflow/console"))
WIDTH = 1360


def start_chromium(profile: Path) -> webdriver.Chrome:
    """A fresh headless Chromium; a missing browser or driver is an error, never a skip."""
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not tool.is_file():
            raise RuntimeError(f"{tool} is missing: run scripts/install-deploy-tools.sh (root)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(90)
    return driver


def screenshot(driver: webdriver.Chrome, out: Path, name: str) -> Path:
    """The whole page as `out/name.png` (the viewport stretched to the page's height through
    the DevTools protocol), copied to `SCREENSHOTS_DIR`."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    metrics = {"width": WIDTH, "height": min(max(height, 600), 4000), "deviceScaleFactor": 1}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "mobile": False})
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.png"
        assert driver.save_screenshot(str(path)), name
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS_DIR / path.name)
    return path
