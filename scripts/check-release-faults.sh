#!/usr/bin/env bash
# Fault injection exists in test builds only (docs/operations.md, "Fault injection (test builds
# only)"): builds `sagaflow` as the release build and the Dockerfile do — `cargo build --release
# -p sagaflow-cli`, no features — and checks on that binary that SAGAFLOW_FAULTS, --faults and
# FAILPOINTS each make `serve` and `dev` refuse to start (exit 64, one line naming the cargo
# feature) before they open a database or a port, and that the same commands start without them.
#
# CHECK_PROFILE=dev checks a debug build instead (quicker, the same features): for local runs.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${CHECK_PROFILE:-release}"
if [ "$profile" = release ]; then
  cargo build --release --locked -p sagaflow-cli
  bin=target/release/sagaflow
else
  cargo build --locked -p sagaflow-cli
  bin=target/debug/sagaflow
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0

# refuses NAME EXPECTED_TEXT ENV… -- ARGS…: the binary must exit 64 with one stderr line holding
# EXPECTED_TEXT and create nothing under the data directory.
refuses() {
  local name=$1 expected=$2; shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local data="$work/$name"
  local code=0
  env -u SAGAFLOW_FAULTS -u FAILPOINTS "${envs[@]}" RUST_LOG=info \
    timeout 20 "$bin" "$@" --data-dir "$data" >"$work/$name.out" 2>"$work/$name.err" || code=$?
  local lines
  lines=$(grep -c . "$work/$name.err" || true)
  if [ "$code" -ne 64 ] || ! grep -q -- "$expected" "$work/$name.err" || [ "$lines" -ne 1 ] \
     || [ -e "$data" ]; then
    echo "FAIL $name: exit $code, $lines stderr lines, data dir $( [ -e "$data" ] && echo created || echo absent ):"
    cat "$work/$name.err"
    fail=1
  else
    echo "ok   $name: exit 64: $(cat "$work/$name.err")"
  fi
}

refuses dev-env '`fault-injection` cargo feature' SAGAFLOW_FAULTS='*=lost_reply:1' -- \
  dev --listen 127.0.0.1:0
refuses dev-flag '`fault-injection` cargo feature' -- \
  dev --listen 127.0.0.1:0 --faults 'StartPayment=error:unavailable:1'
refuses serve-env '`fault-injection` cargo feature' SAGAFLOW_FAULTS='*=lost_reply:1' -- \
  serve order --listen 127.0.0.1:0
refuses serve-failpoints '`failpoints` cargo' FAILPOINTS='before_step_call=panic' -- \
  serve orchestrator --listen 127.0.0.1:0

# Without them the same binary starts: `serve order` listens, then stops on SIGTERM.
data="$work/clean"
: >"$work/clean.log"
env -u SAGAFLOW_FAULTS -u FAILPOINTS RUST_LOG=info \
  "$bin" serve order --listen 127.0.0.1:0 --data-dir "$data" >"$work/clean.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  grep -q "gRPC server listening" "$work/clean.log" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if grep -q "gRPC server listening" "$work/clean.log"; then
  echo "ok   clean: serve order starts without faults"
  kill -TERM "$pid"; wait "$pid" || true
else
  echo "FAIL clean: serve order did not start without faults:"; cat "$work/clean.log"
  kill -KILL "$pid" 2>/dev/null || true
  fail=1
fi
exit "$fail"
