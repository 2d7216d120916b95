"""The deployment files, checked without a Docker engine, and deploy.sh --native run for real.

Static: the Dockerfile (a small instruction parser) and docker-compose.yml (YAML) parse; every
path they copy or name exists in the repository, every variable they use is in .env.example, the
ports agree (8000 inside, 15432 / 16379 for PostgreSQL / Redis on the host), health checks and
depends_on conditions are there; `bash -n deploy.sh`; the systemd unit is hardened and passes
`systemd-analyze verify`; the nginx file turns buffering off and has long read timeouts (and
passes `nginx -t` where nginx is installed). Live: `deploy.sh --native` against a throwaway
prefix and unit directory with the built binary: it writes .env with generated secrets (the
password printed once), migrates, starts the relay, waits for /health; the printed password logs
in and the printed key command works; a second run keeps the secrets and restarts the relay.
Docker mode runs too, in a copy of the project files, with a stand-in `docker` on PATH that
records the compose calls and starts the real relay for `compose up -d`; without docker on PATH
it stops at once, naming the missing tool.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import unittest

import relaytest

SRC = os.environ.get("RELAY_SOURCE_DIR") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))


def src(*parts):
    return os.path.join(SRC, *parts)


def read(*parts):
    with open(src(*parts)) as f:
        return f.read()


def env_example_names():
    names = set()
    for line in read(".env.example").splitlines():
        m = re.match(r"\s*#?\s*([A-Z][A-Z0-9_]*)=", line)
        if m:
            names.add(m.group(1))
    return names


def parse_env_file(path):
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"([A-Z][A-Z0-9_]*)=(.*)$", line.rstrip("\n"))
            if m:
                out[m.group(1)] = m.group(2)
    return out


DOCKERFILE_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY",
                           "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD",
                           "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def parse_dockerfile(text):
    """[(instruction, arguments)] with continuation lines joined and comments dropped; raises
    ValueError on an unknown instruction or a dangling continuation."""
    out, cur = [], ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if cur and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        word, _, args = cur.strip().partition(" ")
        if word.upper() not in DOCKERFILE_INSTRUCTIONS:
            raise ValueError("Dockerfile:%d: unknown instruction %r" % (n, word))
        out.append((word.upper(), args.strip()))
        cur = ""
    if cur:
        raise ValueError("Dockerfile: the last instruction ends with a continuation")
    return out


def stages(instructions):
    """[(base image, alias, [instructions])] per FROM."""
    out = []
    for ins, args in instructions:
        if ins == "FROM":
            words = args.split()
            out.append((words[0], words[2] if len(words) > 2 else None, []))
        elif out:
            out[-1][2].append((ins, args))
    return out


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_pidfile(path):
    """SIGTERM to the relay whose PID deploy.sh (or the stand-in docker) wrote, and wait."""
    try:
        with open(path) as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGTERM)
        relaytest.wait_until(lambda: not alive(pid), 20, "relay-server to stop")
    except (OSError, ValueError):
        pass


def compose_vars(text):
    """Names used as ${NAME}, ${NAME:-x} or ${NAME:?x} ($$ escapes excluded)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


