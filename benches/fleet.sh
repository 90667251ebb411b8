#!/usr/bin/env bash
# benches/fleet.sh: a fleet of sidecars starting and reconnecting together against one RDS
# Proxy that throttles IAM logins (issue "A fleet ... never storms IAM or RDS Proxy").
#
# Starts the RDS Proxy emulator (examples/rds_proxy_emulator.rs) in front of a throw-away
# PostgreSQL, limited to LOGIN_RATE IAM logins per second, then, all at once, SIDECARS sidecar
# processes (transaction mode, a warm pool of WARM connections each) and one client per
# sidecar running `select 1` every 100 ms (benches/fleet_clients.py). At RESTART_AT seconds the
# emulator drops every connection at once (a proxy restart); the run ends at RUN_SECONDS.
# Reported for the start and for the restart: when every client was served, the login
# attempts per second the proxy saw (peak and mean over the seconds with logins), the logins
# it throttled, and the clients' errors by SQLSTATE (must be 0).
#
# With OLD_SIDECAR=<binary> (e.g. a build of an older commit) the same run is made with it
# first, its flags only those it knows, and both are printed side by side.
#
# Run as root: benches/fleet.sh
# Environment: SIDECARS (50), WARM (4), LOGIN_RATE (100), RUN_SECONDS (40), RESTART_AT (20),
# NEW_FLAGS (extra flags for the new sidecar), OLD_SIDECAR, SIDECAR, SKIP_BUILD=1, KEEP_TMP=1.

set -euo pipefail

SIDECARS=${SIDECARS:-50}
WARM=${WARM:-4}
LOGIN_RATE=${LOGIN_RATE:-100}
RUN_SECONDS=${RUN_SECONDS:-40}
RESTART_AT=${RESTART_AT:-20}
BENCH_NAME=fleet
PG_MAX_CONNECTIONS=$((SIDECARS * (WARM + 3) + 20))
# shellcheck source=benches/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

EMULATOR="$REPO/target/release/examples/rds_proxy_emulator"
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building the emulator (cargo build --release --locked --example rds_proxy_emulator)"
    (cd "$REPO" && cargo build --release --locked --example rds_proxy_emulator) ||
        die "cargo build of the emulator failed"
fi
[[ -x $EMULATOR ]] || die "$EMULATOR not found (build it, or unset SKIP_BUILD)"
ulimit -n 65536 2>/dev/null || true

HOST=mydb.proxy-abc123.us-east-1.rds.amazonaws.com

# start_emulator: starts it; sets EMULATOR_PID and EMULATOR_PORT.
start_emulator() {
    local out=$TMP/emulator.out
    "$EMULATOR" --backend-port "$PG_PORT" --ca-out "$TMP/emulator-ca.pem" \
        --login-rate "$LOGIN_RATE" >"$out" 2>"$TMP/emulator.err" &
    EMULATOR_PID=$!
    PIDS+=("$EMULATOR_PID")
    local deadline=$((SECONDS + 30))
    until grep -q '^LISTENING' "$out" 2>/dev/null; do
        kill -0 "$EMULATOR_PID" 2>/dev/null || die "the emulator exited: $(cat "$TMP/emulator.err")"
        ((SECONDS < deadline)) || die "the emulator did not listen within 30 s"
        sleep 0.1
    done
    EMULATOR_PORT=$(awk '/^LISTENING/ {print $2}' "$out")
}

# listen_ports N: N free ports below the ephemeral range (where the clients' own ports, taken
# meanwhile, cannot collide with them), from BASE_PORT (20000) up.
listen_ports() {
    python3 - "$1" "${BASE_PORT:-20000}" <<'PY'
import socket, sys
count, port, found = int(sys.argv[1]), int(sys.argv[2]), []
while len(found) < count:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            found.append(str(port))
        except OSError:
            pass
    port += 1
print(" ".join(found))
PY
}

