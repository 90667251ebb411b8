#!/usr/bin/env bash
# benches/pgbench-compare.sh: rds-iam-sidecar against direct TLS and PgBouncer, with pgbench.
#
# What it measures (DESIGN.md §8, "Numbers we aim for"):
#   * pgbench select-only (-S) throughput and average latency, CLIENTS clients, DURATION seconds
#     per run, for each target:
#       direct        libpq straight to PostgreSQL over TLS (sslmode=require)
#       sidecar-sess  rds-iam-sidecar, --pool-mode session      (plain local hop, TLS upstream)
#       sidecar-tx    rds-iam-sidecar, --pool-mode transaction  (plain local hop, TLS upstream)
#                     (both with --socket-io io-uring, where this machine allows it)
#       epoll-sess    the same two with --socket-io epoll, the default (and all there is where
#       epoll-tx      io_uring is refused: Docker's and containerd's default seccomp profiles)
#       sidecar-tls   rds-iam-sidecar, --pool-mode session, --client-tls self-signed (TLS on the
#                     local hop too, sslmode=require): what client TLS costs
#       pgb-sess      PgBouncer, pool_mode=session      (plain local hop, server_tls_sslmode=require)
#       pgb-tx        PgBouncer, pool_mode=transaction  (plain local hop, server_tls_sslmode=require)
#       floor         examples/copy_forwarder: copies bytes to a plaintext connection of its own
#                     per client (no TLS, no pool, no protocol). Its CPU per transaction is what
#                     the kernel charges any forwarding pooler here: the floor under issue 16's
#                     ratios (not run with -C: it opens an upstream connection per client)
#       floor-tokio   examples/tokio_floor: the same with the sidecar's runtime (current-thread
#                     tokio, a task per client), plaintext upstream
#       floor-rustls  examples/tokio_floor --tls: and with tokio-rustls to the upstream (verify-full,
#                     as the sidecar): the sidecar's stack with none of the sidecar in it
#       floor-uring   examples/tokio_floor --tls --io-uring: the same stack on the sidecar's
#                     io_uring sockets (src/uring)
#     in three ways: -M simple, -M prepared, and -C -M simple (a new connection per transaction).
#     The sidecar logs in with --auth password and --tls-mode verify-full against a self-signed
#     certificate; both poolers keep at most 8 upstream connections.
#   * Ratios sidecar/PgBouncer (same pool mode) and sidecar/direct, and the latency the sidecar
#     adds to each round trip compared with direct TLS: p50 over every transaction of one
#     client alone (pgbench --log), and the average under load.
#   * Each pooler's own CPU time per transaction (utime + stime from /proc): the cost that
#     decides throughput when pooler, pgbench and PostgreSQL share the cores.
#   * Streaming: one client's COPY ... TO STDOUT of COPY_ROWS generated rows (a large result)
#     and \copy FROM a file of the same rows (COPY IN), in MB/s, for direct TLS, the sidecar in
#     both modes and PgBouncer in session mode, with the ratio to direct (target: >= 0.9).
#   * The sidecar's RSS (VmRSS): right after start, then with IDLE_CLIENTS idle clients in
#     transaction mode and SESSION_IDLE_CLIENTS idle clients in session mode (each of those holds
#     an upstream TLS connection, so PostgreSQL's max_connections caps how many), and the same
#     for PgBouncer in transaction mode when it is installed.
#
# Everything runs on this machine against a throw-away PostgreSQL cluster (fsync=off) in a
# temporary directory, which is removed on exit together with every process the script started.
# PgBouncer is skipped when `pgbouncer` is not on PATH (Debian: apt-get install pgbouncer).
#
# Run (as root, from anywhere; needs initdb/postgres/pg_ctl, pgbench, psql, openssl, python3):
#   benches/pgbench-compare.sh
#   DURATION=30 CLIENTS=16 benches/pgbench-compare.sh
# Environment:
#   DURATION              seconds per pgbench run                       (default 8)
#   ROUNDS                rounds of all runs; medians are reported      (default 3)
#   CLIENTS               pgbench clients (-c)                          (default 8)
#   THREADS               pgbench threads (-j)                          (default 2)
#   POOL_SIZE             upstream connections per pooler               (default 8)
#   IDLE_CLIENTS          idle clients for the transaction-mode RSS test (default 4000)
#   SESSION_IDLE_CLIENTS  idle clients for the session-mode RSS test     (default 250)
#   COPY_ROWS             rows of the streaming test's COPY (~200 bytes each; default 1000000)
#   STREAM_RUNS           runs per streaming test, the best is shown     (default 2)
#   SKIP_BUILD=1          do not run cargo build (use the existing binary)
#   KEEP_TMP=1            keep the temporary directory (logs) after exit
# A full run with the defaults takes about 10 minutes after the build (2 cores).

