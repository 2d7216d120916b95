"""librelay for Python: a ctypes binding of the library's stable parts.

Covers the context (relay_new/relay_free with the common options), proxy keys (create, verify,
list, get, disable, enable), token counting, admission and settlement (relay_limits_admit/settle),
relay_version and relay_strerror. Nothing is compiled: the C structs are mirrored below field by
field, and test_librelay.py checks every offset and size against the installed headers.

The library is found through the environment variable LIBRELAY_PATH (a path to librelay.so), else
ctypes.util.find_library("relay"). Errors raise RelayError carrying the relay_err code and the
library's message (which never contains a key).

Thread safety follows the C library: one Relay may be used from any number of threads; close()
must run alone, after every other call returned.

    with librelay.Relay(data_dir="/tmp/relay-data") as relay:
        key, rec = relay.create_key("alice", token_limit=100000)
        assert relay.verify_key(key).id == rec.id
"""

import ctypes
import ctypes.util
import json
import os
import weakref

__all__ = ["RelayError", "Relay", "KeyRecord", "RequestInfo", "Admission", "version", "strerror",
           "count_text", "count_request", "load"]

# ---- relay_err codes (relay/relay.h) ----------------------------------------------------------
OK = 0
ERR_NOMEM = -1
ERR_INVALID = -2
ERR_NOT_FOUND = -3
ERR_AUTH = -4
ERR_KEY_DISABLED = -5
ERR_KEY_EXPIRED = -6
ERR_PERMISSION = -7
ERR_RATE_LIMITED = -8
ERR_QUOTA = -9
ERR_TOO_LARGE = -10
ERR_STORE = -13
ERR_CONFIG = -14
ERR_CONFLICT = -15

ERRMSG_MAX = 256
KEY_MAX = 128

# relay_key_filter
KEYS_ALL, KEYS_ACTIVE, KEYS_DISABLED, KEYS_EXPIRED = 0, 1, 2, 3
_FILTERS = {"all": KEYS_ALL, "active": KEYS_ACTIVE, "disabled": KEYS_DISABLED,
            "expired": KEYS_EXPIRED}

_c_int64 = ctypes.c_int64
_c_str = ctypes.c_char_p


# ---- mirrored structs: keep in the C order; test_librelay.py compares offsets with the headers --
class relay_error_t(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("message", ctypes.c_char * ERRMSG_MAX)]


_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, _c_str, _c_str, _c_str)


class relay_options_t(ctypes.Structure):
    _fields_ = [
        ("upstream_url", _c_str), ("upstream_api_key", _c_str),
        ("upstream_timeout_s", ctypes.c_double), ("connect_timeout_s", ctypes.c_double),
        ("first_byte_timeout_s", ctypes.c_double), ("idle_timeout_s", ctypes.c_double),
        ("max_retries", ctypes.c_int), ("retry_base_ms", ctypes.c_int),
        ("retry_max_ms", ctypes.c_int), ("max_body_bytes", ctypes.c_size_t),
        ("drain_timeout_ms", ctypes.c_int),
        ("upstream_name", _c_str), ("upstreams", ctypes.c_void_p),
        ("n_upstreams", ctypes.c_size_t), ("session_ttl_s", ctypes.c_int),
        ("session_max", ctypes.c_size_t),
        ("database_url", _c_str), ("data_dir", _c_str), ("db_pool_size", ctypes.c_int),
        ("auto_migrate", ctypes.c_int), ("redis_url", _c_str), ("redis_timeout_ms", ctypes.c_int),
        ("db_busy_timeout_ms", ctypes.c_int), ("db_outage_fail_closed", ctypes.c_int),
        ("key_prefix", _c_str), ("default_token_limit", _c_int64),
        ("warning_threshold", ctypes.c_double), ("bcrypt_cost", ctypes.c_int),
        ("key_cache_ttl_ms", ctypes.c_int), ("key_cache_max", ctypes.c_size_t),
        ("bcrypt_concurrency", ctypes.c_int), ("key_verify_wait_ms", ctypes.c_int),
        ("key_cache_stale_ms", ctypes.c_int), ("key_max_invalid_per_ip", ctypes.c_int),
        ("default_tier", _c_str),
        ("admin_username", _c_str), ("admin_password", _c_str), ("secret_key", _c_str),
        ("jwt_lifetime_s", ctypes.c_int), ("login_max_failures", ctypes.c_int),
        ("login_window_s", ctypes.c_int), ("login_cooldown_s", ctypes.c_int),
        ("login_max_failures_per_user", ctypes.c_int),
        ("tiers", ctypes.c_void_p), ("n_tiers", ctypes.c_size_t),
        ("reservation_ceiling", _c_int64), ("weight_input", ctypes.c_double),
        ("weight_output", ctypes.c_double), ("weight_cache_creation", ctypes.c_double),
        ("weight_cache_read", ctypes.c_double), ("prices", ctypes.c_void_p),
        ("n_prices", ctypes.c_size_t), ("price_default", _c_str),
        ("budget_timezone", _c_str), ("budget_week_start_day", ctypes.c_int),
        ("budget_week_start_minute", ctypes.c_int), ("usage_queue_max", ctypes.c_size_t),
        ("usage_batch_max", ctypes.c_int), ("usage_flush_ms", ctypes.c_int),
        ("usage_spool", ctypes.c_int), ("usage_spool_max_bytes", ctypes.c_size_t),
        ("log_retention_days", ctypes.c_int), ("tokenizer_file", _c_str),
        ("log_fn", _LOG_FN), ("log_ud", ctypes.c_void_p), ("log_level", ctypes.c_int),
    ]


