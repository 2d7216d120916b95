"""End-to-end: the usage REST API, admin statistics and quota alerts through relay-server and the
fake upstream, with exact numbers from known traffic, on SQLite (and PostgreSQL when
RELAY_TEST_PG_URL is set)."""

import http.server
import json
import os
import tempfile
import threading
import time

import relaytest
from relaytest import RelayTestCase, both_stores, messages_body, wait_until

# Every request: 100 input, 50 output, 20 cache writes (5 m), 30 cache reads = 200 tokens.
USAGE = dict(input_tokens=100, output_tokens=50, cache_creation_input_tokens=20,
             ephemeral_5m_input_tokens=20, cache_read_input_tokens=30)
# claude-sonnet-4-5 list prices (USD per million): 3 input, 15 output, 3.75 5-minute write,
# 0.30 read.
COST_PER_REQUEST = (100 * 3 + 50 * 15 + 20 * 3.75 + 30 * 0.30) / 1e6


def headers(key):
    return {"x-api-key": key, "anthropic-version": "2023-06-01"}


def write_config(text=""):
    """A config.yaml for the test's servers; PostgreSQL needs auto_migrate (SQLite has it)."""
    d = tempfile.mkdtemp(prefix="relaytest-usage-")
    path = os.path.join(d, "config.yaml")
    with open(path, "w") as f:
        f.write("database:\n  auto_migrate: true\n" + text)
    return path


