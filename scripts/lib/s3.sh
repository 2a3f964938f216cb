# Helpers for scripts/test: a throwaway S3-compatible server (moto, from PyPI) for the photo store.
# shellcheck shell=bash

# Installs moto's server if missing, starts it on a free port and exports GRIDPATROL_TEST_S3_URL.
start_test_s3() {
    local port i
    if ! python3 -c 'import moto.server, flask_cors' >/dev/null 2>&1; then
        echo "installing moto[server] from PyPI"
        python3 -m pip install --quiet 'moto[server]>=5,<6'
    fi
    port=$(free_port)
    S3_TEST_LOG=$(mktemp /tmp/gridpatrol-moto.XXXXXX)
    python3 -m moto.server -H 127.0.0.1 -p "$port" >"$S3_TEST_LOG" 2>&1 &
    S3_TEST_PID=$!
    for i in $(seq 1 100); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/', timeout=1)" >/dev/null 2>&1; then
            export GRIDPATROL_TEST_S3_URL="http://127.0.0.1:$port"
            return 0
        fi
        kill -0 "$S3_TEST_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "moto did not start:" >&2
    cat "$S3_TEST_LOG" >&2
    return 1
}

stop_test_s3() {
    [ -n "${S3_TEST_PID:-}" ] || return 0
    kill "$S3_TEST_PID" 2>/dev/null || true
    wait "$S3_TEST_PID" 2>/dev/null || true
    rm -f "$S3_TEST_LOG"
}
