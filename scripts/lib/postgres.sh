# Helpers for scripts/test: install Debian packages when missing, run a throwaway PostgreSQL.
# shellcheck shell=bash

ensure_debian_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

pg_bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
    done
    command -v initdb >/dev/null && { dirname "$(command -v initdb)"; return 0; }
    echo "no PostgreSQL server binaries (initdb) found" >&2
    return 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts a cluster in a temp directory on a free port and exports GRIDPATROL_TEST_PG_URL.
start_test_postgres() {
    local bindir port as=()
    bindir=$(pg_bindir)
    port=$(free_port)
    PG_TEST_DIR=$(mktemp -d /tmp/gridpatrol-pg.XXXXXX)
    # initdb refuses to run as root: run the server as the `postgres` user the package created.
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$PG_TEST_DIR"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$bindir/initdb" -D "$PG_TEST_DIR/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$PG_TEST_DIR/initdb.log" 2>&1 \
        || { cat "$PG_TEST_DIR/initdb.log"; return 1; }
    "${as[@]}" "$bindir/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w \
        -o "-p $port -k $PG_TEST_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null \
        || { cat "$PG_TEST_DIR/server.log"; return 1; }
    PG_TEST_BINDIR=$bindir
    PG_TEST_AS=("${as[@]}")
    export GRIDPATROL_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

stop_test_postgres() {
    [ -n "${PG_TEST_DIR:-}" ] || return 0
    "${PG_TEST_AS[@]}" "$PG_TEST_BINDIR/pg_ctl" -D "$PG_TEST_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_TEST_DIR"
}
