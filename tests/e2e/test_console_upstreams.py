"""End-to-end: the console's Upstreams tab in headless Chromium (the helpers of test_console.py):
the pool's state, and a database upstream created, tested, disabled, enabled, edited and
deleted through the form, with its key never on the page beyond its last four characters.
"""
import secrets

import test_console  # exits 77 without Chromium, chromedriver or Selenium
from fake_upstream import FakeUpstream
from selenium.webdriver.common.by import By

import relaytest


class UpstreamsConsole(test_console.ConsoleTest):
    def upstream_row(self, name):
        find = ("return document.querySelector('#upstreams-table tbody "
                "tr[data-upstream=\"' + arguments[0] + '\"]')")
        return self.wait(lambda d: self.js(find, name), what="row for %r" % name)

    def cells(self, name):
        return [c.text for c in self.upstream_row(name).find_elements(By.TAG_NAME, "td")]

    def click(self, name, action):
        self.upstream_row(name).find_element(
            By.CSS_SELECTOR, "button[data-action=%s]" % action).click()

    def fill(self, elem_id, value):
        e = self.driver.find_element(By.ID, elem_id)
        e.clear()
        e.send_keys(value)

    def test_upstreams_tab(self):
        key_b = "sk-ant-api03-fake-" + secrets.token_urlsafe(24)
        self.relay.proxy_keys.append(key_b)
        fake_b = FakeUpstream(api_key=key_b).start()
        self.addCleanup(fake_b.stop)
        self.signed_in()
        self.driver.find_element(By.ID, "tab-upstreams").click()
        self.visible("upstreams-panel")
        self.assertFalse(self.driver.find_element(By.ID, "keys-panel").is_displayed())
        cells = self.cells("anthropic")
        self.assertEqual(cells[1:5], ["config", "ok", "0", "1"])
        self.assertEqual(cells[9], "…" + self.upstream_key[-4:])
        self.assertEqual(len(self.upstream_row("anthropic").find_elements(
            By.CSS_SELECTOR, "button[data-action=delete]")), 0)  # config upstreams: read-only

        self.driver.find_element(By.ID, "new-upstream-button").click()
        self.visible("upstream-form")
        self.fill("upstream-name", "ui-b")
        self.fill("upstream-url", fake_b.url)
        self.fill("upstream-key", key_b)
        self.fill("upstream-weight", "2")
        self.fill("upstream-models", "claude-sonnet-*, claude-haiku-*")
        self.driver.find_element(By.ID, "upstream-form-submit").click()
        self.wait(lambda d: self.cells("ui-b")[1] == "database", what="ui-b created")
        cells = self.cells("ui-b")
        self.assertEqual(cells[4:6], ["2", "claude-sonnet-*, claude-haiku-*"])
        self.assertEqual(cells[9], "…" + key_b[-4:])
        self.assertNotIn(key_b, self.driver.page_source)
        self.assertEqual(self.driver.find_element(By.ID, "upstream-key").get_attribute("value"),
                         "")
        self.shot("20-upstreams")

        self.click("ui-b", "test")
        self.wait(lambda d: "passed" in self.text("notice"), what="the test passed")
        self.assertEqual(fake_b.requests()[-1]["path"], "/v1/models")
        self.click("ui-b", "disable")
        self.wait(lambda d: self.cells("ui-b")[2] == "disabled", what="disabled")
        self.click("ui-b", "enable")
        self.wait(lambda d: self.cells("ui-b")[2] == "ok", what="enabled")

        self.click("ui-b", "edit")
        self.visible("upstream-form")
        self.assertEqual(self.driver.find_element(By.ID, "upstream-weight").get_attribute(
            "value"), "2")
        self.fill("upstream-weight", "4")
        self.driver.find_element(By.ID, "upstream-form-submit").click()
        self.wait(lambda d: self.cells("ui-b")[4] == "4", what="edited")
        st, js, _ = self.relay.json_request("GET", "/admin/upstreams/ui-b", None,
                                            self.relay.admin_headers())
        self.assertEqual((st, js["weight"], js["key_last4"]), (200, 4, key_b[-4:]))
        # the key was kept: the upstream still answers the test with it
        self.click("ui-b", "test")
        self.wait(lambda d: "passed" in self.text("notice") and len(
            [r for r in fake_b.requests() if r["path"] == "/v1/models"]) == 2, what="tested")

        self.click("ui-b", "delete")
        self.confirm()
        self.wait(lambda d: not self.js("return document.querySelector("
                                        "'#upstreams-table tr[data-upstream=\"ui-b\"]')"),
                  what="ui-b deleted")
        st, js, _ = self.relay.json_request("GET", "/admin/audit-log", None,
                                            self.relay.admin_headers())
        actions = [a["action"] for a in js["items"]]
        for a in ("upstream.create", "upstream.test", "upstream.disable", "upstream.enable",
                  "upstream.update", "upstream.delete"):
            self.assertIn(a, actions)
        self.browser_log.extend(self.driver.get_log("browser"))
        bad = [e["message"] for e in self.browser_log
               if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]]
        self.assertEqual(bad, [])


def load_tests(loader, tests, pattern):
    """Only this file's test: the inherited ones run in test_console.py."""
    return loader.suiteClass([UpstreamsConsole("test_upstreams_tab")])


if __name__ == "__main__":
    relaytest.main()
