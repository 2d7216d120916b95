"""End-to-end: concurrency (issue 9). The default configuration holds many streams at once beside
idle keep-alive connections; a request whose client left while it waited for a worker is
forwarded to no one and billed to no one; stream bodies written by librelay's I/O thread arrive
whole and in order, also to a client that stops reading for a while and to HTTP/1.0 clients.
No assertion here is about speed: every wait is a generous upper bound on something that either
happens or not."""

import json
import os
import socket
import threading
import time
import unittest

from relaytest import (RawConnection, RelayTestCase, messages_body, parse_sse, raw_http_request,
                       stream_request, wait_until, write_class_config)

ANTHROPIC = {"anthropic-version": "2023-06-01", "content-type": "application/json"}


def hdrs(key):
    return dict(ANTHROPIC, **{"x-api-key": key})


class Base(RelayTestCase):
    def setUp(self):
        super().setUp()
        self.key, self.obj = self.relay.create_key(token_limit=0, rate_limit_tier="unlimited")

    def stream_events(self, key, body=None):
        with stream_request(self.relay.url, "POST", "/v1/messages",
                            body or messages_body(stream=True), hdrs(key), timeout=60) as s:
            events = [ev for _, ev in s.events()]
            return s.status, events, s.incomplete

    def billed(self, rows):
        return sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)


@unittest.skipIf(os.environ.get("RELAY_TEST_WORKER_THREADS"),
                 "needs the default 2,500 workers; RELAY_TEST_WORKER_THREADS caps them")
class DefaultConfigTest(Base):
    """The default configuration: no worker_threads set."""

    STREAMS = 200
    IDLE = 2000

    def test_many_streams_beside_idle_keep_alive_connections(self):
        self.fake.set_scenario(text=" ".join("w%d" % i for i in range(40)), deltas=20)
        # Idle keep-alive connections first: each made one request and now sits silent.
        idle = []
        try:
            for _ in range(self.IDLE):
                c = RawConnection(self.relay.url, timeout=30)
                c.send(raw_http_request("GET", "/health", "relay"))
                idle.append(c)
            for c in idle:
                c.recv_until(b"}")
            # Then the streams, all at once, while every idle connection is still open.
            results = [None] * self.STREAMS

            def one(i):
                try:
                    results[i] = self.stream_events(self.key)
                except Exception as e:  # noqa: BLE001 - reported below
                    results[i] = e

            self.fake.hold(True)
            ts = [threading.Thread(target=one, args=(i,)) for i in range(self.STREAMS)]
            for t in ts:
                t.start()
            # Every stream reaches the upstream at once: none waits for an idle one's worker.
            self.fake.wait_inflight(self.STREAMS, timeout=60)
            self.fake.release()
            for t in ts:
                t.join(120)
            for r in results:
                self.assertIsInstance(r, tuple, r)
                status, events, incomplete = r
                self.assertEqual(status, 200)
                self.assertFalse(incomplete)
                self.assertEqual(events[-1]["event"], "message_stop")
                self.assertEqual(sum(1 for e in events if e["event"] == "content_block_delta"),
                                 20)
            # The idle connections were kept open the whole time and still answer.
            c = idle[0]
            c.received = b""
            c.send(raw_http_request("GET", "/health", "relay"))
            self.assertIn(b"200 OK", c.recv_until(b"}"))
        finally:
            self.fake.release()
            for c in idle:
                c.close()
        # Every stream billed exactly what the upstream reported.
        rows = self.wait_usage_rows(self.obj["id"], self.STREAMS, timeout=30)
        self.assertEqual(len(rows), self.STREAMS)
        for row in rows:
            self.assertEqual(row["response_status"], 200)
            self.assertEqual(row["estimated"], 0)
        per = rows[0]["prompt_tokens"] + rows[0]["completion_tokens"]
        self.assertGreater(per, 0)
        self.assertEqual(self.billed(rows), per * self.STREAMS)