@both_stores
class UsageApiTest(RelayTestCase):
    @classmethod
    def relay_env(cls):
        if "cfg_path" not in cls.__dict__:
            cls.cfg_path = write_config()
        return {"RELAY_CONFIG": cls.cfg_path}

    def traffic(self, key):
        """Two JSON answers, one stream and one upstream 400: 4 requests, 600 tokens, 1 error."""
        self.fake.set_usage(**USAGE)
        for _ in range(2):
            r = self.relay.request("POST", "/v1/messages", messages_body(max_tokens=16), headers(key))
            self.assertEqual(r.status, 200, r.body)
        with self.relay.stream("POST", "/v1/messages", messages_body(stream=True, max_tokens=16),
                               headers(key)) as s:
            s.read_all()
            self.assertEqual(s.status, 200)
        self.fake.fail_next(1, 400)
        r = self.relay.request("POST", "/v1/messages", messages_body(max_tokens=16), headers(key))
        self.assertEqual(r.status, 400)

    def get(self, path, key):
        return self.relay.json_request("GET", path, headers={"x-api-key": key})

    def wait_requests(self, key, n):
        """The usage writer is asynchronous: wait until n rows are visible."""
        def seen():
            st, js, _ = self.get("/api/usage", key)
            return st == 200 and js["total_requests"] == n and js
        return wait_until(seen, 15, "%d usage rows" % n, interval=0.1)

    def test_user_endpoints_exact(self):
        key, obj = self.relay.create_key(name="usage-e2e", token_limit=100000)
        other, _ = self.relay.create_key(name="usage-other")
        self.traffic(key)
        js = self.wait_requests(key, 4)
        self.assertEqual(js["total_tokens"], 600)
        self.assertEqual(js["total_prompt_tokens"], 300)
        self.assertEqual(js["total_completion_tokens"], 150)
        self.assertEqual(js["total_cache_creation_tokens"], 60)
        self.assertEqual(js["total_cache_read_tokens"], 90)
        self.assertAlmostEqual(js["total_cost"], 3 * COST_PER_REQUEST, places=9)
        self.assertEqual(js["error_count"], 1)
        self.assertAlmostEqual(js["error_rate"], 0.25)
        self.assertGreaterEqual(js["avg_response_time_ms"], 0)
        self.assertEqual(len(js["model_usage"]), 1)
        mu = js["model_usage"][0]
        self.assertEqual((mu["model"], mu["request_count"], mu["total_tokens"]),
                         ("claude-sonnet-4-5-20250929", 4, 600))
        self.assertEqual(js["error_breakdown"], [{"error_code": "invalid_request_error", "count": 1}])

        # Another key sees only its own (empty) usage.
        st, js2, _ = self.get("/api/usage", other)
        self.assertEqual((st, js2["total_requests"]), (200, 0))

        st, daily, _ = self.get("/api/usage/daily?days=2", key)
        self.assertEqual(st, 200)
        self.assertEqual(len(daily), 2)
        today = time.strftime("%Y-%m-%d", time.gmtime())
        self.assertEqual(daily[0]["date"], today)
        self.assertEqual((daily[0]["requests"], daily[0]["tokens"], daily[0]["errors"]), (4, 600, 1))
        self.assertAlmostEqual(daily[0]["cost"], 3 * COST_PER_REQUEST, places=9)
        self.assertEqual((daily[1]["requests"], daily[1]["tokens"]), (0, 0))

        st, logs, _ = self.get("/api/usage/logs?limit=2", key)
        self.assertEqual((st, logs["total"], len(logs["items"])), (200, 4, 2))
        newest = logs["items"][0]
        self.assertEqual(newest["response_status"], 400)  # newest first
        self.assertTrue(newest["is_error"])
        self.assertEqual(newest["total_cost"], 0)
        st, logs, _ = self.get("/api/usage/logs?status=200", key)
        self.assertEqual(logs["total"], 3)
        row = logs["items"][0]
        for field in ("request_id", "request_method", "request_path", "prompt_tokens",
                      "completion_tokens", "total_tokens", "cache_creation_tokens",
                      "cache_read_tokens", "time_to_first_byte_ms", "attempts", "stream",
                      "estimated", "created_at", "client_ip"):
            self.assertIn(field, row)
        self.assertEqual(row["total_tokens"], 200)
        self.assertAlmostEqual(row["total_cost"], COST_PER_REQUEST, places=9)
        stream_rows = [r for r in logs["items"] if r["stream"]]
        self.assertEqual(len(stream_rows), 1)

        st, q, _ = self.get("/api/usage/quota", key)
        self.assertEqual(st, 200)
        self.assertEqual((q["token_limit"], q["token_used"], q["token_remaining"]), (100000, 600, 99400))
        self.assertAlmostEqual(q["usage_percentage"], 0.6)
        self.assertFalse(q["is_quota_exceeded"])
        self.assertEqual(q["rate_limit_tier"], "basic")
        self.assertTrue(q["is_active"])
        self.assertFalse(q["is_expired"])
        self.assertIn("requests_remaining", q)
        self.assertIn("reset_at", q)

        # Bearer works like x-api-key.
        st, js3, _ = self.relay.json_request("GET", "/api/usage",
                                             headers={"authorization": "Bearer " + key})
        self.assertEqual((st, js3["total_requests"]), (200, 4))

    def test_admin_statistics(self):
        key, obj = self.relay.create_key(name="admin-stats-e2e")
        self.traffic(key)
        self.wait_requests(key, 4)
        h = self.relay.admin_headers()
        st, js, r = self.relay.json_request("GET", "/admin/usage?sort=total_tokens&order=desc", headers=h)
        self.assertEqual(st, 200, r.body)
        mine = [it for it in js["items"] if it["api_key_id"] == obj["id"]]
        self.assertEqual(len(mine), 1)
        self.assertEqual((mine[0]["total_requests"], mine[0]["total_tokens"], mine[0]["error_count"]),
                         (4, 600, 1))
        self.assertGreaterEqual(js["totals"]["total_tokens"], 600)
        self.assertEqual(js["total"], js["totals"]["total_keys"])
        st, per_key, _ = self.relay.json_request("GET", "/admin/api-keys/%s/usage" % obj["id"], headers=h)
        self.assertEqual((st, per_key["total_tokens"], per_key["total_requests"]), (200, 600, 4))
        st, daily, _ = self.relay.json_request("GET", "/admin/api-keys/%s/usage/daily?days=1" % obj["id"],
                                               headers=h)
        self.assertEqual((st, daily[0]["tokens"]), (200, 600))
        st, logs, _ = self.relay.json_request("GET", "/admin/api-keys/%s/usage/logs?limit=1" % obj["id"],
                                              headers=h)
        self.assertEqual((st, logs["total"], len(logs["items"])), (200, 4, 1))
        # Without the admin token: 401; the admin key routes still work beside the statistics.
        st, _, _ = self.relay.json_request("GET", "/admin/usage")
        self.assertEqual(st, 401)
        st, kobj, _ = self.relay.json_request("GET", "/admin/api-keys/%s" % obj["id"], headers=h)
        self.assertEqual((st, kobj["id"]), (200, obj["id"]))

    def test_errors_and_routing(self):
        key, _ = self.relay.create_key(name="errors-e2e")
        for path, param in (("/api/usage?start_date=last-week", "start_date"),
                            ("/api/usage?end_date=2025-13-01", "end_date"),
                            ("/api/usage/daily?days=0", "days"),
                            ("/api/usage/daily?days=366", "days"),
                            ("/api/usage/logs?limit=1001", "limit"),
                            ("/api/usage/logs?skip=-3", "skip")):
            st, js, r = self.get(path, key)
            self.assertEqual(st, 400, path)
            self.assertEqual(js["error"]["type"], "invalid_request_error")
            self.assertTrue(js["error"]["message"].startswith(param), js["error"]["message"])
        st, js, _ = self.relay.json_request("GET", "/api/usage")
        self.assertEqual((st, js["error"]["type"]), (401, "authentication_error"))
        st, _, _ = self.get("/api/usage/nothing", key)
        self.assertEqual(st, 404)
        st, _, _ = self.get("/api/other", key)
        self.assertEqual(st, 404)
        self.assertEqual(len(self.fake.requests()), 0)  # none of it reached the upstream


