"""End-to-end: forwarding and usage accounting (issue 4) through the real relay-server and the
fake upstream, on SQLite and (with RELAY_TEST_PG_URL) PostgreSQL."""

import http.client
import json
import os
import subprocess
import time
import unittest

import relaytest
from relaytest import RawConnection, both_stores, messages_body, raw_http_request, wait_until

ANTHROPIC = {"anthropic-version": "2023-06-01", "content-type": "application/json"}

CACHE_USAGE = dict(input_tokens=120, output_tokens=57, cache_creation_input_tokens=300,
                   ephemeral_5m_input_tokens=100, ephemeral_1h_input_tokens=200,
                   cache_read_input_tokens=4000)


class ProxyBase(relaytest.RelayTestCase):
    """Helpers shared by the proxy test classes."""

    def setUp(self):
        super().setUp()
        self.key, self.key_obj = self.relay.create_key()

    def hdrs(self, **extra):
        h = dict(ANTHROPIC, **{"x-api-key": self.key})
        h.update(extra)
        return h

    def wait_rows(self, n, key_id=None, timeout=10):
        """At least n usage rows of key_id (default: this test's key)."""
        return self.wait_usage_rows(key_id or self.key_obj["id"], n, timeout)

    def key_state(self):
        return super().key_state(self.key_obj["id"])


