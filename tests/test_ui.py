"""The ``kore`` connection in a real Airflow UI: ``airflow api-server``, its REST API and Chromium.

One throwaway API server per module (SQLite, simple auth manager with everyone an admin, the
Test button enabled), a :class:`KoreSimulator` for the hook to reach, and a headless Debian
Chromium driven by Selenium (``scripts/install_chromium.sh`` installs the browser; the browser
tests skip themselves without it). The browser test saves its screenshot of the form under
pytest's temporary directory; with ``KORE_UPDATE_DOCS=1`` it refreshes ``docs/connection-form.png``
(``docs/connection-form-airflow-3.0.png`` on Airflow < 3.2) instead, so a test run leaves the
working tree as it found it.

What differs by Airflow version (see ``docs/ui.md``):

* 3.2+ builds the form from ``conn-fields`` in the provider info; 3.0/3.1 call the hook's
  classmethods, which need ``wtforms`` (3.0's base install lacks it: then the form shows
  Airflow's generic Host/Login/Password fields and no extras).
* 3.0's UI has no Test button; the ``POST /api/v2/connections/test`` endpoint it calls exists.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import airflow
import pytest
import requests
from processes import free_port, stop_process_group

from airflow_provider_kore.testing import KoreSimulator

pytestmark = pytest.mark.e2e

AIRFLOW_VERSION = tuple(int(part) for part in airflow.__version__.split(".")[:2])
REPO = Path(__file__).resolve().parent.parent
#: The docs' screenshot of the form (Airflow 3.0/3.1 build the form differently).
DOCS_SCREENSHOT = (
    REPO / "docs" / ("connection-form.png" if AIRFLOW_VERSION >= (3, 2) else "connection-form-airflow-3.0.png")
)

STANDARD_LABELS = {"host": "Platform URL", "login": "Client ID", "password": "Client Secret"}
EXTRA_LABELS = {
    "account_id": "Account ID",
    "stream_id": "Stream / Bot ID",
    "iid": "Application ID (iid)",
    "timeout": "Request timeout (seconds)",
    "max_retries": "Max retries",
    "jwt_algorithm": "JWT algorithm",
    "jwt_per_request": "New JWT per request",
    "verify": "Verify TLS certificates",
    "max_requests_per_minute": "Max requests per minute",
    "max_requests_per_hour": "Max requests per hour",
}
#: Airflow < 3.2 reads the form from the hook's classmethods, which need wtforms.
FORM_NEEDS_WTFORMS = AIRFLOW_VERSION < (3, 2)
HAS_WTFORMS = importlib.util.find_spec("wtforms") is not None
NO_FORM_REASON = (
    f"Airflow {airflow.__version__} builds a hook's form with wtforms, which is not installed: "
    "the kore form then shows Airflow's generic fields"
)

SERVER_START_TIMEOUT = 180.0


@dataclass
class ApiServer:
    """A running ``airflow api-server`` and an authenticated REST client for it."""

    url: str
    process: subprocess.Popen[bytes]
    log_file: Path
    session: requests.Session

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:]

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}{path}", timeout=60, **kwargs)


def _airflow_env(home: Path) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        # Same option name on 3.0 and 3.3: no login, every request is an admin's.
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__CORE__TEST_CONNECTION="Enabled",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
        # Airflow 3.0 signs UI tokens with iss=None when unset, which PyJWT >= 2.10 refuses (HTTP 500).
        AIRFLOW__API_AUTH__JWT_ISSUER="airflow-provider-kore-tests",
        PYTHONWARNINGS="ignore",
    )
    return env


@pytest.fixture(scope="module")
def api_server(e2e_airflow: Any) -> Iterator[ApiServer]:
    """``airflow api-server`` on a free 127.0.0.1 port, on a copy of the session's migrated DB; always stopped."""
    home = e2e_airflow.new_home("airflow_ui_home")
    (home / "dags").mkdir()
    env = _airflow_env(home)
    airflow_cli = [sys.executable, "-m", "airflow"]
    port = free_port()
    log_file = home / "api-server.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [*airflow_cli, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches the uvicorn workers
        )
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    server = ApiServer(url=url, process=process, log_file=log_file, session=session)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            assert process.poll() is None, f"airflow api-server exited early:\n{server.log_tail()}"
            with contextlib.suppress(requests.RequestException):
                if session.get(f"{url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"airflow api-server not ready in time:\n{server.log_tail()}"
            time.sleep(0.5)
        # With all_admins a token is handed out without credentials; the REST calls send it.
        token = session.get(f"{url}/auth/token", timeout=30)
        assert token.status_code in (200, 201), token.text
        session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield server
    finally:
        session.close()
        stop_process_group(process)


@pytest.fixture(scope="module")
def simulator() -> Iterator[KoreSimulator]:
    with KoreSimulator() as sim:
        yield sim


@pytest.fixture(scope="module")
def hook_meta(api_server: ApiServer) -> dict[str, Any]:
    answer = api_server.api("GET", "/ui/connections/hook_meta")
    assert answer.status_code == 200, answer.text
    (kore,) = [h for h in answer.json() if h["connection_type"] == "kore"]
    return kore


def _connection_body(sim: KoreSimulator, conn_id: str, **overrides: Any) -> dict[str, Any]:
    """A create/test request as the UI sends it: ``extra`` a JSON string, untouched fields null."""
    extra: dict[str, Any] = dict.fromkeys(EXTRA_LABELS)
    extra.update(account_id=sim.account_id, stream_id=sim.stream_id)
    extra.update(overrides.pop("extra", {}))
    body = {
        "connection_id": conn_id,
        "conn_type": "kore",
        "host": sim.url,
        "login": sim.client_id,
        "password": sim.client_secret,
        "extra": json.dumps(extra),
    }
    body.update(overrides)
    return body


# -- hook_meta: what the form is built from -----------------------------------------------------


def test_hook_meta_names_the_kore_hook(hook_meta: dict[str, Any]) -> None:
    assert hook_meta["hook_class_name"] == "airflow_provider_kore.hooks.kore.KoreHook"
    assert hook_meta["hook_name"] == "Kore.ai"


def test_hook_meta_relabels_the_standard_fields(hook_meta: dict[str, Any]) -> None:
    if FORM_NEEDS_WTFORMS and not HAS_WTFORMS:
        assert hook_meta["standard_fields"] is None  # what 3.0 / 3.1 then show: Airflow's generic fields
        pytest.skip(NO_FORM_REASON)
    standard = hook_meta["standard_fields"]
    assert {name: standard[name]["title"] for name in STANDARD_LABELS} == STANDARD_LABELS
    assert not any(standard[name]["hidden"] for name in STANDARD_LABELS)
    assert standard["url_schema"]["hidden"]
    assert standard["port"]["hidden"]
    assert standard["host"]["placeholder"] == "https://platform.kore.ai"


def test_hook_meta_offers_the_labelled_extra_fields(hook_meta: dict[str, Any]) -> None:
    if FORM_NEEDS_WTFORMS and not HAS_WTFORMS:
        assert hook_meta["extra_fields"] is None
        pytest.skip(NO_FORM_REASON)
    extra = hook_meta["extra_fields"]
    assert {name: field["schema"]["title"] for name, field in extra.items()} == EXTRA_LABELS
    for name, field in extra.items():
        assert field["description"], name
        assert "null" in field["schema"]["type"], name  # optional in the form
        # Airflow marks a sensitive extra with format "password"; none of ours is a secret (the
        # Client Secret is the standard password field, which Airflow always masks).
        assert field["schema"].get("format") != "password", name
    assert "boolean" in extra["verify"]["schema"]["type"]
    assert "integer" in extra["max_retries"]["schema"]["type"]
    # A null choice in a select crashes Airflow 3.0's form; 3.2+ shows it as an empty choice.
    assert {"HS256", "HS512"} <= set(extra["jwt_algorithm"]["schema"]["enum"])


# -- the REST API the form and the Test button call --------------------------------------------


def test_created_connection_keeps_the_secret_masked(api_server: ApiServer, simulator: KoreSimulator) -> None:
    created = api_server.api("POST", "/api/v2/connections", json=_connection_body(simulator, "kore_rest"))
    assert created.status_code == 201, created.text
    stored = api_server.api("GET", "/api/v2/connections/kore_rest").json()
    assert stored["password"] == "***"
    assert simulator.client_secret not in json.dumps(stored)
    assert json.loads(stored["extra"])["account_id"] == simulator.account_id


def test_test_button_accepts_good_credentials(api_server: ApiServer, simulator: KoreSimulator) -> None:
    simulator.reset_log()
    answer = api_server.api("POST", "/api/v2/connections/test", json=_connection_body(simulator, "kore_good"))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] is True, result
    assert "credentials accepted" in result["message"]
    assert simulator.account_id in result["message"]
    # The API server's hook really called the simulator, with a signed token.
    (probe,) = [r for r in simulator.requests if r.operation == "get_campaign_status"]
    assert probe.headers.get("auth")
    assert probe.status_code in (200, 404)