set -euo pipefail

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
POOL_SIZE=${POOL_SIZE:-8}
IDLE_CLIENTS=${IDLE_CLIENTS:-4000}
SESSION_IDLE_CLIENTS=${SESSION_IDLE_CLIENTS:-250}
COPY_ROWS=${COPY_ROWS:-1000000}
STREAM_RUNS=${STREAM_RUNS:-2}
PG_MAX_CONNECTIONS=300

BENCH_NAME=pgbench-compare
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

declare -A PORT=() SSLMODE=() PID=()
TARGETS=(direct)
PORT[direct]=$PG_PORT
SSLMODE[direct]=require

for name in sidecar-sess sidecar-tx epoll-sess epoll-tx; do
    [[ $name == *-sess ]] && mode=session || mode=transaction
    [[ $name == epoll-* ]] && io=epoll || io=io-uring
    PORT[$name]=$(free_port)
    SSLMODE[$name]=disable
    # The start-up line (its io= says whether io_uring is in use) is the module's one info line.
    SIDECAR_LOG_LEVEL="${SIDECAR_LOG_LEVEL:-warn},rds_iam_sidecar::sidecar=info" \
        start_sidecar "$name" "${PORT[$name]}" --pool-size "$POOL_SIZE" --pool-mode "$mode" \
        --socket-io "$io"
    PID[$name]=$SIDECAR_PID
    wait_sql "$name" "${PORT[$name]}" disable
    TARGETS+=("$name")
    log "$name listening on ${PORT[$name]} (pid ${PID[$name]}), $(grep -o 'io=[a-z_]*' "$TMP/$name.log" | head -1)"
done

# The session-mode sidecar again with TLS on the local hop (clients use sslmode=require).
PORT[sidecar-tls]=$(free_port)
SSLMODE[sidecar-tls]=require
start_sidecar sidecar-tls "${PORT[sidecar-tls]}" --pool-size "$POOL_SIZE" --pool-mode session \
    --client-tls self-signed
PID[sidecar-tls]=$SIDECAR_PID
wait_sql sidecar-tls "${PORT[sidecar-tls]}" require
TARGETS+=(sidecar-tls)
log "sidecar-tls listening on ${PORT[sidecar-tls]} (pid ${PID[sidecar-tls]})"

# ---------------------------------------------------------------------------------------------
# 4. PgBouncer (optional)
# ---------------------------------------------------------------------------------------------
# start_pgbouncer NAME POOL_MODE MAX_CLIENT_CONN: daemonised, as the postgres user.
start_pgbouncer() {
    local name=$1 mode=$2 max_clients=$3 dir="$TMP/$1"
    mkdir -p "$dir"
    PORT[$name]=$(free_port)
    SSLMODE[$name]=disable
    printf '"postgres" ""\n' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[$name]}
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = $mode
default_pool_size = $POOL_SIZE
max_client_conn = $max_clients
server_tls_sslmode = require
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
    chown -R postgres: "$dir"
    PGBOUNCER_PIDFILES+=("$dir/pgbouncer.pid")
    # runuser's PAM session (pam_limits) puts the soft open-file limit back at 1,024 (the
    # idle-client test failed at ~1,013 clients): PgBouncer starts with its hard limit.
    runuser -u postgres -- sh -c 'ulimit -n "$(ulimit -Hn)"; exec pgbouncer -d "$0"' \
        "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1 || {
        cat "$dir/start.log" "$dir/pgbouncer.log" >&2 2>/dev/null || true
        die "PgBouncer ($name) did not start"
    }
    local deadline=$((SECONDS + 10))
    until [[ -s $dir/pgbouncer.pid ]]; do
        ((SECONDS < deadline)) || die "PgBouncer ($name) wrote no pid file"
        sleep 0.1
    done
    PID[$name]=$(cat "$dir/pgbouncer.pid")
    wait_sql "$name" "${PORT[$name]}" disable
    log "$name listening on ${PORT[$name]} (pid ${PID[$name]})"
}

