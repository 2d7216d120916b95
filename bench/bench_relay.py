#!/usr/bin/python3
"""The concurrency and speed benchmark (issue 9): relay-server beside the practical limits, in one
run on one machine.

    /usr/bin/python3 bench/bench_relay.py [--build build] [--quick] [--no-pg] [--markdown FILE]

Upstreams: nginx serving a fixed Messages JSON, and bench/sse_upstream.c (64 deltas 31 ms apart,
~2 s streams). Paths to each: straight to the upstream, through nginx as a plain proxy_pass with
buffering off, and through relay-server (authentication, limits and accounting on) on SQLite and,
when PostgreSQL is installed, on PostgreSQL. Load: bench/stream_client.c (one epoll thread; every
request it starts is waited for, so billing can be checked exactly). Prints a table and the
ratios; never fails on timings. Loopback only, every run bounded in time.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import relaytest  # noqa: E402

INPUT_TOKENS, DELTAS = 25, 64  # what the upstreams report per request
PER_REQUEST = INPUT_TOKENS + DELTAS
JSON_BODY = json.dumps({
    "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Hello from the benchmark upstream."}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": INPUT_TOKENS, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 0, "output_tokens": DELTAS}})


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Nginx:
    """nginx with a fixed-JSON server and two plain proxies (to the JSON server, to the SSE one)."""

    def __init__(self, sse_port):
        self.dir = tempfile.mkdtemp(prefix="bench-nginx-")
        self.json_port, self.proxy_json_port, self.proxy_sse_port = (
            relaytest.free_port(), relaytest.free_port(), relaytest.free_port())
        os.makedirs(os.path.join(self.dir, "logs"))
        body = JSON_BODY.replace("'", "\\'")
        conf = """worker_processes 1;
