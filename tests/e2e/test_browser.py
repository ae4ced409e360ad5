"""The dashboard and Flower as an operator sees them: headless Chromium (Debian's chromium
and chromedriver) driven by Selenium. Screenshots land in test-artifacts/."""

from __future__ import annotations

import functools
import http.server
import shutil
import tempfile
import threading
import time

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from bus.tokens import TokenFile
from tests.support.paths import ARTIFACTS
from tests.support.processes import free_port, spawn, stop
from tests.support.waiting import wait_for
from tests.support.web import http_status, start_http_server

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def browser():
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def text_of(browser, element_id):
    """The element's text, or "" while the page that holds it has not loaded yet (a click
    that submits a form returns before the next page is there)."""
    try:
        return browser.find_element(By.ID, element_id).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_dashboard_lists_a_dead_letter_and_its_replay_button_empties_the_list(
    fresh_env, browser, tmp_path, agents
):
    bus = fresh_env.bus()
    sender, reader = agents("s"), agents("r")
    broken = fresh_env.start_worker(MESSAGE_BUS_REDIS_URL="redis://127.0.0.1:1/0")
    receipt = bus.send_message(
        {"from": sender, "to": reader, "payload": "replay me", "metadata": {"max_retries": 0}}
    )
    wait_for(lambda: [d for d in bus.dead_letters() if d.id == receipt.id], 30, "dead letter")
    broken.stop()
    fresh_env.start_worker()

    tokens = tmp_path / "tokens.json"
    token = TokenFile(tokens).create("ops")
    server, base = start_http_server(fresh_env, "mcp-ui", tokens, MESSAGE_BUS_ADMINS='["ops"]')
    try:
        browser.get(f"{base}/ui")
        browser.find_element(By.NAME, "token").send_keys(token)
        browser.find_element(By.TAG_NAME, "button").click()
        wait_for(
            lambda: receipt.id in text_of(browser, "dead-letters"),
            15,
            "the dead letter on the page",
        )
        assert "retries_exhausted" in text_of(browser, "dead-letters")
        browser.save_screenshot(str(ARTIFACTS / "dashboard-dead-letter.png"))
        browser.find_element(By.CSS_SELECTOR, f'button.inspect[data-id="{receipt.id}"]').click()
        wait_for(
            lambda: "replay me" in text_of(browser, "dead-letters"),
            10,
            "the inspected message",
        )
        browser.find_element(By.ID, "replay-all").click()
        wait_for(
            lambda: "no dead letters" in text_of(browser, "dead-letters"),
            20,
            "the list to empty",
        )
        browser.save_screenshot(str(ARTIFACTS / "dashboard-replayed.png"))
        assert [
            m.id
            for m in wait_for(
                lambda: bus.read(reader, limit=5, wait=0.5), 15, "the replayed message"
            )
        ] == [receipt.id]
    finally:
        stop(server)


