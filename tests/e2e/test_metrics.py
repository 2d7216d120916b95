"""End-to-end: GET /metrics through relay-server and the fake upstream — exact counters after
known traffic, access control, the key label switch, and `promtool check metrics` on the output.
On SQLite, and PostgreSQL when RELAY_TEST_PG_URL is set."""

import os
import re
import shutil
import subprocess
import tempfile

import relaytest
from relaytest import RelayTestCase, both_stores, messages_body

TOKEN = "metrics-test-token-0123456789"


def write_config(text):
    d = tempfile.mkdtemp(prefix="relaytest-metrics-")
    path = os.path.join(d, "config.yaml")
    with open(path, "w") as f:
        f.write("database:\n  auto_migrate: true\n" + text)
    return path


def parse(text):
    """{(name, frozenset(labels.items())): value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        assert m, "bad sample line: %r" % line
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
    return out


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


class MetricsBase(RelayTestCase):
    CONFIG = ""

    @classmethod
    def relay_env(cls):
        if "cfg_path" not in cls.__dict__:
            cls.cfg_path = write_config(cls.CONFIG)
        return {"RELAY_CONFIG": cls.cfg_path}

    def scrape(self, headers=None):
        r = self.relay.request("GET", "/metrics", headers=headers)
        self.assertEqual(r.status, 200, r.body[:300])
        self.assertTrue(r.header("content-type", "").startswith("text/plain"))
        return r.text

    def promtool(self, text):
        exe = shutil.which("promtool")
        if not exe:
            self.fail("promtool not found: apt-get install prometheus (scripts/deps.sh --test)")
        p = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, "promtool: %s%s" % (p.stdout, p.stderr))


@both_stores
class MetricsTest(MetricsBase):
    CONFIG = ("monitoring:\n  metrics:\n    token: %s\n    key_label: name\n" % TOKEN)

    def auth(self):
        return {"authorization": "Bearer " + TOKEN}

    def test_access_needs_token(self):
        r = self.relay.request("GET", "/metrics")
        self.assertEqual(r.status, 401)
        r = self.relay.request("GET", "/metrics", headers={"authorization": "Bearer wrong"})
        self.assertEqual(r.status, 401)
        self.assertNotIn(TOKEN, r.text)
        self.scrape(self.auth())

    def test_counters_after_known_traffic(self):
        key, obj = self.relay.create_key(name="metrics-e2e")
        h = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        self.fake.set_usage(input_tokens=11, output_tokens=7, cache_creation_input_tokens=5,
                            ephemeral_5m_input_tokens=5, cache_read_input_tokens=3)
        before = parse(self.scrape(self.auth()))
        for _ in range(3):
            self.assertEqual(self.relay.request("POST", "/v1/messages", messages_body(max_tokens=8), h).status, 200)
        with self.relay.stream("POST", "/v1/messages", messages_body(stream=True, max_tokens=8), h) as s:
            s.read_all()
        self.fake.fail_next(1, 529)  # one retry, then 200
        self.assertEqual(self.relay.request("POST", "/v1/messages", messages_body(max_tokens=8), h).status, 200)
        # Unknown model: costs 0 and is counted.
        self.assertEqual(self.relay.request("POST", "/v1/messages",
                                            messages_body(model="gpt-unknown-1", max_tokens=8), h).status, 200)
        self.assertEqual(self.relay.request("POST", "/v1/messages", messages_body(),
                                            {"x-api-key": "sk-proxy-nope_nope"}).status, 401)
        self.assertEqual(self.relay.request("POST", "/v1/messages", messages_body()).status, 401)

        text = self.scrape(self.auth())
        self.promtool(text)
        m = parse(text)

        def delta(name, **labels):
            return sample(m, name, **labels) - sample(before, name, **labels)

        self.assertEqual(delta("relay_requests_total", status="200", route="messages"), 6)
        self.assertEqual(delta("relay_requests_total", status="401", route="messages"), 2)
        self.assertEqual(delta("tokens_used_total", type="input", key="metrics-e2e"), 66)
        self.assertEqual(delta("tokens_used_total", type="output", key="metrics-e2e"), 42)
        self.assertEqual(delta("tokens_used_total", type="cache_creation", key="metrics-e2e"), 30)
        self.assertEqual(delta("tokens_used_total", type="cache_read", key="metrics-e2e"), 18)
        self.assertEqual(delta("proxy_duration_seconds_count", route="messages"), 6)
        self.assertEqual(delta("relay_time_to_first_byte_seconds_count", route="messages"), 6)
        self.assertEqual(delta("proxy_duration_seconds_bucket", route="messages", le="+Inf"), 6)
        self.assertEqual(delta("relay_upstream_retries_total"), 1)
        self.assertEqual(delta("relay_unpriced_requests_total", model="gpt-unknown-1"), 1)
        self.assertEqual(delta("relay_auth_failures_total", reason="invalid"), 1)
        self.assertEqual(delta("relay_auth_failures_total", reason="missing"), 1)
        # Cost: per key, the same USD the usage rows carry (the unpriced model at the default).
        def billed():
            st, js, _ = self.relay.json_request("GET", "/admin/api-keys/%s/usage" % obj["id"],
                                                None, self.relay.admin_headers())
            return js if st == 200 and js["total_requests"] >= 6 else None
        summary = relaytest.wait_until(billed, 10, "the usage rows")
        self.assertGreater(summary["total_cost"], 0)
        self.assertAlmostEqual(delta("relay_cost_usd_total", key="metrics-e2e"),
                               summary["total_cost"], places=6)
        self.assertEqual(sample(m, "relay_active_streams"), 0)
        self.assertEqual(sample(m, "relay_database_up"), 1)
        self.assertEqual(sample(m, "relay_redis_configured"), 1 if self.USE_REDIS else 0)
        self.assertEqual(sample(m, "relay_usage_write_drops_total"), 0)
        self.assertIn(("relay_usage_write_queue_depth", frozenset()), m)
        # 1000000 default limit: 6 requests of 26 tokens.
        self.assertAlmostEqual(sample(m, "token_quota_usage_ratio", key="metrics-e2e"), 156 / 1e6)
        for name in ("relay_rate_limited_total", "relay_build_info"):
            self.assertIn("# TYPE %s " % name, text)
        # The buckets reach 10 minutes for long streams.
        self.assertIn('proxy_duration_seconds_bucket{route="messages",le="600"}', text)
        self.assertNotIn(key, text)

    def test_rate_limited_reasons(self):
        key, _ = self.relay.create_key(name="metrics-quota", token_limit=1)
        h = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        before = parse(self.scrape(self.auth()))
        self.fake.set_usage(input_tokens=5, output_tokens=5)
        codes = [self.relay.request("POST", "/v1/messages", messages_body(max_tokens=8), h).status
                 for _ in range(2)]
        self.assertIn(429, codes)
        m = parse(self.scrape(self.auth()))
        refused = sum(1 for c in codes if c == 429)
        self.assertEqual(sample(m, "relay_rate_limited_total", reason="quota")
                         - sample(before, "relay_rate_limited_total", reason="quota"), refused)


class MetricsKeyLabelOffTest(MetricsBase):
    CONFIG = "monitoring:\n  metrics:\n    key_label: \"off\"\n    allowed_ips: [127.0.0.1]\n"

    def test_no_key_label(self):
        key, _ = self.relay.create_key(name="hidden-key-name")
        h = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        self.fake.set_usage(input_tokens=4, output_tokens=2)
        self.assertEqual(self.relay.request("POST", "/v1/messages", messages_body(max_tokens=8), h).status, 200)
        text = self.scrape()
        self.promtool(text)
        self.assertNotIn("hidden-key-name", text)
        self.assertNotIn("key=", text)
        m = parse(text)
        self.assertEqual(sample(m, "tokens_used_total", type="input"), 4)
        self.assertNotIn("token_quota_usage_ratio{", text)


if __name__ == "__main__":
    relaytest.main()
