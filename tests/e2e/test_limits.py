"""End-to-end: issue 5's limits (token quotas, rate-limit tiers, allowlists, Redis sharing and
outage) through real relay-server processes and the fake upstream, on SQLite and PostgreSQL."""

import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

import relaytest
from relaytest import RawConnection, both_stores, messages_body, raw_http_request, wait_until

ANTHROPIC = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
HAIKU = "claude-haiku-4-5-20251001"
SONNET = "claude-sonnet-4-5-20250929"
CEILING = 64  # usage.reservation_ceiling of the quota classes: small, so overshoot is visible


write_config = relaytest.write_class_config


def parse_rfc3339(text):
    """Unix seconds of an RFC 3339 UTC time such as 2026-01-02T03:04:05Z (raises otherwise)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]00:00)", text or "")
    if not m:
        raise AssertionError("not an RFC 3339 UTC time: %r" % text)
    dt = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def parallel(n, fn):
    """Run fn(i) in n threads released together; returns the n results (or exceptions)."""
    out = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait(10)
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported by the caller's assertions
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return out, threads


class LimitsBase(relaytest.RelayTestCase):
    """Admin and request helpers shared by every class here."""

    @classmethod
    def setUpClass(cls):
        cls._tokens = {}
        super().setUpClass()

    def setUp(self):
        if self.fake:
            self.quiesce_fake()
        super().setUp()  # resets the fake

    def quiesce_fake(self):
        """Wait until the fake has finished every request it received. The client gets its
        answer a moment before the fake's handler leaves; a reset() in that moment would zero
        the in-flight count the handler then decrements, and wait_inflight(n) would be off."""
        self.fake.wait_for_finished(len(self.fake.requests()), timeout=15)

    def admin_hdrs(self, relay=None):
        relay = relay or self.relay
        if relay.port not in self._tokens:
            self._tokens[relay.port] = relay.admin_headers()
        return self._tokens[relay.port]

    def admin(self, method, path, body=None, relay=None, expect=200):
        relay = relay or self.relay
        st, js, r = relay.json_request(method, path, body, self.admin_hdrs(relay))
        if expect is not None:
            self.assertEqual(st, expect, r.body)
        return js

    def put_tier(self, name, requests=1000, period=60, concurrent=0, tokens_per_minute=0):
        body = {"requests": requests, "period": period, "concurrent": concurrent,
                "tokens_per_minute": tokens_per_minute}
        tier = self.admin("PUT", "/admin/rate-limit-tiers/" + name, body)
        self.assertEqual((tier["requests"], tier["period"], tier["concurrent"],
                          tier["tokens_per_minute"]), (requests, period, concurrent,
                                                      tokens_per_minute))
        return name

    def new_key(self, relay=None, **fields):
        relay = relay or self.relay
        self._tokens.setdefault(relay.port, relay.admin_headers())
        return relay.create_key(**fields)

    def patch_key(self, key_id, **fields):
        return self.admin("PATCH", "/admin/api-keys/" + key_id, fields)

    def key_state(self, key_id, relay=None):
        return super().key_state(key_id, relay, self.admin_hdrs(relay))

    @staticmethod
    def hdrs(key, **extra):
        h = dict(ANTHROPIC, **{"x-api-key": key})
        h.update(extra)
        return h

    def send(self, key, relay=None, timeout=30, **kw):
        """POST /v1/messages; kw: model, max_tokens, stream, headers."""
        relay = relay or self.relay
        extra = kw.pop("headers", {})
        return relay.request("POST", "/v1/messages", messages_body(**kw),
                             self.hdrs(key, **extra), timeout=timeout)

    def assert_error(self, r, status, etype):
        self.assertEqual(r.status, status, r.body)
        js = r.json()
        self.assertEqual((js["type"], js["error"]["type"]), ("error", etype), js)
        return js["error"]["message"]

    def wait_rows(self, key_id, n, timeout=10):
        rows = self.wait_usage_rows(key_id, n, timeout)
        self.assertEqual(len(rows), n, "more usage rows than requests")
        return rows

    def wait_token_used(self, key_id, want, timeout=10):
        """The key's token_used from the admin API once the usage writer stored `want`."""
        try:
            return wait_until(lambda: (lambda k: k if k["token_used"] == want else None)(
                self.key_state(key_id)), timeout, "token_used == %d" % want)
        except TimeoutError:
            self.fail("token_used is %d, expected %d" % (self.key_state(key_id)["token_used"],
                                                         want))


