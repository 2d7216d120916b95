"""Helpers for the relay's end-to-end tests: run relay-server and the fake upstream, talk HTTP.

Standard library only. Import from a test in tests/e2e/ (ctest puts tests/ on PYTHONPATH) and end
the file with `relaytest.main()`, which exits 0 on success, 1 on failure and 77 (skipped) when
every test was skipped for a missing service. See docs/testing.md.
"""

import base64
import fcntl
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib
from urllib.parse import quote, urlsplit, urlunsplit

from fake_upstream import FakeUpstream  # noqa: F401  (re-exported for tests)

SKIP_EXIT = 77
HEALTH_TIMEOUT = float(os.environ.get("RELAY_TEST_HEALTH_TIMEOUT", "30"))
STOP_TIMEOUT = float(os.environ.get("RELAY_TEST_STOP_TIMEOUT", "15"))
# Variables passed from the test runner's environment to relay-server; everything else is
# dropped so a developer's own DATABASE_URL or UPSTREAM_API_KEY cannot leak into a test.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "LD_LIBRARY_PATH", "ASAN_OPTIONS",
            "UBSAN_OPTIONS", "LSAN_OPTIONS", "MSAN_OPTIONS", "TSAN_OPTIONS")


# ---- services ---------------------------------------------------------------------------------
def server_bin():
    """The relay-server binary from RELAY_SERVER_BIN, or None when unset or missing."""
    path = os.environ.get("RELAY_SERVER_BIN")
    return path if path and os.access(path, os.X_OK) else None


def pg_url():
    return os.environ.get("RELAY_TEST_PG_URL") or None


def redis_url():
    return os.environ.get("RELAY_TEST_REDIS_URL") or None


def missing_services(*services):
    """Names of the services (relay, pg, redis) that this run cannot use, with the reason."""
    have = {"relay": server_bin, "pg": pg_url, "redis": redis_url}
    why = {"relay": "RELAY_SERVER_BIN unset or not executable",
           "pg": "RELAY_TEST_PG_URL unset", "redis": "RELAY_TEST_REDIS_URL unset"}
    out = [why[s] for s in services if not have[s]()]
    if "pg" in services and pg_url() and not shutil.which("psql"):
        out.append("psql not installed")
    return out


def require(*services):
    """Exit 77 (ctest: skipped) now unless every named service is available."""
    missing = missing_services(*services)
    if missing:
        print("SKIP: " + "; ".join(missing), flush=True)
        sys.exit(SKIP_EXIT)


def free_port():
    """A port free on 127.0.0.1 right now. Prefer letting a server bind port 0 where it can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, what="condition", interval=0.02):
    """Poll pred() until it returns a true value (returned) or raise TimeoutError at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("waited %.1fs for %s" % (timeout, what))
        time.sleep(interval)


# ---- HTTP client helpers ----------------------------------------------------------------------
def _hostport(target):
    """127.0.0.1 and the port of an int port, 'host:port' or 'http://host:port/...' target."""
    if isinstance(target, int):
        return "127.0.0.1", target
    u = urlsplit(target if "//" in target else "http://" + target)
    return u.hostname or "127.0.0.1", u.port or 80


def _encode(body, headers):
    headers = dict(headers or {})
    if body is None or isinstance(body, (bytes, bytearray)):
        return body, headers
    if isinstance(body, str):
        return body.encode(), headers
    if not any(k.lower() == "content-type" for k in headers):
        headers["content-type"] = "application/json"
    return json.dumps(body).encode(), headers


class Response:
    """A finished HTTP answer: status, reason, headers (case-insensitive), body (raw bytes)."""

    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers, self.body = status, reason, headers, body

    def header(self, name, default=None):
        return self.headers.get(name, default)

    @property
    def content(self):
        """The body, gunzipped when content-encoding says gzip."""
        if "gzip" in (self.headers.get("content-encoding") or ""):
            return zlib.decompress(self.body, 31)
        return self.body

    def json(self):
        return json.loads(self.content)

    @property
    def text(self):
        return self.content.decode("utf-8", "replace")

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:200])


