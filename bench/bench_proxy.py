#!/usr/bin/env python3
"""Relay overhead, measured against a baseline in the same run: the same requests sent straight
to the fake upstream and through relay-server, sequentially and from parallel clients, plus the
resident memory each held stream costs the relay.

    RELAY_SERVER_BIN=build/relay-server/relay-server python3 bench/bench_proxy.py [N]

Prints figures only; it never fails on timings. Loopback only, bounded request counts.
"""

import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import relaytest  # noqa: E402
from relaytest import FakeUpstream, RelayServer, messages_body  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
THREADS = 8


def run_sequential(port, headers, body, n):
    """n requests on one keep-alive connection; returns per-request latencies (s)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle/delayed-ACK stall
    lat = []
    data = json.dumps(body).encode()
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/v1/messages", body=data, headers=headers)
        r = conn.getresponse()
        r.read()
        lat.append(time.perf_counter() - t0)
        assert r.status == 200, r.status
    conn.close()
    return lat


def run_parallel(port, headers, body, n, threads):
    per = n // threads
    out = []
    lock = threading.Lock()

    def worker():
        lat = run_sequential(port, headers, body, per)
        with lock:
            out.extend(lat)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out, time.perf_counter() - t0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def report(name, lat, wall=None):
    rps = len(lat) / (wall if wall else sum(lat))
    print("%-34s n=%4d  p50 %7.3f ms  p99 %7.3f ms  %8.1f req/s"
          % (name, len(lat), statistics.median(lat) * 1e3, pct(lat, 0.99) * 1e3, rps))
    return statistics.median(lat)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    if not relaytest.server_bin():
        print("set RELAY_SERVER_BIN to the relay-server binary")
        return 2
    key = "sk-ant-bench-" + "x" * 24
    fake = FakeUpstream(api_key=key).start()
    relay = RelayServer(env={"UPSTREAM_API_URL": fake.url, "UPSTREAM_API_KEY": key,
                             "LOG_LEVEL": "warning"})
    try:
        relay.start()
        pkey, _ = relay.create_key(token_limit=0, rate_limit_tier="unlimited")
        direct_h = {"x-api-key": key, "anthropic-version": "2023-06-01",
                    "content-type": "application/json"}
        relay_h = dict(direct_h, **{"x-api-key": pkey})
        small = messages_body("hi")
        big = messages_body("word " * 10000)  # ~50 KB, like Claude Code's bodies
        print("relay overhead vs direct to the fake upstream (%d requests each)" % N)
        for label, body in (("small body", small), ("50 KB body", big)):
            run_sequential(fake.port, direct_h, body, 20)  # warm up
            run_sequential(relay.port, relay_h, body, 20)
            d = report("direct   %s, 1 client" % label, run_sequential(fake.port, direct_h, body, N))
            r = report("relay    %s, 1 client" % label, run_sequential(relay.port, relay_h, body, N))
            print("%-34s %+.3f ms per request" % ("  added by the relay (p50)", (r - d) * 1e3))
        lat, wall = run_parallel(fake.port, direct_h, small, N, THREADS)
        report("direct   small, %d clients" % THREADS, lat, wall)
        lat, wall = run_parallel(relay.port, relay_h, small, N, THREADS)
        report("relay    small, %d clients" % THREADS, lat, wall)

        # Memory per stream: hold streams open at the fake and read the relay's RSS.
        base = rss_kib(relay.pid)
        fake.hold(True)
        held = 32
        streams = []
        for _ in range(held):
            c = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=60)
            c.request("POST", "/v1/messages", body=json.dumps(messages_body(stream=True)),
                      headers=relay_h)
            streams.append(c)
        fake.wait_inflight(held, timeout=30)
        time.sleep(0.3)
        loaded = rss_kib(relay.pid)
        fake.release()
        fake.hold(False)
        for c in streams:
            c.getresponse().read()
            c.close()
        print("relay RSS idle %d KiB, with %d streams open %d KiB: %.1f KiB per stream"
              % (base, held, loaded, (loaded - base) / held))
    finally:
        relay.cleanup()
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
