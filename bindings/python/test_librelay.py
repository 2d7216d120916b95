"""Tests of the ctypes binding (librelay.py) against a built or installed librelay.so.

Run: LIBRELAY_PATH=/prefix/lib/librelay.so LIBRELAY_INCLUDE=/prefix/include \
         python3 -m unittest -v test_librelay
The layout test compiles a tiny C program against the headers (LIBRELAY_INCLUDE, else
`pkg-config --cflags librelay`) and compares every mirrored field's offset and every struct's size
with ctypes'; it is skipped only when neither a compiler nor the headers can be found, and
LIBRELAY_REQUIRE_LAYOUT=1 turns that skip into a failure.
"""

import ctypes
import os
import shutil
import subprocess
import tempfile
import unittest

import librelay
from librelay import Relay, RelayError

COST = 4  # the cheapest bcrypt: these tests are about the binding, not the hash


def _layout_cflags():
    inc = os.environ.get("LIBRELAY_INCLUDE")
    if inc:
        return ["-I" + inc]
    if shutil.which("pkg-config"):
        p = subprocess.run(["pkg-config", "--cflags", "librelay"], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout.split()
    return None


def _probe_source():
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <relay/relay.h>",
             "#include <relay/keys.h>", "#include <relay/limits.h>", "#include <relay/tokens.h>",
             "int main(void) {", 'printf("version linked %s\\n", RELAY_VERSION_STRING);']
    for cname, py in librelay.STRUCTS.items():
        lines.append(f'printf("size {cname} %zu\\n", sizeof({cname}));')
        for f, _ in py._fields_:
            lines.append(f'printf("off {cname}.{f} %zu\\n", offsetof({cname}, {f}));')
            lines.append(f'printf("fsize {cname}.{f} %zu\\n", sizeof((({cname} *)0)->{f}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


class Layout(unittest.TestCase):
    """The mirrored structs match the C headers byte for byte."""

    @classmethod
    def setUpClass(cls):
        cls.c = None
        cc = shutil.which(os.environ.get("CC", "cc"))
        cflags = _layout_cflags()
        if not cc or cflags is None:
            if os.environ.get("LIBRELAY_REQUIRE_LAYOUT") == "1":
                raise AssertionError("no C compiler or librelay headers for the layout probe")
            raise unittest.SkipTest("no C compiler or librelay headers")
        with tempfile.TemporaryDirectory() as d:
            src, exe = os.path.join(d, "probe.c"), os.path.join(d, "probe")
            with open(src, "w") as f:
                f.write(_probe_source())
            subprocess.run([cc, "-std=gnu11", "-Wall", "-Werror", *cflags, src, "-o", exe],
                           check=True)
            out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        cls.c = {}
        for line in out.splitlines():
            kind, name, value = line.split(" ", 2)
            cls.c[(kind, name)] = value

    def test_sizes(self):
        for cname, py in librelay.STRUCTS.items():
            self.assertEqual(int(self.c[("size", cname)]), ctypes.sizeof(py), cname)

    def test_offsets(self):
        for cname, py in librelay.STRUCTS.items():
            for f, _ in py._fields_:
                self.assertEqual(int(self.c[("off", f"{cname}.{f}")]), getattr(py, f).offset,
                                 f"{cname}.{f}")

    def test_field_sizes(self):
        for cname, py in librelay.STRUCTS.items():
            for f, _ in py._fields_:
                self.assertEqual(int(self.c[("fsize", f"{cname}.{f}")]), getattr(py, f).size,
                                 f"{cname}.{f}")

    def test_version_matches_headers(self):
        # The headers and the loaded library come from the same build.
        self.assertEqual(librelay.version(), self.c[("version", "linked")])


class Basics(unittest.TestCase):
    def test_version(self):
        self.assertRegex(librelay.version(), r"^\d+\.\d+\.\d+")

    def test_strerror_and_error_model(self):
        self.assertTrue(librelay.strerror(librelay.ERR_AUTH))
        self.assertNotEqual(librelay.strerror(librelay.ERR_AUTH),
                            librelay.strerror(librelay.ERR_KEY_DISABLED))
        e = RelayError(librelay.ERR_KEY_DISABLED)
        self.assertEqual(e.http_status, 401)
        self.assertEqual(e.error_type, "authentication_error")
        self.assertEqual(RelayError(librelay.ERR_QUOTA).http_status, 429)
        self.assertEqual(RelayError(librelay.ERR_PERMISSION).error_type, "permission_error")

    def test_count_text(self):
        self.assertEqual(librelay.count_text(""), 0)
        one = librelay.count_text("The quick brown fox jumps over the lazy dog.")
        self.assertGreater(one, 5)
        self.assertLess(one, 30)
        self.assertGreater(librelay.count_text("The quick brown fox jumps over the lazy dog. " * 20),
                           15 * one)

    def test_count_request(self):
        short = librelay.count_request({"model": "claude-sonnet-4-5", "max_tokens": 1024,
                                        "messages": [{"role": "user", "content": "Hello"}]})
        self.assertEqual(short.model, "claude-sonnet-4-5")
        self.assertEqual(short.max_tokens, 1024)
        self.assertFalse(short.stream)
        self.assertGreater(short.input_tokens, 0)
        long = librelay.count_request(
            '{"model":"m","stream":true,"messages":[{"role":"user","content":"%s"}]}'
            % ("word " * 500))
        self.assertTrue(long.stream)
        self.assertEqual(long.max_tokens, 0)
        self.assertGreater(long.input_tokens, short.input_tokens + 300)

    def test_count_request_rejects_non_json(self):
        with self.assertRaises(RelayError) as cm:
            librelay.count_request(b"not json")
        self.assertEqual(cm.exception.code, librelay.ERR_INVALID)


class Keys(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="librelay-py-")
        self.relay = Relay(data_dir=self.dir, bcrypt_cost=COST)

    def tearDown(self):
        self.relay.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_create_verify_list_disable_enable(self):
        key, rec = self.relay.create_key("alice", token_limit=5000, description="first")
        self.assertTrue(key.startswith("sk-proxy-"))
        self.assertTrue(key.startswith(rec.key_prefix + "_"))
        self.assertRegex(rec.id, r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        self.assertEqual((rec.name, rec.description, rec.token_limit), ("alice", "first", 5000))
        self.assertEqual(rec.rate_limit_tier, "basic")
        self.assertTrue(rec.is_active)

        v = self.relay.verify_key(key)
        self.assertEqual((v.id, v.name), (rec.id, "alice"))

        _, bob = self.relay.create_key("bob")
        self.assertEqual(bob.token_limit, 1000000)  # api_keys.default_limit
        keys, total = self.relay.list_keys()
        self.assertEqual(total, 2)
        self.assertEqual({k.name for k in keys}, {"alice", "bob"})

        self.relay.disable_key(rec.id)
        with self.assertRaises(RelayError) as cm:
            self.relay.verify_key(key)
        self.assertEqual(cm.exception.code, librelay.ERR_KEY_DISABLED)
        self.assertIn("disabled", cm.exception.message)
        disabled, n = self.relay.list_keys("disabled")
        self.assertEqual((n, [k.id for k in disabled]), (1, [rec.id]))
        self.assertFalse(self.relay.get_key(rec.id).is_active)

        self.relay.enable_key(rec.id)
        self.assertEqual(self.relay.verify_key(key).id, rec.id)

    def test_wrong_and_malformed_keys_are_refused_alike(self):
        key, _ = self.relay.create_key("carol")
        for bad in (key[:-1] + ("A" if key[-1] != "A" else "B"), "sk-proxy-nothing", ""):
            with self.assertRaises(RelayError) as cm:
                self.relay.verify_key(bad)
            self.assertEqual(cm.exception.code, librelay.ERR_AUTH, bad)
            self.assertNotIn(key, str(cm.exception))

    def test_validation_errors_name_the_field(self):
        with self.assertRaises(RelayError) as cm:
            self.relay.create_key("dave", tier="no-such-tier")
        self.assertEqual(cm.exception.code, librelay.ERR_INVALID)
        self.assertIn("no-such-tier", cm.exception.message)
        with self.assertRaises(RelayError) as cm:
            self.relay.get_key("00000000-0000-4000-8000-000000000000")
        self.assertEqual(cm.exception.code, librelay.ERR_NOT_FOUND)

    def test_keys_persist_and_no_plaintext_in_the_store(self):
        key, rec = self.relay.create_key("erin")
        self.relay.close()
        self.relay = Relay(data_dir=self.dir, bcrypt_cost=COST)
        self.assertEqual(self.relay.verify_key(key).id, rec.id)
        secret = key.split("_", 1)[1].encode()
        blob = b""
        for name in os.listdir(self.dir):
            with open(os.path.join(self.dir, name), "rb") as f:
                blob += f.read()
        self.assertGreater(len(blob), 0)
        self.assertIn(rec.key_prefix.encode(), blob)
        self.assertNotIn(secret, blob)

    def test_admit_reserve_settle_and_quota(self):
        key, _ = self.relay.create_key("frank", token_limit=1000)
        rec = self.relay.verify_key(key)
        adm = self.relay.admit(rec, input_tokens=100, max_tokens=200, model="claude-x")
        self.assertEqual(adm.reserved_tokens, 300)
        self.assertEqual(adm.key_id, rec.id)
        self.assertEqual(adm.tier, "basic")
        self.assertEqual(adm.requests_limit, 100)
        self.assertEqual(adm.requests_remaining, 99)
        self.assertEqual(self.relay.billed_tokens(500, 400, 30, 20), 950)
        self.relay.settle(adm, 950)
        self.relay.settle(adm, 950)  # idempotent: counted once
        # 950 of 1000 used: a request that needs 100 can never fit.
        with self.assertRaises(RelayError) as cm:
            self.relay.admit(rec, input_tokens=100, max_tokens=0)
        self.assertEqual(cm.exception.code, librelay.ERR_QUOTA)
        self.assertEqual(cm.exception.admission.reason, "quota")
        self.assertEqual(cm.exception.http_status, 429)
        small = self.relay.admit(rec, input_tokens=10, max_tokens=0)
        self.relay.settle(small, 10)

    def test_model_allowlist(self):
        key, _ = self.relay.create_key("gina", allowed_models='["claude-haiku*"]')
        rec = self.relay.verify_key(key)
        self.relay.settle(self.relay.admit(rec, model="claude-haiku-4-5"), 0)
        with self.assertRaises(RelayError) as cm:
            self.relay.admit(rec, model="claude-opus-4-1")
        self.assertEqual(cm.exception.code, librelay.ERR_PERMISSION)
        self.assertEqual(cm.exception.admission.reason, "model")

    def test_closed_relay_refuses_calls(self):
        self.relay.close()
        self.relay.close()  # idempotent
        with self.assertRaises(RelayError):
            self.relay.list_keys()


if __name__ == "__main__":
    unittest.main()
