"""End-to-end: issue 12's cost budgets through relay-server and the fake upstream — refusals and
their headers, the quota endpoint and admin object against the usage logs, a restart keeping the
spend, unknown models at the default price, the price table's admin API, bad input — on SQLite
and PostgreSQL, with and without Redis. (Period resets are driven by the test clock in
tests/db/test_budgets.c.)"""

import datetime
import threading

import relaytest
from relaytest import both_stores, messages_body, wait_until

ANTHROPIC = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
SONNET = "claude-sonnet-4-5-20250929"
OPUS = "claude-opus-4-1-20250805"
CEILING = 1000


write_config = relaytest.write_class_config


class BudgetBase(relaytest.RelayTestCase):
    @classmethod
    def relay_env(cls):
        if "cfg_path" not in cls.__dict__:
            cls.cfg_path = write_config(cls, "usage:\n  reservation_ceiling: %d\n" % CEILING)
        return {"RELAY_CONFIG": cls.cfg_path}

    @classmethod
    def setUpClass(cls):
        cls._admin = {}
        super().setUpClass()

    def admin_hdrs(self, relay=None):
        relay = relay or self.relay
        if relay.port not in self._admin:
            self._admin[relay.port] = relay.admin_headers()
        return self._admin[relay.port]

    def admin(self, method, path, body=None, expect=200, relay=None):
        relay = relay or self.relay
        st, js, r = relay.json_request(method, path, body, self.admin_hdrs(relay))
        if expect is not None:
            self.assertEqual(st, expect, r.body)
        return js

    def new_key(self, **fields):
        fields.setdefault("rate_limit_tier", "unlimited")
        fields.setdefault("token_limit", 0)
        return self.relay.create_key(**fields)

    def send(self, key, model=SONNET, max_tokens=1000, relay=None):
        relay = relay or self.relay
        return relay.request("POST", "/v1/messages",
                             messages_body(model=model, max_tokens=max_tokens),
                             dict(ANTHROPIC, **{"x-api-key": key}))

    def quota(self, key, relay=None):
        relay = relay or self.relay
        st, js, r = relay.json_request("GET", "/api/usage/quota", headers={"x-api-key": key})
        self.assertEqual(st, 200, r.body)
        return js

    def budget(self, obj, period, models=None):
        for b in obj["budgets"]:
            if b["period"] == period and b["models"] == models:
                return b
        self.fail("no %s budget for %r in %r" % (period, models, obj["budgets"]))

    def logged_cost(self, key_id, n):
        rows = self.wait_usage_rows(key_id, n)
        return sum(r["total_cost"] for r in rows), rows