daemon off;
pid %(d)s/nginx.pid;
error_log %(d)s/logs/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path %(d)s/body;
  proxy_temp_path %(d)s/proxy;
  upstream json_up { server 127.0.0.1:%(jp)d; keepalive 1024; keepalive_requests 1000000; }
  upstream sse_up { server 127.0.0.1:%(sp)d; keepalive 1024; keepalive_requests 1000000; }
  server { listen 127.0.0.1:%(jp)d;
    location / { default_type application/json; return 200 '%(body)s'; } }
  server { listen 127.0.0.1:%(pj)d;
    location / { proxy_pass http://json_up; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off; } }
  server { listen 127.0.0.1:%(ps)d;
    location / { proxy_pass http://sse_up; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_buffering off; proxy_request_buffering off; } }
}
""" % {"d": self.dir, "jp": self.json_port, "sp": sse_port, "pj": self.proxy_json_port,
       "ps": self.proxy_sse_port, "body": body}
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(["nginx", "-c", os.path.join(self.dir, "nginx.conf"),
                                      "-p", self.dir], stdout=subprocess.DEVNULL)
        relaytest.wait_until(lambda: os.path.exists(os.path.join(self.dir, "nginx.pid")), 10,
                             "nginx")
        time.sleep(0.3)

    def worker_pid(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout.split()
        return int(out[0]) if out else self.proc.pid

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build)
        self.client = os.path.join(self.build, "bench", "stream_client")
        self.rows = []
        self.cleanups = []

    def start_sse(self):
        p = subprocess.Popen([os.path.join(self.build, "bench", "sse_upstream"), "--deltas",
                              str(DELTAS), "--interval-ms", "31", "--input-tokens",
                              str(INPUT_TOKENS)], stdout=subprocess.PIPE, text=True)
        self.sse_port = int(p.stdout.readline().split()[1])
        self.sse_pid = p.pid
        self.cleanups.append(lambda: (p.terminate(), p.wait(5)))

    def relay(self, upstream_port, store, pg=None):
        env = {"UPSTREAM_API_URL": "http://127.0.0.1:%d" % upstream_port,
               "UPSTREAM_API_KEY": "sk-ant-bench-upstream", "LOG_LEVEL": "warning"}
        if store == "pg":
            env["DATABASE_URL"] = pg.url
        r = relaytest.RelayServer(env=env, binary=self.args.relay or relaytest.server_bin())
        if store == "pg":
            out = r.run("migrate", "up")
            assert out.returncode == 0, out.stderr
        r.start()
        # Limits and accounting on: a token quota (reservation and settlement run) and a tier
        # without a request cap, so the load is not refused.
        key, obj = r.create_key(token_limit=10 ** 12, rate_limit_tier="unlimited")
        return r, key, obj

    def load(self, port, conns, seconds, stream, key="none", idle=0):
        cmd = [self.client, "--port", str(port), "--conns", str(conns), "--seconds",
               str(seconds), "--stream", "1" if stream else "0", "--key", key, "--idle",
               str(idle), "--drain-seconds", "20"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        return json.loads(out.stdout)

    def measure(self, label, target, port, pid, conns, seconds, stream, key="none", idle=0,
                relay=None, key_obj=None):
        before = None
        if relay:  # a warm key: the cold-key burst is the key-verification issue's subject
            self.load(port, 1, 0.2, False, key)
            before = self.settled_token_used(relay, key_obj)
        t0, rss0 = cpu_ticks(pid), rss_kib(pid)
        d = self.load(port, conns, seconds, stream, key, idle)
        ticks = cpu_ticks(pid) - t0
        done = d["completed"] + d["late"]
        row = {"label": label, "target": target, "conns": conns, "idle": idle, "stream": stream,
               "seconds": seconds, "completed": d["completed"], "failed": d["failed"],
               "unfinished": d["unfinished"], "rps": d["completed"] / seconds,
               "p50": d["total_ms"]["p50"], "p99": d["total_ms"]["p99"],
               "ttfe50": d["ttfe_ms"]["p50"], "ttfe99": d["ttfe_ms"]["p99"],
               "gap99": d["gap_ms"]["p99"], "events": d["events"],
               "cpu_ms": ticks * 1000.0 / os.sysconf("SC_CLK_TCK"),
               "rss_mib": max(rss0, rss_kib(pid)) / 1024.0}
        row["cpu_per_1k_events_ms"] = (row["cpu_ms"] / (d["events"] / 1000.0)
                                       if d["events"] else None)
        row["cpu_per_req_us"] = row["cpu_ms"] * 1000.0 / done if done else None
        if relay:
            row.update(self.billing(relay, key_obj, before, done))
        self.rows.append(row)
        self.print_row(row)
        return row

    @staticmethod
    def token_used(relay, key_obj, headers):
        return relay.request("GET", "/admin/api-keys/" + key_obj["id"],
                             headers=headers).json()["token_used"]

    def settled_token_used(self, relay, key_obj):
        """token_used once the usage writer has caught up (two equal reads 0.5 s apart)."""
        headers = relay.admin_headers()
        last = None
        for _ in range(120):
            now = self.token_used(relay, key_obj, headers)
            if now == last:
                return now
            last = now
            time.sleep(0.5)
        return last

    def billing(self, relay, key_obj, before, requests):
        """token_used must grow by exactly what the upstream reported for every request."""
        t0 = time.monotonic()
        want = before + requests * PER_REQUEST
        headers = relay.admin_headers()
        got = None
        while time.monotonic() - t0 < 60:
            got = self.token_used(relay, key_obj, headers)
            if got >= want:
                break
            time.sleep(0.02)
        return {"billed_ok": got == want, "billed": got - before,
                "billed_want": want - before, "persist_s": time.monotonic() - t0}

    @staticmethod
    def print_row(r):
        extra = ""
        if r.get("cpu_per_1k_events_ms"):
            extra += "  cpu/1k ev %.1f ms" % r["cpu_per_1k_events_ms"]
        if r.get("cpu_per_req_us") and not r["stream"]:
            extra += "  cpu/req %.0f us" % r["cpu_per_req_us"]
        if "billed_ok" in r:
            extra += "  billed %s" % ("exact" if r["billed_ok"] else
                                      "WRONG %d != %d" % (r["billed"], r["billed_want"]))
        print("%-28s %-14s c=%-5d ok=%-6d fail=%-3d %8.0f/s p50 %8.2f p99 %8.2f ms "
              "ttfe50 %6.2f gap99 %6.2f rss %5.0f MiB%s" % (
                  r["label"], r["target"], r["conns"], r["completed"], r["failed"] + r["unfinished"],
                  r["rps"], r["p50"], r["p99"], r["ttfe50"], r["gap99"], r["rss_mib"], extra),
              flush=True)

    def run(self):
        a = self.args
        secs = 3 if a.quick else 5
        self.start_sse()
        ngx = Nginx(self.sse_port)
        self.cleanups.append(ngx.stop)
        pg = None
        if not a.no_pg and os.path.exists("/usr/lib/postgresql/15/bin/pg_ctl"):
            pg = self.start_pg()
        targets_json = [("direct", ngx.json_port, ngx.worker_pid(), None),
                        ("nginx", ngx.proxy_json_port, ngx.worker_pid(), None)]
        targets_sse = [("direct", self.sse_port, self.sse_pid, None),
                       ("nginx", ngx.proxy_sse_port, ngx.worker_pid(), None)]
        for store in ["sqlite"] + (["pg"] if pg else []):
            rj = self.relay(ngx.json_port, store, pg and pg.fresh())
            rs = self.relay(self.sse_port, store, pg and pg.fresh())
            self.cleanups += [rj[0].cleanup, rs[0].cleanup]
            targets_json.append(("relay-" + store, rj[0].port, rj[0].pid, rj))
            targets_sse.append(("relay-" + store, rs[0].port, rs[0].pid, rs))
        print("== non-streaming (fixed JSON from nginx) ==")
        for conns in (1, 32, 256):
            for name, port, pid, r in targets_json:
                kw = {"relay": r[0], "key": r[1], "key_obj": r[2]} if r else {}
                self.measure("json c=%d" % conns, name, port, pid, conns, secs, False, **kw)
        print("== streams (64 deltas, 31 ms apart) ==")
        for conns, s in ((1, secs), (1000, 10)):
            for name, port, pid, r in targets_sse:
                kw = {"relay": r[0], "key": r[1], "key_obj": r[2]} if r else {}
                self.measure("sse c=%d" % conns, name, port, pid, conns, s, True, **kw)
        print("== 2,000 idle keep-alive connections beside 100 streams ==")
        for name, port, pid, r in targets_sse:
            kw = {"relay": r[0], "key": r[1], "key_obj": r[2]} if r else {}
            self.measure("idle2000+sse c=100", name, port, pid, 100, secs, True, idle=2000, **kw)
        self.summary()

    def start_pg(self):
        d = tempfile.mkdtemp(prefix="bench-pg-")
        os.chmod(d, 0o755)
        script = os.path.join(ROOT, "scripts", "pg-test-server.sh")
        url = subprocess.run(["bash", script, "start", d], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        self.cleanups.append(lambda: (subprocess.run(["bash", script, "stop", d]),
                                      shutil.rmtree(d, True)))
        os.environ["RELAY_TEST_PG_URL"] = url

        class Pg:
            def fresh(self):
                return relaytest.PgDatabase(url)
        return Pg()

    def find(self, label, target):
        for r in self.rows:
            if r["label"] == label and r["target"] == target:
                return r
        return None

    def summary(self):
        lines = ["", "| measure | direct | nginx proxy_pass | relay (SQLite) | relay (PostgreSQL) "
                 "| relay ÷ nginx | target |", "|---|---|---|---|---|---|---|"]

        def cell(label, target, key, fmt):
            r = self.find(label, target)
            return fmt % r[key] if r and r.get(key) is not None else "–"

        def ratio(label, key, inverse=False):
            n, r = self.find(label, "nginx"), self.find(label, "relay-sqlite")
            if not n or not r or not n.get(key) or not r.get(key):
                return "–"
            return "%.2f" % ((n[key] / r[key]) if inverse else (r[key] / n[key]))

        spec = [
            ("json c=1", "p50", "%.3f ms", "p50 added ≤ 0.15 ms"),
            ("json c=1", "p99", "%.3f ms", "p99 added ≤ 0.5 ms"),
            ("json c=32", "rps", "%.0f/s", "≥ 0.6× nginx"),
            ("json c=32", "p99", "%.2f ms", "≤ 3 ms"),
            ("json c=256", "rps", "%.0f/s", ""),
            ("json c=32", "cpu_per_req_us", "%.0f µs", "CPU per request"),
            ("sse c=1", "ttfe50", "%.2f ms", "time to first event"),
            ("sse c=1", "gap99", "%.2f ms", "inter-event p99"),
            ("sse c=1000", "completed", "%d", "≥ 0.95× direct"),
            ("sse c=1000", "p99", "%.0f ms", "≤ 1.1× direct"),
            ("sse c=1000", "gap99", "%.2f ms", "added ≤ 1 ms"),
            ("sse c=1000", "failed", "%d", "0"),
            ("sse c=1000", "rss_mib", "%.0f MiB", "≤ 150 MB"),
            ("sse c=1000", "cpu_per_1k_events_ms", "%.1f ms", "CPU per 1,000 events"),
            ("idle2000+sse c=100", "completed", "%d", "every stream on time"),
            ("idle2000+sse c=100", "p99", "%.0f ms", ""),
        ]
        for label, key, fmt, target in spec:
            lines.append("| %s %s | %s | %s | %s | %s | %s | %s |" % (
                label, key, cell(label, "direct", key, fmt), cell(label, "nginx", key, fmt),
                cell(label, "relay-sqlite", key, fmt), cell(label, "relay-pg", key, fmt),
                ratio(label, key), target))
        billed = [r for r in self.rows if "billed_ok" in r]
        lines.append("")
        lines.append("Billing: %d of %d relay runs billed exactly what the upstream reported "
                     "(token_used checked after every run)." % (
                         sum(r["billed_ok"] for r in billed), len(billed)))
        persist = [r["persist_s"] for r in billed if r["label"] == "json c=256"]
        if persist:
            r = self.find("json c=256", "relay-sqlite")
            lines.append("Usage rows persisted: the %d rows of the c=256 run on SQLite (%.0f rows/s "
                         "served) were all in the database %.2f s after the run ended." % (
                             r["completed"], r["rps"], persist[0]))
        text = "\n".join(lines)
        print(text)
        if self.args.markdown:
            with open(self.args.markdown, "w") as f:
                f.write(text + "\n")
        with open(os.path.join(tempfile.gettempdir(), "bench_relay.json"), "w") as f:
            json.dump(self.rows, f, indent=1)

    def close(self):
        for c in reversed(self.cleanups):
            try:
                c()
            except Exception:  # noqa: BLE001 - best effort
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--relay", help="relay-server binary (default: BUILD/relay-server/...)")
    ap.add_argument("--quick", action="store_true", help="3 s runs instead of 5 s")
    ap.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL relay")
    ap.add_argument("--markdown", help="also write the summary table to this file")
    args = ap.parse_args()
    if not args.relay:
        args.relay = os.path.join(os.path.abspath(args.build), "relay-server", "relay-server")
    os.environ["RELAY_SERVER_BIN"] = args.relay
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    for tool in ("nginx",):
        if not shutil.which(tool):
            print("bench_relay: %s is not installed (apt-get install nginx)" % tool)
            return 2
    b = Bench(args)
    try:
        b.run()
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