def request(target, method, path, body=None, headers=None, timeout=30.0):
    """One HTTP request on a fresh connection. body: dict/list (sent as JSON), str or bytes."""
    data, hdrs = _encode(body, headers)
    host, port = _hostport(target)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return Response(r.status, r.reason, r.headers, r.read())
    finally:
        conn.close()


def json_request(target, method, path, body=None, headers=None, timeout=30.0):
    """request() that returns (status, parsed JSON or None, Response)."""
    r = request(target, method, path, body, headers, timeout)
    try:
        parsed = r.json()
    except ValueError:
        parsed = None
    return r.status, parsed, r


class SSEParser:
    """Incremental text/event-stream parser (WHATWG rules): feed bytes in any split."""

    def __init__(self):
        self._buf = b""
        self._event, self._data = None, []

    def feed(self, data, final=False):
        """Return the events completed by data: dicts {event, data (JSON-parsed if it parses),
        raw (the data text)}. final=True: data ends the stream (a trailing CR ends a line)."""
        self._buf += data
        out = []
        while True:
            m = re.search(rb"\r\n|\n|\r", self._buf)
            # A lone CR at the end may be the first half of CRLF: wait for more.
            if not m or (m.group() == b"\r" and m.end() == len(self._buf) and not final):
                return out
            line, self._buf = self._buf[: m.start()].decode("utf-8"), self._buf[m.end():]
            if line == "":
                if self._data or self._event:
                    raw = "\n".join(self._data)
                    try:
                        parsed = json.loads(raw)
                    except ValueError:
                        parsed = raw
                    out.append({"event": self._event or "message", "data": parsed, "raw": raw})
                self._event, self._data = None, []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)


def parse_sse(data):
    """All complete events in a whole SSE body (bytes)."""
    return SSEParser().feed(data, final=True)


class Stream:
    """A streaming request: read the answer as it arrives, with arrival times.

    with stream_request(port, "POST", "/v1/messages", body, headers) as s:
        for t, ev in s.events(): ...
    s.incomplete is True when the body ended without its terminating chunk (cut stream).
    close() mid-way is a client disconnect.
    """

    def __init__(self, target, method, path, body=None, headers=None, timeout=30.0):
        data, hdrs = _encode(body, headers)
        host, port = _hostport(target)
        self.t0 = time.monotonic()
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.conn.request(method, path, body=data, headers=hdrs)
        self.resp = self.conn.getresponse()
        self.t_headers = time.monotonic()
        self.status, self.headers = self.resp.status, self.resp.headers
        self.incomplete = False
        self.raw = bytearray()  # every byte of the body as received (before gunzip)
        self._gz = ("gzip" in (self.headers.get("content-encoding") or "")
                    and zlib.decompressobj(31))

    def chunks(self):
        """Yield (monotonic time, bytes) for each piece of the body as it arrives (as sent on
        the wire, still compressed if content-encoding says so)."""
        while True:
            try:
                data = self.resp.read1(65536)
            except http.client.IncompleteRead as e:
                if e.partial:
                    self.raw += e.partial
                    yield time.monotonic(), e.partial
                self.incomplete = True
                return
            except (ConnectionError, http.client.HTTPException):
                self.incomplete = True
                return
            if not data:
                return
            self.raw += data
            yield time.monotonic(), data

    def events(self):
        """Yield (monotonic time, event dict) for each SSE event, gunzipping if needed."""
        p = SSEParser()
        for t, data in self.chunks():
            if self._gz:
                data = self._gz.decompress(data)
            for ev in p.feed(data):
                yield t, ev
        for ev in p.feed(b"", final=True):
            yield time.monotonic(), ev

    def read_all(self):
        for _ in self.chunks():
            pass
        return bytes(self.raw)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stream_request(target, method, path, body=None, headers=None, timeout=30.0):
    return Stream(target, method, path, body, headers, timeout)


