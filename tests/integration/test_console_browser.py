"""The console in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven
by selenium; never a downloaded browser) against ``wharf run --demo``: each role logs in, sees
the links and pages it may and is refused the others; an operator replays a message, closes a
work item and pauses a channel; finance releases a held invoice.

With ``WHARF_CONSOLE_SCREENSHOTS=DIR`` the admin's view of every page is saved there (how
``docs/console/`` was made)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.web.auth import ROLE_PERMISSIONS, ROLES
from engine.web.console import NAV
from tests.integration.console_helpers import PASSWORD, Demo

# One worker runs every test of the shared console demo (it is started once per worker).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("console_demo")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        pytest.skip("needs chromium and chromedriver (Debian packages chromium, chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="wharf-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def follow(driver: Any, element: Any) -> None:
    """Click a link or a form's button and wait until the browser has left the page and the
    next one is complete. The old page is recognised by a mark set on its window, not by an
    element handle: asking chromedriver about a handle whose document is being replaced can
    fail with "Node with given id does not belong to the document" instead of reporting it
    stale, and a script run while the next page is loading can fail too; those failures are
    retried until the wait's limit."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.__wharfLeft = true")
    element.click()
    WebDriverWait(driver, 15, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script(
            "return window.__wharfLeft !== true && document.readyState === 'complete'"
        )
    )


def log_in(driver: Any, demo: Demo, name: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{demo.url}/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    follow(driver, driver.find_element(By.ID, "login"))
    assert driver.find_elements(By.ID, "logout"), driver.page_source[:500]


def absent(driver: Any, by: str, value: str) -> bool:
    """No such element on the page now (without the implicit wait for one to appear)."""
    driver.implicitly_wait(0)
    try:
        return not driver.find_elements(by, value)
    finally:
        driver.implicitly_wait(5)


def header_links(driver: Any) -> set[str]:
    """The header's link paths, read in one script (no element handles held across calls: a
    handle from a document being replaced fails with "does not belong to the document")."""
    hrefs = driver.execute_script(
        "return Array.from(document.querySelectorAll('header a'), a => a.getAttribute('href'))"
    )
    return {h.split("//", 1)[-1].split("/", 1)[-1] if "//" in h else h.lstrip("/") for h in hrefs}


def test_screenshots_of_every_page(browser: Any, console_demo: Demo) -> None:
    """Every page renders for the admin with the demo's data (before the tests below change
    it); with WHARF_CONSOLE_SCREENSHOTS set, each is saved as a PNG there."""
    from selenium.webdriver.common.by import By

    out = os.environ.get("WHARF_CONSOLE_SCREENSHOTS")
    log_in(browser, console_demo, "admin")
    # the stent's usage: a message with an ERP issue and a charge (not the demo's held credit)
    browser.get(f"{console_demo.url}/messages?channel=usage_ledger&control_id=CATH-55001")
    detail = browser.find_element(By.CSS_SELECTOR, "#results td a").get_attribute("href")
    pages = [(p.strip("/"), p) for p, _, _ in NAV]
    pages += [
        ("message", detail.split("//", 1)[1].split("/", 1)[1].join(("/", "?body=1"))),
        ("trace", "/trace?key=po_number%3D4500012345"),
        ("reconciliation", "/finance#recon"),
        ("mapping", "/mappings/items?q=STENT"),
    ]
    for name, path in pages:
        browser.get(f"{console_demo.url}{path if path.startswith('/') else '/' + path}")
        assert browser.find_element(By.TAG_NAME, "h1").text
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(Path(out) / f"{name}.png"))


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_what_it_may_and_is_refused_the_rest(
    browser: Any, console_demo: Demo, role: str
) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, console_demo, role)
    may = ROLE_PERMISSIONS[role]
    links = header_links(browser)
    for path, title, permission in NAV:
        browser.get(f"{console_demo.url}{path}")
        if permission in may:
            assert path.lstrip("/") in links, (role, path, links)
            assert browser.find_element(By.TAG_NAME, "h1").text.startswith(title.split()[0])
            assert absent(browser, By.ID, "refused")
        else:
            assert path.lstrip("/") not in links, (role, path, links)
            refused = browser.find_element(By.ID, "refused").text
            assert "may not" in refused and role in refused


def test_an_operator_replays_a_message(browser: Any, console_demo: Demo) -> None:
    """A sent delivery sent again on purpose (the same idempotency key), as `wharf replay ID
    --destination D` does."""
    from selenium.webdriver.common.by import By

    log_in(browser, console_demo, "operator")
    browser.get(
        f"{console_demo.url}/messages?status=sent&channel=usage_ledger&control_id=CATH-55001"
    )
    follow(browser, browser.find_element(By.CSS_SELECTOR, "#results td a"))
    follow(browser, browser.find_element(By.CSS_SELECTOR, "button[id^=resend-]"))
    assert "replayed: 1 requeued" in browser.find_element(By.ID, "flash").text
    assert absent(browser, By.ID, "show-body")  # an operator sees no bodies


def test_finance_releases_a_held_invoice(browser: Any, console_demo: Demo) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, console_demo, "finance")
    browser.get(f"{console_demo.url}/finance")
    button = browser.find_element(By.CSS_SELECTOR, "button[id^=release-]")
    invoice = button.get_attribute("id").removeprefix("release-")
    follow(browser, button)
    assert "released" in browser.find_element(By.ID, "flash").text
    assert absent(browser, By.ID, f"invoice-{invoice}")
    assert absent(browser, By.LINK_TEXT, "Integration")


def test_an_operator_closes_a_work_item(browser: Any, console_demo: Demo) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, console_demo, "operator")
    browser.get(f"{console_demo.url}/work-items")
    button = browser.find_element(By.CSS_SELECTOR, "button[id^=resolve-]")
    item = button.get_attribute("id").removeprefix("resolve-")
    browser.find_element(By.ID, f"note-{item}").send_keys("checked with the vendor")
    follow(browser, button)
    assert f"work item {item} closed" in browser.find_element(By.ID, "flash").text
    assert absent(browser, By.ID, f"resolve-{item}")


def test_an_operator_pauses_and_resumes_a_channel(browser: Any, console_demo: Demo) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, console_demo, "operator")
    browser.get(f"{console_demo.url}/integration")
    follow(browser, browser.find_element(By.ID, "pause-usage_mllp"))
    assert "usage_mllp/* paused" in browser.find_element(By.ID, "flash").text
    row = browser.find_element(By.ID, "channel-usage_mllp").text
    assert "paused" in row
    follow(browser, browser.find_element(By.ID, "resume-usage_mllp"))
    assert "usage_mllp/* resumed" in browser.find_element(By.ID, "flash").text


def test_an_analyst_searches_a_mapping_table_and_a_viewer_is_refused(
    browser: Any, console_demo: Demo
) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, console_demo, "analyst")
    assert "mappings" in header_links(browser)
    browser.get(f"{console_demo.url}/mappings")
    follow(browser, browser.find_element(By.LINK_TEXT, "items"))
    browser.find_element(By.ID, "q").send_keys("FOLEY CATHETER TRAY 14F")
    follow(browser, browser.find_element(By.ID, "search"))
    assert browser.find_element(By.ID, "matches").text.startswith("1 row(s)")
    assert "ITEM-160004" in browser.find_element(By.ID, "mapping-rows").text
    log_in(browser, console_demo, "viewer")
    assert "mappings" not in header_links(browser)
    browser.get(f"{console_demo.url}/mappings/items")
    refused = browser.find_element(By.ID, "refused").text
    assert "may not" in refused and "viewer" in refused