@both_stores
class TestForwarding(ProxyBase):
    def test_non_streaming_usage_and_key_swap(self):
        self.fake.set_usage(**CACHE_USAGE)
        r = self.relay.request("POST", "/v1/messages?beta=true", messages_body("hi"),
                               self.hdrs(**{"anthropic-beta": "prompt-caching-2024-07-31",
                                            "user-agent": "claude-cli/2.0 (external, cli)"}))
        self.assertEqual(r.status, 200, r.body)
        body = r.json()
        self.assertEqual(body["type"], "message")
        self.assertTrue(r.header("request-id", "").startswith("req_"))
        self.assertIsNotNone(r.header("anthropic-ratelimit-requests-limit"))
        rec = self.fake.requests()[-1]
        self.assertEqual(rec["path"], "/v1/messages?beta=true")
        self.assertEqual(rec["headers"]["x-api-key"], self.upstream_key)
        self.assertNotIn("authorization", rec["headers"])
        self.assertEqual(rec["headers"]["anthropic-version"], "2023-06-01")
        self.assertEqual(rec["headers"]["anthropic-beta"], "prompt-caching-2024-07-31")
        for name, value in rec["header_list"]:
            self.assertNotIn(self.key, value, "proxy key reached the upstream in " + name)
        self.assertNotIn(self.key.encode(), rec["body"])
        self.assertEqual(rec["json"]["messages"][0]["content"], "hi")

        row = self.wait_rows(1)[0]
        self.assertEqual(row["request_id"], r.header("request-id"))
        self.assertEqual((row["prompt_tokens"], row["completion_tokens"]), (120, 57))
        self.assertEqual((row["cache_creation_tokens"], row["cache_creation_5m_tokens"],
                          row["cache_creation_1h_tokens"], row["cache_read_tokens"]),
                         (300, 100, 200, 4000))
        self.assertEqual(row["total_tokens"], 120 + 57 + 300 + 4000)
        self.assertEqual((row["stream"], row["estimated"], row["is_error"], row["attempts"]),
                         (0, 0, 0, 1))
        self.assertEqual(row["response_status"], 200)
        self.assertEqual(row["request_path"], "/v1/messages")
        self.assertEqual(row["model"], "claude-sonnet-4-5-20250929")
        self.assertEqual(row["user_agent"], "claude-cli/2.0 (external, cli)")
        self.assertEqual(row["client_ip"], "127.0.0.1")
        # Sonnet 4.5 list prices: 3 in, 15 out, 3.75 5m write, 6 1h write, 0.30 read per MTok.
        want = (120 * 3 + 57 * 15 + 100 * 3.75 + 200 * 6 + 4000 * 0.30) / 1e6
        self.assertAlmostEqual(row["total_cost"], want, places=9)
        k = wait_until(lambda: (lambda k: k if k["token_used"] == 4477 else None)(
            self.key_state()), 10, "token_used on the key")
        self.assertEqual(k["request_count"], 1)

    def test_claude_code_shaped_request(self):
        """What Claude Code sends: ?beta=true, stream, a ~50 KB body, max_tokens 128000 (far above
        the reservation ceiling, yet admitted on a 1M-token key), every encoding, and the key as
        Authorization: Bearer (ANTHROPIC_AUTH_TOKEN)."""
        self.fake.set_usage(**CACHE_USAGE)
        body = messages_body("x " * 25000, stream=True, max_tokens=128000,
                             system=[{"type": "text", "text": "You are Claude Code.",
                                      "cache_control": {"type": "ephemeral"}}])
        self.assertGreater(len(json.dumps(body)), 50000)
        h = dict(ANTHROPIC, authorization="Bearer " + self.key,
                 **{"accept-encoding": "gzip, deflate, br, zstd",
                    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
                    "user-agent": "claude-cli/2.0.0 (external, cli)", "x-app": "cli"})
        with self.relay.stream("POST", "/v1/messages?beta=true", body, h) as s:
            self.assertEqual(s.status, 200)
            self.assertTrue(s.headers["content-type"].startswith("text/event-stream"))
            events = [ev for _, ev in s.events()]
        self.assertEqual(events[-1]["event"], "message_stop")
        rec = self.fake.requests()[-1]
        self.assertEqual(rec["headers"]["x-api-key"], self.upstream_key)
        self.assertNotIn("authorization", rec["headers"])
        self.assertEqual(rec["headers"]["x-app"], "cli")
        self.assertEqual(rec["json"]["max_tokens"], 128000)
        row = self.wait_rows(1)[0]
        self.assertEqual((row["prompt_tokens"], row["completion_tokens"], row["stream"]),
                         (120, 57, 1))
        self.assertEqual(row["request_size"], len(rec["body"]))

    def test_bearer_key_is_accepted_and_swapped(self):
        r = self.relay.request("POST", "/v1/messages", messages_body(),
                               dict(ANTHROPIC, authorization="Bearer " + self.key))
        self.assertEqual(r.status, 200, r.body)
        rec = self.fake.requests()[-1]
        self.assertEqual(rec["headers"]["x-api-key"], self.upstream_key)
        self.assertNotIn("authorization", rec["headers"])

    def test_streaming_with_cache_tokens_and_cumulative_delta(self):
        self.fake.set_usage(start_usage=dict(CACHE_USAGE, output_tokens=1, input_tokens=100),
                            **CACHE_USAGE)
        with self.relay.stream("POST", "/v1/messages?beta=true", messages_body(stream=True),
                               self.hdrs()) as s:
            self.assertEqual(s.status, 200)
            self.assertTrue(s.headers["content-type"].startswith("text/event-stream"))
            self.assertIsNone(s.headers.get("content-length"))
            events = [ev for _, ev in s.events()]
        names = [e["event"] for e in events]
        self.assertEqual(names[0], "message_start")
        self.assertIn("ping", names)
        self.assertEqual(names[-2:], ["message_delta", "message_stop"])
        row = self.wait_rows(1)[0]
        # message_delta's usage is cumulative and replaces message_start's (input 100 → 120).
        self.assertEqual((row["prompt_tokens"], row["completion_tokens"]), (120, 57))
        self.assertEqual((row["cache_creation_tokens"], row["cache_read_tokens"]), (300, 4000))
        self.assertEqual((row["stream"], row["estimated"], row["is_error"]), (1, 0, 0))
        self.assertGreater(row["time_to_first_byte_ms"], -1)

    def test_gzip_from_upstream_is_decoded_and_billed(self):
        self.fake.set_gzip(True)
        self.fake.set_usage(input_tokens=11, output_tokens=22)
        accept = {"accept-encoding": "gzip, deflate, br, zstd"}
        r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs(**accept))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["usage"]["output_tokens"], 22)
        with self.relay.stream("POST", "/v1/messages", messages_body(stream=True),
                               self.hdrs(**accept)) as s:
            events = [ev for _, ev in s.events()]
        self.assertEqual(events[-1]["event"], "message_stop")
        recs = self.fake.requests()
        self.assertIn("gzip", recs[-1]["headers"].get("accept-encoding", ""))
        rows = self.wait_rows(2)
        self.assertEqual([(x["prompt_tokens"], x["completion_tokens"]) for x in rows],
                         [(11, 22), (11, 22)])
        self.assertEqual([x["estimated"] for x in rows], [0, 0])

    def test_retries_then_success(self):
        self.fake.fail_next(2, 529)
        r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs())
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(len(self.fake.requests()), 3)
        row = self.wait_rows(1)[0]
        self.assertEqual((row["attempts"], row["is_error"]), (3, 0))

    def test_retry_after_is_honoured(self):
        self.fake.fail_next(1, 429, retry_after=2)
        t0 = time.monotonic()
        r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs())
        self.assertEqual(r.status, 200)
        recs = self.fake.requests()
        self.assertEqual(len(recs), 2)
        self.assertGreaterEqual(recs[1]["time"] - recs[0]["time"], 1.9)
        self.assertGreaterEqual(time.monotonic() - t0, 1.9)

    def test_retries_exhausted_passes_the_upstream_error(self):
        self.fake.fail_next(10, 503)
        r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs())
        self.assertEqual(r.status, 503)
        self.assertEqual(r.json()["error"]["type"], "api_error")
        self.assertEqual(len(self.fake.requests()), 4)  # 1 + max_retries (3)
        row = self.wait_rows(1)[0]
        self.assertEqual((row["attempts"], row["is_error"], row["response_status"]), (4, 1, 503))
        self.assertEqual(row["total_tokens"], 0)

    def test_upstream_4xx_is_passed_unchanged_without_retry(self):
        self.fake.fail_next(1, 400, message="max_tokens: too large")
        r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs())
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"], {"type": "invalid_request_error",
                                             "message": "max_tokens: too large"})
        self.assertEqual(len(self.fake.requests()), 1)

    def test_cut_stream_is_estimated_and_the_client_gets_an_error_event(self):
        self.fake.set_scenario(text="word " * 200, deltas=20)
        self.fake.cut_after(8)
        with self.relay.stream("POST", "/v1/messages", messages_body(stream=True),
                               self.hdrs()) as s:
            events = [ev for _, ev in s.events()]
        self.assertEqual(s.status, 200)
        self.assertEqual(events[-1]["event"], "error")
        self.assertEqual(events[-1]["data"]["error"]["type"], "api_error")
        self.assertEqual(len(self.fake.requests()), 1, "no retry once bytes reached the client")
        row = self.wait_rows(1)[0]
        self.assertEqual((row["estimated"], row["is_error"], row["stream"]), (1, 1, 1))
        self.assertEqual(row["prompt_tokens"], 25)  # message_start arrived before the cut
        self.assertGreater(row["completion_tokens"], 1)  # estimated from the text received

    def test_cut_json_answer_is_a_502_and_billed_by_estimate(self):
        self.fake.set_scenario(text="word " * 300)
        self.fake.cut_json_after(400)
        r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs())
        self.assertEqual(r.status, 502)
        self.assertEqual(r.json()["error"]["type"], "api_error")
        self.assertEqual(len(self.fake.requests()), 1, "the upstream did the work: no retry")
        row = self.wait_rows(1)[0]
        self.assertEqual((row["estimated"], row["is_error"], row["response_status"]), (1, 1, 502))
        self.assertGreater(row["prompt_tokens"], 0)
        self.assertGreater(row["completion_tokens"], 0)

    def test_error_event_after_200(self):
        self.fake.set_error_after_events(4, "overloaded_error")
        with self.relay.stream("POST", "/v1/messages", messages_body(stream=True),
                               self.hdrs()) as s:
            events = [ev for _, ev in s.events()]
        self.assertEqual(events[-1]["event"], "error")
        self.assertEqual(events[-1]["data"]["error"]["type"], "overloaded_error")
        row = self.wait_rows(1)[0]
        self.assertEqual((row["is_error"], row["error_code"]), (1, "overloaded_error"))

    def test_client_disconnect_is_billed_with_the_upstream_usage(self):
        self.fake.set_scenario(text="x" * 400, deltas=30)
        self.fake.set_delay(per_event_ms=40)
        self.fake.set_usage(input_tokens=70, output_tokens=333)
        conn = RawConnection(self.relay.port)
        conn.send(raw_http_request("POST", "/v1/messages", "127.0.0.1:%d" % self.relay.port,
                                   self.hdrs(), json.dumps(messages_body(stream=True))))
        conn.recv_until(b"content_block_delta")
        conn.abort()
        self.fake.wait_for_finished(1, timeout=20)
        rec = self.fake.requests()[0]
        self.assertTrue(rec.get("completed"), "the relay kept reading the upstream")
        row = self.wait_rows(1)[0]
        self.assertEqual((row["prompt_tokens"], row["completion_tokens"]), (70, 333))
        self.assertEqual(row["estimated"], 0)

    def test_count_tokens_and_models_do_not_consume_quota(self):
        r = self.relay.request("POST", "/v1/messages/count_tokens", messages_body(), self.hdrs())
        self.assertEqual(r.status, 200)
        self.assertIn("input_tokens", r.json())
        r = self.relay.request("GET", "/v1/models", headers=self.hdrs())
        self.assertEqual(r.status, 200)
        self.assertIn("data", r.json())
        rows = self.wait_rows(2)
        self.assertEqual([x["total_tokens"] for x in rows], [0, 0])
        self.assertEqual(self.key_state()["token_used"], 0)


