#!/usr/bin/env python3
"""Key verification under a burst: wrk -t2 -c32 against relay-server (fake upstream, SQLite),
first with a key the relay has never verified (cold: every connection's first request arrives
before any verification finished), then with a key that served one request just before (warm),
in the same run, after one warm-up burst (line "start") with a third key so that the process's
own first burst is not counted as the key's. Prints p50/p90/p99/max side by side, the p99 ratio
and the bcrypt runs each burst cost (from /metrics).

    RELAY_SERVER_BIN=build/relay-server/relay-server python3 bench/bench_key_burst.py [SECONDS] [ROUNDS]

Prints figures only; it never fails on timings. Loopback only; needs wrk.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import relaytest  # noqa: E402
from relaytest import FakeUpstream, RelayServer, messages_body  # noqa: E402
import json  # noqa: E402

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 4
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2

LUA = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = os.getenv("BENCH_KEY")
"""


def lua_string(s):
    return "[==[" + s + "]==]"


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(port, key, script):
    env = dict(os.environ, BENCH_KEY=key)
    # wrk leaves answers slower than --timeout (default 2 s) out of its latency figures and only
    # counts them as socket timeouts: a long timeout keeps the slow first requests in.
    p = subprocess.run(["wrk", "-t2", "-c32", "-d%ds" % SECONDS, "--timeout", "30s", "--latency",
                        "-s", script,
                        "http://127.0.0.1:%d/v1/messages" % port],
                       env=env, capture_output=True, text=True, timeout=SECONDS + 60)
    out = p.stdout
    res = {"max": to_ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1))}
    for q in ("50", "90", "99"):
        res["p" + q] = to_ms(re.search(r"\s%s%%\s+(\S+)" % q, out).group(1))
    res["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(g) for g in m.groups()) if m else 0
    return res


def bcrypts(relay):
    text = relay.request("GET", "/metrics").text
    m = re.search(r"^relay_key_bcrypt_total (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else -1


def show(name, r, b):
    print("%-5s %5d req  non-2xx %d  errors %d  p50 %7.1f  p90 %7.1f  p99 %7.1f  max %7.1f ms"
          "  bcrypts %d" % (name, r["requests"], r["non2xx"], r["errors"], r["p50"], r["p90"],
                            r["p99"], r["max"], b))


def main():
    if not relaytest.server_bin() or not shutil.which("wrk"):
        print("set RELAY_SERVER_BIN to the relay-server binary and install wrk")
        return 2
    upstream_key = "sk-ant-bench-" + "x" * 24
    fake = FakeUpstream(api_key=upstream_key).start()
    relay = RelayServer(env={"UPSTREAM_API_URL": fake.url, "UPSTREAM_API_KEY": upstream_key,
                             "LOG_LEVEL": "warning"})
    tmp = tempfile.mkdtemp(prefix="bench-key-burst-")
    script = os.path.join(tmp, "post.lua")
    with open(script, "w") as f:
        f.write(LUA % lua_string(json.dumps(messages_body("hi"))))
    try:
        relay.start()
        print("wrk -t2 -c32 -d%ds --timeout 30s, non-streaming POST /v1/messages, bcrypt cost 10, %d rounds"
              % (SECONDS, ROUNDS))
        # The process's own first burst (upstream connections, worker threads, page cache) is not
        # what this measures: warm it with a key of its own first, and show what that cost.
        spare, _ = relay.create_key(token_limit=0, rate_limit_tier="unlimited")
        show("start", wrk(relay.port, spare, script), bcrypts(relay))
        for rnd in range(ROUNDS):
            cold, _ = relay.create_key(token_limit=0, rate_limit_tier="unlimited")
            warm, _ = relay.create_key(token_limit=0, rate_limit_tier="unlimited")
            b0 = bcrypts(relay)
            rc = wrk(relay.port, cold, script)
            b1 = bcrypts(relay)
            st = relay.request("POST", "/v1/messages", messages_body("hi"),
                               {"x-api-key": warm}).status
            assert st == 200, st
            b2 = bcrypts(relay)
            rw = wrk(relay.port, warm, script)
            b3 = bcrypts(relay)
            print("round %d" % (rnd + 1))
            show("cold", rc, b1 - b0)
            show("warm", rw, b3 - b2)
            print("      cold/warm p99 %.2fx   max %.2fx"
                  % (rc["p99"] / rw["p99"], rc["max"] / rw["max"]))
    finally:
        relay.cleanup()
        fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