if ((HAVE_PGBOUNCER)); then
    log "$(pgbouncer --version | head -1)"
    start_pgbouncer pgb-sess session 200
    start_pgbouncer pgb-tx transaction 200
    TARGETS+=(pgb-sess pgb-tx)
else
    log "pgbouncer not on PATH: PgBouncer skipped"
fi

# The floor: a forwarder that only copies bytes (plaintext upstream, one per client).
FLOOR=$REPO/target/release/examples/copy_forwarder
if [[ -x $FLOOR ]]; then
    PORT[floor]=$(free_port)
    SSLMODE[floor]=disable
    "$FLOOR" "${PORT[floor]}" "$PG_PORT" >"$TMP/floor.log" 2>&1 &
    PID[floor]=$!
    PIDS+=("$!")
    wait_sql floor "${PORT[floor]}" disable
    TARGETS+=(floor)
    log "floor (copy_forwarder) listening on ${PORT[floor]} (pid ${PID[floor]})"
else
    log "$FLOOR not built: the floor row is skipped"
fi
# The sidecar's stack with none of the sidecar in it (examples/tokio_floor.rs): tokio alone
# (plaintext upstream), and tokio with tokio-rustls (TLS upstream, verify-full like the sidecar).
STACK_FLOOR=$REPO/target/release/examples/tokio_floor
if [[ -x $STACK_FLOOR ]]; then
    for name in floor-tokio floor-rustls floor-uring; do
        PORT[$name]=$(free_port)
        SSLMODE[$name]=disable
        tls=()
        [[ $name == floor-rustls ]] && tls=(--tls "$TMP/server.crt")
        [[ $name == floor-uring ]] && tls=(--tls "$TMP/server.crt" --io-uring)
        "$STACK_FLOOR" "${PORT[$name]}" "$PG_PORT" "${tls[@]}" >"$TMP/$name.log" 2>&1 &
        PID[$name]=$!
        PIDS+=("$!")
        wait_sql "$name" "${PORT[$name]}" disable
        TARGETS+=("$name")
        log "$name (tokio_floor) listening on ${PORT[$name]} (pid ${PID[$name]})"
    done
else
    log "$STACK_FLOOR not built: the floor-tokio and floor-rustls rows are skipped"
fi

# ---------------------------------------------------------------------------------------------
# 5. pgbench
# ---------------------------------------------------------------------------------------------
declare -A TPS=() LAT=() P50=() CPU=()
ERRORS=()
KINDS=(simple prepared connect single)
CLK_TCK=$(getconf CLK_TCK)