@both_stores
class BudgetTest(BudgetBase):
    def test_daily_cap_refuses_with_reset_and_matches_logs(self):
        # Sonnet: 1 in + 1000 out = $0.015003 a request, each reserving a little more (its
        # input estimate + 1000 out); $0.05 holds three, not four.
        self.fake.set_usage(input_tokens=1, output_tokens=1000)
        key, obj = self.new_key(daily_cost_limit=0.05)
        self.assertEqual(obj["daily_cost_limit"], 0.05)
        self.assertEqual(self.budget(obj, "daily")["spent"], 0)
        n_ok = 3
        for _ in range(n_ok):
            self.assertEqual(self.send(key).status, 200)
        r = self.send(key)
        self.assertEqual(r.status, 429, r.body)
        err = r.json()["error"]
        self.assertEqual(err["type"], "rate_limit_error")
        self.assertIn("daily cost budget nearly exhausted", err["message"])
        tomorrow = (datetime.datetime.now(datetime.timezone.utc).date()
                    + datetime.timedelta(days=1))
        self.assertIn("resets at %sT00:00:00Z" % tomorrow.isoformat(), err["message"])
        midnight = datetime.datetime.combine(tomorrow, datetime.time(),
                                             datetime.timezone.utc).timestamp()
        retry = int(r.header("retry-after"))
        now = datetime.datetime.now(datetime.timezone.utc).timestamp()
        self.assertLessEqual(abs(retry - (midnight - now)), 5)
        self.assertIsNone(r.header("x-should-retry"))
        # The request window was not consulted: no made-up anthropic-ratelimit-requests-*.
        self.assertIsNone(r.header("anthropic-ratelimit-requests-reset"))
        self.assertEqual(len(self.fake.requests()), n_ok, "a refused request reached upstream")
        cost, _ = self.logged_cost(obj["id"], n_ok + 1)
        q = self.budget(self.quota(key), "daily")
        a = self.budget(self.admin("GET", "/admin/api-keys/" + obj["id"]), "daily")
        for b in (q, a):
            self.assertAlmostEqual(b["spent"], cost, places=4)
            self.assertAlmostEqual(b["remaining"], max(0, 0.05 - cost), places=4)
            self.assertEqual(b["limit"], 0.05)
            self.assertEqual(b["resets_at"], tomorrow.isoformat() + "T00:00:00Z")

    def test_lifetime_cap_says_do_not_retry(self):
        self.fake.set_usage(input_tokens=1, output_tokens=1000)
        key, obj = self.new_key(cost_limit=0.02)
        self.assertEqual(self.send(key).status, 200)
        r = self.send(key)
        self.assertEqual(r.status, 429, r.body)
        self.assertEqual(r.header("x-should-retry"), "false")
        self.assertIsNone(r.header("retry-after"))
        self.assertIn("lifetime cost budget nearly exhausted", r.json()["error"]["message"])
        self.assertIsNone(self.budget(self.quota(key), "total")["resets_at"])

    def test_model_family_cap_refuses_opus_passes_sonnet(self):
        self.fake.set_usage(input_tokens=1, output_tokens=1000)
        key, obj = self.new_key(model_cost_limits=[
            {"models": ["claude-opus-*"], "period": "weekly", "limit": 0.1}])
        self.assertEqual(self.send(key, model=OPUS).status, 200)  # $0.075015
        r = self.send(key, model=OPUS)
        self.assertEqual(r.status, 429, r.body)
        self.assertIn("weekly cost budget for claude-opus-*", r.json()["error"]["message"])
        for _ in range(3):
            self.assertEqual(self.send(key, model=SONNET).status, 200)
        b = self.budget(self.quota(key), "weekly", ["claude-opus-*"])
        self.assertAlmostEqual(b["spent"], 0.075015, places=9)

    def test_patch_lower_than_spent_refuses_at_once_and_says_so(self):
        self.fake.set_usage(input_tokens=1, output_tokens=1000)
        key, obj = self.new_key(daily_cost_limit=1)
        for _ in range(3):
            self.assertEqual(self.send(key).status, 200)
        self.wait_usage_rows(obj["id"], 3)
        js = self.admin("PATCH", "/admin/api-keys/" + obj["id"], {"daily_cost_limit": 0.01})
        self.assertEqual(js["daily_cost_limit"], 0.01)
        self.assertTrue(any("already spent" in w for w in js.get("warnings", [])), js)
        r = self.send(key)
        self.assertEqual(r.status, 429)
        self.assertIn("daily cost budget exhausted", r.json()["error"]["message"])
        # null removes the budget again
        js = self.admin("PATCH", "/admin/api-keys/" + obj["id"], {"daily_cost_limit": None})
        self.assertIsNone(js["daily_cost_limit"])
        self.assertEqual(js["budgets"], [])
        self.assertEqual(self.send(key).status, 200)

    def test_budget_alert_fires_once_per_threshold(self):
        self.fake.set_usage(input_tokens=1, output_tokens=1000)
        key, obj = self.new_key(daily_cost_limit=0.05)
        for _ in range(3):  # $0.045: 90 % of the day's budget
            self.assertEqual(self.send(key).status, 200)
        line = self.relay.wait_for_log(
            lambda l: '"budget.alert"' in l and obj["id"] in l and '"threshold":0.8' in l)
        self.assertIn('"period":"daily"', line)
        self.assertNotIn('"threshold":1', line)

    def test_tier_defaults(self):
        tier = self.admin("PUT", "/admin/rate-limit-tiers/budgeted",
                          {"requests": -1, "period": 60, "daily_cost_limit": 0.02})
        self.assertEqual(tier["daily_cost_limit"], 0.02)
        # A PUT without budget fields keeps the tier's defaults.
        tier = self.admin("PUT", "/admin/rate-limit-tiers/budgeted",
                          {"requests": 1000, "period": 60})
        self.assertEqual(tier["daily_cost_limit"], 0.02)
        self.fake.set_usage(input_tokens=1, output_tokens=1000)
        key, obj = self.relay.create_key(rate_limit_tier="budgeted", token_limit=0)
        self.assertIsNone(obj["daily_cost_limit"])  # the key's own field
        self.assertEqual(self.budget(obj, "daily")["limit"], 0.02)  # the budget in force
        self.assertEqual(self.send(key).status, 200)
        r = self.send(key)
        self.assertEqual(r.status, 429, r.body)
        self.assertIn("daily cost budget", r.json()["error"]["message"])

    def test_bad_input_names_the_field(self):
        cases = [
            ({"daily_cost_limit": -1}, "daily_cost_limit: expected a non-negative number"),
            ({"weekly_cost_limit": "ten"}, "weekly_cost_limit: expected a non-negative number"),
            ({"model_cost_limits": [{"models": [], "period": "daily", "limit": 1}]},
             "model_cost_limits[0].models: expected a non-empty list"),
            ({"model_cost_limits": [{"models": ["claude-opus-*"], "period": "yearly",
                                     "limit": 1}]},
             "model_cost_limits[0].period: expected daily, weekly, monthly or total"),
        ]
        for body, msg in cases:
            body = dict(body, name="bad")
            st, js, r = self.relay.json_request("POST", "/admin/api-keys", body,
                                                self.admin_hdrs())
            self.assertEqual(st, 400, r.body)
            self.assertIn(msg, js["error"]["message"])
        _, obj = self.new_key()
        st, js, r = self.relay.json_request("PATCH", "/admin/api-keys/" + obj["id"],
                                            {"monthly_cost_limit": -5}, self.admin_hdrs())
        self.assertEqual(st, 400, r.body)
        self.assertIn("monthly_cost_limit:", js["error"]["message"])

    def test_unknown_model_billed_at_default_price_and_counted(self):
        self.fake.set_usage(input_tokens=1, output_tokens=1000)
        key, obj = self.new_key(daily_cost_limit=10)
        self.assertEqual(self.send(key, model="gpt-unknown-9").status, 200)
        _, rows = self.logged_cost(obj["id"], 1)
        self.assertAlmostEqual(rows[0]["total_cost"], 0.075015, places=9)  # dearest: $15/$75
        text = self.relay.request("GET", "/metrics").text
        self.assertIn('relay_unpriced_requests_total{model="gpt-unknown-9"} 1', text)

    def test_pricing_api(self):
        js = self.admin("GET", "/admin/pricing")
        prefixes = [p["model_prefix"] for p in js["prices"]]
        for want in ("claude-opus-4-6", "claude-opus-4-5", "claude-opus-4", "claude-sonnet-4",
                     "claude-haiku-4", "claude-3-7-sonnet", "claude-3-5-haiku",
                     "claude-3-haiku", "claude-3-opus"):
            self.assertIn(want, prefixes)
        self.assertEqual(js["default"], "claude-opus-4")
        st, bad, r = self.relay.json_request("PUT", "/admin/pricing", {"prices": [
            {"model_prefix": "x", "input": 1}]}, self.admin_hdrs())
        self.assertEqual(st, 400, r.body)
        self.assertIn("prices[0].output: required", bad["error"]["message"])
        table = dict(js, prices=js["prices"] + [{"model_prefix": "gpt-unknown", "input": 2,
                                                 "output": 4}])
        got = self.admin("PUT", "/admin/pricing", table)
        self.assertEqual(got["source"], "admin")
        self.fake.set_usage(input_tokens=1000000, output_tokens=0)
        key, obj = self.new_key()
        self.assertEqual(self.send(key, model="gpt-unknown-2").status, 200)
        _, rows = self.logged_cost(obj["id"], 1)
        self.assertAlmostEqual(rows[0]["total_cost"], 2.0, places=9)
        audit = self.admin("GET", "/admin/audit-log")
        self.assertIn("pricing.update", [e["action"] for e in audit["items"]])
        self.admin("PUT", "/admin/pricing", dict(js, source=None))  # back to the shipped table

    def test_restart_keeps_the_spend(self):
        self.fake.set_usage(input_tokens=1, output_tokens=1000)
        key, obj = self.new_key(daily_cost_limit=1, monthly_cost_limit=2)
        for _ in range(4):
            self.assertEqual(self.send(key).status, 200)
        cost, _ = self.logged_cost(obj["id"], 4)
        # A second process on the same store starts with no memory, as a restarted one does.
        same = {k: self.relay.env[k] for k in ("ADMIN_PASSWORD", "SECRET_KEY")}
        other = self.start_relay(same, data_dir=None if self.pg else self.relay.data_dir)
        for b in ("daily", "monthly"):
            self.assertAlmostEqual(self.budget(self.quota(key, other), b)["spent"], cost,
                                   places=6)


