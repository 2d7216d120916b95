"""Installs the built tree into a temporary prefix and uses it the way an embedder would.

Proves, from outside the source tree: `cmake --install` gives headers, librelay.so/.a, librelay.pc
and the CMake package; a consumer builds with find_package(relay) (relay::relay and
relay::relay_static) and with pkg-config (shared and --static); the examples run with real
results (embed_gateway against the fake upstream, standalone); the Python binding's tests pass
against the installed librelay.so. The build directory comes from RELAY_BUILD_DIR (set by ctest),
else from RELAY_SERVER_BIN's location; without either the test is skipped.
"""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import relaytest

SRC = os.environ.get("RELAY_SOURCE_DIR") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = ("embed_gateway", "count_tokens", "keys_admin")
UPSTREAM_KEY = "sk-ant-install-test-upstream-key"
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello there, how are you today?"}]}

CONSUMER_CMAKE = """\
cmake_minimum_required(VERSION 3.18)
project(relay_consumer C)
find_package(relay 0.1 REQUIRED)
message(STATUS "relay_DIR=${relay_DIR}")
foreach(n embed_gateway count_tokens keys_admin)
  add_executable(${n} ${n}.c)
  target_compile_options(${n} PRIVATE -Wall -Wextra -Werror)
  target_link_libraries(${n} PRIVATE relay::relay)
endforeach()
add_executable(count_tokens_static count_tokens.c)
target_compile_options(count_tokens_static PRIVATE -Wall -Wextra -Werror)
target_link_libraries(count_tokens_static PRIVATE relay::relay_static)
"""


def build_dir():
    d = os.environ.get("RELAY_BUILD_DIR")
    if not d and os.environ.get("RELAY_SERVER_BIN"):
        d = os.path.dirname(os.path.dirname(os.path.abspath(os.environ["RELAY_SERVER_BIN"])))
    return d if d and os.path.isfile(os.path.join(d, "CMakeCache.txt")) else None


def cache_value(bdir, name):
    with open(os.path.join(bdir, "CMakeCache.txt")) as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split("=", 1)[1].strip()
    return ""


