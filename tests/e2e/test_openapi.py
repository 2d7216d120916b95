"""docs/openapi.yaml against the server: the same routes both ways, and real answers valid.

Routes: `relay-server routes` prints what the server registers (its own routes and librelay's
REST tables, the same tables dispatch reads); the document's paths and methods must be exactly
those, plus the forwarded /v1 routes it marks `x-relay-proxied`. Schemas: every schema is valid
JSON Schema 2020-12 and every $ref resolves; then a real relay-server (SQLite, fake upstream)
answers a request to every documented operation, successes and errors, and each JSON answer is
validated against the schema of its documented status (a status the document does not list for
that operation is a failure too). Every operation must have had at least one 2xx answer checked.
Needs python3-yaml and python3-jsonschema (scripts/deps.sh --test).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import relaytest
from relaytest import messages_body, wait_until

SRC = os.environ.get("RELAY_SOURCE_DIR") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))
SPEC_PATH = os.path.join(SRC, "docs", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

try:
    import jsonschema
    import yaml
except ImportError as e:  # pragma: no cover - depends on the machine
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != \
            os.path.realpath("/usr/bin/python3") and not os.environ.get("RELAY_OPENAPI_REEXEC"):
        os.environ["RELAY_OPENAPI_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3", "-u"] + sys.argv)
    print("SKIP: %s (apt-get install python3-yaml python3-jsonschema)" % e, flush=True)
    sys.exit(77)


def load_spec():
    with open(SPEC_PATH) as f:
        return yaml.safe_load(f)


SPEC = load_spec()


def operations(spec, proxied=None):
    """{(METHOD, path)} of the document; proxied=False/True keeps only those (not) marked."""
    out = set()
    for path, item in spec["paths"].items():
        if proxied is not None and bool(item.get("x-relay-proxied")) != proxied:
            continue
        out |= {(m.upper(), path) for m in METHODS if m in item}
    return out


def pattern_regex(path):
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "/?$")


PATTERNS = [(pattern_regex(p), p) for p in SPEC["paths"]]


def pattern_of(path):
    """The document path a concrete request path falls under (literal paths win)."""
    hits = [p for rx, p in PATTERNS if rx.match(path.split("?")[0])]
    hits.sort(key=lambda p: p.count("{"))
    return hits[0] if hits else None


def resolve(ref):
    node = SPEC
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def all_refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from all_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from all_refs(v)


def validator_for(schema):
    # The response schema inside a root that carries the components, so its #/components refs
    # resolve against this document.
    root = {"components": SPEC["components"], "allOf": [schema]}
    return jsonschema.Draft202012Validator(root)


def response_for(method, path, status):
    op = SPEC["paths"][path][method.lower()]
    resp = op["responses"].get(str(status)) or op["responses"].get("default")
    if resp and "$ref" in resp:
        resp = resolve(resp["$ref"])
    return resp


class Document(unittest.TestCase):
    def test_openapi_31_and_security_schemes(self):
        self.assertEqual(SPEC["openapi"], "3.1.0")
        schemes = SPEC["components"]["securitySchemes"]
        self.assertEqual(schemes["adminJwt"], {**schemes["adminJwt"], "type": "http",
                                               "scheme": "bearer", "bearerFormat": "JWT"})
        self.assertEqual((schemes["proxyKey"]["in"], schemes["proxyKey"]["name"]),
                         ("header", "x-api-key"))
        self.assertEqual(schemes["proxyKeyBearer"]["scheme"], "bearer")
        self.assertEqual(SPEC["security"], [{"adminJwt": []}])

    def test_refs_resolve_and_schemas_are_valid(self):
        for ref in set(all_refs(SPEC)):
            self.assertTrue(ref.startswith("#/"), ref)
            resolve(ref)  # KeyError names the broken one
        for name, schema in SPEC["components"]["schemas"].items():
            jsonschema.Draft202012Validator.check_schema(schema)

    def test_path_parameters_declared(self):
        for path, item in SPEC["paths"].items():
            names = set(re.findall(r"\{([^}]+)\}", path))
            for m in METHODS:
                if m not in item:
                    continue
                params = item.get("parameters", []) + item[m].get("parameters", [])
                params = [resolve(p["$ref"]) if "$ref" in p else p for p in params]
                declared = {p["name"] for p in params if p["in"] == "path"}
                self.assertEqual(declared, names, "%s %s" % (m, path))
                self.assertIn("responses", item[m])

    def test_validates_with_openapi_spec_validator_when_installed(self):
        try:
            from openapi_spec_validator import validate
        except ImportError:
            self.skipTest("openapi-spec-validator not installed")
        validate(SPEC)

    def test_error_schema_is_anthropics(self):
        v = validator_for({"$ref": "#/components/schemas/Error"})
        v.validate({"type": "error", "error": {"type": "api_error", "message": "x"}})
        self.assertFalse(v.is_valid({"error": {"type": "api_error", "message": "x"}}))
        self.assertFalse(v.is_valid({"type": "error", "error": {"type": "api_error"}}))


@unittest.skipUnless(relaytest.server_bin(), "RELAY_SERVER_BIN unset")
class Routes(unittest.TestCase):
    def test_document_and_server_list_the_same_routes(self):
        cwd = tempfile.mkdtemp()  # no .env or config.yaml of the source tree
        self.addCleanup(shutil.rmtree, cwd, True)
        env = {k: os.environ[k] for k in relaytest.PASS_ENV if k in os.environ}
        r = subprocess.run([relaytest.server_bin(), "routes"], capture_output=True, text=True,
                           timeout=60, cwd=cwd, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        served = {tuple(line.split(" ", 1)) for line in r.stdout.splitlines() if line}
        self.assertGreater(len(served), 20)
        documented = operations(SPEC, proxied=False)
        self.assertEqual(sorted(served - documented), [], "served but not in docs/openapi.yaml")
        self.assertEqual(sorted(documented - served), [], "in docs/openapi.yaml but not served")
        for _, path in operations(SPEC, proxied=True):
            self.assertTrue(path.startswith("/v1/"), path)


class ConsoleDisabled(relaytest.RelayTestCase):
    """console.enabled: false takes /console off the server and off the route list."""

    @classmethod
    def relay_env(cls):
        return {"RELAY_CONFIG": relaytest.write_class_config(cls, "console:\n  enabled: false\n")}

    def test_console_answers_404_and_is_not_listed(self):
        for path in ("/console", "/console/", "/console/app.js"):
            st, js, _ = self.relay.json_request("GET", path)
            self.assertEqual(st, 404, path)
            self.assertEqual(js["error"]["type"], "not_found_error")
        self.assertEqual(self.relay.request("GET", "/health").status, 200)
        r = self.relay.run("routes")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("/console", r.stdout)
        self.assertIn("GET /admin/api-keys", r.stdout)


class Answers(relaytest.RelayTestCase):
    """One real answer per documented operation (and errors), validated as they come."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.checked = set()

    def check(self, method, path, body=None, headers=None, want=None):
        r = self.relay.request(method, path, body, headers)
        pattern = pattern_of(path)
        self.assertIsNotNone(pattern, path)
        if want is not None:
            self.assertEqual(r.status, want, "%s %s: %s" % (method, path, r.text[:300]))
        resp = response_for(method, pattern, r.status)
        self.assertIsNotNone(resp, "%s %s answered %d, which the document does not list"
                             % (method, pattern, r.status))
        ctype = (r.headers.get("content-type") or "").split(";")[0].strip()
        content = resp.get("content", {})
        media = next((m for m in content if m == ctype or m == "*/*"), None)
        self.assertIsNotNone(media, "%s %s %d: content-type %s not documented (%s)"
                             % (method, pattern, r.status, ctype, list(content)))
        if media == "application/json":
            errors = sorted(validator_for(content[media]["schema"]).iter_errors(r.json()),
                            key=str)
            self.assertEqual([], ["%s at %s" % (e.message, list(e.absolute_path))
                                  for e in errors][:5],
                             "%s %s %d does not match its schema" % (method, pattern, r.status))
        if 200 <= r.status < 300:
            type(self).checked.add((method, pattern))
        return r

    def test_every_operation(self):
        relay, fake = self.relay, self.fake
        fake.set_usage(input_tokens=100, output_tokens=50, cache_creation_input_tokens=20,
                       ephemeral_5m_input_tokens=20, cache_read_input_tokens=30)
        c = self.check
        c("GET", "/health", want=200)
        c("GET", "/metrics", want=200)
        c("GET", "/console", want=200)
        c("GET", "/console/app.js", want=200)
        c("GET", "/console/nope.js", want=404)

        import base64
        basic = "Basic " + base64.b64encode(
            ("admin:" + relay.env["ADMIN_PASSWORD"]).encode()).decode()
        c("POST", "/admin/login", headers={"authorization": basic}, want=200)
        c("POST", "/admin/login", headers={"authorization": "Basic eDp5"}, want=401)
        admin = relay.admin_headers()
        c("GET", "/admin/api-keys", headers={}, want=401)

        r = c("POST", "/admin/api-keys", {"name": "openapi", "token_limit": 100000,
                                          "daily_cost_limit": 50,
                                          "model_cost_limits": [{"models": ["claude-opus-*"],
                                                                 "period": "weekly",
                                                                 "limit": 5}],
                                          "allowed_models": ["claude-*"],
                                          "metadata": {"team": "docs"}}, admin, want=200)
        obj = r.json()
        key = obj["api_key"]
        relay.proxy_keys.append(key)
        kid = obj["id"]
        c("POST", "/admin/api-keys", {"name": ""}, admin, want=400)
        c("GET", "/admin/api-keys?limit=5", headers=admin, want=200)
        c("GET", "/admin/api-keys?limit=0", headers=admin, want=400)
        c("GET", "/admin/api-keys/" + kid, headers=admin, want=200)
        c("GET", "/admin/api-keys/no-such-key", headers=admin, want=404)
        c("GET", "/admin/api-keys/%s/stats" % kid, headers=admin, want=200)
        c("PATCH", "/admin/api-keys/" + kid, {"description": "from the OpenAPI test"}, admin,
          want=200)
        c("PUT", "/admin/api-keys/" + kid, {"token_limit": 200000}, admin, want=200)

        # traffic, so the usage answers have rows: JSON, stream, error, count_tokens, models
        h = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        c("POST", "/v1/messages", messages_body(max_tokens=16), h, want=200)
        with relay.stream("POST", "/v1/messages", messages_body(stream=True, max_tokens=16),
                          h) as s:
            s.read_all()
        fake.fail_next(1, 400, message="max_tokens: Field required")
        c("POST", "/v1/messages", messages_body(max_tokens=16), h, want=400)
        c("POST", "/v1/messages", messages_body(), {"x-api-key": "sk-proxy-nope_nope"}, want=401)
        c("POST", "/v1/messages/count_tokens", messages_body(),
          {"authorization": "Bearer " + key}, want=200)
        c("GET", "/v1/models", headers=h, want=200)
        wait_until(lambda: relay.json_request("GET", "/api/usage", None, h)[1]
                   ["total_requests"] >= 3, 10, "the usage writer")

        for path in ("/api/usage", "/api/usage/daily?days=3", "/api/usage/logs?limit=5",
                     "/api/usage/quota"):
            c("GET", path, headers=h, want=200)
        c("GET", "/api/usage/quota", headers={"authorization": "Bearer " + key}, want=200)
        c("GET", "/api/usage", want=401)
        c("GET", "/api/usage/daily?days=0", headers=h, want=400)
        c("GET", "/api/usage?start_date=2026-01-01&end_date=2026-12-31", headers=h, want=200)
        for path in ("/admin/api-keys/%s/usage", "/admin/api-keys/%s/usage/daily",
                     "/admin/api-keys/%s/usage/logs?limit=3&status=400"):
            c("GET", path % kid, headers=admin, want=200)
        c("GET", "/admin/api-keys/no-such-key/usage", headers=admin, want=404)
        c("GET", "/admin/usage?sort=total_cost&limit=5", headers=admin, want=200)
        js = c("GET", "/admin/usage/summary", headers=admin, want=200).json()
        self.assertGreaterEqual(js["total_requests"], 3)
        c("GET", "/admin/usage/daily?days=7", headers=admin, want=200)
        js = c("GET", "/admin/usage/logs?is_error=true&limit=10", headers=admin, want=200).json()
        self.assertTrue(js["items"])
        self.assertTrue(all(row["is_error"] for row in js["items"]))
        c("GET", "/admin/usage/logs?is_error=maybe", headers=admin, want=400)
        c("GET", "/api/usage/logs?is_error=true", headers=h, want=200)
        c("GET", "/admin/usage?sort=nope", headers=admin, want=400)

        c("GET", "/admin/rate-limit-tiers", headers=admin, want=200)
        c("PUT", "/admin/rate-limit-tiers/openapi-gold", {"requests": 50, "period": 60,
                                                          "concurrent": 4,
                                                          "daily_cost_limit": 10}, admin,
          want=200)
        c("PUT", "/admin/rate-limit-tiers/openapi-gold", {"requests": 0}, admin, want=400)
        c("GET", "/admin/rate-limit-tiers/openapi-gold", headers=admin, want=200)
        c("GET", "/admin/rate-limit-tiers/no-such-tier", headers=admin, want=404)
        c("PATCH", "/admin/api-keys/" + kid, {"rate_limit_tier": "openapi-gold"}, admin,
          want=200)
        c("DELETE", "/admin/rate-limit-tiers/openapi-gold", headers=admin, want=409)
        c("PATCH", "/admin/api-keys/" + kid, {"rate_limit_tier": "basic"}, admin, want=200)
        c("DELETE", "/admin/rate-limit-tiers/openapi-gold", headers=admin, want=200)

        pricing = c("GET", "/admin/pricing", headers=admin, want=200).json()
        c("PUT", "/admin/pricing", {"prices": pricing["prices"], "default": pricing["default"]},
          admin, want=200)
        c("PUT", "/admin/pricing", {"prices": [{"model_prefix": "x", "input": -1,
                                                "output": 1}]}, admin, want=400)
        c("GET", "/admin/audit-log?limit=20", headers=admin, want=200)

        c("POST", "/admin/api-keys/%s/disable" % kid, headers=admin, want=200)
        c("POST", "/admin/api-keys/%s/enable" % kid, headers=admin, want=200)
        rotated = c("POST", "/admin/api-keys/%s/rotate" % kid, headers=admin, want=200).json()
        relay.proxy_keys.append(rotated["api_key"])
        c("DELETE", "/admin/api-keys/" + kid, headers=admin, want=200)
        c("DELETE", "/admin/api-keys/%s?hard_delete=true" % kid, headers=admin, want=200)
        c("POST", "/admin/api-keys/%s/enable" % kid, headers=admin, want=404)

        # the upstream pool (docs/upstreams.md)
        c("GET", "/admin/upstreams", headers=admin, want=200)
        c("GET", "/admin/upstreams", want=401)
        up = c("POST", "/admin/upstreams", {"name": "openapi-up", "url": fake.url,
                                            "api_key": self.upstream_key, "weight": 2,
                                            "models": ["claude-*"]}, admin, want=201).json()
        c("POST", "/admin/upstreams", {"name": "openapi-up", "url": fake.url, "api_key": "k"},
          admin, want=409)
        c("POST", "/admin/upstreams", {"name": "openapi-x"}, admin, want=400)
        uid = up["id"]
        c("GET", "/admin/upstreams/" + uid, headers=admin, want=200)
        c("GET", "/admin/upstreams/no-such-upstream", headers=admin, want=404)
        c("PATCH", "/admin/upstreams/" + uid, {"weight": 3, "group": None}, admin, want=200)
        c("PATCH", "/admin/upstreams/config:anthropic", {"weight": 3}, admin, want=400)
        c("POST", "/admin/upstreams/%s/disable" % uid, headers=admin, want=200)
        c("POST", "/admin/upstreams/%s/enable" % uid, headers=admin, want=200)
        c("POST", "/admin/upstreams/%s/test" % uid, headers=admin, want=200)
        c("DELETE", "/admin/upstreams/" + uid, headers=admin, want=200)
        c("DELETE", "/admin/upstreams/" + uid, headers=admin, want=404)

        missing = sorted(operations(SPEC) - self.checked)
        self.assertEqual(missing, [], "operations without a checked 2xx answer")


if __name__ == "__main__":
    relaytest.main()
