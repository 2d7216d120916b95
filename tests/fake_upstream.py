#!/usr/bin/env python3
"""A fake Anthropic API for the relay's tests: real wire format, faults under the test's control.

Drive it in-process (class FakeUpstream) or over HTTP on the same port under /_control/ (any
language), or run it standalone:

    python3 tests/fake_upstream.py --port 0 --api-key KEY     # first stdout line: PORT=<n>

Standard library only. Binds 127.0.0.1 only. See docs/testing.md for the control API.
"""

import argparse
import base64
import copy
import datetime
import gzip
import http.server
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
import zlib
from urllib.parse import parse_qs, urlsplit

DEFAULT_MODEL = "claude-sonnet-4-5-20250929"
DEFAULT_TEXT = "Hello! This is the fake upstream speaking, one small piece at a time."

# The status -> error type table of Anthropic's API (docs "Errors").
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Billing error",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "timeout_error": "Request timed out",
    "overloaded_error": "Overloaded",
}

MODELS = [
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-3-5-haiku-20241022", "Claude Haiku 3.5", "2024-10-22T00:00:00Z"),
]

MAX_BODY = 64 * 1024 * 1024  # above the relay's 32 MB default, so the relay's limit is what bites
MAX_HOLD_S = 60.0  # a held response is released after this even if the test forgets to


