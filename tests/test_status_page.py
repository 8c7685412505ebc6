"""The status page in a real headless Chromium (Debian chromium + chromedriver, driven by selenium).

The page is served by the agent's own server for an agent watching the simulator's fleet; the
test takes a device offline and sees it turn red with its ticket, in English and Polish, on a
desktop and a phone-sized window. Screenshots go to tests/artifacts/ (ignored by git).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from agent_server import PollTimingClock, make_agent, poll_all, take_offline, wait_until
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from agent.api import LocalApi
from agent.clock import FakeClock
from agent.daemon import Agent
from agent.status_page import format_remaining
from simulator.fleet import Fleet

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
RED = "rgba(198, 40, 40, 1)"
GREEN = "rgba(46, 125, 50, 1)"
#: every flag real-peers.md names for a quiet headless Chromium as root on a closed network
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
)  # fmt: skip


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile; fails (never skips) when the packages are missing."""
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not binary.exists():
            pytest.fail(f"{binary} not found: install the Debian package {package}")
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must not try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,1000")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def watched(
    fleet_factory: Callable[..., Fleet], tmp_path: Path
) -> Iterator[tuple[Fleet, Agent, FakeClock, LocalApi]]:
    """The simulator's fleet, an agent on a fake clock that polled it once, and the agent's server."""
    fleet = fleet_factory(devices=6, seed=11)
    clock = PollTimingClock()
    agent = make_agent(fleet, tmp_path, clock, api={"refresh_s": 30})
    api = LocalApi.for_agent(agent)
    try:
        poll_all(agent, clock)
        api.start()
        yield fleet, agent, clock, api
    finally:
        api.stop()
        agent.stop()


def _screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    driver.set_window_size(max(360, int(width)), max(600, int(height) + 40))
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    assert path.stat().st_size > 10_000
    return path


def _badge_colour(driver: WebDriver, device_id: str) -> str:
    return str(
        driver.find_element(By.CSS_SELECTOR, f"#device-{device_id} .badge.state").value_of_css_property(
            "background-color"
        )
    )


