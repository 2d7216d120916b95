#!/usr/bin/python3
"""The soak run (issue 13): a bounded mixed load through relay-server, watching its memory and
file descriptors for growth. Run it through bench/soak.sh; it is not part of the test suite.

    bench/soak.sh [--duration 600] [--warmup 120] [--interval 10] [--clients 8] [--build build]

Load, from --clients threads for --duration seconds, against tests/fake_upstream.py (20 deltas,
5 ms apart): 8 of every 20 requests are streams read to the end, 6 non-streaming, 3 streams the
client drops after two events (the relay drains and bills them), 3 streams read to the end while
the fake answers 529 to some attempts (every 0.5 s one 529, which the relay retries; every 5 s
twelve in a row, which exhaust some requests' retries and reach their clients as 529).

Every --interval seconds it samples the relay's RSS (VmRSS), open file descriptors, threads and
the usage queue. After --warmup it compares the median of the last quarter of the samples with
the median of the first quarter after the warm-up (at least three each, so the sockets of one
burst of requests in flight are not taken for growth): more than 5 % growth of RSS or of
descriptors fails the run (exit 1). It also fails if the relay died or dropped a usage row.
Loopback only, bounded in time.
"""

import argparse
import os
import secrets
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import relaytest  # noqa: E402
from relaytest import FakeUpstream, RelayServer, messages_body  # noqa: E402

ANTHROPIC = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
LIMIT = 0.05


def proc_sample(pid):
    with open("/proc/%d/status" % pid) as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    return {"rss_kb": int(st["VmRSS"].split()[0]), "threads": int(st["Threads"]),
            "fds": len(os.listdir("/proc/%d/fd" % pid))}


def metric(relay, name):
    for line in relay.request("GET", "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.by = {}

    def add(self, what):
        with self.lock:
            self.by[what] = self.by.get(what, 0) + 1

    def snapshot(self):
        with self.lock:
            return dict(self.by)


def one_request(relay, hdrs, kind, counts):
    try:
        if kind == "json":
            r = relay.request("POST", "/v1/messages", messages_body(), hdrs, timeout=60)
            counts.add("json %d" % r.status)
        elif kind == "drop":
            s = relay.stream("POST", "/v1/messages", messages_body(stream=True), hdrs, timeout=60)
            for n, _ in enumerate(s.events()):
                if n >= 1:
                    break
            s.close()
            counts.add("dropped stream")
        else:
            r = relay.request("POST", "/v1/messages", messages_body(stream=True), hdrs,
                              timeout=60)
            ok = r.status == 200 and b"message_stop" in r.body
            counts.add("stream %s" % ("ok" if ok else r.status))
    except Exception as e:  # noqa: BLE001  (counted, the run goes on)
        counts.add("client error " + type(e).__name__)


def client(relay, hdrs, deadline, counts, seed):
    kinds = ["stream"] * 8 + ["json"] * 6 + ["drop"] * 3 + ["stream"] * 3
    i = seed
    while time.monotonic() < deadline:
        one_request(relay, hdrs, kinds[i % len(kinds)], counts)
        i += 1


def faults(fake, deadline):
    n = 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        n += 1
        fake.fail_next(12 if n % 10 == 0 else 1, 529)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=120)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    a = ap.parse_args()
    binary = os.path.join(a.build, "relay-server", "relay-server")
    if not os.access(binary, os.X_OK):
        sys.exit("soak: %s not found (build first)" % binary)
    os.environ.setdefault("RELAY_SERVER_BIN", binary)

    key = "sk-ant-soak-" + secrets.token_urlsafe(16)
    fake = FakeUpstream(api_key=key).start()
    fake.set_scenario(deltas=20)
    fake.set_delay(per_event_ms=5)
    cfg_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), "relay-soak-%d" % os.getpid())
    os.makedirs(cfg_dir, exist_ok=True)
    cfg = os.path.join(cfg_dir, "config.yaml")
    with open(cfg, "w") as f:
        f.write("upstream:\n  primary:\n    retry_base_ms: 50\n    retry_max_ms: 200\n"
                "server:\n  worker_threads: 256\n")
    relay = RelayServer(env={"UPSTREAM_API_URL": fake.url, "UPSTREAM_API_KEY": key,
                             "RELAY_CONFIG": cfg, "LOG_LEVEL": "warning"})
    relay.start()
    proxy_key, _ = relay.create_key(name="soak", rate_limit_tier="unlimited",
                                    token_limit=10 ** 12)
    hdrs = dict(ANTHROPIC, **{"x-api-key": proxy_key})

    counts = Counts()
    t0 = time.monotonic()
    deadline = t0 + a.duration
    threads = [threading.Thread(target=client, args=(relay, hdrs, deadline, counts, i * 7),
                                daemon=True) for i in range(a.clients)]
    threads.append(threading.Thread(target=faults, args=(fake, deadline), daemon=True))
    for t in threads:
        t.start()

    samples = []
    print("%7s %9s %5s %7s %7s %9s" % ("t (s)", "RSS (kB)", "fds", "threads", "queue", "requests"))
    while True:
        now = time.monotonic()
        if relay.proc.poll() is not None:
            print("soak: FAIL: relay-server exited with %s\n%s" % (relay.proc.returncode,
                                                                  relay.log_tail()))
            return 1
        s = proc_sample(relay.pid)
        s["t"] = now - t0
        s["queue"] = metric(relay, "relay_usage_write_queue_depth")
        s["requests"] = sum(counts.snapshot().values())
        samples.append(s)
        print("%7.0f %9d %5d %7d %7.0f %9d" % (s["t"], s["rss_kb"], s["fds"], s["threads"],
                                               s["queue"] or 0, s["requests"]), flush=True)
        if now >= deadline:
            break
        time.sleep(min(a.interval, max(0.0, deadline - time.monotonic())))
    for t in threads:
        t.join(120)

    after = [s for s in samples if s["t"] >= a.warmup]
    failed = []
    if len(after) < 6:
        failed.append("too few samples after the warm-up (%d)" % len(after))
    else:
        w = max(3, len(after) // 4)  # a quarter of the run: one in-flight burst is not growth
        for what in ("rss_kb", "fds"):
            base = statistics.median(s[what] for s in after[:w])
            end = statistics.median(s[what] for s in after[-w:])
            growth = (end - base) / base if base else 0.0
            print("%s after warm-up: %d -> %d (%+.1f %%), max %d" % (
                what, base, end, 100 * growth, max(s[what] for s in after)))
            if growth > LIMIT:
                failed.append("%s grew %.1f %%" % (what, 100 * growth))
    drops = metric(relay, "relay_usage_write_drops_total")
    print("upstream retries: %d, usage rows written: %d" % (
        metric(relay, "relay_upstream_retries_total"),
        metric(relay, "relay_usage_rows_written_total")))
    if drops:
        failed.append("%d usage rows dropped" % drops)
    print("requests:", ", ".join("%s: %d" % kv for kv in sorted(counts.snapshot().items())))
    code = relay.stop()
    fake.stop()
    relay.assert_no_secrets()
    relay.cleanup()
    if code != 0:
        failed.append("relay-server exit code %s" % code)
    print("soak: %s" % ("FAIL: " + "; ".join(failed) if failed else
                        "PASS (no growth beyond %d %% after the warm-up)" % (100 * LIMIT)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