class RawConnection:
    """A plain TCP connection for what http.client cannot do: half-sent requests, reading a
    few bytes then vanishing (abort() sends RST), malformed input."""

    def __init__(self, target, timeout=10.0):
        self.sock = socket.create_connection(_hostport(target), timeout=timeout)
        self.timeout = timeout
        self.received = b""

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def recv_until(self, marker, timeout=None):
        """Read until marker (bytes) was received; return everything so far. TimeoutError if it
        does not come, ConnectionError if the peer closes first."""
        marker = marker.encode() if isinstance(marker, str) else marker
        deadline = time.monotonic() + (timeout or self.timeout)
        while marker not in self.received:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("raw connection: %r not received" % marker)
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise ConnectionError("peer closed before %r" % marker)
            self.received += data
        return self.received

    def recv_all(self, timeout=None):
        """Read until the peer closes (bounded by timeout); return everything received."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("raw connection: peer did not close")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return self.received
            if not data:
                return self.received
            self.received += data

    def abort(self):
        """Close with RST (SO_LINGER 0): an abrupt client disconnect."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        except OSError:
            pass
        self.sock.close()

    def close(self):
        self.sock.close()


def raw_http_request(method, path, host_port, headers=None, body=b""):
    """Bytes of an HTTP/1.1 request, for RawConnection.send()."""
    body = body.encode() if isinstance(body, str) else body
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host_port]
    for k, v in (headers or {}).items():
        lines.append("%s: %s" % (k, v))
    if body:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def write_class_config(cls, text):
    """A config.yaml in its own temp directory, removed after the test class cls; returns its
    path (for RELAY_CONFIG)."""
    d = tempfile.mkdtemp(prefix="relaytest-config-")
    cls.addClassCleanup(shutil.rmtree, d, True)
    path = os.path.join(d, "config.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def messages_body(text="Hello", stream=False, model="claude-sonnet-4-5-20250929",
                  max_tokens=256, **extra):
    """A minimal valid Messages API request body."""
    b = {"model": model, "max_tokens": max_tokens,
         "messages": [{"role": "user", "content": text}]}
    if stream:
        b["stream"] = True
    b.update(extra)
    return b


