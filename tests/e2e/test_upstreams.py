"""The upstream pool end to end: several fake upstreams, each accepting only its own key.

Traffic is shared by weight, a session stays on one upstream, a 529 storm or a dead upstream
costs the clients nothing while another is healthy, the secondary serves only while the others
cannot, a 401 marks an upstream broken, and usage rows, statistics and metrics name the upstream.
Upstreams made through the admin REST survive a restart and show in a second instance on the same
PostgreSQL database, and their keys are readable neither in the database nor in the logs.
"""
import json
import secrets
import subprocess

import relaytest
from fake_upstream import FakeUpstream
from relaytest import messages_body, wait_until, write_class_config


def new_fake(cls):
    key = "sk-ant-api03-fake-" + secrets.token_urlsafe(24)
    fake = FakeUpstream(api_key=key).start()
    cls.addClassCleanup(fake.stop)
    return fake, key


def served_by(fakes):
    """How many /v1/messages requests each fake got, by name."""
    return {n: sum(1 for r in f.requests() if r["path"] == "/v1/messages")
            for n, f in fakes.items()}


class Pool(relaytest.RelayTestCase):
    """Primary a (weight 1), pool b (weight 3), secondary s, and team-s (group team) on s's fake."""

    @classmethod
    def setUpClass(cls):
        cls.fake_b, cls.key_b = new_fake(cls)
        cls.fake_s, cls.key_s = new_fake(cls)
        super().setUpClass()
        cls.relay.proxy_keys += [cls.key_b, cls.key_s]  # checked by assert_no_secrets
        cls.fakes = {"a": cls.fake, "b": cls.fake_b, "s": cls.fake_s}
        cls.keys = {"a": cls.upstream_key, "b": cls.key_b, "s": cls.key_s}

    @classmethod
    def relay_env(cls):
        cfg = (
            "upstream:\n"
            "  primary: {name: a, retry_base_ms: 50, retry_max_ms: 200, first_byte_timeout: 1}\n"
            "  secondary: {name: s, url: \"%s\", api_key: \"${KEY_S}\"}\n"
            "  pool:\n"
            "    - {name: b, url: \"%s\", api_key: \"${KEY_B}\", weight: 3}\n"
            "    - {name: team-s, url: \"%s\", api_key: \"${KEY_S}\", group: team}\n"
            % (cls.fake_s.url, cls.fake_b.url, cls.fake_s.url))
        return {"RELAY_CONFIG": write_class_config(cls, cfg), "KEY_B": cls.key_b,
                "KEY_S": cls.key_s}

    def setUp(self):
        super().setUp()
        for f in self.fakes.values():
            f.reset()
        for name in ("a", "b", "s"):  # an admin's enable clears cooldowns and broken states
            self.admin("POST", "/admin/upstreams/config:%s/enable" % name)
        self.key, _ = self.relay.create_key(token_limit=0)

    def admin(self, method, path, body=None):
        st, js, r = self.relay.json_request(method, path, body, self.relay.admin_headers())
        self.assertLess(st, 300, r.body[:300])
        return js

    def upstream(self, name):
        for u in self.admin("GET", "/admin/upstreams")["items"]:
            if u["name"] == name:
                return u
        self.fail("no upstream " + name)

    def call(self, headers=None, body=None, key=None):
        h = {"x-api-key": key or self.key}
        h.update(headers or {})
        st, js, r = self.relay.json_request("POST", "/v1/messages", body or messages_body(), h)
        return st, js, r

    def ok(self, **kw):
        st, js, r = self.call(**kw)
        self.assertEqual(st, 200, r.body[:300])
        return js

    def test_01_traffic_is_shared_by_weight_with_each_upstreams_key(self):
        for _ in range(40):
            self.ok()
        self.assertEqual(served_by(self.fakes), {"a": 10, "b": 30, "s": 0})
        for name, f in self.fakes.items():
            for rec in f.requests():
                self.assertEqual(rec["headers"]["x-api-key"], self.keys[name])
                self.assertNotIn(self.key, json.dumps(rec["headers"]))

    def test_a_session_stays_on_one_upstream(self):
        for _ in range(8):
            self.ok(headers={"x-claude-code-session-id": "cc-session-1"})
        counts = served_by(self.fakes)
        self.assertEqual(sorted(counts.values()), [0, 0, 8], counts)
        for f in self.fakes.values():
            f.reset()
        uid = json.dumps({"device_id": "dev", "account_uuid": "acc", "session_id": "sess-9"})
        for _ in range(8):
            self.ok(body=messages_body(metadata={"user_id": uid}))
        counts = served_by(self.fakes)
        self.assertEqual(sorted(counts.values()), [0, 0, 8], counts)

    def test_a_529_storm_costs_the_clients_nothing(self):
        self.fake_b.fail_next(1000, 529, retry_after=60)
        for _ in range(12):
            self.ok()
        counts = served_by(self.fakes)
        self.assertEqual(counts["s"], 0)
        self.assertEqual(counts["b"], 1)  # asked once, then cooled down for its retry-after
        b = self.upstream("b")
        self.assertEqual(b["state"], "cooling")
        self.assertFalse(b["healthy"])
        self.assertIsNotNone(b["cooldown_until"])
        self.assertIn("529", b["last_error"])
        metrics = self.relay.request("GET", "/metrics").text
        self.assertIn('relay_upstream_failovers_total{from="b",reason="overloaded"} 1', metrics)
        self.assertIn('relay_upstream_requests_total{upstream="b",status="529"} 1', metrics)
        self.assertRegex(metrics, r'relay_upstream_cooldowns_total\{upstream="b"\} [1-9]')
        self.assertIn('relay_upstream_up{upstream="b"} 0', metrics)

    def test_a_dead_upstream_costs_the_clients_nothing(self):
        port = self.fake_b.port
        self.fake_b.stop()
        try:
            for _ in range(10):
                self.ok()
            self.assertEqual(served_by({"a": self.fake, "s": self.fake_s}), {"a": 10, "s": 0})
            b = self.upstream("b")
            self.assertEqual(b["state"], "cooling")
            self.assertGreaterEqual(b["errors_5m"], 1)
        finally:
            fresh = FakeUpstream(api_key=self.key_b, port=port).start()
            self.addClassCleanup(fresh.stop)
            type(self).fake_b = self.fakes["b"] = fresh

    def test_a_silent_upstream_times_out_and_fails_over(self):
        self.fake_b.set_delay(first_byte_ms=4000)  # past first_byte_timeout (1 s)
        for _ in range(4):
            self.ok()
        self.assertGreaterEqual(served_by(self.fakes)["b"], 1)
        self.assertEqual(served_by(self.fakes)["a"], 4)
        metrics = self.relay.request("GET", "/metrics").text
        self.assertRegex(metrics, r'relay_upstream_requests_total\{upstream="b",status="timeout"\} [1-9]')
        self.assertRegex(metrics, r'relay_upstream_failovers_total\{from="b",reason="timeout"\} [1-9]')

    def test_secondary_serves_only_while_the_others_cannot(self):
        self.admin("POST", "/admin/upstreams/config:a/disable")
        self.admin("POST", "/admin/upstreams/config:b/disable")
        for _ in range(4):
            self.ok()
        self.assertEqual(served_by(self.fakes), {"a": 0, "b": 0, "s": 4})
        self.assertEqual(self.upstream("a")["state"], "disabled")
        self.admin("POST", "/admin/upstreams/config:a/enable")
        self.admin("POST", "/admin/upstreams/config:b/enable")
        for _ in range(4):
            self.ok()
        self.assertEqual(served_by(self.fakes)["s"], 4)

    def test_a_401_marks_the_upstream_broken_until_a_test_passes(self):
        self.fake_b.set_api_key("sk-ant-revoked-" + secrets.token_hex(8))
        for _ in range(8):
            self.ok()
        self.assertEqual(served_by(self.fakes)["b"], 1)  # one 401, then never again
        b = self.upstream("b")
        self.assertEqual(b["state"], "broken")
        self.assertIn("401", b["last_error"])
        st, js, _ = self.relay.json_request("POST", "/admin/upstreams/b/test", None,
                                            self.relay.admin_headers())
        self.assertEqual((st, js["ok"], js["status"]), (200, False, 401))
        self.fake_b.set_api_key(self.key_b)
        js = self.admin("POST", "/admin/upstreams/b/test")
        self.assertTrue(js["ok"])
        self.assertEqual(js["upstream"]["state"], "ok")
        self.assertEqual(js["upstream"]["key_last4"], self.key_b[-4:])

    def test_nothing_available_answers_529_with_retry_after(self):
        for f in self.fakes.values():
            f.fail_next(1000, 429, retry_after=90)  # longer than retry_max_ms: no waiting
        st, js, r = self.call()
        self.assertEqual(st, 429, r.body[:300])  # the last upstream's own answer
        st, js, r = self.call()
        self.assertEqual(st, 529, r.body[:300])
        self.assertEqual(js["type"], "error")
        self.assertEqual(js["error"]["type"], "overloaded_error")
        self.assertTrue(1 <= int(r.headers["retry-after"]) <= 90, r.headers["retry-after"])
        self.assertEqual(sum(served_by(self.fakes).values()), 3)  # the second never left

    def test_usage_rows_statistics_and_metrics_name_the_upstream(self):
        self.fake.set_usage(input_tokens=11, output_tokens=7)
        self.fake_b.set_usage(input_tokens=11, output_tokens=7)
        self.fake_b.fail_next(1, 529, retry_after=0)  # retried elsewhere, no cooldown
        key, kobj = self.relay.create_key(token_limit=0)
        for _ in range(4):
            self.ok(key=key)
        h = {"x-api-key": key}
        wait_until(lambda: self.relay.json_request("GET", "/api/usage/logs", None, h)[1]
                   .get("total") == 4, 10, "four usage rows")
        logs = self.relay.json_request("GET", "/api/usage/logs", None, h)[1]["items"]
        self.assertEqual({l["upstream"] for l in logs}, {"a", "b"})
        for l in logs:  # the 529 on b is billed to no one: each row is one request's usage
            self.assertEqual((l["prompt_tokens"], l["completion_tokens"]), (11, 7))
        self.assertEqual(sorted(l["attempts"] for l in logs), [1, 1, 1, 2])
        js = self.relay.json_request("GET", "/api/usage", None, h)[1]
        by = {u["upstream"]: u["request_count"] for u in js["upstream_usage"]}
        self.assertEqual(sum(by.values()), 4)
        self.assertEqual(set(by), {"a", "b"})
        js = self.admin("GET", "/admin/usage")
        self.assertIn("b", {u["upstream"] for u in js["upstream_usage"]})
        metrics = self.relay.request("GET", "/metrics").text
        self.assertRegex(metrics, r'relay_upstream_requests_total\{upstream="a",status="200"\} \d')
        self.assertIn('relay_upstream_in_flight{upstream="b"} 0', metrics)
        self.assertIn('relay_upstream_up{upstream="a"} 1', metrics)

    def test_a_key_bound_to_a_group_uses_its_upstreams_only(self):
        key, kobj = self.relay.create_key(token_limit=0, upstream_group="team")
        self.assertEqual(kobj["upstream_group"], "team")
        for _ in range(3):
            self.ok(key=key)
        self.assertEqual(served_by(self.fakes), {"a": 0, "b": 0, "s": 3})
        h = {"x-api-key": key}
        wait_until(lambda: self.relay.json_request("GET", "/api/usage/logs", None, h)[1]
                   .get("total") == 3, 10, "three usage rows")
        logs = self.relay.json_request("GET", "/api/usage/logs", None, h)[1]["items"]
        self.assertEqual({l["upstream"] for l in logs}, {"team-s"})
        st, js, _ = self.relay.json_request("PATCH", "/admin/api-keys/" + kobj["id"],
                                            {"upstream_group": None}, self.relay.admin_headers())
        self.assertEqual((st, js["upstream_group"]), (200, None))

    def test_config_upstreams_are_read_only(self):
        st, js, _ = self.relay.json_request("PATCH", "/admin/upstreams/config:b", {"weight": 5},
                                            self.relay.admin_headers())
        self.assertEqual(st, 400)
        self.assertIn("read-only", js["error"]["message"])
        st, _, _ = self.relay.json_request("DELETE", "/admin/upstreams/b", None,
                                           self.relay.admin_headers())
        self.assertEqual(st, 400)
        items = self.admin("GET", "/admin/upstreams")["items"]
        self.assertEqual([u["name"] for u in items], ["a", "s", "b", "team-s"])
        self.assertEqual({u["source"] for u in items}, {"config"})
        self.assertEqual([u["priority"] for u in items], [0, 1, 0, 0])
        text = json.dumps(items)
        for k in self.keys.values():
            self.assertNotIn(k, text)
            self.assertIn(k[-4:], text)