@both_stores
class BudgetRaceTest(BudgetBase):
    def test_fifty_concurrent_overshoot_at_most_one_estimate(self):
        # Each request really costs 1 in + 100 out = $0.001503, a little under what it reserves
        # (its input estimate + 100 out): the cap holds exactly however many race.
        self.fake.set_usage(input_tokens=1, output_tokens=100)
        key, obj = self.new_key(daily_cost_limit=0.02)
        per = (1 * 3 + 100 * 15) / 1e6
        for _ in range(10):
            self.assertEqual(self.send(key, max_tokens=100).status, 200)
        results = [None] * 50
        barrier = threading.Barrier(50)

        def run(i):
            barrier.wait(10)
            results[i] = self.send(key, max_tokens=100).status

        threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertTrue(all(s in (200, 429) for s in results), results)
        ok = results.count(200)
        self.assertGreaterEqual(ok, 1)
        cost, _ = self.logged_cost(obj["id"], 60)
        self.assertAlmostEqual(cost, (10 + ok) * per, places=9)
        self.assertLessEqual(cost, 0.02 + per + 1e-9)  # at most one request's estimate over
        self.assertLessEqual(cost, 0.02 + 1e-9)  # and here, with honest estimates, not at all
        self.assertAlmostEqual(self.budget(self.quota(key), "daily")["spent"], cost, places=9)


@both_stores
class BudgetRedisTest(BudgetTest):
    USE_REDIS = True


@both_stores
class BudgetRedisRaceTest(BudgetRaceTest):
    USE_REDIS = True


if __name__ == "__main__":
    relaytest.main()