# ---- relay-server -----------------------------------------------------------------------------
class RelayServer:
    """relay-server as a child process on 127.0.0.1:<port chosen at run time>.

    env: variables set on top of the defaults (a value of None removes a default). The child
    runs in a temp working directory so no .env or config.yaml from the source tree is read.
    Not thread-safe; one test thread drives it. stderr and stdout lines are captured.
    """

    def __init__(self, env=None, binary=None, args=(), data_dir=None, port=None):
        self.binary = binary or server_bin()
        if not self.binary:
            raise unittest.SkipTest("RELAY_SERVER_BIN unset or not executable")
        self.args = list(args)
        self._own_dir = data_dir is None
        self.workdir = tempfile.mkdtemp(prefix="relaytest-")
        self.data_dir = data_dir or os.path.join(self.workdir, "data")
        self._fixed_port = bool(port)
        self.port = port or free_port()
        self.env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        self.env.update({
            "RELAY_LISTEN": "127.0.0.1:%d" % self.port,
            "RELAY_DATA_DIR": self.data_dir,
            "ADMIN_USERNAME": "admin",
            "ADMIN_PASSWORD": "admin-" + secrets.token_urlsafe(12),
            "SECRET_KEY": secrets.token_urlsafe(32),
        })
        for k, v in (env or {}).items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = str(v)
        if (env or {}).get("RELAY_LISTEN"):  # the caller chose the address: use its port
            self.port = int(str(env["RELAY_LISTEN"]).rsplit(":", 1)[1])
            self._fixed_port = True
        self.proc = None
        self._lines = {"stderr": [], "stdout": []}
        self._cond = threading.Condition()
        self._readers = []
        self.proxy_keys = []  # keys handed out (create, rotate): secrets for assert_no_secrets()
        self.answer_leaks = []  # answers that carried a secret (see _watch)

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def secrets(self):
        """Every secret this server was given or handed out, for assert_no_secrets()."""
        names = ("UPSTREAM_API_KEY", "ADMIN_PASSWORD", "SECRET_KEY")
        vals = [self.env[n] for n in names if self.env.get(n)]
        vals += config_secrets(self.env.get("RELAY_CONFIG"))
        for n in ("DATABASE_URL", "REDIS_URL"):  # only the password part of a URL is secret
            pw = urlsplit(self.env.get(n) or "").password
            if pw:
                vals.append(pw)
        return vals + self.proxy_keys

    # ---- process ---------------------------------------------------------------------------
    def start(self, wait=True, timeout=HEALTH_TIMEOUT):
        """Start the process; with wait, return once /health answers 200 (else raise with the
        server's stderr). A port taken between free_port() and the server's bind is retried
        on a fresh port, unless the caller chose the port."""
        for attempt in range(3):
            try:
                return self._start_once(wait, timeout)
            except RuntimeError as e:
                if (self._fixed_port or attempt == 2
                        or not re.search(r"in use|EADDRINUSE", str(e), re.I)):
                    raise
                self.port = free_port()
                self.env["RELAY_LISTEN"] = "127.0.0.1:%d" % self.port
                self._lines = {"stderr": [], "stdout": []}

    def _start_once(self, wait, timeout):
        os.makedirs(self.data_dir, exist_ok=True)
        self._cap_workers()
        self.proc = subprocess.Popen([self.binary] + self.args, env=self.env, cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        for name, pipe in (("stderr", self.proc.stderr), ("stdout", self.proc.stdout)):
            t = threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            t.start()
            self._readers.append(t)
        if wait:
            self.wait_healthy(timeout)
        return self

    def _cap_workers(self):
        """RELAY_TEST_WORKER_THREADS=N (the ThreadSanitizer and valgrind runs): a server whose
        configuration does not choose server.worker_threads gets N instead of the default 2,500,
        whose start alone takes minutes under those tools."""
        n = os.environ.get("RELAY_TEST_WORKER_THREADS")
        path = self.env.get("RELAY_CONFIG") or os.path.join(self.workdir, "config.yaml")
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            text = ""
        if not n or "worker_threads" in text:
            return
        line = "  worker_threads: %d\n" % int(n)
        if re.search(r"^server:[ \t]*$", text, re.M):
            text = re.sub(r"^server:[ \t]*\n", lambda m: m.group(0) + line, text, 1, re.M)
        else:
            text += "\nserver:\n" + line
        capped = os.path.join(self.workdir, "config-workers.yaml")
        with open(capped, "w") as f:
            f.write(text)
        self.env["RELAY_CONFIG"] = capped

    def _read(self, name, pipe):
        echo = os.environ.get("RELAY_TEST_VERBOSE")
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if echo:
                sys.stderr.write("[relay %s] %s\n" % (name, line))
            with self._cond:
                self._lines[name].append(line)
                self._cond.notify_all()
        pipe.close()

    def wait_healthy(self, timeout=HEALTH_TIMEOUT, statuses=(200,)):
        """Poll GET /health until its status is in statuses; on exit or timeout raise with the
        server's stderr."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._join_readers()
                raise RuntimeError("relay-server exited with %s before /health answered\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                r = request(self.port, "GET", "/health", timeout=2)
                if r.status in statuses:
                    return r
                last = "status %d: %r" % (r.status, r.body[:200])
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("relay-server /health not ready after %.0fs (%s)\n%s"
                           % (timeout, last, self.log_tail()))

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then SIGKILL if it has not exited within timeout. Returns the exit code
        (negative: killed by that signal)."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._join_readers()
        return self.proc.returncode

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._join_readers()

    def _join_readers(self):
        for t in self._readers:
            t.join(5)
        self._readers = []

    def cleanup(self):
        self.stop()
        if self._own_dir and not os.environ.get("RELAY_TEST_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self, *args, timeout=60, env=None):
        """Run the binary once with this server's environment (e.g. "migrate", "status")."""
        e = dict(self.env, **(env or {}))
        return subprocess.run([self.binary] + list(args), env=e, cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout)

    # ---- logs ------------------------------------------------------------------------------
    def stderr_lines(self):
        with self._cond:
            return list(self._lines["stderr"])

    def stdout_lines(self):
        with self._cond:
            return list(self._lines["stdout"])

    def log_records(self):
        """stderr lines that are JSON objects (the server's structured log)."""
        out = []
        for line in self.stderr_lines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def wait_for_log(self, match, timeout=10.0, stream="stderr"):
        """Wait for a line: match is a substring or a predicate on the line (str). Returns it."""
        pred = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                lines = self._lines[stream]
                for line in lines[seen:]:
                    if pred(line):
                        return line
                seen = len(lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no %s line matched within %.1fs" % (stream, timeout))
                self._cond.wait(left)

    def log_tail(self, n=40):
        lines = self.stderr_lines()[-n:]
        return "---- relay-server stderr (last %d lines) ----\n%s" % (len(lines), "\n".join(lines))

    def assert_no_secrets(self, extra=()):
        """Raise AssertionError if a secret appears in stderr or stdout. The message names the
        stream and line number, never the secret."""
        values = list(self.secrets()) + list(extra)
        found = ["stderr line %d" % n for n in find_secrets(self.stderr_lines(), values)]
        found += ["stdout line %d" % n for n in find_secrets(self.stdout_lines(), values)]
        found += ["the " + a for a in self.answer_leaks]
        if found:
            raise AssertionError("a secret appears in the output of relay-server on port %d at %s"
                                 % (self.port, ", ".join(found)))

    def assert_no_sanitizer_report(self):
        """Raise AssertionError if a sanitizer reported on stderr (a race or leak at shutdown
        leaves the tests passing otherwise)."""
        marks = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer",
                 "runtime error:")
        hits = [i + 1 for i, line in enumerate(self.stderr_lines()) if any(m in line for m in marks)]
        if hits:
            raise AssertionError("relay-server on port %d: sanitizer report at stderr line %d:\n%s"
                                 % (self.port, hits[0], "\n".join(self.stderr_lines()[hits[0] - 1:
                                                                                  hits[0] + 20])))

    # ---- HTTP ------------------------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, timeout=30.0):
        return self._watch(request(self.port, method, path, body, headers, timeout), method, path)

    def json_request(self, method, path, body=None, headers=None, timeout=30.0):
        st, js, r = json_request(self.port, method, path, body, headers, timeout)
        self._watch(r, method, path)
        return st, js, r

    def _watch(self, r, method, path):
        """Every answer read through this server: a proxy key it hands out (create, rotate) is
        remembered as a secret; any other secret in an answer is a leak, reported by
        assert_no_secrets()."""
        body = r.body.decode("utf-8", "replace")
        try:
            js = json.loads(body) if body.startswith("{") else None
        except ValueError:
            js = None
        given = js.get("api_key") if isinstance(js, dict) else None
        if isinstance(given, str) and given:
            self.proxy_keys.append(given)
        if find_secrets([body.replace(given, "") if given else body], self.secrets()):
            self.answer_leaks.append("%d answer to %s %s" % (r.status, method, path.split("?")[0]))
        return r

    def stream(self, method, path, body=None, headers=None, timeout=30.0):
        return Stream(self.port, method, path, body, headers, timeout)

    def admin_token(self):
        """POST /admin/login with HTTP Basic (issue 3); returns the bearer token."""
        cred = "%s:%s" % (self.env.get("ADMIN_USERNAME", "admin"), self.env["ADMIN_PASSWORD"])
        auth = "Basic " + base64.b64encode(cred.encode()).decode()
        st, js, r = self.json_request("POST", "/admin/login", headers={"authorization": auth})
        if st != 200 or not js or "access_token" not in js:
            raise AssertionError("admin login failed: %d %r" % (st, r.body[:300]))
        return js["access_token"]

    def admin_headers(self):
        return {"authorization": "Bearer " + self.admin_token()}

    def create_key(self, **fields):
        """POST /admin/api-keys; returns (proxy key, key object). The key is remembered as a
        secret for assert_no_secrets()."""
        fields.setdefault("name", "test-" + secrets.token_hex(4))
        st, js, r = self.json_request("POST", "/admin/api-keys", fields, self.admin_headers())
        if st not in (200, 201) or not js or "api_key" not in js:
            raise AssertionError("key creation failed: %d %r" % (st, r.body[:300]))
        self.proxy_keys.append(js["api_key"])
        return js["api_key"], js


def config_secrets(path):
    """The api_key / password / token values written in a config.yaml (upstream keys above all),
    so a test server given its keys by file is checked like one given them by environment."""
    try:
        with open(path or "") as f:
            text = f.read()
    except OSError:
        return []
    pat = r"^\s*-?\s*(?:api_key|password|token|secret_key)\s*:\s*[\"']?([^\"'\s#]+)"
    return [v for v in re.findall(pat, text, re.M) if not v.startswith("${")]


def find_secrets(lines, secret_values):
    """The 1-based numbers of the lines containing one of the secrets (values under 8
    characters are ignored: they would match by chance)."""
    vals = [s for s in secret_values if s and len(s) >= 8]
    return [i + 1 for i, line in enumerate(lines) if any(s in line for s in vals)]


# ---- stores -----------------------------------------------------------------------------------
def _with_dbname(url, name):
    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc, "/" + quote(name), u.query, u.fragment))


