"""Request framing and size attacks against relay-server, over raw sockets: smuggling attempts get
one 400 and the connection closes; oversized heads and bodies get 431 / 413 unread; a client
trickling its headers is cut off at server.header_timeout_ms without pinning the workers."""

import json
import select
import threading
import time

import relaytest
from relaytest import RawConnection, messages_body, wait_until, write_class_config

SMUGGLED = b"GET /admin/api-keys HTTP/1.1\r\nHost: x\r\n\r\n"


def head(*lines):
    """A request head from header lines (the request line first), CRLF-terminated."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answers(data):
    """The HTTP status codes of the answers in data, in order."""
    out, rest = [], data
    while rest.startswith(b"HTTP/1."):
        h, _, rest = rest.partition(b"\r\n\r\n")
        out.append(int(h.split(b" ", 2)[1]))
        clen = [ln for ln in h.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
        n = int(clen[0].split(b":", 1)[1]) if clen else len(rest)
        rest = rest[n:]
    return out


class Framing(relaytest.RelayTestCase):
    @classmethod
    def relay_env(cls):
        return {"RELAY_CONFIG": write_class_config(
            cls, "server:\n  max_body_size: 4096\n  max_header_size: 8192\n")}

    def exchange(self, data, timeout=10):
        """Sends data on a new connection; everything received until the relay closes it."""
        c = RawConnection(self.relay.port, timeout=timeout)
        self.addCleanup(c.close)
        c.send(data)
        return c.recv_all(timeout)

    def assert_one_error_then_eof(self, data, status=400, words=None):
        out = self.exchange(data)  # recv_all returns only at EOF (TimeoutError if it stays open)
        self.assertEqual(answers(out), [status], out[:400])
        hdr, _, body = out.partition(b"\r\n\r\n")
        self.assertIn(b"Connection: close", hdr)
        err = json.loads(body)
        self.assertEqual(err["type"], "error")
        if words:
            self.assertIn(words, err["error"]["message"])
        return err

    def test_content_length_with_chunked_then_smuggled_request(self):
        key, _ = self.relay.create_key()
        data = head("POST /v1/messages HTTP/1.1", "Host: x", "x-api-key: " + key,
                    "Content-Type: application/json", "Content-Length: 4",
                    "Transfer-Encoding: chunked") + b"0\r\n\r\n" + SMUGGLED
        err = self.assert_one_error_then_eof(data, 400, "Content-Length together with")
        self.assertEqual(err["error"]["type"], "invalid_request_error")
        self.assertEqual(self.fake.requests(), [])  # forwarded to no one
        self.relay.wait_for_log("request.refused")

    def test_conflicting_framing_refused(self):
        post = "POST /v1/messages HTTP/1.1"
        cases = {
            "two different Content-Length": (
                head(post, "Host: x", "Content-Length: 4", "Content-Length: 5") + b"abcde",
                "two different Content-Length values"),
            "Content-Length list": (head(post, "Host: x", "Content-Length: 4, 4") + b"abcd",
                                    "not a number"),
            "Transfer-Encoding gzip": (head(post, "Host: x", "Transfer-Encoding: gzip"), None),
            "Transfer-Encoding chunked twice": (
                head(post, "Host: x", "Transfer-Encoding: chunked",
                     "Transfer-Encoding: chunked") + b"0\r\n\r\n", "other than chunked"),
            "Transfer-Encoding on HTTP/1.0": (
                head("POST /v1/messages HTTP/1.0", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
                "HTTP/1.0"),
            "obs-fold": (head("GET /health HTTP/1.1", "Host: x", "X-A: a", " Content-Length: 40"),
                         "obs-fold"),
            "obs-fold hides a field": (
                head("POST /v1/messages HTTP/1.1", "Host: x", "X-A: a", " b",
                     "Content-Length: %d" % len(SMUGGLED)) + SMUGGLED, "obs-fold"),
            "space before colon": (
                head(post, "Host: x", "Transfer-Encoding : chunked", "Content-Length: 4") +
                b"abcd", "whitespace between"),
            "line starting with a colon": (head("GET /health HTTP/1.1", "Host: x", ": x",
                                                "Content-Length: 4") + b"abcd", None),
            "name not a token": (head("GET /health HTTP/1.1", "Host: x", "X/A: v"), "token"),
            "bare LF line ends": (b"GET /health HTTP/1.1\nHost: x\nX-A: a\n\n", None),
            "NUL in a value": (head("GET /health HTTP/1.1", "Host: x", "X-A: a\x00b"), None),
            "NUL in a name": (head("GET /health HTTP/1.1", "Host: x", "X\x00A: b"), None),
            "CR in a value": (head("GET /health HTTP/1.1", "Host: x", "X-A: a\rb"), None),
            "control character in a value": (head("GET /health HTTP/1.1", "Host: x",
                                                  "X-A: a\x01b"), None),
        }
        for name, (data, words) in cases.items():
            with self.subTest(name):
                self.assert_one_error_then_eof(data + SMUGGLED, 400, words)
        self.assertEqual(self.fake.requests(), [])

    def test_more_header_fields_than_parsed_refused(self):
        # CivetWeb keeps 64 fields and silently drops the rest (a Content-Length among them).
        lines = ["GET /health HTTP/1.1", "Host: x"] + ["X-%d: v" % i for i in range(70)]
        self.assert_one_error_then_eof(head(*lines) + SMUGGLED, 431, "64 header fields")

    def test_same_content_length_twice_and_keep_alive_still_work(self):
        # RFC 9112 6.3 allows repeating one value; the connection stays usable.
        c = RawConnection(self.relay.port)
        self.addCleanup(c.close)
        c.send(head("POST /api/event_logging/batch HTTP/1.1", "Host: x", "Content-Length: 2",
                    "Content-Length: 2") + b"{}" + head("GET /health HTTP/1.1", "Host: x"))
        wait_until(lambda: c.recv_until(b'"status":"ok"') and True, 10, "second answer")
        self.assertEqual(answers(c.received), [200, 200])

    def test_oversized_head_refused_431(self):
        for data in (head("GET /" + "a" * 9000 + " HTTP/1.1", "Host: x"),
                     head("GET /health HTTP/1.1", "Host: x", "X-A: " + "a" * 9000)):
            self.assert_one_error_then_eof(data, 431, "exceed the limit of 8192 bytes")

    def test_oversized_body_refused_unread(self):
        key, _ = self.relay.create_key()
        body = json.dumps(messages_body("x" * 5000)).encode()
        # Content-Length over the limit: 413 before a byte of the body is read, then closed, so
        # a request hidden in the body is never answered.
        data = head("POST /v1/messages HTTP/1.1", "Host: x", "x-api-key: " + key,
                    "Content-Length: %d" % (len(body) + len(SMUGGLED))) + body + SMUGGLED
        err = self.assert_one_error_then_eof(data, 413, "exceeds the limit of 4096 bytes")
        self.assertEqual(err["error"]["type"], "request_too_large")
        # Chunked past the limit: 413 too.
        chunk = b"%x\r\n%s\r\n" % (len(body), body)
        data = head("POST /v1/messages HTTP/1.1", "Host: x", "x-api-key: " + key,
                    "Transfer-Encoding: chunked") + chunk + b"0\r\n\r\n" + SMUGGLED
        self.assert_one_error_then_eof(data, 413, "exceeds the limit of 4096 bytes")
        self.assertEqual(self.fake.requests(), [])
        metrics = self.relay.request("GET", "/metrics").text
        self.assertIn('relay_http_refused_total{reason="body_too_large"}', metrics)


class SlowHeaders(relaytest.RelayTestCase):
    """Two workers and a 1.5 s header timeout: four clients trickling their headers a byte a
    second cannot keep a normal request from being served."""

    TRICKLERS = 4

    @classmethod
    def relay_env(cls):
        return {"RELAY_CONFIG": write_class_config(
            cls, "server:\n  worker_threads: 2\n  header_timeout_ms: 1500\n")}

    def trickle(self, results, i):
        c = RawConnection(self.relay.port, timeout=30)
        data = head("GET /health HTTP/1.1", "Host: x", "X-Slow: " + "a" * 40)
        t0 = time.monotonic()
        try:
            for b in data:
                if select.select([c.sock], [], [], 0)[0]:
                    break  # the relay answered: read it before a send could draw a reset
                c.send(bytes([b]))
                time.sleep(1.0)
        except OSError:
            pass  # the relay closed the connection: what we want
        try:
            out = c.recv_all(10)
        except (TimeoutError, OSError):
            out = c.received
        results[i] = (time.monotonic() - t0, out)
        c.close()

    def test_trickled_headers_time_out_and_others_are_served(self):
        results = [None] * self.TRICKLERS
        threads = [threading.Thread(target=self.trickle, args=(results, i), daemon=True)
                   for i in range(self.TRICKLERS)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the fault itself: the trickling connections are open and sending
        t0 = time.monotonic()
        st, js, _ = self.relay.json_request("GET", "/health", timeout=20)
        served_after = time.monotonic() - t0
        self.assertEqual(st, 200)
        self.assertEqual(js["status"], "ok")
        for t in threads:
            t.join(40)
        # Each trickler would need ~60 s to send its head; the timeout ended each long before,
        # and the normal request did not wait for a trickler to finish.
        self.assertLess(served_after, 20)
        for took, out in results:
            self.assertLess(took, 20)
            self.assertEqual(answers(out), [408], out[:300])
            self.assertIn(b"did not arrive within 1500 ms", out)


if __name__ == "__main__":
    relaytest.main()