class SharedSessions(relaytest.RelayTestCase):
    """Two instances on one Redis: a session placed by one is kept by the other."""

    USE_REDIS = True

    @classmethod
    def setUpClass(cls):
        cls.fake_b, cls.key_b = new_fake(cls)
        super().setUpClass()
        cls.relay.proxy_keys.append(cls.key_b)

    @classmethod
    def relay_env(cls):
        cfg = ("upstream:\n  primary: {name: a}\n  pool:\n"
               "    - {name: b, url: \"%s\", api_key: \"${KEY_B}\"}\n" % cls.fake_b.url)
        return {"RELAY_CONFIG": write_class_config(cls, cfg), "KEY_B": cls.key_b}

    def test_a_session_stays_on_its_upstream_across_instances(self):
        same = {k: self.relay.env[k] for k in ("ADMIN_PASSWORD", "SECRET_KEY")}
        other = self.start_relay(same, data_dir=self.relay.data_dir)
        other.proxy_keys.append(self.key_b)
        key, _ = self.relay.create_key(token_limit=0)
        send = lambda relay, sid=None: relay.json_request(  # noqa: E731
            "POST", "/v1/messages", messages_body(),
            dict({"x-api-key": key}, **({"x-claude-code-session-id": sid} if sid else {})))[0]
        # one: a (round robin), then the session to b
        self.assertEqual(send(self.relay), 200)
        self.assertEqual(send(self.relay, "shared-session"), 200)
        self.assertEqual(served_by({"a": self.fake, "b": self.fake_b}), {"a": 1, "b": 1})
        # the other instance's round robin would start on a: Redis says b
        for _ in range(3):
            self.assertEqual(send(other, "shared-session"), 200)
        self.assertEqual(served_by({"a": self.fake, "b": self.fake_b}), {"a": 1, "b": 4})