def _psql(url, sql, timeout=60):
    env = dict(os.environ, PGCONNECT_TIMEOUT="10")
    r = subprocess.run(["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("psql failed (%d): %s" % (r.returncode, r.stderr.strip()))
    return r.stdout


class PgDatabase:
    """A fresh PostgreSQL database made with `CREATE DATABASE` through psql on the server named
    by RELAY_TEST_PG_URL (its database is only used to connect), dropped by drop()."""

    def __init__(self, base_url=None):
        self.base_url = base_url or pg_url()
        self.name = "relay_test_%d_%s" % (os.getpid(), secrets.token_hex(4))
        _psql(self.base_url, 'CREATE DATABASE "%s"' % self.name)
        self.url = _with_dbname(self.base_url, self.name)

    def drop(self):
        # WITH (FORCE) (PostgreSQL 13+) ends sessions a killed relay may have left behind.
        _psql(self.base_url, 'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.name)


class PgCluster:
    """A throwaway PostgreSQL cluster of its own (scripts/pg-test-server.sh), for a test that
    stops and starts the server under the relay. Raises unittest.SkipTest when PostgreSQL's
    binaries are not installed. stop()/start() keep the port; destroy() stops it and deletes
    its directory (register it with addCleanup/addClassCleanup first)."""

    def __init__(self):
        src = os.environ.get("RELAY_SOURCE_DIR") or os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))
        self.script = os.path.join(src, "scripts", "pg-test-server.sh")
        pg_bin = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
        if not os.access(os.path.join(pg_bin, "pg_ctl"), os.X_OK) or not shutil.which("psql"):
            raise unittest.SkipTest("PostgreSQL server binaries (%s) or psql not installed"
                                    % pg_bin)
        self.dir = tempfile.mkdtemp(prefix="relay-pg-", dir="/tmp")
        os.chmod(self.dir, 0o755)  # as root the script runs PostgreSQL as the postgres user
        try:
            self.url = self._run("start").strip().splitlines()[-1]
        except BaseException:
            self.destroy()  # the caller never gets an object to clean up
            raise

    def _run(self, cmd):
        out = subprocess.run(["sh", self.script, cmd, self.dir], capture_output=True,
                             text=True, timeout=240)  # initdb on a loaded CI machine
        if out.returncode != 0:
            raise RuntimeError("pg-test-server.sh %s: %s" % (cmd, out.stderr.strip()))
        return out.stdout

    def stop(self):
        self._run("stop")

    def start(self):
        self._run("start")

    def destroy(self):
        if os.path.isdir(self.dir):
            try:
                self._run("stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """A throwaway redis-server of its own on 127.0.0.1 (no persistence), for a test that kills
    and restarts Redis under the relay. Raises unittest.SkipTest without redis-server. kill()
    is SIGKILL by PID; start() again on the same port; register stop() with addCleanup."""

    def __init__(self, port=None):
        if not shutil.which("redis-server"):
            raise unittest.SkipTest("redis-server not installed")
        self.port = port or free_port()
        self.url = "redis://127.0.0.1:%d/0" % self.port
        self.proc = None
        self.start()

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.ping, 10, "redis-server to answer")
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    stop = kill


def _resp_command(sock, *args):
    msg = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args))
    sock.sendall(msg)
    reply = sock.recv(4096)
    if reply.startswith(b"-"):
        raise RuntimeError("redis: %s" % reply.decode("utf-8", "replace").strip())
    return reply


class RedisDb:
    """One logical Redis database (1..15) on RELAY_TEST_REDIS_URL, reserved for this test class
    with a lock file (parallel ctest runs get different ones) and flushed on acquire."""

    def __init__(self, base_url=None):
        self.base_url = base_url or redis_url()
        self._lock = None
        for n in range(1, 16):
            f = open(os.path.join(tempfile.gettempdir(), "relaytest-redis-db-%d.lock" % n), "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self._lock, self.db = f, n
            break
        if not self._lock:
            raise RuntimeError("all 15 test Redis databases are in use")
        self.url = _with_dbname(self.base_url, str(self.db))
        self.flush()

    def flush(self):
        u = urlsplit(self.base_url)
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), 5) as s:
            if u.password:
                _resp_command(s, *(["AUTH", u.username, u.password] if u.username
                                   else ["AUTH", u.password]))
            _resp_command(s, "SELECT", str(self.db))
            _resp_command(s, "FLUSHDB")

    def release(self):
        if self._lock:
            self._lock.close()
            self._lock = None


# ---- the base test case -----------------------------------------------------------------------
class RelayTestCase(unittest.TestCase):
    """A test class with a fake upstream and one relay-server (started in setUpClass).

    Class attributes to override: STORE ("sqlite" or "pg"; see both_stores), USE_REDIS,
    START_RELAY, and the classmethod relay_env() for extra server environment.
    In tests: self.fake, self.relay, self.upstream_key; self.start_relay(env) for another
    server on the same store; the fake is reset before each test; after the class, every log
    line of every server it started is checked for secrets.
    """

    STORE = "sqlite"
    USE_REDIS = False
    START_RELAY = True

    @classmethod
    def relay_env(cls):
        return {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.pg = cls.redis = cls.relay = None
        cls._servers = []
        cls.addClassCleanup(cls._cleanup_class)
        if not server_bin() and cls.START_RELAY:
            raise unittest.SkipTest("RELAY_SERVER_BIN unset or not executable")
        if cls.STORE == "pg":
            missing = missing_services("pg")
            if missing:
                raise unittest.SkipTest("; ".join(missing))
            cls.pg = PgDatabase()
        if cls.USE_REDIS:
            if not redis_url():
                raise unittest.SkipTest("RELAY_TEST_REDIS_URL unset")
            cls.redis = RedisDb()
        cls.upstream_key = "sk-ant-api03-fake-" + secrets.token_urlsafe(24)
        cls.fake = FakeUpstream(api_key=cls.upstream_key).start()
        if cls.START_RELAY:
            cls.relay = cls.new_relay()
            if cls.pg:
                # PostgreSQL is migrated by the operator (SQLite migrates itself on serve).
                out = cls.relay.run("migrate", "up")
                if out.returncode != 0:
                    raise RuntimeError("migrate up failed: " + out.stderr)
            cls.relay.start()

    @classmethod
    def store_env(cls):
        """The environment that points a server at this class's store and Redis."""
        env = {"DATABASE_URL": cls.pg.url if cls.pg else None}
        if cls.redis:
            env["REDIS_URL"] = cls.redis.url
        return env

    @classmethod
    def new_relay(cls, env=None, **kw):
        """A RelayServer (not started) on this class's store and fake upstream."""
        e = {"UPSTREAM_API_URL": cls.fake.url, "UPSTREAM_API_KEY": cls.upstream_key}
        e.update(cls.store_env())
        e.update(cls.relay_env())
        e.update(env or {})
        s = RelayServer(env=e, **kw)
        cls._servers.append(s)
        return s

    def start_relay(self, env=None, **kw):
        """Start another relay-server for this test (stopped at the end of the test)."""
        s = self.new_relay(env, **kw)
        self.addCleanup(s.stop)
        return s.start()

    @classmethod
    def _cleanup_class(cls):
        errors = []
        for s in cls._servers:
            if s.proc and s.proc.poll() is None:  # metric labels are checked for secrets too
                try:
                    s.request("GET", "/metrics", timeout=10)
                except OSError:
                    pass
            s.stop()
            try:
                s.assert_no_secrets()
                s.assert_no_sanitizer_report()
            except AssertionError as e:
                errors.append(str(e))
            s.cleanup()
        if getattr(cls, "fake", None):
            cls.fake.stop()
        if cls.pg:
            cls.pg.drop()
        if cls.redis:
            cls.redis.release()
        if errors:
            raise AssertionError("; ".join(errors))

    def setUp(self):
        super().setUp()
        self.fake.reset()

    # ---- what the relay stored ---------------------------------------------------------------
    def usage_rows(self, key_id, relay=None):
        """usage_logs rows of the key (oldest first), read straight from the database: the
        class's PostgreSQL database through psql, else relay's (default self.relay) SQLite file."""
        if self.pg:
            out = subprocess.run(
                ["psql", self.pg.url, "-X", "-q", "-A", "-t", "-c",
                 "SELECT row_to_json(u) FROM usage_logs u WHERE api_key_id = '%s' ORDER BY id"
                 % key_id], capture_output=True, text=True, timeout=30, check=True).stdout
            return [json.loads(line) for line in out.splitlines() if line.strip()]
        relay = relay or self.relay
        db = sqlite3.connect(os.path.join(relay.data_dir, "relay.db"), timeout=10)
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute("SELECT * FROM usage_logs WHERE api_key_id = ? ORDER BY id",
                              (key_id,)).fetchall()
            return [dict(r) for r in rows]
        finally:
            db.close()

    def wait_usage_rows(self, key_id, n, timeout=10):
        """The key's usage rows once there are at least n (the usage writer stores them after
        the answer, in batches)."""
        return wait_until(lambda: (lambda rows: rows if len(rows) >= n else None)(
            self.usage_rows(key_id)), timeout, "%d usage rows" % n)

    def key_state(self, key_id, relay=None, headers=None):
        """The key as GET /admin/api-keys/{id} shows it (asserting 200), on relay (default
        self.relay) with headers (default: a fresh admin login)."""
        relay = relay or self.relay
        st, js, r = relay.json_request("GET", "/admin/api-keys/" + key_id,
                                       headers=headers or relay.admin_headers())
        self.assertEqual(st, 200, r.body)
        return js


def both_stores(cls):
    """Class decorator: keep cls on SQLite and add `<Name>_pg`, the same tests on PostgreSQL
    (skipped when RELAY_TEST_PG_URL is unset)."""
    mod = sys.modules[cls.__module__]
    name = cls.__name__ + "_pg"
    pg_cls = type(name, (cls,), {"STORE": "pg", "__qualname__": name,
                                 "__module__": cls.__module__})
    setattr(mod, name, pg_cls)
    return cls


def main(argv=None):
    """unittest.main, with exit codes for ctest: 1 on any failure or error, 77 when nothing
    ran because every test (or class) was skipped, else 0."""
    prog = unittest.main(module="__main__", argv=argv, exit=False, verbosity=2)
    r = prog.result
    if not r.wasSuccessful():
        sys.exit(1)
    ran = r.testsRun - sum(1 for t, _ in r.skipped if isinstance(t, unittest.TestCase))
    if ran == 0 and r.skipped:
        sys.exit(SKIP_EXIT)
    if r.testsRun == 0 and not r.skipped:
        print("no tests found", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