def _rand_id(prefix, n=24):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def _rfc3339(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def error_body(status, message=None, error_type=None, request_id=None):
    """Anthropic's error JSON for a status: {"type":"error","error":{...},"request_id":...}."""
    etype = error_type or ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": etype, "message": message or ERROR_MESSAGES[etype]}}
    if request_id:
        body["request_id"] = request_id
    return body


def default_usage():
    """The usage a fresh fake reports; every number can be changed with set_usage()."""
    return {
        "input_tokens": 25,
        "output_tokens": 15,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 0,
    }


USAGE_KEYS = tuple(default_usage().keys())


def usage_json(u, output_tokens=None):
    """Render our flat usage dict in the API's shape (cache split nested under cache_creation)."""
    return {
        "input_tokens": u["input_tokens"],
        "cache_creation_input_tokens": u["cache_creation_input_tokens"],
        "cache_read_input_tokens": u["cache_read_input_tokens"],
        "cache_creation": {
            "ephemeral_5m_input_tokens": u["ephemeral_5m_input_tokens"],
            "ephemeral_1h_input_tokens": u["ephemeral_1h_input_tokens"],
        },
        "output_tokens": u["output_tokens"] if output_tokens is None else output_tokens,
        "service_tier": "standard",
    }


def split_text(text, n):
    """Split text into n non-empty pieces (fewer if the text is shorter than n)."""
    n = max(1, min(n, len(text))) if text else 1
    step, rest = divmod(len(text), n)
    pieces, pos = [], 0
    for i in range(n):
        size = step + (1 if i < rest else 0)
        pieces.append(text[pos : pos + size])
        pos += size
    return pieces


class _Fault:
    """A fault that applies to the next `count` matching responses (None = until cleared)."""

    def __init__(self, value=None, count=None):
        self.value = value
        self.count = count

    def take(self):
        if self.value is None or self.count == 0:
            return None
        if self.count is not None:
            self.count -= 1
        return self.value


class FakeUpstream:
    """The fake Anthropic API server. Thread-safe: every setter may be called while it serves.

    Faults apply in this order to each /v1/ request: auth (401) -> fail_next -> endpoint answer,
    where a streamed answer may then be cut (cut_after) or end in an error event
    (set_error_after_events). Delays apply to every /v1/ answer.
    """

    def __init__(self, api_key="sk-ant-fake-upstream-key", port=0):
        self.api_key = api_key
        self._want_port = port
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._httpd = None
        self._thread = None
        self._conns = set()
        # Answers being written now: a live count, so reset() leaves it alone (zeroing it while a
        # handler finishes would take it below zero).
        self._inflight = 0
        self.reset()

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self):
        self._stopping.clear()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", self._want_port), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self):
        if not self._httpd:
            return
        self._stopping.set()
        with self._cond:
            self._held = False
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        # Keep-alive connections would otherwise keep answering after stop().
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._httpd.server_address[1]

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    # ---- control -----------------------------------------------------------------------------
    def reset(self):
        """Back to the default scenario: no faults, no delays, no gzip, records cleared."""
        with self._cond:
            self._usage = default_usage()
            self._start_usage = None
            self._text = DEFAULT_TEXT
            self._deltas = 5
            self._model = None
            self._count_tokens = None
            self._fail = _Fault()
            self._cut = _Fault()
            self._cut_json = _Fault()
            self._error_after = _Fault()
            self._first_byte_ms = 0
            self._per_event_ms = 0
            self._gzip = False
            self._held = False
            self._records = []
            self._ratelimit_limit = 1000
            self._window = (0, 0)  # (minute, requests seen in it)
            self._cond.notify_all()

    def fail_next(self, n, status, retry_after=None, message=None, error_type=None):
        """Answer the next n /v1/ requests with status and Anthropic's error body for it.

        retry_after: seconds for the retry-after header; None gives 429 a default of 1 and
        other statuses none; False omits it even on 429.
        """
        if retry_after is None and status == 429:
            retry_after = 1
        spec = {"status": int(status), "retry_after": retry_after, "message": message,
                "error_type": error_type}
        with self._lock:
            self._fail = _Fault(spec, int(n))

    def set_api_key(self, key):
        """Accept only this key from now on (None: any key), e.g. to play a revoked key: the
        relay's requests then get 401 authentication_error."""
        with self._lock:
            self.api_key = key

    def cut_after(self, k, count=None):
        """Close the socket after k SSE events, without the terminating chunk. None clears it.

        count: how many streams to cut (None = every stream until cleared).
        """
        with self._lock:
            self._cut = _Fault(None if k is None else int(k), count)

    def cut_json_after(self, nbytes, count=None):
        """Send a JSON answer's full content-length but close after nbytes of its body. None
        clears it. count: how many answers to cut (None = every one until cleared)."""
        with self._lock:
            self._cut_json = _Fault(None if nbytes is None else int(nbytes), count)

    def _json_cut(self):
        with self._lock:
            return self._cut_json.take()

    def set_error_after_events(self, k, error_type="overloaded_error", message=None, count=None):
        """After k events of a 200 stream, send `event: error` and end the stream. None clears."""
        spec = None if k is None else {"k": int(k), "type": error_type,
                                       "message": message or ERROR_MESSAGES.get(error_type, "Error")}
        with self._lock:
            self._error_after = _Fault(spec, count)

    def set_delay(self, first_byte_ms=0, per_event_ms=0):
        """Wait first_byte_ms before the status line, and per_event_ms before each SSE event."""
        with self._lock:
            self._first_byte_ms = max(0, int(first_byte_ms))
            self._per_event_ms = max(0, int(per_event_ms))

    def set_usage(self, **usage):
        """Set the default usage (keys: USAGE_KEYS); unknown keys raise ValueError.

        start_usage={...} sets what message_start reports when it should differ from the final
        numbers (the message_delta always carries the final, cumulative usage).
        """
        start = usage.pop("start_usage", None)
        bad = set(usage) - set(USAGE_KEYS)
        if bad:
            raise ValueError("unknown usage fields: %s" % ", ".join(sorted(bad)))
        with self._lock:
            self._usage.update({k: int(v) for k, v in usage.items()})
            if start is not None:
                self._start_usage = dict(start)

    def set_scenario(self, text=None, deltas=None, model=None, count_tokens=None):
        """Set the answer text, how many text deltas a stream splits it into, the model echoed
        (None = the request's model) and the count_tokens answer (None = usage input_tokens)."""
        with self._lock:
            if text is not None:
                self._text = text
            if deltas is not None:
                self._deltas = max(1, int(deltas))
            self._model = model
            self._count_tokens = count_tokens

    def set_gzip(self, enabled):
        """Gzip answers (JSON and SSE) when the client sent accept-encoding: gzip."""
        with self._lock:
            self._gzip = bool(enabled)

    def set_ratelimit_limit(self, n):
        with self._lock:
            self._ratelimit_limit = int(n)

    def hold(self, enabled=True):
        """While held, /v1/ answers wait before their first byte (at most MAX_HOLD_S) until
        released. Lets a test have N requests in flight at once, then release them."""
        with self._cond:
            self._held = bool(enabled)
            self._cond.notify_all()

    def release(self):
        self.hold(False)

    # ---- observation -------------------------------------------------------------------------
    def requests(self):
        """A copy of every request received (not /_control/), oldest first. Each is a dict:
        method, path (with query), peer ("ip:port" of the connection), headers (lower-case
        names, last value wins), header_list
        (name, value pairs as sent), body (bytes), json (parsed body or None), time, and once
        the answer is done: status, events_sent, completed (all bytes written), client_gone."""
        with self._lock:
            return copy.deepcopy(self._records)

    def wait_for_requests(self, n, timeout=10.0):
        """Block until at least n requests arrived; return them. Raises TimeoutError."""
        return self._wait(lambda: len(self._records) >= n, timeout, "%d requests" % n)

    def wait_for_finished(self, n, timeout=10.0):
        """Block until at least n requests were fully answered (or failed while answering)."""
        return self._wait(lambda: sum(1 for r in self._records if "status" in r) >= n,
                          timeout, "%d finished requests" % n)

    def wait_inflight(self, n, timeout=10.0):
        """Block until at least n /v1/ requests are being answered at once (see hold())."""
        return self._wait(lambda: self._inflight >= n, timeout, "%d in flight" % n)

    @property
    def inflight(self):
        with self._lock:
            return self._inflight

    def _wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("fake upstream: waited %.1fs for %s" % (timeout, what))
                self._cond.wait(left)
            return copy.deepcopy(self._records)

    def state(self):
        """The current settings, as the /_control/state endpoint reports them."""
        with self._lock:
            return {
                "usage": dict(self._usage),
                "start_usage": self._start_usage,
                "text": self._text,
                "deltas": self._deltas,
                "model": self._model,
                "fail_next": {"spec": self._fail.value, "remaining": self._fail.count},
                "cut_after": {"events": self._cut.value, "remaining": self._cut.count},
                "error_after": {"spec": self._error_after.value,
                                "remaining": self._error_after.count},
                "delay": {"first_byte_ms": self._first_byte_ms,
                          "per_event_ms": self._per_event_ms},
                "gzip": self._gzip,
                "held": self._held,
                "inflight": self._inflight,
                "requests": len(self._records),
            }

    # ---- used by the handler -----------------------------------------------------------------
    def _record(self, rec):
        with self._cond:
            self._records.append(rec)
            self._cond.notify_all()

    def _finish(self, rec, **info):
        # rec may no longer be listed if reset() ran meanwhile; updating it is then harmless.
        with self._cond:
            rec.update(info)
            self._cond.notify_all()

    def _enter(self):
        with self._cond:
            self._inflight += 1
            self._cond.notify_all()
            deadline = time.monotonic() + MAX_HOLD_S
            while self._held and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)

    def _leave(self):
        with self._cond:
            self._inflight -= 1
            self._cond.notify_all()

    def _plan(self, overrides):
        """Snapshot the settings for one answer, taking one-shot faults."""
        with self._lock:
            usage = dict(self._usage)
            usage.update({k: int(v) for k, v in (overrides.get("usage") or {}).items()
                          if k in USAGE_KEYS})
            start = overrides.get("start_usage", self._start_usage)
            return {
                "usage": usage,
                "start_usage": dict(usage, **start) if start else None,
                "text": overrides.get("text", self._text),
                "deltas": int(overrides.get("deltas", self._deltas)),
                "model": overrides.get("model", self._model),
                "count_tokens": self._count_tokens,
                "fail": self._fail.take(),
                "first_byte_ms": self._first_byte_ms,
                "per_event_ms": self._per_event_ms,
                "gzip": self._gzip,
            }

    def _stream_faults(self):
        with self._lock:
            return self._cut.take(), self._error_after.take()

    def _ratelimit_headers(self):
        now = time.time()
        minute = int(now // 60)
        with self._lock:
            seen = self._window[1] + 1 if self._window[0] == minute else 1
            self._window = (minute, seen)
            limit = self._ratelimit_limit
        reset = _rfc3339((minute + 1) * 60)
        h = []
        for kind, lim in (("requests", limit), ("tokens", 1000000), ("input-tokens", 800000),
                          ("output-tokens", 200000)):
            used = seen if kind == "requests" else 0
            h += [("anthropic-ratelimit-%s-limit" % kind, str(lim)),
                  ("anthropic-ratelimit-%s-remaining" % kind, str(max(0, lim - used))),
                  ("anthropic-ratelimit-%s-reset" % kind, reset)]
        return h


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _ClientGone(Exception):
    pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic/1.0"
    sys_version = ""
    fake = None  # set per server by FakeUpstream.start()

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):  # keep test output readable
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # peer's delayed ACK add ~40 ms to every answer, hiding everything a benchmark measures.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.fake._lock:
            self.fake._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.fake._lock:
            self.fake._conns.discard(self.connection)

    # ---- request plumbing --------------------------------------------------------------------
    def _read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise ValueError("body too large")
                out += self.rfile.read(size)
                self.rfile.readline(8)
        n = int(self.headers.get("content-length") or 0)
        if n > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def _dispatch(self):
        # One handler object serves every request of a keep-alive connection: reset per request.
        self._req_id = _rand_id("req_")
        self._plan = None
        self._info = {"status": 0, "events_sent": 0, "completed": False, "client_gone": False}
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            return self._send_json(413, error_body(413))
        path = urlsplit(self.path).path
        if path.startswith("/_control/"):
            return self._control(path[len("/_control/"):], body)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        rec = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "header_list": [(k, v) for k, v in self.headers.items()],
            "body": body,
            "json": parsed,
            "time": time.time(),
            "peer": "%s:%d" % self.client_address[:2],  # same peer = same (reused) connection
        }
        self.fake._record(rec)
        self.fake._enter()
        try:
            self._answer(path, body, parsed)
        except (_ClientGone, ConnectionError, BrokenPipeError):
            self._info["client_gone"] = True
            self.close_connection = True
        finally:
            self.fake._leave()
            self.fake._finish(rec, **self._info)

    # ---- the API -----------------------------------------------------------------------------
    def _answer(self, path, body, parsed):
        plan = self.fake._plan(self._overrides(parsed))
        self._plan = plan
        self._sleep_ms(plan["first_byte_ms"])
        key = self.headers.get("x-api-key")
        if self.fake.api_key is not None and key != self.fake.api_key:
            msg = "x-api-key header is required" if key is None else "invalid x-api-key"
            return self._send_error(401, msg)
        if plan["fail"]:
            f = plan["fail"]
            return self._send_error(f["status"], f["message"], f["error_type"], f["retry_after"])
        if path == "/v1/messages" and self.command == "POST":
            return self._messages(parsed)
        if path == "/v1/messages/count_tokens" and self.command == "POST":
            if not isinstance(parsed, dict) or "messages" not in parsed:
                return self._send_error(400, "messages: Field required")
            n = plan["count_tokens"]
            return self._send_json(200, {"input_tokens": plan["usage"]["input_tokens"]
                                         if n is None else int(n)})
        if path == "/v1/models" and self.command == "GET":
            return self._models()
        if path.startswith("/v1/models/") and self.command == "GET":
            mid = path[len("/v1/models/"):]
            for m in MODELS:
                if m[0] == mid:
                    return self._send_json(200, self._model_obj(m))
            return self._send_error(404, "model: %s" % mid)
        return self._send_error(404, "Not Found")

    def _overrides(self, parsed):
        """Per-request scenario: header x-fake-scenario (JSON) or body key "fake_scenario"."""
        raw = self.headers.get("x-fake-scenario")
        if raw:
            try:
                return json.loads(raw)
            except ValueError:
                return {}
        if isinstance(parsed, dict) and isinstance(parsed.get("fake_scenario"), dict):
            return parsed["fake_scenario"]
        return {}

    def _messages(self, req):
        if not isinstance(req, dict):
            return self._send_error(400, "Request body must be a JSON object")
        for field in ("model", "messages", "max_tokens"):
            if field not in req:
                return self._send_error(400, "%s: Field required" % field)
        plan = self._plan
        model = plan["model"] or req["model"]
        msg_id = _rand_id("msg_01")
        if req.get("stream") is True:
            return self._stream(msg_id, model)
        u = plan["usage"]
        return self._send_json(200, cut=self.fake._json_cut(), obj={
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": plan["text"]}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage_json(u),
        })

    def _models(self):
        q = parse_qs(urlsplit(self.path).query)
        limit = max(1, min(1000, int((q.get("limit") or ["20"])[0])))
        items = MODELS
        after = (q.get("after_id") or [None])[0]
        if after:
            ids = [m[0] for m in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        page = items[:limit]
        return self._send_json(200, {
            "data": [self._model_obj(m) for m in page],
            "has_more": len(items) > limit,
            "first_id": page[0][0] if page else None,
            "last_id": page[-1][0] if page else None,
        })

    @staticmethod
    def _model_obj(m):
        return {"type": "model", "id": m[0], "display_name": m[1], "created_at": m[2]}

    def _events(self, msg_id, model):
        p = self._plan
        u = p["usage"]
        start = p["start_usage"] or dict(u, output_tokens=1)
        yield "message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage_json(start)}}
        yield "content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}}
        yield "ping", {"type": "ping"}
        for piece in split_text(p["text"], p["deltas"]):
            yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": piece}}
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        # message_delta's usage is cumulative and restates the input and cache numbers.
        yield "message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {
                                    "input_tokens": u["input_tokens"],
                                    "cache_creation_input_tokens": u["cache_creation_input_tokens"],
                                    "cache_read_input_tokens": u["cache_read_input_tokens"],
                                    "output_tokens": u["output_tokens"]}}
        yield "message_stop", {"type": "message_stop"}

    def _stream(self, msg_id, model):
        p = self._plan
        cut, err = self.fake._stream_faults()
        gz = self._wants_gzip()
        headers = [("content-type", "text/event-stream; charset=utf-8"),
                   ("cache-control", "no-cache"), ("transfer-encoding", "chunked")]
        if gz:
            headers.append(("content-encoding", "gzip"))
        self._start(200, headers)
        z = zlib.compressobj(6, zlib.DEFLATED, 31) if gz else None
        sent = 0
        for name, data in self._events(msg_id, model):
            if cut is not None and sent >= cut:
                return self._cut()
            if err is not None and sent >= err["k"]:
                self._sleep_ms(p["per_event_ms"])
                self._chunk(self._sse("error", {"type": "error", "error": {
                    "type": err["type"], "message": err["message"]}}), z)
                self._info["events_sent"] = sent + 1
                break
            self._sleep_ms(p["per_event_ms"])
            self._chunk(self._sse(name, data), z)
            sent += 1
            self._info["events_sent"] = sent
        if cut is not None and sent >= cut:
            return self._cut()
        if z:
            self._raw_chunk(z.flush(zlib.Z_FINISH))
        self._write(b"0\r\n\r\n")
        self._info["completed"] = True

    @staticmethod
    def _sse(name, data):
        return ("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode()

    def _chunk(self, data, z):
        if z:
            data = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
        self._raw_chunk(data)

    def _raw_chunk(self, data):
        if data:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def _cut(self):
        """Close without the terminating chunk: the client sees an incomplete chunked body."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- response plumbing -------------------------------------------------------------------
    def _wants_gzip(self):
        return self._plan["gzip"] and "gzip" in self.headers.get("accept-encoding", "").lower()

    def _start(self, status, headers):
        self.send_response(status)
        self.send_header("request-id", self._req_id)
        for k, v in self.fake._ratelimit_headers():
            self.send_header(k, v)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self._info["status"] = status
        self.wfile.flush()

    def _write(self, data):
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as e:
            raise _ClientGone() from e

    def _send_json(self, status, obj, extra=(), cut=None):
        data = json.dumps(obj).encode()
        headers = [("content-type", "application/json")] + list(extra)
        if self._plan and self._wants_gzip():
            data = gzip.compress(data)
            headers.append(("content-encoding", "gzip"))
        headers.append(("content-length", str(len(data))))
        self._start(status, headers)
        if cut is not None:
            self._write(data[:cut])
            return self._cut()
        if self.command != "HEAD":
            self._write(data)
        self._info["completed"] = True

    def _send_error(self, status, message=None, error_type=None, retry_after=None):
        extra = []
        if retry_after is not None and retry_after is not False:
            extra.append(("retry-after", str(retry_after)))
        if status == 429:
            extra.append(("x-should-retry", "true"))
        body = error_body(status, message, error_type, self._req_id)
        self._send_json(status, body, extra)

    def _sleep_ms(self, ms):
        if ms and self.fake._stopping.wait(ms / 1000.0):
            raise _ClientGone()

    # ---- /_control/ --------------------------------------------------------------------------
    def _control(self, what, body):
        f = self.fake
        try:
            args = json.loads(body) if body else {}
            if not isinstance(args, dict):
                raise ValueError("body must be a JSON object")
            out = {"ok": True}
            if what == "reset":
                f.reset()
            elif what == "fail_next":
                f.fail_next(args.get("n", 1), args["status"], args.get("retry_after"),
                            args.get("message"), args.get("error_type"))
            elif what == "api_key":
                f.set_api_key(args["api_key"])
            elif what == "cut_after":
                f.cut_after(args.get("events"), args.get("count"))
            elif what == "error_after":
                f.set_error_after_events(args.get("events"), args.get("error_type",
                                         "overloaded_error"), args.get("message"),
                                         args.get("count"))
            elif what == "delay":
                f.set_delay(args.get("first_byte_ms", 0), args.get("per_event_ms", 0))
            elif what == "usage":
                f.set_usage(**args)
            elif what == "scenario":
                f.set_scenario(args.get("text"), args.get("deltas"), args.get("model"),
                               args.get("count_tokens"))
            elif what == "gzip":
                f.set_gzip(args.get("enabled", True))
            elif what == "hold":
                f.hold(args.get("enabled", True))
            elif what == "release":
                f.release()
            elif what == "state":
                out = f.state()
            elif what == "requests":
                out = {"requests": [_jsonable(r) for r in f.requests()]}
            elif what == "wait_requests":
                recs = f.wait_for_requests(int(args.get("n", 1)),
                                           min(float(args.get("timeout", 10)), 120))
                out = {"requests": [_jsonable(r) for r in recs]}
            elif what == "wait_finished":
                recs = f.wait_for_finished(int(args.get("n", 1)),
                                           min(float(args.get("timeout", 10)), 120))
                out = {"requests": [_jsonable(r) for r in recs]}
            else:
                return self._send_json(404, error_body(404, "no control endpoint " + what))
            return self._send_json(200, out)
        except TimeoutError as e:
            return self._send_json(408, error_body(408, str(e), "timeout_error"))
        except (KeyError, ValueError, TypeError) as e:
            return self._send_json(400, error_body(400, "bad control request: %s" % e))


def _jsonable(rec):
    """A request record as JSON: body as UTF-8 text (replacement chars) plus base64."""
    r = dict(rec)
    r["body_base64"] = base64.b64encode(rec["body"]).decode()
    r["body"] = rec["body"].decode("utf-8", "replace")
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Anthropic upstream for the relay's tests.")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = pick a free one)")
    ap.add_argument("--api-key", default=os.environ.get("FAKE_UPSTREAM_API_KEY",
                                                        "sk-ant-fake-upstream-key"),
                    help="the x-api-key requests must carry")
    args = ap.parse_args(argv)
    fake = FakeUpstream(api_key=args.api_key, port=args.port).start()
    print("PORT=%d" % fake.port, flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(3600):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