# ---- token quota ----------------------------------------------------------------------------
@both_stores
class QuotaTest(LimitsBase):
    @classmethod
    def relay_env(cls):
        if "cfg_path" not in cls.__dict__:
            cls.cfg_path = write_config(cls, "usage:\n  reservation_ceiling: %d\n" % CEILING)
        return {"RELAY_CONFIG": cls.cfg_path}

    def reserved_for(self, max_tokens):
        """What admit reserves for messages_body(max_tokens=...), read from the relay's refusal
        of a key whose whole quota is 1 token."""
        key, _ = self.new_key(token_limit=1)
        r = self.send(key, max_tokens=max_tokens)
        msg = self.assert_error(r, 429, "rate_limit_error")
        m = re.search(r"may use up to (\d+) more", msg)
        self.assertIsNotNone(m, msg)
        return int(m.group(1))

    def reservation(self, max_tokens):
        """(reservation, input estimate) for messages_body(max_tokens=...). The estimate comes
        from a max_tokens=1 probe, so the ceiling's effect on the reservation is checked, not
        assumed: reservation = estimate + min(max_tokens, ceiling)."""
        est = self.reserved_for(1) - 1
        self.assertGreater(est, 0, "the input estimate is part of the reservation")
        reserve = self.reserved_for(max_tokens)
        self.assertEqual(reserve, est + min(max_tokens, CEILING))
        return reserve, est

    def spend(self, key, billed):
        """One admitted request billed exactly `billed` tokens."""
        self.fake.set_usage(input_tokens=billed - 1, output_tokens=1)
        r = self.send(key, max_tokens=1)
        self.assertEqual(r.status, 200, r.body)

    def test_quota_exhaustion_refuses_with_x_should_retry_false(self):
        key, obj = self.new_key(token_limit=100)
        self.fake.set_usage(input_tokens=100, output_tokens=50)
        self.assertEqual(self.send(key, max_tokens=10).status, 200)
        self.assertEqual(len(self.fake.requests()), 1)
        for _ in range(2):  # stays refused, and never reaches the upstream
            r = self.send(key, max_tokens=10)
            msg = self.assert_error(r, 429, "rate_limit_error")
            self.assertEqual(r.header("x-should-retry"), "false")
            self.assertIsNone(r.header("retry-after"))
            self.assertIn("quota", msg)
            self.assertIn("150 of 100", msg)
        self.assertEqual(len(self.fake.requests()), 1, "a refused request cost an upstream call")
        rows = self.wait_rows(obj["id"], 3)
        self.assertEqual([(x["response_status"], x["is_error"], x["total_tokens"]) for x in rows],
                         [(200, 0, 150), (429, 1, 0), (429, 1, 0)])
        self.assertEqual(rows[1]["error_code"], "rate_limit_error")
        k = self.wait_token_used(obj["id"], 150)
        self.assertEqual(k["token_remaining"], 0)
        # A streaming request is refused the same way, before any SSE starts.
        r = self.relay.request("POST", "/v1/messages", messages_body(stream=True, max_tokens=10),
                               self.hdrs(key))
        self.assert_error(r, 429, "rate_limit_error")
        self.assertEqual(len(self.fake.requests()), 1)

    def test_request_that_cannot_fit_is_refused_before_the_quota_is_spent(self):
        key, _ = self.new_key(token_limit=1000)
        reserve, _ = self.reservation(CEILING)
        self.spend(key, 1000 - reserve + 1)  # one token short of room for this request
        r = self.send(key, max_tokens=CEILING)
        msg = self.assert_error(r, 429, "rate_limit_error")
        self.assertEqual(r.header("x-should-retry"), "false")
        self.assertIn("lower max_tokens", msg)
        r = self.send(key, max_tokens=CEILING - 1)  # one token less fits exactly
        self.assertEqual(r.status, 200, r.body)

    def concurrent_burst(self, max_tokens, n_parallel=50):
        """Spend a fresh key's quota down to 7.5 reservations, hold the upstream, send
        n_parallel requests at once, check that exactly the 7 that fit reached the upstream,
        release. Returns a dict: key, key_id, limit, before (used), reserve, est, admitted."""
        reserve, est = self.reservation(max_tokens)
        limit = 100000
        left = reserve * 15 // 2  # room for exactly 7 reservations, not 8
        key, obj = self.new_key(token_limit=limit)
        self.spend(key, limit - left)
        self.quiesce_fake()
        self.fake.reset()
        self.fake.hold()
        self.addCleanup(self.fake.release)
        # Every admitted answer uses all of max_tokens, with an input as large as estimated.
        self.fake.set_usage(input_tokens=est, output_tokens=max_tokens)
        out, threads = parallel(n_parallel, lambda i: self.send(key, max_tokens=max_tokens))
        admitted = left // reserve
        self.fake.wait_inflight(admitted, timeout=15)
        done = lambda: sum(1 for t in threads if not t.is_alive())  # noqa: E731
        wait_until(lambda: done() + self.fake.inflight >= n_parallel, 15,
                   "every request refused or held upstream")
        self.assertEqual(self.fake.inflight, admitted, "admitted more than the quota allows")
        refused = [r for r in out if r is not None and not isinstance(r, Exception)]
        self.assertEqual(len(refused), n_parallel - admitted)
        for r in refused:
            msg = self.assert_error(r, 429, "rate_limit_error")
            self.assertIn("quota", msg)
            self.assertEqual(r.header("retry-after"), "1")  # in flight: retry soon
        self.fake.release()
        for t in threads:
            t.join(30)
        self.assertFalse(any(t.is_alive() for t in threads))
        errors = [r for r in out if isinstance(r, Exception)]
        self.assertEqual(errors, [])
        statuses = sorted(r.status for r in out)
        self.assertEqual(statuses, [200] * admitted + [429] * (n_parallel - admitted))
        self.assertEqual(len(self.fake.requests()), admitted)
        return dict(key=key, key_id=obj["id"], limit=limit, before=limit - left,
                    reserve=reserve, est=est, admitted=admitted)

    def test_50_concurrent_never_overshoot_with_max_tokens_within_the_ceiling(self):
        max_tokens = CEILING - 4
        b = self.concurrent_burst(max_tokens)
        self.assertEqual(b["admitted"], 7)
        # Each answer bills exactly what it reserved: the whole max_tokens and the estimate.
        self.assertEqual(b["est"] + max_tokens, b["reserve"])
        k = self.wait_token_used(b["key_id"], b["before"] + 7 * b["reserve"])
        self.assertLessEqual(k["token_used"], b["limit"])
        self.assertLess(b["limit"] - k["token_used"], b["reserve"], "an 8th would not fit")

    def test_50_concurrent_above_the_ceiling_overshoot_is_bounded_as_documented(self):
        max_tokens = 1000  # far above the ceiling of 64: the reservation covers only part
        b = self.concurrent_burst(max_tokens)
        self.assertEqual(b["admitted"], 7)
        self.assertEqual(b["reserve"], b["est"] + CEILING)
        k = self.wait_token_used(b["key_id"], b["before"] + 7 * (b["est"] + max_tokens))
        overshoot = k["token_used"] - b["limit"]
        # docs/limits.md: at most Σ over the requests in flight of (max_tokens − ceiling).
        self.assertGreater(overshoot, 0)
        self.assertLessEqual(overshoot, 7 * (max_tokens - CEILING))
        # Once over, the key is refused for good, without a retry.
        r = self.send(b["key"], max_tokens=1)
        self.assert_error(r, 429, "rate_limit_error")
        self.assertEqual(r.header("x-should-retry"), "false")


