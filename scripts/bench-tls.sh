#!/usr/bin/env bash
# What TLS costs (docs/operations.md, "Security"): the seven `sagaflow serve` processes on
# loopback, SQLite files, once in plaintext and once with TLS on every listener, mTLS between the
# services and admin tokens (certificates from scripts/gen-certs.sh); `sagaflow bench` against
# each through its per-service addresses; then the handshake example (a new connection's cost).
#
#   scripts/bench-tls.sh                 # release builds, then both runs
#   COUNT=3000 CONCURRENCY=32 scripts/bench-tls.sh
#   SAGAFLOW=path HANDSHAKE=path scripts/bench-tls.sh
#
# Reports only; every run is bounded (--count). Uses ports 58101-58107.
set -euo pipefail
cd "$(dirname "$0")/.."

count=${COUNT:-2000}
concurrency=${CONCURRENCY:-16}
if [ -z "${SAGAFLOW:-}" ] || [ -z "${HANDSHAKE:-}" ]; then
  cargo build --release --locked -p sagaflow-cli >&2
  cargo build --release --locked -p sagaflow-server --example handshake >&2
fi
sagaflow=${SAGAFLOW:-target/release/sagaflow}
handshake=${HANDSHAKE:-target/release/examples/handshake}
work=$(mktemp -d)
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop; rm -rf "$work"' EXIT
scripts/gen-certs.sh "$work/certs" bench > /dev/null

services=(order coupon inventory payment point ranking orchestrator)
port() { case $1 in order) echo 58101;; coupon) echo 58102;; inventory) echo 58103;;
  payment) echo 58104;; point) echo 58105;; ranking) echo 58106;; orchestrator) echo 58107;; esac; }

run() {
  local mode=$1 scheme=http
  [ "$mode" = tls ] && scheme=https
  local data="$work/$mode" addrs=()
  mkdir -p "$data"
  for s in "${services[@]}"; do addrs+=("--$s-addr" "$scheme://127.0.0.1:$(port "$s")"); done
  for s in "${services[@]}"; do
    local tls=()
    [ "$mode" = tls ] && tls=(--tls-cert "$work/certs/$s.pem" --tls-key "$work/certs/$s.key"
      --tls-ca "$work/certs/ca.pem" --admin-tokens-file "$work/certs/admin-tokens")
    RUST_LOG=warn "$sagaflow" serve "$s" --listen "127.0.0.1:$(port "$s")" --data-dir "$data" \
      --place-order-per-user-per-second 0 "${tls[@]}" "${addrs[@]}" > "$data/$s.log" 2>&1 &
    pids+=($!)
  done
  local env=()
  [ "$mode" = tls ] && env=(SAGAFLOW_TLS_CA="$work/certs/ca.pem" SAGAFLOW_TOKEN="$(cat "$work/certs/operator.token")")
  for _ in $(seq 100); do
    env "${env[@]}" "$sagaflow" saga list "${addrs[@]}" > /dev/null 2>&1 && break
    sleep 0.1
  done
  env "${env[@]}" "$sagaflow" bench --json --count "$count" --concurrency "$concurrency" "${addrs[@]}" \
    | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("%-9s %7d %10.1f %8.1f %8.1f %8.1f  errors %d %s" % (sys.argv[1], r["finished"],
      r["sagas_per_second"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"], r["outcomes"]))' "$mode"
  stop
}

echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "## sagaflow bench against 7 serve processes (SQLite), count $count, concurrency $concurrency"
printf '%-9s %7s %10s %8s %8s %8s  %s\n' mode orders orders/s 'p50 ms' 'p95 ms' 'p99 ms' outcomes
run plaintext
run tls
echo
echo "## handshake example: one health check per new connection, and per call on one connection"
"$handshake" 500