# cpu_ticks PID: user + system CPU time of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# run_pgbench TARGET KIND ROUND: fills TPS, LAT, CPU (and P50 for single) at [TARGET,KIND,ROUND]
# ("ERR" on failure).
run_pgbench() {
    local target=$1 kind=$2 round=$3 out="$TMP/pgbench-$1-$2-$3.out" rc=0
    local -a flags=(-S -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION")
    case $kind in
    simple) flags+=(-M simple) ;;
    prepared) flags+=(-M prepared) ;;
    connect) flags+=(-C -M simple) ;;
    # One client alone: the round-trip latency each hop adds, per transaction (--log).
    single) flags=(-S -n -c 1 -j 1 -T "$DURATION" -M simple --log --log-prefix="$TMP/latency-$target") ;;
    esac
    local pid=${PID[$target]:-} ticks_before=0
    [[ -n $pid ]] && ticks_before=$(cpu_ticks "$pid")
    PGSSLMODE=${SSLMODE[$target]} PGCONNECT_TIMEOUT=10 timeout -k 5 $((DURATION + 60)) \
        pgbench "${flags[@]}" -h 127.0.0.1 -p "${PORT[$target]}" -U postgres postgres \
        >"$out" 2>&1 || rc=$?
    local tps lat failed
    tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$out" | head -1)
    lat=$(sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "$out" | head -1)
    failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$out" | head -1)
    if ((rc != 0)) || [[ -z $tps ]] || grep -qE 'aborted|error|FATAL' "$out"; then
        ERRORS+=("$target $kind: pgbench exit $rc, its error lines (count, text):")
        while IFS= read -r line; do ERRORS+=("  $line"); done < <(
            grep -E 'error|aborted|FATAL|ERROR' "$out" | sort | uniq -c | sort -rn | head -8 | sed -E 's/^ *([0-9]+) /\1x /' || true
        )
        # A run where some clients aborted still prints a tps line for the survivors: not
        # comparable, so it is shown as ERR.
        tps=ERR lat=ERR
    elif [[ -n $failed && $failed != 0 ]]; then
        ERRORS+=("$target $kind: $failed failed transactions")
    fi
    local key=$target,$kind,$round
    TPS[$key]=${tps:-ERR}
    LAT[$key]=${lat:-ERR}
    local transactions
    transactions=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$out" | head -1)
    if [[ -n $pid && $tps != ERR && -n $transactions && $transactions -gt 0 ]]; then
        # The pooler's own CPU time per transaction: what it costs, whatever the machine's load.
        CPU[$key]=$(awk -v t="$(($(cpu_ticks "$pid") - ticks_before))" -v hz="$CLK_TCK" \
            -v n="$transactions" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    fi
    if [[ $kind == single && $tps != ERR ]]; then
        # pgbench --log: one line per transaction, its latency in microseconds in field 3.
        P50[$key]=$(cat "$TMP/latency-$target".* 2>/dev/null | awk '{print $3}' | sort -n |
            awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}')
        rm -f "$TMP/latency-$target".*
    fi
    log "$(printf '%-13s %-9s round %s: tps %-12s latency %s ms, cpu %s us/tx' "$target" "$kind" \
        "$round" "${TPS[$key]}" "${LAT[$key]}" "${CPU[$key]:--}")"
}

# median VALUE...: the median of the numeric values (empty when there are none).
median() {
    printf '%s\n' "$@" | { grep -E '^[0-9.]+$' || true; } | sort -n |
        awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}'
}

# fold ARRAY: ARRAY[target,kind] = the median over the rounds of ARRAY[target,kind,round]; ERR
# when any round failed.
fold() {
    local -n values=$1
    local target kind round failed
    for target in "${TARGETS[@]}"; do
        for kind in "${KINDS[@]}"; do
            local -a rounds=()
            failed=0
            for ((round = 1; round <= ROUNDS; round++)); do
                [[ ${values[$target,$kind,$round]:-} == ERR ]] && failed=1
                rounds+=("${values[$target,$kind,$round]:-}")
            done
            if ((failed)); then
                values[$target,$kind]=ERR
            else
                values[$target,$kind]=$(median "${rounds[@]}")
            fi
        done
    done
}

# Targets take turns within each kind and round, so that a machine that gets slower or faster
# during the run (a shared VM does) does not favour whoever ran first; the median of ROUNDS
# rounds is reported.
log "pgbench -S: $CLIENTS clients, $THREADS threads, ${DURATION}s per run, ${#TARGETS[@]} targets x ${#KINDS[@]} kinds x $ROUNDS rounds"
for ((round = 1; round <= ROUNDS; round++)); do
    for kind in "${KINDS[@]}"; do
        for target in "${TARGETS[@]}"; do
            [[ $target == floor* && $kind == connect ]] && continue
            run_pgbench "$target" "$kind" "$round"
        done
    done
