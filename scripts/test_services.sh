#!/usr/bin/env bash
# What the web-service tests need beyond Python: Debian's Chromium (browser tests) and a PostgreSQL
# server on loopback (the API tests against PostgreSQL).
#
#   bash scripts/test_services.sh install        # apt-get install chromium postgresql (only if missing)
#   eval "$(bash scripts/test_services.sh start)" # start a throw-away server; exports WBC_TEST_POSTGRES_URL
#   bash scripts/test_services.sh stop
#
# The server is a fresh cluster (initdb) in $WBC_PG_DIR (default /tmp/wbc-test-pg), owned by the
# postgres user, listening on 127.0.0.1:$WBC_PG_PORT (default 55432) only, with database and user wbc.
set -euo pipefail
PG_DIR=${WBC_PG_DIR:-/tmp/wbc-test-pg}
PG_PORT=${WBC_PG_PORT:-55432}
URL="postgresql://wbc:wbc@127.0.0.1:${PG_PORT}/wbc_test"

as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] || { echo "test_services.sh: PostgreSQL is not installed (run: $0 install)" >&2; exit 1; }
    echo "$d"
}

case "${1:-}" in
install)
    missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    ;;
start)
    BIN=$(pg_bin)
    if ! as_postgres "$BIN/pg_ctl" -D "$PG_DIR" status >/dev/null 2>&1; then
        rm -rf "$PG_DIR"
        mkdir -p "$PG_DIR"
        chown postgres: "$PG_DIR"
        as_postgres "$BIN/initdb" -D "$PG_DIR" -U postgres --auth=trust -E UTF8 >/dev/null
        as_postgres "$BIN/pg_ctl" -D "$PG_DIR" -l "$PG_DIR/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off" start >/dev/null
        as_postgres "$BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -q -v ON_ERROR_STOP=1 \
            -c "CREATE USER wbc PASSWORD 'wbc'" -c "CREATE DATABASE wbc_test OWNER wbc" >/dev/null
    fi
    echo "export WBC_TEST_POSTGRES_URL=$URL"
    ;;
stop)
    BIN=$(pg_bin)
    as_postgres "$BIN/pg_ctl" -D "$PG_DIR" -m fast -w stop >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: $0 install|start|stop" >&2
    exit 2
    ;;
esac