class Dockerfile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ins = parse_dockerfile(read("Dockerfile"))
        cls.stages = stages(cls.ins)

    def final(self, name):
        return [a for i, a in self.stages[-1][2] if i == name]

    def test_parser_rejects_garbage(self):
        with self.assertRaises(ValueError):
            parse_dockerfile("FROM debian:12\nRUNN true\n")
        with self.assertRaises(ValueError):
            parse_dockerfile("FROM debian:12\nRUN true \\\n")

    def test_multi_stage_debian_12(self):
        self.assertGreaterEqual(len(self.stages), 2)
        for image, _, _ in self.stages:
            self.assertRegex(image, r"^debian:12(-slim)?$")

    def test_builds_like_the_quick_start(self):
        build_runs = " ".join(a for i, a in self.stages[0][2] if i == "RUN")
        self.assertIn("scripts/deps.sh", build_runs)
        self.assertIn("scripts/build.sh", build_runs)
        # the quick start builds through the same script, so the CMake flags are the same
        self.assertIn("scripts/build.sh", read("scripts", "quickstart.sh"))
        self.assertIn("-DCMAKE_BUILD_TYPE=Release -DRELAY_BUILD_TESTS=OFF",
                      read("scripts", "build.sh"))

    def test_copied_paths_exist_and_are_not_ignored(self):
        ignored = [l.strip() for l in read(".dockerignore").splitlines()
                   if l.strip() and not l.startswith("#")]
        for ins, args in self.ins:
            if ins not in ("COPY", "ADD") or "--from=" in args:
                continue
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            for path in words[:-1]:
                self.assertTrue(os.path.exists(src(path)), "COPY %s: not in the repo" % path)
                self.assertNotIn(path.rstrip("/") + "/", ignored)
        # what the build needs must not be ignored
        for needed in ("CMakeLists.txt", "cmake", "librelay", "relay-server", "migrations",
                       "scripts"):
            self.assertFalse(any(i.rstrip("/").strip("*/") == needed for i in ignored), needed)
        # the scripts the RUN lines call exist
        for ins, args in self.ins:
            for script in re.findall(r"scripts/[\w.-]+\.sh", args) if ins == "RUN" else ():
                self.assertTrue(os.path.isfile(src(script)), script)

    @unittest.skipUnless(relaytest.server_bin() and shutil.which("dpkg"), "no binary or dpkg")
    def test_runtime_packages_of_the_binary(self):
        """The runtime stage installs what owns the binary's libraries: run the same script."""
        self.assertIn("scripts/runtime-packages.sh", " ".join(a for i, a in self.stages[0][2]
                                                              if i == "RUN"))
        self.assertIn("$(cat /tmp/runtime-packages.txt)", " ".join(self.final("RUN")))
        r = subprocess.run(["bash", src("scripts", "runtime-packages.sh"),
                            relaytest.server_bin()], capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)
        pkgs = set(r.stdout.split())
        for p in ("libc6", "libcurl4", "libpq5", "libhiredis0.14", "libjansson4", "libjwt0",
                  "libyaml-0-2", "libcivetweb1", "libsqlite3-0"):
            self.assertIn(p, pkgs)

    def test_runtime_user_volume_port_health(self):
        users = self.final("USER")
        self.assertTrue(users)
        self.assertNotIn(users[-1], ("root", "0"))
        runs = " ".join(self.final("RUN"))
        self.assertIn("useradd", runs)
        self.assertIn(users[-1], runs)
        self.assertEqual(len(self.final("VOLUME")), 1)
        env = " ".join(self.final("ENV"))
        self.assertIn("RELAY_LISTEN=0.0.0.0:8000", env)
        data = re.search(r"RELAY_DATA_DIR=(\S+)", env).group(1)
        self.assertIn(data, self.final("VOLUME")[0])
        for name in re.findall(r"([A-Z][A-Z0-9_]*)=", env):
            self.assertIn(name, env_example_names())
        self.assertEqual(self.final("EXPOSE"), ["8000"])
        hc = self.final("HEALTHCHECK")
        self.assertEqual(len(hc), 1)
        self.assertIn("http://127.0.0.1:8000/health", hc[0])
        self.assertIn("curl", runs)  # the health check's tool is installed
        self.assertIn('"relay-server"', self.final("ENTRYPOINT")[0])
        self.assertIn("COPY", [i for i, _ in self.stages[-1][2]])