# fleet LABEL BINARY FLAGS...: one run; the results go to $TMP/LABEL.*
fleet() {
    local label=$1 binary=$2 port
    shift 2
    local ports=() pids=() found
    found=$(listen_ports "$SIDECARS") || die "no free listen ports from ${BASE_PORT:-20000}"
    read -ra ports <<<"$found"
    ((${#ports[@]} == SIDECARS)) || die "found ${#ports[@]} listen ports, not $SIDECARS"
    start_emulator
    log "$label: $SIDECARS sidecars and their clients start at once"
    python3 "$REPO/benches/fleet_clients.py" "$RUN_SECONDS" "$RESTART_AT" "$EMULATOR_PID" \
        "${ports[@]}" >"$TMP/$label.clients" 2>&1 &
    local clients=$!
    PIDS+=("$clients")
    for port in "${ports[@]}"; do
        AWS_ACCESS_KEY_ID=AKIASIDECARTEST00001 \
            AWS_SECRET_ACCESS_KEY='wJalrXUtnFEMI/K7MDENG+bPxRfiCYsidecartest' \
            AWS_EC2_METADATA_DISABLED=true HOME="$TMP" \
            "$binary" --upstream "$HOST" --upstream-addr "127.0.0.1:$EMULATOR_PORT" \
            --ca-file "$TMP/emulator-ca.pem" --listen "127.0.0.1:$port" --admin-listen off \
            --log-level warn --pool-mode transaction --min-idle "$WARM" \
            --warm-pool postgres@postgres "$@" </dev/null >>"$TMP/$label.sidecars.log" 2>&1 &
        pids+=($!)
        PIDS+=($!)
    done
    wait "$clients" || die "$label: the clients failed: $(tail -3 "$TMP/$label.clients")"
    kill -TERM "$EMULATOR_PID" 2>/dev/null || die "$label: the emulator died: $(tail -3 "$TMP/emulator.err")"
    wait "$EMULATOR_PID" 2>/dev/null || true
    cp "$TMP/emulator.out" "$TMP/$label.logins"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}

# summary LABEL: one line per phase: served, peak/mean attempts, peak accepted, throttled, errors.
summary() {
    local label=$1
    # The restart's second on the emulator's clock, which started a little before the clients'.
    local restart
    restart=$(awk '/^RESTART/ {print $2; exit}' "$TMP/$label.logins")
    awk -v restart="${restart:-$RESTART_AT}" -v label="$label" '
        FILENAME ~ /clients$/ && /^SERVED/ {served["start"] = $2}
        FILENAME ~ /clients$/ && /^RESTART_SERVED/ {served["restart"] = $2}
        FILENAME ~ /clients$/ && /^ERRORS/ {errors[$2] = errors[$2] sprintf("%s×%s ", $4, $3); nerr[$2] += $4}
        FILENAME ~ /logins$/ && /^LOGINS/ {
            phase = ($2 >= restart) ? "restart" : "start"
            attempts = $3 + $4
            if (attempts > 0) { seconds[phase]++; total[phase] += attempts }
            if (attempts > peak[phase]) peak[phase] = attempts
            if ($3 > peakok[phase]) peakok[phase] = $3
            throttled[phase] += $4
        }
        END {
            split("start restart", phases, " ")
            for (i = 1; i <= 2; i++) {
                p = phases[i]
                mean = seconds[p] ? total[p] / seconds[p] : 0
                printf "%-10s %-8s %9s %8d %8.1f %8d %10d   %s\n", label, p, served[p] "s", peak[p], mean, peakok[p], throttled[p], (nerr[p] ? errors[p] : "0")
            }
        }' "$TMP/$label.clients" "$TMP/$label.logins"
}

runs=()
if [[ -n ${OLD_SIDECAR:-} ]]; then
    [[ -x $OLD_SIDECAR ]] || die "OLD_SIDECAR=$OLD_SIDECAR is not an executable"
    fleet old "$OLD_SIDECAR"
    runs+=(old)
fi
# shellcheck disable=SC2086
fleet new "$SIDECAR" ${NEW_FLAGS:-}
runs+=(new)

echo
echo "fleet: $SIDECARS sidecars (transaction mode, warm pool $WARM), one client each querying every"
echo "100 ms, the proxy limited to $LOGIN_RATE IAM logins/s, every connection dropped at ${RESTART_AT}s"
echo "(served: until every client had an answer, from the start or from the restart; attempts:"
echo "logins the proxy saw per second, let through + throttled)"
printf '%-10s %-8s %9s %8s %8s %8s %10s   %s\n' run phase served "peak/s" "mean/s" "ok peak" throttled "client errors"
for run in "${runs[@]}"; do summary "$run"; done
