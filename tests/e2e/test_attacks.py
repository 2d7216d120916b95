"""Attacks on the relay's keys, admin API and console: guessed proxy keys (looked up once per id,
the guessing address throttled), forged admin JWTs, login lockout per address and per user,
SQL injection and 100 KB values in admin fields, path traversal under /console/, and forged
Host / X-Forwarded-For headers from an untrusted peer."""

import base64
import hashlib
import hmac
import json
import re
import secrets
import time

import relaytest
from relaytest import messages_body, write_class_config


def made_up_key(public_id=None):
    """A well-formed proxy key whose public id no store knows."""
    pid = public_id or secrets.token_hex(6)
    return "sk-proxy-%s_%s" % (pid, secrets.token_urlsafe(32)[:43])


def metric(relay, name):
    """The value of an unlabelled counter on /metrics (0 when absent)."""
    text = relay.request("GET", "/metrics").text
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else 0.0


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(header, claims, secret):
    """A JWT with any header, claims and HS256 signature (secret None: no signature)."""
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = b"" if secret is None else hmac.new(secret.encode(), signing.encode(),
                                               hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def basic(user, password):
    return {"authorization": "Basic " + base64.b64encode(
        ("%s:%s" % (user, password)).encode()).decode()}


class UnknownKeyIds(relaytest.RelayTestCase):
    """A made-up key id reaches the database once a minute, bcrypt never."""

    @classmethod
    def relay_env(cls):
        return {"RELAY_CONFIG": write_class_config(cls, "api_keys:\n  max_invalid_per_ip: 0\n")}

    def test_same_unknown_id_looked_up_once(self):
        before = metric(self.relay, "relay_key_unknown_id_refused_total")
        bcrypt = metric(self.relay, "relay_key_bcrypt_total")
        pid = secrets.token_hex(6)
        bodies = set()
        for _ in range(10):
            st, js, r = self.relay.json_request("POST", "/v1/messages", messages_body(),
                                                {"x-api-key": made_up_key(pid)})
            self.assertEqual(st, 401)
            self.assertEqual(js["error"]["type"], "authentication_error")
            bodies.add(r.body)
        self.assertEqual(len(bodies), 1)  # nothing tells a remembered id from a fresh one
        self.assertEqual(metric(self.relay, "relay_key_unknown_id_refused_total") - before, 9)
        self.assertEqual(metric(self.relay, "relay_key_bcrypt_total"), bcrypt)
        self.assertEqual(self.fake.requests(), [])


class KeyGuessing(relaytest.RelayTestCase):
    """Five invalid keys from one address block it (for keys not already verified)."""

    @classmethod
    def relay_env(cls):
        return {"RELAY_CONFIG": write_class_config(cls, "api_keys:\n  max_invalid_per_ip: 5\n")}

    def send(self, key, headers=None):
        h = {"x-api-key": key}
        h.update(headers or {})
        return self.relay.json_request("POST", "/v1/messages", messages_body(), h)

    def test_guessing_address_gets_429_and_known_keys_still_pass(self):
        used, _ = self.relay.create_key()
        fresh, _ = self.relay.create_key()
        self.assertEqual(self.send(used)[0], 200)  # verified: now in the cache
        for _ in range(5):
            self.assertEqual(self.send(made_up_key())[0], 401)
        # Forged X-Forwarded-For from an untrusted peer changes nothing.
        for h in ({}, {"x-forwarded-for": "203.0.113.%d" % secrets.randbelow(250)},
                  {"x-real-ip": "198.51.100.3"}):
            st, js, r = self.send(made_up_key(), h)
            self.assertEqual(st, 429, r.body)
            self.assertEqual(js["type"], "error")
            self.assertEqual(js["error"]["type"], "rate_limit_error")
            self.assertIn("too many invalid API keys", js["error"]["message"])
            self.assertTrue(1 <= int(r.header("retry-after")) <= 60)
        # A real key not yet verified would cost bcrypt: refused too, until the block ends.
        self.assertEqual(self.send(fresh)[0], 429)
        # The key verified before the block still works.
        self.assertEqual(self.send(used)[0], 200)
        self.assertGreaterEqual(metric(self.relay, "relay_key_guessing_throttled_total"), 4)
        # The usage API is behind the same guard.
        st, js, _ = self.relay.json_request("GET", "/api/usage", headers={"x-api-key": fresh})
        self.assertEqual(st, 429)


class AdminTokens(relaytest.RelayTestCase):
    """Forged admin JWTs: none of them opens the admin API."""

    def assert_refused(self, token, what):
        st, js, r = self.relay.json_request("GET", "/admin/api-keys",
                                            headers={"authorization": "Bearer " + token})
        self.assertEqual(st, 401, "%s: %r" % (what, r.body))
        self.assertEqual(js["type"], "error")
        self.assertEqual(js["error"]["type"], "authentication_error")

    def test_forged_tokens_refused(self):
        secret = self.relay.env["SECRET_KEY"]
        now = int(time.time())
        good = {"sub": "admin", "iat": now, "exp": now + 600}
        hs = {"alg": "HS256", "typ": "JWT"}
        # The harness's own token works, and so does one made here the same way: the forged
        # ones below differ from it in one thing each.
        st, _, _ = self.relay.json_request("GET", "/admin/api-keys",
                                           headers={"authorization": "Bearer " +
                                                    jwt(hs, good, secret)})
        self.assertEqual(st, 200)
        cases = {
            "alg none": jwt({"alg": "none", "typ": "JWT"}, good, None),
            "alg None, signed": jwt({"alg": "None"}, good, secret),
            "alg HS512 header, HS256 signature": jwt({"alg": "HS512"}, good, secret),
            "alg RS256": jwt({"alg": "RS256"}, good, secret),
            "wrong secret": jwt(hs, good, secret + "x"),
            "iat in the future": jwt(hs, dict(good, iat=now + 3600, exp=now + 7200), secret),
            "expired": jwt(hs, dict(good, iat=now - 7200, exp=now - 3600), secret),
            "no exp": jwt(hs, {"sub": "admin", "iat": now}, secret),
            "no sub": jwt(hs, {"iat": now, "exp": now + 600}, secret),
            "not a JWT": "not.a.jwt",
            "empty signature": jwt(hs, good, secret).rsplit(".", 1)[0] + ".",
        }
        for what, token in cases.items():
            with self.subTest(what):
                self.assert_refused(token, what)


class LoginLockout(relaytest.RelayTestCase):
    """Per address (a forged X-Forwarded-For does not reset it) and, behind a trusted proxy,
    per user across addresses."""

    @classmethod
    def relay_env(cls):
        return {"RELAY_CONFIG": write_class_config(
            cls, "admin:\n  login_max_failures: 3\n  login_max_failures_per_user: 6\n")}

    def test_lockout_per_address_not_reset_by_forged_headers(self):
        for i in range(3):
            st, _, _ = self.relay.json_request(
                "POST", "/admin/login", headers=dict(basic("admin", "wrong-%d" % i),
                                                     **{"x-forwarded-for": "10.0.0.%d" % i}))
            self.assertEqual(st, 401)
        st, js, r = self.relay.json_request(
            "POST", "/admin/login", headers=dict(basic("admin", self.relay.env["ADMIN_PASSWORD"]),
                                                 **{"x-forwarded-for": "10.0.0.99"}))
        self.assertEqual(st, 429, r.body)
        self.assertEqual(js["error"]["type"], "rate_limit_error")

    def test_lockout_per_user_across_addresses(self):
        cfg = "server:\n  trusted_proxies: [\"127.0.0.1\"]\nadmin:\n  login_max_failures: 3\n" \
              "  login_max_failures_per_user: 6\n"
        relay = self.start_relay({"RELAY_CONFIG": write_class_config(type(self), cfg)})
        for i in range(6):  # each address fails twice at most: never locked by address
            st, _, _ = relay.json_request(
                "POST", "/admin/login", headers=dict(basic("admin", "wrong"),
                                                     **{"x-forwarded-for": "10.1.0.%d" % (i // 2)}))
            self.assertEqual(st, 401)
        st, js, r = relay.json_request(
            "POST", "/admin/login", headers=dict(basic("admin", relay.env["ADMIN_PASSWORD"]),
                                                 **{"x-forwarded-for": "10.1.9.9"}))
        self.assertEqual(st, 429, r.body)
        self.assertIn("try again in", js["error"]["message"])
        relay.wait_for_log("auth.login_user_locked")


INJECTIONS = ["'; DROP TABLE api_keys; --", "\" OR \"1\"=\"1", "x' UNION SELECT key_hash FROM "
              "api_keys --", "1; DELETE FROM usage_logs", "\\'; SELECT pg_sleep(5); --",
              "%27%20OR%201%3D1", "admin'--", "\x00"]
BIG = "A" * 100 * 1024


class AdminInputs(relaytest.RelayTestCase):
    """Every admin field takes injection strings and 100 KB values as text or refuses them
    with 400, and the database is whole afterwards."""

    @classmethod
    def relay_env(cls):
        return {"RELAY_CONFIG": write_class_config(
            cls, "server:\n  max_body_size: 1MB\napi_keys:\n  bcrypt_cost: 4\n")}

    def setUp(self):
        super().setUp()
        self.h = self.relay.admin_headers()

    def call(self, method, path, body=None):
        st, js, r = self.relay.json_request(method, path, body, self.h)
        self.assertIn(st, (200, 201, 400, 404), "%s %s: %d %r" % (method, path, st, r.body[:200]))
        if st >= 400:
            self.assertEqual(js["type"], "error")
            self.assertNotIn(b"SQL", r.body.upper().replace(b"SQLI", b""))  # no driver errors
        return st, js

    def values(self):
        return INJECTIONS + [BIG]

    def test_key_fields(self):
        text_fields = ("name", "description")
        other = ("rate_limit_tier", "allowed_ips", "allowed_origins", "allowed_models",
                 "metadata", "token_limit", "expires_at", "cost_limit", "model_cost_limits")
        for v in self.values():
            for f in text_fields:
                st, js = self.call("POST", "/admin/api-keys", {"name": "n", f: v})
                if st == 200 or st == 201:
                    self.relay.proxy_keys.append(js["api_key"])
                    got = self.relay.json_request("GET", "/admin/api-keys/" + js["id"],
                                                  headers=self.h)[1]
                    self.assertEqual(got[f], v)  # stored as text, byte for byte
            for f in other:
                for val in (v, [v], {"k": v}):
                    self.call("POST", "/admin/api-keys", {"name": "n", f: val})
        key, obj = self.relay.create_key(name="target")
        for v in self.values():
            for f in text_fields + other:
                self.call("PATCH", "/admin/api-keys/" + obj["id"], {f: v})
        for v in INJECTIONS:
            q = relaytest.quote(v, safe="")
            for path in ("/admin/api-keys/" + q, "/admin/api-keys?skip=" + q,
                         "/admin/api-keys?limit=" + q, "/admin/api-keys?status=" + q,
                         "/admin/audit-log?skip=" + q, "/admin/rate-limit-tiers/" + q):
                self.call("GET", path)
        self.assert_database_whole(key, obj)

    def test_tier_and_pricing_fields(self):
        for v in self.values():
            q = relaytest.quote(v[:300], safe="")
            self.call("PUT", "/admin/rate-limit-tiers/" + q, {"requests": 5, "period": 60})
            self.call("PUT", "/admin/rate-limit-tiers/t1", {"requests": v, "period": v})
            self.call("PUT", "/admin/pricing", {"prices": [{"model_prefix": v, "input": 1,
                                                            "output": 1}], "default": v})
            st, _, _ = self.relay.json_request("POST", "/admin/login",
                                               headers=basic(v[:200], v[:200]))
            self.assertIn(st, (400, 401, 429))
        st, tiers, _ = self.relay.json_request("GET", "/admin/rate-limit-tiers", headers=self.h)
        self.assertEqual(st, 200)
        self.assertIn("basic", [t["name"] for t in tiers])

    def assert_database_whole(self, key, obj):
        st, js, _ = self.relay.json_request("GET", "/admin/api-keys?limit=1000", headers=self.h)
        self.assertEqual(st, 200)
        self.assertGreaterEqual(js["total"], 1)
        self.assertIn(obj["id"], [k["id"] for k in js["items"]])
        st, _, _ = self.relay.json_request("POST", "/v1/messages", messages_body(),
                                           {"x-api-key": key})
        self.assertEqual(st, 200)


class Traversal(relaytest.RelayTestCase):
    """Nothing outside the console's own files is served under /console/, however encoded."""

    def test_console_paths(self):
        index = self.relay.request("GET", "/console/").body
        self.assertIn(b"<html", index.lower())
        paths = ["/console/../admin/api-keys", "/console/..%2fadmin%2fapi-keys",
                 "/console/%2e%2e/%2e%2e/etc/passwd", "/console/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                 "/console/..%5c..%5cetc%5cpasswd", "/console/..\\..\\etc\\passwd",
                 "/console/....//....//etc/passwd", "/console/%252e%252e/etc/passwd",
                 "/console/./index.html/..", "/console//etc/passwd", "/console/%00index.html",
                 "/console/index.html%00.txt", "/console/app.js/../../admin/api-keys",
                 "/console/..;/admin/api-keys", "/console\\..\\admin\\api-keys"]
        for p in paths:
            with self.subTest(p):
                c = relaytest.RawConnection(self.relay.port)
                self.addCleanup(c.close)
                c.send(relaytest.raw_http_request("GET", p, "x", {"Connection": "close"}))
                out = c.recv_all(10)
                status = int(out.split(b" ", 2)[1])
                body = out.partition(b"\r\n\r\n")[2]
                self.assertIn(status, (400, 401, 404), out[:300])
                self.assertNotIn(b"root:", body)
                self.assertNotIn(b'"items"', body)
                self.assertNotIn(b"<html", body.lower())


class ForgedHeaders(relaytest.RelayTestCase):
    """An untrusted peer's Host and X-Forwarded-* change no address the relay acts on."""

    def test_forwarded_headers_and_host_ignored(self):
        key, obj = self.relay.create_key(allowed_ips=["10.9.9.9"])
        forged = {"x-api-key": key, "host": "10.9.9.9", "x-forwarded-for": "10.9.9.9",
                  "x-real-ip": "10.9.9.9", "x-forwarded-host": "admin.internal",
                  "forwarded": "for=10.9.9.9"}
        st, js, _ = self.relay.json_request("POST", "/v1/messages", messages_body(), forged)
        self.assertEqual(st, 403)  # the allowlist saw 127.0.0.1, not the forged address
        self.assertEqual(js["error"]["type"], "permission_error")
        open_key, open_obj = self.relay.create_key()
        forged["x-api-key"] = open_key
        st, _, _ = self.relay.json_request("POST", "/v1/messages", messages_body(), forged)
        self.assertEqual(st, 200)
        rec = self.fake.wait_for_finished(1)[0]
        self.assertNotEqual(rec["headers"].get("host"), "10.9.9.9")  # Host is the upstream's
        rows = self.wait_usage_rows(open_obj["id"], 1)
        self.assertEqual(rows[-1]["client_ip"], "127.0.0.1")


if __name__ == "__main__":
    relaytest.main()