class QueuedClientGoneTest(Base):
    """Two workers, both busy: requests queue. Those whose clients leave are not forwarded."""

    @classmethod
    def relay_env(cls):
        return {"RELAY_CONFIG": write_class_config(cls, "server:\n  worker_threads: 2\n")}

    def test_request_whose_client_left_while_queued_is_not_forwarded(self):
        body = json.dumps(messages_body(stream=True)).encode()
        req = raw_http_request("POST", "/v1/messages", "relay", hdrs(self.key), body)
        self.fake.hold(True)
        busy = []
        try:
            for _ in range(2):  # both workers, held at the upstream
                c = RawConnection(self.relay.url, timeout=30)
                c.send(req)
                busy.append(c)
            self.fake.wait_inflight(2, timeout=20)
            gone = []
            for _ in range(5):  # queued behind them; the clients give up
                c = RawConnection(self.relay.url, timeout=30)
                c.send(req)
                gone.append(c)
            time.sleep(0.5)  # let the kernel queue them (no assertion depends on it)
            for c in gone:
                c.sock.shutdown(socket.SHUT_RDWR)
                c.close()
            self.fake.release()
            for c in busy:
                self.assertIn(b"message_stop", c.recv_until(b"0\r\n\r\n"))
        finally:
            self.fake.release()
            for c in busy:
                c.close()
        wait_until(lambda: len([r for r in self.relay.log_records()
                                if r.get("event") == "proxy.client_gone_before_start"]) == 5,
                   30, "five requests dropped before they were handled")
        # Only the two held streams reached the upstream, and only they were billed.
        stream_requests = [r for r in self.fake.requests() if r["path"].startswith("/v1/messages")]
        self.assertEqual(len(stream_requests), 2)
        rows = self.wait_usage_rows(self.obj["id"], 2, timeout=15)
        time.sleep(0.5)  # a third row would have to come from a dropped request
        self.assertEqual(len(self.usage_rows(self.obj["id"])), 2)
        self.assertTrue(all(r["response_status"] == 200 for r in rows))


class DirectWriteTest(Base):
    """Stream bodies written from librelay's I/O thread straight to the socket."""

    def test_slow_reader_gets_every_byte_in_order(self):
        # 12 MB: more than the relay's socket buffer (4 MiB at most here) and the 64 KiB the
        # client's allows, so the relay must queue what the client does not take, and past its
        # 4 MiB cap pause the upstream transfer, then resume when the client reads again.
        words = ["%05d" % i + "x" * 1500 for i in range(8000)]
        self.fake.set_scenario(text=" ".join(words), deltas=4000)
        body = json.dumps(messages_body(stream=True)).encode()
        c = RawConnection(self.relay.url, timeout=60)
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.send(raw_http_request("POST", "/v1/messages", "relay", hdrs(self.key), body))
            c.recv_until(b"\r\n\r\n")
            time.sleep(3)  # stop reading: the relay must hold and pause, not drop or block
            data = c.recv_until(b"0\r\n\r\n", timeout=120)
        finally:
            c.close()
        head, _, chunked = data.partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        raw = dechunk(chunked)
        events = parse_sse(raw)
        text = "".join(e["data"]["delta"]["text"] for e in events
                       if e["event"] == "content_block_delta")
        self.assertEqual(text, " ".join(words))
        self.assertEqual(events[-1]["event"], "message_stop")
        rows = self.wait_usage_rows(self.obj["id"], 1, timeout=15)
        self.assertEqual(rows[0]["estimated"], 0)

    def test_json_answer_too_big_to_hold_passes_through_whole(self):
        # Past the 16 MiB a JSON answer is held for, it is passed through as it comes: the
        # first 16 MiB in one piece, the rest behind it, nothing lost or reordered.
        text = "".join("%07d " % i for i in range(2200000))  # 17.6 MB
        self.fake.set_scenario(text=text)
        r = self.relay.request("POST", "/v1/messages", messages_body(), hdrs(self.key),
                               timeout=120)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["content"][0]["text"], text)

    def test_http10_client_gets_a_close_delimited_stream(self):
        body = json.dumps(messages_body(stream=True)).encode()
        c = RawConnection(self.relay.url, timeout=30)
        try:
            req = raw_http_request("POST", "/v1/messages", "relay", hdrs(self.key), body)
            c.send(req.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
            data = c.recv_all(timeout=30)  # the relay closes the connection at the end
        finally:
            c.close()
        head, _, rest = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.0 200"), head)
        self.assertNotIn(b"chunked", head.lower())
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(parse_sse(rest)[-1]["event"], "message_stop")

    def test_non_streaming_answer_is_one_response_with_content_length(self):
        body = json.dumps(messages_body()).encode()
        c = RawConnection(self.relay.url, timeout=30)
        try:
            c.send(raw_http_request("POST", "/v1/messages", "relay", hdrs(self.key), body))
            head = c.recv_until(b"\r\n\r\n").partition(b"\r\n\r\n")[0]
            fields = dict(ln.lower().split(b": ", 1) for ln in head.split(b"\r\n")[1:])
            self.assertNotIn(b"transfer-encoding", fields)
            length = int(fields[b"content-length"])
            while len(c.received.partition(b"\r\n\r\n")[2]) < length:
                c.sock.settimeout(10)
                c.received += c.sock.recv(65536)
            answer = c.received.partition(b"\r\n\r\n")[2]
            self.assertEqual(len(answer), length)
            self.assertEqual(json.loads(answer)["type"], "message")
            # The same connection serves the next request (keep-alive).
            c.received = b""
            c.send(raw_http_request("GET", "/health", "relay"))
            self.assertIn(b"200 OK", c.recv_until(b"}"))
        finally:
            c.close()


def dechunk(data):
    out = bytearray()
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2:]


if __name__ == "__main__":
    unittest.main(verbosity=2)
