"""The Grafana dashboard and the Prometheus alert rules in deploy/, against the relay's metrics.

`promtool check rules` on deploy/prometheus/alerts.yml, and `promtool test rules` with series
that must (and must not) fire the quota, usage-drop, upstream-error, database and Redis alerts.
Every query of deploy/grafana/relay-dashboard.json goes through promtool too (as a recording
rule, with Grafana's variables filled in), its panels do not overlap, and every metric name the
dashboard or the alerts use is documented in docs/metrics.md or exported by a live relay-server.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import relaytest

SRC = os.environ.get("RELAY_SOURCE_DIR") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(SRC, "deploy", "grafana", "relay-dashboard.json")
ALERTS = os.path.join(SRC, "deploy", "prometheus", "alerts.yml")
METRICS_DOC = os.path.join(SRC, "docs", "metrics.md")
# Series Prometheus itself makes (the scrape's own).
PROMETHEUS = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan", "le"}
SUFFIXES = ("_bucket", "_sum", "_count")


def promtool():
    exe = shutil.which("promtool")
    if not exe:
        raise AssertionError("promtool not found: apt-get install prometheus (scripts/deps.sh --test)")
    return exe


def metric_names(expr):
    """The metric names an expression reads: identifiers that are not functions, keywords,
    label names (inside {} or by/on (...)), strings or durations."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\{\{[^}]*\}\}", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def family(name):
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def documented():
    with open(METRICS_DOC) as f:
        return set(re.findall(r"`([a-z_][a-z0-9_]*)`", f.read()))


def grafana_to_promql(expr):
    return (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
            .replace("$instance", ".*").replace("$key", ".*"))


def dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def dashboard_exprs():
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def alert_rules():
    import yaml
    with open(ALERTS) as f:
        doc = yaml.safe_load(f)
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