def run(cmd, ok=True, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    p = subprocess.run(cmd, **kw)
    if ok and p.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


class Install(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.bdir = build_dir()
        if not cls.bdir:
            raise unittest.SkipTest("no build directory (RELAY_BUILD_DIR / RELAY_SERVER_BIN)")
        if not shutil.which("cc") or not shutil.which("pkg-config"):
            raise unittest.SkipTest("cc or pkg-config missing")
        cls.tmp = tempfile.mkdtemp(prefix="relay-install-")
        cls.prefix = os.path.join(cls.tmp, "prefix")
        cls.sanitize = cache_value(cls.bdir, "RELAY_SANITIZE")
        cls.san_flags = [f"-fsanitize={cls.sanitize}", "-fno-omit-frame-pointer"] \
            if cls.sanitize else []
        t0 = time.monotonic()
        run(["cmake", "--install", cls.bdir, "--prefix", cls.prefix])
        libs = glob.glob(os.path.join(cls.prefix, "lib*", "**", "librelay.so"), recursive=True)
        assert len(libs) == 1, libs
        cls.lib = libs[0]
        cls.libdir = os.path.dirname(cls.lib)
        cls.env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(cls.libdir, "pkgconfig"))
        cls.env.pop("UPSTREAM_API_KEY", None)
        cls._build_cmake_consumer()
        cls._build_pkgconfig_consumers()
        print(f"install + consumer builds: {time.monotonic() - t0:.1f}s", file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "tmp", None):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    # ---- builds ----
    @classmethod
    def _build_cmake_consumer(cls):
        src = os.path.join(cls.tmp, "consumer")
        os.makedirs(src)
        for n in EXAMPLES:
            shutil.copy(os.path.join(SRC, "examples", n + ".c"), src)
        with open(os.path.join(src, "CMakeLists.txt"), "w") as f:
            f.write(CONSUMER_CMAKE)
        cls.cm_bin = os.path.join(cls.tmp, "consumer-build")
        cfg = run(["cmake", "-S", src, "-B", cls.cm_bin, "-DCMAKE_BUILD_TYPE=Debug",
                   f"-DCMAKE_PREFIX_PATH={cls.prefix}",
                   "-DCMAKE_C_FLAGS=" + " ".join(cls.san_flags)], env=cls.env)
        cls.cmake_configure_out = cfg.stdout
        run(["cmake", "--build", cls.cm_bin, "-j2"], env=cls.env)

    @classmethod
    def _pkg(cls, *args):
        return run(["pkg-config", *args, "librelay"], env=cls.env).stdout.split()

    @classmethod
    def _build_pkgconfig_consumers(cls):
        cls.pc_bin = os.path.join(cls.tmp, "pc")
        os.makedirs(cls.pc_bin)
        cflags, libs = cls._pkg("--cflags"), cls._pkg("--libs")
        libdir = cls._pkg("--variable=libdir")[0]
        cc = ["cc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *cls.san_flags]
        for n in ("keys_admin", "count_tokens"):
            run([*cc, os.path.join(SRC, "examples", n + ".c"), "-o",
                 os.path.join(cls.pc_bin, n), *cflags, *libs, f"-Wl,-rpath,{libdir}"])
        # --static: the archive itself instead of -lrelay (which would pick librelay.so), plus
        # everything Requires.private / Libs.private name, down to the dependencies' own
        # Libs.private. Debian ships no .a/.so link names for several of those (libcurl's
        # nghttp2, rtmp, ssh2, ...; libpq's pgcommon/pgport), so that may fail for reasons outside
        # librelay. The recipe docs/embedding.md gives then, librelay.a with its dependencies
        # linked as shared libraries, must always work.
        src = os.path.join(SRC, "examples", "count_tokens.c")
        out = os.path.join(cls.pc_bin, "count_tokens_static")
        archive = os.path.join(libdir, "librelay.a")
        full = [archive if a == "-lrelay" else a for a in cls._pkg("--static", "--libs")]
        cls.full_static = run([*cc, src, "-o", out, *cflags, *full], ok=False)
        if cls.full_static.returncode != 0:
            deps = cls._pkg("--print-requires-private")
            dep_libs = run(["pkg-config", "--libs", *deps], env=cls.env).stdout.split()
            cls.static_link = run([*cc, src, "-o", out, *cflags, archive, *dep_libs, "-lpthread",
                                   "-lm"], ok=False)
            cls.static_recipe = "librelay.a + shared dependencies"
        else:
            cls.static_link = cls.full_static
            cls.static_recipe = "pkg-config --static"
        print(f"static link via: {cls.static_recipe}", file=sys.stderr)

    # ---- helpers ----
    def cm(self, name):
        return os.path.join(self.cm_bin, name)

    def pc(self, name):
        return os.path.join(self.pc_bin, name)

    def body_file(self, body):
        fd, path = tempfile.mkstemp(suffix=".json", dir=self.tmp)
        with os.fdopen(fd, "w") as f:
            f.write(body if isinstance(body, str) else json.dumps(body))
        return path

    def linked_relay(self, exe):
        """The librelay.so the dynamic loader resolves for exe, or None when linked statically."""
        out = run(["ldd", exe]).stdout
        m = re.search(r"librelay\.so\S*\s+=>\s+(\S+)", out)
        return os.path.realpath(m.group(1)) if m else None

    # ---- what was installed ----
    def test_installed_files(self):
        inc = os.path.join(self.prefix, "include", "relay")
        for h in ("relay.h", "version.h", "keys.h", "limits.h", "tokens.h", "forward.h",
                  "proxy.h", "store.h", "usage.h", "sse.h", "http.h"):
            self.assertTrue(os.path.isfile(os.path.join(inc, h)), h)
        for f in ("librelay.a", "pkgconfig/librelay.pc", "cmake/relay/relay-config.cmake",
                  "cmake/relay/relay-config-version.cmake", "cmake/relay/relayTargets.cmake"):
            self.assertTrue(os.path.isfile(os.path.join(self.libdir, f)), f)
        self.assertTrue(os.path.islink(self.lib))
        self.assertRegex(os.path.realpath(self.lib), r"librelay\.so\.\d+\.\d+\.\d+$")

    def test_shared_library_exports_only_the_public_api(self):
        syms = run(["nm", "-D", "--defined-only", self.lib]).stdout.split("\n")
        names = {ln.split()[-1] for ln in syms if ln.strip()}
        self.assertIn("relay_new", names)
        self.assertIn("relay_keys_verify", names)
        self.assertIn("relay_tokens_count_request", names)
        private = sorted(n for n in names if n.startswith(("relay_buf_", "relay_strlcpy",
                                                           "relay_sha256", "limits_redis_")))
        self.assertEqual(private, [], "private helpers leak out of librelay.so")

    def test_pkgconfig_metadata_points_into_the_prefix(self):
        version = run(["pkg-config", "--modversion", "librelay"], env=self.env).stdout.strip()
        self.assertEqual(version, cache_value(self.bdir, "CMAKE_PROJECT_VERSION"))
        inc = self._pkg("--variable=includedir")[0]
        libdir = self._pkg("--variable=libdir")[0]
        self.assertEqual(os.path.realpath(inc), os.path.realpath(os.path.join(self.prefix,
                                                                              "include")))
        self.assertEqual(os.path.realpath(libdir), os.path.realpath(self.libdir))
        self.assertIn("-I" + inc, self._pkg("--cflags"))
        self.assertEqual(self._pkg("--libs"), ["-L" + libdir, "-lrelay"])

    # ---- consumers ----
    def test_cmake_consumer_uses_the_installed_package(self):
        m = re.search(r"relay_DIR=(\S+)", self.cmake_configure_out)
        self.assertTrue(m, self.cmake_configure_out)
        self.assertTrue(os.path.realpath(m.group(1)).startswith(os.path.realpath(self.prefix)))
        for n in EXAMPLES:
            self.assertEqual(self.linked_relay(self.cm(n)), os.path.realpath(self.lib), n)
        self.assertIsNone(self.linked_relay(self.cm("count_tokens_static")))

    def test_pkgconfig_consumers(self):
        self.assertEqual(self.linked_relay(self.pc("keys_admin")), os.path.realpath(self.lib))
        self.assertEqual(self.static_link.returncode, 0,
                         f"static link ({self.static_recipe}) failed:\n{self.static_link.stderr}")
        self.assertIsNone(self.linked_relay(self.pc("count_tokens_static")))

    # ---- the examples, run ----
    def test_count_tokens_same_answer_from_every_build(self):
        path = self.body_file(BODY)
        outs = set()
        for exe in (self.cm("count_tokens"), self.cm("count_tokens_static"),
                    self.pc("count_tokens"), self.pc("count_tokens_static")):
            p = run([exe, path])
            outs.add(p.stdout)
        self.assertEqual(len(outs), 1, outs)
        line = outs.pop()
        m = re.fullmatch(r"input_tokens=(\d+) max_tokens=1024 model=claude-sonnet-4-5 stream=0 "
                         r"method=heuristic\n", line)
        self.assertTrue(m, line)
        self.assertTrue(5 <= int(m.group(1)) <= 40, line)
        long = dict(BODY, stream=True,
                    messages=[{"role": "user", "content": "lorem ipsum dolor " * 300}])
        m2 = re.match(r"input_tokens=(\d+) .* stream=1 ", run([self.cm("count_tokens"),
                                                                self.body_file(long)]).stdout)
        self.assertGreater(int(m2.group(1)), int(m.group(1)) + 500)
        bad = run([self.cm("count_tokens"), self.body_file("not json")], ok=False)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("not a JSON object", bad.stderr)

    def test_keys_admin_lifecycle_across_processes_and_builds(self):
        data = os.path.join(self.tmp, "keys-data")
        out = run([self.cm("keys_admin"), data, "create", "alice", "5000"]).stdout
        key = re.search(r"^key=(sk-proxy-\S+)$", out, re.M).group(1)
        kid = re.search(r"^id=(\S+)$", out, re.M).group(1)
        self.assertIn("limit=5000 tier=basic", out)
        run([self.cm("keys_admin"), data, "create", "bob"])
        # The pkg-config build reads the same store.
        listing = run([self.pc("keys_admin"), data, "list"]).stdout
        self.assertIn("total=2\n", listing)
        self.assertRegex(listing, rf"{kid} alice active=1 used=0/5000 prefix=sk-proxy-")
        self.assertNotIn(key, listing)
        ok = run([self.cm("keys_admin"), data, "verify"], input=key + "\n")
        self.assertEqual(ok.stdout.strip(), f"valid id={kid} name=alice tier=basic")
        wrong = run([self.cm("keys_admin"), data, "verify"], ok=False, input=key[:-2] + "xx\n")
        self.assertEqual(wrong.returncode, 3)
        self.assertIn("refused code=-4 status=401 type=authentication_error", wrong.stdout)
        self.assertEqual(run([self.pc("keys_admin"), data, "disable", kid]).stdout,
                         f"disabled={kid}\n")
        off = run([self.cm("keys_admin"), data, "verify"], ok=False, input=key + "\n")
        self.assertEqual(off.returncode, 3)
        self.assertEqual(off.stdout.strip(), "refused code=-5 status=401 "
                         "type=authentication_error message=API key is disabled")
        self.assertIn(f"{kid} alice active=0",
                      run([self.cm("keys_admin"), data, "list"]).stdout)

    def _start_fake(self):
        log = open(os.path.join(self.tmp, "fake.out"), "w+")
        proc = subprocess.Popen([sys.executable, os.path.join(SRC, "tests", "fake_upstream.py"),
                                 "--port", "0", "--api-key", UPSTREAM_KEY], stdout=log,
                                stderr=subprocess.STDOUT)
        self.addCleanup(log.close)
        self.addCleanup(lambda: (proc.terminate(), proc.wait(10)))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            log.seek(0)
            m = re.search(r"^PORT=(\d+)$", log.read(), re.M)
            if m:
                return f"http://127.0.0.1:{m.group(1)}"
            self.assertIsNone(proc.poll(), "fake upstream exited")
            time.sleep(0.05)
        self.fail("fake upstream did not print PORT=")

    def _control(self, base, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + "/_control/" + path, data=data,
                                     method="GET" if body is None else "POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def _gateway(self, base, body, data_name):
        env = dict(self.env, UPSTREAM_API_KEY=UPSTREAM_KEY)
        p = run([self.cm("embed_gateway"), os.path.join(self.tmp, data_name), base, "-"],
                input=json.dumps(body), env=env)
        self.assertNotIn(UPSTREAM_KEY, p.stdout + p.stderr)
        self.assertIsNone(re.search(r"sk-proxy-[A-Za-z0-9]{12}_", p.stdout + p.stderr),
                          "a full proxy key was printed")
        return p.stdout

    def test_embed_gateway_through_the_fake_upstream(self):
        base = self._start_fake()
        self._control(base, "usage", {"input_tokens": 31, "output_tokens": 17,
                                      "cache_read_input_tokens": 5})
        out = self._gateway(base, BODY, "gw-json")
        self.assertTrue(out.startswith("relay: created key id="), out)
        self.assertIn("HTTP 200\n", out)
        self.assertIn("content-type: application/json\n", out)
        self.assertIn("This is the fake upstream speaking", out)
        # billed = 31 input + 17 output + 5 cache read, all weights 1
        self.assertIn("relay: status=200 stream=0 input=31 output=17 billed=53 estimated=0\n", out)
        self.assertTrue(out.endswith("relay: key token_used=53 request_count=1\n"), out)

        out = self._gateway(base, dict(BODY, stream=True), "gw-sse")
        self.assertIn("content-type: text/event-stream", out)
        events = re.findall(r"^event: (\S+)$", out, re.M)
        self.assertEqual(events[0], "message_start")
        self.assertEqual(events[-1], "message_stop")
        self.assertIn("content_block_delta", events)
        self.assertIn("relay: status=200 stream=1 input=31 output=17 billed=53 estimated=0\n", out)
        self.assertTrue(out.endswith("relay: key token_used=53 request_count=1\n"), out)

        seen = self._control(base, "requests")["requests"]
        self.assertEqual(len(seen), 2)
        for rec in seen:
            self.assertEqual(rec["path"], "/v1/messages")
            headers = {k.lower(): v for k, v in rec["headers"].items()}
            self.assertEqual(headers.get("x-api-key"), UPSTREAM_KEY)  # the proxy key was swapped

    # ---- the Python binding against the installed library ----
    def test_python_binding(self):
        env = dict(self.env, LIBRELAY_PATH=self.lib,
                   LIBRELAY_INCLUDE=os.path.join(self.prefix, "include"),
                   LIBRELAY_REQUIRE_LAYOUT="1", PYTHONDONTWRITEBYTECODE="1")
        if "address" in self.sanitize:
            # python is not instrumented: the ASan runtime must be loaded first, and Python's
            # own allocations at exit are not ours to report.
            asan = run(["cc", "-print-file-name=libasan.so"]).stdout.strip()
            env["LD_PRELOAD"] = asan
            env["ASAN_OPTIONS"] = "detect_leaks=0"
        p = run([sys.executable, "-m", "unittest", "-v", "test_librelay"], ok=False, env=env,
                cwd=os.path.join(SRC, "bindings", "python"))
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, out)
        self.assertRegex(out, r"Ran \d+ tests")
        self.assertNotIn("skipped", out)
        self.assertIn("test_offsets", out)


if __name__ == "__main__":
    relaytest.main()