# ---- rate-limit tiers -----------------------------------------------------------------------
@both_stores
class TierTest(LimitsBase):
    def test_requests_per_period_exact_count_and_headers(self):
        tier = self.put_tier("req3", requests=3, period=60)
        key, obj = self.new_key(rate_limit_tier=tier)
        t_first = time.time()
        for i in range(3):
            r = self.send(key)
            self.assertEqual(r.status, 200, "request %d: %r" % (i + 1, r.body))
        for _ in range(2):
            r = self.send(key)
            msg = self.assert_error(r, 429, "rate_limit_error")
            self.assertIn("3 requests per 60 s", msg)
            retry = int(r.header("retry-after"))
            self.assertGreater(retry, 0)
            self.assertLessEqual(retry, 60)
            self.assertEqual(r.header("anthropic-ratelimit-requests-limit"), "3")
            self.assertEqual(r.header("anthropic-ratelimit-requests-remaining"), "0")
            reset = parse_rfc3339(r.header("anthropic-ratelimit-requests-reset"))
            # The oldest request leaves the window one period after it came.
            self.assertGreaterEqual(reset, t_first + 60 - 2)
            self.assertLessEqual(reset, time.time() + 61)
            self.assertIsNone(r.header("x-should-retry"))
        self.assertEqual(len(self.fake.requests()), 3)
        rows = self.wait_rows(obj["id"], 5)
        self.assertEqual([x["response_status"] for x in rows], [200, 200, 200, 429, 429])
        self.assertEqual([x["is_error"] for x in rows], [0, 0, 0, 1, 1])

    def test_waiting_retry_after_is_enough(self):
        tier = self.put_tier("req2per2", requests=2, period=2)
        key, _ = self.new_key(rate_limit_tier=tier)
        self.assertEqual([self.send(key).status for _ in range(2)], [200, 200])
        r = self.send(key)
        self.assertEqual(r.status, 429)
        retry = int(r.header("retry-after"))
        self.assertIn(retry, (1, 2))
        # Waiting out retry-after (the window sliding, not a synchronisation) is enough.
        time.sleep(retry)
        self.assertEqual(self.send(key).status, 200)

    def test_tokens_per_minute(self):
        tier = self.put_tier("tpm1000", requests=100, period=60, tokens_per_minute=1000)
        key, _ = self.new_key(rate_limit_tier=tier)
        self.fake.set_usage(input_tokens=300, output_tokens=100)  # 400 per request
        # 0, 400, 800 are below 1000: three admitted; 1200 is not.
        self.assertEqual([self.send(key, max_tokens=50).status for _ in range(3)], [200] * 3)
        r = self.send(key, max_tokens=50)
        msg = self.assert_error(r, 429, "rate_limit_error")
        self.assertIn("1000 tokens per minute", msg)
        self.assertEqual(r.header("anthropic-ratelimit-tokens-limit"), "1000")
        self.assertEqual(r.header("anthropic-ratelimit-tokens-remaining"), "0")
        retry = int(r.header("retry-after"))
        self.assertGreater(retry, 0)
        self.assertLessEqual(retry, 61)
        self.assertEqual(len(self.fake.requests()), 3)
        # count_tokens is not charged to the token window and still passes.
        r = self.relay.request("POST", "/v1/messages/count_tokens", messages_body(),
                               self.hdrs(key))
        self.assertEqual(r.status, 200, r.body)

    def test_concurrency_one(self):
        tier = self.put_tier("conc1", requests=100, period=60, concurrent=1)
        key, _ = self.new_key(rate_limit_tier=tier)
        self.fake.hold()
        self.addCleanup(self.fake.release)
        out, threads = parallel(1, lambda i: self.send(key))
        self.fake.wait_inflight(1)
        r = self.send(key, timeout=10)
        msg = self.assert_error(r, 429, "rate_limit_error")
        self.assertIn("1 concurrent requests", msg)
        self.assertEqual(r.header("retry-after"), "1")
        self.assertEqual(len(self.fake.requests()), 1)
        self.fake.release()
        threads[0].join(15)
        self.assertEqual(out[0].status, 200)
        self.assertEqual(self.send(key).status, 200)  # the slot came back

    def test_slot_released_after_client_disconnect(self):
        tier = self.put_tier("conc1dc", requests=-1, period=60, concurrent=1)
        key, obj = self.new_key(rate_limit_tier=tier)
        self.fake.set_scenario(text="y" * 400, deltas=40)
        self.fake.set_delay(per_event_ms=50)
        self.fake.set_usage(input_tokens=70, output_tokens=333)
        conn = RawConnection(self.relay.port)
        conn.send(raw_http_request("POST", "/v1/messages", "127.0.0.1:%d" % self.relay.port,
                                   self.hdrs(key), json.dumps(messages_body(stream=True))))
        conn.recv_until(b"content_block_delta")
        conn.abort()
        # The relay keeps draining the upstream (≈2 s of events left): the slot is still held.
        r = self.send(key, timeout=10)
        self.assertEqual(r.status, 429)
        self.assertIn("concurrent", r.json()["error"]["message"])
        self.fake.wait_for_finished(1, timeout=20)
        self.fake.set_delay()
        r = wait_until(lambda: (lambda r: r if r.status == 200 else None)(
            self.send(key, timeout=10)), 10, "the slot to come back after the disconnect")
        self.assertEqual(r.status, 200)
        self.assertEqual(len(self.fake.requests()), 2)
        # The aborted stream was billed the upstream's full usage once drained.
        rows = wait_until(lambda: (lambda rs: rs if any(x["response_status"] == 200 and
                                                        not x["stream"] for x in rs) else None)(
            self.usage_rows(obj["id"])), 10, "the usage rows")
        self.assertEqual([(x["prompt_tokens"], x["completion_tokens"]) for x in rows
                          if x["stream"]], [(70, 333)])

    def test_slot_released_after_upstream_cut_and_upstream_error(self):
        tier = self.put_tier("conc1cut", requests=-1, period=60, concurrent=1)
        key, _ = self.new_key(rate_limit_tier=tier)
        self.fake.cut_after(3, count=1)
        with self.relay.stream("POST", "/v1/messages", messages_body(stream=True),
                               self.hdrs(key)) as s:
            events = [ev for _, ev in s.events()]
        self.assertEqual(events[-1]["event"], "error")
        # Settle happens before the relay ends the response, so the slot is free at once.
        self.assertEqual(self.send(key).status, 200)
        self.fake.fail_next(1, 400)
        self.assertEqual(self.send(key).status, 400)
        self.assertEqual(self.send(key).status, 200)
        self.assertEqual(len(self.fake.requests()), 4)