class relay_key_params_t(ctypes.Structure):
    _fields_ = [
        ("name", _c_str), ("description", _c_str), ("token_limit", _c_int64), ("tier", _c_str),
        ("expires_at", _c_int64), ("allowed_ips", _c_str), ("allowed_origins", _c_str),
        ("allowed_models", _c_str), ("metadata", _c_str), ("cost_limits", _c_str),
        ("upstream_group", _c_str),
    ]


# Owned strings are c_void_p, not c_char_p: ctypes would otherwise hand back copies and lose the
# pointers that relay_key_record_clear must free.
class relay_key_record_t(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_char * 37), ("name", ctypes.c_void_p), ("description", ctypes.c_void_p),
        ("key_prefix", ctypes.c_char * 64), ("key_hash", ctypes.c_char * 128),
        ("token_limit", _c_int64), ("token_used", _c_int64), ("request_count", _c_int64),
        ("error_count", _c_int64), ("rate_limit_tier", ctypes.c_char * 64),
        ("is_active", ctypes.c_int), ("is_deleted", ctypes.c_int),
        ("allowed_ips", ctypes.c_void_p), ("allowed_origins", ctypes.c_void_p),
        ("allowed_models", ctypes.c_void_p), ("metadata", ctypes.c_void_p),
        ("expires_at", _c_int64), ("created_at", _c_int64), ("updated_at", _c_int64),
        ("last_used_at", _c_int64), ("deleted_at", _c_int64), ("cost_limits", ctypes.c_void_p),
        ("upstream_group", ctypes.c_char * 64),
    ]


class relay_request_info_t(ctypes.Structure):
    _fields_ = [("input_tokens_estimate", _c_int64), ("max_tokens", _c_int64),
                ("stream", ctypes.c_int), ("model", ctypes.c_char * 128),
                ("user_id", ctypes.c_char * 256)]


class relay_admit_request_t(ctypes.Structure):
    _fields_ = [
        ("key", ctypes.POINTER(relay_key_record_t)), ("client_ip", _c_str), ("origin", _c_str),
        ("referer", _c_str), ("model", _c_str), ("input_tokens_estimate", _c_int64),
        ("max_tokens", _c_int64), ("consumes_quota", ctypes.c_int),
    ]


class relay_admission_t(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_char * 37), ("key_id", ctypes.c_char * 37), ("tier", ctypes.c_char * 64),
        ("backend", ctypes.c_int), ("settled", ctypes.c_int), ("reserved_tokens", _c_int64),
        ("tpm_charged", _c_int64), ("tpm_second", _c_int64), ("has_slot", ctypes.c_int),
        ("model", ctypes.c_char * 128), ("cost_reserved", ctypes.c_double),
        ("budget_held", ctypes.c_int), ("budget_redis", ctypes.c_int),
        ("requests_limit", _c_int64), ("requests_remaining", _c_int64),
        ("requests_reset_ms", _c_int64), ("tokens_limit", _c_int64),
        ("tokens_remaining", _c_int64),
        ("code", ctypes.c_int), ("retry_after_s", ctypes.c_int), ("limit", _c_int64),
        ("remaining", _c_int64), ("reset_at", _c_int64), ("reason", ctypes.c_char * 32),
    ]