@pytest.fixture
def other_port_site(tmp_path):
    """A page server on another local port (another process's, an agent's with a shell):
    serves files from a directory of its own; yields (directory, base URL)."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_no_other_page_can_frame_the_dashboard(fresh_env, browser, tmp_path, other_port_site):
    """A page on another local port laid the logged-in dashboard in an invisible frame over
    a decoy: the admin's clicks purged and replayed dead letters (the Origin checks pass,
    as the framed page's own requests are the dashboard's; SameSite does not separate
    ports)."""
    tokens = tmp_path / "tokens.json"
    token = TokenFile(tokens).create("ops")
    server, base = start_http_server(
        fresh_env, "mcp-ui-frame", tokens, MESSAGE_BUS_ADMINS='["ops"]'
    )
    site, site_base = other_port_site
    (site / "own.html").write_text("<p id=own>the site's own page</p>")
    (site / "attack.html").write_text(
        f'<iframe id=own src="/own.html"></iframe><iframe id=ui src="{base}/ui"></iframe>'
    )
    try:
        browser.get(f"{base}/ui")
        browser.find_element(By.NAME, "token").send_keys(token)
        browser.find_element(By.TAG_NAME, "button").click()
        wait_for(lambda: text_of(browser, "dead-letters"), 15, "the dashboard, logged in")
        for path in ("/ui", "/ui/api/overview", "/healthz"):
            headers = httpx.get(f"{base}{path}").headers
            assert headers["x-frame-options"] == "DENY", path
            assert headers["content-security-policy"] == "frame-ancestors 'none'", path
        browser.get(f"{site_base}/attack.html")
        browser.switch_to.frame("own")  # the control: a frame that may be shown, is
        assert wait_for(lambda: text_of(browser, "own"), 15, "the framed own page")
        browser.switch_to.default_content()
        browser.switch_to.frame("ui")
        loaded = 'return document.readyState === "complete"'
        wait_for(lambda: browser.execute_script(loaded), 15, "the frame, loaded or refused")
        assert browser.find_elements(By.ID, "replay-all") == []
        assert browser.find_elements(By.NAME, "token") == []
        browser.switch_to.default_content()
        browser.save_screenshot(str(ARTIFACTS / "dashboard-not-framed.png"))
    finally:
        stop(server)


def test_dashboard_refuses_a_non_admin_token(fresh_env, tmp_path):
    tokens = tmp_path / "tokens.json"
    token = TokenFile(tokens).create("alice")
    server, base = start_http_server(fresh_env, "mcp-ui-deny", tokens)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/ui/api/overview", headers=headers).status_code == 401
        assert (
            httpx.post(
                f"{base}/ui/api/dead-letters/purge", headers=headers, json={"all": True}
            ).status_code
            == 401
        )
    finally:
        stop(server)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"all": "false"}, "all"),
        ({"ids": 5}, "ids"),
        ({"ids": "abc"}, "ids"),
        ({"ids": [1]}, "ids.0"),
    ],
)
def test_dashboard_refuses_a_choice_of_dead_letters_it_would_have_to_guess(
    fresh_env, tmp_path, agents, body, field
):
    """Dead letters are chosen by a list of ids or `all: true`, nothing coerced: `"false"`
    once purged every dead letter, and a number of ids answered 500."""
    bus = fresh_env.bus()
    broken = fresh_env.start_worker(MESSAGE_BUS_REDIS_URL="redis://127.0.0.1:1/0")
    receipt = bus.send_message(
        {
            "from": agents("s"),
            "to": agents("r"),
            "payload": "keep me",
            "metadata": {"max_retries": 0},
        }
    )
    wait_for(lambda: [d for d in bus.dead_letters() if d.id == receipt.id], 30, "dead letter")
    broken.stop()
    tokens = tmp_path / "tokens.json"
    token = TokenFile(tokens).create("ops")
    server, base = start_http_server(
        fresh_env, "mcp-ui-choice", tokens, MESSAGE_BUS_ADMINS='["ops"]'
    )
    try:
        purge = f"{base}/ui/api/dead-letters/purge"
        headers = {"Authorization": f"Bearer {token}"}
        refused = httpx.post(purge, headers=headers, json=body)
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid"
        assert f"invalid request body: {field}:" in refused.json()["message"]
        assert [d.id for d in bus.dead_letters()] == [receipt.id]  # nothing purged
        # The control: the same door takes a proper choice.
        done = httpx.post(purge, headers=headers, json={"ids": [receipt.id]})
        assert done.status_code == 200 and done.json()["done"] == [receipt.id]
    finally:
        stop(server)


def test_flower_shows_bus_deliver_tasks(fresh_env, browser, agents):
    fresh_env.start_worker()
    port = free_port()
    flower, log = spawn(
        fresh_env,
        "flower",
        ["-m", "msgbus", "flower", "--port", str(port)],
        MESSAGE_BUS_FLOWER_AUTH="ops:flower-pw",
    )
    try:
        wait_for(
            lambda: http_status(f"http://127.0.0.1:{port}/healthcheck") in (200, 401), 60, "Flower"
        )
        bus = fresh_env.bus()
        sender, reader = agents("s"), agents("r")
        marker = "secret-payload-marker"
        for i in range(3):
            bus.send_message({"from": sender, "to": reader, "payload": f"{marker}-{i}"})
        wait_for(lambda: len(bus.read(reader, limit=10, wait=0.5)) > 0, 15, "delivery")

        def tasks_page_shows_deliver():
            bus.send_message({"from": sender, "to": reader, "payload": f"{marker}-more"})
            browser.get(f"http://ops:flower-pw@127.0.0.1:{port}/tasks")
            deadline = time.monotonic() + 2  # the table fills from an XHR after load
            while time.monotonic() < deadline:
                if "bus.deliver" in browser.page_source:
                    return True
            return False

        # Flower switches the workers' task events on when it connects (they are off by
        # default to keep publishes cheap), so the first tasks may predate that.
        wait_for(tasks_page_shows_deliver, 60, "Flower to list bus.deliver", interval=1)
        browser.save_screenshot(str(ARTIFACTS / "flower-tasks.png"))
        assert marker not in browser.page_source  # payloads stay out of Flower
        browser.get(f"http://ops:flower-pw@127.0.0.1:{port}/tasks?state=SUCCESS")
        first_task = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, "td a[href*='/task/']"),
            10,
            "a task link",
        )
        first_task[0].click()
        wait_for(
            lambda: "<message" in browser.page_source or "&lt;message" in browser.page_source,
            10,
            "the task page showing only the message summary",
        )
        assert marker not in browser.page_source
    finally:
        stop(flower)
