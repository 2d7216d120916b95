"""End-to-end: the console's dashboard, a key's page and the tier editor, in headless Chromium.

Against a real relay-server (SQLite) and the fake upstream, with known traffic plus daily totals
of earlier days written into the database: the totals for today / 7 / 30 days, the SVG daily
chart (tokens by kind, requests), cost by model, top keys, recent errors and the upstream card
(hidden while GET /admin/upstreams answers 404, filled when it answers) must show exactly what
the REST API answers; a key's page filters its request log; tiers are created, edited, refused
with the API's words and deleted. Screenshots at desktop and phone widths are saved in the build
directory (console-screenshots/), the phone layout must not scroll sideways.
"""

import os
import sqlite3

import console_browser  # noqa: F401  (exits 77 without a browser)
from console_browser import By, ConsoleCase  # noqa: E402
import relaytest  # noqa: E402
from relaytest import messages_body, wait_until  # noqa: E402

XSS = "<svg onload=window.__xss=1>"
USAGE = dict(input_tokens=100, output_tokens=50, cache_creation_input_tokens=20,
             ephemeral_5m_input_tokens=20, cache_read_input_tokens=30)
SONNET, HAIKU = "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"
# Daily totals of earlier days (days ago, requests, input, output, cache write, cache read).
EARLIER = [(4, 10, 3000, 1000, 500, 500), (20, 100, 30000, 10000, 5000, 5000)]


def fmt(n):
    return "{:,}".format(n)


def fmt_cost(n):
    if n == 0:
        return "$0"
    return "$%.6f" % n if abs(n) < 0.01 else "$%.2f" % n


def shots_dir():
    """console-screenshots/ in the build directory (RELAY_SERVER_BIN's), kept for a human."""
    d = os.environ.get("RELAY_CONSOLE_SHOTS")
    if not d:
        build = os.path.dirname(os.path.dirname(os.path.abspath(relaytest.server_bin())))
        d = os.path.join(build, "console-screenshots")
    os.makedirs(d, exist_ok=True)
    return d