# C type name -> mirror, for the layout test.
STRUCTS = {
    "relay_error_t": relay_error_t,
    "relay_options_t": relay_options_t,
    "relay_key_params_t": relay_key_params_t,
    "relay_key_record_t": relay_key_record_t,
    "relay_request_info_t": relay_request_info_t,
    "relay_admit_request_t": relay_admit_request_t,
    "relay_admission_t": relay_admission_t,
}

# ---- loading ---------------------------------------------------------------------------------
_P = ctypes.POINTER
_SIGNATURES = {
    "relay_version": (_c_str, []),
    "relay_strerror": (_c_str, [ctypes.c_int]),
    "relay_err_http_status": (ctypes.c_int, [ctypes.c_int]),
    "relay_err_type": (_c_str, [ctypes.c_int]),
    "relay_options_init": (None, [_P(relay_options_t)]),
    "relay_new": (ctypes.c_int, [_P(ctypes.c_void_p), _P(relay_options_t), _P(relay_error_t)]),
    "relay_free": (None, [ctypes.c_void_p]),
    "relay_key_params_init": (None, [_P(relay_key_params_t)]),
    "relay_keys_create": (ctypes.c_int, [ctypes.c_void_p, _P(relay_key_params_t), ctypes.c_char_p,
                                         ctypes.c_size_t, _P(relay_key_record_t),
                                         _P(relay_error_t)]),
    "relay_keys_get": (ctypes.c_int, [ctypes.c_void_p, _c_str, _P(relay_key_record_t),
                                      _P(relay_error_t)]),
    "relay_keys_verify": (ctypes.c_int, [ctypes.c_void_p, _c_str, _P(relay_key_record_t),
                                         _P(relay_error_t)]),
    "relay_keys_list": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, _c_int64, _c_int64,
                                       _P(_P(relay_key_record_t)), _P(ctypes.c_size_t),
                                       _P(_c_int64), _P(relay_error_t)]),
    "relay_keys_disable": (ctypes.c_int, [ctypes.c_void_p, _c_str, _P(relay_error_t)]),
    "relay_keys_enable": (ctypes.c_int, [ctypes.c_void_p, _c_str, _P(relay_error_t)]),
    "relay_key_record_clear": (None, [_P(relay_key_record_t)]),
    "relay_key_record_copy": (ctypes.c_int, [_P(relay_key_record_t), _P(relay_key_record_t)]),
    "relay_key_records_free": (None, [_P(relay_key_record_t), ctypes.c_size_t]),
    "relay_tokens_count_text": (_c_int64, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]),
    "relay_tokens_count_request": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p,
                                                  ctypes.c_size_t, _P(relay_request_info_t)]),
    "relay_limits_admit": (ctypes.c_int, [ctypes.c_void_p, _P(relay_admit_request_t),
                                          _P(relay_admission_t), _P(relay_error_t)]),
    "relay_limits_settle": (None, [ctypes.c_void_p, _P(relay_admission_t), _c_int64]),
    "relay_limits_billed_tokens": (_c_int64, [ctypes.c_void_p, _c_int64, _c_int64, _c_int64,
                                              _c_int64]),
    "relay_usage_flush": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
}

_lib = None


def load(path=None):
    """Loads librelay (path, else $LIBRELAY_PATH, else find_library("relay")) once; returns it."""
    global _lib
    if _lib is not None and path is None:
        return _lib
    path = path or os.environ.get("LIBRELAY_PATH") or ctypes.util.find_library("relay")
    if not path:
        raise OSError("librelay not found: set LIBRELAY_PATH to the path of librelay.so")
    lib = ctypes.CDLL(path)
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _lib = lib
    return lib


def _b(s):
    return None if s is None else (s.encode() if isinstance(s, str) else bytes(s))


def _s(ptr):
    return None if not ptr else ctypes.string_at(ptr).decode("utf-8", "replace")


class RelayError(Exception):
    """A librelay call failed: code is the relay_err (negative), message the library's words."""

    def __init__(self, code, message=None):
        self.code = code
        self.message = message or strerror(code)
        super().__init__(f"{self.message} ({code})")

    @property
    def http_status(self):
        return load().relay_err_http_status(self.code)

    @property
    def error_type(self):
        return load().relay_err_type(self.code).decode()