def test_test_button_of_a_stored_connection_reuses_its_secret(api_server: ApiServer, simulator: KoreSimulator) -> None:
    """The UI re-tests a saved connection with the masked password; Airflow fills the real one in."""
    body = _connection_body(simulator, "kore_stored")
    assert api_server.api("POST", "/api/v2/connections", json=body).status_code == 201
    answer = api_server.api("POST", "/api/v2/connections/test", json={**body, "password": "***"})
    assert answer.status_code == 200, answer.text
    if AIRFLOW_VERSION < (3, 1):
        # 3.0 tests exactly the body it gets (and its UI has no Test button): "***" is refused.
        assert answer.json()["status"] is False
        assert "HTTP 401" in answer.json()["message"]
    elif AIRFLOW_VERSION >= (3, 3):
        assert answer.json()["status"] is True, answer.json()
    else:
        pytest.skip(f"not checked on Airflow {airflow.__version__}")


def test_test_button_rejects_a_wrong_secret_without_echoing_it(api_server: ApiServer, simulator: KoreSimulator) -> None:
    wrong = "wrong-secret-" + secrets.token_hex(8)
    answer = api_server.api(
        "POST", "/api/v2/connections/test", json=_connection_body(simulator, "kore_bad", password=wrong)
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] is False
    assert "HTTP 401" in result["message"]
    # A 401 names the fields to check and the connection they belong to.
    assert "Client ID / Client Secret" in result["message"]
    assert "kore connection" in result["message"]
    assert wrong not in answer.text
    assert simulator.client_secret not in answer.text
    assert wrong not in api_server.log_tail(200_000)