class WebhookReceiver:
    """Records POSTed JSON bodies on 127.0.0.1:<port 0>; the first delivery is answered 500 so
    the relay's retry is exercised."""

    def __init__(self):
        self.bodies, self.attempts, self.lock = [], 0, threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                with outer.lock:
                    outer.attempts += 1
                    fail = outer.attempts == 1
                    if not fail:
                        outer.bodies.append(json.loads(body))
                self.send_response(500 if fail else 204)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def thresholds(self):
        with self.lock:
            return sorted(b["threshold"] for b in self.bodies)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@both_stores
class QuotaAlertTest(RelayTestCase):
    @classmethod
    def relay_env(cls):
        # Called for every server the class starts: one receiver and one file per class.
        if "hook" in cls.__dict__:
            return {"RELAY_CONFIG": cls.cfg_path}
        cls.hook = WebhookReceiver()
        cls.cfg_path = write_config("alerts:\n  thresholds: [0.5, 0.8, 1.0]\n"
                                    "  webhook_url: http://127.0.0.1:%d/hook\n"
                                    "  webhook_timeout_ms: 2000\n" % cls.hook.port)
        return {"RELAY_CONFIG": cls.cfg_path}

    @classmethod
    def tearDownClass(cls):
        if "hook" in cls.__dict__:
            cls.hook.stop()
        super().tearDownClass()

    def send(self, relay, key, expect=200):
        r = relay.request("POST", "/v1/messages", messages_body(max_tokens=16), headers(key))
        self.assertEqual(r.status, expect, r.body)

    def test_one_alert_per_threshold_across_restart(self):
        # 200 billed tokens a request against a limit of 1000.
        self.fake.set_usage(input_tokens=150, output_tokens=50)
        key, obj = self.relay.create_key(name="alert-e2e", token_limit=1000)
        for _ in range(3):  # 600 used: 0.5 crossed
            self.send(self.relay, key)
        wait_until(lambda: self.hook.thresholds() == [0.5], 15, "the 0.5 alert")
        self.assertEqual(self.hook.attempts, 2)  # the first POST failed and was retried
        body = self.hook.bodies[0]
        self.assertEqual((body["type"], body["api_key_id"], body["token_limit"]),
                         ("quota_alert", obj["id"], 1000))
        self.assertGreaterEqual(body["token_used"], 600)
        self.relay.wait_for_log('"quota.alert"')

        # Let the usage rows reach the store, then restart on the same store.
        wait_until(lambda: self.relay.json_request("GET", "/api/usage/quota",
                                                   headers={"x-api-key": key})[1]["token_used"] == 600,
                   15, "token_used 600 in the store")
        self.relay.stop()
        second = self.start_relay(data_dir=self.relay.data_dir)
        self.send(second, key)  # 800: 0.8 crossed; 0.5 must not fire again
        wait_until(lambda: self.hook.thresholds() == [0.5, 0.8], 15, "the 0.8 alert")
        self.send(second, key)  # 1000: 1.0 crossed
        wait_until(lambda: self.hook.thresholds() == [0.5, 0.8, 1.0], 15, "the 1.0 alert")
        self.send(second, key, expect=429)  # quota spent: refused, no new alert
        time.sleep(1.5)
        self.assertEqual(self.hook.thresholds(), [0.5, 0.8, 1.0])


if __name__ == "__main__":
    relaytest.main()