def _check(rc, err=None):
    if rc != 0:
        msg = err.message.decode("utf-8", "replace") if err is not None and err.message else None
        raise RelayError(rc, msg)


def version():
    """The version string of the loaded librelay."""
    return load().relay_version().decode()


def strerror(code):
    return load().relay_strerror(code).decode()


def count_text(text):
    """Token estimate of a text (the heuristic counter)."""
    data = _b(text)
    return load().relay_tokens_count_text(None, data, len(data))


class RequestInfo:
    """What relay_tokens_count_request says about a Messages body."""

    def __init__(self, c):
        self.input_tokens = c.input_tokens_estimate
        self.max_tokens = c.max_tokens
        self.stream = bool(c.stream)
        self.model = c.model.decode() or None

    def __repr__(self):
        return (f"RequestInfo(input_tokens={self.input_tokens}, max_tokens={self.max_tokens}, "
                f"stream={self.stream}, model={self.model!r})")


def count_request(body):
    """Estimates a Messages request body (str, bytes or dict); RelayError for non-JSON."""
    if isinstance(body, dict):
        body = json.dumps(body)
    data = _b(body)
    info = relay_request_info_t()
    _check(load().relay_tokens_count_request(None, data, len(data), ctypes.byref(info)))
    return RequestInfo(info)


class KeyRecord:
    """A key's stored record. Holds its own C copy (freed with the object) so admit() can use it."""

    _INTS = ("token_limit", "token_used", "request_count", "error_count", "expires_at",
             "created_at", "updated_at", "last_used_at")

    def __init__(self, src):
        lib = load()
        self._c = relay_key_record_t()
        _check(lib.relay_key_record_copy(ctypes.byref(self._c), ctypes.byref(src)))
        weakref.finalize(self, lib.relay_key_record_clear, ctypes.byref(self._c))
        c = self._c
        self.id = c.id.decode()
        self.name = _s(c.name)
        self.description = _s(c.description)
        self.key_prefix = c.key_prefix.decode()
        self.rate_limit_tier = c.rate_limit_tier.decode()
        self.is_active = bool(c.is_active)
        self.allowed_ips = _s(c.allowed_ips)
        self.allowed_origins = _s(c.allowed_origins)
        self.allowed_models = _s(c.allowed_models)
        self.metadata = _s(c.metadata)
        for f in self._INTS:
            setattr(self, f, getattr(c, f))

    def __repr__(self):
        return (f"KeyRecord(id={self.id!r}, name={self.name!r}, key_prefix={self.key_prefix!r}, "
                f"is_active={self.is_active}, token_used={self.token_used}/{self.token_limit})")


class Admission:
    """An admitted request's reservation; hand it to Relay.settle exactly once (more is a no-op)."""

    def __init__(self, c):
        self._c = c

    def __getattr__(self, name):
        v = getattr(self._c, name)
        return v.decode() if isinstance(v, bytes) else v


