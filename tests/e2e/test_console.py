"""End-to-end: the web console (/console) driven in headless Chromium through Selenium, against a
real relay-server and the fake upstream: sign-in, keys (create shown once, disable, enable,
rotate, delete), per-key usage chart, the key holder's usage view with exact numbers, escaping
of hostile strings, session handling, and the static files' security headers.

Needs Debian's chromium, chromium-driver and python3-selenium (scripts/deps.sh --test installs
them); exits 77 (skipped) without them. Screenshots of each view go to a temp directory, or to
RELAY_CONSOLE_SHOTS when set (kept there for a human to look at).
"""

import os

import console_browser  # noqa: F401  (exits 77 without a browser)
from console_browser import CONSOLE_DIR, By, ConsoleCase, Select  # noqa: E402
import relaytest  # noqa: E402
from relaytest import messages_body, wait_until  # noqa: E402

XSS = "<img src=x onerror=window.__xss=1>"
# Every request the fake answers: 100 input, 50 output, 20 cache writes, 30 cache reads.
USAGE = dict(input_tokens=100, output_tokens=50, cache_creation_input_tokens=20,
             ephemeral_5m_input_tokens=20, cache_read_input_tokens=30)
PER_REQUEST = 200


def fmt(n):
    return "{:,}".format(n)


def proxy_status(relay, key):
    r = relay.request("POST", "/v1/messages", messages_body(max_tokens=16),
                      {"x-api-key": key, "anthropic-version": "2023-06-01"})
    return r.status


