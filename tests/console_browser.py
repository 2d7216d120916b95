"""The browser harness of the console's end-to-end tests (test_console.py, test_dashboard.py):
headless Chromium through Selenium against a real relay-server and the fake upstream.

Importing it exits 77 (ctest: skipped) when chromium, chromium-driver or python3-selenium is
missing, after re-running the test under /usr/bin/python3 when another interpreter lacks
Selenium. Screenshots go to a temp directory, or to RELAY_CONSOLE_SHOTS when set.
"""

import os
import shutil
import sys
import tempfile

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

def _import_selenium():
    """Selenium from python3-selenium lives in Debian's own Python; when ctest runs another
    interpreter (pyenv, a venv) re-run this file with /usr/bin/python3 rather than skip."""
    try:
        import selenium  # noqa: F401
        return True
    except ImportError:
        pass
    system = "/usr/bin/python3"
    if (os.path.exists(system) and os.path.realpath(sys.executable) != os.path.realpath(system)
            and not os.environ.get("RELAY_CONSOLE_REEXEC")):
        os.environ["RELAY_CONSOLE_REEXEC"] = "1"
        os.execv(system, [system, "-u"] + sys.argv)
    return False


def _skip_unless_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not _import_selenium():
        missing.append("python3-selenium")
    if missing:
        print("SKIP: missing %s (apt-get install chromium chromium-driver python3-selenium)"
              % ", ".join(missing), flush=True)
        sys.exit(77)


_skip_unless_browser()

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

import relaytest  # noqa: E402
from relaytest import RelayTestCase  # noqa: E402

CONSOLE_DIR = os.path.join(os.environ.get("RELAY_SOURCE_DIR", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..")), "relay-server", "console")

class ConsoleCase(RelayTestCase):
    """A relay and one headless Chromium for the class, with the helpers the tests share."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.shots = os.environ.get("RELAY_CONSOLE_SHOTS")
        if cls.shots:
            os.makedirs(cls.shots, exist_ok=True)
        else:
            cls.shots = tempfile.mkdtemp(prefix="relaytest-console-shots-")
            cls.addClassCleanup(shutil.rmtree, cls.shots, True)
        cls.profile = tempfile.mkdtemp(prefix="relaytest-chromium-")
        cls.addClassCleanup(shutil.rmtree, cls.profile, True)
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        # No network here: without the background-networking flags Chromium keeps trying
        # (and failing) to reach Google's services.
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--user-data-dir=" + cls.profile):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        cls.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        cls.addClassCleanup(cls.driver.quit)
        cls.browser_log = []

    def tearDown(self):
        # Keep the browser's console messages for test_zz_no_script_or_csp_errors.
        self.browser_log.extend(self.driver.get_log("browser"))
        super().tearDown()

    # ---- browser helpers ---------------------------------------------------------------------
    def open(self, view, fresh=False):
        """Load the console on #view; fresh=True forgets any admin session first."""
        d = self.driver
        d.get("about:blank")
        d.get(self.relay.url + "/console#" + view)
        if fresh:
            d.execute_script("sessionStorage.clear()")
            d.get("about:blank")
            d.get(self.relay.url + "/console#" + view)
        self.wait(lambda _: d.execute_script("return document.readyState") == "complete")

    def wait(self, cond, timeout=10, what="condition"):
        # The page re-renders tables after each action: an element found a moment ago may be gone.
        return WebDriverWait(self.driver, timeout, ignored_exceptions=(
            StaleElementReferenceException,)).until(cond, what)

    def visible(self, elem_id):
        return self.wait(lambda d: d.find_element(By.ID, elem_id).is_displayed()
                         and d.find_element(By.ID, elem_id), what="#%s visible" % elem_id)

    def text(self, elem_id):
        return self.driver.find_element(By.ID, elem_id).text

    def shot(self, name):
        path = os.path.join(self.shots, name + ".png")
        self.driver.save_screenshot(path)
        return path

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def sign_in(self, password=None):
        self.open("admin", fresh=True)
        self.visible("login-password").send_keys(password or self.relay.env["ADMIN_PASSWORD"])
        self.driver.find_element(By.ID, "login-submit").click()

    def signed_in(self):
        self.sign_in()
        self.visible("admin")
        self.visible("dashboard-panel")  # the default tab; the keys are one click away
        self.driver.find_element(By.ID, "tab-keys").click()
        self.wait(lambda d: "of" in self.text("keys-range"), what="keys loaded")

    def key_row(self, name, timeout=10):
        """The keys table row whose name cell reads exactly name (text, not markup)."""
        find = ("return [...document.querySelectorAll('#keys-table tbody tr')]"
                ".find(r => r.querySelector('td.name').textContent === arguments[0]) || null")
        return self.wait(lambda d: self.js(find, name), timeout, "row for %r" % name)

    def row_cells(self, name):
        return [c.text for c in self.key_row(name).find_elements(By.TAG_NAME, "td")]

    def row_action(self, name, action):
        self.key_row(name).find_element(By.CSS_SELECTOR, "button[data-action=%s]" % action).click()

    def row_status(self, name):
        return self.key_row(name).find_element(By.CSS_SELECTOR, ".badge").text

    def wait_status(self, name, status):
        self.wait(lambda d: self.row_status(name) == status, what="%s %s" % (name, status))

    def confirm(self):
        self.visible("confirm")
        self.driver.find_element(By.ID, "confirm-ok").click()

    def create_key_ui(self, name, limit=None, tier="basic", description=None):
        """Create a key through the form; returns the full key read from the page."""
        self.driver.find_element(By.ID, "new-key-button").click()
        self.visible("key-form")
        self.wait(lambda d: len(Select(d.find_element(By.ID, "key-tier")).options) > 0,
                  what="tiers in the form")
        self.driver.find_element(By.ID, "key-name").send_keys(name)
        if description:
            self.driver.find_element(By.ID, "key-description").send_keys(description)
        if limit is not None:
            self.driver.find_element(By.ID, "key-limit").send_keys(str(limit))
        Select(self.driver.find_element(By.ID, "key-tier")).select_by_value(tier)
        self.driver.find_element(By.ID, "key-form-submit").click()
        self.visible("new-key")
        key = self.wait(lambda d: self.text("new-key-value"), what="the new key")
        self.relay.proxy_keys.append(key)  # a secret: must never show up in the server's logs
        return key

    def storage(self):
        return self.js("return JSON.stringify([Object.assign({}, localStorage), "
                       "Object.assign({}, sessionStorage)])")