class Relay:
    """A relay_t: store, key cache, limits and background threads. Close it (or use `with`)."""

    def __init__(self, data_dir=None, upstream_url=None, upstream_api_key=None, database_url=None,
                 bcrypt_cost=None, default_token_limit=None, key_prefix=None):
        lib = load()
        opts = relay_options_t()
        lib.relay_options_init(ctypes.byref(opts))
        # The byte strings must outlive relay_new only (it copies what it keeps).
        keep = [_b(data_dir), _b(upstream_url), _b(upstream_api_key), _b(database_url),
                _b(key_prefix)]
        if data_dir is not None:
            opts.data_dir = keep[0]
        if upstream_url is not None:
            opts.upstream_url = keep[1]
        if upstream_api_key is not None:
            opts.upstream_api_key = keep[2]
        if database_url is not None:
            opts.database_url = keep[3]
        if key_prefix is not None:
            opts.key_prefix = keep[4]
        if bcrypt_cost is not None:
            opts.bcrypt_cost = bcrypt_cost
        if default_token_limit is not None:
            opts.default_token_limit = default_token_limit
        handle = ctypes.c_void_p()
        err = relay_error_t()
        _check(lib.relay_new(ctypes.byref(handle), ctypes.byref(opts), ctypes.byref(err)), err)
        self._lib = lib
        self._h = handle
        # A forgotten Relay still stops its threads and flushes when collected.
        self._free = weakref.finalize(self, lib.relay_free, handle)

    def close(self):
        """Flushes pending usage rows and frees the relay. Idempotent."""
        self._h = None
        self._free()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _handle(self):
        if not self._h:
            raise RelayError(ERR_INVALID, "relay is closed")
        return self._h

    # ---- keys ----
    def create_key(self, name, token_limit=-1, tier=None, description=None, expires_at=0,
                   allowed_models=None):
        """Creates a key. Returns (full key, KeyRecord); the full key is never shown again."""
        p = relay_key_params_t()
        self._lib.relay_key_params_init(ctypes.byref(p))
        keep = [_b(name), _b(tier), _b(description), _b(allowed_models)]
        p.name, p.tier, p.description, p.allowed_models = keep
        p.token_limit = token_limit
        p.expires_at = expires_at
        buf = ctypes.create_string_buffer(KEY_MAX)
        rec = relay_key_record_t()
        err = relay_error_t()
        _check(self._lib.relay_keys_create(self._handle(), ctypes.byref(p), buf, KEY_MAX,
                                           ctypes.byref(rec), ctypes.byref(err)), err)
        try:
            return buf.value.decode(), KeyRecord(rec)
        finally:
            self._lib.relay_key_record_clear(ctypes.byref(rec))
            ctypes.memset(buf, 0, KEY_MAX)

    def _one(self, fn, arg):
        rec = relay_key_record_t()
        err = relay_error_t()
        _check(fn(self._handle(), _b(arg), ctypes.byref(rec), ctypes.byref(err)), err)
        try:
            return KeyRecord(rec)
        finally:
            self._lib.relay_key_record_clear(ctypes.byref(rec))

    def verify_key(self, key):
        """The record of a valid key; RelayError (ERR_AUTH, ERR_KEY_DISABLED, ...) otherwise."""
        return self._one(self._lib.relay_keys_verify, key)

    def get_key(self, key_id):
        return self._one(self._lib.relay_keys_get, key_id)

    def list_keys(self, filter="all", skip=0, limit=100):
        """Returns (records, total) for one page, newest first."""
        out = ctypes.POINTER(relay_key_record_t)()
        n = ctypes.c_size_t()
        total = ctypes.c_int64()
        err = relay_error_t()
        _check(self._lib.relay_keys_list(self._handle(), _FILTERS[filter], skip, limit,
                                         ctypes.byref(out), ctypes.byref(n), ctypes.byref(total),
                                         ctypes.byref(err)), err)
        try:
            return [KeyRecord(out[i]) for i in range(n.value)], total.value
        finally:
            self._lib.relay_key_records_free(out, n.value)

    def disable_key(self, key_id):
        err = relay_error_t()
        _check(self._lib.relay_keys_disable(self._handle(), _b(key_id), ctypes.byref(err)), err)

    def enable_key(self, key_id):
        err = relay_error_t()
        _check(self._lib.relay_keys_enable(self._handle(), _b(key_id), ctypes.byref(err)), err)

    # ---- limits ----
    def admit(self, key, input_tokens=0, max_tokens=0, model=None, client_ip="127.0.0.1",
              origin=None, consumes_quota=True):
        """Admits one request of key (a KeyRecord); RelayError with .admission on refusal."""
        keep = [_b(client_ip), _b(origin), _b(model)]
        req = relay_admit_request_t(ctypes.pointer(key._c), keep[0], keep[1], None, keep[2],
                                    input_tokens, max_tokens, 1 if consumes_quota else 0)
        adm = relay_admission_t()
        err = relay_error_t()
        rc = self._lib.relay_limits_admit(self._handle(), ctypes.byref(req), ctypes.byref(adm),
                                          ctypes.byref(err))
        if rc:
            e = RelayError(rc, err.message.decode("utf-8", "replace") or None)
            e.admission = Admission(adm)
            raise e
        return Admission(adm)

    def settle(self, admission, billed_tokens):
        self._lib.relay_limits_settle(self._handle(), ctypes.byref(admission._c), billed_tokens)

    def flush_usage(self, timeout_ms=10000):
        """Waits until queued usage rows are in the store."""
        _check(self._lib.relay_usage_flush(self._handle(), timeout_ms))

    def billed_tokens(self, input_tokens=0, output_tokens=0, cache_creation=0, cache_read=0):
        return self._lib.relay_limits_billed_tokens(self._handle(), input_tokens, output_tokens,
                                                    cache_creation, cache_read)