class ConsoleTest(ConsoleCase):
    def setUp(self):
        super().setUp()
        self.fake.set_usage(**USAGE)

    # ---- the static files --------------------------------------------------------------------
    def test_static_files_and_headers(self):
        for path in ("/console", "/console/", "/console/index.html"):
            r = self.relay.request("GET", path)
            self.assertEqual(r.status, 200, path)
            self.assertEqual(r.header("content-type"), "text/html; charset=utf-8")
            with open(os.path.join(CONSOLE_DIR, "index.html"), "rb") as f:
                self.assertEqual(r.body, f.read())
        types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
        files = sorted(os.listdir(CONSOLE_DIR))
        self.assertTrue({"app.js", "app.css", "icon.svg", "charts.js"} <= set(files))
        for name, ctype in ((n, types[os.path.splitext(n)[1]]) for n in files):
            r = self.relay.request("GET", "/console/" + name)
            self.assertEqual(r.status, 200, name)
            self.assertEqual(r.header("content-type"), ctype)
            with open(os.path.join(CONSOLE_DIR, name), "rb") as f:
                self.assertEqual(r.body, f.read(), name)
            csp = r.header("content-security-policy") or ""
            self.assertIn("default-src 'self'", csp)
            self.assertIn("frame-ancestors 'none'", csp)
            self.assertEqual(r.header("x-content-type-options"), "nosniff")
            self.assertEqual(r.header("x-frame-options"), "DENY")
            self.assertEqual(r.header("cache-control"), "no-store")
        r = self.relay.request("HEAD", "/console/app.js")
        self.assertEqual(r.status, 200)
        self.assertEqual(int(r.header("content-length")),
                         os.path.getsize(os.path.join(CONSOLE_DIR, "app.js")))
        self.assertEqual(r.body, b"")
        for path in ("/console/nope.js", "/console/../CMakeLists.txt", "/console/%2e%2e/main.c",
                     "/console/app.js/x", "/console/.hidden"):
            st, js, r = self.relay.json_request("GET", path)
            self.assertEqual(st, 404, path)
            self.assertEqual(js["type"], "error")
            self.assertEqual(js["error"]["type"], "not_found_error")
            self.assertEqual(r.header("x-content-type-options"), "nosniff")
        st, js, r = self.relay.json_request("POST", "/console", {"x": 1})
        self.assertEqual(st, 405)
        self.assertEqual(js["error"]["type"], "invalid_request_error")
        self.assertEqual(r.header("allow"), "GET, HEAD")
        # A neighbouring path is not the console's: it goes to the proxy, which wants a key.
        r = self.relay.request("GET", "/consoles")
        self.assertEqual(r.status, 401)
        # Offline machines and a strict CSP: nothing may come from another origin.
        for name in (n for n in files if not n.endswith(".svg")):
            with open(os.path.join(CONSOLE_DIR, name)) as f:
                src = f.read()
            # The SVG namespace is a name, never fetched.
            src = src.replace("'http://www.w3.org/2000/svg'", "")
            self.assertNotRegex(src, r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", name)
            self.assertNotIn("innerHTML", src, name)
            self.assertNotIn("localStorage.setItem", src, name)

    # ---- admin -------------------------------------------------------------------------------
    def test_wrong_password_shows_the_api_error(self):
        self.sign_in(password="not-the-password")
        err = self.visible("login-error")
        st, js, _ = self.relay.json_request(
            "POST", "/admin/login", headers={"authorization": "Basic bm86cGFzc3dvcmQ="})
        self.assertEqual(st, 401)
        self.wait(lambda d: err.text == js["error"]["message"], what="the API's message")
        self.assertFalse(self.driver.find_element(By.ID, "admin").is_displayed())
        self.assertNotIn("relay.console.admin", self.storage())
        self.assertNotIn("not-the-password", self.driver.page_source)
        self.shot("01-login-error")

    def test_key_lifecycle(self):
        self.signed_in()
        self.assertEqual(self.text("session-user"), "Signed in as admin")
        # The session is in sessionStorage only.
        self.assertEqual(self.js("return localStorage.length"), 0)
        token = self.js("return JSON.parse(sessionStorage.getItem('relay.console.admin')).token")
        self.assertEqual(token.count("."), 2)  # a JWT

        key = self.create_key_ui("console-e2e", limit=100000)
        self.assertTrue(key.startswith("sk-proxy-"), key)
        self.assertIn("It will not be shown again", self.text("new-key"))
        self.shot("02-key-created")
        cells = self.row_cells("console-e2e")
        self.assertTrue(key.startswith(cells[1]), cells)  # the display prefix
        self.assertEqual(cells[2], "basic")
        self.assertEqual(cells[3], "0 / 100,000")
        self.assertEqual(cells[5], "active")
        self.assertEqual(cells[6], "never")
        # The key read from the page is the real thing.
        self.assertEqual(proxy_status(self.relay, key), 200)
        # Dismissed, it is gone from the page and was never stored.
        self.driver.find_element(By.ID, "new-key-done").click()
        self.wait(lambda d: not d.find_element(By.ID, "new-key").is_displayed())
        self.assertNotIn(key, self.driver.page_source)
        self.assertNotIn(key, self.storage())

        self.row_action("console-e2e", "disable")
        self.wait_status("console-e2e", "disabled")
        self.assertEqual(proxy_status(self.relay, key), 401)
        self.row_action("console-e2e", "enable")
        self.wait_status("console-e2e", "active")
        self.assertEqual(proxy_status(self.relay, key), 200)

        self.row_action("console-e2e", "rotate")
        self.confirm()
        self.visible("new-key")
        new_key = self.wait(lambda d: (lambda k: k != key and k)(self.text("new-key-value")))
        self.relay.proxy_keys.append(new_key)
        self.assertEqual(proxy_status(self.relay, key), 401)
        self.assertEqual(proxy_status(self.relay, new_key), 200)
        self.driver.find_element(By.ID, "new-key-done").click()

        # Three answered requests of 200 tokens: the row and the usage chart say so.
        self.driver.find_element(By.ID, "keys-refresh").click()
        self.wait(lambda d: self.row_cells("console-e2e")[3] == "600 / 100,000",
                  what="used tokens in the table")
        self.assertEqual(self.row_cells("console-e2e")[4], "3")
        self.row_action("console-e2e", "usage")
        self.visible("key-usage")
        cols = self.driver.find_elements(By.CSS_SELECTOR, "#key-usage-chart .col")
        self.assertEqual(len(cols), 30)
        # Today is the last bar (oldest → newest); the daily totals are written by the usage
        # writer, which may lag the counters by a moment.
        wait_until(lambda: self.relay.json_request(
            "GET", "/admin/api-keys/%s/usage/daily?days=1" % self.key_id("console-e2e"),
            headers=self.relay.admin_headers())[1][0]["tokens"] == 600, 10, "daily totals")
        self.row_action("console-e2e", "usage")
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#key-usage-chart .col")[-1]
                  .get_attribute("data-tokens") == "600", what="today's bar")
        self.assertEqual(self.js("return document.querySelector('#key-usage-totals .value')"
                                 ".textContent"), "3")
        self.shot("03-key-usage")

        self.row_action("console-e2e", "delete")
        self.assertIn("console-e2e", self.text("confirm-text"))
        self.confirm()
        self.wait(lambda d: not self.js(
            "return [...document.querySelectorAll('#keys-table td.name')]"
            ".some(c => c.textContent === 'console-e2e')"), what="row gone")
        self.assertEqual(proxy_status(self.relay, new_key), 401)

    def key_id(self, name):
        st, js, _ = self.relay.json_request("GET", "/admin/api-keys?limit=1000",
                                            headers=self.relay.admin_headers())
        return next(k["id"] for k in js["items"] if k["name"] == name)

    def test_edit_tiers_and_audit(self):
        self.signed_in()
        self.create_key_ui("console-edit", limit=5000)
        self.driver.find_element(By.ID, "new-key-done").click()
        self.row_action("console-edit", "edit")
        self.visible("key-form")
        limit = self.driver.find_element(By.ID, "key-limit")
        self.assertEqual(limit.get_attribute("value"), "5000")
        limit.clear()
        limit.send_keys("7000")
        Select(self.driver.find_element(By.ID, "key-tier")).select_by_value("premium")
        self.driver.find_element(By.ID, "key-form-submit").click()
        self.wait(lambda d: self.row_cells("console-edit")[3] == "0 / 7,000", what="edited")
        self.assertEqual(self.row_cells("console-edit")[2], "premium")
        # A server-side refusal is shown with the API's words: here the tier the form offers was
        # deleted by someone else after the form opened.
        admin = self.relay.admin_headers()
        st, _, r = self.relay.json_request("PUT", "/admin/rate-limit-tiers/doomed",
                                           {"requests": 5, "period": 60}, admin)
        self.assertEqual(st, 200, r.body)
        self.row_action("console-edit", "edit")
        self.visible("key-form")
        self.wait(lambda d: "doomed" in self.text("key-tier"), what="the new tier offered")
        st, _, r = self.relay.json_request("DELETE", "/admin/rate-limit-tiers/doomed",
                                           headers=admin)
        self.assertEqual(st, 200, r.body)
        Select(self.driver.find_element(By.ID, "key-tier")).select_by_value("doomed")
        self.driver.find_element(By.ID, "key-form-submit").click()
        msg = self.visible("key-form-error").text
        st, js, _ = self.relay.json_request("PATCH", "/admin/api-keys/" + self.key_id(
            "console-edit"), {"rate_limit_tier": "doomed"}, admin)
        self.assertEqual(st, 400)
        self.assertEqual(msg, js["error"]["message"])
        self.assertIn("rate_limit_tier", msg)
        self.shot("04-edit-error")
        self.driver.find_element(By.ID, "key-form-cancel").click()

        self.driver.find_element(By.ID, "tab-tiers").click()
        self.visible("tiers-panel")
        self.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tiers-table tbody tr")) >= 3)
        rows = {r.get_attribute("data-tier"): [c.text for c in r.find_elements(By.TAG_NAME, "td")]
                for r in self.driver.find_elements(By.CSS_SELECTOR, "#tiers-table tbody tr")}
        self.assertEqual(rows["basic"][1:3], ["100", "60 s"])
        self.assertEqual(rows["premium"][1:3], ["1,000", "60 s"])
        self.assertEqual(rows["unlimited"][1], "unlimited")
        self.shot("05-tiers")

        self.driver.find_element(By.ID, "tab-audit").click()
        self.visible("audit-panel")
        self.wait(lambda d: "api_key.update" in self.text("audit-table"), what="audit rows")
        self.assertIn("api_key.create", self.text("audit-table"))
        self.shot("05-audit-log")

    def test_session_end_returns_to_sign_in(self):
        self.signed_in()
        # A token the server no longer accepts (here: damaged) sends the admin back to sign in,
        # with the server's reason.
        self.js("const s = JSON.parse(sessionStorage.getItem('relay.console.admin'));"
                "s.token = s.token.slice(0, -4) + 'AAAA';"
                "sessionStorage.setItem('relay.console.admin', JSON.stringify(s));")
        self.driver.find_element(By.ID, "keys-refresh").click()
        err = self.visible("login-error")
        self.assertIn("Sign in again", err.text)
        self.assertIsNone(self.js("return sessionStorage.getItem('relay.console.admin')"))
        # Signing in again works, and signing out forgets the session.
        self.driver.find_element(By.ID, "login-password").send_keys(
            self.relay.env["ADMIN_PASSWORD"])
        self.driver.find_element(By.ID, "login-submit").click()
        self.visible("admin")
        self.driver.find_element(By.ID, "sign-out").click()
        self.visible("admin-login")
        self.assertIsNone(self.js("return sessionStorage.getItem('relay.console.admin')"))

    def test_hostile_names_stay_text(self):
        self.signed_in()
        key = self.create_key_ui(XSS, limit=1000, description=XSS)
        self.assertIn(XSS, self.text("new-key-title"))
        self.driver.find_element(By.ID, "new-key-done").click()
        row = self.key_row(XSS)
        self.assertEqual(row.find_element(By.CSS_SELECTOR, "td.name").text, XSS)
        self.row_action(XSS, "delete")
        self.assertIn(XSS, self.text("confirm-text"))
        self.driver.find_element(By.ID, "confirm-cancel").click()
        self.row_action(XSS, "usage")
        self.visible("key-usage")
        self.assertIn(XSS, self.text("key-usage-name"))
        # A hostile model name comes back in the key holder's request log.
        self.fake.set_scenario(model=XSS.replace("__xss=1", "__xss=2"))
        r = self.relay.request("POST", "/v1/messages", messages_body(model=XSS, max_tokens=16),
                               {"x-api-key": key, "anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 200, r.body)
        self.open("usage")
        self.visible("holder-key").send_keys(key)
        self.driver.find_element(By.ID, "holder-submit").click()
        self.visible("holder")
        self.wait(lambda d: XSS[:10] in self.text("logs-table"), what="the log row")
        self.assertEqual(self.js("return document.querySelectorAll('img:not(.brand img)').length"), 0)
        self.assertIsNone(self.js("return window.__xss === undefined ? null : window.__xss"))
        self.shot("06-hostile-names")

    # ---- key holder --------------------------------------------------------------------------
    def test_key_holder_view_exact_numbers(self):
        self.signed_in()
        key = self.create_key_ui("holder-e2e", limit=10000)
        self.driver.find_element(By.ID, "new-key-done").click()
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        for _ in range(2):
            self.assertEqual(proxy_status(self.relay, key), 200)
        with self.relay.stream("POST", "/v1/messages", messages_body(stream=True, max_tokens=16),
                               headers) as s:
            s.read_all()
            self.assertEqual(s.status, 200)
        wait_until(lambda: self.relay.json_request("GET", "/api/usage/logs", headers=headers)[1]
                   ["total"] == 3, 10, "3 usage rows")

        self.open("usage")
        self.visible("holder-key").send_keys(key)
        self.driver.find_element(By.ID, "holder-submit").click()
        self.visible("holder")
        self.wait(lambda d: self.text("quota-used") == fmt(3 * PER_REQUEST), what="quota")
        self.assertEqual(self.text("quota-limit"), "10,000")
        self.assertEqual(self.text("quota-remaining"), fmt(10000 - 3 * PER_REQUEST))
        self.assertEqual(self.text("quota-tier"), "basic")
        self.assertEqual(self.text("quota-requests"), "97 / 100")
        self.assertEqual(self.text("quota-status"), "active")
        self.assertEqual(self.js("return document.getElementById('quota-bar').style.width"), "6%")
        rows = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
                for r in self.driver.find_elements(By.CSS_SELECTOR, "#logs-table tbody tr")]
        self.assertEqual(len(rows), 3)
        for r in rows:
            self.assertEqual(r[1], "claude-sonnet-4-5-20250929")
            self.assertEqual(r[2], "200")
            self.assertEqual(r[3:7], ["100", "50", "50", "200"])
            self.assertTrue(r[7].startswith("$0.00"), r)
        today = self.driver.find_elements(By.CSS_SELECTOR, "#holder-chart .col")[-1]
        self.assertEqual(today.get_attribute("data-tokens"), "600")
        # The key is in memory only: not in storage, not left in the form field.
        self.assertNotIn(key, self.storage())
        self.assertEqual(self.driver.find_element(By.ID, "holder-key").get_attribute("value"), "")
        self.shot("07-key-holder")
        # Forgetting the key returns to the form; a wrong key shows the API's error.
        self.driver.find_element(By.ID, "holder-forget").click()
        self.visible("holder-key").send_keys("sk-proxy-nope_" + "x" * 43)
        self.driver.find_element(By.ID, "holder-submit").click()
        err = self.visible("holder-error")
        st, js, _ = self.relay.json_request("GET", "/api/usage/quota",
                                            headers={"x-api-key": "sk-proxy-nope_" + "x" * 43})
        self.assertEqual(st, 401)
        self.assertEqual(err.text, js["error"]["message"])
        self.shot("08-key-holder-error")

    def test_budgets_in_the_form_and_the_holder_view(self):
        self.signed_in()
        self.driver.find_element(By.ID, "new-key-button").click()
        self.visible("key-form")
        self.wait(lambda d: len(Select(d.find_element(By.ID, "key-tier")).options) > 0,
                  what="tiers in the form")
        self.driver.find_element(By.ID, "key-name").send_keys("budget-e2e")
        self.driver.find_element(By.ID, "key-cost-daily").send_keys("2.5")
        self.driver.find_element(By.ID, "key-cost-models").send_keys(
            '[{"models": ["claude-opus-*"], "period": "weekly", "limit": 10}]')
        Select(self.driver.find_element(By.ID, "key-tier")).select_by_value("basic")
        self.driver.find_element(By.ID, "key-form-submit").click()
        self.visible("new-key")
        key = self.wait(lambda d: self.text("new-key-value"), what="the new key")
        self.relay.proxy_keys.append(key)
        self.driver.find_element(By.ID, "new-key-done").click()
        key_id = self.key_id("budget-e2e")
        st, obj, _ = self.relay.json_request("GET", "/admin/api-keys/" + key_id,
                                             headers=self.relay.admin_headers())
        self.assertEqual((obj["daily_cost_limit"], obj["weekly_cost_limit"]), (2.5, None))
        self.assertEqual(obj["model_cost_limits"],
                         [{"models": ["claude-opus-*"], "period": "weekly", "limit": 10}])
        # Edit: the form shows the budgets; emptying one removes it, a new one is added.
        self.row_action("budget-e2e", "edit")
        self.visible("key-form")
        self.assertEqual(self.driver.find_element(By.ID, "key-cost-daily").get_attribute("value"),
                         "2.5")
        self.driver.find_element(By.ID, "key-cost-daily").clear()
        self.driver.find_element(By.ID, "key-cost-monthly").send_keys("40")
        self.driver.find_element(By.ID, "key-form-submit").click()
        self.wait(lambda d: not d.find_element(By.ID, "key-form").is_displayed())
        st, obj, _ = self.relay.json_request("GET", "/admin/api-keys/" + key_id,
                                             headers=self.relay.admin_headers())
        self.assertEqual((obj["daily_cost_limit"], obj["monthly_cost_limit"]), (None, 40))
        # A bad value shows the API's message naming the field.
        self.row_action("budget-e2e", "edit")
        self.visible("key-form")
        self.driver.find_element(By.ID, "key-cost-models").clear()
        self.driver.find_element(By.ID, "key-cost-models").send_keys(
            '[{"models": [], "period": "weekly", "limit": 10}]')
        self.driver.find_element(By.ID, "key-form-submit").click()
        err = self.visible("key-form-error")
        self.assertIn("model_cost_limits[0].models", err.text)
        self.driver.find_element(By.ID, "key-form-cancel").click()
        # The holder view shows the same spend as the usage logs, to the nano-dollar.
        for model in ("claude-opus-4-1-20250805", "claude-sonnet-4-5-20250929"):
            st = self.relay.request("POST", "/v1/messages", messages_body(model=model),
                                    {"x-api-key": key, "anthropic-version": "2023-06-01",
                                     "content-type": "application/json"}).status
            self.assertEqual(st, 200)
        headers = {"x-api-key": key}
        logs = wait_until(lambda: (lambda js: js if js["total"] == 2 else None)(
            self.relay.json_request("GET", "/api/usage/logs", headers=headers)[1]), 10, "2 rows")
        total = sum(r["total_cost"] for r in logs["items"])
        opus = sum(r["total_cost"] for r in logs["items"] if r["model"].startswith("claude-opus"))
        self.open("usage")
        self.visible("holder-key").send_keys(key)
        self.driver.find_element(By.ID, "holder-submit").click()
        self.visible("budgets-card")
        spent = self.wait(lambda d: d.find_element(By.ID, "budget-monthly-spent")
                          .get_attribute("data-usd"), what="budgets")
        self.assertAlmostEqual(float(spent), total, places=9)
        self.assertAlmostEqual(float(self.driver.find_element(By.ID, "budget-weekly-0-spent")
                                     .get_attribute("data-usd")), opus, places=9)
        self.assertEqual(self.text("budget-monthly-limit"), "$40.00")
        self.shot("09-key-holder-budgets")

    # ---- last: nothing the browser complained about ------------------------------------------
    def test_zz_no_script_or_csp_errors(self):
        self.signed_in()
        self.open("usage")
        self.visible("holder-login")
        self.browser_log.extend(self.driver.get_log("browser"))
        bad = [e["message"] for e in self.browser_log
               if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]
               or ("favicon" in e["message"])]
        self.assertEqual(bad, [])


if __name__ == "__main__":
    relaytest.main()