class DashboardTest(ConsoleCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        relay, fake = cls.relay, cls.fake
        fake.set_usage(**USAGE)
        cls.keys = {}
        for name in ("alice", "bob", XSS):
            key, obj = relay.create_key(name=name, token_limit=1000000)
            cls.keys[name] = (key, obj["id"])

        def send(name, model, want=200):
            r = relay.request("POST", "/v1/messages", messages_body(model=model, max_tokens=16),
                              {"x-api-key": cls.keys[name][0], "anthropic-version": "2023-06-01"})
            assert r.status == want, (r.status, r.text)

        for _ in range(3):
            send("alice", SONNET)
        send("bob", HAIKU)
        fake.fail_next(1, 400, message="messages: Field required")
        send("bob", HAIKU, want=400)
        send(XSS, SONNET)
        admin = relay.admin_headers()
        wait_until(lambda: relay.json_request("GET", "/admin/usage?limit=1", None, admin)[1]
                   ["totals"]["total_requests"] == 6, 10, "the usage writer")
        # Earlier days, as the usage writer would have left them, for alice.
        db = sqlite3.connect(os.path.join(relay.data_dir, "relay.db"), timeout=10)
        import datetime
        today = datetime.datetime.now(datetime.timezone.utc).date()
        with db:
            for ago, req, inp, out, cw, cr in EARLIER:
                day = (today - datetime.timedelta(days=ago)).isoformat()
                db.execute("INSERT INTO usage_daily (api_key_id, day, requests, tokens, "
                           "prompt_tokens, completion_tokens, cache_creation_tokens, "
                           "cache_read_tokens, errors, cost) VALUES (?,?,?,?,?,?,?,?,0,?)",
                           (cls.keys["alice"][1], day, req, inp + out + cw + cr, inp, out, cw,
                            cr, req * 0.01))
        db.close()
        cls.shots = shots_dir()

    def api(self, path):
        st, js, r = self.relay.json_request("GET", path, None, self.relay.admin_headers())
        self.assertEqual(st, 200, r.text)
        return js

    def dashboard(self):
        self.sign_in()
        self.visible("dashboard-panel")
        self.wait(lambda d: self.text("dash-updated"), what="the dashboard loaded")

    def test_totals_chart_models_keys_errors(self):
        self.dashboard()
        self.assertFalse(self.driver.find_element(By.ID, "keys-panel").is_displayed())
        # Totals: exactly the API's figures for each range (the earlier days fall in 7 and 30).
        import datetime
        today = datetime.datetime.now(datetime.timezone.utc).date()
        for pid, days, want_requests in (("today", 1, 6), ("7d", 7, 16), ("30d", 30, 116)):
            start = (today - datetime.timedelta(days=days - 1)).isoformat()
            t = self.api("/admin/usage?limit=1&start_date=%s&end_date=%s"
                         % (start, today.isoformat()))["totals"]
            self.assertEqual(t["total_requests"], want_requests)
            self.assertEqual(self.text("dash-%s-requests" % pid), fmt(t["total_requests"]))
            self.assertEqual(self.text("dash-%s-tokens" % pid), fmt(t["total_tokens"]))
            self.assertEqual(self.text("dash-%s-cost" % pid), fmt_cost(t["total_cost"]))
            self.assertEqual(self.text("dash-%s-errors" % pid), fmt(t["error_count"]))
        self.assertEqual(self.text("dash-today-tokens"), fmt(1000))

        # The daily chart: 30 days, oldest first; each day's segments are its tokens by kind.
        daily = self.api("/admin/usage/daily?days=30")
        cols = self.driver.find_elements(By.CSS_SELECTOR, "#dash-daily svg g.col")
        self.assertEqual(len(cols), 30)
        by_date = {c.get_attribute("data-date"): c for c in cols}
        for d in daily:
            c = by_date[d["date"]]
            self.assertEqual(int(c.get_attribute("data-tokens")), d["tokens"])
            self.assertEqual(int(c.get_attribute("data-requests")), d["requests"])
            segs = {s.get_attribute("data-kind"): int(s.get_attribute("data-value"))
                    for s in c.find_elements(By.CSS_SELECTOR, "rect.seg")}
            want = {k: d[k] for k in ("prompt_tokens", "completion_tokens",
                                      "cache_creation_tokens", "cache_read_tokens") if d[k]}
            self.assertEqual(segs, want, d["date"])
        self.assertEqual(cols[-1].get_attribute("data-date"), today.isoformat())
        self.assertEqual(int(cols[-1].get_attribute("data-tokens")), 1000)
        ago4 = (today - datetime.timedelta(days=4)).isoformat()
        self.assertEqual(int(by_date[ago4].get_attribute("data-requests")), 10)
        # taller bar for more tokens: the 20-days-ago day dwarfs today
        ago20 = (today - datetime.timedelta(days=20)).isoformat()
        self.assertGreater(by_date[ago20].find_element(By.CSS_SELECTOR, "rect.seg")
                           .size["height"], 0)
        self.assertEqual(len(self.driver.find_elements(By.CSS_SELECTOR,
                                                       "#dash-daily polyline.req-line")), 1)

        # Cost by model (usage rows of 30 days), dearest first.
        summary = self.api("/admin/usage/summary?start_date=%s" %
                           (today - datetime.timedelta(days=29)).isoformat())
        bars = self.driver.find_elements(By.CSS_SELECTOR, "#dash-models g.hbar")
        want = sorted(summary["model_usage"], key=lambda m: -m["total_cost"])
        self.assertEqual([b.get_attribute("data-label") for b in bars],
                         [m["model"] for m in want])
        self.assertEqual(bars[0].get_attribute("data-label"), SONNET)
        self.assertIn(fmt_cost(want[0]["total_cost"]), bars[0].text)

        # Top keys by tokens: alice first (600 today + the earlier days), hostile name as text.
        keys = self.driver.find_elements(By.CSS_SELECTOR, "#dash-top-keys g.hbar")
        labels = [k.get_attribute("data-label") for k in keys]
        self.assertEqual(labels[0], "alice")
        self.assertEqual(set(labels), {"alice", "bob", XSS})
        self.assertIsNone(self.js("return window.__xss"))

        # Recent errors: bob's 400 with the upstream's type and message.
        rows = [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
                for r in self.driver.find_elements(By.CSS_SELECTOR, "#dash-errors tbody tr")]
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][1:5], ["bob", HAIKU, "400", "invalid_request_error"])
        self.assertIn("messages: Field required", rows[0][5])

        # Upstream health follows GET /admin/upstreams: hidden while that route does not exist.
        st, js, _ = self.relay.json_request("GET", "/admin/upstreams", None,
                                            self.relay.admin_headers())
        card = self.driver.find_element(By.ID, "dash-upstreams-card")
        if st == 404:
            self.assertFalse(card.is_displayed())
        else:
            self.assertEqual(st, 200)
            items = js if isinstance(js, list) else js["items"]
            self.assertTrue(card.is_displayed())
            self.assertEqual(len(card.find_elements(By.CSS_SELECTOR, "tbody tr")), len(items))
        self.assertFalse(self.driver.find_element(By.ID, "notice").is_displayed())
        self.driver.set_window_size(1280, 1400)
        self.driver.save_screenshot(os.path.join(self.shots, "dashboard-desktop.png"))
        self.driver.set_window_size(1280, 900)

    def test_phone_width(self):
        self.driver.set_window_size(390, 844)
        self.addCleanup(self.driver.set_window_size, 1280, 900)
        self.dashboard()
        # nothing wider than the screen: the page does not scroll sideways
        self.assertLessEqual(self.js("return document.documentElement.scrollWidth"),
                             self.js("return window.innerWidth") + 1)
        periods = self.driver.find_elements(By.CSS_SELECTOR, "#dash-periods .period")
        self.assertEqual(len(periods), 3)
        # stacked in one column at this width
        xs = {p.location["x"] for p in periods}
        self.assertEqual(len(xs), 1)
        self.driver.set_window_size(390, 2600)  # the whole page in one picture
        self.driver.save_screenshot(os.path.join(self.shots, "dashboard-phone.png"))

    def test_key_page_filters_its_request_log(self):
        self.dashboard()
        bar = self.wait(lambda d: next((b for b in d.find_elements(
            By.CSS_SELECTOR, "#dash-top-keys g.hbar") if b.get_attribute("data-label") == "bob"),
            None), what="bob's bar")
        bar.click()  # opens the key's page
        self.visible("key-usage")
        self.assertIn("bob", self.text("key-usage-name"))
        self.assertEqual(len(self.driver.find_elements(
            By.CSS_SELECTOR, "#key-usage-chart svg g.col")), 30)

        def rows():
            return [[c.text for c in r.find_elements(By.TAG_NAME, "td")]
                    for r in self.driver.find_elements(By.CSS_SELECTOR, "#klog-table tbody tr")]

        self.wait(lambda d: len(rows()) == 2, what="bob's two requests")
        self.assertEqual(sorted(r[2] for r in rows()), ["200", "400"])
        self.assertEqual(self.text("klog-range"), "1–2 of 2")
        ok = next(r for r in rows() if r[2] == "200")
        self.assertEqual(ok[1], HAIKU)
        self.assertEqual(ok[3:8], ["100", "50", "20", "30", "200"])

        self.driver.find_element(By.ID, "klog-errors").click()
        self.driver.find_element(By.ID, "klog-apply").click()
        self.wait(lambda d: len(rows()) == 1, what="errors only")
        self.assertEqual(rows()[0][2], "400")
        self.driver.find_element(By.ID, "klog-reset").click()
        self.wait(lambda d: len(rows()) == 2, what="filters cleared")
        self.driver.find_element(By.ID, "klog-model").send_keys(SONNET)
        self.driver.find_element(By.ID, "klog-apply").click()
        self.wait(lambda d: self.driver.find_element(By.ID, "klog-empty").is_displayed(),
                  what="nothing matches")
        self.driver.find_element(By.ID, "klog-reset").click()
        self.driver.find_element(By.ID, "klog-status").send_keys("200")
        self.driver.find_element(By.ID, "klog-apply").click()
        self.wait(lambda d: len(rows()) == 1 and rows()[0][2] == "200", what="status 200")
        self.driver.save_screenshot(os.path.join(self.shots, "key-page.png"))

    def test_tier_editor(self):
        self.dashboard()
        self.driver.find_element(By.ID, "tab-tiers").click()
        self.visible("tiers-panel")
        self.driver.find_element(By.ID, "new-tier-button").click()
        self.visible("tier-form")
        self.driver.find_element(By.ID, "tier-name").send_keys("gold")
        self.driver.find_element(By.ID, "tier-requests").send_keys("50")
        self.driver.find_element(By.ID, "tier-period").send_keys("30")
        self.driver.find_element(By.ID, "tier-concurrent").send_keys("3")
        self.driver.find_element(By.ID, "tier-cost-daily").send_keys("12.5")
        self.driver.find_element(By.ID, "tier-form-submit").click()

        def cells(name):
            r = self.js("return document.querySelector('#tiers-table tr[data-tier=\"' + "
                        "arguments[0] + '\"]')", name)
            return [c.text for c in r.find_elements(By.TAG_NAME, "td")] if r else None

        self.wait(lambda d: cells("gold"), what="the new tier's row")
        self.assertEqual(cells("gold")[:6], ["gold", "50", "30 s", "—", "3", "daily $12.50"])
        t = self.api("/admin/rate-limit-tiers/gold")
        self.assertEqual((t["requests"], t["period"], t["concurrent"], t["daily_cost_limit"]),
                         (50, 30, 3, 12.5))

        # edit: more requests, the budget removed
        self.js("document.querySelector('#tiers-table tr[data-tier=\"gold\"] "
                "button[data-action=edit-tier]').click()")
        self.visible("tier-form")
        self.assertEqual(self.driver.find_element(By.ID, "tier-requests").get_attribute("value"),
                         "50")
        self.assertEqual(self.driver.find_element(By.ID, "tier-name").get_attribute("readonly"),
                         "true")
        req = self.driver.find_element(By.ID, "tier-requests")
        req.clear()
        req.send_keys("75")
        self.driver.find_element(By.ID, "tier-cost-daily").clear()
        self.driver.find_element(By.ID, "tier-form-submit").click()
        self.wait(lambda d: (cells("gold") or ["", ""])[1] == "75", what="edited")
        t = self.api("/admin/rate-limit-tiers/gold")
        self.assertEqual((t["requests"], t["daily_cost_limit"]), (75, None))
        self.assertEqual(cells("gold")[5], "—")

        # a refusal shows the API's own words
        self.js("document.querySelector('#tiers-table tr[data-tier=\"gold\"] "
                "button[data-action=edit-tier]').click()")
        req = self.visible("tier-requests")
        req.clear()
        req.send_keys("0")
        self.driver.find_element(By.ID, "tier-form-submit").click()
        msg = self.visible("tier-form-error").text
        st, js, _ = self.relay.json_request("PUT", "/admin/rate-limit-tiers/gold",
                                            {"requests": 0}, self.relay.admin_headers())
        self.assertEqual(st, 400)
        self.assertEqual(msg, js["error"]["message"])
        self.driver.save_screenshot(os.path.join(self.shots, "tier-editor.png"))
        self.driver.find_element(By.ID, "tier-form-cancel").click()

        # delete: the default tier is refused (409, shown), gold goes
        self.js("document.querySelector('#tiers-table tr[data-tier=\"basic\"] "
                "button[data-action=delete-tier]').click()")
        self.confirm()
        note = self.visible("notice")
        self.wait(lambda d: "basic" in note.text or "default" in note.text, what="409 shown")
        self.assertIsNotNone(cells("basic"))
        self.js("document.querySelector('#tiers-table tr[data-tier=\"gold\"] "
                "button[data-action=delete-tier]').click()")
        self.confirm()
        self.wait(lambda d: cells("gold") is None, what="gold deleted")
        st, _, _ = self.relay.json_request("GET", "/admin/rate-limit-tiers/gold", None,
                                           self.relay.admin_headers())
        self.assertEqual(st, 404)

    def test_zz_no_script_errors(self):
        self.dashboard()
        self.browser_log.extend(self.driver.get_log("browser"))
        # Failed API calls are the tests' own refusals (400, 409, the upstreams' 404): only
        # script errors and CSP violations count.
        bad = [e["message"] for e in self.browser_log if e.get("level") == "SEVERE"
               and e.get("source") != "network"]
        self.assertEqual(bad, [])


if __name__ == "__main__":
    relaytest.main()