# ---- allowlists -----------------------------------------------------------------------------
@both_stores
class AllowlistTest(LimitsBase):
    """No trusted proxies: the socket peer (127.0.0.1) is the client address."""

    def test_ipv4_and_cidr_by_socket_peer(self):
        key, obj = self.new_key(allowed_ips=["127.0.0.1"])
        self.assertEqual(obj["allowed_ips"], ["127.0.0.1"])
        self.assertEqual(self.send(key).status, 200)
        k = self.patch_key(obj["id"], allowed_ips=["10.0.0.0/8"])
        self.assertEqual(k["allowed_ips"], ["10.0.0.0/8"])
        msg = self.assert_error(self.send(key), 403, "permission_error")
        self.assertIn("client address", msg)
        self.assertEqual(len(self.fake.requests()), 1)
        self.patch_key(obj["id"], allowed_ips=["192.168.0.0/16", "127.0.0.0/8"])
        self.assertEqual(self.send(key).status, 200)
        self.relay.wait_for_log(lambda l: "limits.denied" in l and obj["id"] in l, 5)
        rows = self.wait_rows(obj["id"], 3)
        self.assertEqual([(x["response_status"], x["is_error"], x["error_code"] or "")
                          for x in rows],
                         [(200, 0, ""), (403, 1, "permission_error"), (200, 0, "")])
        self.assertEqual({x["client_ip"] for x in rows}, {"127.0.0.1"})

    def test_forwarded_headers_are_ignored_without_trusted_proxies(self):
        key, obj = self.new_key(allowed_ips=["10.0.0.0/8"])
        for h in ({"x-forwarded-for": "10.1.2.3"}, {"x-real-ip": "10.1.2.3"}):
            self.assert_error(self.send(key, headers=h), 403, "permission_error")
        self.patch_key(obj["id"], allowed_ips=["127.0.0.1"])
        self.assertEqual(self.send(key, headers={"x-forwarded-for": "10.1.2.3"}).status, 200)
        rows = self.wait_rows(obj["id"], 3)
        self.assertEqual({x["client_ip"] for x in rows}, {"127.0.0.1"})
        self.assertEqual(len(self.fake.requests()), 1)

    def test_domain_wildcards_and_referer(self):
        key, obj = self.new_key(allowed_origins=["*.example.com"])
        self.assertEqual(obj["allowed_origins"], ["*.example.com"])
        cases = [
            ({"origin": "https://app.example.com"}, 200),
            ({"origin": "https://a.b.example.com:8443"}, 200),
            ({"origin": "https://example.com"}, 403),
            ({"origin": "https://evil.com"}, 403),
            ({"origin": "https://example.com.evil.com"}, 403),
            ({"referer": "https://app.example.com/page?x=1"}, 200),
            ({"referer": "https://evil.com/app.example.com"}, 403),
            ({"origin": "https://evil.com", "referer": "https://app.example.com/"}, 403),
            ({}, 403),
        ]
        for h, want in cases:
            r = self.send(key, headers=h)
            self.assertEqual(r.status, want, "%r: %r" % (h, r.body))
            if want == 403:
                self.assertEqual(r.json()["error"]["type"], "permission_error")
        self.assertEqual(len(self.fake.requests()), 3)
        # The original relay's alias is accepted too.
        k = self.patch_key(obj["id"], allowed_domains=["evil.com"])
        self.assertEqual(k["allowed_origins"], ["evil.com"])
        self.assertEqual(self.send(key, headers={"origin": "https://evil.com"}).status, 200)
        self.assertEqual(self.send(key, headers={"origin": "https://app.example.com"}).status,
                         403)

    def test_model_allowlist(self):
        key, obj = self.new_key(allowed_models=["claude-haiku-4-5*"])
        msg = self.assert_error(self.send(key, model=SONNET), 403, "permission_error")
        self.assertIn("model", msg)
        r = self.send(key, model=HAIKU)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["model"], HAIKU)
        with self.relay.stream("POST", "/v1/messages", messages_body(stream=True, model=SONNET),
                               self.hdrs(key)) as s:
            self.assertEqual(s.status, 403)
        self.assertEqual([x["json"]["model"] for x in self.fake.requests()], [HAIKU])
        # Requests without a model (GET /v1/models) are not refused by the model list.
        self.assertEqual(self.relay.request("GET", "/v1/models", headers=self.hdrs(key)).status,
                         200)
        rows = self.wait_rows(obj["id"], 4)
        self.assertEqual([(x["response_status"], x["model"]) for x in rows[:3]],
                         [(403, SONNET), (200, HAIKU), (403, SONNET)])


