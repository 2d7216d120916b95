"""End-to-end: the server shell (issue 2): first start, /health, migrate, configuration errors,
graceful stop, and the Anthropic error shape of the relay's own errors."""

import json
import os
import signal
import subprocess
import time
import unittest

import relaytest
from relaytest import RelayServer, messages_body, wait_until


class TestFirstStart(unittest.TestCase):
    def setUp(self):
        if not relaytest.server_bin():
            self.skipTest("RELAY_SERVER_BIN unset")

    def test_generates_admin_password_and_secret_once(self):
        s = RelayServer(env={"ADMIN_PASSWORD": None, "SECRET_KEY": None})
        try:
            s.start()
            line = s.wait_for_log("Generated admin password", stream="stdout")
            password = line.rsplit(": ", 1)[1].strip()
            self.assertGreaterEqual(len(password), 16)
            secret_file = os.path.join(s.data_dir, "secret_key")
            self.assertEqual(os.stat(secret_file).st_mode & 0o777, 0o600)
            # The generated password logs in; the log never shows it.
            s.env["ADMIN_PASSWORD"] = password
            token = s.admin_token()
            self.assertTrue(token)
            self.assertEqual(relaytest.find_secrets(s.stderr_lines(), [password]), [])
            self.assertEqual(s.stop(), 0)
            # The database keeps only a hash of it.
            with open(os.path.join(s.data_dir, "relay.db"), "rb") as f:
                self.assertNotIn(password.encode(), f.read())
            # Second start: nothing generated or printed again, the same password still works.
            s2 = RelayServer(env={"ADMIN_PASSWORD": None, "SECRET_KEY": None},
                             data_dir=s.data_dir)
            try:
                s2.start()
                s2.env["ADMIN_PASSWORD"] = password
                self.assertTrue(s2.admin_token())
                self.assertFalse([l for l in s2.stdout_lines() if "Generated" in l])
            finally:
                s2.cleanup()
        finally:
            s.cleanup()


class TestShell(relaytest.RelayTestCase):
    def test_health(self):
        st, js, _ = self.relay.json_request("GET", "/health")
        self.assertEqual(st, 200)
        self.assertEqual(js["status"], "ok")
        self.assertEqual(js["database"], "ok")
        self.assertEqual(js["redis"], "disabled")
        self.assertRegex(js["version"], r"^\d+\.\d+\.\d+")

    def test_relay_routes_answer_anthropic_errors(self):
        st, js, _ = self.relay.json_request("GET", "/api/nothing-here")
        self.assertEqual(st, 404)
        self.assertEqual(js["type"], "error")
        self.assertEqual(js["error"]["type"], "not_found_error")
        st, js, _ = self.relay.json_request("GET", "/admin/no-such-route",
                                            headers=self.relay.admin_headers())
        self.assertEqual(st, 404)
        self.assertEqual(js["error"]["type"], "not_found_error")

    def test_version_and_help(self):
        out = self.relay.run("version")
        self.assertEqual(out.returncode, 0)
        self.assertRegex(out.stdout, r"^relay-server \d+\.\d+\.\d+")
        out = self.relay.run("--help")
        self.assertEqual(out.returncode, 0)
        self.assertIn("migrate up | down [N] | status", out.stdout)
        out = self.relay.run("frobnicate")
        self.assertEqual(out.returncode, 2)

    def test_json_logs_one_object_per_line(self):
        recs = self.relay.log_records()
        self.assertTrue(recs)
        started = [r for r in recs if r.get("event") == "server.started"]
        self.assertEqual(len(started), 1)
        for r in recs:
            self.assertIn("level", r)
            self.assertIn("ts", r)

    def test_sigterm_finishes_in_flight_stream_and_flushes(self):
        relay = self.start_relay()
        key, obj = relay.create_key()
        self.fake.set_scenario(deltas=10)
        self.fake.set_delay(per_event_ms=150)
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        with relay.stream("POST", "/v1/messages", messages_body(stream=True), headers) as s:
            it = s.events()
            next(it)
            relay.proc.send_signal(signal.SIGTERM)
            rest = [ev for _, ev in it]
        self.assertEqual(rest[-1]["event"], "message_stop")
        self.assertEqual(relay.proc.wait(30), 0)
        # The usage row was written before exit.
        import sqlite3
        db = sqlite3.connect(os.path.join(relay.data_dir, "relay.db"))
        n = db.execute("SELECT count(*) FROM usage_logs WHERE api_key_id = ?", (obj["id"],)).fetchone()[0]
        db.close()
        self.assertEqual(n, 1)
        # New connections are refused once it is stopping/stopped.
        with self.assertRaises(OSError):
            relaytest.request(relay.port, "GET", "/health", timeout=2)