class Rules(unittest.TestCase):
    def test_promtool_check_rules(self):
        r = subprocess.run([promtool(), "check", "rules", ALERTS], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"SUCCESS: \d+ rules found")

    def test_the_alerts_the_issue_asks_for(self):
        rules = alert_rules()
        for name in ("RelayKeyQuotaWarning", "RelayUsageRowsDropped", "RelayUpstreamErrors",
                     "RelayDatabaseDown", "RelayRedisDown"):
            self.assertIn(name, rules)
            self.assertIn("summary", rules[name]["annotations"])
        # the quota alert's threshold is the relay's default warning threshold
        with open(os.path.join(SRC, "config.example.yaml")) as f:
            warn = re.search(r"warning_threshold:\s*([0-9.]+)", f.read()).group(1)
        self.assertIn("> " + warn, rules["RelayKeyQuotaWarning"]["expr"])

    def test_alerts_fire_on_the_right_series(self):
        """promtool test rules: each alert fires on a series that should raise it and stays
        quiet on one that should not (Redis down but not configured, quota below 0.8)."""
        import yaml
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        # The same rules without their annotations, which promtool would compare word for word.
        with open(ALERTS) as f:
            doc = yaml.safe_load(f)
        for g in doc["groups"]:
            for rule in g["rules"]:
                rule.pop("annotations", None)
        with open(os.path.join(d, "rules.yml"), "w") as f:
            json.dump(doc, f)
        tests = {
            "rule_files": ["rules.yml"],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": [
                    {"series": 'token_quota_usage_ratio{instance="a",key="alice"}',
                     "values": "0.85x15"},
                    {"series": 'token_quota_usage_ratio{instance="a",key="bob"}',
                     "values": "0.5x15"},
                    {"series": 'relay_usage_write_drops_total{instance="a"}',
                     "values": "0 0 0 3 3 3 3 3 3 3 3 3 3 3 3 3"},
                    {"series": 'relay_requests_total{instance="a",status="200",route="messages"}',
                     "values": "0+60x15"},
                    {"series": 'relay_requests_total{instance="a",status="529",route="messages"}',
                     "values": "0+30x15"},
                    {"series": 'relay_database_up{instance="a",job="relay"}', "values": "1 1 0x13"},
                    {"series": 'relay_redis_up{instance="a",job="relay"}', "values": "0x15"},
                    {"series": 'relay_redis_configured{instance="a",job="relay"}',
                     "values": "1x15"},
                    {"series": 'relay_redis_up{instance="b",job="relay"}', "values": "0x15"},
                    {"series": 'relay_redis_configured{instance="b",job="relay"}',
                     "values": "0x15"},
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "RelayKeyQuotaWarning", "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "instance": "a", "key": "alice"}}]},
                    {"eval_time": "5m", "alertname": "RelayUsageRowsDropped", "exp_alerts": [
                        {"exp_labels": {"severity": "critical", "instance": "a"}}]},
                    {"eval_time": "1m", "alertname": "RelayUsageRowsDropped", "exp_alerts": []},
                    {"eval_time": "14m", "alertname": "RelayUpstreamErrors", "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "instance": "a"}}]},
                    {"eval_time": "10m", "alertname": "RelayDatabaseDown", "exp_alerts": [
                        {"exp_labels": {"severity": "critical", "instance": "a",
                                        "job": "relay"}}]},
                    {"eval_time": "10m", "alertname": "RelayRedisDown", "exp_alerts": [
                        {"exp_labels": {"severity": "critical", "instance": "a",
                                        "job": "relay"}}]},
                ],
            }],
        }
        path = os.path.join(d, "alerts_test.yml")
        with open(path, "w") as f:
            json.dump(tests, f)  # JSON is YAML
        r = subprocess.run([promtool(), "test", "rules", path], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class Dashboard(unittest.TestCase):
    def test_panels_ids_and_layout(self):
        d = dashboard()
        self.assertEqual(d["uid"], "relay-server")
        ids = [p["id"] for p in d["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        cells = {}
        for p in d["panels"]:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    self.assertNotIn((x, y), cells, "%s overlaps %s" % (p["title"],
                                                                        cells.get((x, y))))
                    cells[(x, y)] = p["title"]
            if p["type"] != "row":
                self.assertTrue(p["targets"], p["title"])

    def test_covers_the_issue_list(self):
        used = set()
        for _, expr in dashboard_exprs():
            used |= metric_names(expr)
        for name in ("relay_requests_total", "proxy_duration_seconds_bucket",
                     "relay_time_to_first_byte_seconds_bucket", "tokens_used_total",
                     "relay_cost_usd_total", "token_quota_usage_ratio", "relay_active_streams",
                     "relay_upstream_up", "relay_usage_write_queue_depth",
                     "relay_usage_write_drops_total"):
            self.assertIn(name, used)

    def test_every_query_is_valid_promql(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        rules = [{"record": "dashboard:query_%d" % i, "expr": grafana_to_promql(e)}
                 for i, (_, e) in enumerate(dashboard_exprs())]
        path = os.path.join(d, "dashboard_rules.yml")
        with open(path, "w") as f:
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        r = subprocess.run([promtool(), "check", "rules", path], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_metric_name_extraction(self):
        self.assertEqual(metric_names(
            'histogram_quantile(0.99, sum by (le, result) (rate(relay_key_verify_seconds_bucket'
            '{instance=~"$instance",key!~"x y"}[$__rate_interval]))) / on (instance) up'),
            {"relay_key_verify_seconds_bucket", "up"})


@unittest.skipUnless(relaytest.server_bin(), "RELAY_SERVER_BIN unset")
class NamesExist(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        s = relaytest.RelayServer()
        s.start()
        try:
            text = s.request("GET", "/metrics").text
        finally:
            s.stop()
        cls.live = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
        cls.docs = documented()

    def check(self, where, exprs):
        self.assertTrue(self.live, "no # TYPE lines in /metrics")
        for title, expr in exprs:
            for name in metric_names(expr):
                fam = family(name)
                known = fam in self.docs or fam in self.live or name in PROMETHEUS
                self.assertTrue(known,
                                "%s %r: %s is neither in docs/metrics.md nor in /metrics"
                                % (where, title, name))

    def test_dashboard_names(self):
        self.check("panel", dashboard_exprs())

    def test_alert_names(self):
        self.check("alert", [(n, r["expr"]) for n, r in alert_rules().items()])

    def test_new_families_are_live_and_documented(self):
        for name in ("relay_cost_usd_total", "relay_database_up", "relay_redis_configured"):
            self.assertIn(name, self.live)
            self.assertIn(name, self.docs)


if __name__ == "__main__":
    relaytest.main()