class TrustedProxyTest(LimitsBase):
    """server.trusted_proxies ["127.0.0.1"]: the relay believes X-Forwarded-For / X-Real-IP."""

    @classmethod
    def relay_env(cls):
        if "cfg_path" not in cls.__dict__:
            cls.cfg_path = write_config(cls, "server:\n  trusted_proxies: [\"127.0.0.1\"]\n")
        return {"RELAY_CONFIG": cls.cfg_path}

    def test_forwarded_ipv4_through_a_trusted_proxy(self):
        key, obj = self.new_key(allowed_ips=["10.0.0.0/8"])
        cases = [
            ({"x-forwarded-for": "10.1.2.3"}, 200),
            ({"x-forwarded-for": "10.1.2.3, 127.0.0.1"}, 200),  # a trusted hop is skipped
            ({"x-forwarded-for": "10.9.9.9, 192.168.1.1"}, 403),  # rightmost untrusted counts
            ({"x-forwarded-for": "192.168.1.1"}, 403),
            ({"x-real-ip": "10.7.7.7"}, 200),
            ({}, 403),  # the proxy itself is not in the list
        ]
        for h, want in cases:
            r = self.send(key, headers=h)
            self.assertEqual(r.status, want, "%r: %r" % (h, r.body))
        rows = self.wait_rows(obj["id"], len(cases))
        self.assertEqual([x["client_ip"] for x in rows],
                         ["10.1.2.3", "10.1.2.3", "192.168.1.1", "192.168.1.1", "10.7.7.7",
                          "127.0.0.1"])
        self.assertEqual(len(self.fake.requests()), 3)

    def test_ipv6_allowlist_through_a_trusted_proxy(self):
        key, obj = self.new_key()
        k = self.patch_key(obj["id"], allowed_ips=["::1/128", "2001:db8::/32"])
        self.assertEqual(k["allowed_ips"], ["::1/128", "2001:db8::/32"])
        self.assertEqual(self.key_state(obj["id"])["allowed_ips"], ["::1/128", "2001:db8::/32"])
        cases = [
            ("2001:db8::5", 200),
            ("2001:db8:ffff:1::42", 200),
            ("2001:db9::1", 403),
            ("::1", 200),
            ("::2", 403),
            ("10.1.2.3", 403),
        ]
        for xff, want in cases:
            r = self.send(key, headers={"x-forwarded-for": xff})
            self.assertEqual(r.status, want, "%s: %r" % (xff, r.body))
        self.assert_error(self.send(key), 403, "permission_error")  # IPv4 peer, IPv6 list
        rows = self.wait_rows(obj["id"], len(cases) + 1)
        self.assertEqual([x["client_ip"] for x in rows[:3]],
                         ["2001:db8::5", "2001:db8:ffff:1::42", "2001:db9::1"])
        self.assertEqual(len(self.fake.requests()), 3)