class TestEdges(ProxyBase):
    """Refusals, side traffic and streaming timing (one store is enough)."""

    def test_upstream_connection_is_reused(self):
        for i in range(6):
            body = messages_body(stream=bool(i % 2))
            r = self.relay.request("POST", "/v1/messages", body, self.hdrs())
            self.assertEqual(r.status, 200)
        self.relay.request("GET", "/v1/models", headers=self.hdrs())
        # Seven requests one after another: the streams run on the relay's I/O threads (one per
        # core, round robin), each of which opens one connection and reuses it; the others run
        # on their worker with a pooled handle that keeps its own connection (one, used in turn).
        peers = {rec["peer"] for rec in self.fake.requests()}
        self.assertLessEqual(len(peers), min(os.cpu_count() or 1, 8) + 1,
                             "each request opened a new upstream connection: %s" % peers)
        self.assertLess(len(peers), 7)

    def relay_with_config(self, yaml_text):
        cfg = os.path.join(self.relay.workdir, "extra-%d.yaml" % time.monotonic_ns())
        with open(cfg, "w") as f:
            f.write(yaml_text)
        relay = self.start_relay({"RELAY_CONFIG": cfg})
        key, obj = relay.create_key()
        return relay, key, obj

    def test_drain_cut_short_is_billed_by_estimate(self):
        relay, key, obj = self.relay_with_config(
            "upstream:\n  primary:\n    drain_timeout: 0.5\n")
        self.fake.set_scenario(text="token " * 300, deltas=30)
        self.fake.set_delay(per_event_ms=200)
        conn = RawConnection(relay.port)
        conn.send(raw_http_request("POST", "/v1/messages", "127.0.0.1:%d" % relay.port,
                                   dict(ANTHROPIC, **{"x-api-key": key}),
                                   json.dumps(messages_body(stream=True))))
        conn.recv_until(b"content_block_delta")
        conn.abort()
        rows = wait_until(lambda: self.usage_rows(obj["id"], relay) or None, 15, "usage row")
        row = rows[0]
        self.assertEqual((row["estimated"], row["stream"]), (1, 1))
        self.assertEqual(row["prompt_tokens"], 25)  # message_start came before the client left
        self.assertGreater(row["completion_tokens"], 0)
        self.assertLess(row["completion_tokens"], 15 * 20)  # not the full answer: cut short

    def test_idle_timeout_ends_a_stalled_stream(self):
        relay, key, obj = self.relay_with_config("upstream:\n  primary:\n    idle_timeout: 1\n")
        self.fake.set_scenario(deltas=3)
        self.fake.set_delay(per_event_ms=3000)
        with relay.stream("POST", "/v1/messages", messages_body(stream=True),
                          dict(ANTHROPIC, **{"x-api-key": key}), timeout=30) as st:
            events = [ev for _, ev in st.events()]
        self.assertEqual(events[-1]["event"], "error")
        self.assertEqual(events[-1]["data"]["error"]["type"], "api_error")
        # Ended by the relay, not by the upstream: the fake never got to send its last events.
        rec = self.fake.wait_for_finished(1, timeout=30)[-1]
        self.assertFalse(rec.get("completed"))
        row = wait_until(lambda: self.usage_rows(obj["id"], relay) or None, 15, "usage row")[0]
        self.assertEqual((row["estimated"], row["is_error"]), (1, 1))

    def test_first_byte_timeout_from_the_configuration(self):
        cfg = os.path.join(self.relay.workdir, "timeouts.yaml")
        with open(cfg, "w") as f:
            f.write("upstream:\n  primary:\n    first_byte_timeout: 1\n    max_retries: 1\n"
                    "    retry_base_ms: 100\n")
        relay = self.start_relay({"RELAY_CONFIG": cfg})
        key, _ = relay.create_key()
        self.fake.set_delay(first_byte_ms=4000)
        r = relay.request("POST", "/v1/messages", messages_body(), dict(ANTHROPIC, **{"x-api-key": key}))
        self.assertEqual(r.status, 504)
        self.assertEqual(r.json()["error"]["type"], "timeout_error")
        self.assertEqual(len(self.fake.requests()), 2)  # the first try and one retry

    def test_events_arrive_one_by_one_with_curl_no_buffer(self):
        self.fake.set_scenario(deltas=6)
        self.fake.set_delay(per_event_ms=250)
        cmd = ["curl", "-sS", "--no-buffer", "-X", "POST", self.relay.url + "/v1/messages",
               "--data-binary", json.dumps(messages_body(stream=True))]
        for k, v in self.hdrs().items():
            cmd += ["-H", "%s: %s" % (k, v)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        times = []
        t0 = time.monotonic()
        for line in p.stdout:
            if line.startswith(b"event:"):
                times.append(time.monotonic() - t0)
        self.assertEqual(p.wait(30), 0)
        self.assertGreaterEqual(len(times), 10)
        # With 250 ms between events upstream, a relay that collected the stream first would
        # deliver every event at once at the end.
        self.assertGreater(times[-1] - times[0], 1.5)
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertGreaterEqual(sum(1 for g in gaps if g > 0.15), 6)

    def test_head_answer_has_no_body_and_keeps_the_connection_usable(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.relay.port, timeout=10)
        try:
            conn.request("HEAD", "/v1/models", headers=self.hdrs())
            r = conn.getresponse()
            self.assertEqual(r.read(), b"")
            conn.request("GET", "/v1/models", headers=self.hdrs())
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            self.assertIn("data", json.loads(r.read()))
        finally:
            conn.close()

    def test_huge_retry_after_is_passed_to_the_client(self):
        self.fake.fail_next(1, 529, retry_after=3000000)
        r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs())
        self.assertEqual(r.status, 529)
        self.assertEqual(r.header("retry-after"), "3000000")
        self.assertEqual(len(self.fake.requests()), 1)

    def test_http_date_retry_after_uses_the_normal_backoff(self):
        self.fake.fail_next(1, 503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
        r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs())
        self.assertEqual(r.status, 200)
        recs = self.fake.requests()
        self.assertEqual(len(recs), 2)
        self.assertGreater(recs[1]["time"] - recs[0]["time"], 0.2)  # base 500 ms, equal jitter

    def test_headers_named_in_connection_are_not_forwarded(self):
        h = self.hdrs(**{"connection": "keep-alive, x-hop-secret", "x-hop-secret": "1",
                         "x-end-to-end": "2"})
        self.assertEqual(self.relay.request("POST", "/v1/messages", messages_body(), h).status, 200)
        got = self.fake.requests()[-1]["headers"]
        self.assertNotIn("x-hop-secret", got)
        self.assertEqual(got.get("x-end-to-end"), "2")

    def test_forwarded_for_from_a_trusted_proxy_is_read_whole(self):
        cfg = os.path.join(self.relay.workdir, "proxies.yaml")
        with open(cfg, "w") as f:
            f.write('server:\n  trusted_proxies: ["127.0.0.1"]\n')
        relay = self.start_relay({"RELAY_CONFIG": cfg})
        key, obj = relay.create_key()
        conn = RawConnection(relay.port)
        body = json.dumps(messages_body()).encode()
        head = ("POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\n"
                "anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
                # the client's forged line first, the proxy's own line after it
                "X-Forwarded-For: 203.0.113.66\r\nX-Forwarded-For: 198.51.100.7\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n" % (key, len(body)))
        conn.send(head.encode() + body)
        self.assertIn(b" 200 ", conn.recv_all().split(b"\r\n")[0])
        conn.close()
        rows = wait_until(lambda: (lambda rows: rows if rows else None)(
            self.usage_rows(obj["id"], relay)), 10, "usage row")
        self.assertEqual(rows[0]["client_ip"], "198.51.100.7")

    def test_base_url_with_v1_is_not_doubled(self):
        relay = self.start_relay({"UPSTREAM_API_URL": self.fake.url + "/v1/"})
        key, _ = relay.create_key()
        r = relay.request("POST", "/v1/messages", messages_body(), dict(ANTHROPIC, **{"x-api-key": key}))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.fake.requests()[-1]["path"], "/v1/messages")

    def test_side_traffic_is_answered_locally(self):
        self.assertEqual(self.relay.request("HEAD", "/").status, 200)
        self.assertEqual(self.relay.request("HEAD", "/api/hello").status, 200)
        r = self.relay.request("POST", "/api/event_logging/batch", {"events": []}, self.hdrs())
        self.assertEqual(r.status, 200)
        self.assertEqual(self.fake.requests(), [])

    def test_refusals_use_anthropic_error_json(self):
        cases = [
            ({}, 401, "authentication_error"),
            ({"x-api-key": "sk-proxy-nope_" + "a" * 43}, 401, "authentication_error"),
            ({"x-api-key": "garbage"}, 401, "authentication_error"),
        ]
        for h, status, etype in cases:
            r = self.relay.request("POST", "/v1/messages", messages_body(), dict(ANTHROPIC, **h))
            self.assertEqual(r.status, status)
            js = r.json()
            self.assertEqual((js["type"], js["error"]["type"]), ("error", etype))
            self.assertEqual(js["detail"], js["error"]["message"])
        r = self.relay.request("POST", "/v1/messages", b"{not json", self.hdrs())
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["type"], "invalid_request_error")
        self.assertEqual(self.fake.requests(), [])

    def test_oversized_body_gets_413(self):
        conn = RawConnection(self.relay.port)
        head = raw_http_request("POST", "/v1/messages", "127.0.0.1", self.hdrs())
        conn.send(head.replace(b"\r\n\r\n", b"\r\nContent-Length: 40000000\r\n\r\n", 1))
        got = conn.recv_until(b"}", timeout=10)
        conn.close()
        self.assertIn(b" 413 ", got.split(b"\r\n")[0])
        self.assertIn(b"request_too_large", got)
        self.assertEqual(self.fake.requests(), [])

    def test_upstream_unreachable_gives_502_after_retries(self):
        relay = self.start_relay({"UPSTREAM_API_URL": "http://127.0.0.1:%d" % relaytest.free_port()})
        key, _ = relay.create_key()
        r = relay.request("POST", "/v1/messages", messages_body(), dict(ANTHROPIC, **{"x-api-key": key}))
        self.assertEqual(r.status, 502)
        self.assertEqual(r.json()["error"]["type"], "api_error")

    def test_no_upstream_key_answers_503(self):
        relay = self.start_relay({"UPSTREAM_API_KEY": None})
        relay.wait_for_log("UPSTREAM_API_KEY")
        key, _ = relay.create_key()
        r = relay.request("POST", "/v1/messages", messages_body(), dict(ANTHROPIC, **{"x-api-key": key}))
        self.assertEqual(r.status, 503)
        self.assertIn("UPSTREAM_API_KEY", r.json()["error"]["message"])


