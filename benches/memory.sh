#!/usr/bin/env bash
# benches/memory.sh: the sidecar's memory as a user sees it (VmRSS of the process), per idle
# client and after a burst of clients has left.
#
# For each pool mode it starts a release sidecar against a throw-away PostgreSQL with TLS (the
# sidecar verifies it, as against RDS Proxy) and, with raw-socket clients
# (benches/idle_clients.py: startup message, read until ReadyForQuery, then idle):
#   1. logs CLIENTS clients in all at once ("burst"), measures RSS with them idle, then has them
#      all leave at once and measures RSS 5 s, 30 s and 60 s later;
#   2. logs CLIENTS clients in one after the other ("gentle") and measures RSS with them idle.
# Reported: RSS at start (after one warm-up login), KiB per idle client both ways, and RSS a
# minute after the burst against the figure at start (target: within 20 %). The sidecar logs
# at info, its default (SIDECAR_LOG_LEVEL to change it).
# Transaction mode uses CLIENTS (default 5000) clients on 8 upstream connections; session mode
# SESSION_CLIENTS (default 250: each holds its own upstream TLS connection, so PostgreSQL's
# max_connections caps it).
#
# Run as root (PostgreSQL runs as the postgres user): benches/memory.sh
# Environment: CLIENTS, SESSION_CLIENTS, SETTLE (seconds after the burst, default 60), MODES
# (default "transaction session"), SIDECAR (a binary to measure), SKIP_BUILD=1, KEEP_TMP=1. Takes about 5 minutes after the build.

set -euo pipefail

CLIENTS=${CLIENTS:-5000}
SESSION_CLIENTS=${SESSION_CLIENTS:-250}
SETTLE=${SETTLE:-60}
MODES=${MODES:-transaction session}
((SETTLE >= 30)) || { echo "memory: SETTLE must be at least 30 (seconds)" >&2; exit 1; }
PG_MAX_CONNECTIONS=$((SESSION_CLIENTS + 50))
BENCH_NAME=memory
SIDECAR_LOG_LEVEL=${SIDECAR_LOG_LEVEL:-info}
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# clients PORT COUNT CONCURRENCY OUT: starts idle clients; their pid goes into CLIENTS_PID once
# all are logged in (dies when they are not).
clients() {
    local port=$1 count=$2 concurrency=$3 out=$4 deadline=$((SECONDS + 180))
    python3 "$REPO/benches/idle_clients.py" "$port" "$count" "$concurrency" >"$out" 2>&1 &
    CLIENTS_PID=$!
    PIDS+=("$CLIENTS_PID")
    until grep -qE '^(READY|FAILED)' "$out" 2>/dev/null; do
        kill -0 "$CLIENTS_PID" 2>/dev/null || break
        ((SECONDS < deadline)) || break
        sleep 0.2
    done
    grep -q '^READY' "$out" || die "idle clients: $(head -3 "$out" | tr '\n' ' ')"
}

# leave: the idle clients all leave at once.
leave() {
    kill "$CLIENTS_PID" 2>/dev/null || true
    wait "$CLIENTS_PID" 2>/dev/null || true
}

per_client() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {printf "%.2f", (b - a) / n}'; }

declare -A REPORT=()
# measure MODE COUNT FLAGS...: fills REPORT[MODE,*].
measure() {
    local mode=$1 count=$2 port pid
    shift 2
    port=$(free_port)
    start_sidecar "mem-$mode" "$port" --pool-mode "$mode" \
        --max-client-connections $((count + 100)) "$@"
    pid=$SIDECAR_PID
    wait_listen "$port"
    wait_sql "mem-$mode" "$port" disable
    sleep 1
    local start with gentle after5 after30 after
    start=$(rss_kib "$pid")
    log "$mode: $count clients at once"
    clients "$port" "$count" "$count" "$TMP/burst-$mode.out"
    REPORT[$mode,burst_seconds]=$(awk '/^READY/ {print $3}' "$TMP/burst-$mode.out")
    # As a user sees it a little later, the burst over and its clients idle.
    sleep 11
    with=$(rss_kib "$pid")
    REPORT[$mode,burst]=$(per_client "$start" "$with" "$count")
    leave
    sleep 5
    after5=$(rss_kib "$pid")
    sleep 25
    after30=$(rss_kib "$pid")
    sleep $((SETTLE > 30 ? SETTLE - 30 : 0))
    after=$(rss_kib "$pid")
    log "$mode: $count clients, one after the other"
    clients "$port" "$count" 1 "$TMP/gentle-$mode.out"
    sleep 11
    gentle=$(rss_kib "$pid")
    REPORT[$mode,gentle]=$(per_client "$after" "$gentle" "$count")
    leave
    REPORT[$mode,start]=$start REPORT[$mode,with]=$with
    REPORT[$mode,after5]=$after5 REPORT[$mode,after30]=$after30 REPORT[$mode,after]=$after
    REPORT[$mode,count]=$count
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

for mode in $MODES; do
    case $mode in
    transaction) measure transaction "$CLIENTS" --pool-size 8 ;;
    session) measure session "$SESSION_CLIENTS" --pool-size "$SESSION_CLIENTS" --max-connect-rate 1000 ;;
    *) die "MODES: unknown mode '$mode'" ;;
    esac
done

echo
echo "sidecar memory (VmRSS, KiB; per client = RSS growth / clients)"
printf '%-12s %8s %9s %10s %10s %10s %10s %12s %10s\n' mode clients "at start" \
    "burst/cl" "with burst" "+5 s" "+30 s" "+${SETTLE} s" "gentle/cl"
for mode in $MODES; do
    printf '%-12s %8s %9s %10s %10s %10s %10s %12s %10s\n' "$mode" "${REPORT[$mode,count]}" \
        "${REPORT[$mode,start]}" "${REPORT[$mode,burst]}" "${REPORT[$mode,with]}" \
        "${REPORT[$mode,after5]}" "${REPORT[$mode,after30]}" "${REPORT[$mode,after]}" \
        "${REPORT[$mode,gentle]}"
done
for mode in $MODES; do
    awk -v m="$mode" -v b="${REPORT[$mode,start]}" -v a="${REPORT[$mode,after]}" \
        -v s="${REPORT[$mode,burst_seconds]}" -v t="$SETTLE" 'BEGIN {
        printf "%s: burst logged in within %s s; RSS %d s after it left: %.2f x the figure at start (target <= 1.20)\n", m, s, t, a / b }'
done
