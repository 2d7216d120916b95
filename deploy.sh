#!/usr/bin/env bash
# deploy.sh: from a checkout to a running relay, as the original relay's ./deploy.sh did.
#
#   ./deploy.sh                 Docker: .env (secrets generated once), image build, PostgreSQL 15
#                               and Redis 7, migrations, `docker compose up -d`, wait for /health.
#   ./deploy.sh --native        Without Docker: the quick start's packages and build, installed
#                               under --prefix with a hardened systemd unit (SQLite by default;
#                               set DATABASE_URL / REDIS_URL in PREFIX/.env for PostgreSQL/Redis).
#
# Options:
#   --port N          host port to serve on (default 8000; native: on 127.0.0.1, for a TLS proxy
#                     in front, see deploy/nginx-tls.conf)
#   --prefix DIR      native: where bin/relay-server and .env go (default /opt/relay-server)
#   --unit-dir DIR    native: where the unit file is written (default /etc/systemd/system). Any
#                     other directory: the unit is only written there, and the relay is started
#                     in the background from PREFIX (data in PREFIX/data, log PREFIX/relay-server.log,
#                     PID in PREFIX/relay-server.pid) instead of by systemd
#   --binary PATH     native: install this relay-server instead of building one (no packages)
#   --timeout S       how long to wait for /health (default 120)
# Running it again keeps .env (secrets are never regenerated) and upgrades in place.
set -euo pipefail

SRC=$(cd "$(dirname "$0")" && pwd)
MODE=docker
PORT=8000
PREFIX=/opt/relay-server
UNIT_DIR=/etc/systemd/system
SYSTEM_UNIT_DIR=/etc/systemd/system
BINARY=""
TIMEOUT=120

die() {
  echo "deploy.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

while (($#)); do
  case "$1" in
    --native) MODE=native ;;
    --port) PORT=${2:?--port needs a value}; shift ;;
    --prefix) PREFIX=${2:?--prefix needs a value}; shift ;;
    --unit-dir) UNIT_DIR=${2:?--unit-dir needs a value}; shift ;;
    --binary) BINARY=${2:?--binary needs a value}; shift ;;
    --timeout) TIMEOUT=${2:?--timeout needs a value}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[[ $PORT =~ ^[0-9]+$ ]] && ((PORT > 0 && PORT < 65536)) || die "--port: expected 1-65535"

