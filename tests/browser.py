"""A real headless Chromium for the web tests (Debian's chromium + chromium-driver).

Driven through Selenium with the system chromedriver: nothing is downloaded
(``SE_OFFLINE``), and every run gets a fresh profile. ``scripts/test`` installs both
packages as root; elsewhere the tests skip through ``conftest.need`` (a failure under
CI). :func:`shoot` saves a screenshot where ``KNOTIFY_SCREENSHOTS`` points
(``scripts/screenshots`` sets it to docs/screenshots), so the pictures in the docs are
the ones the tests looked at.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1")


def usable() -> tuple[bool, str]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return False, f"{path} is missing (Debian: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False, "selenium is not installed (pip install -e '.[test]')"
    return True, ""


@contextmanager
def chrome(width: int = 1360, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium with a fresh profile, quit and removed afterwards."""
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="kn-chrome-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


def shoot(driver: Any, name: str, full_height: bool = True) -> Path | None:
    """Save a PNG of the page as ``$KNOTIFY_SCREENSHOTS/NAME.png`` (if that is set)."""
    folder = os.environ.get("KNOTIFY_SCREENSHOTS")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if full_height:
        height = int(driver.execute_script(
            "return Math.min(document.documentElement.scrollHeight, 4000)"))
        width = int(driver.execute_script("return window.outerWidth"))
        driver.set_window_size(width, max(600, height + 40))
    driver.save_screenshot(str(path))
    return path
