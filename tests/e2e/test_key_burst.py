"""End-to-end: a burst of first requests with one new key through relay-server runs one bcrypt
(issue 10), a wrong secret for the same key inside the burst is refused, and the verification
metrics pass promtool. On SQLite, and PostgreSQL when RELAY_TEST_PG_URL is set."""

import http.client
import json
import re
import shutil
import subprocess
import threading

import relaytest
from relaytest import RelayTestCase, both_stores, messages_body

N = 32


def metric(text, series):
    m = re.search(r"^%s (\S+)$" % re.escape(series), text, re.M)
    return float(m.group(1)) if m else 0.0


@both_stores
class KeyBurst(RelayTestCase):
    def scrape(self):
        r = self.relay.request("GET", "/metrics")
        self.assertEqual(r.status, 200, r.body[:300])
        return r.text

    def burst(self, keys):
        """One request per key, all sent at once on their own connections; [(status, body)]."""
        go = threading.Barrier(len(keys))
        out = [None] * len(keys)
        body = json.dumps(messages_body("hi")).encode()

        def one(i):
            conn = http.client.HTTPConnection("127.0.0.1", self.relay.port, timeout=60)
            try:
                conn.connect()
                go.wait(timeout=30)
                conn.request("POST", "/v1/messages", body=body,
                             headers={"x-api-key": keys[i], "content-type": "application/json",
                                      "anthropic-version": "2023-06-01"})
                r = conn.getresponse()
                out[i] = (r.status, r.read())
            finally:
                conn.close()

        ts = [threading.Thread(target=one, args=(i,)) for i in range(len(keys))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        self.assertTrue(all(o is not None for o in out), "a request did not finish")
        return out

    def test_one_new_key_one_bcrypt(self):
        key, _ = self.relay.create_key(token_limit=0, rate_limit_tier="unlimited")
        before = self.scrape()
        out = self.burst([key] * N)
        self.assertEqual([s for s, _ in out], [200] * N)
        after = self.scrape()
        self.assertEqual(metric(after, "relay_key_bcrypt_total")
                         - metric(before, "relay_key_bcrypt_total"), 1)
        verified = sum(metric(after, 'relay_key_verify_seconds_count{result="%s"}' % r)
                       - metric(before, 'relay_key_verify_seconds_count{result="%s"}' % r)
                       for r in ("bcrypt", "cached"))
        self.assertEqual(verified, N)
        self.assertEqual(metric(after, "relay_key_verify_waiting"), 0)
        self.fake.wait_for_finished(N)
        self.assertEqual(len(self.fake.requests()), N)

    def test_wrong_secret_in_the_burst_is_refused(self):
        key, _ = self.relay.create_key(token_limit=0, rate_limit_tier="unlimited")
        # Same public id, another secret: only bcrypt can tell, and it must not share success.
        i = len(key) - 5
        wrong = key[:i] + ("A" if key[i] != "A" else "B") + key[i + 1:]
        before = self.scrape()
        out = self.burst([key if n % 2 else wrong for n in range(N)])
        for n, (status, body) in enumerate(out):
            if n % 2:
                self.assertEqual(status, 200, body[:200])
            else:
                self.assertEqual(status, 401, body[:200])
                self.assertEqual(json.loads(body)["error"]["type"], "authentication_error")
        after = self.scrape()
        # One for the key (the others share it or hit the cache), one for the wrong secret unless
        # it arrived only once the right one was cached (then it is refused without bcrypt).
        runs = metric(after, "relay_key_bcrypt_total") - metric(before, "relay_key_bcrypt_total")
        self.assertTrue(1 <= runs <= 2, runs)
        failed = (metric(after, 'relay_key_verify_seconds_count{result="failed"}')
                  - metric(before, 'relay_key_verify_seconds_count{result="failed"}'))
        self.assertEqual(failed, N // 2)
        self.relay.proxy_keys.append(wrong)

    def test_promtool_accepts_the_verification_metrics(self):
        key, _ = self.relay.create_key(token_limit=0, rate_limit_tier="unlimited")
        st, _, _ = self.relay.json_request("POST", "/v1/messages", messages_body("hi"),
                                           {"x-api-key": key})
        self.assertEqual(st, 200)
        text = self.scrape()
        self.assertIn("# TYPE relay_key_verify_seconds histogram", text)
        self.assertIn("# TYPE relay_key_verify_waiting gauge", text)
        self.assertIn("# TYPE relay_key_verify_timeouts_total counter", text)
        exe = shutil.which("promtool")
        if not exe:
            self.fail("promtool not found: apt-get install prometheus (scripts/deps.sh --test)")
        p = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, "promtool: %s%s" % (p.stdout, p.stderr))


if __name__ == "__main__":
    relaytest.main()