class TestReadmeAndCli(relaytest.RelayTestCase):
    """The README's curl examples work verbatim (with the port and password filled in), and the
    key CLI creates a usable key without HTTP."""

    def readme_commands(self):
        path = os.path.join(os.environ["RELAY_SOURCE_DIR"], "README.md")
        with open(path) as f:
            text = f.read()
        block = text.split("Log in as admin", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
        return block.replace("\\\n", " ").strip().splitlines()

    def test_readme_login_and_key_creation(self):
        lines = self.readme_commands()
        login = [l for l in lines if "/admin/login" in l][0]
        create = [l for l in lines if "/admin/api-keys" in l][0]
        port = str(self.relay.port)
        login = login.replace("localhost:8000", "localhost:" + port).replace(
            "PASSWORD", self.relay.env["ADMIN_PASSWORD"])
        out = subprocess.run(["bash", "-c", login], capture_output=True, text=True, timeout=30)
        token = json.loads(out.stdout)["access_token"]
        create = create.replace("localhost:8000", "localhost:" + port)
        out = subprocess.run(["bash", "-c", create], capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, TOKEN=token))
        js = json.loads(out.stdout)
        self.relay.proxy_keys.append(js["api_key"])
        self.assertTrue(js["api_key"].startswith("sk-proxy-"))
        self.assertEqual((js["name"], js["token_limit"], js["rate_limit_tier"]), ("alice", 1000000, "basic"))

    def test_keys_cli_create_and_list(self):
        out = self.relay.run("keys", "create", "--name", "cli-key", "--token-limit", "5000",
                             "--tier", "premium")
        self.assertEqual(out.returncode, 0, out.stderr)
        key = [l for l in out.stdout.splitlines() if "API key" in l][0].rsplit(" ", 1)[1]
        self.relay.proxy_keys.append(key)
        r = self.relay.request("POST", "/v1/messages", messages_body(),
                               {"x-api-key": key, "anthropic-version": "2023-06-01"})
        self.assertEqual(r.status, 200, r.body)
        out = self.relay.run("keys", "list")
        self.assertEqual(out.returncode, 0, out.stderr)
        row = [l for l in out.stdout.splitlines() if "cli-key" in l][0]
        self.assertIn("premium", row)
        self.assertIn("5000", row)
        self.assertNotIn(key.split("_", 1)[1], out.stdout)
        out = self.relay.run("keys", "create", "--name", "x", "--tier", "gold")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("tier", out.stderr)


class TestCors(relaytest.RelayTestCase):
    """security.cors: preflights answered by the relay, Access-Control-* on every answer."""

    @classmethod
    def relay_env(cls):
        cfg = os.path.join(relaytest.tempfile.mkdtemp(prefix="relaytest-cors-"), "cors.yaml")
        with open(cfg, "w") as f:
            f.write('security:\n  cors:\n    enabled: true\n'
                    '    allow_origins: ["https://app.example.com"]\n'
                    '    allow_headers: ["x-api-key", "content-type", "anthropic-version"]\n'
                    '    max_age: 120\n')
        return {"RELAY_CONFIG": cfg}

    def test_preflight_is_answered_locally(self):
        r = self.relay.request("OPTIONS", "/v1/messages", headers={
            "origin": "https://app.example.com", "access-control-request-method": "POST",
            "access-control-request-headers": "x-api-key, content-type"})
        self.assertEqual(r.status, 204)
        self.assertEqual(r.header("access-control-allow-origin"), "https://app.example.com")
        self.assertIn("POST", r.header("access-control-allow-methods"))
        self.assertEqual(r.header("access-control-allow-headers"),
                         "x-api-key, content-type, anthropic-version")
        self.assertEqual(r.header("access-control-max-age"), "120")
        self.assertEqual(self.fake.requests(), [])

    def test_answers_carry_the_headers_for_allowed_origins_only(self):
        key, _ = self.relay.create_key()
        h = {"origin": "https://app.example.com", "x-api-key": key,
             "anthropic-version": "2023-06-01"}
        r = self.relay.request("POST", "/v1/messages", messages_body(), h)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("access-control-allow-origin"), "https://app.example.com")
        self.assertIn("request-id", r.header("access-control-expose-headers"))
        r = self.relay.request("GET", "/health", headers={"origin": "https://evil.example.net"})
        self.assertIsNone(r.header("access-control-allow-origin"))
        r = self.relay.request("OPTIONS", "/v1/messages", headers={
            "origin": "https://evil.example.net", "access-control-request-method": "POST"})
        self.assertIsNone(r.header("access-control-allow-origin"))

    def test_off_by_default(self):
        relay = self.start_relay({"RELAY_CONFIG": None})
        r = relay.request("GET", "/health", headers={"origin": "https://app.example.com"})
        self.assertIsNone(r.header("access-control-allow-origin"))


