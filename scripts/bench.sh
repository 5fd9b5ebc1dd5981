#!/usr/bin/env bash
# The performance table of the order path (docs/operations.md, "Performance"): engine_bench on
# SQLite (synchronous=FULL; no-op steps, gRPC steps, and the compensating variant) and
# `sagaflow bench` on the embedded default, each at concurrency 1, 16 and 64, in one table.
#
#   scripts/bench.sh               # release builds, then the table
#   SAGAS=3000 scripts/bench.sh    # orders/sagas per row at 16 and 64 (default 2000; c1 runs 300)
#   MIX=0.1 scripts/bench.sh       # `sagaflow bench --mix`: that share of orders compensates
#   SAGAFLOW=path ENGINE_BENCH=path scripts/bench.sh   # other binaries (e.g. an older build)
#
# Reports only; it never fails on slowness. Every run is bounded (--max-seconds, --count).
set -euo pipefail
cd "$(dirname "$0")/.."

sagas=${SAGAS:-2000}
mix=${MIX:-0}
if [ -z "${SAGAFLOW:-}" ] || [ -z "${ENGINE_BENCH:-}" ]; then
  cargo build --release --locked -p sagaflow-cli >&2
  cargo build --release --locked -p sagaflow-workflow-engine --example engine_bench >&2
fi
sagaflow=${SAGAFLOW:-target/release/sagaflow}
engine_bench=${ENGINE_BENCH:-target/release/examples/engine_bench}

echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "## engine_bench (SQLite, WAL, synchronous=FULL)"
"$engine_bench" --backends sqlite --variants noop,grpc,compensate --concurrency 1,16,64 \
  --sagas "$sagas" --max-seconds 15

echo
echo "## sagaflow bench (embedded default: 6 services + orchestrator, 7 SQLite files, FULL)"
printf '%-5s %7s %10s %8s %8s %8s %13s %9s  %s\n' conc orders orders/s 'p50 ms' 'p95 ms' 'p99 ms' 'CPU ms/order' 'RSS MiB' 'outcomes; commits per order by database'
for c in 1 16 64; do
  n=$sagas
  [ "$c" = 1 ] && n=$(( sagas < 300 ? sagas : 300 ))
  mix_flag=()
  [ "$mix" != 0 ] && mix_flag=(--mix "$mix")
  "$sagaflow" bench --json --concurrency "$c" --count "$n" "${mix_flag[@]}" \
    | python3 -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
cpu = r.get("cpu_ms_per_order")
rss = r.get("server_peak_rss_kib")
commits = " ".join("%s=%.2f" % kv for kv in sorted(r.get("commits_per_order", {}).items()))
print("%-5d %7d %10.1f %8.1f %8.1f %8.1f %13s %9s  %s; %s" % (
    r["concurrency"], r["finished"], r["sagas_per_second"], r["p50_ms"], r["p95_ms"],
    r["p99_ms"], "n/a" if cpu is None else "%.2f" % cpu,
    "n/a" if rss is None else "%.1f" % (rss / 1024), json.dumps(r["outcomes"]), commits or "n/a"))
'
done
