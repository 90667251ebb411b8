# benches/common.sh: what the benchmark scripts share, sourced by them after they set
# BENCH_NAME (for messages and the temporary directory) and PG_MAX_CONNECTIONS. It checks the
# prerequisites, installs the clean-up trap (every process started is stopped and the temporary
# directory removed on exit), builds the release binary (unless SKIP_BUILD=1), starts a
# throw-away PostgreSQL with TLS (fsync off, pgbench tables at scale 1) and defines the helpers:
# log, die, free_port, wait_sql, wait_listen, rss_kib, start_sidecar.
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIDECAR=${SIDECAR:-"$REPO/target/release/rds-iam-sidecar"}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$BENCH_NAME" "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Prerequisites
# ---------------------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL and PgBouncer are started as the postgres user with runuser)"
id postgres >/dev/null 2>&1 || die "no 'postgres' user (install the Debian package postgresql)"
for dir in /usr/lib/postgresql/*/bin; do
    [[ -d $dir ]] && PATH="$PATH:$dir"
done
export PATH
for tool in initdb postgres pg_ctl pgbench psql openssl python3 runuser timeout; do
    command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done
HAVE_PGBOUNCER=0
if command -v pgbouncer >/dev/null; then HAVE_PGBOUNCER=1; fi
# 1000+ idle clients need as many descriptors in the client, the sidecar and PgBouncer.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# Clean-up: everything started below is recorded here and stopped on exit.
# ---------------------------------------------------------------------------------------------
TMP=$(mktemp -d "/tmp/$BENCH_NAME.XXXXXX")
chmod 755 "$TMP"
PIDS=()            # sidecars and helper processes (started by us, as root)
PGBOUNCER_PIDFILES=()
PGDATA="$TMP/data"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pidfile in "${PGBOUNCER_PIDFILES[@]}"; do
        [[ -s $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    if [[ -f $PGDATA/postmaster.pid ]]; then
        runuser -u postgres -- pg_ctl -D "$PGDATA" -m immediate -w -t 20 stop >/dev/null 2>&1 || true
    fi
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_sql NAME PORT SSLMODE: wait up to 30 s until `SELECT 1` works through 127.0.0.1:PORT.
wait_sql() {
    local name=$1 port=$2 sslmode=$3 deadline=$((SECONDS + 30))
    until PGCONNECT_TIMEOUT=3 PGSSLMODE=$sslmode psql -h 127.0.0.1 -p "$port" -U postgres -d postgres \
        -XAtqc 'SELECT 1' >/dev/null 2>"$TMP/wait.err"; do
        if ((SECONDS >= deadline)); then
            cat "$TMP/wait.err" >&2
            die "$name on port $port did not accept connections within 30 s (logs in $TMP, KEEP_TMP=1 keeps them)"
        fi
        sleep 0.2
    done
}

# wait_listen PORT: wait up to 30 s until something listens on 127.0.0.1:PORT (no login).
wait_listen() {
    local port=$1 deadline=$((SECONDS + 30))
    until python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' \
        "$port" 2>/dev/null; do
        ((SECONDS < deadline)) || die "nothing listens on 127.0.0.1:$port after 30 s"
        sleep 0.1
    done
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------------------------------------
# 1. Build
# ---------------------------------------------------------------------------------------------
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building the sidecar (cargo build --release --locked, and the benchmark's floor)"
    (cd "$REPO" && cargo build --release --locked --bin rds-iam-sidecar --example copy_forwarder --example tokio_floor) ||
        die "cargo build failed"
fi
[[ -x $SIDECAR ]] || die "$SIDECAR not found (build it, or unset SKIP_BUILD)"

# ---------------------------------------------------------------------------------------------
# 2. Throw-away PostgreSQL with TLS
# ---------------------------------------------------------------------------------------------
PG_PORT=$(free_port)
log "PostgreSQL: initdb in $PGDATA, port $PG_PORT"
# A self-signed server certificate, also the sidecar's --ca-file. CA:FALSE because webpki
# (rustls) refuses a CA certificate as the server's own certificate.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -sha256 \
    -keyout "$TMP/server.key" -out "$TMP/server.crt" \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -addext basicConstraints=critical,CA:FALSE >"$TMP/openssl.log" 2>&1 ||
    {
        cat "$TMP/openssl.log" >&2
        die "openssl could not make the certificate"
    }
chown postgres: "$TMP/server.key" "$TMP/server.crt"
chmod 600 "$TMP/server.key"
chmod 644 "$TMP/server.crt"

mkdir "$PGDATA" "$TMP/pg" # data; socket and server log (postgres must write there)
chown postgres: "$PGDATA" "$TMP/pg"
runuser -u postgres -- initdb -D "$PGDATA" -U postgres -A trust --no-sync -E UTF8 --locale=C \
    >"$TMP/initdb.log" 2>&1 || {
    cat "$TMP/initdb.log" >&2
    die "initdb failed"
}
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$TMP/pg'
max_connections = $PG_MAX_CONNECTIONS
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = '$TMP/server.crt'
ssl_key_file = '$TMP/server.key'
log_min_messages = warning
EOF
cat >"$PGDATA/pg_hba.conf" <<EOF
local   all all              trust
hostssl all all 127.0.0.1/32 trust
host    all all 127.0.0.1/32 trust
EOF
runuser -u postgres -- pg_ctl -D "$PGDATA" -l "$TMP/pg/postgres.log" -w -t 60 start >/dev/null ||
    {
        cat "$TMP/pg/postgres.log" >&2
        die "PostgreSQL did not start"
    }
wait_sql PostgreSQL "$PG_PORT" require
PGSSLMODE=disable timeout 300 pgbench -i -s 1 -q -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres \
    >"$TMP/pgbench-init.log" 2>&1 || {
    cat "$TMP/pgbench-init.log" >&2
    die "pgbench -i failed"
}

# ---------------------------------------------------------------------------------------------
# 3. Sidecars
# ---------------------------------------------------------------------------------------------
# start_sidecar NAME PORT EXTRA_FLAGS...: starts one sidecar; its pid goes into SIDECAR_PID.
start_sidecar() {
    local name=$1 port=$2
    shift 2
    RDS_IAM_SIDECAR_PASSWORD=unused "$SIDECAR" \
        --upstream "localhost:$PG_PORT" --auth password \
        --tls-mode verify-full --ca-file "$TMP/server.crt" \
        --listen "127.0.0.1:$port" --log-level "${SIDECAR_LOG_LEVEL:-warn}" --admin-listen off "$@" \
        </dev/null >"$TMP/$name.log" 2>&1 &
    SIDECAR_PID=$!
    PIDS+=("$SIDECAR_PID")
}