done
for array in TPS LAT CPU P50; do
    fold "$array"
done

# ---------------------------------------------------------------------------------------------
# 5b. Streaming: a large COPY out (a big result) and in, one client, best of STREAM_RUNS runs
# ---------------------------------------------------------------------------------------------
declare -A COPY_OUT=() COPY_IN=()
STREAM_TARGETS=(direct sidecar-sess sidecar-tx)
((HAVE_PGBOUNCER)) && STREAM_TARGETS+=(pgb-sess)
COPY_SQL="COPY (SELECT g, md5(g::text), repeat('x', 160) FROM generate_series(1, $COPY_ROWS) g) TO STDOUT"
# The data for COPY IN, made once (and its size, which both directions move).
PGSSLMODE=disable psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -XAtqc "$COPY_SQL" >"$TMP/copy.data"
COPY_BYTES=$(stat -c %s "$TMP/copy.data")
psql_at() { # TARGET SQL...: psql through TARGET, output discarded
    local target=$1
    shift
    PGSSLMODE=${SSLMODE[$target]} psql -h 127.0.0.1 -p "${PORT[$target]}" -U postgres -d postgres \
        -XAtq -v ON_ERROR_STOP=1 "$@" >/dev/null
}
psql_at direct -c "CREATE UNLOGGED TABLE IF NOT EXISTS copy_in (g int, h text, x text)"
# MB/s of one run of COMMAND... (its output discarded), or ERR.
mb_per_s() {
    local started elapsed
    started=$(date +%s.%N)
    if ! "$@" 2>>"$TMP/stream.err"; then
        echo ERR
        return
    fi
    elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
    awk -v n="$COPY_BYTES" -v t="$elapsed" 'BEGIN {printf "%.0f", n / t / 1e6}'
}
best() { printf '%s\n' "$@" | grep -vx ERR | sort -n | tail -1 || true; }
log "streaming: COPY of $COPY_ROWS rows ($((COPY_BYTES / 1000000)) MB) out and in, best of $STREAM_RUNS"
for target in "${STREAM_TARGETS[@]}"; do
    outs=() ins=()
    for ((run = 0; run < STREAM_RUNS; run++)); do
        outs+=("$(mb_per_s psql_at "$target" -c "$COPY_SQL")")
        psql_at direct -c "TRUNCATE copy_in"
        ins+=("$(mb_per_s psql_at "$target" -c "\\copy copy_in FROM '$TMP/copy.data'")")
    done
    COPY_OUT[$target]=$(best "${outs[@]}")
    COPY_IN[$target]=$(best "${ins[@]}")
    [[ -n ${COPY_OUT[$target]} ]] || { COPY_OUT[$target]=ERR; ERRORS+=("$target: COPY out failed"); }
    [[ -n ${COPY_IN[$target]} ]] || { COPY_IN[$target]=ERR; ERRORS+=("$target: COPY in failed"); }
    log "$(printf '%-13s COPY out %s MB/s, in %s MB/s' "$target" "${COPY_OUT[$target]}" "${COPY_IN[$target]}")"
done
psql_at direct -c "DROP TABLE copy_in"
rm -f "$TMP/copy.data"

# Sidecar warnings/errors during the benchmark (they run at --log-level warn).
SIDECAR_LOG_LINES=()
for name in sidecar-sess sidecar-tx; do
    if [[ -s $TMP/$name.log ]]; then
        SIDECAR_LOG_LINES+=("$name: $(wc -l <"$TMP/$name.log") log lines, first ones:")
        while IFS= read -r line; do SIDECAR_LOG_LINES+=("  $line"); done < <(head -5 "$TMP/$name.log")
    fi
done
declare -A RSS_AFTER_BENCH=()
for name in sidecar-sess sidecar-tx; do
    RSS_AFTER_BENCH[$name]=$(rss_kib "${PID[$name]}")
done

# Stop the benchmark poolers before the memory tests, to free PostgreSQL connections.
for name in sidecar-sess sidecar-tx sidecar-tls; do
    kill "${PID[$name]}" 2>/dev/null || true
    wait "${PID[$name]}" 2>/dev/null || true
