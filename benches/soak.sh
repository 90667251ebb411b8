#!/usr/bin/env bash
# benches/soak.sh: the sidecar under faults for a while (default 10 minutes).
#
# Two release sidecars (session mode and transaction mode) reach a throw-away PostgreSQL with
# TLS through the fault-injecting relay (examples/fault_relay.rs), which resets every upstream
# connection every RESET_EVERY seconds (default 30) and stalls them (a hung proxy) every
# STALL_EVERY seconds (default 120) for STALL_FOR seconds (default 15). Against each sidecar,
# benches/soak_clients.py runs mixed clients on raw sockets: short connections, long sessions,
# transactions that each commit one row, and COPY FROM STDIN batches.
#
# Reported: work done, errors by SQLSTATE (and failures without one: "closed without an
# error", "timeout", "refused"), acknowledged commits and COPY batches missing from the
# database afterwards (must be 0), and each sidecar's RSS at 1 minute and at the end (growth
# under 10 %).
#
# Run as root: benches/soak.sh        SOAK_SECONDS=120 benches/soak.sh
# Environment: SOAK_SECONDS (600), RESET_EVERY (30), STALL_EVERY (120), STALL_FOR (15),
# SKIP_BUILD=1, KEEP_TMP=1.

set -euo pipefail

SOAK_SECONDS=${SOAK_SECONDS:-600}
RESET_EVERY=${RESET_EVERY:-30}
STALL_EVERY=${STALL_EVERY:-120}
STALL_FOR=${STALL_FOR:-15}
((STALL_FOR < STALL_EVERY)) || { echo "soak: STALL_FOR must be below STALL_EVERY" >&2; exit 1; }
PG_MAX_CONNECTIONS=100
BENCH_NAME=soak
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$REPO" && cargo build --release --locked --example fault_relay) || die "cargo build failed"
fi
RELAY_BIN="$REPO/target/release/examples/fault_relay"
[[ -x $RELAY_BIN ]] || die "$RELAY_BIN not found"

runuser -u postgres -- psql -h "$TMP/pg" -p "$PG_PORT" -U postgres -d postgres -Xq -c \
    'create table soak_commits (worker int, n int); create table soak_copy (batch int, i int)' \
    >/dev/null || die "could not create the soak tables"

# The relay reads its commands from a FIFO this script writes to.
mkfifo "$TMP/relay.in"
"$RELAY_BIN" "127.0.0.1:$PG_PORT" <"$TMP/relay.in" >"$TMP/relay.out" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
exec {RELAY}>"$TMP/relay.in"
deadline=$((SECONDS + 10))
until grep -q '^LISTENING' "$TMP/relay.out" 2>/dev/null; do
    ((SECONDS < deadline)) || die "the relay did not start: $(cat "$TMP/relay.out")"
    sleep 0.1
done
RELAY_PORT=$(awk '/^LISTENING/ {print $2}' "$TMP/relay.out")
relay() { echo "$*" >&"$RELAY"; }

declare -A PORT=() PID=()
for mode in session transaction; do
    PORT[$mode]=$(free_port)
    start_sidecar "soak-$mode" "${PORT[$mode]}" --pool-mode "$mode" --pool-size 10 \
        --upstream-addr "127.0.0.1:$RELAY_PORT"
    PID[$mode]=$SIDECAR_PID
    wait_sql "soak-$mode" "${PORT[$mode]}" disable
done

log "soak: ${SOAK_SECONDS} s; resets every ${RESET_EVERY} s, a ${STALL_FOR} s stall every ${STALL_EVERY} s"
python3 "$REPO/benches/soak_clients.py" "$SOAK_SECONDS" "$PG_PORT" \
    "${PORT[session]}" "${PORT[transaction]}" >"$TMP/clients.out" 2>"$TMP/clients.err" &
CLIENTS_PID=$!
PIDS+=("$CLIENTS_PID")

declare -A RSS_1MIN=()
# alive: every process the soak needs is still running (a crash is reported, not hidden).
alive() {
    local mode
    for mode in session transaction; do
        kill -0 "${PID[$mode]}" 2>/dev/null || die "the $mode sidecar died (log: $TMP/soak-$mode.log; KEEP_TMP=1 keeps it)"
    done
    kill -0 "$RELAY_PID" 2>/dev/null || die "the relay died: $(cat "$TMP/relay.out")"
}
started=$SECONDS resets=0 stalls=0
next_reset=$RESET_EVERY next_stall=$STALL_EVERY heal_at=-1 rss_at=60
while kill -0 "$CLIENTS_PID" 2>/dev/null; do
    sleep 1
    alive
    elapsed=$((SECONDS - started))
    if ((rss_at >= 0 && elapsed >= rss_at)); then
        for mode in session transaction; do RSS_1MIN[$mode]=$(rss_kib "${PID[$mode]}"); done
        rss_at=-1
    fi
    if ((heal_at >= 0 && elapsed >= heal_at)); then
        relay heal
        heal_at=-1
    fi
    if ((elapsed >= next_stall)); then
        relay stall
        stalls=$((stalls + 1))
        log "stall $stalls"
        heal_at=$((elapsed + STALL_FOR))
        next_stall=$((next_stall + STALL_EVERY))
    fi
    if ((elapsed >= next_reset)); then
        relay reset
        resets=$((resets + 1))
        next_reset=$((next_reset + RESET_EVERY))
    fi
done
wait "$CLIENTS_PID" || die "the soak clients failed: $(tail -5 "$TMP/clients.err")"

echo
echo "soak: ${SOAK_SECONDS} s, $resets resets, $stalls stalls of ${STALL_FOR} s"
python3 - "$TMP/clients.out" <<'EOF'
import json, sys
result = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print("work done:", ", ".join(f"{k} {v}" for k, v in sorted(result["ok"].items())))
errors = result["errors"]
print("errors:", ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "none")
print(f"acknowledged commits: {result['acknowledged_commits']}, "
      f"lost: {result['acknowledged_commits_lost']} (must be 0), "
      f"committed twice: {result.get('commits_twice', 0)} (must be 0)")
print(f"acknowledged COPY batches: {result['acknowledged_copy_batches']}, "
      f"lost: {result['acknowledged_copy_batches_lost']} (must be 0)")
EOF
alive
for mode in session transaction; do
    end=$(rss_kib "${PID[$mode]}")
    if [[ -z ${RSS_1MIN[$mode]:-} ]]; then
        echo "$mode sidecar RSS: $end KiB at the end (the run was shorter than a minute)"
        continue
    fi
    awk -v m="$mode" -v a="${RSS_1MIN[$mode]}" -v b="$end" 'BEGIN {
        printf "%s sidecar RSS: %d KiB at 1 min, %d KiB at the end (%+.1f %%; target < 10 %%)\n",
            m, a, b, (b - a) * 100 / a }'
done