class Compose(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import yaml
        cls.text = read("docker-compose.yml")
        cls.doc = yaml.safe_load(cls.text)
        cls.svc = cls.doc["services"]

    def test_services_images_ports(self):
        self.assertEqual(set(self.svc), {"relay-station", "postgres", "redis"})
        self.assertEqual(self.svc["postgres"]["image"], "postgres:15")
        self.assertEqual(self.svc["redis"]["image"], "redis:7")
        self.assertIn("15432:5432", self.svc["postgres"]["ports"])
        self.assertIn("16379:6379", self.svc["redis"]["ports"])
        self.assertIn("${RELAY_PORT:-8000}:8000", self.svc["relay-station"]["ports"])
        self.assertIn("--requirepass", self.svc["redis"]["command"])

    def test_relay_station_builds_here_and_reads_env(self):
        rs = self.svc["relay-station"]
        self.assertEqual(rs["build"], ".")
        self.assertTrue(os.path.isfile(src("Dockerfile")))
        self.assertEqual(rs["env_file"], ".env")
        self.assertIn("/.env", read(".gitignore").split())
        env = rs["environment"]
        self.assertEqual(env["RELAY_LISTEN"], "0.0.0.0:8000")
        self.assertTrue(env["DATABASE_URL"].startswith("postgresql://"))
        self.assertIn("@postgres:5432/", env["DATABASE_URL"])
        self.assertIn("@redis:6379/", env["REDIS_URL"])
        for name in env:
            self.assertIn(name, env_example_names())

    def test_variables_are_in_env_example(self):
        used = compose_vars(self.text)
        self.assertIn("REDIS_PASSWORD", used)
        self.assertEqual(used - env_example_names(), set())

    def test_health_checks_and_dependencies(self):
        for name, s in self.svc.items():
            self.assertIn("test", s.get("healthcheck", {}), name)
        deps = self.svc["relay-station"]["depends_on"]
        self.assertEqual(deps, {"postgres": {"condition": "service_healthy"},
                                "redis": {"condition": "service_healthy"}})
        self.assertIn("/health", " ".join(self.svc["relay-station"]["healthcheck"]["test"]))

    def test_volumes_declared_and_data_dir_on_one(self):
        declared = set(self.doc["volumes"])
        for name, s in self.svc.items():
            for v in s.get("volumes", []):
                vol = v.split(":")[0]
                self.assertIn(vol, declared, "%s: volume %s not declared" % (name, vol))
        mounts = dict(v.split(":")[:2] for v in self.svc["relay-station"]["volumes"])
        self.assertIn(self.svc["relay-station"]["environment"]["RELAY_DATA_DIR"],
                      mounts.values())


class Files(unittest.TestCase):
    def test_deploy_sh_syntax(self):
        r = subprocess.run(["bash", "-n", src("deploy.sh")], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.access(src("deploy.sh"), os.X_OK))
        if shutil.which("shellcheck"):
            r = subprocess.run(["shellcheck", "-S", "warning", src("deploy.sh")],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout)

    def test_deploy_sh_docker_mode_uses_compose_services(self):
        text = read("deploy.sh")
        self.assertIn("run --rm relay-station migrate up", text)
        self.assertIn("exec relay-station relay-server", text)
        for name in re.findall(r'"((?:POSTGRES|REDIS)_PASSWORD)=<random>"', text):
            self.assertIn(name, env_example_names())

    def test_unit_is_hardened(self):
        keys = {}
        for line in read("deploy", "relay-server.service").splitlines():
            m = re.match(r"([A-Za-z]+)=(.*)$", line)
            if m:
                keys.setdefault(m.group(1), []).append(m.group(2))
        self.assertEqual(keys["DynamicUser"], ["yes"])
        self.assertEqual(keys["ProtectSystem"], ["strict"])
        self.assertEqual(keys["NoNewPrivileges"], ["yes"])
        self.assertEqual(keys["StateDirectory"], ["relay-server"])
        self.assertIn("RELAY_DATA_DIR=%S/relay-server", keys["Environment"])
        self.assertTrue(any("migrate up" in v for v in keys["ExecStartPre"]))

    def test_nginx_conf(self):
        text = read("deploy", "nginx-tls.conf")
        self.assertRegex(text, r"\n\s*proxy_buffering off;")
        self.assertRegex(text, r"proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;")
        self.assertRegex(text, r"listen 443 ssl")
        secs = int(re.search(r"proxy_read_timeout (\d+)s;", text).group(1))
        self.assertGreaterEqual(secs, 600)  # at least the relay's upstream timeout
        self.assertIn("trusted_proxies: [127.0.0.1, ::1]", text)
        self.assertIn("trusted_proxies", read("config.example.yaml"))
        if not (shutil.which("nginx") and shutil.which("openssl")):
            return
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=relay.example.com", "-keyout", d + "/key.pem",
                        "-out", d + "/cert.pem"], check=True, capture_output=True)
        conf = re.sub(r"/etc/letsencrypt/live/relay.example.com/fullchain.pem", d + "/cert.pem",
                      text)
        conf = re.sub(r"/etc/letsencrypt/live/relay.example.com/privkey.pem", d + "/key.pem",
                      conf)
        with open(d + "/relay.conf", "w") as f:
            f.write(conf)
        with open(d + "/nginx.conf", "w") as f:
            f.write("pid %s/nginx.pid;\nerror_log %s/error.log;\nevents {}\n"
                    "http {\n  access_log off;\n  client_body_temp_path %s;\n"
                    "  include %s/relay.conf;\n}\n" % (d, d, d, d))
        r = subprocess.run(["nginx", "-t", "-p", d, "-c", d + "/nginx.conf"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)


@unittest.skipUnless(relaytest.server_bin(), "RELAY_SERVER_BIN unset")
class NativeDeploy(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="relay-deploy-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = os.path.join(self.dir, "opt")
        self.unit_dir = os.path.join(self.dir, "units")
        self.port = relaytest.free_port()
        self.addCleanup(self.stop)

    def stop(self):
        stop_pidfile(os.path.join(self.prefix, "relay-server.pid"))

    def deploy(self):
        env = {k: os.environ[k] for k in relaytest.PASS_ENV if k in os.environ}
        r = subprocess.run(
            [src("deploy.sh"), "--native", "--prefix", self.prefix, "--unit-dir", self.unit_dir,
             "--port", str(self.port), "--binary", relaytest.server_bin(), "--timeout", "60"],
            capture_output=True, text=True, env=env, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def pid(self):
        with open(os.path.join(self.prefix, "relay-server.pid")) as f:
            return int(f.read())

    def test_native_deploy_twice(self):
        out = self.deploy()
        envfile = os.path.join(self.prefix, ".env")
        env = parse_env_file(envfile)
        self.assertEqual(os.stat(envfile).st_mode & 0o777, 0o600)
        self.assertRegex(env["SECRET_KEY"], r"^[0-9a-f]{64}$")
        self.assertRegex(env["ADMIN_PASSWORD"], r"^[0-9a-f]{24}$")
        self.assertEqual(env["RELAY_LISTEN"], "127.0.0.1:%d" % self.port)
        self.assertEqual(env["RELAY_DATA_DIR"], os.path.join(self.prefix, "data"))
        self.assertEqual(out.count(env["ADMIN_PASSWORD"]), 1)
        url = "http://127.0.0.1:%d" % self.port
        self.assertIn("relay-server is up at " + url, out)
        st, health, _ = relaytest.json_request(url, "GET", "/health")
        self.assertEqual((st, health["database"]), (200, "ok"))
        self.assertTrue(os.path.isfile(os.path.join(self.prefix, "data", "relay.db")))

        # the printed password logs in
        import base64
        basic = base64.b64encode(b"admin:" + env["ADMIN_PASSWORD"].encode()).decode()
        st, js, _ = relaytest.json_request(url, "POST", "/admin/login", None,
                                           {"authorization": "Basic " + basic})
        self.assertEqual(st, 200)
        admin = {"authorization": "Bearer " + js["access_token"]}
        # the printed key command works as printed
        line = next(l for l in out.splitlines() if "keys create" in l)
        r = subprocess.run(["bash", "-c", line.strip()], capture_output=True, text=True,
                           timeout=60, env={k: os.environ[k] for k in relaytest.PASS_ENV
                                            if k in os.environ})
        self.assertEqual(r.returncode, 0, r.stderr)
        key = re.search(r"sk-proxy-\S+", r.stdout).group(0)
        st, js, _ = relaytest.json_request(url, "GET", "/api/usage", None, {"x-api-key": key})
        self.assertEqual(st, 200)
        st, js, _ = relaytest.json_request(url, "GET", "/admin/api-keys", None, admin)
        self.assertEqual([k["name"] for k in js["items"]], ["alice"])

        # the unit file: paths rewritten to the prefix, and valid for systemd
        unit = os.path.join(self.unit_dir, "relay-server.service")
        with open(unit) as f:
            text = f.read()
        self.assertNotIn("/opt/relay-server", text)
        self.assertIn(os.path.join(self.prefix, "bin", "relay-server") + " serve", text)
        if shutil.which("systemd-analyze"):
            r = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)

        # again: secrets kept, not printed, the relay restarted with the same password
        first_pid = self.pid()
        out2 = self.deploy()
        self.assertNotIn("ADMIN_PASSWORD=", out2)
        self.assertEqual(parse_env_file(envfile), env)
        self.assertNotEqual(self.pid(), first_pid)
        st, _, _ = relaytest.json_request(url, "POST", "/admin/login", None,
                                          {"authorization": "Basic " + basic})
        self.assertEqual(st, 200)
        with open(os.path.join(self.prefix, "relay-server.log")) as f:
            log = f.read()
        self.assertEqual(relaytest.find_secrets(log.splitlines(), [
            env["ADMIN_PASSWORD"], env["SECRET_KEY"], key]), [])


STUB_DOCKER = r"""#!/usr/bin/env bash
# A stand-in for docker: records each call; "compose up -d" starts the real relay-server the way
# the compose file would (its environment: overrides), so deploy.sh's wait for /health is real.
echo "$*" >> "$STUB_DIR/calls"
cd "$STUB_PROJECT"
port=$(sed -n 's/^RELAY_PORT=//p' .env)
env_file=("--env-file" "$STUB_PROJECT/.env")
export RELAY_LISTEN=127.0.0.1:$port RELAY_DATA_DIR=$STUB_DIR/data
case "$*" in
  "compose version") echo "Docker Compose version v2.29.0" ;;
  "compose build relay-station") ;;
  "compose run --rm relay-station migrate up") exec "$STUB_RELAY" "${env_file[@]}" migrate up ;;
  "compose up -d")
    nohup "$STUB_RELAY" "${env_file[@]}" serve >> "$STUB_DIR/relay.log" 2>&1 < /dev/null &
    echo $! > "$STUB_DIR/relay.pid" ;;
  "compose logs"*) cat "$STUB_DIR/relay.log" ;;
  *) echo "stub docker: unexpected: $*" >&2; exit 2 ;;
esac
"""


@unittest.skipUnless(relaytest.server_bin(), "RELAY_SERVER_BIN unset")
class DockerDeploy(unittest.TestCase):
    """deploy.sh's Docker mode against a stand-in docker (no engine here), in a copy of the
    project files, so the .env it writes stays out of the source tree."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="relay-deploy-docker-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.project = os.path.join(self.dir, "project")
        os.makedirs(os.path.join(self.project, "scripts"))
        for f in ("deploy.sh", ".env.example", "docker-compose.yml", "Dockerfile",
                  "scripts/build.sh", "scripts/deps.sh"):
            shutil.copy2(src(f), os.path.join(self.project, f))
        self.bin = os.path.join(self.dir, "bin")
        os.makedirs(self.bin)
        with open(os.path.join(self.bin, "docker"), "w") as f:
            f.write(STUB_DOCKER)
        os.chmod(os.path.join(self.bin, "docker"), 0o755)
        self.port = relaytest.free_port()
        self.addCleanup(self.stop)

    def stop(self):
        stop_pidfile(os.path.join(self.dir, "relay.pid"))

    def deploy(self, path_extra=True):
        env = {k: os.environ[k] for k in relaytest.PASS_ENV if k in os.environ}
        if path_extra:
            env["PATH"] = self.bin + os.pathsep + env.get("PATH", "/usr/bin:/bin")
        else:  # only the ordinary tools: no docker, whatever this machine has
            tools = os.path.join(self.dir, "tools")
            os.makedirs(tools, exist_ok=True)
            for t in ("bash", "env", "dirname", "sed", "head", "od", "tr", "cp", "chmod", "grep",
                      "mktemp", "awk", "mv", "cat", "tail", "sleep", "curl"):
                if shutil.which(t) and not os.path.exists(os.path.join(tools, t)):
                    os.symlink(shutil.which(t), os.path.join(tools, t))
            env["PATH"] = tools
        env.update(STUB_DIR=self.dir, STUB_PROJECT=self.project,
                   STUB_RELAY=os.path.abspath(relaytest.server_bin()))
        return subprocess.run([os.path.join(self.project, "deploy.sh"), "--port", str(self.port),
                               "--timeout", "60"], capture_output=True, text=True, env=env,
                              timeout=120)

    def calls(self):
        with open(os.path.join(self.dir, "calls")) as f:
            return f.read().splitlines()

    def test_compose_flow_and_secrets(self):
        r = self.deploy()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.calls(), ["compose version", "compose build relay-station",
                                        "compose run --rm relay-station migrate up",
                                        "compose up -d"])
        envfile = os.path.join(self.project, ".env")
        env = parse_env_file(envfile)
        self.assertEqual(os.stat(envfile).st_mode & 0o777, 0o600)
        self.assertRegex(env["SECRET_KEY"], r"^[0-9a-f]{64}$")
        self.assertRegex(env["POSTGRES_PASSWORD"], r"^[0-9a-f]{32}$")
        self.assertRegex(env["REDIS_PASSWORD"], r"^[0-9a-f]{32}$")
        self.assertEqual(env["RELAY_PORT"], str(self.port))
        self.assertEqual(r.stdout.count(env["ADMIN_PASSWORD"]), 1)
        self.assertNotIn(env["REDIS_PASSWORD"], r.stdout)
        self.assertIn("docker compose exec relay-station relay-server keys create", r.stdout)
        self.assertIn("healthy: ", r.stdout)
        st, js, _ = relaytest.json_request(self.port, "GET", "/health")
        self.assertEqual((st, js["status"]), (200, "ok"))
        # again: nothing regenerated, nothing printed
        self.stop()
        r = self.deploy()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(parse_env_file(envfile), env)
        self.assertNotIn("ADMIN_PASSWORD=", r.stdout)

    def test_missing_docker_is_named(self):
        r = self.deploy(path_extra=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("missing tools: docker", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.project, ".env")))


if __name__ == "__main__":
    relaytest.main()
