"""Tests of the test harness itself: the fake Anthropic upstream over real HTTP, its /_control/
API and standalone mode, and relaytest's process, client and exit-code helpers (no relay)."""

import gzip
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

import fake_upstream
import relaytest
from fake_upstream import FakeUpstream
from relaytest import RawConnection, messages_body, parse_sse, request, stream_request, wait_until

KEY = "sk-ant-test-upstream-key-0123456789"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
ORDER_HEAD = ["message_start", "content_block_start", "ping"]
ORDER_TAIL = ["content_block_stop", "message_delta", "message_stop"]
FAKE_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "fake_upstream.py")


def stream_events(fake, body=None, headers=HEADERS, timeout=10):
    """(Stream, [(t, event)]) for one streamed /v1/messages request."""
    s = stream_request(fake.port, "POST", "/v1/messages", body or messages_body(stream=True),
                       headers, timeout)
    with s:
        evs = list(s.events())
    return s, evs


class FakeUpstreamWire(unittest.TestCase):
    """The wire format and the faults, driven through the in-process API."""

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeUpstream(api_key=KEY).start()
        cls.addClassCleanup(cls.fake.stop)

    def setUp(self):
        self.fake.reset()

    def test_json_message_shape_and_headers(self):
        self.fake.set_usage(input_tokens=11, output_tokens=7, cache_creation_input_tokens=5,
                            cache_read_input_tokens=3, ephemeral_5m_input_tokens=4,
                            ephemeral_1h_input_tokens=1)
        r = request(self.fake.port, "POST", "/v1/messages", messages_body(model="claude-x"),
                    HEADERS)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("content-type"), "application/json")
        self.assertRegex(r.header("request-id"), r"^req_[A-Za-z0-9]{24}$")
        self.assertEqual(r.header("anthropic-ratelimit-requests-limit"), "1000")
        self.assertEqual(r.header("anthropic-ratelimit-requests-remaining"), "999")
        self.assertRegex(r.header("anthropic-ratelimit-requests-reset"),
                         r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        js = r.json()
        self.assertTrue(js["id"].startswith("msg_"))
        self.assertEqual((js["type"], js["role"], js["model"]), ("message", "assistant", "claude-x"))
        self.assertEqual(js["content"], [{"type": "text", "text": fake_upstream.DEFAULT_TEXT}])
        self.assertEqual(js["stop_reason"], "end_turn")
        self.assertIsNone(js["stop_sequence"])
        u = js["usage"]
        self.assertEqual((u["input_tokens"], u["output_tokens"], u["cache_creation_input_tokens"],
                          u["cache_read_input_tokens"]), (11, 7, 5, 3))
        self.assertEqual(u["cache_creation"], {"ephemeral_5m_input_tokens": 4,
                                               "ephemeral_1h_input_tokens": 1})
        r2 = request(self.fake.port, "POST", "/v1/messages", messages_body(), HEADERS)
        self.assertNotEqual(r.header("request-id"), r2.header("request-id"))
        self.assertNotEqual(js["id"], r2.json()["id"])

    def test_sse_event_order_and_cumulative_usage(self):
        self.fake.set_usage(input_tokens=100, output_tokens=42, cache_creation_input_tokens=30,
                            cache_read_input_tokens=70, ephemeral_5m_input_tokens=20,
                            ephemeral_1h_input_tokens=10)
        self.fake.set_scenario(text="abcdefgh", deltas=4)
        s, evs = stream_events(self.fake)
        self.assertEqual(s.status, 200)
        self.assertTrue(s.headers["content-type"].startswith("text/event-stream"))
        self.assertEqual(s.headers["transfer-encoding"], "chunked")
        self.assertTrue(s.headers["request-id"].startswith("req_"))
        self.assertFalse(s.incomplete)
        names = [e["event"] for _, e in evs]
        self.assertEqual(names, ORDER_HEAD + ["content_block_delta"] * 4 + ORDER_TAIL)
        for _, e in evs:  # the SSE event name always equals the data's type
            self.assertEqual(e["event"], e["data"]["type"])
        start = evs[0][1]["data"]["message"]
        self.assertEqual(start["content"], [])
        self.assertIsNone(start["stop_reason"])
        self.assertEqual(start["usage"]["input_tokens"], 100)
        self.assertEqual(start["usage"]["cache_creation_input_tokens"], 30)
        self.assertEqual(start["usage"]["cache_read_input_tokens"], 70)
        self.assertEqual(start["usage"]["cache_creation"]["ephemeral_1h_input_tokens"], 10)
        self.assertEqual(start["usage"]["output_tokens"], 1)
        text = "".join(e["data"]["delta"]["text"] for _, e in evs
                       if e["event"] == "content_block_delta")
        self.assertEqual(text, "abcdefgh")
        delta = evs[-2][1]["data"]
        self.assertEqual(delta["delta"]["stop_reason"], "end_turn")
        self.assertEqual(delta["usage"], {"input_tokens": 100, "cache_creation_input_tokens": 30,
                                          "cache_read_input_tokens": 70, "output_tokens": 42})

    def test_start_usage_differs_from_final(self):
        self.fake.set_usage(input_tokens=50, output_tokens=9,
                            start_usage={"input_tokens": 40, "output_tokens": 2})
        _, evs = stream_events(self.fake)
        self.assertEqual(evs[0][1]["data"]["message"]["usage"]["input_tokens"], 40)
        self.assertEqual(evs[0][1]["data"]["message"]["usage"]["output_tokens"], 2)
        self.assertEqual(evs[-2][1]["data"]["usage"]["input_tokens"], 50)
        self.assertEqual(evs[-2][1]["data"]["usage"]["output_tokens"], 9)
        with self.assertRaises(ValueError):
            self.fake.set_usage(bogus=1)

    def test_per_request_scenario(self):
        hdr = dict(HEADERS, **{"x-fake-scenario": json.dumps(
            {"usage": {"output_tokens": 321}, "text": "hi"})})
        js = request(self.fake.port, "POST", "/v1/messages", messages_body(), hdr).json()
        self.assertEqual(js["usage"]["output_tokens"], 321)
        self.assertEqual(js["content"][0]["text"], "hi")
        body = messages_body(stream=True, fake_scenario={"usage": {"input_tokens": 9},
                                                         "deltas": 2})
        _, evs = stream_events(self.fake, body)
        self.assertEqual([e["event"] for _, e in evs].count("content_block_delta"), 2)
        self.assertEqual(evs[-2][1]["data"]["usage"]["input_tokens"], 9)
        # The default scenario is untouched by per-request overrides.
        js = request(self.fake.port, "POST", "/v1/messages", messages_body(), HEADERS).json()
        self.assertEqual(js["usage"]["output_tokens"], 15)

    def test_auth_refused(self):
        for hdr, msg in (({}, "x-api-key header is required"),
                         ({"x-api-key": "sk-proxy-wrong"}, "invalid x-api-key"),
                         ({"authorization": "Bearer " + KEY}, "x-api-key header is required")):
            r = request(self.fake.port, "POST", "/v1/messages", messages_body(), hdr)
            self.assertEqual(r.status, 401)
            self.assertEqual(r.json()["type"], "error")
            self.assertEqual(r.json()["error"], {"type": "authentication_error", "message": msg})
            self.assertEqual(r.json()["request_id"], r.header("request-id"))
        # The answer reaches the client a moment before the record is finished: wait for it.
        recs = self.fake.wait_for_finished(3)
        self.assertEqual([x["headers"].get("x-api-key") for x in recs],
                         [None, "sk-proxy-wrong", None])
        self.assertEqual([x["status"] for x in recs], [401, 401, 401])

    def test_fail_next_with_retry_after(self):
        self.fake.fail_next(2, 429, retry_after=3)
        for _ in range(2):
            r = request(self.fake.port, "POST", "/v1/messages", messages_body(), HEADERS)
            self.assertEqual(r.status, 429)
            self.assertEqual(r.header("retry-after"), "3")
            self.assertEqual(r.json()["error"]["type"], "rate_limit_error")
        self.assertEqual(request(self.fake.port, "POST", "/v1/messages", messages_body(),
                                 HEADERS).status, 200)

    def test_error_statuses_and_bodies(self):
        for status, etype in ((529, "overloaded_error"), (500, "api_error"),
                              (400, "invalid_request_error"), (429, "rate_limit_error")):
            self.fake.fail_next(1, status)
            r = request(self.fake.port, "POST", "/v1/messages", messages_body(stream=True),
                        HEADERS)
            self.assertEqual(r.status, status)
            self.assertEqual(r.json()["error"]["type"], etype)
            self.assertEqual(r.header("content-type"), "application/json")
            # 429 gets a default retry-after; the others only when asked for.
            self.assertEqual(r.header("retry-after"), "1" if status == 429 else None)
        self.fake.fail_next(1, 429, retry_after=False, message="slow down")
        r = request(self.fake.port, "GET", "/v1/models", headers=HEADERS)
        self.assertIsNone(r.header("retry-after"))
        self.assertEqual(r.json()["error"]["message"], "slow down")
        # A malformed request gets a genuine 400, no fault needed.
        r = request(self.fake.port, "POST", "/v1/messages",
                    {"model": "m", "messages": []}, HEADERS)
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["message"], "max_tokens: Field required")
        self.assertEqual(request(self.fake.port, "GET", "/v1/nope", headers=HEADERS).status, 404)

    def test_cut_stream(self):
        self.fake.cut_after(3)
        s, evs = stream_events(self.fake)
        self.assertEqual(s.status, 200)
        self.assertTrue(s.incomplete, "the client must see an incomplete chunked body")
        self.assertEqual([e["event"] for _, e in evs], ORDER_HEAD)
        rec = self.fake.wait_for_finished(1)[0]
        self.assertEqual((rec["events_sent"], rec["completed"]), (3, False))
        # Seen raw: the terminating zero-length chunk never arrives, the socket just closes.
        c = RawConnection(self.fake.port)
        body = json.dumps(messages_body(stream=True)).encode()
        c.send(relaytest.raw_http_request("POST", "/v1/messages", "127.0.0.1", HEADERS, body))
        data = c.recv_all(timeout=10)
        c.close()
        self.assertIn(b"event: ping", data)
        self.assertNotIn(b"content_block_delta", data)
        self.assertFalse(data.endswith(b"0\r\n\r\n"))
        # count=1 cuts only the next stream.
        self.fake.cut_after(2, count=1)
        self.assertTrue(stream_events(self.fake)[0].incomplete)
        self.assertFalse(stream_events(self.fake)[0].incomplete)

    def test_first_byte_delay(self):
        self.fake.set_delay(first_byte_ms=400)
        t0 = time.monotonic()
        r = request(self.fake.port, "POST", "/v1/messages", messages_body(), HEADERS)
        self.assertEqual(r.status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.39)
        s = stream_request(self.fake.port, "POST", "/v1/messages", messages_body(stream=True),
                           HEADERS)
        with s:
            self.assertGreaterEqual(s.t_headers - s.t0, 0.39)
            s.read_all()

    def test_per_event_delay_spreads_events(self):
        self.fake.set_scenario(deltas=3)
        self.fake.set_delay(per_event_ms=120)
        s, evs = stream_events(self.fake)
        self.assertEqual(len(evs), 9)
        times = [t for t, _ in evs]
        gaps = [b - a for a, b in zip(times, times[1:])]
        # Each event arrives on its own, not collected: every gap is about the delay.
        self.assertGreaterEqual(min(gaps), 0.09, gaps)
        self.assertGreaterEqual(times[-1] - s.t0, 9 * 0.12 - 0.02)

    def test_error_event_after_200(self):
        self.fake.set_error_after_events(4)
        s, evs = stream_events(self.fake)
        self.assertEqual(s.status, 200)
        self.assertFalse(s.incomplete)
        self.assertEqual([e["event"] for _, e in evs],
                         ORDER_HEAD + ["content_block_delta", "error"])
        self.assertEqual(evs[-1][1]["data"], {"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}})
        self.fake.set_error_after_events(0, error_type="api_error", message="boom")
        _, evs = stream_events(self.fake)
        self.assertEqual([e["event"] for _, e in evs], ["error"])
        self.assertEqual(evs[0][1]["data"]["error"], {"type": "api_error", "message": "boom"})

    def test_gzip(self):
        gz = dict(HEADERS, **{"accept-encoding": "gzip"})
        r = request(self.fake.port, "POST", "/v1/messages", messages_body(), gz)
        self.assertIsNone(r.header("content-encoding"), "gzip is off by default")
        self.fake.set_gzip(True)
        r = request(self.fake.port, "POST", "/v1/messages", messages_body(), gz)
        self.assertEqual(r.header("content-encoding"), "gzip")
        self.assertEqual(json.loads(gzip.decompress(r.body))["usage"]["output_tokens"], 15)
        r = request(self.fake.port, "POST", "/v1/messages", messages_body(), HEADERS)
        self.assertIsNone(r.header("content-encoding"), "no gzip unless the client asks")
        self.assertEqual(r.json()["type"], "message")
        s, evs = stream_events(self.fake, headers=gz)
        self.assertEqual(s.headers["content-encoding"], "gzip")
        self.assertNotIn(b"message_start", bytes(s.raw))
        self.assertEqual([e["event"] for _, e in evs],
                         ORDER_HEAD + ["content_block_delta"] * 5 + ORDER_TAIL)
        self.assertEqual(parse_sse(gzip.decompress(bytes(s.raw)))[-1]["event"], "message_stop")

    def test_gzip_stream_is_flushed_per_event(self):
        self.fake.set_gzip(True)
        self.fake.set_delay(per_event_ms=80)
        _, evs = stream_events(self.fake, headers=dict(HEADERS, **{"accept-encoding": "gzip"}))
        times = [t for t, _ in evs]
        # Unflushed, the events would all arrive together at the end. The fake sleeps 80 ms
        # before each, so most gaps are that long. The median, not the minimum: one gap can
        # shrink when a busy machine delays the event before it (seen at 37 ms under load).
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        self.assertGreaterEqual(gaps[len(gaps) // 2], 0.05)

    def test_request_recording(self):
        hdr = dict(HEADERS, **{"anthropic-beta": "prompt-caching-2024-07-31", "X-Custom": "v"})
        body = messages_body("record me")
        request(self.fake.port, "POST", "/v1/messages?beta=true", body, hdr)
        request(self.fake.port, "GET", "/v1/models?limit=2", headers=HEADERS)
        recs = self.fake.wait_for_finished(2)
        self.assertEqual([(r["method"], r["path"]) for r in recs],
                         [("POST", "/v1/messages?beta=true"), ("GET", "/v1/models?limit=2")])
        r = recs[0]
        self.assertEqual(r["headers"]["x-api-key"], KEY)
        self.assertEqual(r["headers"]["anthropic-beta"], "prompt-caching-2024-07-31")
        self.assertEqual(r["headers"]["x-custom"], "v")
        self.assertIn(("X-Custom", "v"), r["header_list"])
        self.assertEqual(json.loads(r["body"]), body)
        self.assertEqual(r["json"]["messages"][0]["content"], "record me")
        self.assertEqual((r["status"], r["completed"], r["client_gone"]), (200, True, False))
        self.assertIsNone(recs[1]["json"])
        with self.assertRaises(TimeoutError):
            self.fake.wait_for_requests(3, timeout=0.2)
        self.fake.reset()
        self.assertEqual(self.fake.requests(), [])

    def test_count_tokens_and_models(self):
        self.fake.set_usage(input_tokens=31)
        st, js, _ = relaytest.json_request(self.fake.port, "POST", "/v1/messages/count_tokens",
                                           messages_body(), HEADERS)
        self.assertEqual((st, js), (200, {"input_tokens": 31}))
        self.fake.set_scenario(count_tokens=77)
        _, js, _ = relaytest.json_request(self.fake.port, "POST", "/v1/messages/count_tokens",
                                          messages_body(), HEADERS)
        self.assertEqual(js, {"input_tokens": 77})
        st, js, _ = relaytest.json_request(self.fake.port, "GET", "/v1/models", headers=HEADERS)
        self.assertEqual(st, 200)
        self.assertFalse(js["has_more"])
        self.assertEqual(js["first_id"], js["data"][0]["id"])
        self.assertEqual(js["last_id"], js["data"][-1]["id"])
        self.assertEqual(set(js["data"][0]), {"type", "id", "display_name", "created_at"})
        _, page, _ = relaytest.json_request(self.fake.port, "GET", "/v1/models?limit=1",
                                            headers=HEADERS)
        self.assertTrue(page["has_more"])
        _, nxt, _ = relaytest.json_request(self.fake.port, "GET",
                                           "/v1/models?limit=1&after_id=" + page["last_id"],
                                           headers=HEADERS)
        self.assertEqual(nxt["data"][0]["id"], js["data"][1]["id"])
        st, js, _ = relaytest.json_request(self.fake.port, "GET", "/v1/models/" + js["first_id"],
                                           headers=HEADERS)
        self.assertEqual((st, js["type"]), (200, "model"))

    def test_keep_alive_reuses_connection(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.fake.port, timeout=10)
        try:
            for stream in (False, True, False):
                conn.request("POST", "/v1/messages", json.dumps(messages_body(stream=stream)),
                             HEADERS)
                r = conn.getresponse()
                data = r.read()
                self.assertEqual(r.status, 200)
                self.assertFalse(r.will_close)
                if stream:
                    self.assertEqual(parse_sse(data)[-1]["event"], "message_stop")
            sock = conn.sock
            conn.request("GET", "/v1/models", headers=HEADERS)
            conn.getresponse().read()
            self.assertIs(conn.sock, sock, "the same socket served every request")
        finally:
            conn.close()

    def test_client_disconnect_is_recorded(self):
        self.fake.set_delay(per_event_ms=50)
        self.fake.set_scenario(deltas=20)
        s = stream_request(self.fake.port, "POST", "/v1/messages", messages_body(stream=True),
                           HEADERS)
        for _, ev in s.events():
            if ev["event"] == "ping":
                break
        s.close()
        rec = self.fake.wait_for_finished(1, timeout=10)[0]
        self.assertTrue(rec["client_gone"])
        self.assertFalse(rec["completed"])
        self.assertLess(rec["events_sent"], 26)

    def test_hold_keeps_requests_in_flight(self):
        self.fake.hold()
        results = []

        def call():
            results.append(request(self.fake.port, "POST", "/v1/messages", messages_body(),
                                   HEADERS, timeout=20).status)

        threads = [threading.Thread(target=call) for _ in range(5)]
        for t in threads:
            t.start()
        self.fake.wait_inflight(5, timeout=10)
        self.assertEqual(results, [])
        self.assertEqual(self.fake.inflight, 5)
        self.fake.release()
        for t in threads:
            t.join(20)
        self.assertEqual(results, [200] * 5)
        # A handler leaves the count just after its client has the answer: poll, bounded.
        wait_until(lambda: self.fake.inflight == 0, 5, "in-flight back to 0")

    def test_parallel_streams(self):
        self.fake.set_delay(per_event_ms=5)
        out = []

        def call():
            _, evs = stream_events(self.fake)
            out.append(evs[-1][1]["event"])

        threads = [threading.Thread(target=call) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(out, ["message_stop"] * 20)
        self.assertEqual(len(self.fake.requests()), 20)


class FakeUpstreamStandalone(unittest.TestCase):
    """`python3 fake_upstream.py --port 0` and the HTTP /_control/ API, as another language's
    test would use them."""

    @classmethod
    def setUpClass(cls):
        cls.proc = subprocess.Popen([sys.executable, FAKE_PY, "--port", "0", "--api-key", KEY],
                                    stdout=subprocess.PIPE, text=True)
        cls.addClassCleanup(cls._stop)
        got = []
        t = threading.Thread(target=lambda: got.append(cls.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(15)
        if not got or not got[0].startswith("PORT="):
            raise RuntimeError("fake_upstream.py did not print PORT= (got %r)" % got)
        cls.port = int(got[0].strip().split("=", 1)[1])

    @classmethod
    def _stop(cls):
        if cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait(10)

    def ctl(self, what, body=None, method="POST"):
        return relaytest.json_request(self.port, method, "/_control/" + what, body)

    def setUp(self):
        self.assertEqual(self.ctl("reset")[0], 200)

    def test_control_usage_fail_and_records(self):
        self.assertEqual(self.ctl("usage", {"input_tokens": 5, "output_tokens": 6})[0], 200)
        self.assertEqual(self.ctl("fail_next", {"n": 1, "status": 529, "retry_after": 2})[0], 200)
        r = request(self.port, "POST", "/v1/messages", messages_body(), HEADERS)
        self.assertEqual((r.status, r.header("retry-after")), (529, "2"))
        r = request(self.port, "POST", "/v1/messages", messages_body(), HEADERS)
        self.assertEqual(r.json()["usage"]["output_tokens"], 6)
        st, js, _ = self.ctl("wait_finished", {"n": 2, "timeout": 5})
        self.assertEqual(st, 200)
        st, js, _ = self.ctl("requests", method="GET")
        self.assertEqual(len(js["requests"]), 2)
        rec = js["requests"][0]
        self.assertEqual(rec["headers"]["x-api-key"], KEY)
        self.assertEqual(json.loads(rec["body"])["model"], messages_body()["model"])
        self.assertEqual(rec["status"], 529)
        st, _, _ = self.ctl("wait_requests", {"n": 3, "timeout": 0.2})
        self.assertEqual(st, 408)
        self.assertEqual(self.ctl("requests", method="GET")[1]["requests"][1]["status"], 200)

    def test_control_faults_and_state(self):
        self.ctl("cut_after", {"events": 2})
        self.ctl("delay", {"first_byte_ms": 10, "per_event_ms": 1})
        self.ctl("gzip", {"enabled": True})
        self.ctl("error_after", {"events": 5})
        self.ctl("scenario", {"text": "xyz", "deltas": 3})
        st, state, _ = self.ctl("state", method="GET")
        self.assertEqual(st, 200)
        self.assertEqual(state["cut_after"]["events"], 2)
        self.assertEqual(state["delay"], {"first_byte_ms": 10, "per_event_ms": 1})
        self.assertTrue(state["gzip"])
        self.assertEqual(state["error_after"]["spec"]["k"], 5)
        self.assertEqual((state["text"], state["deltas"]), ("xyz", 3))
        s, evs = stream_events(self)
        self.assertTrue(s.incomplete)
        self.assertEqual(len(evs), 2)
        self.ctl("reset")
        st, state, _ = self.ctl("state", method="GET")
        self.assertIsNone(state["cut_after"]["events"])
        self.assertFalse(state["gzip"])

    def test_control_hold_release(self):
        self.ctl("hold", {"enabled": True})
        res = []
        t = threading.Thread(target=lambda: res.append(
            request(self.port, "POST", "/v1/messages", messages_body(), HEADERS).status))
        t.start()
        relaytest.wait_until(lambda: self.ctl("state", method="GET")[1]["inflight"] == 1, 10,
                             "one request in flight")
        self.assertEqual(res, [])
        self.ctl("release")
        t.join(10)
        self.assertEqual(res, [200])

    def test_control_errors(self):
        self.assertEqual(self.ctl("usage", {"nonsense": 1})[0], 400)
        self.assertEqual(self.ctl("fail_next", {"n": 1})[0], 400)
        self.assertEqual(self.ctl("no_such_thing")[0], 404)

    def test_zz_sigterm_exits_cleanly(self):
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(10), 0)


STUB_SERVER = r'''
import http.server, json, os, signal, sys, time
mode = os.environ.get("STUB_MODE", "ok")
def log(**kv):
    sys.stderr.write(json.dumps(dict(ts=time.time(), **kv)) + "\n"); sys.stderr.flush()
if mode == "exit_early":
    log(level="error", msg="cannot open database: stub says no"); sys.exit(3)
if mode == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    # Only raise here: logging from the handler could re-enter a stderr write in progress.
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
host, port = os.environ["RELAY_LISTEN"].rsplit(":", 1)
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({"status": "ok", "cwd": os.getcwd(),
                           "env": {k: os.environ.get(k) for k in (
                               "DATABASE_URL", "RELAY_DATA_DIR", "UPSTREAM_API_URL", "X_EXTRA")}
                           }).encode()
        if self.path == "/give":  # hands out a proxy key, as POST /admin/api-keys does
            body = json.dumps({"api_key": "sk-proxy-handed-out-0123456789"}).encode()
        if self.path == "/echo-given" or (mode == "leak_answer" and self.path == "/x"):
            body = json.dumps({"oops": "sk-proxy-handed-out-0123456789" if self.path ==
                               "/echo-given" else os.environ.get("UPSTREAM_API_KEY")}).encode()
        self.send_response(200); self.send_header("content-length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
        log(level="info", msg="request", path=self.path)
        if mode == "leak":
            log(level="debug", msg="oops " + os.environ.get("UPSTREAM_API_KEY", ""))
print("admin password printed once: (stub)", flush=True)
log(level="info", msg="listening", port=int(port))
try:
    http.server.HTTPServer((host, int(port)), H).serve_forever()
finally:
    log(level="info", msg="stopping")
'''


class HarnessHelpers(unittest.TestCase):
    """relaytest's own machinery, checked against a stub server instead of relay-server."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="stub-relay-")
        cls.stub = os.path.join(cls.tmp, "stub-server")
        with open(cls.stub, "w") as f:
            f.write("#!%s\n%s" % (sys.executable, textwrap.dedent(STUB_SERVER)))
        os.chmod(cls.stub, 0o755)

    def server(self, mode="ok", **env):
        env.setdefault("UPSTREAM_API_KEY", "sk-ant-secret-upstream-value")
        s = relaytest.RelayServer(env=dict(env, STUB_MODE=mode), binary=self.stub)
        self.addCleanup(s.cleanup)
        return s

    def test_start_health_logs_stop(self):
        os.environ["DATABASE_URL"] = "postgresql://should-not-leak/db"
        self.addCleanup(os.environ.pop, "DATABASE_URL", None)
        s = self.server(X_EXTRA="1", UPSTREAM_API_URL="http://127.0.0.1:9")
        s.start(timeout=15)
        st, js, _ = s.json_request("GET", "/health")
        self.assertEqual(st, 200)
        self.assertIsNone(js["env"]["DATABASE_URL"], "the runner's environment is not inherited")
        self.assertEqual(js["env"]["X_EXTRA"], "1")
        self.assertEqual(js["env"]["RELAY_DATA_DIR"], s.data_dir)
        self.assertTrue(os.path.isdir(s.data_dir))
        self.assertEqual(os.path.realpath(js["cwd"]), os.path.realpath(s.workdir))
        s.wait_for_log('"path": "/health"', timeout=5)
        self.assertTrue(any(r.get("msg") == "listening" and r.get("port") == s.port
                            for r in s.log_records()))
        self.assertIn("admin password printed once: (stub)", s.stdout_lines())
        s.assert_no_secrets()
        pid = s.pid
        self.assertEqual(s.stop(), 0)
        self.assertTrue(any(r.get("msg") == "stopping" for r in s.log_records()))
        with self.assertRaises(ProcessLookupError):
            os.kill(pid, 0)

    def test_env_none_removes_default(self):
        s = self.server(SECRET_KEY=None)
        self.assertNotIn("SECRET_KEY", s.env)
        self.assertIn("ADMIN_PASSWORD", s.env)

    def test_sigkill_after_bounded_wait(self):
        s = self.server("ignore_term")
        s.start(timeout=15)
        t0 = time.monotonic()
        self.assertEqual(s.stop(timeout=0.5), -signal.SIGKILL)
        self.assertLess(time.monotonic() - t0, 5)

    def test_early_exit_reports_stderr(self):
        s = self.server("exit_early")
        with self.assertRaises(RuntimeError) as cm:
            s.start(timeout=15)
        self.assertIn("exited with 3", str(cm.exception))
        self.assertIn("stub says no", str(cm.exception))

    def test_secret_in_log_is_caught_without_echoing_it(self):
        s = self.server("leak")
        s.start(timeout=15)
        s.request("GET", "/x")
        s.wait_for_log("oops", timeout=5)
        with self.assertRaises(AssertionError) as cm:
            s.assert_no_secrets()
        self.assertIn("stderr line", str(cm.exception))
        self.assertNotIn("sk-ant-secret-upstream-value", str(cm.exception))

    def test_secret_in_an_answer_is_caught(self):
        # An answer carrying the upstream key is a leak; a proxy key handed out is remembered
        # and a later answer carrying it is a leak too.
        s = self.server("leak_answer")
        s.start(timeout=15)
        s.request("GET", "/health")
        s.assert_no_secrets()
        s.json_request("GET", "/give")
        self.assertIn("sk-proxy-handed-out-0123456789", s.proxy_keys)
        s.assert_no_secrets()  # the answer that hands a key out is not a leak
        s.request("GET", "/x")
        with self.assertRaises(AssertionError) as cm:
            s.assert_no_secrets()
        self.assertIn("answer to GET /x", str(cm.exception))
        self.assertNotIn("sk-ant-secret-upstream-value", str(cm.exception))
        s.answer_leaks.clear()
        s.request("GET", "/echo-given")
        self.assertRaises(AssertionError, s.assert_no_secrets)

    def test_secrets_of_a_config_file(self):
        path = os.path.join(self.tmp, "config.yaml")
        with open(path, "w") as f:
            f.write("upstream:\n  primary:\n    api_key: \"sk-ant-from-the-config-file\"\n"
                    "  pool:\n    - name: b\n      api_key: sk-ant-second-upstream-key  # x\n"
                    "    - api_key: \"${UPSTREAM_API_KEY}\"\n")
        s = self.server(RELAY_CONFIG=path)
        self.assertIn("sk-ant-from-the-config-file", s.secrets())
        self.assertIn("sk-ant-second-upstream-key", s.secrets())
        self.assertFalse(any(v.startswith("${") for v in s.secrets()))

    def test_wait_for_log_times_out(self):
        s = self.server()
        s.start(timeout=15)
        t0 = time.monotonic()
        with self.assertRaises(TimeoutError):
            s.wait_for_log("never printed", timeout=0.3)
        self.assertLess(time.monotonic() - t0, 3)

    def test_sse_parser_any_split(self):
        body = ("event: a\ndata: {\"x\": 1}\n\n: comment\n\nevent: b\r\ndata: line1\r\n"
                "data: line2\r\n\r\ndata: {\"type\": \"c\"}\r\r").encode()
        whole = parse_sse(body)
        self.assertEqual([(e["event"], e["data"]) for e in whole],
                         [("a", {"x": 1}), ("b", "line1\nline2"), ("message", {"type": "c"})])
        for cut in range(len(body) + 1):
            p = relaytest.SSEParser()
            self.assertEqual(p.feed(body[:cut]) + p.feed(body[cut:], final=True), whole, cut)
        p = relaytest.SSEParser()
        got = sum((p.feed(body[i:i + 1]) for i in range(len(body))), []) + p.feed(b"", True)
        self.assertEqual(got, whole)
        # Without the end of the stream, the trailing CR may still become CRLF: no event yet.
        self.assertEqual(len(relaytest.SSEParser().feed(body)), 2)

    def test_main_exit_codes(self):
        cases = {
            "class T(unittest.TestCase):\n    def test_a(self): self.assertEqual(1, 2)\n": 1,
            "class T(unittest.TestCase):\n    def test_a(self): raise RuntimeError\n": 1,
            "class T(unittest.TestCase):\n    def test_a(self): pass\n": 0,
            "class T(unittest.TestCase):\n    def test_a(self): self.skipTest('no pg')\n": 77,
            "class T(relaytest.RelayTestCase):\n    STORE = 'pg'\n"
            "    def test_a(self): pass\n": 77 if not relaytest.pg_url() else None,
            "@relaytest.both_stores\nclass T(unittest.TestCase):\n    STORE = 'sqlite'\n"
            "    def test_a(self): pass\n"
            "assert T_pg.STORE == 'pg' and T_pg.__module__ == '__main__'\n": 0,
        }
        env = dict(os.environ, PYTHONPATH=os.path.dirname(FAKE_PY), RELAY_SERVER_BIN=self.stub)
        for src, want in cases.items():
            if want is None:
                continue
            path = os.path.join(self.tmp, "t_main.py")
            with open(path, "w") as f:
                f.write("import unittest, relaytest\n%srelaytest.main()\n" % src)
            r = subprocess.run([sys.executable, path], env=env, capture_output=True, text=True,
                               timeout=60)
            self.assertEqual(r.returncode, want, src + r.stderr)

    @unittest.skipUnless(relaytest.pg_url() and relaytest.shutil.which("psql"),
                         "RELAY_TEST_PG_URL unset")
    def test_pg_database_lifecycle(self):
        db = relaytest.PgDatabase()
        try:
            out = relaytest._psql(db.url, "SELECT current_database()")
            self.assertIn(db.name, out)
        finally:
            db.drop()
        with self.assertRaises(RuntimeError):
            relaytest._psql(db.url, "SELECT 1")

    @unittest.skipUnless(relaytest.redis_url(), "RELAY_TEST_REDIS_URL unset")
    def test_redis_db_reservation(self):
        a, b = relaytest.RedisDb(), relaytest.RedisDb()
        try:
            self.assertNotEqual(a.db, b.db)
            self.assertTrue(a.url.endswith("/%d" % a.db))
        finally:
            a.release()
            b.release()


if __name__ == "__main__":
    relaytest.main()