class RestUpstreams(relaytest.RelayTestCase):
    """Upstreams made through the admin REST, on PostgreSQL, seen by two instances."""

    STORE = "pg"

    @classmethod
    def setUpClass(cls):
        cls.fake_b, cls.key_b = new_fake(cls)
        super().setUpClass()
        cls.relay.proxy_keys.append(cls.key_b)

    def admin(self, relay, method, path, body=None, want=None):
        st, js, r = relay.json_request(method, path, body, relay.admin_headers())
        self.assertEqual(st, want or (201 if method == "POST" and path == "/admin/upstreams"
                                      else 200), r.body[:300])
        self.assertNotIn(self.key_b, r.text)
        return js

    def same(self, **env):
        """Another instance's environment: the same admin password and SECRET_KEY."""
        e = {k: self.relay.env[k] for k in ("ADMIN_PASSWORD", "SECRET_KEY")}
        e.update(env)
        return e

    def names(self, relay):
        return {u["name"]: u for u in self.admin(relay, "GET", "/admin/upstreams")["items"]}

    def psql(self, sql):
        return subprocess.run(["psql", self.pg.url, "-X", "-q", "-A", "-t", "-c", sql],
                              capture_output=True, text=True, check=True).stdout

    def test_rest_upstreams_persist_are_shared_and_keep_their_key_secret(self):
        js = self.admin(self.relay, "POST", "/admin/upstreams",
                        {"name": "rest-b", "url": self.fake_b.url, "api_key": self.key_b,
                         "weight": 2, "models": ["claude-*"]})
        self.assertEqual((js["source"], js["weight"], js["key_last4"]),
                         ("database", 2, self.key_b[-4:]))
        uid = js["id"]
        other = self.start_relay(self.same())
        other.proxy_keys.append(self.key_b)
        self.assertEqual(self.names(other)["rest-b"]["source"], "database")
        # the primary (anthropic) off on the second instance: rest-b serves its requests
        self.admin(other, "POST", "/admin/upstreams/config:anthropic/disable")
        key, _ = other.create_key(token_limit=0)
        st, _, r = other.json_request("POST", "/v1/messages", messages_body(), {"x-api-key": key})
        self.assertEqual(st, 200, r.body[:300])
        rec = self.fake_b.wait_for_finished(1)[0]
        self.assertEqual(rec["headers"]["x-api-key"], self.key_b)
        # a change on one instance reaches the other
        self.admin(self.relay, "PATCH", "/admin/upstreams/" + uid, {"weight": 5})
        wait_until(lambda: self.names(other)["rest-b"]["weight"] == 5, 15, "the PATCH on both")
        # the key is sealed in the database, and no log line shows it
        dump = self.psql("SELECT row_to_json(u) FROM upstreams u") + self.psql(
            "SELECT row_to_json(a) FROM audit_log a")
        self.assertIn("rest-b", dump)
        self.assertNotIn(self.key_b, dump)
        self.assertIn("v1:", dump)
        self.assertIn("upstream.create", dump)
        self.assertIn("upstream.update", dump)
        for s in (self.relay, other):
            s.assert_no_secrets(extra=(self.key_b,))
        # a restart keeps it
        self.relay.stop()
        self.relay.start()
        self.assertEqual(self.names(self.relay)["rest-b"]["weight"], 5)
        # deleted on one, gone from both
        self.admin(self.relay, "DELETE", "/admin/upstreams/" + uid)
        self.assertNotIn("rest-b", self.names(self.relay))
        wait_until(lambda: "rest-b" not in self.names(other), 15, "the DELETE on both")

    def test_secret_key_rotation_reseals_the_stored_keys(self):
        js = self.admin(self.relay, "POST", "/admin/upstreams",
                        {"name": "rot-b", "url": self.fake_b.url, "api_key": self.key_b})
        old = self.relay.env["SECRET_KEY"]
        new = "rotated-" + secrets.token_urlsafe(24)
        out = self.relay.run("upstreams", "reseal", env={"SECRET_KEY": new,
                                                          "RELAY_OLD_SECRET_KEY": old})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("re-sealed 1 upstream key", out.stdout)
        self.assertNotIn(self.key_b, out.stdout + out.stderr)
        # an instance with the new secret opens the key; one with the old secret leaves it out
        fresh = self.start_relay(self.same(SECRET_KEY=new))
        fresh.proxy_keys.append(self.key_b)
        self.assertIn("rot-b", self.names(fresh))
        stale = self.start_relay(self.same())
        self.assertNotIn("rot-b", self.names(stale))
        stale.wait_for_log("upstreams.unseal_failed", 10)
        self.admin(fresh, "DELETE", "/admin/upstreams/" + js["id"])

    def test_bad_definitions_are_refused(self):
        cases = [({"url": self.fake_b.url, "api_key": "k"}, "name"),
                 ({"name": "x", "api_key": "k"}, "url"),
                 ({"name": "x", "url": self.fake_b.url}, "api_key"),
                 ({"name": "x", "url": self.fake_b.url, "api_key": "k", "weight": 0}, "weight"),
                 ({"name": "x", "url": self.fake_b.url, "api_key": "k", "models": ["a b"]},
                  "models"),
                 ({"name": "x", "url": self.fake_b.url, "api_key": "k", "colour": 1}, "colour"),
                 ({"name": "anthropic", "url": self.fake_b.url, "api_key": "k"}, "exists")]
        for body, word in cases:
            st, js, r = self.relay.json_request("POST", "/admin/upstreams", body,
                                                self.relay.admin_headers())
            self.assertIn(st, (400, 409), r.body[:300])
            self.assertIn(word, js["error"]["message"])
        st, _, _ = self.relay.json_request("GET", "/admin/upstreams")
        self.assertEqual(st, 401)


if __name__ == "__main__":
    relaytest.main()