# ---- Redis: two instances, and an outage ------------------------------------------------------
SHARED_TIERS = """rate_limit:
  by_tier:
    basic: {requests: 100, period: 60}
    shared6: {requests: 6, period: 60}
    shared5: {requests: 5, period: 60}
    one: {requests: 1000, period: 60, concurrent: 1}
"""


@both_stores
class SharedRedisTest(LimitsBase):
    """Two relay-server processes on one store and one Redis database share exact counts."""

    USE_REDIS = True

    @classmethod
    def relay_env(cls):
        if "cfg_path" not in cls.__dict__:
            cls.cfg_path = write_config(cls, SHARED_TIERS)
        return {"RELAY_CONFIG": cls.cfg_path}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Same data directory (the SQLite file; PostgreSQL comes from DATABASE_URL) and the
        # same admin secrets, so either instance can serve the admin API.
        cls.relay_b = cls.new_relay({k: cls.relay.env[k] for k in ("ADMIN_PASSWORD",
                                                                    "SECRET_KEY")},
                                    data_dir=cls.relay.data_dir)
        cls.relay_b.start()

    @classmethod
    def tearDownClass(cls):
        # relay_b does not own its (shared) data directory, so its workdir is ours to remove;
        # the class cleanup still checks its log for secrets afterwards.
        cls.relay_b.stop()
        if not os.environ.get("RELAY_TEST_KEEP"):
            shutil.rmtree(cls.relay_b.workdir, ignore_errors=True)
        super().tearDownClass()

    def test_both_instances_use_redis(self):
        for s in (self.relay, self.relay_b):
            self.assertEqual(s.request("GET", "/health").json()["redis"], "ok")

    def test_alternating_requests_share_one_window(self):
        key, _ = self.new_key(rate_limit_tier="shared6")
        got = []
        for i in range(14):
            s = self.relay if i % 2 == 0 else self.relay_b
            got.append((i % 2, self.send(key, relay=s).status))
        self.assertEqual([st for _, st in got], [200] * 6 + [429] * 8)
        self.assertEqual(len(self.fake.requests()), 6)
        r = self.send(key, relay=self.relay_b)
        self.assertEqual(r.header("anthropic-ratelimit-requests-limit"), "6")
        self.assertEqual(r.header("anthropic-ratelimit-requests-remaining"), "0")

    def test_parallel_requests_on_both_instances_admit_exactly_n(self):
        key, _ = self.new_key(rate_limit_tier="shared5")
        out, threads = parallel(30, lambda i: self.send(
            key, relay=self.relay if i % 2 else self.relay_b))
        for t in threads:
            t.join(30)
        self.assertEqual([x for x in out if isinstance(x, Exception)], [])
        self.assertEqual(sorted(r.status for r in out), [200] * 5 + [429] * 25)
        self.assertEqual(len(self.fake.requests()), 5)

    def test_concurrency_slot_is_shared(self):
        key, _ = self.new_key(rate_limit_tier="one")
        self.fake.hold()
        self.addCleanup(self.fake.release)
        out, threads = parallel(1, lambda i: self.send(key, relay=self.relay))
        self.fake.wait_inflight(1)
        r = self.send(key, relay=self.relay_b, timeout=10)
        self.assertEqual(r.status, 429)
        self.assertIn("concurrent", r.json()["error"]["message"])
        self.fake.release()
        threads[0].join(15)
        self.assertEqual(out[0].status, 200)
        self.assertEqual(self.send(key, relay=self.relay_b).status, 200)

    def test_quota_reservations_are_shared(self):
        # Both instances hold requests against one quota: together they fit only what it allows.
        key, obj = self.new_key(token_limit=100000)
        self.fake.set_usage(input_tokens=100000 - 1000, output_tokens=0)
        self.assertEqual(self.send(key, max_tokens=1, relay=self.relay_b).status, 200)
        self.quiesce_fake()
        self.fake.reset()
        self.fake.hold()
        self.addCleanup(self.fake.release)
        self.fake.set_usage(input_tokens=1, output_tokens=1)
        # Each reserves its input estimate + 300: at most 3 of them fit in 1000.
        out, threads = parallel(10, lambda i: self.send(
            key, max_tokens=300, relay=self.relay if i % 2 else self.relay_b))
        self.fake.wait_inflight(3, timeout=15)
        done = lambda: sum(1 for t in threads if not t.is_alive())  # noqa: E731
        wait_until(lambda: done() + self.fake.inflight >= 10, 15, "all refused or held")
        self.assertEqual(self.fake.inflight, 3)
        self.fake.release()
        for t in threads:
            t.join(30)
        self.assertEqual(sorted(r.status for r in out), [200] * 3 + [429] * 7)
        # Both instances' usage writers reach the one store: 99000 + 3 answers of 2 tokens.
        self.wait_token_used(obj["id"], 99006)