def test_page_shows_the_fleet_by_site_and_an_offline_device_turns_red_with_its_ticket(
    watched: tuple[Fleet, Agent, FakeClock, LocalApi], browser: WebDriver
) -> None:
    fleet, agent, clock, api = watched
    browser.get(api.url + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[id^=device-]")
    assert len(rows) == len(fleet.devices) == 6
    for site in {d.site for d in fleet.devices}:
        assert browser.find_element(By.ID, f"site-{site}").is_displayed()
    target = next(d for d in fleet.devices if d.model == "A30")
    assert _badge_colour(browser, target.id) == GREEN
    row_text = browser.find_element(By.ID, f"device-{target.id}").text
    assert target.serial in row_text and target.firmware in row_text and "2027-12-31" in row_text
    assert "No open tickets." in browser.find_element(By.ID, "tickets").text

    take_offline(agent, fleet, clock, target.id)
    browser.get(api.url + "/")
    row = browser.find_element(By.ID, f"device-{target.id}")
    assert row.get_attribute("data-state") == "down"
    assert _badge_colour(browser, target.id) == RED
    assert "critical (P1)" in row.text
    ticket = browser.find_element(By.CSS_SELECTOR, f'#tickets tr.ticket[data-device="{target.id}"]')
    assert ticket.get_attribute("data-priority") == "critical"
    assert "offline" in ticket.text and "local HEZO-" in ticket.text
    others = [d for d in fleet.devices if d.id != target.id]
    assert all(_badge_colour(browser, d.id) == GREEN for d in others)
    _screenshot(browser, "status-page.png")


def test_sla_clocks_count_down_in_the_browser_from_the_agents_clock(
    watched: tuple[Fleet, Agent, FakeClock, LocalApi], browser: WebDriver
) -> None:
    fleet, agent, clock, api = watched
    target = fleet.devices[0]
    take_offline(agent, fleet, clock, target.id)
    clock.advance(15 * 60)  # a quarter of an hour after the ticket opened: 45 min to react (P1, 1 h)
    browser.get(api.url + "/")
    countdown = browser.find_element(By.CSS_SELECTOR, "#tickets tr.ticket .countdown")
    first = countdown.text
    assert re.fullmatch(r"00:4[45]:\d\d", first), first  # from the agent's (fake) clock, not the browser's
    later = wait_until(lambda: countdown.text if countdown.text != first else None, deadline_s=5)
    assert later < first  # the inline script keeps it running, second by second

    clock.advance(60 * 60)  # past the reaction deadline
    browser.get(api.url + "/")
    overdue = browser.find_element(By.CSS_SELECTOR, "#tickets tr.ticket .countdown")
    assert overdue.text.startswith("overdue ") and "overdue" in (overdue.get_attribute("class") or "")
    assert overdue.value_of_css_property("color") == RED


def test_page_speaks_polish_by_config_or_by_query_and_reloads_itself(
    watched: tuple[Fleet, Agent, FakeClock, LocalApi], browser: WebDriver
) -> None:
    fleet, agent, clock, api = watched
    take_offline(agent, fleet, clock, fleet.devices[1].id)
    browser.get(api.url + "/?lang=pl")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "pl"
    assert "Otwarte zgłoszenia" in browser.find_element(By.ID, "tickets").text
    assert "nie działa" in browser.find_element(By.ID, f"device-{fleet.devices[1].id}").text
    assert "krytyczny (P1)" in browser.find_element(By.ID, f"device-{fleet.devices[1].id}").text
    browser.find_element(By.ID, "lang-switch").click()
    wait_until(lambda: browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en")
    assert "Open tickets" in browser.find_element(By.ID, "tickets").text
    refresh = browser.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]').get_attribute("content")
    assert refresh == "30"


def test_page_loads_nothing_from_anywhere_and_fits_a_phone(
    watched: tuple[Fleet, Agent, FakeClock, LocalApi], browser: WebDriver
) -> None:
    fleet, agent, clock, api = watched
    take_offline(agent, fleet, clock, fleet.devices[0].id)
    browser.set_window_size(390, 844)
    browser.get(api.url + "/")
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []  # no CSS, script, font or image fetched: everything is inline
    html = browser.page_source
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert browser.find_element(By.TAG_NAME, "thead").value_of_css_property("display") == "none"
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    cell = browser.find_element(By.CSS_SELECTOR, f"#device-{fleet.devices[0].id} td[data-label]")
    label = browser.execute_script(
        "return getComputedStyle(arguments[0], '::before').getPropertyValue('content')", cell
    )
    assert "Device" in label
    _screenshot(browser, "status-page-phone.png")


def test_page_shows_the_agents_health_and_a_held_helpdesk(
    watched: tuple[Fleet, Agent, FakeClock, LocalApi], browser: WebDriver
) -> None:
    _fleet, agent, clock, api = watched
    browser.get(api.url + "/")
    assert browser.find_element(By.ID, "agent-health").text == "OK"
    agent.dispatcher.store.hold(agent.backend.name, "credentials rejected (HTTP 401)", clock.now())
    browser.get(api.url + "/")
    assert browser.find_element(By.ID, "agent-health").text == "needs attention"
    agent_section = browser.find_element(By.ID, "agent").text
    assert (
        "helpdesk credentials rejected" in agent_section
        and "credentials rejected (HTTP 401)" in agent_section
    )


def test_remaining_time_format() -> None:
    assert format_remaining(timedelta(minutes=59, seconds=12), "overdue") == "00:59:12"
    assert format_remaining(timedelta(days=1, hours=2, minutes=3, seconds=4), "overdue") == "1 d 02:03:04"
    assert format_remaining(timedelta(minutes=-5), "po terminie") == "po terminie 00:05:00"