def test_test_button_reports_an_unreachable_platform(api_server: ApiServer, simulator: KoreSimulator) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    answer = api_server.api(
        "POST",
        "/api/v2/connections/test",
        json=_connection_body(simulator, "kore_down", host=closed, extra={"timeout": 5}),
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["status"] is False
    # The cause, not just "could not connect".
    assert "refused" in result["message"]
    assert closed in result["message"]
    assert simulator.client_secret not in answer.text


def test_test_button_names_a_missing_account_id(api_server: ApiServer, simulator: KoreSimulator) -> None:
    answer = api_server.api(
        "POST",
        "/api/v2/connections/test",
        json=_connection_body(simulator, "kore_noacct", extra={"account_id": None}),
    )
    result = answer.json()
    assert result["status"] is False
    assert "account_id" in result["message"]


# -- Chromium -------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]
UI_WAIT = 30.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium through its own chromedriver (Selenium never downloads one)."""
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium is not installed (pip install selenium)")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("Chromium / chromedriver not installed (scripts/install_chromium.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # React re-renders the list and dialog: an element found a moment ago may be gone; look again.
    wait = WebDriverWait(driver, UI_WAIT, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(condition, message=f"waiting for {what}")


def _xpath_text(text: str) -> str:
    return "concat('" + text.replace("'", "', \"'\", '") + "', '')"


def _button(driver: Any, text: str, scope: str = "") -> Any:
    from selenium.webdriver.support import expected_conditions as ec

    xpath = f"{scope}//button[normalize-space()={_xpath_text(text)}]"
    return _wait(driver, ec.element_to_be_clickable(("xpath", xpath)), f"button {text!r}")


def _dialog_input(driver: Any, label: str) -> Any:
    from selenium.webdriver.support import expected_conditions as ec

    xpath = f"//*[@role='dialog']//label[normalize-space()={_xpath_text(label)}]/following::input[1]"
    return _wait(driver, ec.visibility_of_element_located(("xpath", xpath)), f"field {label!r}")


def _dialog_labels(driver: Any) -> set[str]:
    labels = driver.find_elements("xpath", "//*[@role='dialog']//label")
    return {label.text.replace("*", "").strip() for label in labels if label.is_displayed()}


def _open_add_connection_form(driver: Any, url: str, conn_id: str) -> Any:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(f"{url}/connections")
    _button(driver, "Add Connection").click()
    dialog = _wait(driver, ec.visibility_of_element_located(("css selector", "[role=dialog]")), "the dialog")
    _wait(driver, ec.visibility_of_element_located(("name", "connection_id")), "Connection ID").send_keys(conn_id)
    kind = dialog.find_element("css selector", "input[role=combobox]")
    kind.send_keys("Kore.ai")
    option = "//*[@role='option' and normalize-space()='Kore.ai']"
    _wait(driver, ec.visibility_of_element_located(("xpath", option)), "the Kore.ai option")
    kind.send_keys(Keys.ENTER)
    return dialog


def _expand(driver: Any, section: str) -> None:
    _button(driver, section, scope="//*[@role='dialog']").click()


def _side_by_side_png(driver: Any, images: list[str], path: Path) -> None:
    """Lay base64 PNGs out in one row on a blank page and screenshot it (no imaging library)."""
    cells = "".join(f'<img src="data:image/png;base64,{image}" style="margin:8px">' for image in images)
    row_style = "display:inline-flex;align-items:flex-start"
    html = (
        f'<html><body style="margin:0;background:#9aa3ad"><div id="row" style="{row_style}">{cells}</div></body></html>'
    )
    driver.get("data:text/html;base64," + base64.b64encode(html.encode()).decode())
    row = driver.find_element("id", "row")
    size = row.size
    driver.set_window_size(max(1400, size["width"] + 40), max(1000, size["height"] + 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(driver.find_element("id", "row").screenshot_as_png)


def test_add_connection_form_shows_the_kore_fields(
    api_server: ApiServer, simulator: KoreSimulator, browser: Any, tmp_path: Path
) -> None:
    """Pick "Kore.ai" in Add Connection, check the labels, screenshot the form, save it, test it."""
    from selenium.webdriver.support import expected_conditions as ec

    if FORM_NEEDS_WTFORMS and not HAS_WTFORMS:
        pytest.skip(NO_FORM_REASON)
    browser.set_window_size(1400, 1000)
    dialog = _open_add_connection_form(browser, api_server.url, "kore_default")

    _wait(browser, lambda d: set(STANDARD_LABELS.values()) <= _dialog_labels(d), "the relabelled fields")
    labels = _dialog_labels(browser)
    assert not {"Host", "Login", "Password", "Schema", "Port"} & labels, labels
    secret_input = _dialog_input(browser, "Client Secret")
    assert secret_input.get_attribute("type") == "password"
    assert _dialog_input(browser, "Platform URL").get_attribute("placeholder") == "https://platform.kore.ai"
    browser.set_window_size(1400, 1400)
    standard_png = dialog.screenshot_as_base64

    _expand(browser, "Extra Fields")
    _wait(browser, lambda d: set(EXTRA_LABELS.values()) <= _dialog_labels(d), "the labelled extra fields")
    browser.set_window_size(1400, 2200)
    extra_png = dialog.screenshot_as_base64

    # Fill it in as a user would (extras left empty stay null) and save.
    _dialog_input(browser, "Account ID").send_keys(simulator.account_id)
    _dialog_input(browser, "Stream / Bot ID").send_keys(simulator.stream_id)
    _expand(browser, "Standard Fields")
    _dialog_input(browser, "Platform URL").send_keys(simulator.url)
    _dialog_input(browser, "Client ID").send_keys(simulator.client_id)
    _dialog_input(browser, "Client Secret").send_keys(simulator.client_secret)
    _button(browser, "Save", scope="//*[@role='dialog']").click()
    row = "//tr[.//td[normalize-space()='kore_default']]"
    _wait(browser, ec.visibility_of_element_located(("xpath", row)), "the saved connection in the list")
    _wait(browser, ec.invisibility_of_element_located(("css selector", "[role=dialog]")), "the dialog to close")
    assert simulator.client_secret not in browser.page_source

    screenshot = DOCS_SCREENSHOT if os.environ.get("KORE_UPDATE_DOCS") == "1" else tmp_path / DOCS_SCREENSHOT.name
    _side_by_side_png(browser, [standard_png, extra_png], screenshot)
    assert screenshot.read_bytes().startswith(b"\x89PNG")

    # What the form stored is what the hook reads.
    stored = api_server.api("GET", "/api/v2/connections/kore_default").json()
    assert stored["host"] == simulator.url
    assert stored["login"] == simulator.client_id
    assert stored["password"] == "***"
    extra = json.loads(stored["extra"])
    assert extra["account_id"] == simulator.account_id
    assert extra["stream_id"] == simulator.stream_id
    body = {k: stored[k] for k in ("connection_id", "conn_type", "host", "login", "extra")}
    answer = api_server.api("POST", "/api/v2/connections/test", json={**body, "password": simulator.client_secret})
    assert answer.json()["status"] is True, answer.json()


def _row_test(driver: Any, conn_id: str) -> str:
    """Click a connection's Test button in the list; return the icon's colour once it shows a result."""
    row = f"//tr[.//td[normalize-space()={_xpath_text(conn_id)}]]"
    button = f"{row}//button[@aria-label='Test Connection']"

    def click(d: Any) -> bool:
        buttons = d.find_elements("xpath", button)
        if not buttons:
            return False
        # A JS click: the previous row's "Test Connection" tooltip may sit on top of this button.
        d.execute_script("arguments[0].click();", buttons[0])
        return True

    _wait(driver, click, "the Test Connection button")

    def coloured(d: Any) -> str | bool:
        icons = d.find_elements("xpath", f"{button}//*[local-name()='svg']")
        colour = icons[0].get_attribute("color") if icons else None
        return colour if colour in ("green", "red") else False

    return str(_wait(driver, coloured, f"the Test result of {conn_id}"))


@pytest.mark.skipif(AIRFLOW_VERSION < (3, 1), reason="Airflow 3.0's UI has no Test button")
def test_ui_test_button(api_server: ApiServer, simulator: KoreSimulator, browser: Any) -> None:
    """The list's Test button, on saved connections with good and wrong secrets.

    The connections carry an explicit port: Airflow 3.3.2's button sends ``port: 0`` for a
    connection without one and the API then refuses the request (400, "The host or port to test
    differs from the stored connection"), whatever the connection type.
    """
    base = {"host": "http://127.0.0.1", "port": simulator.port}
    good = _connection_body(simulator, "kore_ui_good", **base)
    wrong = _connection_body(simulator, "kore_ui_wrong", password="wrong-" + secrets.token_hex(8), **base)
    for body in (good, wrong):
        assert api_server.api("POST", "/api/v2/connections", json=body).status_code == 201
    browser.set_window_size(1400, 1000)
    browser.get(f"{api_server.url}/connections")
    assert _row_test(browser, "kore_ui_good") == "green"
    assert _row_test(browser, "kore_ui_wrong") == "red"
    _wait(browser, lambda d: "HTTP 401" in d.page_source, "the failure message")
    assert "Client ID / Client Secret" in browser.page_source  # the message says which fields to check
    assert wrong["password"] not in browser.page_source