done
for pidfile in "${PGBOUNCER_PIDFILES[@]}"; do
    [[ -s $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
done

# ---------------------------------------------------------------------------------------------
# 6. Memory: RSS at idle and per idle client
# ---------------------------------------------------------------------------------------------

# idle_rss NAME PORT PROCESS_PID COUNT: sets RSS_BEFORE / RSS_AFTER (KiB) around COUNT idle clients.
idle_rss() {
    local name=$1 port=$2 pid=$3 count=$4 out="$TMP/idle-$1.out" helper
    RSS_BEFORE=$(rss_kib "$pid")
    python3 "$REPO/benches/idle_clients.py" "$port" "$count" >"$out" 2>&1 &
    helper=$!
    PIDS+=("$helper")
    local deadline=$((SECONDS + 120))
    until grep -qE '^(READY|FAILED)' "$out" 2>/dev/null; do
        if ! kill -0 "$helper" 2>/dev/null || ((SECONDS >= deadline)); then
            break
        fi
        sleep 0.2
    done
    if ! grep -q '^READY' "$out"; then
        ERRORS+=("$name: idle clients: $(head -3 "$out" | tr '\n' ' ')")
        RSS_AFTER=ERR
    else
        sleep 1 # let the process settle
        RSS_AFTER=$(rss_kib "$pid")
    fi
    kill "$helper" 2>/dev/null || true
    wait "$helper" 2>/dev/null || true
}

declare -A MEM_BASE=() MEM_BEFORE=() MEM_AFTER=() MEM_N=()
# mem_sidecar NAME MODE COUNT FLAGS...
mem_sidecar() {
    local name=$1 mode=$2 count=$3 port
    shift 3
    port=$(free_port)
    start_sidecar "mem-$name" "$port" --pool-mode "$mode" --max-client-connections $((count + 100)) "$@"
    local pid=$SIDECAR_PID
    wait_listen "$port"
    sleep 0.5
    MEM_BASE[$name]=$(rss_kib "$pid") # idle right after start, before any client
    # Warm up: one login creates the pool and its first upstream TLS connection.
    wait_sql "mem-$name" "$port" disable
    idle_rss "$name" "$port" "$pid" "$count"
    MEM_BEFORE[$name]=$RSS_BEFORE MEM_AFTER[$name]=$RSS_AFTER MEM_N[$name]=$count
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

log "memory: $IDLE_CLIENTS idle clients in transaction mode"
mem_sidecar sidecar-tx transaction "$IDLE_CLIENTS" --pool-size "$POOL_SIZE"
# Session mode: every client holds its own upstream connection, so the count stays below
# PostgreSQL's max_connections and the pool must be as large as the client count.
log "memory: $SESSION_IDLE_CLIENTS idle clients in session mode (--pool-size $SESSION_IDLE_CLIENTS)"
mem_sidecar sidecar-sess session "$SESSION_IDLE_CLIENTS" \
    --pool-size "$SESSION_IDLE_CLIENTS" --max-connect-rate 1000
if ((HAVE_PGBOUNCER)); then
    log "memory: $IDLE_CLIENTS idle clients through PgBouncer in transaction mode"
    start_pgbouncer pgb-mem transaction $((IDLE_CLIENTS + 100))
    MEM_BASE[pgb-tx]=$(rss_kib "${PID[pgb-mem]}")
    idle_rss pgb-tx "${PORT[pgb-mem]}" "${PID[pgb-mem]}" "$IDLE_CLIENTS"
    MEM_BEFORE[pgb-tx]=$RSS_BEFORE MEM_AFTER[pgb-tx]=$RSS_AFTER MEM_N[pgb-tx]=$IDLE_CLIENTS
fi

# ---------------------------------------------------------------------------------------------
# 7. Report
# ---------------------------------------------------------------------------------------------
num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
ratio() { # ratio A B -> A/B with 2 decimals, or "-"
    if num "$1" && num "$2" && awk -v b="$2" 'BEGIN {exit !(b > 0)}'; then
        awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'
    else
        printf -- -
    fi
}
fmt_tps() { if num "$1"; then printf '%.0f' "$1"; else printf '%s' "${1:--}"; fi; }
row() { printf '%-26s %14s %14s %16s %14s\n' "$@"; }

echo
echo "pgbench -S, $CLIENTS clients, -j $THREADS, ${DURATION}s per run, median of $ROUNDS rounds, pool size $POOL_SIZE," \
    "PostgreSQL $(postgres --version | awk '{print $3}'), $(nproc) cores"
row target "simple TPS" "prepared TPS" "connect/tx TPS" "simple lat ms"
row -------------------------- -------------- -------------- ---------------- --------------
for target in "${TARGETS[@]}"; do
    row "$target" "$(fmt_tps "${TPS[$target,simple]}")" "$(fmt_tps "${TPS[$target,prepared]}")" \
        "$(fmt_tps "${TPS[$target,connect]}")" "${LAT[$target,simple]}"
done
echo
echo "ratios (throughput: higher is better for the sidecar; latency: lower is better)"
row ratio "simple" "prepared" "connect/tx" "simple lat"
row -------------------------- -------------- -------------- ---------------- --------------
for pair in "sidecar-sess pgb-sess" "sidecar-tx pgb-tx" "sidecar-sess direct" "sidecar-tx direct" \
    "sidecar-tls sidecar-sess"; do
    read -r a b <<<"$pair"
    [[ -n ${PORT[$b]:-} ]] || continue
    row "$a / $b" "$(ratio "${TPS[$a,simple]}" "${TPS[$b,simple]}")" \
        "$(ratio "${TPS[$a,prepared]}" "${TPS[$b,prepared]}")" \
        "$(ratio "${TPS[$a,connect]}" "${TPS[$b,connect]}")" \
        "$(ratio "${LAT[$a,simple]}" "${LAT[$b,simple]}")"
done
echo
echo "latency added per round trip vs direct TLS: one client alone (p50 of every transaction,"
echo "the DESIGN.md measure), and the average under load (-M simple / -M prepared):"
for target in "${TARGETS[@]}"; do
    [[ $target == direct ]] && continue
    single=-
    if num "${P50[$target,single]:-}" && num "${P50[direct,single]:-}"; then
        single=$(printf '%+d us (p50 %s us)' $((P50[$target,single] - P50[direct,single])) \
            "${P50[$target,single]}")
    fi
    added=()
    for kind in simple prepared; do
        if num "${LAT[$target,$kind]}" && num "${LAT[direct,$kind]}"; then
            added+=("$(awk -v a="${LAT[$target,$kind]}" -v b="${LAT[direct,$kind]}" \
                'BEGIN {printf "%+.0f us", (a - b) * 1000}')")
        else
            added+=(-)
        fi
    done
    printf '  %-13s %-24s %10s %10s\n' "$target" "$single" "${added[0]}" "${added[1]}"
done
echo "  direct: 1-client p50 ${P50[direct,single]:--} us"
echo
echo "pooler CPU time per transaction (us; user + system of the pooler process alone):"
printf '  %-13s %10s %10s %12s %10s\n' "" simple prepared connect/tx "1 client"
for target in "${TARGETS[@]}"; do
    [[ $target == direct ]] && continue
    printf '  %-13s %10s %10s %12s %10s\n' "$target" "${CPU[$target,simple]:--}" \
        "${CPU[$target,prepared]:--}" "${CPU[$target,connect]:--}" "${CPU[$target,single]:--}"
done
# Issue 16's measure: the sidecar's CPU per transaction over PgBouncer's in the same pool mode.
echo "  sidecar / PgBouncer, same pool mode (target: <= 0.80 in every column):"
for pair in "sidecar-sess pgb-sess" "sidecar-tx pgb-tx" "epoll-sess pgb-sess" "epoll-tx pgb-tx"; do
    read -r ours theirs <<<"$pair"
    printf '  %-13s %10s %10s %12s %10s\n' "${ours#sidecar-}" \
        "$(ratio "${CPU[$ours,simple]:-}" "${CPU[$theirs,simple]:-}")" \
        "$(ratio "${CPU[$ours,prepared]:-}" "${CPU[$theirs,prepared]:-}")" \
        "$(ratio "${CPU[$ours,connect]:-}" "${CPU[$theirs,connect]:-}")" \
        "$(ratio "${CPU[$ours,single]:-}" "${CPU[$theirs,single]:-}")"
done
# No pooler that forwards over these sockets goes below `floor`: the kernel's share. Nor can
# the sidecar go below `floor-rustls` without leaving tokio and tokio-rustls.
echo "  floors / PgBouncer session (floor: the kernel's share; floor-tokio: + tokio;"
echo "  floor-rustls: + tokio-rustls upstream, the sidecar's stack with no pooler in it;"
echo "  floor-uring: that stack on the sidecar's io_uring sockets):"
for floor in floor floor-tokio floor-rustls floor-uring; do
    [[ -n ${PORT[$floor]:-} ]] || continue
    printf '  %-13s %10s %10s %12s %10s\n' "$floor" \
        "$(ratio "${CPU[$floor,simple]:-}" "${CPU[pgb-sess,simple]:-}")" \
        "$(ratio "${CPU[$floor,prepared]:-}" "${CPU[pgb-sess,prepared]:-}")" - \
        "$(ratio "${CPU[$floor,single]:-}" "${CPU[pgb-sess,single]:-}")"
done

echo
echo "streaming, one client, $((COPY_BYTES / 1000000)) MB each way (MB/s, best of $STREAM_RUNS; ratio to direct TLS):"
printf '  %-13s %10s %8s %10s %8s\n' "" "COPY out" ratio "COPY in" ratio
for target in "${STREAM_TARGETS[@]}"; do
    printf '  %-13s %10s %8s %10s %8s\n' "$target" "${COPY_OUT[$target]}" \
        "$(ratio "${COPY_OUT[$target]}" "${COPY_OUT[direct]}")" "${COPY_IN[$target]}" \
        "$(ratio "${COPY_IN[$target]}" "${COPY_IN[direct]}")"
done

echo
echo "memory (VmRSS, KiB)"
printf '%-14s %10s %14s %10s %12s %16s\n' process "at start" "before idle" clients "with idle" "KiB per client"
for name in sidecar-tx sidecar-sess pgb-tx; do
    [[ -n ${MEM_N[$name]:-} ]] || continue
    per=-
    if num "${MEM_AFTER[$name]}"; then
        per=$(awk -v a="${MEM_AFTER[$name]}" -v b="${MEM_BEFORE[$name]}" -v n="${MEM_N[$name]}" \
            'BEGIN {printf "%.2f", (a - b) / n}')
    fi
    printf '%-14s %10s %14s %10s %12s %16s\n' "$name" "${MEM_BASE[$name]}" "${MEM_BEFORE[$name]}" \
        "${MEM_N[$name]}" "${MEM_AFTER[$name]}" "$per"
done
echo "  sidecar-tx: --pool-size $POOL_SIZE; sidecar-sess: --pool-size $SESSION_IDLE_CLIENTS, so each idle"
echo "  session client also holds one upstream TLS connection (its cost is included)."
echo "  'before idle' is after one warm-up login (pool and first upstream connection exist)."
echo "  sidecar RSS after the pgbench runs: session ${RSS_AFTER_BENCH[sidecar-sess]} KiB," \
    "transaction ${RSS_AFTER_BENCH[sidecar-tx]} KiB"

if ((${#ERRORS[@]})); then
    echo
    echo "errors:"
    printf '  %s\n' "${ERRORS[@]}"
fi
if ((${#SIDECAR_LOG_LINES[@]})); then
    echo
    echo "sidecar log output during pgbench (--log-level warn):"
    printf '  %s\n' "${SIDECAR_LOG_LINES[@]}"
fi
echo
echo "pgbench outputs and logs: $TMP (kept only with KEEP_TMP=1)"