class TestConfig(unittest.TestCase):
    def setUp(self):
        if not relaytest.server_bin():
            self.skipTest("RELAY_SERVER_BIN unset")
        self.s = RelayServer()
        self.addCleanup(self.s.cleanup)

    def write(self, name, text):
        path = os.path.join(self.s.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_bad_config_fails_with_file_line_and_key(self):
        path = self.write("config.yaml", "rate_limit:\n  by_tier:\n    basic:\n"
                                         "      requests: lots\n      period: 60\n")
        out = self.s.run("--check-config", "--config", path)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("config.yaml:4: rate_limit.by_tier.basic.requests:", out.stderr)
        # serve refuses to start with it too
        out = self.s.run("serve", "--config", path, timeout=20)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("config.yaml:4", out.stderr)

    def test_original_relay_config_loads_and_check_config_passes(self):
        path = self.write("config.yaml", """
app:
  name: "Claude Proxy"
  debug: false
upstream:
  primary:
    name: anthropic
    url: "https://api.anthropic.com/v1"
    api_key: "${UPSTREAM_API_KEY}"
    timeout: 300
    max_retries: 3
admin:
  username: "${ADMIN_USERNAME:-admin}"
  password: "${ADMIN_PASSWORD}"
api_keys:
  prefix: "sk-proxy-"
  default_limit: 1000000
  warning_threshold: 0.8
rate_limit:
  default: {requests: 100, period: 60}
  by_tier:
    basic: {requests: 100, period: 60}
    premium: {requests: 1000, period: 60}
    unlimited: {requests: -1, period: 60}
logging:
  level: INFO
monitoring:
  metrics: {enabled: true, path: /metrics}
  health: {path: /health}
security:
  cors:
    enabled: true
    allow_origins: ["*"]
""")
        out = self.s.run("--check-config", "--config", path)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("configuration OK", out.stdout)


class TestMigrateSqlite(unittest.TestCase):
    def setUp(self):
        if not relaytest.server_bin():
            self.skipTest("RELAY_SERVER_BIN unset")
        self.s = RelayServer()
        self.addCleanup(self.s.cleanup)

    def status(self):
        out = self.s.run("migrate", "status")
        self.assertEqual(out.returncode, 0, out.stderr)
        return [line.split()[:3] for line in out.stdout.splitlines() if line.strip()]

    def test_up_down_status(self):
        rows = self.status()
        self.assertGreaterEqual(len(rows), 2)
        self.assertTrue(all(r[2] == "pending" for r in rows))
        out = self.s.run("migrate", "up")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(all(r[2] == "applied" for r in self.status()))
        out = self.s.run("migrate", "down", "1")
        self.assertEqual(out.returncode, 0, out.stderr)
        st = self.status()
        self.assertEqual(st[-1][2], "pending")
        self.assertTrue(all(r[2] == "applied" for r in st[:-1]))
        out = self.s.run("migrate", "down", "99")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(all(r[2] == "pending" for r in self.status()))
        self.assertEqual(self.s.run("migrate", "up").returncode, 0)
        self.assertEqual(self.s.run("migrate", "down", "0").returncode, 2)
        # serve migrates SQLite by itself and answers.
        self.s.start()


class TestPostgres(relaytest.RelayTestCase):
    """PostgreSQL: migrations through the CLI, refusal to serve unmigrated, /health while the
    server is stopped and after it returns."""

    STORE = "pg"
    START_RELAY = False

    def test_migrate_and_refuse_unmigrated(self):
        s = self.new_relay()
        self.assertEqual(s.run("migrate", "down", "99").returncode, 0)
        out = s.run("serve", timeout=30)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("migrat", out.stderr)
        self.assertEqual(s.run("migrate", "up").returncode, 0)
        out = s.run("migrate", "status")
        self.assertTrue(all("applied" in l for l in out.stdout.splitlines() if l.strip()))
        self.assertEqual(s.run("migrate", "down", "1").returncode, 0)
        out = s.run("migrate", "status")
        self.assertIn("pending", out.stdout.splitlines()[-1])
        self.assertEqual(s.run("migrate", "up").returncode, 0)
        s.start()
        st, js, _ = s.json_request("GET", "/health")
        self.assertEqual((st, js["database"]), (200, "ok"))
        s.stop()

    def test_health_reports_a_stopped_database_and_recovers(self):
        pg_dir = os.environ.get("RELAY_TEST_PG_DIR")
        if not pg_dir:
            self.skipTest("RELAY_TEST_PG_DIR unset")
        s = self.new_relay()
        self.assertEqual(s.run("migrate", "up").returncode, 0)
        s.start()
        script = os.path.join(os.environ["RELAY_SOURCE_DIR"], "scripts", "pg-test-server.sh")
        subprocess.run(["bash", script, "stop", pg_dir], check=True, capture_output=True, timeout=60)
        try:
            # Still 200: known keys are served from the cache (database.outage: serve_cached).
            r = wait_until(lambda: (lambda r: r if r.json()["database"] == "down" else None)(
                s.request("GET", "/health", timeout=20)), 30, "health database down")
            self.assertEqual((r.status, r.json()["status"]), (200, "degraded"))
            self.assertIn("database unavailable", r.json()["reason"])
        finally:
            subprocess.run(["bash", script, "restart", pg_dir], check=True, capture_output=True,
                           timeout=60)
        r = wait_until(lambda: (lambda r: r if r.json()["database"] == "ok" else None)(
            s.request("GET", "/health", timeout=20)), 30, "health database ok again")
        self.assertEqual((r.status, r.json()["status"]), (200, "ok"))
        s.stop()


if __name__ == "__main__":
    relaytest.main()