class RedisOutageTest(LimitsBase):
    """The relay's own Redis is killed and restarted while requests keep flowing."""

    START_RELAY = False

    def start_redis(self, port):
        p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self.stop_redis, p)

        def ping():
            try:
                with socket.create_connection(("127.0.0.1", port), 1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(64).startswith(b"+PONG")
            except OSError:
                return False
        wait_until(ping, 10, "redis-server to answer")
        return p

    @staticmethod
    def stop_redis(p):
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(10)

    def redis_keys(self, port):
        out = subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", "relay:*"],
                             capture_output=True, text=True, timeout=10)
        return [line for line in out.stdout.splitlines() if line]

    def test_redis_killed_and_restarted_with_no_failed_request(self):
        if not shutil.which("redis-server"):
            raise unittest.SkipTest("redis-server not installed")
        port = relaytest.free_port()
        redis = self.start_redis(port)
        relay = self.start_relay({"REDIS_URL": "redis://127.0.0.1:%d/0" % port})
        self.relay = relay
        self.assertEqual(relay.request("GET", "/health").json()["redis"], "ok")
        tier = self.put_tier("outage", requests=1000, period=60, concurrent=4)
        key, _ = self.new_key(rate_limit_tier=tier)

        results, stop = [], threading.Event()

        def traffic():
            # One request every ~10 ms, bounded to 3000 even if the main thread goes wrong.
            for _ in range(3000):
                if stop.wait(0.01):
                    return
                t0 = time.monotonic()
                try:
                    st = self.send(key, timeout=10).status
                except Exception as e:  # noqa: BLE001
                    st = repr(e)
                results.append((st, time.monotonic() - t0))

        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        self.addCleanup(stop.set)
        wait_until(lambda: len(results) >= 5, 15, "5 requests with Redis up")
        self.assertTrue(self.redis_keys(port), "the relay kept nothing in Redis")
        n_up = len(results)

        redis.send_signal(signal.SIGKILL)
        redis.wait(10)
        wait_until(lambda: relay.request("GET", "/health").json()["redis"] == "down", 10,
                   '/health "redis":"down"')
        n_down = len(results)
        wait_until(lambda: len(results) >= n_down + 10, 20, "10 requests with Redis down")
        relay.wait_for_log("limits.redis_down", 5)
        lines = relay.request("GET", "/metrics").text.splitlines()
        self.assertIn("relay_redis_up 0", lines)
        self.assertIn("relay_redis_configured 1", lines)

        redis = self.start_redis(port)
        wait_until(lambda: relay.request("GET", "/health").json()["redis"] == "ok", 15,
                   '/health "redis":"ok" again')
        relay.wait_for_log("limits.redis_up", 5)
        self.assertIn("relay_redis_up 1", relay.request("GET", "/metrics").text.splitlines())
        n_back = len(results)
        wait_until(lambda: len(results) >= n_back + 5, 15, "5 requests with Redis back")
        stop.set()
        worker.join(20)
        self.assertFalse(worker.is_alive())

        statuses = [st for st, _ in results]
        self.assertEqual(statuses, [200] * len(results), "a request failed during the outage")
        self.assertGreaterEqual(len(results), n_up + 15)
        slowest = max(d for _, d in results)
        self.assertLess(slowest, 3.0, "a request hung on Redis")
        self.assertTrue(self.redis_keys(port), "the relay did not return to Redis")
        self.assertEqual(len(self.fake.requests()), len(results))


if __name__ == "__main__":
    relaytest.main()
