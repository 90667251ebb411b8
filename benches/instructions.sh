#!/usr/bin/env bash
# benches/instructions.sh: the sidecar's user-space instructions per transaction, counted by
# callgrind (valgrind), for each pgbench kind. Unlike CPU time, the count is the same from run
# to run (±0.5 %) whatever else the machine does, so a change of 1-2 % of the sidecar's own
# work shows (issue 16: CPU per transaction). It does not see the kernel's share (~75 % of the
# CPU per transaction here: benches/pgbench-compare.sh measures that).
#
# Each kind starts the sidecar under callgrind (TLS verify-full upstream, as pgbench-compare),
# warms it up with 200 transactions per client, zeroes the counters, runs a fixed number of
# pgbench -S transactions (8 clients, -j 2) and reads the count.
#
# Run (as root; needs valgrind, and what benches/common.sh checks):
#   benches/instructions.sh
#   KINDS="session-simple transaction-connect" TRANSACTIONS=3000 benches/instructions.sh
# Environment:
#   KINDS          any of session-simple session-prepared transaction-simple
#                  transaction-prepared session-connect transaction-connect (default: all)
#   TRANSACTIONS   transactions per client for the simple and prepared kinds (default 1500;
#                  the connect kinds run a fifth as many, each a new connection)
#   SKIP_BUILD=1   use the existing release binary
# Prints one line per kind: transactions, instructions in all, instructions per transaction.

set -euo pipefail

KINDS=${KINDS:-session-simple session-prepared session-connect transaction-simple transaction-prepared transaction-connect}
TRANSACTIONS=${TRANSACTIONS:-1500}
PG_MAX_CONNECTIONS=100
BENCH_NAME=instructions
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    die "valgrind not found (Debian: apt-get install valgrind)"

for kind in $KINDS; do
    mode=${kind%%-*} style=${kind#*-}
    port=$(free_port)
    RDS_IAM_SIDECAR_PASSWORD=unused valgrind --tool=callgrind --callgrind-out-file="$TMP/$kind.out" \
        "$SIDECAR" --upstream "localhost:$PG_PORT" --auth password --tls-mode verify-full \
        --ca-file "$TMP/server.crt" --listen "127.0.0.1:$port" --log-level warn --admin-listen off \
        --pool-size 8 --pool-mode "$mode" </dev/null >"$TMP/$kind.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_listen "$port"
    per_client=$TRANSACTIONS
    case $style in
    simple) flags=(-M simple) ;;
    prepared) flags=(-M prepared) ;;
    connect) flags=(-C -M simple) per_client=$((TRANSACTIONS / 5)) ;;
    *) die "unknown kind $kind" ;;
    esac
    pgbench_run() {
        PGSSLMODE=disable pgbench -S -n -c 8 -j 2 -t "$1" "${flags[@]}" -h 127.0.0.1 -p "$port" \
            -U postgres postgres >"$TMP/$kind.pgbench" 2>&1 || die "$kind: pgbench failed: $(tail -3 "$TMP/$kind.pgbench")"
    }
    pgbench_run 200
    callgrind_control -z "$pid" >/dev/null 2>&1 || die "$kind: callgrind_control could not zero the counters"
    pgbench_run "$per_client"
    # The dump is taken when the sidecar next runs: the first part file (.1) covers the run.
    callgrind_control -d "$pid" >/dev/null 2>&1 || die "$kind: callgrind_control could not dump the counters"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    done_tx=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$TMP/$kind.pgbench")
    # The dump's own total (not callgrind_annotate's: a pipe cut short ends the script).
    total=$(awk '/^summary:/ {print $2}' "$TMP/$kind.out.1" 2>/dev/null || true)
    [[ -n $total && -n $done_tx && $done_tx -gt 0 ]] || die "$kind: no count (logs in $TMP, KEEP_TMP=1 keeps them)"
    printf '%-22s %7d transactions %14d instructions %8d per transaction\n' "$kind" "$done_tx" "$total" $((total / done_tx))
done
