#!/bin/sh
# pg-test-server.sh: a throwaway PostgreSQL cluster for the tests (loopback only, trust auth).
#   pg-test-server.sh start DIR    initialise DIR if needed, start, print the database URL
#   pg-test-server.sh stop DIR     stop it (fast shutdown)
#   pg-test-server.sh restart DIR  stop and start again on the same port (tests prove reconnection)
#   pg-test-server.sh url DIR      print the URL of the cluster in DIR
# It never touches the system's default cluster: data, socket and log all live under DIR, and the
# port is a free one chosen at first start and kept in DIR/port.
set -eu

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DB=relay_test

die() { echo "pg-test-server: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 start|stop|restart|url DIR"
CMD=$1
case $2 in /*) DIR=$2 ;; *) DIR=$(pwd)/$2 ;; esac
DATA=$DIR/data
SOCK=$DIR/sock
LOG=$DIR/postgres.log

[ -x "$PG_BIN/pg_ctl" ] || die "$PG_BIN/pg_ctl not found: apt-get install postgresql"

# PostgreSQL refuses to run as root, so as root everything runs as the postgres user.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A port nothing listens on now; the kernel picks it so parallel runs do not collide.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

url() { echo "postgresql://postgres@127.0.0.1:$(cat "$DIR/port")/$DB"; }

is_running() { as_pg "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

init_cluster() {
    mkdir -p "$DIR"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$DIR"
    fi
    as_pg test -w "$DIR" || die "$DIR is not writable by the postgres user (use a directory under /tmp)"
    as_pg mkdir -p "$SOCK"
    as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale >"$DIR/initdb.log" 2>&1 ||
        die "initdb failed, see $DIR/initdb.log"
    # Only loopback, only trust: this cluster exists for tests and holds nothing worth protecting.
    as_pg sh -c "printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' > '$DATA/pg_hba.conf'"
}

start_on() {
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $1 -c unix_socket_directories='$SOCK' -c fsync=off" \
        >/dev/null 2>&1
}

start() {
    [ -f "$DATA/PG_VERSION" ] || init_cluster
    if ! is_running; then
        if [ -f "$DIR/port" ]; then
            start_on "$(cat "$DIR/port")" || die "start failed, see $LOG"
        else
            # The chosen port can be taken between the check and the start: try a few.
            ok=0
            for _ in 1 2 3 4 5; do
                port=$(free_port)
                if start_on "$port"; then
                    echo "$port" >"$DIR/port"
                    ok=1
                    break
                fi
            done
            [ $ok -eq 1 ] || die "start failed, see $LOG"
        fi
    fi
    port=$(cat "$DIR/port")
    if [ -z "$(as_pg "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
        as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DB" || die "createdb failed"
    fi
    url
}

stop() {
    [ -f "$DATA/PG_VERSION" ] || die "no cluster in $DIR"
    if is_running; then
        as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null || die "stop failed, see $LOG"
    fi
}

case $CMD in
start) start ;;
stop) stop ;;
restart)
    stop
    start >/dev/null
    url
    ;;
url) url ;;
*) die "unknown command $CMD (start|stop|restart|url)" ;;
esac
