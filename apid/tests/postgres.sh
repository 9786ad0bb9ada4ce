#!/usr/bin/env bash
# A throw-away PostgreSQL server (Debian's `postgresql` package) for apid's tests: prints its
# admin URL on stdout once it accepts connections, runs until its standard input closes (the
# test process that started it exited, however it ended), then stops the server and deletes its
# data. It listens on a Unix socket in its own directory only, never on a network address.
# Durability is off (fsync, synchronous_commit): the data is thrown away anyway.
#
#   apid/tests/postgres.sh </dev/tty    # prints postgres://postgres@localhost/postgres?host=/tmp/...
set -euo pipefail

bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$bin" ] || [ ! -x "$bin/postgres" ]; then
    echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 3
fi
dir="$(mktemp -d /tmp/skiff-pg.XXXXXX)"
pid=
cleanup() {
    if [ -n "$pid" ]; then
        kill -INT "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' TERM INT HUP
chown postgres: "$dir"
setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
    --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
setpriv --reuid=postgres --regid=postgres --init-groups -- "$bin/postgres" -D "$dir/data" -k "$dir" -c listen_addresses= \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 \
    >"$dir/server.log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 100); do
    if "$bin/pg_isready" -q -h "$dir" -U postgres; then
        echo "postgres://postgres@localhost/postgres?host=$dir"
        cat >/dev/null || true
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
echo "postgres.sh: the server did not start:" >&2
cat "$dir/server.log" >&2
exit 1