need() {
  local missing=()
  for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
  ((${#missing[@]} == 0)) || die "missing tools: ${missing[*]}"
}

random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# NAME's value in an env file ("" when absent or empty).
env_get() { sed -n "s/^$1=//p" "$2" | tail -n 1; }

# Sets NAME=VALUE in an env file, replacing the line or appending one.
env_set() {
  local name=$1 value=$2 file=$3
  if grep -q "^$name=" "$file"; then
    local tmp
    tmp=$(mktemp "$file.XXXXXX")
    awk -v n="$name" -v v="$value" 'index($0, n "=") == 1 { print n "=" v; next } { print }' \
      "$file" >"$tmp"
    chmod 0600 "$tmp"
    mv "$tmp" "$file"
  else
    echo "$name=$value" >>"$file"
  fi
}

# Creates the env file from .env.example when absent, and fills every empty secret once. The
# admin password is printed here and never again (the relay keeps only its bcrypt hash).
make_env() {
  local file=$1
  shift
  if [[ ! -e $file ]]; then
    (umask 077 && cp "$SRC/.env.example" "$file")
    echo "created $file from .env.example"
  fi
  chmod 0600 "$file"
  if [[ -z $(env_get SECRET_KEY "$file") ]]; then env_set SECRET_KEY "$(random_hex 32)" "$file"; fi
  if [[ -z $(env_get ADMIN_PASSWORD "$file") ]]; then
    local pw
    pw=$(random_hex 12)
    env_set ADMIN_PASSWORD "$pw" "$file"
    echo "ADMIN_PASSWORD=$pw  (generated; shown only now, kept in $file)"
  fi
  local kv
  for kv in "$@"; do
    local name=${kv%%=*} value=${kv#*=}
    if [[ $value == "<random>" ]]; then
      [[ -n $(env_get "$name" "$file") ]] || env_set "$name" "$(random_hex 16)" "$file"
    else
      env_set "$name" "$value" "$file"
    fi
  done
}

wait_health() {
  local url=$1 deadline=$((SECONDS + TIMEOUT))
  until curl -fsS "$url/health" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "deploy.sh: no answer from $url/health after ${TIMEOUT}s" >&2
      return 1
    fi
    sleep 1
  done
  echo "healthy: $(curl -fsS "$url/health")"
}

first_key_help() {
  local url=$1 keys_cmd=$2 envfile=$3
  cat <<HELP

relay-server is up at $url (console: $url/console)
Create the first proxy key (the full key is shown only once)
HELP
  if [[ -n $keys_cmd ]]; then
    echo "  $keys_cmd keys create --name alice --token-limit 1000000"
    echo "or over HTTP, with the admin password from $envfile:"
  else
    echo "over HTTP, with the admin password from $envfile:"
  fi
  cat <<HELP
  TOKEN=\$(curl -s -X POST $url/admin/login -u admin:PASSWORD | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -X POST $url/admin/api-keys -H "Authorization: Bearer \$TOKEN" \\
    -H 'Content-Type: application/json' -d '{"name": "alice", "token_limit": 1000000}'
Set UPSTREAM_API_KEY in $envfile (and restart) if it is still empty.
HELP
}

deploy_docker() {
  need docker curl
  local compose
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  else
    die "missing tools: docker compose (the compose plugin) or docker-compose"
  fi
  cd "$SRC"
  make_env "$SRC/.env" "RELAY_PORT=$PORT" "POSTGRES_PASSWORD=<random>" "REDIS_PASSWORD=<random>"
  "${compose[@]}" build relay-station
  # `run` starts postgres and redis first and waits until their health checks pass.
  "${compose[@]}" run --rm relay-station migrate up
  "${compose[@]}" up -d
  wait_health "http://127.0.0.1:$PORT" || { "${compose[@]}" logs --tail 20 relay-station >&2; exit 1; }
  first_key_help "http://127.0.0.1:$PORT" "${compose[*]} exec relay-station relay-server" "$SRC/.env"
}

# Stops a relay this script started in the background earlier (only that PID).
stop_background() {
  local pidfile=$1 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  fi
  rm -f "$pidfile"
}

deploy_native() {
  need curl install sed awk od
  local system=0
  [[ $(realpath -m "$UNIT_DIR") == "$SYSTEM_UNIT_DIR" ]] && system=1
  ((system == 0)) || need systemctl
  local bin=$BINARY
  if [[ -z $bin ]]; then
    bash "$SRC/scripts/deps.sh"
    need cmake cc pkg-config
    bin=$SRC/$(bash "$SRC/scripts/build.sh" build)
  fi
  [[ -x $bin ]] || die "$bin: not an executable"
  PREFIX=$(realpath -m "$PREFIX")
  install -d -m 0755 "$PREFIX" "$PREFIX/bin"
  local envfile=$PREFIX/.env url=http://127.0.0.1:$PORT
  if ((system)); then
    make_env "$envfile" "RELAY_LISTEN=127.0.0.1:$PORT"
  else
    make_env "$envfile" "RELAY_LISTEN=127.0.0.1:$PORT" "RELAY_DATA_DIR=$PREFIX/data"
    stop_background "$PREFIX/relay-server.pid"
  fi
  install -m 0755 "$bin" "$PREFIX/bin/relay-server.new"
  mv -f "$PREFIX/bin/relay-server.new" "$PREFIX/bin/relay-server"
  install -d -m 0755 "$UNIT_DIR"
  sed "s#/opt/relay-server#$PREFIX#g" "$SRC/deploy/relay-server.service" \
    >"$UNIT_DIR/relay-server.service"
  echo "wrote $UNIT_DIR/relay-server.service"
  if ((system)); then
    # migrate up runs as the unit's ExecStartPre, as the service's own user.
    systemctl daemon-reload
    systemctl enable relay-server.service
    systemctl restart relay-server.service
    wait_health "$url" || { journalctl -u relay-server.service -n 20 --no-pager >&2; exit 1; }
    first_key_help "$url" "" "$envfile"
  else
    (cd "$PREFIX" && ./bin/relay-server migrate up --env-file "$envfile")
    (cd "$PREFIX" && exec nohup ./bin/relay-server serve --env-file "$envfile" \
      >>"$PREFIX/relay-server.log" 2>&1 </dev/null) &
    echo $! >"$PREFIX/relay-server.pid"
    wait_health "$url" || { tail -n 20 "$PREFIX/relay-server.log" >&2; exit 1; }
    echo "started in the background: PID $(cat "$PREFIX/relay-server.pid"), log $PREFIX/relay-server.log"
    first_key_help "$url" "cd $PREFIX && ./bin/relay-server --env-file .env" "$envfile"
  fi
}

if [[ $MODE == docker ]]; then deploy_docker; else deploy_native; fi
