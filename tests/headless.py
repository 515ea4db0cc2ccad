"""Headless Chromium for the browser tests (test_lab.py, test_docs.py): Debian's chromium and chromium-driver driven
by selenium. A test skips, saying what to install, where either is missing."""
import os, socket, time
from pathlib import Path
import pytest

CHROMIUM, CHROMEDRIVER = Path('/usr/bin/chromium'), Path('/usr/bin/chromedriver')


def require_chromium(make_target: str):
    "Skip the calling test unless chromium, chromium-driver and selenium are installed."
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip('needs Debian chromium and chromium-driver: make browser '
                    '(apt-get install chromium chromium-driver)')
    pytest.importorskip('selenium', reason=f'needs selenium: pip install selenium ({make_target} does)')


def chromium(make_target: str, window: str, browser_log: bool = False):
    "A headless Chromium WebDriver with a `window` of 'W,H' pixels (`browser_log`: keep the console log)."
    require_chromium(make_target)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    os.environ.setdefault('SE_AVOID_STATS', 'true')
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', f'--window-size={window}'):
        opts.add_argument(a)
    if browser_log: opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(120)
    return driver


def free_port() -> int:
    "A free local TCP port."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait(what, fn, timeout, every=0.5):
    "Poll `fn` until it returns something truthy (exceptions count as not yet); fail naming `what` after `timeout` s."
    end = time.time() + timeout
    while time.time() < end:
        try:
            got = fn()
            if got: return got
        except Exception: pass
        time.sleep(every)
    raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