class TestDatabaseOutage(ProxyBase):
    """PostgreSQL goes away while requests are served: rows wait in the writer's queue and are
    all written when it returns; nothing is dropped."""

    STORE = "pg"

    def test_rows_survive_a_database_restart(self):
        pg_dir = os.environ.get("RELAY_TEST_PG_DIR")
        if not pg_dir:
            self.skipTest("RELAY_TEST_PG_DIR unset")
        script = os.path.join(os.environ["RELAY_SOURCE_DIR"], "scripts", "pg-test-server.sh")
        self.assertEqual(self.relay.request("POST", "/v1/messages", messages_body(),
                                            self.hdrs()).status, 200)
        self.wait_rows(1)
        subprocess.run(["bash", script, "stop", pg_dir], check=True, capture_output=True, timeout=60)
        try:
            # The key is verified from the cache (TTL 5 s), so requests go on while the
            # database is down; their rows wait in the writer's queue.
            for _ in range(4):
                r = self.relay.request("POST", "/v1/messages", messages_body(), self.hdrs())
                self.assertEqual(r.status, 200, r.body)
        finally:
            subprocess.run(["bash", script, "restart", pg_dir], check=True, capture_output=True,
                           timeout=60)
        rows = self.wait_rows(5, timeout=30)
        self.assertEqual(len(rows), 5)
        self.assertEqual(sum(x["total_tokens"] for x in rows), 5 * 40)
        metrics = self.relay.request("GET", "/metrics").text
        drops = [l for l in metrics.splitlines() if l.startswith("relay_usage_write_drops_total")]
        self.assertEqual(drops, ["relay_usage_write_drops_total 0"])
        k = wait_until(lambda: (lambda k: k if k["request_count"] == 5 else None)(
            self.key_state()), 20, "request_count 5")
        self.assertEqual(k["token_used"], 200)


if __name__ == "__main__":
    relaytest.main()
